/**
 * Durations as users write them: a number with a unit (`250ms`, `10s`, `5m`,
 * `1h`, `365d`, `1.5s`), several of them in a row (`1m30s`, `1h30m`, Go's
 * `time.ParseDuration` form that Kubernetes users know), or a bare `0`.
 * Parsed once at config time into integer milliseconds.
 *
 * A bare number other than 0 is refused, in a flag, an env var or a config
 * file alike: `--drain-timeout 10` used to mean 10 ms where the user meant
 * 10 seconds, and a proxy that drains for 10 ms cuts every connection.
 */

const UNITS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** The units, for messages. */
export const DURATION_UNITS = 'ms, s, m, h, d';

/** The largest duration accepted: 365 days (Linkerd's "disable the timeout" value). */
export const MAX_DURATION_MS = 365 * 86_400_000;

/**
 * Why a duration was refused. The message names the value (`invalid duration "x": reason`);
 * `reason` is the part after it ('' when the value alone says it), for callers that name the
 * value themselves; `hint` says how to write it instead.
 */
export class DurationError extends Error {
  constructor(
    readonly value: string,
    readonly reason: string,
    readonly hint: string,
  ) {
    super(`invalid duration "${value}"${reason === '' ? '' : `: ${reason}`}`);
  }
}

/** One component: a number and its unit. */
const COMPONENT = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/y;

/**
 * Parses a duration into milliseconds.
 * @throws DurationError naming the bad value and the accepted forms.
 */
export function parseDuration(input: string | number): number {
  if (typeof input === 'number') {
    if (input === 0) return 0;
    throw bareNumber(String(input));
  }
  const text = input.trim();
  if (/^0+(?:\.0+)?$/.test(text)) return 0;
  if (/^\d+(?:\.\d+)?$/.test(text)) throw bareNumber(text);
  let total = 0;
  let at = 0;
  COMPONENT.lastIndex = 0;
  while (at < text.length) {
    COMPONENT.lastIndex = at;
    const m = COMPONENT.exec(text);
    if (m === null) {
      throw new DurationError(input, '', rewriteHint(text) ?? `expected a number with a unit (${DURATION_UNITS}), e.g. 100ms, 10s, 5m or 1m30s`);
    }
    total += Number(m[1]) * UNITS[m[2]!]!;
    at = COMPONENT.lastIndex;
  }
  if (text === '') throw new DurationError('', 'empty', `expected a number with a unit (${DURATION_UNITS}), e.g. 10s`);
  const ms = Math.round(total);
  if (ms > MAX_DURATION_MS) throw new DurationError(input, '', 'expected at most 365d');
  return ms;
}

/** Unit words people write, and the unit meant. */
const UNIT_WORDS: Record<string, string> = {
  msec: 'ms', msecs: 'ms', millis: 'ms', millisecond: 'ms', milliseconds: 'ms',
  sec: 's', secs: 's', second: 's', seconds: 's',
  min: 'm', mins: 'm', minute: 'm', minutes: 'm',
  hr: 'h', hrs: 'h', hour: 'h', hours: 'h',
  day: 'd', days: 'd',
};

/**
 * How to write a refused duration that was almost right: a space inside
 * (`5 s`), a capital or a unit word (`10S`, `5min`, `2 hours`), or a minus
 * sign. Undefined when it is not close to any duration.
 */
function rewriteHint(text: string): string | undefined {
  if (/^-\s*\d/.test(text)) return 'a duration cannot be negative';
  const written = text.toLowerCase().replace(/(\d(?:\.\d+)?)\s*([a-z]+)\s*/g, (_, n: string, unit: string) => `${n}${UNIT_WORDS[unit] ?? unit}`);
  if (written === text || !/^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$/.test(written)) return undefined;
  return `write it as ${written} (a number and its unit, no space; units ${DURATION_UNITS})`;
}

function bareNumber(text: string): DurationError {
  return new DurationError(
    text,
    'a number without a unit',
    `write the unit: ${text}s (seconds) or ${text}ms (milliseconds); units ${DURATION_UNITS}, combinable as in 1m30s`,
  );
}

/** Formats milliseconds back into the shortest exact human form (`1500ms`, `10s`, `5m`, `1m30s`). */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0s';
  if (ms % 1000 !== 0) return `${ms}ms`;
  let rest = ms;
  let out = '';
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1_000]] as const) {
    if (rest >= size) {
      out += `${Math.floor(rest / size)}${unit}`;
      rest %= size;
    }
  }
  return out;
}
