/**
 * The k6 stubs' metric samples and k6's threshold language, for
 * test/k6.test.ts: the stubs record the samples k6 itself would record
 * (http_req_duration, checks, ws_connecting, custom Trends...), and
 * `evaluateThresholds` checks a script's `options.thresholds` against them
 * the way k6 does at the end of a run: `metric` or `metric{tag:value}`, and
 * expressions `AGG OP NUMBER` with AGG one of avg, min, max, med, p(N), rate,
 * count, value. An expression k6 would refuse is an error here too.
 */

export type MetricType = 'trend' | 'rate' | 'counter' | 'gauge';

interface Sample {
  readonly value: number;
  readonly tags: Readonly<Record<string, string>>;
}

const metrics = new Map<string, { type: MetricType; samples: Sample[] }>();

/** k6's built-in metrics, so thresholds on them work before (or without) a sample. */
const BUILTIN: Readonly<Record<string, MetricType>> = {
  checks: 'rate', http_reqs: 'counter', http_req_duration: 'trend', http_req_failed: 'rate', iterations: 'counter',
  dropped_iterations: 'counter', grpc_req_duration: 'trend', ws_connecting: 'trend', ws_sessions: 'counter',
  ws_msgs_sent: 'counter', ws_msgs_received: 'counter', ws_session_duration: 'trend', data_sent: 'counter', data_received: 'counter',
};

export function record(name: string, type: MetricType, value: number, tags: Record<string, string> = {}): void {
  let m = metrics.get(name);
  if (m === undefined) metrics.set(name, (m = { type, samples: [] }));
  if (m.type !== type) throw new Error(`metric ${name} is a ${m.type}, recorded as a ${type}`);
  if (!Number.isFinite(value)) throw new Error(`metric ${name}: sample ${value} is not a number`);
  m.samples.push({ value, tags });
}

export function snapshot(): Record<string, { type: MetricType; count: number; values: number[] }> {
  const out: Record<string, { type: MetricType; count: number; values: number[] }> = {};
  for (const [name, m] of metrics) out[name] = { type: m.type, count: m.samples.length, values: m.samples.map((s) => s.value) };
  return out;
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return (sorted[lo] as number) + ((sorted[hi] as number) - (sorted[lo] as number)) * (rank - lo);
}

function aggregate(type: MetricType, values: readonly number[], agg: string): number {
  const sorted = [...values].sort((a, b) => a - b);
  const p = /^p\((\d+(?:\.\d+)?)\)$/.exec(agg);
  const allowed: Record<MetricType, RegExp> = {
    trend: /^(avg|min|max|med|p\(\d+(\.\d+)?\))$/,
    rate: /^rate$/,
    counter: /^(count|rate)$/,
    gauge: /^value$/,
  };
  if (!allowed[type].test(agg)) throw new Error(`aggregation "${agg}" is not valid for a ${type} metric`);
  if (p) return percentile(sorted, Number(p[1]));
  switch (agg) {
    case 'avg': return sorted.reduce((a, b) => a + b, 0) / sorted.length;
    case 'min': return sorted[0] ?? NaN;
    case 'max': return sorted[sorted.length - 1] ?? NaN;
    case 'med': return percentile(sorted, 50);
    case 'rate': return type === 'rate' ? values.filter((v) => v !== 0).length / values.length : values.reduce((a, b) => a + b, 0);
    case 'count': return values.reduce((a, b) => a + b, 0);
    default: return values[values.length - 1] ?? NaN;
  }
}

const OPS: Readonly<Record<string, (a: number, b: number) => boolean>> = {
  '<': (a, b) => a < b, '<=': (a, b) => a <= b, '>': (a, b) => a > b, '>=': (a, b) => a >= b,
  '==': (a, b) => a === b, '===': (a, b) => a === b, '!=': (a, b) => a !== b,
};

export interface ThresholdResult {
  readonly metric: string;
  readonly expression: string;
  readonly value: number;
  readonly ok: boolean;
}

/** Evaluates `options.thresholds`; throws on anything k6 would refuse. */
export function evaluateThresholds(thresholds: Record<string, unknown>): ThresholdResult[] {
  const results: ThresholdResult[] = [];
  for (const [key, list] of Object.entries(thresholds)) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:\{([^}]*)\})?$/.exec(key);
    if (!m) throw new Error(`threshold key "${key}" is not METRIC or METRIC{tag:value}`);
    const name = m[1] as string;
    const filter = (m[2] ?? '').split(',').filter((x) => x !== '').map((kv) => kv.split(':').map((s) => s.trim()) as [string, string]);
    const metric = metrics.get(name);
    const type = metric?.type ?? BUILTIN[name];
    if (type === undefined) throw new Error(`threshold on "${name}": no such metric (k6 refuses thresholds on unknown metrics)`);
    const samples = (metric?.samples ?? []).filter((s) => filter.every(([k, v]) => s.tags[k] === v)).map((s) => s.value);
    const expressions = (Array.isArray(list) ? (list as unknown[]) : [list]).map((e): unknown => (typeof e === 'object' && e !== null ? (e as { threshold: unknown }).threshold : e));
    for (const expr of expressions) {
      if (typeof expr !== 'string') throw new Error(`threshold ${key}: ${JSON.stringify(expr)} is not an expression`);
      const x = /^\s*([a-z]+(?:\(\d+(?:\.\d+)?\))?)\s*(<=|>=|===|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$/.exec(expr);
      if (!x) throw new Error(`threshold ${key}: "${expr}" is not AGG OP NUMBER`);
      const value = type === 'counter' && samples.length === 0 ? 0 : aggregate(type, samples, x[1] as string);
      results.push({ metric: key, expression: expr, value, ok: (OPS[x[2] as string] as (a: number, b: number) => boolean)(value, Number(x[3])) });
    }
  }
  return results;
}
