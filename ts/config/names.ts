/**
 * Config keys for forwards to host names (ts/engine/names.ts): how often a
 * name is resolved again, and which DNS servers to ask.
 *
 * `resolveInterval` is `ttl` (the default: again when the shortest TTL of
 * the name's records runs out, at least a second apart; names from
 * /etc/hosts, which have no TTL, every 30 s) or a fixed duration, like
 * nginx's `resolver valid=`. `dnsServers` replaces /etc/resolv.conf's
 * servers (like nginx's `resolver` directive); those servers alone answer
 * then (/etc/hosts is not read).
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { DurationError, parseDuration } from './durations.js';
import { guard } from './schemas.js';

/** Names from /etc/hosts (no TTL) and `ttl` mode without a TTL: resolved again this often. */
export const NO_TTL_INTERVAL_MS = 30_000;

export interface NamesConfig {
  /** `ttl`, or a fixed interval in milliseconds. */
  readonly resolveIntervalMs: number | 'ttl';
  /** `ip` or `ip:port` (`[v6]:port`) entries; empty = the system's resolver configuration. */
  readonly dnsServers: readonly string[];
}

const INTERVAL = 'ttl (follow the records\' TTL) or a duration of at least 100ms, e.g. 5s';

const resolveInterval = z.union([z.string(), z.number()]).transform((v, ctx) =>
  guard(() => {
    if (typeof v === 'string' && v.trim().toLowerCase() === 'ttl') return 'ttl' as const;
    let ms: number;
    try {
      ms = parseDuration(v);
    } catch (err) {
      throw new Error(`expected ${INTERVAL}${err instanceof DurationError ? `; ${err.hint}` : ''}`, { cause: err });
    }
    if (ms < 100) throw new Error(`expected ${INTERVAL}`);
    return ms;
  }, ctx),
);

/** One DNS server: an IP, optionally with a port (`10.96.0.10`, `127.0.0.1:5353`, `[fd00::a]:53`). */
export function parseDnsServer(text: string): string {
  const t = text.trim();
  const v6 = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(t);
  const v4 = /^([\d.]+)(?::(\d{1,5}))?$/.exec(t);
  const [ip, port] = v6 ? [v6[1]!, v6[2]] : v4 ? [v4[1]!, v4[2]] : [t, undefined];
  if (isIP(ip) === 0 || (port !== undefined && (Number(port) < 1 || Number(port) > 65535))) {
    throw new Error(`"${text}": expected an IP address with an optional port, e.g. 10.96.0.10, 127.0.0.1:5353 or [fd00::a]:53`);
  }
  return t;
}

const dnsServers = z.union([z.string(), z.array(z.string())]).transform((v, ctx) =>
  guard(() => (Array.isArray(v) ? v : v.split(',')).map((s) => s.trim()).filter((s) => s !== '').map(parseDnsServer), ctx),
);

export const NAMES_FIELDS = {
  resolveInterval: { schema: resolveInterval, default: 'ttl', expected: INTERVAL },
  dnsServers: { schema: dnsServers, default: [] as string[], expected: 'IP addresses with optional ports, e.g. 10.96.0.10,127.0.0.1:5353' },
} as const;

type NamesValues = { [K in keyof typeof NAMES_FIELDS]: z.output<(typeof NAMES_FIELDS)[K]['schema']> };

export function namesConfig(v: NamesValues): NamesConfig {
  return { resolveIntervalMs: v.resolveInterval, dnsServers: v.dnsServers };
}
