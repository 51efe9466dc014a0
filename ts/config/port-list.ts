/**
 * Port lists as Linkerd writes them: comma-separated ports, inclusive ranges
 * `low-high`, and (where a resolver is given) port names, e.g.
 * `25,587,4000-4100,mysql`.
 *
 * Parsing is lenient in the way Linkerd treats pod annotations: each entry is
 * checked on its own, the valid ones are kept and every invalid one is
 * reported with the exact token and why it was refused. Callers decide what an
 * error means: a CLI flag refuses the whole value (exit 2), an annotation keeps
 * the valid entries and surfaces the errors. Nothing is ever silently widened.
 */

/** An inclusive range of TCP ports, 1..=65535, `from <= to`. */
export interface PortRange {
  readonly from: number;
  readonly to: number;
}

export interface PortListError {
  /** The entry as written, e.g. `7000-6000` or `` (empty). */
  readonly token: string;
  /** Why it was refused, naming what is expected. */
  readonly reason: string;
}

export interface ParsedPortList {
  /** Valid entries, sorted and merged. */
  readonly ranges: readonly PortRange[];
  readonly errors: readonly PortListError[];
}

/** Resolves a port name (container port or Service port name) to a port number. */
export type PortNameResolver = (name: string) => number | undefined;

const PORT_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

/** Parses one port number token; returns an error reason or the number. */
function parsePort(token: string): number | string {
  if (!/^\d+$/.test(token)) return 'expected a port number 1-65535';
  const n = Number(token);
  if (n < 1 || n > 65535) return `port ${token} is out of range: expected 1-65535`;
  return n;
}

/** Parses a port list. An empty or whitespace-only string is an empty list. */
export function parsePortList(input: string, resolveName?: PortNameResolver): ParsedPortList {
  const ranges: PortRange[] = [];
  const errors: PortListError[] = [];
  if (input.trim() === '') return { ranges, errors };
  for (const raw of input.split(',')) {
    const token = raw.trim();
    if (token === '') {
      errors.push({ token: raw, reason: 'empty entry: expected a port, a range low-high or a port name' });
      continue;
    }
    const dash = token.indexOf('-');
    if (/^\d/.test(token) && dash > 0) {
      const low = parsePort(token.slice(0, dash).trim());
      const high = parsePort(token.slice(dash + 1).trim());
      if (typeof low === 'string' || typeof high === 'string') {
        errors.push({ token, reason: `invalid range: ${typeof low === 'string' ? low : high}` });
      } else if (high < low) {
        errors.push({ token, reason: `invalid range: ${high} is lower than ${low}; expected low-high` });
      } else {
        ranges.push({ from: low, to: high });
      }
      continue;
    }
    if (/^\d+$/.test(token)) {
      const port = parsePort(token);
      if (typeof port === 'string') errors.push({ token, reason: port });
      else ranges.push({ from: port, to: port });
      continue;
    }
    if (resolveName && PORT_NAME.test(token)) {
      const port = resolveName(token);
      if (port === undefined) errors.push({ token, reason: `unknown port name "${token}"` });
      else ranges.push({ from: port, to: port });
      continue;
    }
    errors.push({
      token,
      reason: resolveName
        ? 'expected a port 1-65535, a range low-high or a port name'
        : 'expected a port 1-65535 or a range low-high',
    });
  }
  return { ranges: mergeRanges(ranges), errors };
}

/**
 * Parses a port list where any error is fatal (CLI flags, config files).
 * @throws Error naming every bad token.
 */
export function parsePortListStrict(input: string): readonly PortRange[] {
  const parsed = parsePortList(input);
  if (parsed.errors.length > 0) {
    throw new Error(parsed.errors.map((e) => `"${e.token}": ${e.reason}`).join('; '));
  }
  return parsed.ranges;
}

/** Sorts ranges and merges overlapping or adjacent ones. */
export function mergeRanges(ranges: readonly PortRange[]): PortRange[] {
  const sorted = [...ranges].sort((a, b) => a.from - b.from || a.to - b.to);
  const out: PortRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.from <= last.to + 1) {
      out[out.length - 1] = { from: last.from, to: Math.max(last.to, r.to) };
    } else {
      out.push({ from: r.from, to: r.to });
    }
  }
  return out;
}

/** True if `port` lies in one of `ranges`. */
export function portInRanges(port: number, ranges: readonly PortRange[]): boolean {
  return ranges.some((r) => port >= r.from && port <= r.to);
}

/** Formats ranges the way users write them: `25,587,4000-4100`. */
export function formatPortList(ranges: readonly PortRange[]): string {
  return ranges.map((r) => (r.from === r.to ? String(r.from) : `${r.from}-${r.to}`)).join(',');
}

/** Linkerd's default opaque ports (proxy.opaquePorts, 2.12+). */
export const DEFAULT_OPAQUE_PORTS = '25,587,3306,4444,5432,6379,9300,11211';
