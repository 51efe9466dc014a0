/**
 * Section `latency`: latency added by meshpipe's HTTP layer at a fixed rate
 * of 5,000 requests per second, through one proxy and through two (two
 * meshpipe processes in a row, as two sidecars), against nginx serving 512
 * bytes.
 *
 * Two open-loop generators, each in its own process (neither shares the
 * proxy's Node process or event loop), in the same rounds:
 * - latgen (bench/latgen, Rust, built on first use): wrk2's model, 16
 *   keep-alive connections on a fixed interleaved schedule, every request
 *   timed from when it was due (coordinated omission corrected); how late
 *   its own threads woke is reported beside it. The targets are judged on
 *   its numbers.
 * - vegeta (Go, from the Go module proxy; installed with `go install` when
 *   missing), open loop too, as a cross-check. Its runtime's own pauses show
 *   in its direct p99 (reported in the notes), which bounds what its
 *   "added" p99 can resolve.
 * Paths alternate in short runs (`ROUNDS` x `RUN_SECONDS` each, after a
 * warm-up), so a burst of other load on this shared machine lands on all
 * paths alike; each path's p50 and p99 are the medians over its runs, and
 * the added latency is the median over rounds of (path - direct) from
 * neighbouring runs (rounds where either run failed are left out).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { SMALL_FILE, startNginxHttp } from './http-peers.js';
import { REPO_ROOT, meshpipeCommand, startMeshpipe, type MeshpipeForward } from './meshpipe.js';
import { ensurePeers, type Peer } from './peers.js';
import { freePort } from './processes.js';
import { load1, median, type BenchContext, type BenchSection, type Row, type Section, type Subject } from './report.js';

const RATE = 5000;
const RUN_SECONDS = 4;
const ROUNDS = 5;
const VEGETA_VERSION = 'v12.13.0';
const TARGET_ONE_MS = 0.3;
const TARGET_TWO_MS = 0.6;
const LATGEN_CONNECTIONS = 16;
const LATGEN_DIR = join(REPO_ROOT, 'bench', 'latgen');

/** The latgen binary, built with cargo (release) when missing or older than its source. */
export function ensureLatgen(): string {
  const r = spawnSync('cargo', ['build', '--quiet', '--release', '--manifest-path', join(LATGEN_DIR, 'Cargo.toml')], { stdio: ['ignore', 'inherit', 'inherit'] });
  const bin = join(LATGEN_DIR, 'target', 'release', 'meshpipe-latgen');
  if (r.status !== 0 || !existsSync(bin)) throw new Error(`cargo build --release --manifest-path bench/latgen/Cargo.toml failed (exit ${r.status ?? r.signal})`);
  return bin;
}

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

/** One fixed-rate run's result, whichever generator made it. */
interface Run {
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly p999Ms: number;
  readonly success: number;
  readonly rate: number;
  /** latgen only: how late its own threads woke (p99), ms. */
  readonly generatorLateP99Ms?: number;
}

type Generator = 'latgen' | 'vegeta';
const GENERATORS: readonly Generator[] = ['latgen', 'vegeta'];

/** One open-loop run: `vegeta attack | vegeta report -type=json`. */
function attackVegeta(vegeta: string, url: string, seconds: number): Run {
  const a = spawnSync(vegeta, ['attack', `-rate=${RATE}`, `-duration=${seconds}s`, '-keepalive=true', '-timeout=5s'], {
    input: `GET ${url}\n`, maxBuffer: 512 * 1024 * 1024, timeout: (seconds + 30) * 1000,
  });
  if (a.status !== 0) throw new Error(`vegeta attack failed: ${a.stderr.toString().slice(-300)}`);
  const r = spawnSync(vegeta, ['report', '-type=json'], { input: a.stdout, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`vegeta report failed: ${r.stderr.slice(-300)}`);
  const j = JSON.parse(r.stdout) as { latencies: Record<string, number>; success: number; rate: number };
  // vegeta's JSON report has no p99.9: its max stands in (the column is informational).
  return { p50Ms: j.latencies['50th']! / 1e6, p99Ms: j.latencies['99th']! / 1e6, p999Ms: j.latencies.max! / 1e6, success: j.success, rate: j.rate };
}

/** One open-loop run of latgen (1 s warm-up on its connections, not recorded). */
function attackLatgen(latgen: string, url: string, seconds: number): Run {
  const args = ['--url', url, '--rate', String(RATE), '--duration', String(seconds), '--warmup', '1', '--connections', String(LATGEN_CONNECTIONS)];
  const r = spawnSync(latgen, args, { encoding: 'utf8', timeout: (seconds + 30) * 1000 });
  if (r.status !== 0) throw new Error(`latgen failed (exit ${r.status ?? r.signal}): ${r.stderr.slice(-300)}`);
  const j = JSON.parse(r.stdout) as { requests: number; errors: number; rate: number; p50Ms: number; p99Ms: number; p999Ms: number; generatorLateP99Ms: number; firstError: string | null };
  if (j.errors > 0) throw new Error(`latgen: ${j.errors} failed requests (first: ${j.firstError ?? '?'})`);
  return { p50Ms: j.p50Ms, p99Ms: j.p99Ms, p999Ms: j.p999Ms, success: j.requests / (j.requests + j.errors), rate: j.rate, generatorLateP99Ms: j.generatorLateP99Ms };
}

interface Path {
  readonly name: string;
  readonly subject: Subject;
  readonly url: string;
  /** One entry per round; `undefined` where that round's run failed. */
  readonly runs: Record<Generator, (Run | undefined)[]>;
  readonly loads: number[];
}

/** The runs that succeeded. */
function ok(runs: readonly (Run | undefined)[]): Run[] {
  return runs.filter((r): r is Run => r !== undefined);
}

async function run(ctx: BenchContext): Promise<Section> {
  ensurePeers({ nginx: true, haproxy: false });
  const tools: Record<Generator, string> = { latgen: ensureLatgen(), vegeta: ensureVegeta() };
  const attack = (g: Generator, url: string, seconds: number): Run =>
    g === 'latgen' ? attackLatgen(tools.latgen, url, seconds) : attackVegeta(tools.vegeta, url, seconds);
  const notes: string[] = [];
  const errors: string[] = [];
  const peers: Peer[] = [];
  const paths: Path[] = [];
  const mk = (name: string, subject: Subject, url: string): Path => ({ name, subject, url, runs: { latgen: [], vegeta: [] }, loads: [] });
  try {
    const origin = await freePort();
    peers.push(await startNginxHttp(ctx.dir, origin));
    const url = (port: number) => `http://127.0.0.1:${port}/${SMALL_FILE}`;
    paths.push(mk('direct', 'direct', url(origin)));
    if (ctx.meshpipe.available) {
      const one: MeshpipeForward = { port: await freePort(), target: `127.0.0.1:${origin}`, mode: 'detect' };
      const second: MeshpipeForward = { port: await freePort(), target: `127.0.0.1:${origin}`, mode: 'detect' };
      const first: MeshpipeForward = { port: await freePort(), target: `127.0.0.1:${second.port}`, mode: 'detect' };
      // Two processes for two proxies, as two sidecars would be.
      peers.push(await startMeshpipe([one, second], ctx.dir));
      peers.push(await startMeshpipe([first], ctx.dir));
      notes.push(`meshpipe A: ${meshpipeCommand([one, second])}; meshpipe B: ${meshpipeCommand([first])} (two proxies: B -> A's second listener -> nginx)`);
      paths.push(mk('meshpipe, 1 proxy', 'meshpipe', url(one.port)));
      paths.push(mk('meshpipe, 2 proxies', 'meshpipe', url(first.port)));
    } else {
      notes.push(`meshpipe rows omitted: ${ctx.meshpipe.reason}`);
    }
    for (const p of paths) attackVegeta(tools.vegeta, p.url, 1);
    for (let round = 0; round < ROUNDS; round++) {
      for (const p of paths) {
        p.loads.push(load1());
        for (const g of GENERATORS) {
          ctx.log(`latency: round ${round + 1}/${ROUNDS}: ${g} ${RATE}/s for ${RUN_SECONDS} s via ${p.name}`);
          try {
            const r = attack(g, p.url, RUN_SECONDS);
            if (r.success < 1) errors.push(`${p.name} (${g}): only ${(r.success * 100).toFixed(2)}% of requests succeeded`);
            p.runs[g].push(r);
          } catch (err) {
            p.runs[g].push(undefined);
            errors.push(`${p.name} (${g}): ${(err as Error).message}`);
          }
        }
      }
    }
  } finally {
    for (const p of peers.reverse()) await p.stop();
  }
  const rows: Row[] = [];
  const direct = paths.find((p) => p.subject === 'direct');
  for (const g of GENERATORS) {
    const tag = g === 'latgen' ? '' : ' (vegeta)';
    for (const [q, pick] of [['p50', (r: Run) => r.p50Ms], ['p99', (r: Run) => r.p99Ms], ['p99.9', (r: Run) => r.p999Ms]] as const) {
      if (g === 'vegeta' && q === 'p99.9') continue;
      for (const p of paths) {
        const runs = ok(p.runs[g]);
        if (runs.length === 0) continue;
        const extra: Record<string, number> = { achievedRate: median(runs.map((r) => r.rate)) };
        if (g === 'latgen') extra.generatorLateP99Ms = median(runs.map((r) => r.generatorLateP99Ms ?? Number.NaN));
        rows.push({ metric: `${q} at 5k req/s${tag}`, subject: p.subject, name: `${p.name} ${q} at ${RATE} req/s${tag}`, value: median(runs.map(pick)), unit: 'ms', runs: runs.map(pick), runLoad1: p.loads, extra });
      }
    }
    for (const [p, target] of [[paths[1], TARGET_ONE_MS], [paths[2], TARGET_TWO_MS]] as const) {
      if (p === undefined || direct === undefined) continue;
      // Paired by round, only where both runs of the round succeeded.
      const pairs = p.runs[g].flatMap((r, i) => {
        const d = direct.runs[g][i];
        return r !== undefined && d !== undefined ? [[r, d] as const] : [];
      });
      if (pairs.length === 0) continue;
      const diff = (pick: (r: Run) => number) => median(pairs.map(([r, d]) => pick(r) - pick(d)));
      const hop = p.name.replace('meshpipe, ', '');
      rows.push({ metric: `p50 added${tag}`, subject: 'meshpipe', name: `p50 added, ${hop}${tag}`, value: diff((r) => r.p50Ms), unit: 'ms', runs: [] });
      rows.push({
        metric: `p99 added${tag}`, subject: 'meshpipe', name: `p99 added, ${hop}${tag}`, value: diff((r) => r.p99Ms), unit: 'ms', runs: [],
        ...(g === 'latgen' ? { targets: [{ atMost: target }] } : {}),
      });
    }
  }
  const fmt = (v: number) => (Number.isFinite(v) ? `${v.toFixed(3)} ms` : 'n/a');
  const directP99 = (g: Generator) => median(ok(direct?.runs[g] ?? []).map((r) => r.p99Ms));
  const late = median(paths.flatMap((p) => ok(p.runs.latgen).map((r) => r.generatorLateP99Ms ?? Number.NaN)));
  notes.push(`latgen (bench/latgen: ${LATGEN_CONNECTIONS} keep-alive connections, fixed interleaved schedule, every request timed from when it was due, as wrk2 does) is the generator the targets are judged on; its threads woke late by ${fmt(late)} at p99 (median over runs); its direct p99 was ${fmt(directP99('latgen'))}`);
  notes.push(`vegeta ${VEGETA_VERSION} (open loop) runs in the same rounds as a cross-check; its direct p99 was ${fmt(directP99('vegeta'))}, which bounds what its "added" p99 can resolve`);
  notes.push('each generator in its own process; nginx 2 workers, each meshpipe 2 worker threads, all on the same 2 cores');
  return {
    name: 'latency',
    title: 'latency',
    method: `latgen and vegeta, ${RATE} req/s GET /${SMALL_FILE}, ${ROUNDS} rounds of ${RUN_SECONDS} s per path and generator, paths alternating; medians over runs; added = median over rounds of (path - direct)`,
    rows,
    notes,
    errors,
  };
}

export const latency: BenchSection = {
  name: 'latency',
  description: 'p50/p99 added at 5k req/s through one and two meshpipe proxies (latgen, wrk2-style and CO-corrected; vegeta as a cross-check)',
  run,
};
