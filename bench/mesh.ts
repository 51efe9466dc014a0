/**
 * Section `mesh`: two hops with mutual TLS in network namespaces, side by
 * side with the same two hops in plaintext, HAProxy doing the same two hops
 * with mutual TLS, and direct.
 *
 * Two pods (test/netns.ts) with `meshpipe init` rules. Paths, all measured in
 * the same run and interleaved per round:
 * - direct: skip ports on both sides (same veth, same iptables chains);
 * - meshpipe plaintext: the two transparent sidecars without identities;
 * - meshpipe mTLS: the same sidecars restarted with identities from
 *   `meshpipe identity` (ECDSA P-256) and the server pod as a meshed
 *   destination: outbound -> mTLS to 4143 (tunnel + header) -> inbound;
 * - HAProxy mTLS: one in each pod on skip ports, the client side
 *   originating TLS 1.3 with the client certificate (the same ECDSA P-256
 *   certificates and trust anchor), verifying the server's chain and name,
 *   the server side terminating with client verification and routing by
 *   ALPN to the app on loopback. Like meshpipe (and Linkerd), every
 *   connection is a full mutual handshake (`no-ssl-reuse`: HAProxy would
 *   otherwise resume TLS sessions to its server, skipping both certificate
 *   checks), and both prefer TLS_AES_128_GCM_SHA256 with X25519 (OpenSSL's
 *   first default group; meshpipe's too).
 * Workloads, as the app's uid 1000 in the client pod: iperf3 one stream;
 * redis-benchmark PING with `-k 0` (a new connection, so one full two-hop
 * handshake, per request) and 50 clients (enough to keep every path busy,
 * so it measures capacity, not latency); connect-to-first-byte of a server
 * that speaks first (median of sequential connections); HTTP/1.1 keep-alive
 * requests per second (wrk against nginx in the server pod); and, for the
 * two mTLS paths, RSS of both proxies with 5,000 idle connections.
 *
 * Both pods run with `net.ipv4.tcp_tw_reuse=1`. A client making tens of
 * thousands of short connections to one address fills the ephemeral port
 * range with TIME_WAIT sockets, and then every connect() scans it (most of
 * a proxy's CPU, measured with perf). The default (2) allows reuse only on
 * loopback, which HAProxy's legs use and meshpipe's do not (it dials the
 * pod IP, as Linkerd does), so without it the numbers compare the kernel's
 * port search, not the proxies.
 *
 * The machine is shared: besides the wall-clock numbers each proxy's CPU
 * per new connection and per GB is recorded (`extra`), which depends far
 * less on what else runs. Root only.
 */
import { chmodSync, chownSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createPodPair, netnsSupport, run as runCommand, type Pod, type PodProcess } from '../test/netns.js';
import { SIDECAR_UID, startSidecar, type Sidecar } from '../test/netns-sidecar.js';
import { CLI_PATH } from './meshpipe.js';
import { ensurePeers } from './peers.js';
import { cpuSeconds } from './processes.js';
import { load1, median, type BenchContext, type BenchSection, type Row, type Section, type Subject } from './report.js';

const APP = { uid: 1000 };
const IPERF_SECONDS = 5;
const REDIS_REQUESTS = 6000;
const REDIS_CLIENTS = 50;
const TTFB_CONNECTIONS = 300;
const WRK_SECONDS = 5;
const WRK_CONNECTIONS = 16;
const IDLE_CONNECTIONS = 5000;
const SERVER_ID = 'server.bench.serviceaccount.identity.linkerd.cluster.local';
const CLIENT_ID = 'client.bench.serviceaccount.identity.linkerd.cluster.local';
/** App ports: through the sidecars, and direct / HAProxy on skip ports. */
const APPS = { iperf: 5201, redis: 6379, banner: 7000, http: 8080 };
const DIRECT = { iperf: 15201, redis: 16379, banner: 17000, http: 18080 };
/** HAProxy: client-pod listeners (loopback) and the server-pod TLS port. */
const HAP = { iperf: 25201, redis: 26379, banner: 27000, http: 28080, tls: 14143 };
type Ports = typeof APPS;

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

/** The proxies of a path, for CPU accounting. */
type Pids = () => readonly number[];

function cpuOf(pids: readonly number[]): number {
  return pids.reduce((n, p) => n + cpuSeconds(p), 0);
}

async function iperf(pod: Pod, host: string, port: number, pids: readonly number[]): Promise<{ gbps: number; cpuMsPerGB: number }> {
  const cpu0 = cpuOf(pids);
  const r = await pod.exec('iperf3', ['-c', host, '-p', String(port), '-t', String(IPERF_SECONDS), '-O', '1', '-J'], { ...APP, timeoutMs: 60_000 });
  const cpu = cpuOf(pids) - cpu0;
  const end = (JSON.parse(r.stdout) as { end?: { sum_received?: { bits_per_second?: number; bytes?: number } } }).end?.sum_received;
  if (end?.bits_per_second === undefined || end.bytes === undefined) throw new Error(`iperf3 ${host}:${port}: ${r.stdout.slice(0, 300)} ${r.stderr.slice(0, 300)}`);
  // -O 1 leaves the first second out of `bytes` but not out of the CPU: slightly pessimistic for the proxies.
  return { gbps: end.bits_per_second / 1e9, cpuMsPerGB: (1000 * cpu) / (end.bytes / 1e9) };
}

async function newConnections(pod: Pod, host: string, port: number, pids: readonly number[]): Promise<{ rate: number; cpuUsPerConn: number }> {
  const cpu0 = cpuOf(pids);
  const r = await pod.exec('redis-benchmark', ['-h', host, '-p', String(port), '-k', '0', '-c', String(REDIS_CLIENTS), '-n', String(REDIS_REQUESTS), '-t', 'ping_inline', '--csv'],
    { ...APP, timeoutMs: 180_000 });
  const cpu = cpuOf(pids) - cpu0;
  const m = /"PING_INLINE","([\d.]+)"/.exec(r.stdout);
  if (!m) throw new Error(`redis-benchmark ${host}:${port}: ${r.stdout.slice(0, 300)} ${r.stderr.slice(0, 300)}`);
  return { rate: Number(m[1]), cpuUsPerConn: (1e6 * cpu) / REDIS_REQUESTS };
}

async function ttfb(pod: Pod, host: string, port: number): Promise<number> {
  const r = await pod.exec(process.execPath, ['-e', TTFB, host, String(port), String(TTFB_CONNECTIONS)], { ...APP, timeoutMs: 120_000 });
  const m = /TTFB_US (\d+)/.exec(r.stdout);
  if (!m) throw new Error(`ttfb ${host}:${port}: ${r.stdout.slice(0, 300)}`);
  return Number(m[1]) / 1000;
}

async function httpKeepAlive(pod: Pod, host: string, port: number, pids: readonly number[]): Promise<{ rps: number; cpuUsPerReq: number }> {
  const cpu0 = cpuOf(pids);
  const r = await pod.exec('wrk', ['-t', '2', '-c', String(WRK_CONNECTIONS), '-d', `${WRK_SECONDS}s`, `http://${host}:${port}/`], { ...APP, timeoutMs: 60_000 });
  const cpu = cpuOf(pids) - cpu0;
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(r.stdout);
  const total = /(\d+) requests in/.exec(r.stdout);
  if (!rps || !total || /Non-2xx|Socket errors/.test(r.stdout)) throw new Error(`wrk ${host}:${port}: ${r.stdout.slice(0, 400)} ${r.stderr.slice(0, 200)}`);
  return { rps: Number(rps[1]), cpuUsPerReq: (1e6 * cpu) / Number(total[1]) };
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
  // maxconn 9000: HAProxy needs 2 descriptors per connection and may not raise past the 20,000 hard limit here.
  const suites = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';
  const global = `global\n  maxconn 9000\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\n` +
    `  ssl-default-bind-ciphersuites ${suites}\n  ssl-default-server-ciphersuites ${suites}\n` +
    'defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n';
  const names = Object.keys(APPS) as (keyof Ports)[];
  const client = global + names.map((name) =>
    `listen c_${name}\n  bind 127.0.0.1:${HAP[name]}\n  server s ${serverIp}:${HAP.tls} ssl crt ${pem('client')} ca-file ${ca} verify required verifyhost ${SERVER_ID} sni str(${SERVER_ID}) alpn hap${APPS[name]} no-ssl-reuse\n`).join('');
  const server = global + `frontend f\n  bind :${HAP.tls} ssl crt ${pem('server')} ca-file ${ca} verify required alpn ${names.map((n) => `hap${APPS[n]}`).join(',')}\n` +
    names.map((n) => `  use_backend b${APPS[n]} if { ssl_fc_alpn -i hap${APPS[n]} }\n`).join('') +
    names.map((n) => `backend b${APPS[n]}\n  server a 127.0.0.1:${APPS[n]}\n`).join('');
  writeFileSync(join(dir, 'hap-client.cfg'), client);
  writeFileSync(join(dir, 'hap-server.cfg'), server);
  return { client: join(dir, 'hap-client.cfg'), server: join(dir, 'hap-server.cfg') };
}

function nginxConfig(dir: string): string {
  const conf = join(dir, 'nginx-mesh.conf');
  writeFileSync(conf, `worker_processes 1;\npid ${join(dir, 'nginx-mesh.pid')};\nerror_log ${join(dir, 'nginx-mesh-error.log')};\ndaemon off;\n` +
    `events { worker_connections 4096; }\nhttp { access_log off; keepalive_requests 1000000; keepalive_timeout 120s;\n` +
    `  server { listen ${APPS.http}; listen ${DIRECT.http}; location / { return 200 "ok\\n"; } } }\n`);
  return conf;
}

interface PathResult { gbps: number[]; gbCpu: number[]; conns: number[]; connCpu: number[]; ttfbMs: number[]; rps: number[]; reqCpu: number[]; loads: number[] }

interface Path { name: string; subject: Subject; host: string; ports: Ports; mesh?: boolean; pids: Pids }

async function run(ctx: BenchContext): Promise<Section> {
  const support = await netnsSupport();
  const base = { name: 'mesh', title: 'two hops with mutual TLS' };
  if (!support.ok) return { ...base, method: 'needs network namespaces (root)', rows: [], notes: [`skipped: ${support.reason}`], errors: [] };
  if (!ctx.meshpipe.available) return { ...base, method: '', rows: [], notes: [`skipped: ${ctx.meshpipe.reason}`], errors: [] };
  ensurePeers({ iperf3: true, haproxy: true, redis: true, nginx: true });
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
      const tw = await pod.exec('sysctl', ['-q', '-w', 'net.ipv4.tcp_tw_reuse=1']);
      if (tw.code !== 0) throw new Error(`sysctl tcp_tw_reuse: ${tw.stderr}`);
    }
    writeFileSync(join(ctx.dir, 'destinations'), `${ip} ${SERVER_ID}\n`);
    server.spawn('iperf3', ['-s', '-p', String(APPS.iperf)]);
    server.spawn('iperf3', ['-s', '-p', String(DIRECT.iperf)]);
    server.spawn('redis-server', ['--port', String(APPS.redis), '--bind', '0.0.0.0', '--protected-mode', 'no', '--save', '', '--appendonly', 'no', '--maxclients', '9000']);
    server.spawn('redis-server', ['--port', String(DIRECT.redis), '--bind', '0.0.0.0', '--protected-mode', 'no', '--save', '', '--appendonly', 'no']);
    server.spawn('nginx', ['-p', ctx.dir, '-c', nginxConfig(ctx.dir), '-e', join(ctx.dir, 'nginx-mesh-error.log')]);
    const banner = `const net = require('node:net'); for (const p of process.argv.slice(1)) net.createServer((s) => { s.write('+OK\\r\\n'); s.on('error', () => {}); s.on('data', () => {}); }).listen({ host: '0.0.0.0', port: Number(p), backlog: 4096 }); console.log('LISTENING');`;
    await server.spawn(process.execPath, ['-e', banner, String(APPS.banner), String(DIRECT.banner)]).waitFor(/LISTENING/);
    const hap = haproxyConfigs(ctx.dir, ip);
    const haps: PodProcess[] = [
      server.spawn('haproxy', ['-f', hap.server, '-db']),
      client.spawn('haproxy', ['-f', hap.client, '-db'], { uid: SIDECAR_UID }),
    ];
    await sleep(500);
    for (const h of haps) {
      if (h.child.exitCode !== null) throw new Error(`haproxy exited: ${h.output().slice(0, 400)}`);
    }

    let sidecars: Sidecar[] = [];
    const sidecarPids = () => sidecars.map((s) => s.process.pid);
    const paths: Path[] = [
      { name: 'direct', subject: 'direct', host: ip, ports: DIRECT, pids: () => [] },
      { name: 'meshpipe plaintext, 2 sidecars', subject: 'meshpipe', host: ip, ports: APPS, mesh: false, pids: sidecarPids },
      { name: 'meshpipe mTLS, 2 sidecars', subject: 'meshpipe', host: ip, ports: APPS, mesh: true, pids: sidecarPids },
      { name: 'HAProxy mTLS, 2 hops', subject: 'haproxy', host: '127.0.0.1', ports: { iperf: HAP.iperf, redis: HAP.redis, banner: HAP.banner, http: HAP.http },
        pids: () => haps.map((h) => h.pid) },
    ];
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
        const r = results.get(p.name) ?? { gbps: [], gbCpu: [], conns: [], connCpu: [], ttfbMs: [], rps: [], reqCpu: [], loads: [] };
        results.set(p.name, r);
        try {
          r.loads.push(load1());
          const t = await iperf(client, p.host, p.ports.iperf, p.pids());
          r.gbps.push(t.gbps);
          r.gbCpu.push(t.cpuMsPerGB);
          const c = await newConnections(client, p.host, p.ports.redis, p.pids());
          r.conns.push(c.rate);
          r.connCpu.push(c.cpuUsPerConn);
          r.ttfbMs.push(await ttfb(client, p.host, p.ports.banner));
          const h = await httpKeepAlive(client, p.host, p.ports.http, p.pids());
          r.rps.push(h.rps);
          r.reqCpu.push(h.cpuUsPerReq);
        } catch (err) {
          errors.push(`${p.name}: ${(err as Error).message.split('\n')[0]}`);
        }
      }
    }
    // Memory: idle connections through each mTLS pair, both proxies' RSS growth.
    const idle = async (label: string, subject: Subject, host: string, port: number, pids: readonly number[], check?: () => Promise<void>) => {
      await sleep(300);
      const before = pids.reduce((n, p) => n + rssKiB(p), 0);
      const holder = client.spawn(process.execPath, ['-e', HOLD, host, String(port), String(IDLE_CONNECTIONS)], APP);
      try {
        await holder.waitFor(/HELD/, 180_000);
        await sleep(500);
        const after = pids.reduce((n, p) => n + rssKiB(p), 0);
        await check?.();
        const per = (after - before) / IDLE_CONNECTIONS;
        rows.push({ metric: 'idle mTLS connection memory', subject, name: `${label}, RSS of both proxies per idle mTLS connection (${IDLE_CONNECTIONS})`,
          value: per, unit: 'KiB', runs: [per], ...(subject === 'meshpipe' ? { targets: [{ atMost: 40 }] } : {}) });
      } catch (err) {
        errors.push(`${label} idle connections: ${(err as Error).message.split('\n')[0]}`);
      } finally {
        await holder.stop();
      }
    };
    await sidecarsFor(true);
    await idle('meshpipe mTLS', 'meshpipe', ip, APPS.banner, sidecarPids(), async () => {
      const snap = await sidecars[1]!.snapshot();
      const open = snap.tcp.filter((s) => s.direction === 'inbound' && s.tls === 'true').reduce((n, s) => n + s.srcOpen, 0);
      if (open < IDLE_CONNECTIONS) errors.push(`only ${open} of ${IDLE_CONNECTIONS} idle connections were mTLS through the server sidecar`);
    });
    await idle('HAProxy mTLS', 'haproxy', '127.0.0.1', HAP.banner, haps.map((h) => h.pid));
    const s = await sidecars[1]!.snapshot();
    notes.push(`server sidecar: ${s.mesh.handshakeMs[0]!.count} inbound handshakes, ${s.mesh.handshakeErrors.reduce((n, e) => n + e.count, 0)} handshake errors`);
    for (const sc of sidecars) await sc.stop();
    for (const h of haps) await h.stop();
  } catch (err) {
    errors.push((err as Error).message.split('\n').slice(0, 3).join(' / '));
  } finally {
    await pair.cleanup();
  }
  const direct = results.get('direct');
  const round1 = (v: number) => Math.round(v * 10) / 10;
  for (const [name, r] of results) {
    const subject: Subject = name.startsWith('direct') ? 'direct' : name.startsWith('HAProxy') ? 'haproxy' : 'meshpipe';
    const mtls = name.includes('meshpipe mTLS');
    const proxied = subject !== 'direct';
    if (r.gbps.length > 0) {
      rows.push({ metric: 'two-hop iperf3', subject, name: `${name}, iperf3 1 stream`, value: median(r.gbps), unit: 'Gbit/s', runs: r.gbps, runLoad1: r.loads,
        ...(proxied ? { extra: { proxyCpuMsPerGB: round1(median(r.gbCpu)) } } : {}),
        ...(mtls ? { targets: [{ ratioTo: 'direct', atLeast: 0.35 }, { ratioTo: 'haproxy', atLeast: 3 }] } : {}) });
    }
    if (r.conns.length > 0) {
      rows.push({ metric: 'two-hop new connections', subject, name: `${name}, redis-benchmark -k 0 -c ${REDIS_CLIENTS} PING`, value: median(r.conns), unit: 'conn/s',
        runs: r.conns, runLoad1: r.loads,
        ...(proxied ? { extra: { proxyCpuUsPerConn: round1(median(r.connCpu)) } } : {}),
        ...(mtls ? { targets: [{ ratioTo: 'haproxy', atLeast: 5 }] } : {}) });
    }
    if (r.ttfbMs.length > 0) {
      rows.push({ metric: 'connect to first byte', subject, name: `${name}, connect to first byte (median)`, value: median(r.ttfbMs), unit: 'ms', runs: r.ttfbMs,
        ...(mtls && direct ? { targets: [{ atMost: Math.round((median(direct.ttfbMs) + 1) * 100) / 100 }] } : {}) });
    }
    if (r.rps.length > 0) {
      rows.push({ metric: 'two-hop HTTP/1.1 keep-alive', subject, name: `${name}, wrk -c ${WRK_CONNECTIONS} keep-alive`, value: median(r.rps), unit: 'req/s', runs: r.rps,
        ...(proxied ? { extra: { proxyCpuUsPerReq: round1(median(r.reqCpu)) } } : {}) });
    }
  }
  notes.push('targets: throughput >= 0.35x direct and >= 3x HAProxy; >= 2,000 new two-hop mTLS connections/s and >= 5x HAProxy; connect-to-first-byte <= direct + 1 ms; <= 40 KiB RSS per idle mTLS connection');
  notes.push('every process (client, two sidecars or two HAProxies, server) shares the same 2 cores; proxy CPU (extra) is both proxies\' CPU time per GB, per new connection, per request');
  notes.push('both pods run with net.ipv4.tcp_tw_reuse=1 (see bench/mesh.ts: otherwise connect() scans a port range full of TIME_WAIT sockets)');
  return {
    ...base,
    method: `client pod -> 2 hops -> server pod in netns; iperf3 -t ${IPERF_SECONDS}, redis-benchmark -k 0 -c ${REDIS_CLIENTS} -n ${REDIS_REQUESTS} PING_INLINE, ${TTFB_CONNECTIONS} sequential connects to a server-first banner (median), wrk -t 2 -c ${WRK_CONNECTIONS} -d ${WRK_SECONDS}s against nginx; median of ${Math.min(ctx.runs, 3)} interleaved rounds; RSS of both proxies with ${IDLE_CONNECTIONS} idle mTLS connections`,
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
