/**
 * Section `latency`: latency added by meshpipe's HTTP layer at a fixed rate
 * of 5,000 requests per second, through one proxy and through two (two
 * meshpipe processes in a row, as two sidecars), against nginx serving 512
 * bytes.
 *
 * The generator is vegeta (Go, from the Go module proxy; installed with `go
 * install` into $(go env GOPATH)/bin when missing), in its own process, so it
 * shares neither the proxy's Node process nor its event loop. vegeta is open
 * loop: requests leave on schedule whatever the responses do (it adds
 * workers instead of waiting for a free one), so a slow response cannot hold
 * back the requests behind it and hide its own delay (no coordinated
 * omission). Paths alternate in short runs (`ROUNDS` x `RUN_SECONDS` each,
 * after a warm-up), so a burst of other load on this shared machine lands on
 * all paths alike; each path's p50 and p99 are the medians over its runs, and
 * the added latency is the median over rounds of (path - direct) from
 * neighbouring runs.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { SMALL_FILE, startNginxHttp } from './http-peers.js';
import { meshpipeCommand, startMeshpipe, type MeshpipeForward } from './meshpipe.js';
import { ensurePeers, type Peer } from './peers.js';
import { freePort } from './processes.js';
import { load1, median, type BenchContext, type BenchSection, type Row, type Section, type Subject } from './report.js';

const RATE = 5000;
const RUN_SECONDS = 4;
const ROUNDS = 5;
const VEGETA_VERSION = 'v12.13.0';
const TARGET_ONE_MS = 0.3;
const TARGET_TWO_MS = 0.6;

/** The vegeta binary, installed with `go install` when missing. */
export function ensureVegeta(): string {
  const gopath = spawnSync('go', ['env', 'GOPATH'], { encoding: 'utf8' });
  if (gopath.status !== 0) throw new Error('vegeta needs Go (go env GOPATH failed): install golang');
  const bin = join(gopath.stdout.trim(), 'bin', 'vegeta');
  if (!existsSync(bin)) {
    const r = spawnSync('go', ['install', `github.com/tsenart/vegeta/v12@${VEGETA_VERSION}`], { stdio: 'inherit' });
    if (r.status !== 0 || !existsSync(bin)) throw new Error(`go install github.com/tsenart/vegeta/v12@${VEGETA_VERSION} failed`);
  }
  return bin;
}

interface VegetaRun {
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly success: number;
  readonly rate: number;
}

/** One open-loop run: `vegeta attack | vegeta report -type=json`. */
function attack(vegeta: string, url: string, seconds: number): VegetaRun {
  const a = spawnSync(vegeta, ['attack', `-rate=${RATE}`, `-duration=${seconds}s`, '-keepalive=true', '-timeout=5s'], {
    input: `GET ${url}\n`, maxBuffer: 512 * 1024 * 1024, timeout: (seconds + 30) * 1000,
  });
  if (a.status !== 0) throw new Error(`vegeta attack failed: ${a.stderr.toString().slice(-300)}`);
  const r = spawnSync(vegeta, ['report', '-type=json'], { input: a.stdout, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`vegeta report failed: ${r.stderr.slice(-300)}`);
  const j = JSON.parse(r.stdout) as { latencies: Record<string, number>; success: number; rate: number };
  return { p50Ms: j.latencies['50th']! / 1e6, p99Ms: j.latencies['99th']! / 1e6, success: j.success, rate: j.rate };
}

interface Path {
  readonly name: string;
  readonly subject: Subject;
  readonly url: string;
  readonly runs: VegetaRun[];
  readonly loads: number[];
}

async function run(ctx: BenchContext): Promise<Section> {
  ensurePeers({ nginx: true, haproxy: false });
  const vegeta = ensureVegeta();
  const notes: string[] = [];
  const errors: string[] = [];
  const peers: Peer[] = [];
  const paths: Path[] = [];
  try {
    const origin = await freePort();
    peers.push(await startNginxHttp(ctx.dir, origin));
    const url = (port: number) => `http://127.0.0.1:${port}/${SMALL_FILE}`;
    paths.push({ name: 'direct', subject: 'direct', url: url(origin), runs: [], loads: [] });
    if (ctx.meshpipe.available) {
      const one: MeshpipeForward = { port: await freePort(), target: `127.0.0.1:${origin}`, mode: 'detect' };
      const second: MeshpipeForward = { port: await freePort(), target: `127.0.0.1:${origin}`, mode: 'detect' };
      const first: MeshpipeForward = { port: await freePort(), target: `127.0.0.1:${second.port}`, mode: 'detect' };
      // Two processes for two proxies, as two sidecars would be.
      peers.push(await startMeshpipe([one, second], ctx.dir));
      peers.push(await startMeshpipe([first], ctx.dir));
      notes.push(`meshpipe A: ${meshpipeCommand([one, second])}; meshpipe B: ${meshpipeCommand([first])} (two proxies: B -> A's second listener -> nginx)`);
      paths.push({ name: 'meshpipe, 1 proxy', subject: 'meshpipe', url: url(one.port), runs: [], loads: [] });
      paths.push({ name: 'meshpipe, 2 proxies', subject: 'meshpipe', url: url(first.port), runs: [], loads: [] });
    } else {
      notes.push(`meshpipe rows omitted: ${ctx.meshpipe.reason}`);
    }
    for (const p of paths) attack(vegeta, p.url, 1);
    for (let round = 0; round < ROUNDS; round++) {
      for (const p of paths) {
        ctx.log(`latency: round ${round + 1}/${ROUNDS}: vegeta ${RATE}/s for ${RUN_SECONDS} s via ${p.name}`);
        p.loads.push(load1());
        try {
          const r = attack(vegeta, p.url, RUN_SECONDS);
          if (r.success < 1) errors.push(`${p.name}: only ${(r.success * 100).toFixed(2)}% of requests succeeded`);
          p.runs.push(r);
        } catch (err) {
          errors.push(`${p.name}: ${(err as Error).message}`);
        }
      }
    }
  } finally {
    for (const p of peers.reverse()) await p.stop();
  }
  const rows: Row[] = [];
  for (const p of paths) {
    if (p.runs.length === 0) continue;
    rows.push({ metric: 'p50 at 5k req/s', subject: p.subject, name: `${p.name} p50 at ${RATE} req/s`, value: median(p.runs.map((r) => r.p50Ms)), unit: 'ms', runs: p.runs.map((r) => r.p50Ms), runLoad1: p.loads });
  }
  for (const p of paths) {
    if (p.runs.length === 0) continue;
    rows.push({ metric: 'p99 at 5k req/s', subject: p.subject, name: `${p.name} p99 at ${RATE} req/s`, value: median(p.runs.map((r) => r.p99Ms)), unit: 'ms', runs: p.runs.map((r) => r.p99Ms), runLoad1: p.loads, extra: { achievedRate: median(p.runs.map((r) => r.rate)) } });
  }
  const direct = paths.find((p) => p.subject === 'direct');
  for (const [p, target] of [[paths[1], TARGET_ONE_MS], [paths[2], TARGET_TWO_MS]] as const) {
    if (p === undefined || direct === undefined || p.runs.length === 0) continue;
    const diff = (pick: (r: VegetaRun) => number) => median(p.runs.map((r, i) => pick(r) - (direct.runs[i] ? pick(direct.runs[i]) : Number.NaN)));
    rows.push({ metric: 'p50 added', subject: 'meshpipe', name: `p50 added, ${p.name.replace('meshpipe, ', '')}`, value: diff((r) => r.p50Ms), unit: 'ms', runs: [] });
    rows.push({ metric: 'p99 added', subject: 'meshpipe', name: `p99 added, ${p.name.replace('meshpipe, ', '')}`, value: diff((r) => r.p99Ms), unit: 'ms', runs: [], targets: [{ atMost: target }] });
  }
  notes.push(`vegeta ${VEGETA_VERSION} (open loop: no coordinated omission), keep-alive, its own process; nginx 2 workers, each meshpipe 2 worker threads, all on the same 2 cores`);
  return {
    name: 'latency',
    title: 'latency',
    method: `vegeta attack -rate=${RATE} GET /${SMALL_FILE}, ${ROUNDS} rounds of ${RUN_SECONDS} s per path, paths alternating; medians over runs; added = median over rounds of (path - direct)`,
    rows,
    notes,
    errors,
  };
}

export const latency: BenchSection = {
  name: 'latency',
  description: 'p50/p99 added at 5k req/s through one and two meshpipe proxies (vegeta, open loop)',
  run,
};
