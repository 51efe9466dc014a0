/**
 * Section `sidecars`: the full mesh path, client app -> client sidecar ->
 * server sidecar -> server app, in two network namespaces ("pods") joined by
 * a veth pair, as test/e2e-netns.test.ts builds it: `meshpipe init` rules in
 * both pods and the real `meshpipe proxy` CLI in its sidecar layout (outbound
 * 127.0.0.1:4140, inbound 0.0.0.0:4143, original destination from
 * SO_ORIGINAL_DST) under uid 2102 in each (test/netns.ts, test/netns-sidecar.ts,
 * imported from dist/test/).
 *
 * Direct is the same two pods, the same veth and the same iptables chains,
 * on ports listed as skip ports on both sides, so only the sidecars differ.
 * Workloads: iperf3 single stream (5 s, -O 1) and the HTTP test of section
 * `http` (wrk -t1 -c32 -d8s --latency against nginx's 512-byte file), run as
 * the app's uid 1000 in the client pod. The sidecars' counters are read after
 * the runs to prove the measured traffic went through them and the direct
 * traffic did not.
 *
 * Needs root (namespaces, iptables). Without it the section reports that it
 * was skipped and why: benchmarks are not tests.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createPodPair, netnsSupport, type Pod, type PodPair } from '../test/netns.js';
import { connectionsTo, startSidecar, type Sidecar } from '../test/netns-sidecar.js';
import { SMALL_FILE, ensureWrk, nginxHttpConfig, parseWrk, wrkArgs, writeSite, type WrkResult } from './http-peers.js';
import { CLI_PATH } from './meshpipe.js';
import { ensurePeers } from './peers.js';
import { cpuSeconds } from './processes.js';
import { load1, median, type BenchContext, type BenchSection, type Row, type Section, type Subject } from './report.js';

const APP = { uid: 1000 };
const IPERF_SECONDS = 5;
const WRK_SECONDS = 8;
const WRK_CONNECTIONS = 32;
/** Ports through the sidecars, and the same services on skip ports (direct). */
const MESH = { iperf: 5201, http: 8080 };
const SKIP = { iperf: 5202, http: 8081 };

interface Path {
  readonly name: string;
  readonly subject: Subject;
  readonly iperfPort: number;
  readonly httpPort: number;
  readonly gbps: number[];
  readonly gbpsLoads: number[];
  /** CPU of both sidecars together during each iperf3 run, % of one core. */
  readonly sidecarCpu: number[];
  wrk: WrkResult | null;
  wrkLoad: number;
  wrkSidecarCpu: number;
}

/** Waits until every port is in LISTEN state inside `pod` (no probe connection: iperf3 would count it as a failed test). */
async function waitPodListening(pod: Pod, ports: readonly number[], timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const hex = ports.map((p) => `:${p.toString(16).toUpperCase().padStart(4, '0')}`);
  while (Date.now() < deadline) {
    const r = await pod.exec('cat', ['/proc/net/tcp', '/proc/net/tcp6']);
    const listening = r.stdout.split('\n').map((l) => l.trim().split(/\s+/)).filter((c) => c[3] === '0A').map((c) => c[1] ?? '');
    if (hex.every((h) => listening.some((a) => a.endsWith(h)))) return;
    await sleep(100);
  }
  throw new Error(`ports ${ports.join(', ')} did not open in ${pod.ns} within ${timeoutMs} ms`);
}

async function iperfIn(pod: Pod, host: string, port: number): Promise<number> {
  const r = await pod.exec('iperf3', ['-c', host, '-p', String(port), '-t', String(IPERF_SECONDS), '-O', '1', '-J'], { ...APP, timeoutMs: (IPERF_SECONDS + 30) * 1000 });
  let report: { error?: string; end?: { sum_received?: { bits_per_second?: number } } };
  try {
    report = JSON.parse(r.stdout) as typeof report;
  } catch {
    throw new Error(`iperf3 to ${host}:${port} (exit ${r.code}) printed no JSON: ${(r.stderr || r.stdout).trim().slice(0, 300)}`);
  }
  const bps = report.end?.sum_received?.bits_per_second;
  if (report.error !== undefined || bps === undefined) throw new Error(`iperf3 to ${host}:${port}: ${report.error ?? 'no sum_received'}`);
  return bps / 1e9;
}

async function wrkIn(pod: Pod, url: string, seconds: number): Promise<WrkResult> {
  const r = await pod.exec('wrk', wrkArgs(url, WRK_CONNECTIONS, seconds), { ...APP, timeoutMs: (seconds + 30) * 1000 });
  if (r.code !== 0) throw new Error(`wrk ${url} exited ${r.code}: ${r.stderr.trim().slice(0, 300)}`);
  return parseWrk(r.stdout);
}

function skipped(reason: string, hint = '; run npm run bench as root to include it'): Section {
  return {
    name: 'sidecars', title: 'two sidecars', method: 'needs network namespaces and iptables (root)', rows: [],
    notes: [`skipped: ${reason}${hint}`], errors: [],
  };
}

async function run(ctx: BenchContext): Promise<Section> {
  const support = await netnsSupport();
  if (!support.ok) return skipped(support.reason);
  if (!ctx.meshpipe.available) return skipped(`meshpipe rows omitted: ${ctx.meshpipe.reason}`, '');
  ensurePeers({ iperf3: true, nginx: true });
  ensureWrk();
  const notes: string[] = [];
  const errors: string[] = [];
  const mk = (name: string, subject: Subject, ports: { iperf: number; http: number }): Path =>
    ({ name, subject, iperfPort: ports.iperf, httpPort: ports.http, gbps: [], gbpsLoads: [], sidecarCpu: [], wrk: null, wrkLoad: 0, wrkSidecarCpu: Number.NaN });
  const paths = [mk('direct (skip ports)', 'direct', SKIP), mk('meshpipe, 2 sidecars', 'meshpipe', MESH)];
  let pair: PodPair | undefined;
  try {
    pair = await createPodPair();
    const { client, server } = pair;
    const dst = server.addr4!;
    const skip = `${SKIP.iperf},${SKIP.http}`;
    for (const [pod, flag] of [[client, '--skip-outbound-ports'], [server, '--skip-inbound-ports']] as const) {
      const r = await pod.exec(process.execPath, [CLI_PATH, 'init', '--no-ipv6', flag, skip]);
      if (r.code !== 0) throw new Error(`meshpipe init in ${pod.ns} failed (${r.code}): ${r.stderr.trim()}`);
    }
    notes.push(`meshpipe init --no-ipv6 in both pods (--skip-outbound-ports ${skip} in the client pod, --skip-inbound-ports ${skip} in the server pod); sidecars: meshpipe proxy --inbound 0.0.0.0:4143 --outbound 127.0.0.1:4140 (defaults otherwise) as uid 2102`);
    const sidecars: Sidecar[] = [await startSidecar(client), await startSidecar(server)];
    const sidecarCpu = (): number => sidecars.reduce((n, s) => n + cpuSeconds(s.process.pid), 0);

    const root = writeSite(ctx.dir);
    const conf = join(ctx.dir, 'nginx-pod.conf');
    writeFileSync(conf, nginxHttpConfig(ctx.dir, root, { origin: String(MESH.http), extraOrigins: [String(SKIP.http)], workers: 'auto' }));
    server.spawn('nginx', ['-p', ctx.dir, '-e', join(ctx.dir, 'nginx-http-error.log'), '-c', conf]);
    server.spawn('iperf3', ['-s', '-p', String(MESH.iperf)]);
    server.spawn('iperf3', ['-s', '-p', String(SKIP.iperf)]);
    await waitPodListening(server, [MESH.http, SKIP.http, MESH.iperf, SKIP.iperf]);

    // Warm-up (nginx workers, sidecar pipe pools), not counted.
    for (const p of paths) await wrkIn(client, `http://${dst}:${p.httpPort}/${SMALL_FILE}`, 1).catch(() => undefined);
    const rounds = Math.min(ctx.runs, 3);
    for (let round = 1; round <= rounds; round++) {
      for (const p of paths) {
        ctx.log(`sidecars: iperf3 round ${round}/${rounds} via ${p.name}`);
        const load = load1();
        const before = sidecarCpu();
        const t0 = Date.now();
        try {
          p.gbps.push(await iperfIn(client, dst, p.iperfPort));
          p.gbpsLoads.push(load);
          p.sidecarCpu.push((100 * (sidecarCpu() - before)) / ((Date.now() - t0) / 1000));
        } catch (err) {
          errors.push(`${p.name}: ${(err as Error).message.split('\n')[0]}`);
        }
        await sleep(500);
      }
    }
    for (const p of paths) {
      ctx.log(`sidecars: wrk -t1 -c${WRK_CONNECTIONS} -d${WRK_SECONDS}s via ${p.name}`);
      p.wrkLoad = load1();
      const before = sidecarCpu();
      const t0 = Date.now();
      try {
        p.wrk = await wrkIn(client, `http://${dst}:${p.httpPort}/${SMALL_FILE}`, WRK_SECONDS);
        p.wrkSidecarCpu = (100 * (sidecarCpu() - before)) / ((Date.now() - t0) / 1000);
        if (p.wrk.errors > 0) errors.push(`${p.name}: wrk counted ${p.wrk.errors} socket errors or non-2xx responses`);
      } catch (err) {
        errors.push(`${p.name}: ${(err as Error).message.split('\n')[0]}`);
      }
      await sleep(300);
    }

    // Proof of path: the mesh ports went through both sidecars, the skip ports through neither.
    const [c, s] = [await sidecars[0]!.snapshot(), await sidecars[1]!.snapshot()];
    const seen = (port: number): string => `client sidecar ${connectionsTo(c, 'outbound', port)}, server sidecar ${connectionsTo(s, 'inbound', port)}`;
    for (const port of [MESH.iperf, MESH.http]) {
      if (connectionsTo(c, 'outbound', port) === 0 || connectionsTo(s, 'inbound', port) === 0) errors.push(`port ${port} did not go through both sidecars (${seen(port)} connections)`);
    }
    for (const port of [SKIP.iperf, SKIP.http]) {
      if (connectionsTo(c, 'outbound', port) + connectionsTo(s, 'inbound', port) > 0) errors.push(`skip port ${port} went through a sidecar (${seen(port)} connections)`);
    }
    notes.push(`connections counted by the sidecars: iperf3 ${MESH.iperf}: ${seen(MESH.iperf)}; http ${MESH.http}: ${seen(MESH.http)}; skip ports ${SKIP.iperf}/${SKIP.http}: ${seen(SKIP.iperf)} / ${seen(SKIP.http)}`);
  } catch (err) {
    errors.push((err as Error).message.split('\n').slice(0, 4).join(' / '));
  } finally {
    // Stops the sidecars, nginx and the iperf3 servers by PID, then deletes both namespaces.
    await pair?.cleanup();
  }

  const rows: Row[] = [];
  for (const p of paths) {
    if (p.gbps.length === 0) continue;
    rows.push({
      metric: 'pod-to-pod iperf3', subject: p.subject, name: `${p.name}, iperf3 1 stream`, value: median(p.gbps), unit: 'Gbit/s', runs: p.gbps, runLoad1: p.gbpsLoads,
      ...(p.sidecarCpu.length > 0 && p.subject === 'meshpipe' ? { extra: { sidecarsCpuPctOfCore: median(p.sidecarCpu) } } : {}),
    });
  }
  for (const p of paths) {
    if (p.wrk === null) continue;
    rows.push({
      metric: 'pod-to-pod http', subject: p.subject, name: `${p.name}, http req/s`, value: p.wrk.requestsPerSecond, unit: 'req/s', runs: [p.wrk.requestsPerSecond], runLoad1: [p.wrkLoad],
      extra: { p50Ms: p.wrk.p50Ms, p99Ms: p.wrk.p99Ms, ...(p.subject === 'meshpipe' ? { sidecarsCpuPctOfCore: p.wrkSidecarCpu } : {}) },
    });
  }
  for (const p of paths) {
    if (p.wrk === null) continue;
    rows.push({ metric: 'pod-to-pod http p50', subject: p.subject, name: `${p.name}, http p50`, value: p.wrk.p50Ms, unit: 'ms', runs: [] });
  }
  notes.push('every process (client, two sidecars with 2 workers each, server) shares the same 2 cores: with two proxies in the path, the sidecars compete with the client and server for CPU, unlike pods on separate nodes');
  return {
    name: 'sidecars',
    title: 'two sidecars',
    method: `client pod -> client sidecar -> veth -> server sidecar -> server app, vs the same pods on skip ports; iperf3 -t ${IPERF_SECONDS} -O 1 (median of ${Math.min(ctx.runs, 3)} interleaved rounds), wrk -t1 -c${WRK_CONNECTIONS} -d${WRK_SECONDS}s --latency (one run per path) against nginx, clients as uid 1000`,
    rows,
    notes,
    errors,
  };
}

export const sidecars: BenchSection = {
  name: 'sidecars',
  description: 'client pod -> 2 transparent sidecars -> server pod (netns, root only): iperf3 and HTTP wrk vs the same pods on skip ports',
  run,
};
