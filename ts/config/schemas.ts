/**
 * The zod field schemas shared by the config keys: durations, counts, port
 * lists, booleans, addresses, paths and the forward list.
 *
 * Each schema accepts what a file, an env var or a flag can hold (strings
 * from env and flags; numbers, lists and objects from files) and transforms
 * it into the normalised value, or adds an issue whose message completes
 * "invalid KEY VALUE (from SOURCE): " with what was expected.
 */
import { networkInterfaces } from 'node:os';
import { z } from 'zod';
import { DurationError, parseDuration } from './durations.js';
import { parsePortListStrict } from './port-list.js';
// The file itself, not ts/policy/index.ts: the policy layer reads the config (an import cycle).
import { parseCidrListStrict } from '../policy/cidr.js';
import { parseBindAddr, parseForward, type ForwardSpec } from './forward.js';

/** pino's level names; `silent` turns logging off. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Log formats: JSON lines, text for a human, or `auto` (text when stderr is a terminal). */
export const LOG_FORMATS = ['auto', 'json', 'text'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export const logFormat = z.string().transform((v, ctx) =>
  guard(() => {
    const format = v.trim().toLowerCase();
    if (!(LOG_FORMATS as readonly string[]).includes(format)) throw new Error(`expected one of ${LOG_FORMATS.join(', ')}`);
    return format as LogFormat;
  }, ctx),
);
// Field schemas. Each accepts what a file, an env var or a flag can hold
// (strings from env and flags; numbers, lists and objects from files) and
// transforms it into the normalised value, or adds an issue whose message says
// what is wrong in detail.

type Ctx = z.core.$RefinementCtx<unknown>;

/** A bad entry of the forward list: the error shows that entry, not the whole list. */
class ForwardItemError extends Error {
  constructor(
    readonly index: number,
    readonly item: unknown,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Runs a parser that throws, turning its message into a zod issue. Messages
 * complete "invalid KEY VALUE (from SOURCE): ", so each says what is expected.
 */
export function guard<T>(parse: () => T, ctx: Ctx): T {
  try {
    return parse();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (err instanceof ForwardItemError) ctx.addIssue({ code: 'custom', message, path: [err.index], params: { item: err.item } });
    else ctx.addIssue({ code: 'custom', message });
    return z.NEVER;
  }
}

export const scalar = z.union([z.string(), z.number()]);

/** A duration; `expected` is the whole explanation used when the value does not parse. */
export function duration(expected: string, opts: { min: number }) {
  return scalar.transform((v, ctx) =>
    guard(() => {
      let ms: number;
      try {
        ms = parseDuration(v);
      } catch (err) {
        // Say what this key expects, and how to write the value instead.
        const hint = err instanceof DurationError ? err.hint : '';
        throw new Error(/365d/.test(hint) ? hint : `expected ${expected}${hint !== '' ? `; ${hint}` : ''}`, { cause: err });
      }
      if (ms < opts.min) throw new Error(`expected at least ${opts.min}ms`);
      return ms;
    }, ctx),
  );
}

export function count(expected: string, min: number, max: number) {
  return scalar.transform((v, ctx) =>
    guard(() => {
      const text = String(v).trim();
      const n = Number(text);
      if (!/^\d+$/.test(text) || n < min || n > max) throw new Error(`expected ${expected}`);
      return n;
    }, ctx),
  );
}

/** A port list as a string (`25,4000-4100`) or a list of ports/ranges. */
export const portList = z.union([scalar, z.array(scalar)]).transform((v, ctx) =>
  guard(() => {
    try {
      return parsePortListStrict(Array.isArray(v) ? v.join(',') : String(v));
    } catch (err) {
      throw new Error(`expected ports 1-65535 and ranges low-high, e.g. 25,4000-4100; ${(err as Error).message}`, { cause: err });
    }
  }, ctx),
);

/** What an engine log filter looks like (the engine checks the syntax when it starts). */
export const ENGINE_LOG = 'RUST_LOG-style directives, e.g. debug or info,meshpipe_core[conn{target=10.0.0.5:3306}]=trace';

/** An engine trace filter: non-empty, one line, at most 4 KiB. */
export const engineLogFilter = z.string().transform((v, ctx) => {
  const trimmed = v.trim();
  if (trimmed === '' || trimmed.length > 4096 || /[\r\n]/.test(trimmed)) {
    ctx.addIssue({ code: 'custom', message: ENGINE_LOG });
    return z.NEVER;
  }
  return trimmed;
});

export const logLevel = z.string().transform((v, ctx) =>
  guard(() => {
    const level = v.trim().toLowerCase();
    if (!(LOG_LEVELS as readonly string[]).includes(level)) throw new Error(`expected one of ${LOG_LEVELS.join(', ')}`);
    return level as LogLevel;
  }, ctx),
);

// Any object: parseForward checks its keys and values and names what is wrong.
const forwardObject = z.record(z.string(), z.unknown());

/** True when this machine has an IPv6 loopback address (`::1` on an interface). */
export function hasIpv6Loopback(): boolean {
  return Object.values(networkInterfaces()).some((list) => list?.some((i) => i.family === 'IPv6' && i.address === '::1'));
}

/**
 * One string, a list of strings/objects; env vars separate several with `;`
 * or newlines (a `,` separates a forward's options). A `localhost:P` bind
 * becomes two listeners, 127.0.0.1:P and [::1]:P, when IPv6 loopback exists.
 */
export const forwardList = z
  .union([z.string(), z.array(z.union([z.string(), forwardObject]))])
  .transform((v, ctx) =>
    guard(() => {
      const items = typeof v === 'string' ? v.split(/[;\n]/).filter((s) => s.trim() !== '') : v;
      // Which item each listener came from, to name the item a duplicate bind is written in.
      const from: number[] = [];
      const specs = items.flatMap((item, index) => {
        let spec;
        try {
          spec = parseForward(item);
        } catch (err) {
          throw new ForwardItemError(index, item, (err as Error).message);
        }
        const { localhost, ...forward } = spec;
        // `localhost:P` listens where clients of "localhost" connect: 127.0.0.1 and ::1.
        const listeners = !localhost || forward.bind.port === 0 || !hasIpv6Loopback()
          ? [forward]
          : [forward, { ...forward, bind: { host: '::1', port: forward.bind.port, addr: `[::1]:${forward.bind.port}` } }];
        from.push(...listeners.map(() => index));
        return listeners;
      });
      checkUniqueBinds(specs, (i) => ({ index: from[i]!, item: items[from[i]!] }));
      return nameForwards(specs);
    }, ctx),
  );

/** A boolean from a file (true/false) or a string from env/flags (true/false/1/0/yes/no/on/off). */
export const bool = z.union([z.boolean(), z.string()]).transform((v, ctx) =>
  guard(() => {
    if (typeof v === 'boolean') return v;
    const text = v.trim().toLowerCase();
    if (['true', '1', 'yes', 'on'].includes(text)) return true;
    if (['false', '0', 'no', 'off'].includes(text)) return false;
    throw new Error('expected true or false');
  }, ctx),
);

export const DURATION = 'a duration like 10s, 500ms or 5m';
export const PORTS = 'a list of ports 1-65535 and ranges low-high, e.g. 25,587,4000-4100';

/**
 * Refuses a second forward on a bind address, naming that forward alone (the whole list
 * was shown as JSON) and the one that has the address already.
 */
function checkUniqueBinds(specs: readonly Omit<ForwardSpec, 'name'>[], origin: (i: number) => { index: number; item: unknown }): void {
  const seen = new Map<string, number>();
  specs.forEach((s, i) => {
    if (s.bind.port === 0) return; // ephemeral ports never collide
    const first = seen.get(s.bind.addr);
    if (first === undefined) {
      seen.set(s.bind.addr, i);
      return;
    }
    const { index, item } = origin(i);
    const earlier = origin(first).item;
    throw new ForwardItemError(index, item, `bind address ${s.bind.addr} is already the bind of forward ${typeof earlier === 'string' ? `"${earlier}"` : JSON.stringify(earlier)}: expected each forward on an address of its own (another port)`);
  });
}

/** Names listeners `forward:BIND`, adding `#2`, `#3`... when several bind the same (port 0) address. */
function nameForwards(specs: readonly Omit<ForwardSpec, 'name'>[]): ForwardSpec[] {
  const counts = new Map<string, number>();
  return specs.map((s) => {
    const n = (counts.get(s.bind.addr) ?? 0) + 1;
    counts.set(s.bind.addr, n);
    return { ...s, name: n === 1 ? `forward:${s.bind.addr}` : `forward:${s.bind.addr}#${n}` };
  });
}

/** A bind address, or `off` (null) to disable that listener. */
export const bindOrOff = z.union([z.string(), z.literal(false), z.null()]).transform((v, ctx) =>
  guard(() => {
    if (v === false || v === null) return null;
    const text = v.trim().toLowerCase();
    if (text === 'off' || text === 'false' || text === 'none') return null;
    try {
      return parseBindAddr(v);
    } catch (err) {
      throw new Error(`expected host:port (IPv4 or [IPv6]) or "off"; ${(err as Error).message}`, { cause: err });
    }
  }, ctx),
);

/** The admin server's address, or `off`. */
export const admin = bindOrOff;

/** An optional non-empty string (a path or a name); empty means unset. */
export const optionalText = z.string().transform((v) => (v.trim() === '' ? undefined : v.trim()));

/** A list of paths: one comma-separated string (env, flags) or a list (files). */
export const pathList = z.union([z.string(), z.array(z.string())]).transform((v) =>
  (Array.isArray(v) ? v : v.split(',')).map((p) => p.trim()).filter((p) => p !== ''),
);

/** A comma-separated list of CIDRs, each validated. */
export const cidrList = z.union([z.string(), z.array(z.string())]).transform((v, ctx) =>
  guard(() => {
    const text = Array.isArray(v) ? v.join(',') : v;
    try {
      return parseCidrListStrict(text).map((c) => c.text);
    } catch (err) {
      throw new Error(`expected CIDRs like 10.0.0.0/8,fd00::/8; ${(err as Error).message}`, { cause: err });
    }
  }, ctx),
);

/** One per-port detect timeout: `PORTS=DURATION`, optionally `inbound:`/`outbound:` first. */
export interface PortDetectTimeout {
  readonly direction: 'inbound' | 'outbound' | null;
  readonly from: number;
  readonly to: number;
  readonly timeoutMs: number;
}

/** `8080=2s`, `outbound:9000-9100=500ms`; one string with `;` between entries, or a list. */
export const portDetectTimeouts = z.union([z.string(), z.array(z.string())]).transform((v, ctx) =>
  guard(() => {
    const items = (Array.isArray(v) ? v : v.split(';')).map((x) => x.trim()).filter((x) => x !== '');
    const out: PortDetectTimeout[] = [];
    for (const item of items) {
      const m = /^(?:(inbound|outbound):)?([^=]+)=(.+)$/.exec(item);
      if (!m) throw new Error(`"${item}": expected PORTS=DURATION, e.g. 8080=2s or outbound:9000-9100=500ms`);
      let ranges;
      let ms;
      try {
        ranges = parsePortListStrict(m[2]!);
        ms = parseDuration(m[3]!);
      } catch (err) {
        const hint = err instanceof DurationError ? `; ${err.hint}` : '';
        throw new Error(`"${item}": ${(err as Error).message}${hint}; expected PORTS=DURATION, e.g. 8080=2s`, { cause: err });
      }
      if (ms < 1) throw new Error(`"${item}": expected a timeout of at least 1ms`);
      const direction = (m[1] as 'inbound' | 'outbound' | undefined) ?? null;
      for (const r of ranges) out.push({ direction, from: r.from, to: r.to, timeoutMs: ms });
    }
    return out;
  }, ctx),
);
