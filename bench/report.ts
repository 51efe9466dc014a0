/**
 * The benchmark's data model and its presentation: what a section returns
 * (rows of measured values with every individual run), the ratios to the
 * direct path and to HAProxy, the machine description and load snapshot that
 * make a number interpretable, and the plain-text table printed at the end.
 *
 * Ratios are computed here, once, from rows that share a `metric`: a row's
 * "vs direct" is its value divided by the `direct` row's value for the same
 * metric, likewise for `haproxy`. For lower-is-better metrics (memory) the
 * ratio is still value/reference; the unit column says which way is good.
 */
import { readFileSync } from 'node:fs';
import { cpus, freemem, loadavg, release, totalmem, uptime } from 'node:os';
import { spawnSync } from 'node:child_process';
import type { MeshpipeBuild } from './meshpipe.js';

/** Who a row measures. `direct` and `haproxy` rows are the references for ratios. */
export type Subject = 'direct' | 'meshpipe' | 'haproxy' | 'nginx';

export interface Row {
  /** Groups rows whose values are comparable (ratios are taken within a metric). */
  readonly metric: string;
  readonly subject: Subject;
  /** Human label, e.g. `meshpipe (opaque)`. */
  readonly name: string;
  /** The reported value (a median when there were several runs). */
  readonly value: number;
  readonly unit: string;
  /** Every individual run, in order. */
  readonly runs: readonly number[];
  /** The 1-minute load average when each run started (other work on the machine skews numbers). */
  readonly runLoad1?: readonly number[];
  /** Goals from the issues, reported (never asserted). */
  readonly targets?: readonly Target[];
  /** Extra measurements for tuning (proxy CPU, fd counts, ...). */
  readonly extra?: Readonly<Record<string, number | string>>;
}

/** A goal: a minimum ratio to a reference row, or a maximum absolute value. */
export type Target = { readonly ratioTo: 'direct' | 'haproxy'; readonly atLeast: number } | { readonly atMost: number };

export interface Section {
  /** Stable id used by `--only`. */
  readonly name: string;
  readonly title: string;
  /** How the numbers were obtained, in one or two sentences. */
  readonly method: string;
  readonly rows: readonly Row[];
  readonly notes: readonly string[];
  /** Things that went wrong (a proxy that would not start, failed runs): the run exits 1. */
  readonly errors: readonly string[];
}

/** A section as recorded: its result plus timing and machine load around it. */
export interface SectionRecord extends Section {
  readonly startedAt: string;
  readonly durationS: number;
  readonly loadBefore: LoadSnapshot;
  readonly loadAfter: LoadSnapshot;
}

/** What every section gets from run.ts. */
export interface BenchContext {
  /** A temp dir for generated configs and process logs (kept when the run fails). */
  readonly dir: string;
  readonly meshpipe: MeshpipeBuild;
  /** The hard fd limit children can raise themselves to. */
  readonly fdLimit: number;
  /** Repetitions per configuration (the median is reported). */
  readonly runs: number;
  /** Progress line on stderr. */
  log(message: string): void;
}

/** A benchmark section module: `--only NAME` runs just this one. */
export interface BenchSection {
  readonly name: string;
  readonly description: string;
  run(ctx: BenchContext): Promise<Section>;
}

export interface LoadSnapshot {
  /** 1, 5 and 15 minute load averages (the `uptime` numbers). */
  readonly loadavg: readonly number[];
  readonly freeMemMiB: number;
}

export interface MachineInfo {
  readonly cpuModel: string;
  readonly cores: number;
  readonly kernel: string;
  readonly memMiB: number;
  readonly uptimeS: number;
  readonly node: string;
  readonly fdHardLimit: number;
  readonly peers: Readonly<Record<string, string>>;
}

/** The current 1-minute load average. */
export function load1(): number {
  return Math.round((loadavg()[0] ?? 0) * 100) / 100;
}

export function loadSnapshot(): LoadSnapshot {
  return { loadavg: loadavg().map((n) => Math.round(n * 100) / 100), freeMemMiB: Math.round(freemem() / 1048576) };
}

function firstLine(command: string, args: string[]): string {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  if (r.error) return 'not installed';
  return `${r.stdout}${r.stderr}`.trim().split('\n')[0] ?? '';
}

/** The hard RLIMIT_NOFILE of this process (what children can raise their soft limit to). */
export function fdHardLimit(): number {
  const limits = readFileSync('/proc/self/limits', 'utf8');
  const match = /^Max open files\s+\S+\s+(\S+)/m.exec(limits);
  if (!match || match[1] === 'unlimited') return 1 << 20;
  return Number(match[1]);
}

export function machineInfo(): MachineInfo {
  const cpuModel = cpus()[0]?.model.trim() ?? 'unknown';
  return {
    cpuModel,
    cores: cpus().length,
    kernel: release(),
    memMiB: Math.round(totalmem() / 1048576),
    uptimeS: Math.round(uptime()),
    node: process.version,
    fdHardLimit: fdHardLimit(),
    peers: {
      haproxy: firstLine('haproxy', ['-v']),
      nginx: firstLine('nginx', ['-v']),
      iperf3: firstLine('iperf3', ['--version']),
      redis: firstLine('redis-server', ['--version']),
    },
  };
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Ratio of a row to the `direct` / `haproxy` row of the same metric (null when absent). */
export function ratios(section: Section, row: Row): { direct: number | null; haproxy: number | null } {
  const ref = (subject: Subject): number | null => {
    if (row.subject === subject) return null;
    const other = section.rows.find((r) => r.metric === row.metric && r.subject === subject);
    return other && other.value > 0 ? row.value / other.value : null;
  };
  return { direct: ref('direct'), haproxy: ref('haproxy') };
}

/** `met`/`MISSED` for each of a row's targets, or '' when it has none. */
export function targetStatus(section: Section, row: Row): string {
  return (row.targets ?? []).map((t) => {
    if ('atMost' in t) return `<= ${t.atMost} ${row.unit}: ${row.value <= t.atMost ? 'met' : 'MISSED'}`;
    const r = ratios(section, row)[t.ratioTo];
    if (r === null) return `>= ${t.atLeast}x ${t.ratioTo}: n/a`;
    return `>= ${t.atLeast}x ${t.ratioTo}: ${r >= t.atLeast ? 'met' : 'MISSED'}`;
  }).join('; ');
}

function formatValue(v: number): string {
  if (!Number.isFinite(v)) return 'n/a';
  if (Number.isInteger(v)) return v.toLocaleString('en-US');
  const abs = Math.abs(v);
  if (abs >= 1000) return Math.round(v).toLocaleString('en-US');
  if (abs >= 100) return v.toFixed(0);
  if (abs >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function formatRatio(r: number | null): string {
  return r === null ? '' : `${r.toFixed(2)}x`;
}

/** The plain-text table of every section, ready to print. */
export function renderTable(records: readonly SectionRecord[]): string {
  const header = ['benchmark', 'value', 'unit', 'vs direct', 'vs haproxy', 'target'];
  const lines: string[][] = [];
  const sectionStarts = new Set<number>();
  for (const s of records) {
    sectionStarts.add(lines.length);
    for (const row of s.rows) {
      const r = ratios(s, row);
      lines.push([`${s.title}: ${row.name}`, formatValue(row.value), row.unit, formatRatio(r.direct), formatRatio(r.haproxy), targetStatus(s, row)]);
    }
  }
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]): string =>
    cells.map((c, i) => (i === 1 || i === 3 || i === 4 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  const out = [fmt(header), rule];
  lines.forEach((l, i) => {
    if (i > 0 && sectionStarts.has(i)) out.push('');
    out.push(fmt(l));
  });
  return out.join('\n');
}

/** Notes and per-row extras, printed under the table so tuning data is not lost. */
export function renderDetails(records: readonly SectionRecord[]): string {
  const out: string[] = [];
  for (const s of records) {
    out.push(`${s.title} (${s.durationS.toFixed(0)} s, load ${s.loadBefore.loadavg[0]} -> ${s.loadAfter.loadavg[0]}): ${s.method}`);
    for (const row of s.rows) {
      const loads = row.runLoad1 ? ` at load [${row.runLoad1.map((l) => l.toFixed(1)).join(', ')}]` : '';
      const runs = row.runs.length > 1 ? ` runs [${row.runs.map(formatValue).join(', ')}]${loads}` : '';
      const extra = row.extra ? ` ${Object.entries(row.extra).map(([k, v]) => `${k}=${typeof v === 'number' ? formatValue(v) : v}`).join(' ')}` : '';
      if (runs !== '' || extra !== '') out.push(`  ${row.name}:${runs}${extra}`);
    }
    for (const n of s.notes) out.push(`  note: ${n}`);
    for (const e of s.errors) out.push(`  ERROR: ${e}`);
  }
  return out.join('\n');
}

/** The same table as Markdown, for the README's benchmark section. */
export function renderMarkdown(records: readonly SectionRecord[], machine: MachineInfo, date: string): string {
  const out = [
    `Measured ${date.slice(0, 16).replace('T', ' ')} UTC on ${machine.cpuModel} (${machine.cores} cores), Linux ${machine.kernel}, Node ${machine.node}; ${machine.peers.haproxy}; ${machine.peers.nginx}.`,
    '',
    '| benchmark | value | unit | vs direct | vs haproxy | target |',
    '| --- | ---: | --- | ---: | ---: | --- |',
  ];
  for (const s of records) {
    for (const row of s.rows) {
      const r = ratios(s, row);
      out.push(`| ${s.title}: ${row.name} | ${formatValue(row.value)} | ${row.unit} | ${formatRatio(r.direct)} | ${formatRatio(r.haproxy)} | ${targetStatus(s, row)} |`);
    }
  }
  return out.join('\n');
}
