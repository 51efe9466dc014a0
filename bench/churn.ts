/**
 * Section `churn`: short-connection throughput, i.e. how many
 * connect -> send -> receive -> close cycles per second pass through a proxy.
 *
 * Method (chosen so the proxy, not the load generator, is the bottleneck):
 * `redis-benchmark -k 0 -t ping_inline` opens a new TCP connection for every
 * request, sends `PING\r\n` (6 bytes), reads `+PONG\r\n` (7 bytes) and closes,
 * with `CONCURRENCY` such loops in flight. Client and server are both
 * single-threaded C programs doing almost nothing per request, so per-cycle
 * cost is dominated by the kernel's TCP setup/teardown and, when proxied, by
 * the proxy's accept + upstream connect + forward + close path. A Node.js
 * client would saturate its own event loop first on this 2-core class of
 * machine. Direct is measured too (the ceiling). Rounds are interleaved,
 * with the order rotated each round, and there are about twice as many as
 * in the other sections (runs are short and noisy); the median is reported,
 * plus the proxy's CPU time per cycle for tuning.
 * Through meshpipe both an opaque listener and a detect listener are measured
 * (`PING\r\n` is not an HTTP request line: detection ends `not_http` after 5
 * bytes), which shows the per-connection cost of detection. A second
 * meshpipe with the engine's tracing switched off entirely (`--engine-log
 * off`) runs the detect path too: against the default level (info, so the
 * per-connection `conn` span and the stages' debug events are disabled
 * callsites) it shows what tracing costs on the data path when nobody asked
 * for it.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { ensurePeers, startRedis, startTcpPaths, type Peer } from './peers.js';
import { startMeshpipe } from './meshpipe.js';
import { cpuSeconds, freePort, runAsync } from './processes.js';
import { load1, median, type BenchContext, type BenchSection, type Row, type Section, type Subject } from './report.js';

const CONCURRENCY = 50;
const REQUESTS = 25_000;
/** The detect path through a meshpipe whose engine tracing is off (`--engine-log off`). */
const TRACING_OFF = 'meshpipe (detect, engine tracing off)';

interface Config {
  readonly name: string;
  readonly subject: Subject;
  readonly port: number;
  readonly proxy: Peer | null;
  readonly runs: number[];
  readonly loads: number[];
  /** Proxy CPU microseconds per connection cycle. */
  readonly cpuPerCycle: number[];
  readonly errors: string[];
}

/** One redis-benchmark run; returns cycles (= requests = connections) per second. */
export async function churnOnce(port: number, requests = REQUESTS, concurrency = CONCURRENCY): Promise<number> {
  const out = await runAsync('redis-benchmark', [
    '-h', '127.0.0.1', '-p', String(port), '-k', '0', '-c', String(concurrency), '-n', String(requests),
    '-t', 'ping_inline', '--csv',
  ], 90_000);
  // --csv: a header line, then "PING_INLINE","<rps>",...
  const line = out.split('\n').find((l) => l.startsWith('"PING_INLINE"'));
  const rps = line === undefined ? Number.NaN : Number(line.split(',')[1]?.replaceAll('"', ''));
  if (!Number.isFinite(rps) || rps <= 0) throw new Error(`redis-benchmark via port ${port} printed no PING_INLINE rate: ${out.trim().slice(0, 300)}`);
  return rps;
}

/** Rounds for churn: about twice the other sections' (9 for the default 5). */
function churnRounds(runs: number): number {
  return 2 * runs - 1;
}

function config(name: string, subject: Subject, port: number, proxy: Peer | null): Config {
  return { name, subject, port, proxy, runs: [], loads: [], cpuPerCycle: [], errors: [] };
}

async function measure(c: Config): Promise<void> {
  const loadAtStart = load1();
  const before = c.proxy ? cpuSeconds(c.proxy.pid) : 0;
  try {
    const rps = await churnOnce(c.port);
    c.loads.push(loadAtStart);
    c.runs.push(rps);
    if (c.proxy) c.cpuPerCycle.push((1e6 * (cpuSeconds(c.proxy.pid) - before)) / REQUESTS);
  } catch (err) {
    c.errors.push((err as Error).message.split('\n')[0] ?? String(err));
  }
}

async function run(ctx: BenchContext): Promise<Section> {
  ensurePeers({ redis: true, haproxy: true, nginx: true });
  const notes: string[] = [];
  const errors: string[] = [];
  const peers: Peer[] = [];
  const configs: Config[] = [];
  try {
    const redisPort = await freePort();
    peers.push(await startRedis(redisPort, ctx.dir));
    const target = `127.0.0.1:${redisPort}`;
    for (const path of await startTcpPaths(ctx, target, redisPort, peers, notes, errors)) {
      configs.push(config(path.name, path.subject, path.port, path.proxy));
    }
    if (ctx.meshpipe.available) {
      const port = await freePort();
      const quiet = await startMeshpipe([{ port, target, mode: 'detect' }], ctx.dir, { extraArgs: ['--engine-log', 'off'] }).catch((err: unknown) => {
        errors.push(`meshpipe --engine-log off did not start: ${(err as Error).message.split('\n')[0]}`);
        return null;
      });
      if (quiet !== null) {
        peers.push(quiet);
        configs.push(config(TRACING_OFF, 'meshpipe', port, quiet));
      }
    }

    // A short warm-up per path (page cache, lazily built pools) that is not counted.
    for (const c of configs) await churnOnce(c.port, 2_000).catch(() => undefined);
    // Runs are short (a few seconds) and this workload is noisy, so churn
    // takes more rounds than the other sections; the order rotates every
    // round so no path always follows the same neighbour (the TIME_WAIT
    // sockets a run leaves behind slow the next one's connects).
    const rounds = churnRounds(ctx.runs);
    for (let round = 1; round <= rounds; round++) {
      for (let i = 0; i < configs.length; i++) {
        const c = configs[(i + round - 1) % configs.length]!;
        ctx.log(`churn round ${round}/${rounds}: ${c.name}`);
        await measure(c);
        await sleep(300);
      }
    }
  } finally {
    for (const p of peers.reverse()) await p.stop();
  }

  const rows: Row[] = [];
  for (const c of configs) {
    if (c.errors.length > 0) errors.push(`${c.name}: ${c.errors.length} failed run(s): ${c.errors[0]}`);
    if (c.runs.length === 0) continue;
    rows.push({
      metric: 'connection churn',
      subject: c.subject,
      name: c.name,
      value: median(c.runs),
      unit: 'conn/s',
      runs: c.runs,
      runLoad1: c.loads,
      extra: { best: Math.max(...c.runs), ...(c.cpuPerCycle.length > 0 ? { proxyCpuUsPerConn: median(c.cpuPerCycle) } : {}) },
      ...(c.subject === 'meshpipe' && c.name !== TRACING_OFF ? { targets: [{ ratioTo: 'haproxy', atLeast: 1.0 }] } : {}),
    });
  }
  const traced = configs.find((c) => c.name === 'meshpipe (detect)');
  const off = configs.find((c) => c.name === TRACING_OFF);
  if (traced && off && traced.runs.length > 0 && off.runs.length > 0) {
    rows.push({
      metric: 'tracing cost', subject: 'meshpipe', name: 'tracing cost: meshpipe (detect) at the default level / with tracing off',
      value: Math.round((median(traced.runs) / median(off.runs)) * 1000) / 1000, unit: 'x', runs: traced.runs.map((r, i) => (off.runs[i] === undefined ? r / median(off.runs) : r / off.runs[i])),
      ...(traced.cpuPerCycle.length > 0 && off.cpuPerCycle.length > 0
        ? { extra: { proxyCpuUsPerConnDefault: median(traced.cpuPerCycle), proxyCpuUsPerConnOff: median(off.cpuPerCycle) } }
        : {}),
    });
  }
  notes.push('loopback TIME_WAIT sockets pile up (net.ipv4.tcp_tw_reuse=2 lets loopback reuse them); all paths see the same conditions');
  return {
    name: 'churn',
    title: 'churn',
    method: `redis-benchmark -k 0 -c ${CONCURRENCY} -n ${REQUESTS} -t ping_inline: one new TCP connection per PING (6 B out, 7 B back, then close), median of ${churnRounds(ctx.runs)} interleaved rounds, order rotated each round`,
    rows,
    notes,
    errors,
  };
}

export const churn: BenchSection = {
  name: 'churn',
  description: 'connect-send-receive-close cycles per second: direct, meshpipe (opaque, detect, detect with engine tracing off), HAProxy, nginx stream',
  run,
};
