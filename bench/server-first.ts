/**
 * Section `server-first`: how long a client waits for a server-speaks-first
 * protocol's greeting through a meshpipe `mode=detect` listener with default
 * settings (server-first grace 100 ms, detect timeout 10 s), on a port that is
 * not in the default opaque list, i.e. a port nobody configured.
 *
 * The server is MariaDB from Debian (`mariadbd` on a free port with a
 * throwaway datadir made by `mariadb-install-db`, as test/e2e-netns.test.ts
 * does); when MariaDB is not installed, a tiny banner server (Node, writes a
 * line on accept) stands in and the note says so. The client connects and
 * times connect call -> first byte of the greeting, then closes. Each round
 * starts a fresh meshpipe (so connection #1 meets an empty server-first
 * cache) and makes 10 sequential connections: #1 waits out the grace period,
 * then meshpipe connects upstream and relays the greeting, learning that this
 * target speaks first; #2..#10 go straight through. Direct connections are
 * timed in the same rounds. Linkerd's proxy instead waits its full detect
 * timeout (10 s) on every such connection until the port is marked opaque.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { meshpipeCommand, startMeshpipe, type MeshpipeForward } from './meshpipe.js';
import type { Peer } from './peers.js';
import { freePort, spawnTracked, stopTracked, waitListening, which } from './processes.js';
import { load1, median, type BenchContext, type BenchSection, type Row, type Section } from './report.js';

/** Connections per round; the issue asks about #1 and #10. */
const CONNECTIONS = 10;
const GRACE_MS = 100;
const LINKERD_DETECT_TIMEOUT_S = 10;

/** A server that writes a greeting as soon as it accepts (the stand-in for MariaDB). */
const BANNER_SCRIPT = `
const net = require('node:net');
net.createServer((s) => { s.on('error', () => {}); s.write('220 banner-first ESMTP ready\\r\\n'); setTimeout(() => s.destroy(), 5000); })
  .listen({ host: '127.0.0.1', port: Number(process.argv[1]), backlog: 512 });`;

/** Connect call -> first byte received, in milliseconds. */
export function timeToFirstByte(port: number, timeoutMs = 15_000): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
    let done = false;
    const finish = (err: Error | null, ms = 0): void => {
      if (done) return;
      done = true;
      s.destroy();
      s.once('close', () => (err ? reject(err) : resolve(ms)));
    };
    s.setTimeout(timeoutMs, () => finish(new Error(`no greeting within ${timeoutMs} ms`)));
    s.once('data', () => finish(null, Number(process.hrtime.bigint() - t0) / 1e6));
    s.on('end', () => finish(new Error('closed before the greeting')));
    s.on('error', (e) => finish(e));
  });
}

/** MariaDB on 127.0.0.1:`port` in a fresh datadir, or the banner server when MariaDB is absent. */
async function startServer(dir: string, port: number): Promise<{ peer: Peer; kind: string }> {
  if (which('mariadbd') !== null && which('mariadb-install-db') !== null) {
    const data = join(dir, 'mariadb-data');
    mkdirSync(data, { recursive: true });
    const install = spawnSync('mariadb-install-db', ['--no-defaults', `--datadir=${data}`, '--user=root', '--auth-root-authentication-method=normal', '--skip-test-db'], { encoding: 'utf8', timeout: 120_000 });
    if (install.status !== 0) throw new Error(`mariadb-install-db failed (${install.status ?? install.signal}): ${(install.stderr || install.stdout).trim().slice(-500)}`);
    const t = spawnTracked('mariadbd', 'mariadbd', [
      '--no-defaults', `--datadir=${data}`, `--port=${port}`, '--bind-address=127.0.0.1', `--socket=${join(dir, 'mariadb.sock')}`,
      '--user=root', '--skip-grant-tables', '--skip-name-resolve', `--pid-file=${join(dir, 'mariadb.pid')}`,
      '--innodb-buffer-pool-size=16M', '--max-connections=500',
    ], dir);
    await waitListening(t, [port], 60_000);
    const version = spawnSync('mariadbd', ['--version'], { encoding: 'utf8' }).stdout.trim();
    return { peer: { name: 'mariadbd', pid: t.pid, tracked: t, ports: [port], stop: () => stopTracked(t, 10_000) }, kind: `MariaDB (${version})` };
  }
  const t = spawnTracked('banner-server', process.execPath, ['-e', BANNER_SCRIPT, String(port)], dir);
  await waitListening(t, [port]);
  return { peer: { name: 'banner server', pid: t.pid, tracked: t, ports: [port], stop: () => stopTracked(t) }, kind: 'a Node banner server (MariaDB is not installed: apt-get install mariadb-server for the real thing)' };
}

async function run(ctx: BenchContext): Promise<Section> {
  const notes: string[] = [];
  const errors: string[] = [];
  const peers: Peer[] = [];
  /** Per round: the TTFB of connection #i (index i-1) through meshpipe, and direct. */
  const viaMeshpipe: number[][] = [];
  const direct: number[] = [];
  /** Median direct TTFB of each round, for the per-run column. */
  const directPerRound: number[] = [];
  const loads: number[] = [];
  let serverKind = '';
  const rounds = ctx.runs;
  try {
    const port = await freePort();
    const server = await startServer(ctx.dir, port);
    peers.push(server.peer);
    serverKind = server.kind;
    // The first connections to a fresh mariadbd are slower (thread cache, first session): warm it directly.
    for (let i = 0; i < 5; i++) await timeToFirstByte(port).catch(() => undefined);
    if (!ctx.meshpipe.available) {
      notes.push(`meshpipe rows omitted: ${ctx.meshpipe.reason}`);
    }
    for (let round = 1; round <= rounds && ctx.meshpipe.available; round++) {
      ctx.log(`server-first round ${round}/${rounds}: fresh meshpipe, ${CONNECTIONS} connections through it and ${CONNECTIONS} direct`);
      loads.push(load1());
      const forwards: MeshpipeForward[] = [{ port: await freePort(), target: `127.0.0.1:${port}`, mode: 'detect' }];
      if (round === 1) notes.push(`meshpipe: ${meshpipeCommand(forwards)} (defaults: server-first grace ${GRACE_MS} ms, detect timeout 10 s)`);
      const mp = await startMeshpipe(forwards, ctx.dir);
      try {
        const times: number[] = [];
        const directTimes: number[] = [];
        for (let i = 0; i < CONNECTIONS; i++) {
          // Direct and proxied alternate, so both see the same moment's load.
          directTimes.push(await timeToFirstByte(port));
          times.push(await timeToFirstByte(forwards[0]!.port));
        }
        viaMeshpipe.push(times);
        direct.push(...directTimes);
        directPerRound.push(median(directTimes));
      } finally {
        await mp.stop();
      }
      await sleep(200);
    }
  } catch (err) {
    errors.push((err as Error).message.split('\n').slice(0, 4).join(' / '));
  } finally {
    for (const p of peers.reverse()) await p.stop();
  }

  const rows: Row[] = [];
  if (direct.length > 0) {
    rows.push({ metric: 'time to greeting', subject: 'direct', name: 'direct (any connection)', value: median(direct), unit: 'ms', runs: directPerRound, runLoad1: loads, extra: { max: Math.max(...direct), samples: direct.length } });
  }
  if (viaMeshpipe.length > 0) {
    const first = viaMeshpipe.map((r) => r[0]!);
    const tenth = viaMeshpipe.map((r) => r[CONNECTIONS - 1]!);
    const middle = viaMeshpipe.flatMap((r) => r.slice(1, CONNECTIONS - 1));
    rows.push({
      metric: 'time to greeting', subject: 'meshpipe', name: 'meshpipe detect, connection #1', value: median(first), unit: 'ms', runs: first, runLoad1: loads,
      // Grace period plus one loopback connect and the server's greeting (~10 ms of slack).
      targets: [{ atMost: GRACE_MS + 10 }],
    });
    rows.push({
      metric: 'time to greeting', subject: 'meshpipe', name: `meshpipe detect, connection #${CONNECTIONS}`, value: median(tenth), unit: 'ms', runs: tenth, runLoad1: loads,
      extra: { medianOf2To9: median(middle), maxOf2To9: Math.max(...middle) },
    });
    const added = median(tenth) - median(direct);
    rows.push({
      metric: 'added delay', subject: 'meshpipe', name: `connection #${CONNECTIONS}: meshpipe - direct`, value: added, unit: 'ms',
      runs: tenth.map((t, i) => t - (directPerRound[i] ?? Number.NaN)),
      // "No added delay": within a millisecond of direct (a proxy hop on loopback costs ~0.1 ms).
      targets: [{ atMost: 1 }],
    });
  }
  notes.push(`server: ${serverKind || 'did not start'}, on a free port (not in the default opaque list 25,587,3306,4444,5432,6379,9300,11211), 127.0.0.1`);
  notes.push(`Linkerd (linkerd2-proxy) on the same unconfigured port: every connection waits the full detect timeout (${LINKERD_DETECT_TIMEOUT_S} s by default) before it proceeds as TCP, connection #1 and #${CONNECTIONS} alike, until the port is marked opaque or skipped`);
  return {
    name: 'server-first',
    title: 'server-first',
    method: `Node client times connect call -> first greeting byte, then closes; ${rounds} rounds, each with a fresh meshpipe (empty server-first cache) and ${CONNECTIONS} sequential connections through it, alternating with ${CONNECTIONS} direct ones; values are medians over rounds`,
    rows,
    notes,
    errors,
  };
}

export const serverFirst: BenchSection = {
  name: 'server-first',
  description: 'server-speaks-first (MariaDB) on an unconfigured port through a detect listener: time to greeting, connection #1 vs #10 vs direct',
  run,
};
