/**
 * Section `idle-rss`: proxy memory per idle proxied connection.
 *
 * For each proxy: start it alone, read its resident set (VmRSS from
 * /proc/PID/status, summed over nginx's workers) once idle, then open N
 * connections through it from a separate client process to a separate sink
 * process (bench/idle-peer.ts); each connection carries one short line, and
 * the sink confirms that every one of them delivered it, so all N are
 * established end to end (client socket + upstream socket inside the proxy).
 * After 2 s of quiet, RSS is read again: (RSS - baseline) / N is the cost of
 * one idle connection (target from issue 2: <= 10 KiB for meshpipe).
 * N is 10,000, or fewer when the hard fd limit cannot hold that many in one
 * process at the proxy's fds per connection, measured by a short calibration
 * run first (the JSON records N, the fds per connection and the limit).
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT, startMeshpipe } from './meshpipe.js';
import { ensurePeers, startHaproxy, startNginxStream, type Peer } from './peers.js';
import { fdCount, freePort, logTail, rssKiB, spawnTracked, stopTracked, waitListening, type Tracked } from './processes.js';
import type { BenchContext, BenchSection, Row, Section, Subject } from './report.js';

const WANTED = 10_000;
const SETTLE_MS = 2_000;
const ESTABLISH_TIMEOUT_MS = 120_000;
/** Connections of the calibration run that measures fds per connection. */
const CALIBRATION = 500;
/** fds left free for the proxy's own use beyond its idle baseline. */
const FD_MARGIN = 300;
const PEER_SCRIPT = join(REPO_ROOT, 'dist', 'bench', 'idle-peer.js');

type Status = Record<string, number | string>;

/** An idle-peer process plus the latest status line it printed. */
interface IdlePeer {
  readonly tracked: Tracked;
  latest: Status;
  ready: Status | null;
}

function startIdlePeer(name: string, args: string[], dir: string): IdlePeer {
  const tracked = spawnTracked(name, process.execPath, [PEER_SCRIPT, ...args], dir);
  const peer: IdlePeer = { tracked, latest: {}, ready: null };
  let buffered = '';
  tracked.child.stdout?.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      try {
        const msg = JSON.parse(line) as Status;
        if (msg.event === 'ready') peer.ready = msg;
        else peer.latest = msg;
      } catch {
        /* not a status line */
      }
    }
  });
  return peer;
}

async function waitFor(what: string, check: () => boolean, peers: IdlePeer[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    for (const p of peers) {
      if (p.tracked.hasExited()) throw new Error(`${p.tracked.name} exited while waiting for ${what}:\n${logTail(p.tracked)}`);
    }
    if (Date.now() > deadline) {
      const state = peers.map((p) => `${p.tracked.name}=${JSON.stringify(p.latest)}`).join(' ');
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${state})`);
    }
    await sleep(100);
  }
}

interface Measurement {
  readonly baselineKiB: number;
  readonly loadedKiB: number;
  readonly baselineFds: number;
  readonly loadedFds: number;
  readonly established: number;
}

/** Runs the idle test against one proxy started by `start(sinkPort)`. */
async function measureProxy(ctx: BenchContext, label: string, count: number, start: Start): Promise<Measurement> {
  const sinkPort = await freePort();
  const sink = startIdlePeer(`idle-sink-${label}`, ['sink', String(sinkPort)], ctx.dir);
  let proxy: Peer | null = null;
  let client: IdlePeer | null = null;
  try {
    await waitListening(sink.tracked, [sinkPort]);
    proxy = await start(sinkPort, count);
    await sleep(1_000);
    const baselineKiB = rssKiB(proxy.pid);
    const baselineFds = fdCount(proxy.pid);
    ctx.log(`idle-rss ${label}: baseline ${baselineKiB} KiB, opening ${count} connections`);
    client = startIdlePeer(`idle-client-${label}`, ['client', String(proxy.ports[0]), String(count)], ctx.dir);
    const c = client;
    await waitFor('the client to finish connecting', () => c.ready !== null, [sink, c], ESTABLISH_TIMEOUT_MS);
    if (Number(c.ready?.failed) > 0) {
      throw new Error(`${label}: ${String(c.ready?.failed)} of ${count} connections failed (${String(c.ready?.error)})`);
    }
    await waitFor(`${count} connections delivered end to end`, () => Number(sink.latest.delivered) >= count, [sink, c], ESTABLISH_TIMEOUT_MS);
    await sleep(SETTLE_MS);
    const loadedKiB = rssKiB(proxy.pid);
    const loadedFds = fdCount(proxy.pid);
    const established = Number(sink.latest.delivered);
    ctx.log(`idle-rss ${label}: ${loadedKiB} KiB with ${established} connections (${loadedFds} fds)`);
    return { baselineKiB, loadedKiB, baselineFds, loadedFds, established };
  } finally {
    // Client first, so the proxy sees ordinary closes, then the proxy, then the sink.
    if (client) await stopTracked(client.tracked);
    if (proxy) await proxy.stop();
    await stopTracked(sink.tracked);
  }
}

type Start = (sinkPort: number, connections: number) => Promise<Peer>;

/**
 * How many connections fit: a short calibration run (fresh proxy, CALIBRATION
 * connections) gives the proxy's fds per idle connection, which differs
 * between proxies (two sockets, plus any splice pipes a proxy keeps per
 * connection); the main run then uses at most what the hard fd limit allows.
 */
async function fittingCount(ctx: BenchContext, label: string, start: Start): Promise<{ count: number; fdsPerConn: number }> {
  const m = await measureProxy(ctx, `${label}-calibrate`, CALIBRATION, start);
  const fdsPerConn = (m.loadedFds - m.baselineFds) / m.established;
  const count = Math.min(WANTED, Math.floor((ctx.fdLimit - m.baselineFds - FD_MARGIN) / Math.max(fdsPerConn, 1)));
  return { count, fdsPerConn };
}

async function run(ctx: BenchContext): Promise<Section> {
  ensurePeers({ haproxy: true, nginx: true });
  const notes: string[] = [];
  const errors: string[] = [];
  const subjects: { name: string; subject: Subject; start: Start }[] = [];
  if (ctx.meshpipe.available) {
    for (const mode of ['opaque', 'detect'] as const) {
      subjects.push({
        name: `meshpipe (${mode})`,
        subject: 'meshpipe',
        start: async (sinkPort) => startMeshpipe([{ port: await freePort(), target: `127.0.0.1:${sinkPort}`, mode }], ctx.dir),
      });
    }
  } else {
    notes.push(`meshpipe rows omitted: ${ctx.meshpipe.reason}`);
  }
  subjects.push({
    name: 'haproxy (tcp, splice)',
    subject: 'haproxy',
    start: async (sinkPort, n) => startHaproxy([{ port: await freePort(), target: `127.0.0.1:${sinkPort}` }], ctx.dir, { maxconn: n + 50, maxpipes: 32 }),
  });
  subjects.push({
    name: 'nginx stream',
    subject: 'nginx',
    start: async (sinkPort) => startNginxStream([{ port: await freePort(), target: `127.0.0.1:${sinkPort}` }], ctx.dir,
      { workerConnections: Math.max(1024, ctx.fdLimit - 64), fdLimit: ctx.fdLimit }),
  });

  const rows: Row[] = [];
  for (const s of subjects) {
    const label = s.name.replace(/[^a-z]+/g, '-').replace(/-$/, '');
    try {
      const { count, fdsPerConn } = await fittingCount(ctx, label, s.start);
      if (count < WANTED) {
        notes.push(`${s.name}: ${fdsPerConn.toFixed(2)} fds per idle connection and a hard fd limit of ${ctx.fdLimit} allow ${count} connections, not ${WANTED}`);
      }
      const m = await measureProxy(ctx, label, count, s.start);
      const perConn = (m.loadedKiB - m.baselineKiB) / m.established;
      rows.push({
        metric: 'idle RSS per connection',
        subject: s.subject,
        name: `${s.name} @${m.established}`,
        value: perConn,
        unit: 'KiB/conn',
        runs: [perConn],
        extra: {
          connections: m.established, fdsPerConn: (m.loadedFds - m.baselineFds) / m.established,
          baselineRssKiB: m.baselineKiB, loadedRssKiB: m.loadedKiB, baselineFds: m.baselineFds, loadedFds: m.loadedFds,
        },
        ...(s.subject === 'meshpipe' ? { targets: [{ atMost: 10 }] } : {}),
      });
    } catch (err) {
      errors.push(`${s.name} failed: ${(err as Error).message.split('\n').slice(0, 4).join(' / ')}`);
    }
    await sleep(1_000);
  }
  return {
    name: 'idle-rss',
    title: 'idle RSS',
    method: `VmRSS of the proxy (all its processes) idle, then with N idle connections established end to end (one 20-byte line each, then silence), after ${SETTLE_MS / 1000} s; (loaded - idle) / N; N = ${WANTED} or what the hard fd limit (${ctx.fdLimit}) fits at the proxy's measured fds per connection; one measurement per proxy`,
    rows,
    notes,
    errors,
  };
}

export const idleRss: BenchSection = {
  name: 'idle-rss',
  description: 'proxy RSS per idle proxied connection (10k connections): meshpipe (opaque, detect), HAProxy, nginx stream',
  run,
};
