/**
 * Section `scrape`: the cost of one /metrics render (one engine `snapshot()`
 * plus the Prometheus text of every series) with many label series, as a
 * production sidecar sees them.
 *
 * Method: distinct series need distinct *targets*, and a fixed `--forward`
 * listener has one target. So the bench does what a pod does: inside a
 * network namespace it creates, an iptables `REDIRECT` rule in `nat OUTPUT`
 * sends the client's connections to 127.16.0.0/12 port 9000 (the whole of
 * 127/8 is loopback on Linux) to ONE transparent listener (target
 * `originalDst`, `SO_ORIGINAL_DST`), exactly like Linkerd's outbound port
 * 4140. The client runs as uid 65534 and only its connections are redirected
 * (`-m owner`), so the proxy's own upstream connections reach the echo server
 * on 0.0.0.0:9000 directly. Each connection sends one byte, reads it back and
 * closes, leaving one engine TCP series per distinct destination address.
 *
 * Two points are measured in the same process: ~10k exposed time series (the
 * issue's "10k label series"; each target renders ~38 lines: open/read/write/
 * close counters per peer plus a 26-bucket duration histogram) and 10,000
 * distinct targets (~380k lines). For each: the median of 20 renders after 5
 * warm-up renders (and of 20 bare snapshots), the page size and line count.
 *
 * The module is both the section (run from run.ts in the root namespace) and
 * the worker (`node dist/bench/scrape.js --worker`, run inside the namespace).
 */
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import type { BenchContext, BenchSection, Row, Section } from './report.js';
import { median } from './report.js';

const ECHO_PORT = 9000;
const LISTEN_PORT = 4140;
const CLIENT_UID = 65534;
const RENDERS = 20;
/** Renders before measuring: Prometheus scrapes a long-running proxy, so the steady (JIT-warm) cost is the one that matters. */
const WARMUP = 5;
/** Targets per stage: ~10k exposed series, then 10k targets. */
const STAGES = [263, 10_000] as const;
const TARGET_MS = 20;

interface StageResult {
  readonly targets: number;
  readonly engineSeries: number;
  readonly lines: number;
  readonly bytes: number;
  readonly renderMs: number[];
  readonly snapshotMs: number[];
}

/** The i-th destination address (i >= 0): 127.16.0.1, 127.16.0.2, ... skipping .0 and .255. */
export function targetAddress(i: number): string {
  const n = Math.floor(i / 254);
  return `127.${16 + (n >> 8)}.${n & 255}.${(i % 254) + 1}`;
}

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${(r.stderr || r.stdout || String(r.error)).trim()}`);
}

/** The client, as a script: connects to targets [from, to) with bounded concurrency; prints DONE <failures>. */
const CLIENT = `
const net = require('node:net');
const [from, to, port] = process.argv.slice(1).map(Number);
const addr = (i) => { const n = Math.floor(i / 254); return '127.' + (16 + (n >> 8)) + '.' + (n & 255) + '.' + ((i % 254) + 1); };
let next = from, failures = 0, running = 0;
function one(i) {
  running++;
  const s = net.connect({ host: addr(i), port });
  let done = false;
  const finish = (ok) => { if (done) return; done = true; if (!ok) failures++; s.destroy(); running--; pump(); };
  s.setTimeout(10000, () => finish(false));
  s.on('connect', () => s.write('x'));
  s.on('data', () => { s.end(); });
  s.on('close', () => finish(s.bytesRead === 1));
  s.on('error', () => finish(false));
}
function pump() {
  while (running < 64 && next < to) one(next++);
  if (running === 0 && next >= to) { console.log('DONE ' + failures); process.exit(0); }
}
pump();
`;

async function runClient(from: number, to: number): Promise<number> {
  const child = spawn(process.execPath, ['-e', CLIENT, String(from), String(to), String(ECHO_PORT)], {
    uid: CLIENT_UID, gid: CLIENT_UID, stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  const [code] = (await once(child, 'exit')) as [number | null];
  const m = /DONE (\d+)/.exec(out);
  if (code !== 0 || m === null) throw new Error(`client exited ${code}: ${out.trim()}`);
  return Number(m[1]);
}

/** The worker: runs inside the namespace as root; prints one JSON line with every stage. */
async function worker(): Promise<void> {
  const { NativeProxy } = await import('../ts/engine/native.js');
  const { Metrics } = await import('../ts/observe/metrics.js');
  sh('ip', ['link', 'set', 'lo', 'up']);
  sh('iptables', ['-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-d', '127.16.0.0/12', '--dport', String(ECHO_PORT),
    '-m', 'owner', '--uid-owner', String(CLIENT_UID), '-j', 'REDIRECT', '--to-ports', String(LISTEN_PORT)]);
  const echo = net.createServer((s) => {
    s.on('error', () => undefined);
    s.pipe(s);
  });
  echo.listen({ host: '0.0.0.0', port: ECHO_PORT, backlog: 4096 });
  await once(echo, 'listening');
  const proxy = new NativeProxy({
    workers: 1, limits: { inboundConnections: 0, outboundConnections: 0, detectingConnections: 1024, fdReserve: 128, bulkBuffers: 4 }, idleTimeoutMs: 3_600_000, connectTimeoutMs: 5000,
    listeners: [{ name: 'outbound', bind: `127.0.0.1:${LISTEN_PORT}`, target: { kind: 'originalDst', inboundHost: null }, mode: 'opaque', direction: 'outbound' }],
    detect: { inboundTimeoutMs: 10_000, outboundTimeoutMs: 10_000, serverFirstGraceMs: 0, serverFirstCapacity: 16, serverFirstTtlMs: 60_000, portTimeouts: [] },
    metrics: { maxTargets: 20_000, retainIdleMs: 600_000 },
    policy: { generation: 1, rules: [], fallbackRules: [], destinationDetectTimeoutMs: null, tables: [], addresses: [], authz: null, meshDestinations: [] },
  });
  proxy.start();
  const metrics = new Metrics(proxy);
  const stages: StageResult[] = [];
  let opened = 0;
  for (const targets of STAGES) {
    const failures = await runClient(opened, targets);
    if (failures > 0) throw new Error(`${failures} of ${targets - opened} client connections failed`);
    opened = targets;
    // Every connection closed (its series is final) before measuring.
    for (let i = 0; i < 200 && proxy.snapshot().listeners.some((l) => l.open > 0); i++) await new Promise((r) => setTimeout(r, 25));
    const snapshotMs: number[] = [];
    for (let i = 0; i < RENDERS; i++) {
      const t0 = performance.now();
      proxy.snapshot();
      snapshotMs.push(performance.now() - t0);
    }
    const renderMs: number[] = [];
    let text = '';
    for (let i = 0; i < WARMUP; i++) await metrics.render();
    for (let i = 0; i < RENDERS; i++) {
      const t0 = performance.now();
      text = await metrics.render();
      renderMs.push(performance.now() - t0);
    }
    const engineSeries = proxy.snapshot().tcp.filter((s) => !s.overflow).length;
    let lines = 0;
    for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) if (text.charCodeAt(i + 1) !== 35 /* # */ && text[i + 1] !== '\n') lines++;
    stages.push({ targets, engineSeries, lines, bytes: Buffer.byteLength(text), renderMs, snapshotMs });
  }
  await proxy.close(1000);
  echo.close();
  process.stdout.write(`${JSON.stringify(stages)}\n`, () => process.exit(0));
}

async function run(ctx: BenchContext): Promise<Section> {
  const base: Pick<Section, 'name' | 'title' | 'method'> = {
    name: 'scrape',
    title: '/metrics render cost vs. label series',
    method: `transparent listener + iptables REDIRECT in a private netns; N distinct 127.16/12 targets; median of ${RENDERS} renders (one snapshot() + text each) after ${WARMUP} warm-up renders`,
  };
  if (!ctx.meshpipe.available) return { ...base, rows: [], notes: [], errors: [`meshpipe not available: ${ctx.meshpipe.reason}`] };
  const ns = `mp-scrape-${process.pid}`;
  sh('ip', ['netns', 'add', ns]);
  try {
    const script = fileURLToPath(import.meta.url);
    ctx.log(`scrape: ${STAGES.join(' then ')} targets in netns ${ns}`);
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, script, '--worker'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const [code] = (await once(child, 'exit')) as [number | null];
    if (code !== 0) return { ...base, rows: [], notes: [], errors: [`worker exited ${code}: ${err.trim().split('\n').slice(-5).join(' / ')}`] };
    const stages = JSON.parse(out.trim().split('\n').pop() ?? '[]') as StageResult[];
    const rows: Row[] = stages.map((s) => ({
      metric: `scrape @ ${s.lines} series`,
      subject: 'meshpipe',
      name: `meshpipe /metrics, ${s.targets} targets`,
      value: round(median(s.renderMs)),
      unit: 'ms (lower is better)',
      runs: s.renderMs.map(round),
      ...(s.lines <= 12_000 ? { targets: [{ atMost: TARGET_MS }] } : {}),
      extra: { targets: s.targets, engineSeries: s.engineSeries, exposedSeries: s.lines, pageKiB: Math.round(s.bytes / 1024), snapshotMedianMs: round(median(s.snapshotMs)) },
    }));
    const notes = stages.map((s) => `${s.targets} targets: ${s.lines} exposed series, ${Math.round(s.bytes / 1024)} KiB page; render median ${round(median(s.renderMs))} ms (snapshot() alone ${round(median(s.snapshotMs))} ms)`);
    return { ...base, rows, notes, errors: [] };
  } finally {
    spawnSync('ip', ['netns', 'delete', ns]);
  }
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}

export const scrape: BenchSection = { name: 'scrape', description: 'one /metrics render at ~10k series and at 10k targets', run };

if (process.argv.includes('--worker') && process.argv[1] === fileURLToPath(import.meta.url)) {
  worker().catch((err: unknown) => {
    process.stderr.write(`scrape worker: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exit(1);
  });
}
