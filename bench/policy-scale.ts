/**
 * Section `policy-scale`: the port policy pipeline at cluster size (issue 10
 * §3), at 1,000, 10,000 and 50,000 pods (3 container ports each, one Service
 * per 5 pods: 2,000 Services at the 10,000 point, each with an EndpointSlice
 * of its workload's 10 pods, one Server per 100 pods, 20 namespaces, every
 * third workload with an opaque-ports annotation, and a kilobyte of unrelated
 * annotation per pod, as `kubectl apply` leaves). The HTTP layer is on (the
 * default), so the proxy also compiles the EndpointSlices into its endpoints
 * table for per-request balancing, and the memory measured includes it.
 *
 * The objects are served by test/fake-kube-api.ts (list in pages and watch,
 * as the API server does) in this process; meshpipe runs as a user would run
 * it (`meshpipe proxy --kube --kubeconfig F`), in its own process, with one
 * `--forward` listener whose mode comes from the policy. Measured:
 * - start: from spawn to the "proxy ready" log line, which comes after the
 *   whole table is in the engine (the engine's address count is checked);
 * - one-pod update: a pod moves to a new IP at the fake API; from just
 *   before the event is published to the engine's new generation (the
 *   proxy's `policy updated` debug line carries a high-resolution timestamp
 *   taken right after the engine applied the delta; both processes read the
 *   same system clock), 30 changes one at a time, median and p95;
 * - lookup cost: crates/meshpipe-core/examples/policy_lookup.rs, the engine's
 *   lookup in a tight loop over mixed targets (pod IPs, Service IPs, unknown
 *   addresses, listed and unlisted ports), with the same tables, minus the
 *   same loop over a table with no destinations; plus end to end, connection
 *   churn (redis-benchmark, a new connection per PING) through the proxy with
 *   the full table and with an empty cluster, interleaved rounds;
 * - RSS added: the proxy's resident set once settled, minus the same proxy
 *   watching an empty cluster (and, for reference, a proxy with no policy
 *   source at all);
 * - memory per 1,000 pods: the RSS slope between the 1,000 and 50,000 points.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FakeKubeApi } from '../test/fake-kube-api.js';
import { churnOnce } from './churn.js';
import { CLI_PATH, REPO_ROOT } from './meshpipe.js';
import { ensurePeers, startRedis } from './peers.js';
import { freePort, logTail, rssKiB, runAsync, spawnTracked, stopTracked, type Tracked } from './processes.js';
import { median, type BenchContext, type BenchSection, type Row, type Section } from './report.js';

const POINTS = [1_000, 10_000, 50_000] as const;
/** The targets apply at this point. */
const TARGET_POINT = 10_000;
const UPDATES = 30;
const SETTLE_MS = 3_000;

type Obj = Parameters<FakeKubeApi['apply']>[1];

/** The objects of a cluster with `pods` pods (see the section doc). */
export function clusterObjects(pods: number): { namespaces: Obj[]; pods: Obj[]; services: Obj[]; endpointSlices: Obj[]; servers: Obj[] } {
  const namespaces: Obj[] = Array.from({ length: 20 }, (_, i) => ({
    metadata: { name: `ns-${i}`, annotations: i === 7 ? { 'config.linkerd.io/opaque-ports': '9000-9100' } : {} },
  }));
  const filler = 'x'.repeat(1000);
  const podIp = (i: number): string => `10.${200 + Math.floor(i / 65536)}.${Math.floor(i / 256) % 256}.${i % 256}`;
  const podObjects: Obj[] = [];
  for (let i = 0; i < pods; i++) {
    const w = Math.floor(i / 10);
    const ip = podIp(i);
    podObjects.push({
      metadata: {
        name: `app-${w}-${i % 10}`, namespace: `ns-${w % 20}`, labels: { app: `app-${w}`, tier: 'backend' },
        annotations: { ...(w % 3 === 0 ? { 'config.linkerd.io/opaque-ports': 'db' } : {}), 'kubectl.kubernetes.io/last-applied-configuration': filler },
      },
      spec: { containers: [{ name: 'app', image: 'registry.example.com/app:1', ports: [
        { name: 'http', containerPort: 8080 }, { name: 'metrics', containerPort: 9090 }, { name: 'db', containerPort: 5432 }] }] },
      status: { phase: 'Running', podIP: ip, podIPs: [{ ip }], conditions: [{ type: 'Ready', status: 'True' }] },
    });
  }
  const services: Obj[] = [];
  const endpointSlices: Obj[] = [];
  for (let s = 0; s < pods / 5; s++) {
    const w = Math.floor(s / 2);
    // The Service selects workload w: its 10 pods are the slice's endpoints.
    endpointSlices.push({
      metadata: { name: `svc-${s}-abcde`, namespace: `ns-${w % 20}`, labels: { 'kubernetes.io/service-name': `svc-${s}` } },
      addressType: 'IPv4',
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }, { name: 'db', port: 5432, protocol: 'TCP' }],
      endpoints: Array.from({ length: 10 }, (_, k) => ({ addresses: [podIp(w * 10 + k)], conditions: { ready: true } })),
    });
    services.push({
      metadata: { name: `svc-${s}`, namespace: `ns-${w % 20}` },
      spec: {
        clusterIP: `10.96.${Math.floor(s / 256)}.${s % 256}`, selector: { app: `app-${w}` },
        ports: [{ name: 'http', port: 80, targetPort: 'http', ...(s % 2 === 0 ? { appProtocol: 'kubernetes.io/h2c' } : {}) }, { name: 'db', port: 5432, targetPort: 5432 }],
      },
    });
  }
  const servers: Obj[] = Array.from({ length: pods / 100 }, (_, k) => ({
    metadata: { name: `metrics-${k}`, namespace: `ns-${(k * 10) % 20}`, creationTimestamp: '2026-01-01T00:00:00Z' },
    spec: { podSelector: { matchLabels: { app: `app-${k * 10}` } }, port: 'metrics', proxyProtocol: 'HTTP/2' },
  }));
  return { namespaces, pods: podObjects, services, endpointSlices, servers };
}

interface Proxy {
  readonly tracked: Tracked;
  readonly admin: string;
  readonly port: number;
  readonly startMs: number;
  readonly logs: Record<string, unknown>[];
}

/** Starts `meshpipe proxy` with the given policy flags; resolves at "proxy ready". */
async function startProxy(name: string, ctx: BenchContext, redisPort: number, policyArgs: readonly string[]): Promise<Proxy> {
  const port = await freePort();
  const adminPort = await freePort();
  // Debug for the policy layer's per-update lines; the engine's per-connection traces stay off.
  // meshpipe logs to stderr (stdout stays the app's in meshpipe run).
  const args = [CLI_PATH, 'proxy', '--log-level', 'debug', '--engine-log', 'warn', '--admin', `127.0.0.1:${adminPort}`, '--drain-timeout', '2s',
    '--forward', `127.0.0.1:${port}=127.0.0.1:${redisPort}`, ...policyArgs];
  const started = performance.now();
  const tracked = spawnTracked(name, process.execPath, args, ctx.dir, { cwd: REPO_ROOT });
  const logs: Record<string, unknown>[] = [];
  let partial = '';
  let ready: number | undefined;
  tracked.child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      try {
        const l = JSON.parse(line) as Record<string, unknown>;
        // Engine connection traces are not needed; keep the policy lines and the milestones.
        if (typeof l['msg'] === 'string' && (l['msg'].startsWith('policy') || l['msg'] === 'proxy ready')) logs.push(l);
        if (l['msg'] === 'proxy ready' && ready === undefined) ready = performance.now();
      } catch {
        // not a JSON line
      }
    }
  });
  const deadline = Date.now() + 120_000;
  while (ready === undefined) {
    if (tracked.hasExited()) throw new Error(`${name} exited before it was ready:\n${logTail(tracked)}`);
    if (Date.now() > deadline) throw new Error(`${name} was not ready after 120 s:\n${logTail(tracked)}`);
    await sleep(5);
  }
  return { tracked, admin: `127.0.0.1:${adminPort}`, port, startMs: ready - started, logs };
}

/** The engine's policy addresses and the Services (cluster IP and port) of its endpoints table. */
async function engineTables(admin: string): Promise<{ addresses: number; services: number }> {
  const res = await fetch(`http://${admin}/snapshot`, { signal: AbortSignal.timeout(10_000) });
  const s = (await res.json()) as { policy: { addresses: number }; endpoints: { services: number } };
  return { addresses: s.policy.addresses, services: s.endpoints.services };
}

/** Moves `count` pods to new IPs one at a time; returns each event -> engine latency in ms. */
async function updateLatencies(api: FakeKubeApi, proxy: Proxy, objects: Obj[], count: number): Promise<number[]> {
  const out: number[] = [];
  for (let k = 0; k < count; k++) {
    const pod = objects[(k * 7919) % objects.length]!;
    const name = `Pod ${pod.metadata.namespace}/${pod.metadata.name}`;
    const ip = `10.254.${Math.floor(k / 250)}.${(k % 250) + 1}`;
    const moved: Obj = { ...pod, status: { ...(pod['status'] as object), podIP: ip, podIPs: [{ ip }] } };
    const seen = proxy.logs.length;
    const t0 = performance.timeOrigin + performance.now();
    api.apply('/api/v1/pods', moved);
    const deadline = Date.now() + 10_000;
    let line: Record<string, unknown> | undefined;
    while (line === undefined) {
      line = proxy.logs.slice(seen).find((l) => (l['msg'] === 'policy updated' || l['msg'] === 'policy loaded') && (l['changed'] as string[] | undefined)?.includes(name));
      if (line !== undefined) break;
      if (Date.now() > deadline) throw new Error(`no policy update for ${name} within 10 s`);
      await sleep(1);
    }
    out.push(Number(line['at']) - t0);
    objects[(k * 7919) % objects.length] = moved;
    await sleep(100);
  }
  return out;
}

/** Connection churn through a proxy: connect, PING, PONG, close; cycles per second. */
async function churn(port: number): Promise<number> {
  return churnOnce(port, 10_000, 20);
}

function quantile(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))] ?? Number.NaN;
}

const round = (n: number, digits = 1): number => Math.round(n * 10 ** digits) / 10 ** digits;

async function lookupBench(ctx: BenchContext): Promise<Map<number, Record<string, number>>> {
  ctx.log('policy-scale: building and running the engine lookup micro-benchmark (cargo, release)');
  const out = await runAsync('cargo', ['run', '--release', '-q', '-p', 'meshpipe-core', '--example', 'policy_lookup', '--', ...POINTS.map(String)], 1_800_000);
  const results = new Map<number, Record<string, number>>();
  for (const line of out.split('\n')) {
    if (!line.startsWith('{')) continue;
    const r = JSON.parse(line) as Record<string, number>;
    results.set(r['pods'] ?? 0, r);
  }
  return results;
}

async function run(ctx: BenchContext): Promise<Section> {
  const rows: Row[] = [];
  const notes: string[] = [];
  const errors: string[] = [];
  ensurePeers({ redis: true });
  const micro = await lookupBench(ctx);
  const redisPort = await freePort();
  const redis = await startRedis(redisPort, ctx.dir);
  const rss: Record<number, number> = {};
  try {
    // References: no policy source at all, and --kube watching an empty cluster.
    const flagsOnly = await startProxy('meshpipe-flags', ctx, redisPort, []);
    await sleep(SETTLE_MS);
    const flagsRss = rssKiB(flagsOnly.tracked.pid);
    await stopTracked(flagsOnly.tracked);
    const emptyApi = new FakeKubeApi();
    await emptyApi.start();
    const emptyConfig = join(ctx.dir, 'kubeconfig-empty');
    writeFileSync(emptyConfig, emptyApi.kubeconfig());
    const kubeArgs = (file: string): string[] => ['--kube', '--kubeconfig', file, '--namespace', 'ns-0', '--pod', 'client-0'];
    const empty = await startProxy('meshpipe-kube-empty', ctx, redisPort, kubeArgs(emptyConfig));
    await sleep(SETTLE_MS);
    const emptyRss = rssKiB(empty.tracked.pid);
    notes.push(`references: RSS ${round(flagsRss / 1024)} MiB with no policy source, ${round(emptyRss / 1024)} MiB with --kube on an empty cluster (start ${round(empty.startMs)} ms)`);

    for (const pods of POINTS) {
      ctx.log(`policy-scale: ${pods} pods`);
      const api = new FakeKubeApi();
      await api.start();
      const objects = clusterObjects(pods);
      api.load('/api/v1/namespaces', objects.namespaces);
      api.load('/api/v1/pods', objects.pods);
      api.load('/api/v1/services', objects.services);
      api.load('/apis/discovery.k8s.io/v1/endpointslices', objects.endpointSlices);
      api.load('/apis/policy.linkerd.io/v1beta3/servers', objects.servers);
      const config = join(ctx.dir, `kubeconfig-${pods}`);
      writeFileSync(config, api.kubeconfig());
      let proxy: Proxy | undefined;
      try {
        proxy = await startProxy(`meshpipe-kube-${pods}`, ctx, redisPort, kubeArgs(config));
        const { addresses, services } = await engineTables(proxy.admin);
        const expected = pods + pods / 5;
        if (addresses !== expected) errors.push(`${pods} pods: the engine has ${addresses} addresses at ready, expected ${expected}`);
        // Two ports per Service, each balanced over its slice's 10 endpoints.
        if (services !== (pods / 5) * 2) errors.push(`${pods} pods: the engine's endpoints table has ${services} Services at ready, expected ${(pods / 5) * 2}`);
        const target = pods === TARGET_POINT;
        rows.push({ metric: 'policy-start', subject: 'meshpipe', name: `start, ${pods.toLocaleString('en-US')} pods`, value: round(proxy.startMs / 1000, 2), unit: 's',
          runs: [round(proxy.startMs / 1000, 2)], ...(target ? { targets: [{ atMost: 2 }] } : {}),
          extra: { addresses, endpointServices: services, emptyClusterStartMs: round(empty.startMs) } });

        await sleep(SETTLE_MS);
        rss[pods] = rssKiB(proxy.tracked.pid);
        const added = (rss[pods] - emptyRss) / 1024;
        rows.push({ metric: 'policy-rss', subject: 'meshpipe', name: `RSS added, ${pods.toLocaleString('en-US')} pods`, value: round(added), unit: 'MiB',
          runs: [round(added)], ...(target ? { targets: [{ atMost: 64 }] } : {}),
          extra: { rssMiB: round(rss[pods] / 1024), emptyClusterMiB: round(emptyRss / 1024), noPolicySourceMiB: round(flagsRss / 1024), overNoSourceMiB: round((rss[pods] - flagsRss) / 1024) } });

        const latencies = await updateLatencies(api, proxy, objects.pods, UPDATES);
        rows.push({ metric: 'policy-update', subject: 'meshpipe', name: `one-pod update, ${pods.toLocaleString('en-US')} pods`, value: round(median(latencies), 2), unit: 'ms',
          runs: latencies.map((l) => round(l, 2)), ...(target ? { targets: [{ atMost: 10 }] } : {}),
          extra: { p95Ms: round(quantile(latencies, 0.95), 2), maxMs: round(Math.max(...latencies), 2) } });

        const m = micro.get(pods);
        if (m) {
          const over = (m['lookupNs'] ?? 0) - (m['lookupNsEmpty'] ?? 0);
          rows.push({ metric: 'policy-lookup', subject: 'meshpipe', name: `lookup over an empty table, ${pods.toLocaleString('en-US')} pods`, value: round(over), unit: 'ns',
            runs: [round(over)], ...(target ? { targets: [{ atMost: 1000 }] } : {}),
            extra: { lookupNs: m['lookupNs'] ?? 0, emptyTableNs: m['lookupNsEmpty'] ?? 0, engineCompileMs: m['compileMs'] ?? 0,
              engineDeltaUsMedian: m['updateUsMedian'] ?? 0, engineDeltaUsP99: m['updateUsP99'] ?? 0, tables: m['tables'] ?? 0 } });
        } else {
          errors.push(`the lookup micro-benchmark printed nothing for ${pods} pods`);
        }

        // End to end: connection churn through the loaded proxy vs the empty-cluster one, interleaved.
        const full: number[] = [];
        const base: number[] = [];
        for (let r = 0; r < Math.max(3, ctx.runs); r++) {
          full.push(await churn(proxy.port));
          base.push(await churn(empty.port));
        }
        rows.push({ metric: 'policy-churn', subject: 'meshpipe', name: `churn, ${pods.toLocaleString('en-US')} pods vs empty cluster`, value: round(median(full) / median(base), 3),
          unit: 'x', runs: full.map((f, i) => round(f / (base[i] ?? f), 3)), extra: { connPerSec: round(median(full)), emptyClusterConnPerSec: round(median(base)) } });
      } catch (err) {
        errors.push(`${pods} pods: ${err instanceof Error ? err.message : String(err)}`);
      } finally {
        if (proxy) await stopTracked(proxy.tracked);
        await api.close();
      }
    }
    await stopTracked(empty.tracked);
    await emptyApi.close();
    const [low, high] = [POINTS[0], POINTS[POINTS.length - 1] as number];
    const first = rss[low];
    const last = rss[high];
    if (first !== undefined && last !== undefined) {
      const per = (last - first) / 1024 / ((high - low) / 1000);
      rows.push({ metric: 'policy-memory', subject: 'meshpipe', name: 'RSS per 1,000 pods (slope, 1k to 50k)', value: round(per, 2), unit: 'MiB', runs: [round(per, 2)] });
    }
  } finally {
    await redis.stop();
  }
  notes.push('update latency: from just before the fake API publishes the event to just after the engine applied the delta (timestamps of two processes on one clock)');
  notes.push('lookup: engine micro-benchmark (best of interleaved rounds over 65,536 mixed targets); churn: redis-benchmark PING per connection, detect mode from the policy');
  return {
    name: 'policy-scale',
    title: 'Port policy at cluster scale (1k / 10k / 50k pods, 3 ports each, a Service per 5 pods)',
    method: 'fake Kubernetes API in the bench process, meshpipe proxy --kube in its own process; see bench/policy-scale.ts',
    rows, notes, errors,
  };
}

export const policyScale: BenchSection = {
  name: 'policy-scale',
  description: 'port policy at 1k/10k/50k pods: start, one-pod update, lookup cost, RSS, memory per 1,000 pods',
  run,
};
