/**
 * Section `http2`: HTTP/2 and gRPC request throughput through a proxy, with
 * h2load (nghttp2) keeping 100 streams in flight.
 *
 * HTTP/2 paths, GET of 512 bytes: direct to nginx (cleartext HTTP/2 with
 * prior knowledge), meshpipe `mode=http2` (each stream proxied over one
 * multiplexed HTTP/2 connection to nginx), and nginx itself as the proxy (an
 * `http2` listener with `proxy_pass` to the origin over an HTTP/1.1 keepalive
 * pool: nginx cannot proxy to an HTTP/2 upstream). Load: `h2load -c 1 -m 100`
 * (one connection, 100 concurrent streams) for 6 s, three interleaved rounds
 * per path, the median round reported.
 *
 * gRPC unary: h2load POSTs a gRPC-framed message (`content-type:
 * application/grpc`, `te: trailers`) to a small HTTP/2 origin that echoes it
 * with `grpc-status: 0` in trailers (crates/meshpipe-core/examples/h2_peer.rs,
 * built with cargo, so the origin is never the bottleneck): direct and
 * through meshpipe `mode=grpc`, `-c 4 -m 25` (100 calls in flight).
 *
 * Per-request cost, HTTP/1.1 against HTTP/2 (the evidence for not carrying
 * HTTP/1 over HTTP/2 between two proxies, docs/http.md): 16 requests in
 * flight through meshpipe, as HTTP/1.1 on 16 connections (`h2load --h1 -c 16
 * -m 1`, `mode=http1` to nginx's HTTP/1.1 listener), as HTTP/2 on one
 * connection with 16 streams (`-c 1 -m 16`), and as HTTP/2 on 16 connections
 * of one stream each; the proxy's CPU per request is the number compared.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SMALL_FILE, writeSite } from './http-peers.js';
import { meshpipeCommand, REPO_ROOT, startMeshpipe, type MeshpipeForward } from './meshpipe.js';
import { ensurePeers, type Peer } from './peers.js';
import { cpuSeconds, ensureInstalled, freePorts, runAsync, spawnTracked, stopTracked, waitListening, which } from './processes.js';
import { load1, type BenchContext, type BenchSection, type Row, type Section, type Subject } from './report.js';

const SECONDS = 6;
const ROUNDS = 3;
/** The per-request cost comparison's metric and its two main rows. */
const COST = 'req/s, 16 in flight';
const COST_H1 = 'meshpipe http/1.1, 16 connections';
const COST_H2_STREAMS = 'meshpipe http/2, 16 streams on 1 connection';
const H2_PEER = join(REPO_ROOT, 'target', 'release', 'examples', 'h2_peer');

export interface H2loadResult {
  readonly requestsPerSecond: number;
  readonly succeeded: number;
  readonly failed: number;
  readonly meanMs: number;
}

/** Parses h2load's report ("finished in 6.00s, 45123.33 req/s, ..." and the requests line). */
export function parseH2load(out: string): H2loadResult {
  const rps = /finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(out);
  const req = /requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(out);
  const mean = /time for request:\s+\S+\s+\S+\s+(\S+)/.exec(out);
  if (!rps || !req) throw new Error(`cannot parse h2load output: ${out.slice(-400)}`);
  const ms = (t: string | undefined): number => {
    if (t === undefined) return Number.NaN;
    const v = parseFloat(t);
    return t.endsWith('us') ? v / 1000 : t.endsWith('ms') ? v : v * 1000;
  };
  return { requestsPerSecond: Number(rps[1]), succeeded: Number(req[1]), failed: Number(req[2]) + Number(req[3]), meanMs: ms(mean?.[1]) };
}

async function h2load(url: string, args: readonly string[]): Promise<H2loadResult> {
  return parseH2load(await runAsync('h2load', [...args, '-D', String(SECONDS), url], (SECONDS + 30) * 1000));
}

/** nginx: an origin with an HTTP/1.1 and an h2c listener, and an h2c proxy to the HTTP/1.1 one. */
async function startNginxH2(dir: string, h1: number, h2: number, proxy: number): Promise<Peer> {
  const root = writeSite(dir);
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${join(dir, `nginx-h2-${t}`)};`);
  const config = [
    'daemon off;', 'user root;', 'worker_processes auto;', `pid ${join(dir, 'nginx-h2.pid')};`, `error_log ${join(dir, 'nginx-h2-error.log')} warn;`,
    'events { worker_connections 4096; }',
    'http {', '  access_log off;', '  keepalive_requests 1000000;', '  http2_max_concurrent_streams 128;', ...temp,
    `  server { listen 127.0.0.1:${h1} backlog=4096; listen 127.0.0.1:${h2} http2 backlog=4096; root ${root}; }`,
    `  upstream origin { server 127.0.0.1:${h1}; keepalive 64; keepalive_requests 1000000; }`,
    `  server { listen 127.0.0.1:${proxy} http2 backlog=4096; location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }`,
    '}',
  ].join('\n');
  const path = join(dir, 'nginx-h2.conf');
  writeFileSync(path, config);
  const t = spawnTracked('nginx-h2', 'nginx', ['-p', dir, '-e', join(dir, 'nginx-h2-error.log'), '-c', path], dir);
  await waitListening(t, [h1, h2, proxy]);
  return { name: 'nginx (h2)', pid: t.pid, tracked: t, ports: [h1, h2, proxy], stop: () => stopTracked(t) };
}

/** Builds (if needed) and starts the gRPC/HTTP/2 origin. */
async function startH2Peer(dir: string, port: number): Promise<Peer> {
  if (!existsSync(H2_PEER)) {
    const r = spawnSync('cargo', ['build', '--release', '-q', '-p', 'meshpipe-core', '--example', 'h2_peer'], { cwd: REPO_ROOT, stdio: 'inherit' });
    if (r.status !== 0) throw new Error('cargo build --example h2_peer failed');
  }
  const t = spawnTracked('h2_peer', H2_PEER, [String(port), '2'], dir);
  await waitListening(t, [port]);
  return { name: 'h2_peer', pid: t.pid, tracked: t, ports: [port], stop: () => stopTracked(t) };
}

interface Path {
  readonly metric: string;
  readonly name: string;
  readonly subject: Subject;
  readonly url: string;
  readonly args: readonly string[];
  readonly proxy: Peer | null;
  readonly runs: Array<{ r: H2loadResult; cpuUsPerReq: number; load: number }>;
}

async function run(ctx: BenchContext): Promise<Section> {
  ensurePeers({ nginx: true, haproxy: false });
  ensureInstalled('h2load', () => which('h2load') !== null, ['nghttp2-client']);
  const notes: string[] = [];
  const errors: string[] = [];
  const peers: Peer[] = [];
  const paths: Path[] = [];
  const grpcFrame = join(ctx.dir, 'grpc-say.bin');
  // A gRPC message frame: uncompressed, length, then EchoRequest{message: "hello"}.
  const message = Buffer.from([0x0a, 0x05, ...Buffer.from('hello')]);
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  message.copy(frame, 5);
  writeFileSync(grpcFrame, frame);
  const h2Args = ['-c', '1', '-m', '100'];
  const grpcArgs = ['-c', '4', '-m', '25', '-d', grpcFrame, '-H', 'content-type: application/grpc', '-H', 'te: trailers'];
  const mk = (metric: string, name: string, subject: Subject, url: string, args: readonly string[], proxy: Peer | null): Path =>
    ({ metric, name, subject, url, args, proxy, runs: [] });
  try {
    const [h1, h2, nginxProxy, grpcPort, mpH2, mpGrpc, mpH1] = (await freePorts(7)) as [number, number, number, number, number, number, number];
    const nginx = await startNginxH2(ctx.dir, h1, h2, nginxProxy);
    peers.push(nginx);
    const origin = await startH2Peer(ctx.dir, grpcPort);
    peers.push(origin);
    const url = (port: number, path: string) => `http://127.0.0.1:${port}${path}`;
    paths.push(mk('http/2 req/s', 'direct', 'direct', url(h2, `/${SMALL_FILE}`), h2Args, null));
    paths.push(mk('grpc unary/s', 'grpc direct', 'direct', url(grpcPort, '/meshpipe.bench.Echo/Say'), grpcArgs, null));
    if (ctx.meshpipe.available) {
      const forwards: MeshpipeForward[] = [
        { port: mpH2, target: `127.0.0.1:${h2}`, mode: 'http2' },
        { port: mpGrpc, target: `127.0.0.1:${grpcPort}`, mode: 'grpc' },
        { port: mpH1, target: `127.0.0.1:${h1}`, mode: 'http1' },
      ];
      const mp = await startMeshpipe(forwards, ctx.dir);
      peers.push(mp);
      notes.push(`meshpipe: ${meshpipeCommand(forwards)}`);
      paths.push(mk('http/2 req/s', 'meshpipe (http2)', 'meshpipe', url(forwards[0]!.port, `/${SMALL_FILE}`), h2Args, mp));
      paths.push(mk('grpc unary/s', 'grpc meshpipe (grpc)', 'meshpipe', url(forwards[1]!.port, '/meshpipe.bench.Echo/Say'), grpcArgs, mp));
      paths.push(mk(COST, COST_H1, 'meshpipe', url(forwards[2]!.port, `/${SMALL_FILE}`), ['--h1', '-c', '16', '-m', '1'], mp));
      paths.push(mk(COST, COST_H2_STREAMS, 'meshpipe', url(forwards[0]!.port, `/${SMALL_FILE}`), ['-c', '1', '-m', '16'], mp));
      paths.push(mk(COST, 'meshpipe http/2, 16 connections of 1 stream', 'meshpipe', url(forwards[0]!.port, `/${SMALL_FILE}`), ['-c', '16', '-m', '1'], mp));
    } else {
      notes.push(`meshpipe rows omitted: ${ctx.meshpipe.reason}`);
    }
    paths.push(mk('http/2 req/s', 'nginx (h2 -> http/1.1 keepalive)', 'nginx', url(nginxProxy, `/${SMALL_FILE}`), h2Args, null));
    for (const p of paths) await runAsync('h2load', [...p.args, '-n', '2000', p.url], 60_000).catch(() => undefined);
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < paths.length; i++) {
        const p = paths[(i + round) % paths.length]!;
        ctx.log(`http2: round ${round + 1}/${ROUNDS}: h2load ${p.args.slice(0, 4).join(' ')} -D ${SECONDS} via ${p.name}`);
        const load = load1();
        const before = p.proxy ? cpuSeconds(p.proxy.pid) : 0;
        try {
          const r = await h2load(p.url, p.args);
          const cpu = p.proxy ? cpuSeconds(p.proxy.pid) - before : Number.NaN;
          p.runs.push({ r, load, cpuUsPerReq: (1e6 * cpu) / (r.requestsPerSecond * SECONDS) });
          if (r.failed > 0) errors.push(`${p.name}: h2load counted ${r.failed} failed or errored requests`);
        } catch (err) {
          errors.push(`${p.name}: ${(err as Error).message.split('\n')[0]}`);
        }
        await sleep(300);
      }
    }
  } finally {
    for (const p of peers.reverse()) await p.stop();
  }
  const rows: Row[] = [];
  const medianRun = (p: Path) => [...p.runs].sort((a, b) => a.r.requestsPerSecond - b.r.requestsPerSecond)[Math.floor((p.runs.length - 1) / 2)];
  for (const p of paths) {
    const m = medianRun(p);
    if (m === undefined) continue;
    const extra: Record<string, number> = { meanMs: m.r.meanMs };
    if (Number.isFinite(m.cpuUsPerReq)) extra.proxyCpuUsPerReq = m.cpuUsPerReq;
    rows.push({ metric: p.metric, subject: p.subject, name: p.name, value: m.r.requestsPerSecond, unit: 'req/s', runs: p.runs.map((x) => x.r.requestsPerSecond), runLoad1: p.runs.map((x) => x.load), extra });
  }
  const nginx = rows.find((r) => r.metric === 'http/2 req/s' && r.subject === 'nginx');
  const mp = rows.find((r) => r.metric === 'http/2 req/s' && r.subject === 'meshpipe');
  if (nginx && mp) {
    rows.push({ metric: 'http/2 meshpipe over nginx', subject: 'meshpipe', name: 'http/2: meshpipe req/s / nginx req/s', value: mp.value / nginx.value, unit: 'x', runs: [] });
  }
  const h1Cost = rows.find((r) => r.name === COST_H1)?.extra?.proxyCpuUsPerReq;
  const h2Cost = rows.find((r) => r.name === COST_H2_STREAMS)?.extra?.proxyCpuUsPerReq;
  if (typeof h1Cost === 'number' && typeof h2Cost === 'number') {
    rows.push({ metric: 'http/2 over http/1.1 cost', subject: 'meshpipe', name: 'proxy CPU per request: http/2 (16 streams) / http/1.1 (16 connections)', value: h2Cost / h1Cost, unit: 'x', runs: [] });
  }
  notes.push('nginx cannot proxy to an HTTP/2 upstream (proxy_pass speaks HTTP/1.x): its row is h2c in front and an HTTP/1.1 keepalive pool behind, which is how nginx is deployed for this');
  return {
    name: 'http2',
    title: 'http2',
    method: `h2load -c 1 -m 100 -D ${SECONDS} GET /${SMALL_FILE} (nginx 1.22, h2c), gRPC unary (h2load -c 4 -m 25 POST of a gRPC frame to examples/h2_peer), and meshpipe's CPU per request with 16 in flight as HTTP/1.1 (h2load --h1 -c 16 -m 1) and HTTP/2 (-c 1 -m 16, -c 16 -m 1); median of ${ROUNDS} interleaved rounds after a 2,000-request warm-up`,
    rows,
    notes,
    errors,
  };
}

export const http2: BenchSection = {
  name: 'http2',
  description: 'HTTP/2 (h2load, 100 streams) through meshpipe vs nginx, and gRPC unary calls/s',
  run,
};
