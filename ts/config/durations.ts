/**
 * Durations as users write them: `250ms`, `10s`, `5m`, `1h`, `365d`, or a bare
 * number of milliseconds. Parsed once at config time into integer milliseconds.
 */

const UNITS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** The largest duration accepted: 365 days (Linkerd's "disable the timeout" value). */
export const MAX_DURATION_MS = 365 * 86_400_000;

/**
 * Parses a duration into milliseconds.
 * @throws Error naming the bad value and the accepted forms.
 */
export function parseDuration(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isFinite(input) || input < 0 || !Number.isInteger(input)) {
      throw new Error(`invalid duration ${input}: expected a whole number of milliseconds >= 0`);
    }
    return checkMax(input, String(input));
  }
  const text = input.trim();
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$/.exec(text);
  if (!match || match[1] === undefined) {
    throw new Error(`invalid duration "${input}": expected a number with a unit ms, s, m, h or d (e.g. 100ms, 10s, 5m)`);
  }
  const unit = match[2] ?? 'ms';
  const ms = Math.round(Number(match[1]) * (UNITS[unit] ?? 1));
  return checkMax(ms, input);
}

function checkMax(ms: number, original: string): number {
  if (ms > MAX_DURATION_MS) {
    throw new Error(`invalid duration "${original}": longer than the maximum of 365d`);
  }
  return ms;
}

/** Formats milliseconds back into the shortest exact human form (`1500ms`, `10s`, `5m`). */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1_000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
