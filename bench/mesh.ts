/**
 * Section `mesh`: two hops with mutual TLS in network namespaces, side by
 * side with the same two hops in plaintext, HAProxy doing the same two hops
 * with mTLS, and direct.
 *
 * Two pods (test/netns.ts) with `meshpipe init` rules. Paths, all measured in
 * the same run and interleaved per round:
 * - direct: skip ports on both sides (same veth, same iptables chains);
 * - meshpipe plaintext: the two transparent sidecars without identities;
 * - meshpipe mTLS: the same sidecars restarted with identities from
 *   `meshpipe identity` (ECDSA P-256) and the server pod as a meshed
 *   destination: outbound -> mTLS to 4143 (tunnel + header) -> inbound;
 * - HAProxy: one in each pod, TLS 1.3 origination with a client certificate
 *   (the same ECDSA P-256 certificates) and termination with client
 *   verification, on skip ports.
 * Workloads, as the app's uid 1000 in the client pod: iperf3 one stream;
 * redis-benchmark PING with `-k 0` (a new connection, so one full two-hop
 * handshake, per request); connect-to-first-byte of a server that speaks
 * first (median of sequential connections); and for meshpipe mTLS, RSS of
 * both sidecars with 5,000 idle connections through the pair. Root only.
 */
import { chmodSync, chownSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createPodPair, netnsSupport, run as runCommand, type Pod } from '../test/netns.js';
import { SIDECAR_UID, startSidecar, type Sidecar } from '../test/netns-sidecar.js';
import { CLI_PATH } from './meshpipe.js';
import { ensurePeers } from './peers.js';
import { load1, median, type BenchContext, type BenchSection, type Row, type Section, type Subject } from './report.js';

const APP = { uid: 1000 };
const IPERF_SECONDS = 5;
const REDIS_REQUESTS = 6000;
const TTFB_CONNECTIONS = 300;
const IDLE_CONNECTIONS = 5000;
const SERVER_ID = 'server.bench.serviceaccount.identity.linkerd.cluster.local';
const CLIENT_ID = 'client.bench.serviceaccount.identity.linkerd.cluster.local';
/** App ports: through the sidecars, and direct / HAProxy on skip ports. */
const APPS = { iperf: 5201, redis: 6379, banner: 7000 };
const DIRECT = { iperf: 15201, redis: 16379, banner: 17000 };
/** HAProxy: client-pod listeners (loopback) and the server-pod TLS port. */
const HAP = { iperf: 25201, redis: 26379, banner: 27000, tls: 14143 };

/** Connects COUNT times in sequence; prints the median microseconds from connect() to the first byte. */
const TTFB = `const net = require('node:net');
const [host, port, count] = process.argv.slice(1); const times = [];
(function next() {
  if (times.length === Number(count)) { times.sort((a, b) => a - b); console.log('TTFB_US ' + Math.round(times[times.length >> 1])); return; }
  const t0 = process.hrtime.bigint(); const s = net.connect({ host, port: Number(port) });
  s.once('data', () => { times.push(Number(process.hrtime.bigint() - t0) / 1000); s.destroy(); setImmediate(next); });
  s.on('error', (e) => { console.log('ERROR ' + e.code); process.exit(1); });
})();`;
/** Holds COUNT idle connections open, prints HELD when all are established and wait for one byte back. */
const HOLD = `const net = require('node:net');
const [host, port, count] = process.argv.slice(1); let ok = 0; const all = [];
for (let i = 0; i < Number(count); i++) { const s = net.connect({ host, port: Number(port) }); all.push(s);
  s.once('data', () => { if (++ok === Number(count)) console.log('HELD'); }); s.on('error', (e) => { console.log('ERROR ' + e.code); process.exit(1); }); }
process.stdin.on('data', () => process.exit(0));`;

async function iperf(pod: Pod, host: string, port: number): Promise<number> {
  const r = await pod.exec('iperf3', ['-c', host, '-p', String(port), '-t', String(IPERF_SECONDS), '-O', '1', '-J'], { ...APP, timeoutMs: 60_000 });
  const bps = (JSON.parse(r.stdout) as { end?: { sum_received?: { bits_per_second?: number } } }).end?.sum_received?.bits_per_second;
  if (bps === undefined) throw new Error(`iperf3 ${host}:${port}: ${r.stdout.slice(0, 300)} ${r.stderr.slice(0, 300)}`);
  return bps / 1e9;
}

async function newConnections(pod: Pod, host: string, port: number): Promise<number> {
  const r = await pod.exec('redis-benchmark', ['-h', host, '-p', String(port), '-k', '0', '-c', '4', '-n', String(REDIS_REQUESTS), '-t', 'ping_inline', '--csv'],
    { ...APP, timeoutMs: 120_000 });
  const m = /"PING_INLINE","([\d.]+)"/.exec(r.stdout);
  if (!m) throw new Error(`redis-benchmark ${host}:${port}: ${r.stdout.slice(0, 300)} ${r.stderr.slice(0, 300)}`);
  return Number(m[1]);
}

async function ttfb(pod: Pod, host: string, port: number): Promise<number> {
  const r = await pod.exec(process.execPath, ['-e', TTFB, host, String(port), String(TTFB_CONNECTIONS)], { ...APP, timeoutMs: 120_000 });
  const m = /TTFB_US (\d+)/.exec(r.stdout);
  if (!m) throw new Error(`ttfb ${host}:${port}: ${r.stdout.slice(0, 300)}`);
  return Number(m[1]) / 1000;
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : Number.NaN;
}

function haproxyConfigs(dir: string, serverIp: string): { client: string; server: string } {
  const pem = (sub: string) => join(dir, `${sub}.pem`);
  for (const sub of ['client', 'server']) {
    writeFileSync(pem(sub), readFileSync(join(dir, sub, 'tls.crt'), 'utf8') + readFileSync(join(dir, sub, 'tls.key'), 'utf8'));
  }
  const ca = join(dir, 'client', 'ca.crt');
  const global = 'global\n  maxconn 20000\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n';
  const client = global + Object.entries({ iperf: APPS.iperf, redis: APPS.redis, banner: APPS.banner }).map(([name, port]) =>
    `listen c_${name}\n  bind 127.0.0.1:${HAP[name as keyof typeof HAP]}\n  server s ${serverIp}:${HAP.tls} ssl crt ${pem('client')} ca-file ${ca} verify required verifyhost ${SERVER_ID} sni str(${SERVER_ID}) alpn hap${port}\n`).join('');
  const server = global + `frontend f\n  bind :${HAP.tls} ssl crt ${pem('server')} ca-file ${ca} verify required alpn hap${APPS.iperf},hap${APPS.redis},hap${APPS.banner}\n` +
    Object.values(APPS).map((port) => `  use_backend b${port} if { ssl_fc_alpn -i hap${port} }\n`).join('') +
    Object.values(APPS).map((port) => `backend b${port}\n  server a 127.0.0.1:${port}\n`).join('');
  writeFileSync(join(dir, 'hap-client.cfg'), client);
  writeFileSync(join(dir, 'hap-server.cfg'), server);
  return { client: join(dir, 'hap-client.cfg'), server: join(dir, 'hap-server.cfg') };
}

interface PathResult { gbps: number[]; conns: number[]; ttfbMs: number[]; loads: number[] }

async function run(ctx: BenchContext): Promise<Section> {
  const support = await netnsSupport();
  const base = { name: 'mesh', title: 'two hops with mutual TLS' };
  if (!support.ok) return { ...base, method: 'needs network namespaces (root)', rows: [], notes: [`skipped: ${support.reason}`], errors: [] };
  if (!ctx.meshpipe.available) return { ...base, method: '', rows: [], notes: [`skipped: ${ctx.meshpipe.reason}`], errors: [] };
  ensurePeers({ iperf3: true, haproxy: true, redis: true });
  const notes: string[] = [];
  const errors: string[] = [];
  const results = new Map<string, PathResult>();
  const rows: Row[] = [];
  const pair = await createPodPair();
  try {
    const { client, server } = pair;
    const ip = server.addr4!;
    const cli = async (args: string[]) => {
      const r = await runCommand(process.execPath, [CLI_PATH, ...args]);
      if (r.code !== 0) throw new Error(`meshpipe ${args.join(' ')}: ${r.stderr}`);
    };
    chmodSync(ctx.dir, 0o755); // the sidecars (uid 2102) read their identities below it
    await cli(['identity', 'init', '--out', join(ctx.dir, 'ca'), '--force']);
    for (const [name, sub] of [[CLIENT_ID, 'client'], [SERVER_ID, 'server']] as const) {
      await cli(['identity', 'issue', '--name', name, '--ca-dir', join(ctx.dir, 'ca'), '--out', join(ctx.dir, sub), '--force']);
      for (const f of readdirSync(join(ctx.dir, sub))) chownSync(join(ctx.dir, sub, f), SIDECAR_UID, SIDECAR_UID);
      chownSync(join(ctx.dir, sub), SIDECAR_UID, SIDECAR_UID);
    }
    const skip = [...Object.values(DIRECT), HAP.tls].join(',');
    for (const [pod, flag] of [[client, '--skip-outbound-ports'], [server, '--skip-inbound-ports']] as const) {
      const r = await pod.exec(process.execPath, [CLI_PATH, 'init', '--no-ipv6', flag, skip]);
      if (r.code !== 0) throw new Error(`meshpipe init: ${r.stderr}`);
    }
    writeFileSync(join(ctx.dir, 'destinations'), `${ip} ${SERVER_ID}\n`);
    for (const [port, direct] of [[APPS.iperf, DIRECT.iperf]] as const) {
      server.spawn('iperf3', ['-s', '-p', String(port)]);
      server.spawn('iperf3', ['-s', '-p', String(direct)]);
    }
    server.spawn('redis-server', ['--port', String(APPS.redis), '--bind', '0.0.0.0', '--protected-mode', 'no', '--save', '', '--appendonly', 'no', '--maxclients', '20000']);
    server.spawn('redis-server', ['--port', String(DIRECT.redis), '--bind', '0.0.0.0', '--protected-mode', 'no', '--save', '', '--appendonly', 'no']);
    const banner = `const net = require('node:net'); for (const p of process.argv.slice(1)) net.createServer((s) => { s.write('+OK\\r\\n'); s.on('error', () => {}); s.on('data', () => {}); }).listen({ host: '0.0.0.0', port: Number(p), backlog: 4096 }); console.log('LISTENING');`;
    await server.spawn(process.execPath, ['-e', banner, String(APPS.banner), String(DIRECT.banner)]).waitFor(/LISTENING/);
    const hap = haproxyConfigs(ctx.dir, ip);
    server.spawn('haproxy', ['-f', hap.server, '-db']);
    client.spawn('haproxy', ['-f', hap.client, '-db'], { uid: SIDECAR_UID });
    await sleep(500);

    const paths: { name: string; subject: Subject; host: string; ports: typeof APPS; mesh?: boolean }[] = [
      { name: 'direct', subject: 'direct', host: ip, ports: DIRECT },
      { name: 'meshpipe plaintext, 2 sidecars', subject: 'meshpipe', host: ip, ports: APPS, mesh: false },
      { name: 'meshpipe mTLS, 2 sidecars', subject: 'meshpipe', host: ip, ports: APPS, mesh: true },
      { name: 'HAProxy mTLS, 2 hops', subject: 'haproxy', host: '127.0.0.1', ports: { iperf: HAP.iperf, redis: HAP.redis, banner: HAP.banner } },
    ];
    let sidecars: Sidecar[] = [];
    let meshOn: boolean | undefined;
    const sidecarsFor = async (mesh: boolean): Promise<void> => {
      if (meshOn === mesh) return;
      for (const s of sidecars) await s.stop();
      const id = (sub: string) => (mesh ? ['--identity-dir', join(ctx.dir, sub)] : []);
      sidecars = [
        await startSidecar(client, [...id('client'), ...(mesh ? ['--destinations', join(ctx.dir, 'destinations')] : [])]),
        await startSidecar(server, id('server')),
      ];
      meshOn = mesh;
    };
    const rounds = Math.min(ctx.runs, 3);
    for (let round = 1; round <= rounds; round++) {
      for (const p of paths) {
        if (p.mesh !== undefined) await sidecarsFor(p.mesh);
        ctx.log(`mesh: round ${round}/${rounds} via ${p.name}`);
        const r = results.get(p.name) ?? { gbps: [], conns: [], ttfbMs: [], loads: [] };
        results.set(p.name, r);
        try {
          r.loads.push(load1());
          r.gbps.push(await iperf(client, p.host, p.ports.iperf));
          r.conns.push(await newConnections(client, p.host, p.ports.redis));
          r.ttfbMs.push(await ttfb(client, p.host, p.ports.banner));
        } catch (err) {
          errors.push(`${p.name}: ${(err as Error).message.split('\n')[0]}`);
        }
      }
    }
    // Memory: idle connections through the mTLS pair, both sidecars' RSS growth.
    await sidecarsFor(true);
    await sleep(300);
    const before = sidecars.reduce((n, s) => n + rssKiB(s.process.pid), 0);
    const holder = client.spawn(process.execPath, ['-e', HOLD, ip, String(APPS.banner), String(IDLE_CONNECTIONS)], APP);
    try {
      await holder.waitFor(/HELD/, 120_000);
      await sleep(500);
      const after = sidecars.reduce((n, s) => n + rssKiB(s.process.pid), 0);
      const snap = await sidecars[1]!.snapshot();
      const open = snap.tcp.filter((s) => s.direction === 'inbound' && s.tls === 'true').reduce((n, s) => n + s.srcOpen, 0);
      if (open < IDLE_CONNECTIONS) errors.push(`only ${open} of ${IDLE_CONNECTIONS} idle connections were mTLS through the server sidecar`);
      rows.push({ metric: 'idle mTLS connection memory', subject: 'meshpipe', name: `both sidecars, RSS per idle mTLS connection (${IDLE_CONNECTIONS})`,
        value: (after - before) / IDLE_CONNECTIONS, unit: 'KiB', runs: [(after - before) / IDLE_CONNECTIONS], targets: [{ atMost: 40 }] });
    } catch (err) {
      errors.push(`idle connections: ${(err as Error).message.split('\n')[0]}`);
    } finally {
      await holder.stop();
    }
    const s = await sidecars[1]!.snapshot();
    notes.push(`server sidecar: ${s.mesh.handshakeMs[0]!.count} inbound handshakes, ${s.mesh.handshakeErrors.reduce((n, e) => n + e.count, 0)} handshake errors`);
    for (const sc of sidecars) await sc.stop();
  } catch (err) {
    errors.push((err as Error).message.split('\n').slice(0, 3).join(' / '));
  } finally {
    await pair.cleanup();
  }
  const direct = results.get('direct');
  for (const [name, r] of results) {
    const subject: Subject = name.startsWith('direct') ? 'direct' : name.startsWith('HAProxy') ? 'haproxy' : 'meshpipe';
    const mtls = name.includes('meshpipe mTLS');
    if (r.gbps.length > 0) {
      rows.push({ metric: 'two-hop iperf3', subject, name: `${name}, iperf3 1 stream`, value: median(r.gbps), unit: 'Gbit/s', runs: r.gbps, runLoad1: r.loads,
        ...(mtls ? { targets: [{ ratioTo: 'direct', atLeast: 0.35 }, { ratioTo: 'haproxy', atLeast: 3 }] } : {}) });
    }
    if (r.conns.length > 0) {
      rows.push({ metric: 'two-hop new connections', subject, name: `${name}, redis-benchmark -k 0 PING`, value: median(r.conns), unit: 'conn/s', runs: r.conns,
        ...(mtls ? { targets: [{ ratioTo: 'haproxy', atLeast: 5 }] } : {}) });
    }
    if (r.ttfbMs.length > 0) {
      rows.push({ metric: 'connect to first byte', subject, name: `${name}, connect to first byte (median)`, value: median(r.ttfbMs), unit: 'ms', runs: r.ttfbMs,
        ...(mtls && direct ? { targets: [{ atMost: median(direct.ttfbMs) + 1 }] } : {}) });
    }
  }
  notes.push('targets: throughput >= 0.35x direct and >= 3x HAProxy; >= 2,000 new two-hop mTLS connections/s and >= 5x HAProxy; connect-to-first-byte <= direct + 1 ms; <= 40 KiB RSS per idle mTLS connection');
  notes.push('every process (client, two sidecars or two HAProxies, server) shares the same 2 cores');
  return {
    ...base,
    method: `client pod -> 2 hops -> server pod in netns; iperf3 -t ${IPERF_SECONDS}, redis-benchmark -k 0 -c 4 -n ${REDIS_REQUESTS} PING_INLINE, ${TTFB_CONNECTIONS} sequential connects to a server-first banner (median), median of ${Math.min(ctx.runs, 3)} interleaved rounds; RSS of both sidecars with ${IDLE_CONNECTIONS} idle mTLS connections`,
    rows,
    notes,
    errors,
  };
}

export const mesh: BenchSection = {
  name: 'mesh',
  description: 'two hops with mTLS (meshpipe sidecars with identities) vs plaintext sidecars, HAProxy mTLS and direct (netns, root only)',
  run,
};
