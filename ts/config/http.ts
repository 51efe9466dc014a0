/**
 * Config keys of HTTP-aware proxying: whether connections detected (or
 * declared) as HTTP are proxied request by request (`--no-http` forwards them
 * as TCP like any other connection), the largest request head and the time
 * an HTTP/1 head may take to arrive (idle time between requests is not
 * counted), the response
 * timeout (off by default, as in Linkerd) with per-port overrides, and the
 * static `--endpoints FILE` of Services and their endpoints for per-request
 * balancing outside Kubernetes (docs/http.md).
 */
import { z } from 'zod';
import { parseDuration } from './durations.js';
import { bool, count, duration, guard, optionalText } from './schemas.js';

/** What the HTTP keys become in the frozen ProxyConfig. */
export interface HttpConfig {
  readonly http: boolean;
  readonly httpMaxHeaderBytes: number;
  /** An HTTP/1 request head must arrive whole within this of its first byte. */
  readonly httpHeaderTimeoutMs: number;
  /** 0 = no response timeout. */
  readonly httpResponseTimeoutMs: number;
  readonly httpPortResponseTimeouts: readonly HttpPortTimeout[];
  /** `--endpoints FILE`: static Service endpoints. */
  readonly endpoints: string | undefined;
}

export interface HttpPortTimeout {
  readonly direction: 'inbound' | 'outbound' | undefined;
  readonly ports: readonly [number, number];
  /** 0 = no timeout for these ports. */
  readonly timeoutMs: number;
}

const TIMEOUT = 'a duration like 30s or 500ms (0 = wait forever)';
const HEAD_TIMEOUT = 'a duration like 30s or 10s (at least 1ms)';
const PORT_TIMEOUTS = 'PORTS=DURATION entries, e.g. 8080=2s;outbound:9000-9100=500ms';

/** `[direction:]PORT[-PORT]=DURATION`, entries separated by `;`, `,` or repeated flags. */
const portTimeouts = z.union([z.string(), z.array(z.string())]).transform((v, ctx) =>
  guard(() => {
    const entries = (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(/[;,]/)).map((s) => s.trim()).filter((s) => s !== '');
    return entries.map((entry): HttpPortTimeout => {
      const m = /^(?:(inbound|outbound):)?(\d+)(?:-(\d+))?=(.+)$/.exec(entry);
      if (!m) throw new Error(`"${entry}": expected ${PORT_TIMEOUTS}`);
      let timeoutMs: number;
      try {
        timeoutMs = parseDuration(m[4]!.trim());
      } catch {
        throw new Error(`"${entry}": expected ${PORT_TIMEOUTS}`);
      }
      const low = Number(m[2]);
      const high = m[3] === undefined ? low : Number(m[3]);
      if (low < 1 || high > 65535 || low > high) throw new Error(`"${entry}": ports must be 1-65535, low <= high`);
      return { direction: m[1] as HttpPortTimeout['direction'], ports: [low, high], timeoutMs };
    });
  }, ctx),
);

/** The HTTP keys, merged into the config's field table. */
export const HTTP_FIELDS = {
  http: { schema: bool, default: true, expected: 'true or false' },
  httpMaxHeaderBytes: { schema: count('a whole number of bytes 8192-1048576', 8192, 1_048_576), default: 65_536, expected: 'a whole number of bytes 8192-1048576' },
  httpHeaderTimeout: { schema: duration(HEAD_TIMEOUT, { min: 1 }), default: '30s', expected: HEAD_TIMEOUT },
  httpResponseTimeout: { schema: duration(TIMEOUT, { min: 0 }), default: '0', expected: TIMEOUT },
  httpPortResponseTimeouts: { schema: portTimeouts, default: [] as string[], expected: PORT_TIMEOUTS },
  endpoints: { schema: optionalText, default: '', expected: 'a file path' },
} as const;

interface HttpValues {
  http: boolean;
  httpMaxHeaderBytes: number;
  httpHeaderTimeout: number;
  httpResponseTimeout: number;
  httpPortResponseTimeouts: HttpPortTimeout[];
  endpoints: string | undefined;
}

/** Picks the HTTP keys out of the parsed values. */
export function httpConfig(v: HttpValues): HttpConfig {
  return {
    http: v.http,
    httpMaxHeaderBytes: v.httpMaxHeaderBytes,
    httpHeaderTimeoutMs: v.httpHeaderTimeout,
    httpResponseTimeoutMs: v.httpResponseTimeout,
    httpPortResponseTimeouts: v.httpPortResponseTimeouts,
    endpoints: v.endpoints,
  };
}
