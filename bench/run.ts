/**
 * `npm run bench`: runs the benchmark sections one after another on this
 * machine, prints one table (value, unit, ratio to direct, ratio to HAProxy,
 * the target met or missed) and writes every number, with the date,
 * the machine (CPU model, cores, kernel), the load average around each section
 * and the meshpipe build measured, to bench/results/latest.json.
 *
 * A section is a module exporting a `BenchSection` (`run(ctx): Promise<Section>`);
 * adding one means adding it to SECTIONS below. Sections only report rows for
 * peers and features that exist: there are no placeholder rows. Benchmarks
 * never assert timings; a section that cannot run at all is reported as failed
 * and makes the exit code 1, the others still run and are written.
 *
 * Flags: --only NAME[,NAME] (repeatable), --runs N (rounds per configuration,
 * default 5), --out FILE, --keep (keep the temp dir with configs and logs),
 * --no-meshpipe (peers only), --list, --help.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { churn } from './churn.js';
import { detectCost } from './detect-cost.js';
import { http } from './http.js';
import { http2 } from './http2.js';
import { latency } from './latency.js';
import { idleRss } from './idle-rss.js';
import { policyScale } from './policy-scale.js';
import { scrape } from './scrape.js';
import { serverFirst } from './server-first.js';
import { sidecars } from './sidecars.js';
import { mesh } from './mesh.js';
import { throughput } from './iperf.js';
import { meshpipeBuild, REPO_ROOT } from './meshpipe.js';
import { stopAll } from './processes.js';
import {
  fdHardLimit, loadSnapshot, machineInfo, ratios, renderDetails, renderMarkdown, renderTable, targetStatus,
  type BenchContext, type BenchSection, type SectionRecord,
} from './report.js';

/**
 * Rounds per configuration. Five, not three: with several processes on two
 * cores a run's result depends on scheduling luck, and the median of five is
 * much steadier (a full run still takes about 7 minutes).
 */
const DEFAULT_RUNS = 5;

/** Every section, in the order they run. */
const SECTIONS: readonly BenchSection[] = [throughput, churn, idleRss, scrape, detectCost, serverFirst, http, http2, latency, sidecars, policyScale, mesh];

const USAGE = `usage: npm run bench -- [--only NAME[,NAME]] [--runs N] [--out FILE] [--keep] [--no-meshpipe] [--list]
sections: ${SECTIONS.map((s) => s.name).join(', ')}`;

interface Options {
  readonly only: readonly BenchSection[];
  readonly runs: number;
  readonly out: string;
  readonly keep: boolean;
  /** Measure only the peers (e.g. while the engine is being rebuilt). */
  readonly noMeshpipe: boolean;
}

function fail(message: string): never {
  console.error(`bench: ${message}\n${USAGE}`);
  process.exit(2);
}

function parseOptions(argv: string[]): Options | null {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        only: { type: 'string', multiple: true },
        runs: { type: 'string' },
        out: { type: 'string' },
        keep: { type: 'boolean', default: false },
        'no-meshpipe': { type: 'boolean', default: false },
        list: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (err) {
    fail((err as Error).message);
  }
  const v = parsed.values;
  if (v.help) {
    console.log(USAGE);
    return null;
  }
  if (v.list) {
    for (const s of SECTIONS) console.log(`${s.name.padEnd(12)} ${s.description}`);
    return null;
  }
  const names = (v.only ?? []).flatMap((o) => o.split(',')).map((n) => n.trim()).filter((n) => n !== '');
  const only = names.length === 0 ? SECTIONS : names.map((n) => SECTIONS.find((s) => s.name === n) ?? fail(`--only: unknown section "${n}": expected one of ${SECTIONS.map((s) => s.name).join(', ')}`));
  const runs = v.runs === undefined ? DEFAULT_RUNS : Number(v.runs);
  if (!Number.isInteger(runs) || runs < 1 || runs > 20) fail(`--runs: "${v.runs}" is not a whole number from 1 to 20`);
  // A partial run must not overwrite the full run's latest.json.
  const defaultOut = names.length === 0 ? 'latest.json' : `only-${only.map((s) => s.name).join('-')}.json`;
  return { only, runs, out: v.out ?? join(REPO_ROOT, 'bench', 'results', defaultOut), keep: v.keep, noMeshpipe: v['no-meshpipe'] };
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (options === null) return 0;
  const started = new Date();
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-bench-'));
  const machine = machineInfo();
  const found = meshpipeBuild();
  const build = options.noMeshpipe ? { ...found, available: false, reason: 'skipped (--no-meshpipe)' } : found;
  const loadStart = loadSnapshot();
  const ctx: BenchContext = {
    dir,
    meshpipe: build,
    fdLimit: fdHardLimit(),
    runs: options.runs,
    log: (m) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${m}`),
  };
  ctx.log(`${machine.cpuModel}, ${machine.cores} cores, kernel ${machine.kernel}, load ${loadStart.loadavg.join(' ')}`);
  ctx.log(build.available ? `meshpipe ${build.version} (commit ${build.commit}${build.dirty ? ', uncommitted changes' : ''}, addon built ${build.addonBuiltAt})` : `meshpipe not measured: ${build.reason}`);

  const records: SectionRecord[] = [];
  const failures: { section: string; error: string }[] = [];
  for (const section of options.only) {
    const loadBefore = loadSnapshot();
    const t0 = Date.now();
    ctx.log(`section ${section.name}: ${section.description}`);
    try {
      const result = await section.run(ctx);
      records.push({ ...result, startedAt: new Date(t0).toISOString(), durationS: (Date.now() - t0) / 1000, loadBefore, loadAfter: loadSnapshot() });
      for (const error of result.errors) failures.push({ section: section.name, error });
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      failures.push({ section: section.name, error });
      ctx.log(`section ${section.name} FAILED: ${error}`);
      await stopAll();
    }
  }

  const table = renderTable(records);
  console.log(`\nmeshpipe benchmark, ${started.toISOString()}, ${machine.cpuModel} (${machine.cores} cores), kernel ${machine.kernel}, load at start ${loadStart.loadavg.join(' ')}\n`);
  console.log(table);
  console.log(`\n${renderDetails(records)}`);
  for (const f of failures) console.log(`FAILED in ${f.section}: ${f.error}`);

  const result = {
    date: started.toISOString(),
    durationS: (Date.now() - started.getTime()) / 1000,
    machine,
    load: { start: loadStart, end: loadSnapshot() },
    meshpipe: build,
    options: { sections: options.only.map((s) => s.name), runs: options.runs },
    sections: records.map((s) => ({
      ...s,
      rows: s.rows.map((row) => {
        const r = ratios(s, row);
        return { ...row, vsDirect: r.direct, vsHaproxy: r.haproxy, target: targetStatus(s, row) };
      }),
    })),
    failures,
    table,
    markdown: renderMarkdown(records, machine, started.toISOString()),
  };
  mkdirSync(join(options.out, '..'), { recursive: true });
  writeFileSync(options.out, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`\nwrote ${relative(process.cwd(), options.out) || options.out}`);
  if (options.keep || failures.length > 0) console.log(`configs and logs kept in ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
  return failures.length > 0 ? 1 : 0;
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`bench: ${signal}: stopping the processes it started`);
    stopAll()
      .catch((err: unknown) => console.error(`bench: stopping the processes failed: ${String(err)}`))
      .finally(() => process.exit(130));
  });
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  async (err: unknown) => {
    console.error(`bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    process.exitCode = 1;
    // This handler's own promise is not awaited by anyone: it must not reject.
    await stopAll().catch((e: unknown) => console.error(`bench: stopping the processes failed: ${String(e)}`));
  },
);
