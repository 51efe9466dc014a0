/**
 * A small, strict parser for the Prometheus text exposition format (0.0.4),
 * used by the tests to read /metrics the way Prometheus would, and to fail on
 * anything Prometheus would reject or misread: malformed lines, bad metric or
 * label names, bad escapes, duplicate series, samples without a TYPE, a
 * family's samples split across the page, and histograms whose buckets are
 * not cumulative or whose +Inf bucket differs from `_count`.
 */

export type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';

export interface Sample {
  /** The sample's own name (e.g. `x_bucket` for family `x`). */
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

export interface Family {
  readonly name: string;
  readonly type: MetricType;
  readonly help: string;
  readonly samples: Sample[];
}

export class PromParseError extends Error {
  constructor(line: number, text: string, why: string) {
    super(`line ${line}: ${why}: ${JSON.stringify(text.length > 200 ? `${text.slice(0, 200)}...` : text)}`);
  }
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES: readonly MetricType[] = ['counter', 'gauge', 'histogram', 'summary', 'untyped'];

function parseValue(text: string): number {
  // Like Prometheus (Go's ParseFloat): Inf, Infinity and NaN in any case (prom-client writes `Nan`).
  if (/^[+]?inf(inity)?$/i.test(text)) return Infinity;
  if (/^-inf(inity)?$/i.test(text)) return -Infinity;
  if (/^nan$/i.test(text)) return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`bad value ${text}`);
  return Number(text);
}

/** Parses `{a="x",b="y"}` starting at `i` (at the `{`); returns labels and the index after `}`. */
function parseLabels(line: string, start: number): { labels: Record<string, string>; end: number } {
  const labels: Record<string, string> = {};
  let i = start + 1;
  for (;;) {
    if (line[i] === '}') return { labels, end: i + 1 };
    const eq = line.indexOf('=', i);
    if (eq < 0) throw new Error('label without "="');
    const name = line.slice(i, eq);
    if (!LABEL_NAME.test(name)) throw new Error(`bad label name ${JSON.stringify(name)}`);
    if (name in labels) throw new Error(`label ${name} repeated`);
    if (line[eq + 1] !== '"') throw new Error(`label ${name}: value must be quoted`);
    let j = eq + 2;
    let value = '';
    for (;;) {
      const c = line[j];
      if (c === undefined) throw new Error(`label ${name}: unterminated value`);
      if (c === '"') break;
      if (c === '\\') {
        const n = line[j + 1];
        if (n === '\\') value += '\\';
        else if (n === '"') value += '"';
        else if (n === 'n') value += '\n';
        else throw new Error(`label ${name}: bad escape \\${n ?? ''}`);
        j += 2;
        continue;
      }
      value += c;
      j++;
    }
    labels[name] = value;
    i = j + 1;
    if (line[i] === ',') i++;
    else if (line[i] !== '}') throw new Error(`label ${name}: expected "," or "}" after the value`);
  }
}

/** The family a sample name belongs to, given the declared types. */
function familyOf(name: string, types: Map<string, MetricType>): string {
  if (types.has(name)) return name;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (name.endsWith(suffix)) {
      const base = name.slice(0, -suffix.length);
      const t = types.get(base);
      if (t === 'histogram' || (t === 'summary' && suffix !== '_bucket')) return base;
    }
  }
  return name;
}

/** Parses a whole page; throws `PromParseError` naming the line on anything invalid. */
export function parsePrometheusText(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const types = new Map<string, MetricType>();
  const helps = new Map<string, string>();
  const seen = new Set<string>();
  const closed = new Set<string>();
  let current: string | undefined;
  const lines = text.split('\n');
  if (lines[lines.length - 1] !== '') throw new PromParseError(lines.length, lines[lines.length - 1] ?? '', 'the page must end with a newline');
  lines.forEach((line, index) => {
    const n = index + 1;
    try {
      if (line === '') return;
      if (line.startsWith('#')) {
        const m = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
        if (m === null) return; // a plain comment
        const [, kind, name, rest = ''] = m as unknown as [string, string, string, string | undefined];
        if (!METRIC_NAME.test(name)) throw new Error(`bad metric name ${name}`);
        if (kind === 'TYPE') {
          if (!(TYPES as readonly string[]).includes(rest)) throw new Error(`unknown type ${rest}`);
          if (types.has(name)) throw new Error(`second TYPE for ${name}`);
          if (families.has(name)) throw new Error(`TYPE for ${name} after its samples`);
          types.set(name, rest as MetricType);
        } else {
          if (helps.has(name)) throw new Error(`second HELP for ${name}`);
          helps.set(name, rest);
        }
        return;
      }
      const nameEnd = line.search(/[{ ]/);
      if (nameEnd <= 0) throw new Error('expected a sample: name{labels} value');
      const name = line.slice(0, nameEnd);
      if (!METRIC_NAME.test(name)) throw new Error(`bad metric name ${name}`);
      let labels: Record<string, string> = {};
      let i = nameEnd;
      if (line[i] === '{') ({ labels, end: i } = parseLabels(line, i));
      if (line[i] !== ' ') throw new Error('expected a space before the value');
      const fields = line.slice(i + 1).split(' ');
      if (fields.length > 2 || fields[0] === '') throw new Error('expected "value [timestamp]"');
      const value = parseValue(fields[0]!);
      const family = familyOf(name, types);
      const type = types.get(family);
      if (type === undefined) throw new Error(`sample of ${family} without a TYPE line`);
      if (family !== current) {
        if (closed.has(family)) throw new Error(`samples of ${family} are not contiguous`);
        if (current !== undefined) closed.add(current);
        current = family;
      }
      const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
      if (seen.has(key)) throw new Error(`duplicate series ${key}`);
      seen.add(key);
      let f = families.get(family);
      if (f === undefined) {
        f = { name: family, type, help: helps.get(family) ?? '', samples: [] };
        families.set(family, f);
      }
      f.samples.push({ name, labels, value });
    } catch (err) {
      throw new PromParseError(n, line, (err as Error).message);
    }
  });
  for (const f of families.values()) if (f.type === 'histogram') checkHistogram(f);
  // Families declared but without samples are kept (empty), as Prometheus would see them.
  for (const [name, type] of types) if (!families.has(name)) families.set(name, { name, type, help: helps.get(name) ?? '', samples: [] });
  return families;
}

/** Buckets ascending by `le`, cumulative, ending at +Inf == _count, for every label set. */
function checkHistogram(f: Family): void {
  const groups = new Map<string, { buckets: [number, number][]; count?: number; sum?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    const g = groups.get(key) ?? { buckets: [] };
    groups.set(key, g);
    if (s.name === `${f.name}_bucket`) {
      if (le === undefined) throw new Error(`${f.name}_bucket without le (${key})`);
      g.buckets.push([parseValue(le), s.value]);
    } else if (s.name === `${f.name}_count`) g.count = s.value;
    else if (s.name === `${f.name}_sum`) g.sum = s.value;
    else throw new Error(`unexpected sample ${s.name} in histogram ${f.name}`);
  }
  for (const [key, g] of groups) {
    if (g.count === undefined || g.sum === undefined) throw new Error(`histogram ${f.name}${key} lacks _count or _sum`);
    let prevLe = -Infinity;
    let prev = 0;
    for (const [le, v] of g.buckets) {
      if (!(le > prevLe)) throw new Error(`histogram ${f.name}${key}: le ${le} not ascending`);
      if (v < prev) throw new Error(`histogram ${f.name}${key}: bucket le=${le} (${v}) below the previous (${prev}): not cumulative`);
      prevLe = le;
      prev = v;
    }
    const last = g.buckets[g.buckets.length - 1];
    if (last === undefined || last[0] !== Infinity) throw new Error(`histogram ${f.name}${key}: no +Inf bucket`);
    if (last[1] !== g.count) throw new Error(`histogram ${f.name}${key}: +Inf bucket ${last[1]} != _count ${g.count}`);
  }
}

/** Samples of `name` (a sample name, e.g. `x_bucket`) whose labels include `match`. */
export function samples(families: Map<string, Family>, name: string, match: Record<string, string> = {}): Sample[] {
  const out: Sample[] = [];
  for (const f of families.values()) {
    for (const s of f.samples) {
      if (s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v)) out.push(s);
    }
  }
  return out;
}

/** The sum of the matching samples' values (0 when none match). */
export function total(families: Map<string, Family>, name: string, match: Record<string, string> = {}): number {
  return samples(families, name, match).reduce((sum, s) => sum + s.value, 0);
}
