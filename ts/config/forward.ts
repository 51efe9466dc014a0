/**
 * Parsing of socket addresses, port modes and `--forward` specs for the
 * config (ts/config/config.ts).
 *
 * Addresses are `host:port` where host is an IPv4 address, a bracketed IPv6
 * address (`[::1]:8080`) or `localhost` (resolved to 127.0.0.1 here, once, so
 * the engine never does name resolution). Port 0 (an ephemeral port) is
 * accepted for bind addresses only. A forward is
 * `BIND=TARGET[,mode=M][,direction=D]` or the object form
 * `{bind, target, mode, direction}` of config files. Port modes accept
 * Linkerd's spellings (`unknown`, `HTTP/1`, `HTTP/2`, `gRPC`, `TLS`) and are
 * normalised to the engine's lowercase names. Parsers throw plain `Error`s
 * whose messages name the bad token and what is expected; ts/config/config.ts adds
 * the key and the source.
 */
import { isIPv4, isIPv6 } from 'node:net';

/** The engine's port modes (Linkerd's `unknown`, `opaque`, `HTTP/1`, `HTTP/2`, `gRPC`, `TLS`). */
export const PORT_MODES = ['detect', 'opaque', 'http1', 'http2', 'grpc', 'tls'] as const;
export type PortMode = (typeof PORT_MODES)[number];

export const DIRECTIONS = ['inbound', 'outbound'] as const;
export type Direction = (typeof DIRECTIONS)[number];

/** A parsed socket address. */
export interface SocketAddr {
  /** The IP address without brackets, e.g. `127.0.0.1` or `::1`. */
  readonly host: string;
  readonly port: number;
  /** The canonical `host:port` / `[v6]:port` form passed to the engine. */
  readonly addr: string;
}

/** One `--forward` listener. */
export interface ForwardSpec {
  /** Unique listener name, `forward:BIND` (`#2`, `#3`... for repeated port-0 binds). */
  readonly name: string;
  readonly bind: SocketAddr;
  readonly target: SocketAddr;
  /** An explicit mode for this listener; null = from the port policy (detect by default). */
  readonly mode: PortMode | null;
  readonly direction: Direction;
}

const MODE_ALIASES: Record<string, PortMode> = {
  detect: 'detect',
  unknown: 'detect',
  opaque: 'opaque',
  http1: 'http1',
  'http/1': 'http1',
  'http/1.1': 'http1',
  http2: 'http2',
  'http/2': 'http2',
  grpc: 'grpc',
  tls: 'tls',
};

const ADDR_EXPECTED = 'expected host:port with an IPv4 address, a [bracketed IPv6] address or localhost, e.g. 127.0.0.1:8080 or [::1]:8080';

function parseAddr(text: string, what: 'bind' | 'target'): SocketAddr {
  const input = text.trim();
  let host: string;
  let portText: string;
  const v6 = /^\[([^\]]*)\]:(\d+)$/.exec(input);
  const v4 = /^([^:[\]]+):(\d+)$/.exec(input);
  if (v6) {
    host = v6[1]!.toLowerCase();
    portText = v6[2]!;
    if (!isIPv6(host)) throw new Error(`${what} address "${text}": "${host}" is not an IPv6 address; ${ADDR_EXPECTED}`);
  } else if (v4) {
    host = v4[1]!;
    portText = v4[2]!;
    if (host.toLowerCase() === 'localhost') host = '127.0.0.1';
    else if (!isIPv4(host)) {
      throw new Error(`${what} address "${text}": "${host}" is not an IPv4 address (host names other than localhost are not resolved); ${ADDR_EXPECTED}`);
    }
  } else if (isIPv6(input) || input.includes('::')) {
    throw new Error(`${what} address "${text}": an IPv6 address needs brackets and a port, e.g. [::1]:8080`);
  } else {
    throw new Error(`${what} address "${text}": ${ADDR_EXPECTED}`);
  }
  const port = Number(portText);
  const min = what === 'bind' ? 0 : 1;
  if (portText.length > 5 || port < min || port > 65535) {
    throw new Error(`${what} address "${text}": port ${portText} is out of range: expected ${min}-65535`);
  }
  return { host, port, addr: host.includes(':') ? `[${host}]:${port}` : `${host}:${port}` };
}

/** A listening address: port 0 (ephemeral) allowed. */
export function parseBindAddr(text: string): SocketAddr {
  return parseAddr(text, 'bind');
}

/** A destination address: port 1-65535. */
export function parseTargetAddr(text: string): SocketAddr {
  return parseAddr(text, 'target');
}

/** Normalises a port mode; accepts Linkerd's spellings, case-insensitive. */
export function parsePortMode(text: string): PortMode {
  const mode = MODE_ALIASES[text.trim().toLowerCase()];
  if (mode === undefined) {
    throw new Error(`mode "${text}": expected one of detect (or unknown), opaque, http1 (HTTP/1), http2 (HTTP/2), grpc (gRPC), tls (TLS)`);
  }
  return mode;
}

export function parseDirection(text: string): Direction {
  const d = text.trim().toLowerCase();
  if (d !== 'inbound' && d !== 'outbound') throw new Error(`direction "${text}": expected inbound or outbound`);
  return d;
}

/** The object form of a forward, as written in a config file. */
export interface ForwardObject {
  bind: string;
  target: string;
  mode?: string | undefined;
  direction?: string | undefined;
}

/**
 * Parses one forward (without its name; ts/config/config.ts names them once the
 * whole list is known).
 */
export function parseForward(item: string | ForwardObject): Omit<ForwardSpec, 'name'> {
  if (typeof item !== 'string') {
    return {
      bind: parseBindAddr(item.bind),
      target: parseTargetAddr(item.target),
      mode: item.mode === undefined ? null : parsePortMode(item.mode),
      direction: item.direction === undefined ? 'outbound' : parseDirection(item.direction),
    };
  }
  const [head = '', ...options] = item.split(',');
  {
    const eq = head.indexOf('=');
    if (eq < 0) throw new Error(`no "=" between the bind and the target address: expected BIND=TARGET[,mode=M][,direction=D]`);
    let mode: PortMode | null = null;
    let direction: Direction = 'outbound';
    const seen = new Set<string>();
    for (const option of options) {
      const [name = '', value, ...extra] = option.split('=');
      const key = name.trim().toLowerCase();
      if (value === undefined || extra.length > 0 || value.trim() === '') {
        throw new Error(`option "${option}": expected mode=M or direction=D`);
      }
      if (seen.has(key)) throw new Error(`option "${key}" is given twice`);
      seen.add(key);
      if (key === 'mode') mode = parsePortMode(value);
      else if (key === 'direction') direction = parseDirection(value);
      else throw new Error(`unknown option "${name}": expected mode=M or direction=D`);
    }
    return { bind: parseBindAddr(head.slice(0, eq)), target: parseTargetAddr(head.slice(eq + 1)), mode, direction };
  }
}
