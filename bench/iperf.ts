/**
 * Section `throughput`: iperf3 single-stream throughput on loopback, direct and
 * through each proxy, side by side on the same machine in one run.
 *
 * Configurations: direct to the iperf3 server; meshpipe with a `mode=opaque`
 * listener (spliced from the first byte) and a `mode=detect` listener (iperf3's
 * client speaks first with a 37-byte cookie that is not an HTTP request line,
 * so detection ends `not_http` at once and splice takes over); HAProxy 2.6
 * `mode tcp` with splice-request/splice-response; nginx stream `proxy_pass`.
 * Rounds are interleaved (every configuration once per round) so a burst of
 * load from other work on the machine hits all of them alike; the median of
 * the rounds is reported. The number is iperf3's receiver-side bits/s, with the
 * first second omitted (`-O 1`, TCP slow start). The proxy's CPU use during
 * the test (all threads, user+system, % of one core) and its CPU milliseconds
 * per GB moved are kept for tuning: on a shared machine they are much steadier
 * than the throughput itself.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { ensurePeers, startIperfServer, startTcpPaths, type Peer } from './peers.js';
import { cpuSeconds, freePort, runAsync } from './processes.js';
import { load1, median, type BenchContext, type BenchSection, type Row, type Section, type Subject } from './report.js';

// Short tests, more rounds: on a 2-core machine the result is bimodal (it depends on
// which core the proxy shares with iperf3), so many samples beat a few long ones.
const SECONDS = 5;

interface Config {
  readonly name: string;
  readonly subject: Subject;
  readonly port: number;
  /** The proxy process whose CPU we sample; null for direct. */
  readonly proxy: Peer | null;
  readonly runs: number[];
  readonly loads: number[];
  readonly proxyCpu: number[];
  readonly clientCpu: number[];
  readonly errors: string[];
}

interface IperfResult {
  readonly bitsPerSecond: number;
  /** iperf3's own CPU use (client side), % of the host. */
  readonly clientCpuPct: number;
}

/** One iperf3 client run against 127.0.0.1:`port`; receiver-side throughput. */
export async function iperf(port: number, seconds = SECONDS): Promise<IperfResult> {
  const out = await runAsync('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', String(seconds), '-O', '1', '-J'], (seconds + 30) * 1000);
  const report = JSON.parse(out) as {
    error?: string;
    end?: { sum_received?: { bits_per_second?: number }; cpu_utilization_percent?: { host_total?: number } };
  };
  const bps = report.end?.sum_received?.bits_per_second;
  if (report.error !== undefined || bps === undefined) throw new Error(`iperf3 via port ${port}: ${report.error ?? 'no sum_received in the JSON report'}`);
  return { bitsPerSecond: bps, clientCpuPct: report.end?.cpu_utilization_percent?.host_total ?? Number.NaN };
}

function config(name: string, subject: Subject, port: number, proxy: Peer | null): Config {
  return { name, subject, port, proxy, runs: [], loads: [], proxyCpu: [], clientCpu: [], errors: [] };
}

async function measure(c: Config): Promise<void> {
  const loadAtStart = load1();
  const cpuBefore = c.proxy ? cpuSeconds(c.proxy.pid) : 0;
  const started = process.hrtime.bigint();
  try {
    const r = await iperf(c.port);
    const wallS = Number(process.hrtime.bigint() - started) / 1e9;
    c.loads.push(loadAtStart);
    c.runs.push(r.bitsPerSecond / 1e9);
    c.clientCpu.push(r.clientCpuPct);
    if (c.proxy) c.proxyCpu.push((100 * (cpuSeconds(c.proxy.pid) - cpuBefore)) / wallS);
  } catch (err) {
    c.errors.push((err as Error).message.split('\n')[0] ?? String(err));
  }
}

async function run(ctx: BenchContext): Promise<Section> {
  ensurePeers({ iperf3: true, haproxy: true, nginx: true });
  const notes: string[] = [];
  const errors: string[] = [];
  const peers: Peer[] = [];
  const configs: Config[] = [];
  try {
    const serverPort = await freePort();
    peers.push(await startIperfServer(serverPort, ctx.dir));
    const target = `127.0.0.1:${serverPort}`;
    for (const path of await startTcpPaths(ctx, target, serverPort, peers, notes, errors)) {
      configs.push(config(path.name, path.subject, path.port, path.proxy));
    }

    for (let round = 1; round <= ctx.runs; round++) {
      for (const c of configs) {
        ctx.log(`throughput round ${round}/${ctx.runs}: ${c.name}`);
        await measure(c);
        // Let the last test's sockets close and the CPUs settle before the next.
        await sleep(500);
      }
    }
  } finally {
    for (const p of peers.reverse()) await p.stop();
  }

  const rows: Row[] = [];
  for (const c of configs) {
    if (c.errors.length > 0) errors.push(`${c.name}: ${c.errors.length} failed run(s): ${c.errors[0]}`);
    if (c.runs.length === 0) continue;
    const extra: Record<string, number> = { best: Math.max(...c.runs), clientCpuPct: median(c.clientCpu) };
    if (c.proxyCpu.length > 0) {
      extra.proxyCpuPctOfCore = median(c.proxyCpu);
      // CPU per byte moved is far less sensitive to other load on the machine than Gbit/s.
      extra.proxyCpuMsPerGB = median(c.proxyCpu.map((pct, i) => (pct * 10) / ((c.runs[i] ?? Number.NaN) / 8)));
    }
    rows.push({
      metric: 'iperf3 single stream',
      subject: c.subject,
      name: c.name,
      value: median(c.runs),
      unit: 'Gbit/s',
      runs: c.runs,
      runLoad1: c.loads,
      extra,
      ...(c.subject === 'meshpipe' ? { targets: [{ ratioTo: 'haproxy', atLeast: 1.1 }, { ratioTo: 'direct', atLeast: 0.75 }] } : {}),
    });
  }
  return {
    name: 'throughput',
    title: 'iperf3 1 stream',
    method: `iperf3 -c 127.0.0.1 -t ${SECONDS} -O 1 -J, receiver bits/s, median of ${ctx.runs} interleaved rounds; proxies on the same host, default worker/thread counts (one per core)`,
    rows,
    notes,
    errors,
  };
}

export const throughput: BenchSection = {
  name: 'throughput',
  description: 'iperf3 single-stream throughput: direct, meshpipe (opaque, detect), HAProxy splice, nginx stream',
  run,
};
