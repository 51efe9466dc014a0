/**
 * The inbound guard of the sidecar layout: which connections the transparent
 * inbound listeners accept (the engine enforces it, crates/meshpipe-core/src/target.rs).
 *
 * - Pod IPs: an inbound connection goes to its original destination, and only
 *   when that is one of the pod's own IPs. They come from `--inbound-ips`
 *   (config `inboundIps`), else the `POD_IPS` environment variable (the
 *   downward API's `status.podIPs`, comma-separated), else the addresses of
 *   the interfaces (every non-loopback address this network namespace has
 *   when the proxy starts).
 * - Proxy ports: inbound connections to the proxy's own ports (admin,
 *   inbound, outbound) are refused, so a proxy whose admin port is not the
 *   one `meshpipe init` exempted never hands a redirected request to its own
 *   admin server (where it would look like a loopback peer).
 * - A `--forward` whose target is the admin server is refused for the same
 *   reason: everything it forwards would reach the admin server from 127.0.0.1.
 */
import { isIP } from 'node:net';
import type { ProxyConfig } from '../config/index.js';
import { parsePodIp } from '../config/sidecar.js';
import { MeshpipeError } from '../errors.js';
import { interfaceAddresses } from './native.js';

/** The pod IPs the guard uses and where they came from (for the start-up log). */
export interface PodIps {
  readonly ips: readonly string[];
  readonly source: '--inbound-ips' | 'POD_IPS' | 'interfaces';
}

/** Link-local addresses (fe80::/10, 169.254.0.0/16) reach only the same link: never pod IPs. */
function isLinkLocal(ip: string): boolean {
  return /^fe[89ab][0-9a-f]:/i.test(ip) || ip.startsWith('169.254.');
}

/**
 * The pod's IPs: the config's, else POD_IPS, else the addresses of the
 * interfaces (loopback and link-local left out; read by the engine with
 * getifaddrs, so a link whose carrier is not up yet still counts).
 */
export function resolvePodIps(config: Pick<ProxyConfig, 'inboundIps'>, env: NodeJS.ProcessEnv = process.env, interfaces: () => readonly string[] = interfaceAddresses): PodIps {
  if (config.inboundIps.length > 0) return { ips: config.inboundIps, source: '--inbound-ips' };
  const fromEnv = env['POD_IPS']?.trim();
  if (fromEnv) {
    try {
      return { ips: fromEnv.split(',').map((s) => s.trim()).filter((s) => s !== '').map(parsePodIp), source: 'POD_IPS' };
    } catch (err) {
      throw new MeshpipeError('ERR_INVALID_CONFIG', `invalid POD_IPS ${JSON.stringify(fromEnv)}: ${(err as Error).message}; expected the pod's IPs, e.g. 10.42.0.7,fd00::7`, { key: 'inboundIps' });
    }
  }
  return { ips: [...new Set(interfaces().filter((ip) => !isLinkLocal(ip)))], source: 'interfaces' };
}

/** The ports of the proxy itself in the sidecar layout: admin, inbound, outbound. */
export function proxyPorts(config: Pick<ProxyConfig, 'admin' | 'inbound' | 'outbound'>): number[] {
  const ports = [config.admin?.port, config.inbound?.port, config.outbound?.port].filter((p): p is number => p !== undefined && p > 0);
  return [...new Set(ports)];
}

function isLoopbackHost(host: string): boolean {
  const v4 = host.toLowerCase().startsWith('::ffff:') ? host.slice(7) : host;
  return v4.startsWith('127.') || host === '::1' || host.toLowerCase() === 'localhost';
}

/**
 * Whether a connection to `host` lands on this host's loopback interface, as
 * a loopback peer: 127.0.0.0/8, ::1, `localhost`, and the unspecified
 * addresses (Linux connects 0.0.0.0 and :: to the local host), in any
 * spelling (`0:0:0:0:0:0:0:1`, IPv4-mapped `::ffff:127.0.0.1` or
 * `::ffff:7f00:1`).
 */
export function reachesLoopback(host: string): boolean {
  if (host.toLowerCase() === 'localhost') return true;
  const family = isIP(host);
  if (family === 4) return host.startsWith('127.') || host === '0.0.0.0';
  if (family !== 6) return false;
  // The URL parser writes an IPv6 address in its one canonical form.
  const canonical = new URL(`http://[${host}]/`).hostname.slice(1, -1).toLowerCase();
  if (canonical === '::' || canonical === '::1') return true;
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(canonical);
  if (mapped === null) return canonical === '::ffff:0:0';
  const high = parseInt(mapped[1]!, 16);
  return high >> 8 === 127 || (high === 0 && parseInt(mapped[2]!, 16) === 0);
}

function isWildcardHost(host: string): boolean {
  return host === '0.0.0.0' || host === '::';
}

/** Whether two listen addresses take the same port (a wildcard address includes every other; port 0 never collides). */
function bindsOverlap(a: { host: string; port: number }, b: { host: string; port: number }): boolean {
  if (a.port === 0 || a.port !== b.port) return false;
  if (a.host === b.host || isWildcardHost(a.host) || isWildcardHost(b.host)) return true;
  // localhost binds both loopback addresses.
  return (a.host === 'localhost' && isLoopbackHost(b.host)) || (b.host === 'localhost' && isLoopbackHost(a.host));
}

/**
 * Refuses a `--forward` whose target is the admin server: its connections
 * would reach the admin server from a loopback address, which is what
 * POST /shutdown and the debug endpoints trust.
 * @throws MeshpipeError ERR_INVALID_CONFIG naming the forward.
 */
export function checkForwardsAvoidAdmin(config: Pick<ProxyConfig, 'admin' | 'forward'>): void {
  const admin = config.admin;
  if (admin === null) return;
  for (const f of config.forward) {
    if (bindsOverlap(f.bind, admin)) {
      // Caught here, the user hears what the address is taken by: the bind would only say "in use".
      throw new MeshpipeError(
        'ERR_INVALID_CONFIG',
        `--forward ${f.bind.addr}=${f.target.addr} listens on the admin server's address (${admin.addr}, --admin): give the forward another port, or move the admin server with --admin ADDR (or --admin off)`,
        { key: 'forward' },
      );
    }
    if (f.target.port !== admin.port) continue;
    if (reachesLoopback(f.target.host) || f.target.host === admin.host) {
      throw new MeshpipeError(
        'ERR_INVALID_CONFIG',
        `--forward ${f.bind.addr}=${f.target.addr} targets the admin server (${admin.addr}): every connection it forwards would reach the admin server as a loopback peer, which may shut the proxy down; to serve the admin endpoints elsewhere use --admin ADDR`,
        { key: 'forward' },
      );
    }
  }
}
