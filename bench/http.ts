/**
 * Section `http`: HTTP/1.1 keep-alive request throughput and latency through
 * a proxy, against nginx serving a small static file (512 bytes).
 *
 * Paths: direct to nginx; meshpipe `mode=detect` (the connection is
 * detected as HTTP/1 and proxied request by request by the HTTP layer, over
 * its upstream keep-alive pool) and `mode=opaque` (the same requests
 * forwarded as TCP bytes: what the HTTP layer costs); nginx `proxy_pass` with
 * an upstream keepalive pool, HTTP/1.1 upstream and an empty Connection
 * header, twice: as a second server block in the origin's own nginx (the
 * same two workers proxy and serve, so a request and its upstream request
 * can be handled in one process without a context switch: nginx's fastest
 * setup, but not one a proxy in front of a separate application can have)
 * and as a separate nginx with its own workers (the same process layout as
 * meshpipe and HAProxy, each a process of its own in front of the origin);
 * and HAProxy 2.6 `mode http` with `http-reuse always`.
 * Load: `wrk -t1 -c32 -d8s --latency`, three interleaved rounds per path
 * with the order rotated each round (one 8 s run per path moved by 10-15%
 * between bench runs); the median round's req/s, wrk p50/p99 and CPU are
 * reported, every round's req/s in `runs`. Proxy CPU per request is reported
 * too: on 2 cores every proxy is capped near the same req/s, and CPU per
 * request is what still separates them.
 *
 * Latency at a fixed rate (p50/p99 added at 5k req/s) is the `latency`
 * section (bench/latency.ts, vegeta).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { SMALL_FILE, ensureWrk, runWrk, startHaproxyHttp, startNginxHttp, startNginxProxy, type WrkResult } from './http-peers.js';
import { meshpipeCommand, startMeshpipe, type MeshpipeForward } from './meshpipe.js';
import { ensurePeers, type Peer } from './peers.js';
import { cpuSeconds, freePort } from './processes.js';
import { load1, type BenchContext, type BenchSection, type Row, type Section, type Subject } from './report.js';

const CONNECTIONS = 32;
const SECONDS = 8;
/** wrk rounds per path (median reported). */
const WRK_ROUNDS = 3;
const TARGET_VS_NGINX = 1.2;
/** The two nginx proxy_pass paths (see the module doc). */
const NGINX_SAME = 'nginx proxy_pass (keepalive)';
const NGINX_OWN = 'nginx proxy_pass (keepalive, own process)';

interface Path {
  readonly name: string;
  readonly subject: Subject;
  readonly port: number;
  readonly proxy: Peer | null;
  /** The median run (by req/s) of `wrkRuns`, set once all rounds are done. */
  wrk: WrkResult | null;
  /** Every wrk round with the CPU it cost, in round order. */
  readonly wrkRuns: Array<{ wrk: WrkResult; proxyCpuPct: number; proxyCpuUsPerReq: number; nginxCpuUsPerReq: number; load: number }>;
  proxyCpuPct: number;
  /** Proxy CPU (all threads, user+system) per request, microseconds. */
  proxyCpuUsPerReq: number;
  /** nginx (master + workers) CPU per request: origin only, or origin + proxy_pass. */
  nginxCpuUsPerReq: number;
  load: number;
  error: string;
}

/** One wrk round through `p`; appends to `p.wrkRuns`. */
async function measureWrk(p: Path, nginx: Peer): Promise<void> {
  const load = load1();
  const before = p.proxy ? cpuSeconds(p.proxy.pid) : 0;
  const nginxBefore = cpuSeconds(nginx.pid);
  const t0 = Date.now();
  try {
    const wrk = await runWrk(`http://127.0.0.1:${p.port}/${SMALL_FILE}`, CONNECTIONS, SECONDS);
    const wallS = (Date.now() - t0) / 1000;
    const requests = wrk.requestsPerSecond * SECONDS;
    const cpu = p.proxy ? cpuSeconds(p.proxy.pid) - before : Number.NaN;
    p.wrkRuns.push({
      wrk,
      load,
      nginxCpuUsPerReq: (1e6 * (cpuSeconds(nginx.pid) - nginxBefore)) / requests,
      proxyCpuPct: (100 * cpu) / wallS,
      proxyCpuUsPerReq: (1e6 * cpu) / requests,
    });
  } catch (err) {
    p.error = (err as Error).message.split('\n')[0] ?? String(err);
  }
}

/** Picks the median round (by req/s) as the path's result. */
function settle(p: Path): void {
  if (p.wrkRuns.length === 0) return;
  const sorted = [...p.wrkRuns].sort((a, b) => a.wrk.requestsPerSecond - b.wrk.requestsPerSecond);
  const mid = sorted[Math.floor((sorted.length - 1) / 2)]!;
  p.wrk = mid.wrk;
  p.load = mid.load;
  p.proxyCpuPct = mid.proxyCpuPct;
  p.proxyCpuUsPerReq = mid.proxyCpuUsPerReq;
  p.nginxCpuUsPerReq = mid.nginxCpuUsPerReq;
}

async function run(ctx: BenchContext): Promise<Section> {
  ensurePeers({ nginx: true, haproxy: true });
  ensureWrk();
  const notes: string[] = [];
  const errors: string[] = [];
  const peers: Peer[] = [];
  const paths: Path[] = [];
  const mk = (name: string, subject: Subject, port: number, proxy: Peer | null): Path =>
    ({ name, subject, port, proxy, wrk: null, wrkRuns: [], proxyCpuPct: Number.NaN, proxyCpuUsPerReq: Number.NaN, nginxCpuUsPerReq: Number.NaN, load: 0, error: '' });
  try {
    const originPort = await freePort();
    const proxyPassPort = await freePort();
    const nginx = await startNginxHttp(ctx.dir, originPort, proxyPassPort);
    peers.push(nginx);
    const target = `127.0.0.1:${originPort}`;
    paths.push(mk('direct', 'direct', originPort, null));
    if (ctx.meshpipe.available) {
      const forwards: MeshpipeForward[] = [
        { port: await freePort(), target, mode: 'detect' },
        { port: await freePort(), target, mode: 'opaque' },
      ];
      const mp = await startMeshpipe(forwards, ctx.dir);
      peers.push(mp);
      notes.push(`meshpipe: ${meshpipeCommand(forwards)}`);
      paths.push(mk('meshpipe (http, detect)', 'meshpipe', forwards[0]!.port, mp));
      paths.push(mk('meshpipe (tcp, opaque)', 'meshpipe', forwards[1]!.port, mp));
    } else {
      notes.push(`meshpipe rows omitted: ${ctx.meshpipe.reason}`);
    }
    notes.push(`${NGINX_SAME} is a second server block of the origin nginx (the same 2 workers proxy and serve, no extra process, so a request and its upstream request can be served without a context switch; its CPU is the origin nginx's minus what serving direct costs); ${NGINX_OWN} is a separate nginx with 2 workers, like meshpipe and HAProxy with their own 2 threads`);
    paths.push(mk(NGINX_SAME, 'nginx', proxyPassPort, null));
    const ownPort = await freePort();
    const nginxOwn = await startNginxProxy(ctx.dir, ownPort, target);
    peers.push(nginxOwn);
    paths.push(mk(NGINX_OWN, 'nginx', ownPort, nginxOwn));
    const haPort = await freePort();
    const ha = await startHaproxyHttp(haPort, target, ctx.dir);
    peers.push(ha);
    paths.push(mk('haproxy mode http', 'haproxy', haPort, ha));

    // One second of warm-up per path (connection pools, page cache), not counted.
    for (const p of paths) await runWrk(`http://127.0.0.1:${p.port}/${SMALL_FILE}`, CONNECTIONS, 1).catch(() => undefined);
    // Interleaved rounds, the order rotated each round, so a burst of other
    // load on the machine does not land on one path only.
    for (let round = 0; round < WRK_ROUNDS; round++) {
      for (let i = 0; i < paths.length; i++) {
        const p = paths[(i + round) % paths.length]!;
        ctx.log(`http: round ${round + 1}/${WRK_ROUNDS}: wrk -t1 -c${CONNECTIONS} -d${SECONDS}s via ${p.name}`);
        await measureWrk(p, nginx);
        await sleep(300);
      }
    }
    for (const p of paths) settle(p);
  } finally {
    for (const p of peers.reverse()) await p.stop();
  }

  const rows: Row[] = [];
  const nginxRps = paths.find((p) => p.name === NGINX_SAME)?.wrk?.requestsPerSecond;
  const nginxOwnRps = paths.find((p) => p.name === NGINX_OWN)?.wrk?.requestsPerSecond;
  for (const p of paths) {
    if (p.error !== '') errors.push(`${p.name}: ${p.error}`);
    if (p.wrk === null) continue;
    if (p.wrk.errors > 0) errors.push(`${p.name}: wrk counted ${p.wrk.errors} socket errors or non-2xx responses`);
    const extra: Record<string, number> = { p50Ms: p.wrk.p50Ms, p99Ms: p.wrk.p99Ms };
    if (nginxRps !== undefined && p.subject !== 'nginx') extra.vsNginxProxyPass = p.wrk.requestsPerSecond / nginxRps;
    if (nginxOwnRps !== undefined && p.subject !== 'nginx') extra.vsNginxProxyPassOwnProcess = p.wrk.requestsPerSecond / nginxOwnRps;
    if (Number.isFinite(p.proxyCpuPct)) extra.proxyCpuPctOfCore = p.proxyCpuPct;
    rows.push({
      metric: 'http req/s', subject: p.subject, name: `${p.name} req/s`, value: p.wrk.requestsPerSecond, unit: 'req/s',
      runs: p.wrkRuns.map((r) => r.wrk.requestsPerSecond), runLoad1: p.wrkRuns.map((r) => r.load), extra,
    });
  }
  // "meshpipe >= 1.2x nginx proxy_pass": report.ts targets are ratios to direct/haproxy or a
  // maximum, so the goal is stated as its inverse, nginx/meshpipe <= 1/1.2, with the plain ratio beside it.
  for (const [label, rps] of [[NGINX_SAME, nginxRps], [NGINX_OWN, nginxOwnRps]] as const) {
    if (rps === undefined) continue;
    for (const p of paths.filter((x) => x.subject === 'meshpipe' && x.wrk !== null)) {
      const ratio = p.wrk!.requestsPerSecond / rps;
      rows.push({
        metric: `${label} over ${p.name}`, subject: 'meshpipe', name: `${label} req/s / ${p.name} req/s`, value: 1 / ratio, unit: 'x',
        runs: [], targets: [{ atMost: Math.ceil(1e4 / TARGET_VS_NGINX) / 1e4 }],
        extra: { meshpipeOverNginx: ratio, goal: `meshpipe >= ${TARGET_VS_NGINX}x nginx proxy_pass` },
      });
    }
  }
  // CPU per request separates the proxies even when the 2-core machine caps them all at the same
  // req/s. nginx proxy_pass shares its process with the origin: its cost is nginx's CPU per request
  // in that run minus nginx's CPU per request when serving directly.
  const nginxDirect = paths.find((p) => p.subject === 'direct')?.nginxCpuUsPerReq ?? Number.NaN;
  for (const p of paths) {
    if (p.wrk === null || p.subject === 'direct') continue;
    const us = p.name === NGINX_SAME ? p.nginxCpuUsPerReq - nginxDirect : p.proxyCpuUsPerReq;
    if (!Number.isFinite(us)) continue;
    rows.push({ metric: 'proxy CPU per request', subject: p.subject, name: `${p.name} CPU`, value: us, unit: 'us/req', runs: [], extra: { nginxCpuUsPerReq: p.nginxCpuUsPerReq } });
  }
  for (const p of paths) {
    if (p.wrk === null) continue;
    rows.push({ metric: 'http p50', subject: p.subject, name: `${p.name} p50 (wrk)`, value: p.wrk.p50Ms, unit: 'ms', runs: [] });
  }
  for (const p of paths) {
    if (p.wrk === null) continue;
    rows.push({ metric: 'http p99', subject: p.subject, name: `${p.name} p99 (wrk)`, value: p.wrk.p99Ms, unit: 'ms', runs: [] });
  }
  notes.push(`target meshpipe >= ${TARGET_VS_NGINX}x nginx proxy_pass req/s is the "nginx proxy_pass req/s / meshpipe req/s <= ${Math.round(100 / TARGET_VS_NGINX) / 100}" rows, against both nginx layouts; "vs haproxy" compares with HAProxy mode http`);
  notes.push('meshpipe (tcp, opaque) forwards the same requests as bytes (the path every HTTP connection took before the HTTP layer): the difference to meshpipe (http, detect) is what proxying each request costs');
  return {
    name: 'http',
    title: 'http',
    method: `wrk -t1 -c${CONNECTIONS} -d${SECONDS}s --latency GET /${SMALL_FILE} (512 B, nginx 1.22, 2 workers), median of ${WRK_ROUNDS} interleaved rounds per path (order rotated) after 1 s warm-up, latencies and CPU from the median round`,
    rows,
    notes,
    errors,
  };
}

export const http: BenchSection = {
  name: 'http',
  description: 'HTTP/1.1 keep-alive req/s (wrk) vs nginx: direct, meshpipe HTTP layer (detect) and TCP (opaque), nginx proxy_pass (in the origin nginx and as its own process), HAProxy mode http',
  run,
};
