/**
 * Parsing of socket addresses, port modes and `--forward` specs for the
 * config (ts/config/config.ts).
 *
 * Addresses are `host:port` where host is an IPv4 address or a bracketed
 * IPv6 address (`[::1]:8080`). A bind address may also be `localhost`, which
 * binds 127.0.0.1 and, in a forward with a fixed port on a machine with IPv6
 * loopback, [::1] too (`localhost:0` binds 127.0.0.1 only: an ephemeral port
 * cannot be the same for both). A forward's target may also be a host name
 * (`db.internal:5432`, a Kubernetes Service name, `localhost`): it is
 * resolved at start and again on its records' TTL (ts/engine/names.ts).
 * Port 0 (an ephemeral port) is accepted for bind addresses only. A forward
 * is `BIND=TARGET[,mode=M][,direction=D]` or the object form `{bind, target,
 * mode, direction}` of config files. Port modes accept Linkerd's spellings
 * (`unknown`, `HTTP/1`, `HTTP/2`, `gRPC`, `TLS`) and are normalised to the
 * engine's lowercase names. Parsers throw plain `Error`s whose messages name
 * the bad token and what is expected; ts/config/config.ts adds the key and
 * the source.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { closest } from './combinations.js';

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

/** Where a forward sends: an address, or a host name resolved at run time. */
export interface TargetAddress extends SocketAddr {
  /** `ip`: `host` is an address; `name`: `host` is a host name (lower case), `addr` is `name:port`. */
  readonly kind: 'ip' | 'name';
}

/** One `--forward` listener. */
export interface ForwardSpec {
  /** Unique listener name, `forward:BIND` (`#2`, `#3`... for repeated port-0 binds). */
  readonly name: string;
  readonly bind: SocketAddr;
  readonly target: TargetAddress;
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
const TARGET_EXPECTED = 'expected host:port with an IPv4 address, a [bracketed IPv6] address or a host name, e.g. 127.0.0.1:5432, [::1]:5432 or db.internal:5432';

/** A DNS host name (RFC 1123 labels: letters, digits, hyphens; at most 253 characters; a final dot allowed). */
export function isHostName(text: string): boolean {
  const name = text.endsWith('.') ? text.slice(0, -1) : text;
  if (name.length === 0 || name.length > 253) return false;
  return name.split('.').every((label) => /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i.test(label)) && !/^[\d.]+$/.test(name);
}

function parseAddr(text: string, what: 'bind' | 'target'): TargetAddress {
  const input = text.trim();
  let host: string;
  let portText: string;
  let kind: 'ip' | 'name' = 'ip';
  const v6 = /^\[([^\]]*)\]:(\d+)$/.exec(input);
  const v4 = /^([^:[\]]+):(\d+)$/.exec(input);
  if (v6) {
    host = v6[1]!.toLowerCase();
    portText = v6[2]!;
    if (!isIPv6(host)) throw new Error(`${what} address "${text}": "${host}" is not an IPv6 address; ${what === 'bind' ? ADDR_EXPECTED : TARGET_EXPECTED}`);
  } else if (v4) {
    host = v4[1]!;
    portText = v4[2]!;
    if (isIPv4(host)) {
      // an address
    } else if (what === 'bind' && host.toLowerCase() === 'localhost') {
      host = '127.0.0.1';
    } else if (what === 'target' && isHostName(host)) {
      host = host.toLowerCase();
      kind = 'name';
    } else if (what === 'bind') {
      throw new Error(`bind address "${text}": "${host}" is not an IPv4 address (a listener binds an address; of host names only localhost is accepted); ${ADDR_EXPECTED}`);
    } else {
      throw new Error(`target address "${text}": "${host}" is neither an IPv4 address nor a host name; ${TARGET_EXPECTED}`);
    }
  } else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(input)) {
    // A URL (http://127.0.0.1:8000/): the listener forwards TCP, so it takes the address alone.
    const bare = input.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '').replace(/\/.*$/, '');
    const port = /^https:/i.test(input) ? 443 : 80;
    throw new Error(`${what} address "${text}": expected host:port without a scheme or path (meshpipe forwards TCP), e.g. ${/:\d+$/.test(bare) ? bare : `${bare}:${port}`}`);
  } else if (isIPv6(input) || input.includes('::')) {
    throw new Error(`${what} address "${text}": an IPv6 address needs brackets and a port, e.g. [::1]:8080`);
  } else {
    throw new Error(`${what} address "${text}": ${what === 'bind' ? ADDR_EXPECTED : TARGET_EXPECTED}`);
  }
  const port = Number(portText);
  const min = what === 'bind' ? 0 : 1;
  if (portText.length > 5 || port < min || port > 65535) {
    throw new Error(`${what} address "${text}": port ${portText} is out of range: expected ${min}-65535`);
  }
  return { host, port, addr: host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`, kind };
}

/** A listening address: port 0 (ephemeral) allowed; `localhost` is 127.0.0.1. */
export function parseBindAddr(text: string): SocketAddr {
  const { host, port, addr } = parseAddr(text, 'bind');
  return { host, port, addr };
}

/** A destination: an address or a host name, port 1-65535. */
export function parseTargetAddr(text: string): TargetAddress {
  return parseAddr(text, 'target');
}

/** True when a bind was written as `localhost` (a forward then also binds [::1], see `expandLocalhostBinds`). */
export function isLocalhostBind(text: string): boolean {
  return /^localhost:\d+$/i.test(text.trim());
}

/** Normalises a port mode; accepts Linkerd's spellings, case-insensitive. */
export function parsePortMode(text: string): PortMode {
  const mode = MODE_ALIASES[text.trim().toLowerCase()];
  if (mode === undefined) {
    // One edit per three letters, as for flags: `opaq` and `htp1` get one, `raw` none; an HTTP
    // version we do not have (`http3`) is not a typo of one we do.
    const asked = text.trim().toLowerCase();
    // `https`, `ssl`: what the port carries is TLS, whatever is inside it; not a typo of http1.
    const near = /^(https|ssl|tls\S+)$/.test(asked)
      ? 'tls'
      : /^http\/?\d/.test(asked) ? undefined : closest(asked, Object.keys(MODE_ALIASES), Math.max(1, Math.ceil(asked.length / 3)));
    const hint = near !== undefined ? ` (did you mean ${near}?)` : '';
    throw new Error(`mode "${text}"${hint}: expected one of detect (or unknown), opaque, http1 (HTTP/1), http2 (HTTP/2), grpc (gRPC), tls (TLS)`);
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

const FORWARD_OBJECT_KEYS = ['bind', 'target', 'mode', 'direction'] as const;

/**
 * Checks a forward's object form key by key, so a file's mistake is named
 * (`unknown key "bnd"`, a missing target, a number for a string) instead of
 * only "expected BIND=TARGET".
 */
function checkForwardObject(item: ForwardObject | Readonly<Record<string, unknown>>): ForwardObject {
  const fields = item as Readonly<Record<string, unknown>>;
  for (const key of Object.keys(fields)) {
    if ((FORWARD_OBJECT_KEYS as readonly string[]).includes(key)) continue;
    const hint = closest(key, FORWARD_OBJECT_KEYS, Math.ceil(key.length / 3));
    throw new Error(`unknown key "${key}"${hint !== undefined ? ` (did you mean "${hint}"?)` : ''}: a forward object has ${FORWARD_OBJECT_KEYS.join(', ')}`);
  }
  for (const key of FORWARD_OBJECT_KEYS) {
    const value = fields[key];
    if (value === undefined && (key === 'bind' || key === 'target')) throw new Error(`"${key}" is missing: a forward object needs bind and target (mode and direction are optional)`);
    if (value !== undefined && typeof value !== 'string') throw new Error(`"${key}" is ${JSON.stringify(value)}: expected a string, e.g. bind: 127.0.0.1:15432, target: 127.0.0.1:5432`);
  }
  return fields as unknown as ForwardObject;
}

/**
 * Parses one forward (without its name; ts/config/config.ts names them once the
 * whole list is known).
 */
export function parseForward(item: string | ForwardObject | Readonly<Record<string, unknown>>): Omit<ForwardSpec, 'name'> & { readonly localhost: boolean } {
  if (typeof item !== 'string') {
    item = checkForwardObject(item);
    return {
      bind: parseBindAddr(item.bind),
      localhost: isLocalhostBind(item.bind),
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
    const bind = head.slice(0, eq);
    return { bind: parseBindAddr(bind), localhost: isLocalhostBind(bind), target: parseTargetAddr(head.slice(eq + 1)), mode, direction };
  }
}
