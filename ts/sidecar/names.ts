/**
 * Forwards to host names (`--forward 127.0.0.1:15432=db.internal:5432`):
 * resolving the names, off the data path, and keeping the engine's address
 * sets current (crates/meshpipe-core/src/names.rs spreads connections over
 * them and fails over to the next address).
 *
 * Resolution: A and AAAA records through c-ares (`resolve4`/`resolve6` with
 * their TTLs), interleaved IPv4 first (RFC 8305 section 4: alternate the
 * families, so a family that does not work costs one failed attempt, and
 * the engine marks that address down); when DNS has no answer, the system's
 * resolver (`getaddrinfo`: /etc/hosts, the search domains of a Kubernetes
 * pod's resolv.conf, so `postgres` finds `postgres.<ns>.svc.cluster.local`).
 * `localhost` is 127.0.0.1 and ::1 (when the machine has IPv6 loopback),
 * without asking anyone (RFC 6761 section 6.3). With `--dns-servers` those
 * servers alone are asked.
 *
 * At start every name must resolve, or the proxy does not start (exit 2,
 * naming the forward and the error). Afterwards each name is resolved again
 * on its records' TTL (at least 1 s apart, at most 5 min; 30 s for names
 * without a TTL) or every `--resolve-interval`. A new set goes to the engine
 * at once. A failure keeps the last addresses: a server that does not answer
 * is retried with a back-off; a name the DNS says does not exist (NXDOMAIN)
 * twice in a row, one interval apart, loses its addresses, and each new
 * connection is then refused and counted until it resolves again. Failures
 * are counted per listener and logged, rate-limited.
 */
import { promises as dns } from 'node:dns';
import { hasIpv6Loopback, NO_TTL_INTERVAL_MS, type ProxyConfig } from '../config/index.js';
import { MeshpipeError } from '../errors.js';
import { reachesLoopback, type Proxy } from '../engine/index.js';
import type { Logger } from '../observe/index.js';
import { RateLimited } from '../observe/rate-limited.js';

/** What one resolution found. */
export interface Resolution {
  /** IP addresses, in the order to use them. */
  readonly addrs: readonly string[];
  /** The shortest TTL of the records, or null (/etc/hosts, localhost). */
  readonly ttlMs: number | null;
  readonly via: 'dns' | 'system' | 'localhost';
}

/** A name that did not resolve. `notFound`: the name does not exist (NXDOMAIN, no A/AAAA); otherwise a failure to ask. */
export class ResolveError extends Error {
  constructor(
    readonly host: string,
    readonly code: string,
    readonly notFound: boolean,
  ) {
    super(notFound ? `${host} does not resolve (${code}: no A or AAAA record)` : `${host} could not be resolved (${code}: the DNS server did not answer)`);
  }
}

/** Error codes that mean "no such name" rather than "could not ask". */
const NOT_FOUND = new Set(['ENOTFOUND', 'ENODATA', 'NOTFOUND', 'NODATA']);

const MIN_INTERVAL_MS = 1_000;
const MAX_INTERVAL_MS = 300_000;
const DNS_TIMEOUT_MS = 2_000;

function codeOf(err: unknown): string {
  return (err as NodeJS.ErrnoException | undefined)?.code ?? 'EUNKNOWN';
}

/** A then AAAA, alternating (IPv4 first). */
function interleave(v4: readonly string[], v6: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < Math.max(v4.length, v6.length); i++) {
    if (i < v4.length) out.push(v4[i]!);
    if (i < v6.length) out.push(v6[i]!);
  }
  return out;
}

/**
 * Resolves `host` once.
 * @throws ResolveError
 */
export async function resolveName(host: string, options: { servers: readonly string[] }): Promise<Resolution> {
  const bare = host.endsWith('.') ? host.slice(0, -1) : host;
  if (bare.toLowerCase() === 'localhost') {
    return { addrs: hasIpv6Loopback() ? ['127.0.0.1', '::1'] : ['127.0.0.1'], ttlMs: null, via: 'localhost' };
  }
  const resolver = new dns.Resolver({ timeout: DNS_TIMEOUT_MS, tries: 2 });
  if (options.servers.length > 0) resolver.setServers([...options.servers]);
  const [a, aaaa] = await Promise.allSettled([resolver.resolve4(host, { ttl: true }), resolver.resolve6(host, { ttl: true })]);
  const v4 = a.status === 'fulfilled' ? a.value : [];
  const v6 = aaaa.status === 'fulfilled' ? aaaa.value : [];
  if (v4.length + v6.length > 0) {
    const ttl = Math.min(...[...v4, ...v6].map((r) => r.ttl));
    return { addrs: interleave(v4.map((r) => r.address), v6.map((r) => r.address)), ttlMs: ttl * 1000, via: 'dns' };
  }
  const errors = [a, aaaa].map((r) => (r.status === 'rejected' ? codeOf(r.reason) : 'ENODATA'));
  const dnsNotFound = errors.every((c) => NOT_FOUND.has(c));
  if (options.servers.length > 0) throw new ResolveError(host, errors.find((c) => !NOT_FOUND.has(c)) ?? errors[0]!, dnsNotFound);
  // The system's resolver: /etc/hosts, search domains, nsswitch (getaddrinfo, on libuv's thread pool).
  try {
    const found = await dns.lookup(host, { all: true, verbatim: true });
    if (found.length > 0) return { addrs: found.map((f) => f.address), ttlMs: null, via: 'system' };
    throw Object.assign(new Error('no address'), { code: 'ENOTFOUND' });
  } catch (err) {
    const code = codeOf(err);
    throw new ResolveError(host, code, NOT_FOUND.has(code) && dnsNotFound);
  }
}

/** One host name and the listeners that forward to it. */
interface NameState {
  readonly host: string;
  readonly port: number;
  readonly listeners: string[];
  addrs: readonly string[];
  timer: NodeJS.Timeout | undefined;
  notFoundInARow: number;
  backoffMs: number;
  /** Resolved addresses left out because they reach the admin server (warned once per change). */
  refused: readonly string[];
}

export const NAMES_MESSAGES = {
  resolved: 'forward target resolved',
  changed: 'forward target addresses changed',
  failed: 'forward target could not be resolved again; keeping its last addresses',
  gone: 'forward target no longer resolves: new connections are refused until it does',
  adminRefused: 'forward target resolves to the admin server: those addresses are left out',
} as const;

export class ForwardNames {
  readonly #config: ProxyConfig;
  readonly #logger: Logger;
  readonly #names = new Map<string, NameState>();
  readonly #limit = new RateLimited();
  #proxy: Proxy | undefined;
  #closed = false;
  /** Resolution failures after start, per listener (meshpipe_forward_resolve_failures_total). */
  readonly failures = new Map<string, number>();

  constructor(config: ProxyConfig, logger: Logger) {
    this.#config = config;
    this.#logger = logger;
    for (const f of config.forward) {
      if (f.target.kind !== 'name') continue;
      const key = `${f.target.host}:${f.target.port}`;
      const state = this.#names.get(key) ?? { host: f.target.host, port: f.target.port, listeners: [], addrs: [], timer: undefined, notFoundInARow: 0, backoffMs: MIN_INTERVAL_MS, refused: [] };
      state.listeners.push(f.name);
      this.#names.set(key, state);
      this.failures.set(f.name, 0);
    }
  }

  get empty(): boolean {
    return this.#names.size === 0;
  }

  /**
   * Resolves every name (all at once) and gives the engine their addresses,
   * before the listeners bind; then keeps them current.
   * @throws MeshpipeError ERR_INVALID_CONFIG (exit 2) naming a forward whose target does not resolve
   */
  async start(proxy: Proxy): Promise<void> {
    this.#proxy = proxy;
    const states = [...this.#names.values()];
    const results = await Promise.allSettled(states.map((s) => resolveName(s.host, { servers: this.#config.dnsServers })));
    results.forEach((r, i) => {
      const s = states[i]!;
      if (r.status === 'rejected') {
        const why = r.reason instanceof ResolveError ? r.reason.message : String(r.reason);
        throw new MeshpipeError(
          'ERR_INVALID_CONFIG',
          `--forward ${s.listeners.map((l) => l.replace(/^forward:/, '')).join(', ')}=${s.host}:${s.port}: ${why}; check the name (a Kubernetes Service is <name>.<namespace>, or <name>.<namespace>.svc.cluster.local)${this.#config.dnsServers.length > 0 ? ` and --dns-servers ${this.#config.dnsServers.join(',')}` : ''}`,
          { key: 'forward' },
        );
      }
      this.#checkAdmin(s, r.value.addrs);
    });
    results.forEach((r, i) => {
      if (r.status !== 'fulfilled') return;
      const s = states[i]!;
      this.#apply(s, r.value.addrs);
      this.#logger.info({ target: `${s.host}:${s.port}`, addresses: s.addrs, ttlMs: r.value.ttlMs, via: r.value.via, listeners: s.listeners }, NAMES_MESSAGES.resolved);
      this.#schedule(s, this.#nextDelay(r.value.ttlMs));
    });
  }

  /** Stops re-resolving. */
  close(): void {
    this.#closed = true;
    for (const s of this.#names.values()) clearTimeout(s.timer);
  }

  /**
   * The addresses of `addrs` through which a forward to `s` would reach the
   * admin server as a loopback peer (which POST /shutdown trusts).
   */
  #adminAddrs(s: NameState, addrs: readonly string[]): string[] {
    const admin = this.#config.admin;
    if (admin === null || s.port !== admin.port) return [];
    return addrs.filter((a) => a === admin.host || reachesLoopback(a));
  }

  /** A forward whose name resolves to the admin server is refused like an address would be (ts/engine/inbound.ts). */
  #checkAdmin(s: NameState, addrs: readonly string[]): void {
    const admin = this.#config.admin;
    const hit = this.#adminAddrs(s, addrs)[0];
    if (admin !== null && hit !== undefined) {
      throw new MeshpipeError('ERR_INVALID_CONFIG', `--forward to ${s.host}:${s.port} reaches the admin server (${admin.addr}) through ${hit}: every connection it forwards would reach the admin server as a loopback peer; to serve the admin endpoints elsewhere use --admin ADDR`, { key: 'forward' });
    }
  }

  #apply(s: NameState, addrs: readonly string[]): void {
    s.addrs = addrs;
    for (const listener of s.listeners) this.#proxy?.setTargetAddrs(listener, addrs);
  }

  #nextDelay(ttlMs: number | null): number {
    const interval = this.#config.resolveIntervalMs;
    if (interval !== 'ttl') return interval;
    return Math.min(MAX_INTERVAL_MS, Math.max(MIN_INTERVAL_MS, ttlMs ?? NO_TTL_INTERVAL_MS));
  }

  #schedule(s: NameState, delayMs: number): void {
    if (this.#closed) return;
    clearTimeout(s.timer);
    s.timer = setTimeout(() => void this.#refresh(s), delayMs).unref();
  }

  async #refresh(s: NameState): Promise<void> {
    let result: Resolution;
    try {
      result = await resolveName(s.host, { servers: this.#config.dnsServers });
    } catch (err) {
      if (this.#closed) return;
      this.#failed(s, err);
      return;
    }
    if (this.#closed) return;
    s.notFoundInARow = 0;
    s.backoffMs = MIN_INTERVAL_MS;
    this.#limit.reset(s.host);
    // Checked at every resolution, not only at start: a record that comes
    // to point at the admin server must not open it to the forward's clients.
    const refused = this.#adminAddrs(s, result.addrs);
    const addrs = result.addrs.filter((a) => !refused.includes(a));
    if (refused.length > 0 && !sameSet(s.refused, refused)) {
      this.#logger.warn(
        { target: `${s.host}:${s.port}`, refused, addresses: addrs, listeners: s.listeners, hint: `connections to ${s.listeners.join(', ')} never go to ${refused.join(', ')}: through them they would reach the admin server (${this.#config.admin?.addr ?? ''}) as a loopback peer; check the DNS record` },
        NAMES_MESSAGES.adminRefused,
      );
    }
    s.refused = refused;
    if (!sameSet(s.addrs, addrs)) {
      const previous = s.addrs;
      this.#apply(s, addrs);
      this.#logger.info({ target: `${s.host}:${s.port}`, addresses: s.addrs, previous, ttlMs: result.ttlMs, listeners: s.listeners }, NAMES_MESSAGES.changed);
    }
    this.#schedule(s, this.#nextDelay(result.ttlMs));
  }

  #failed(s: NameState, err: unknown): void {
    for (const l of s.listeners) this.failures.set(l, (this.failures.get(l) ?? 0) + 1);
    const e = err instanceof ResolveError ? err : new ResolveError(s.host, codeOf(err), false);
    const interval = this.#nextDelay(null);
    if (e.notFound) {
      s.notFoundInARow++;
      if (s.notFoundInARow >= 2 && s.addrs.length > 0) {
        this.#apply(s, []);
        this.#logger.warn(
          { target: `${s.host}:${s.port}`, listeners: s.listeners, error: e.code, hint: `${s.host} no longer exists in DNS: each new connection to ${s.listeners.join(', ')} is refused (counted in outbound_tcp_accept_errors_total{error="unresolved"}) until it resolves again; is the Service deleted, or the name misspelt?` },
          NAMES_MESSAGES.gone,
        );
        this.#limit.reset(s.host);
      } else {
        this.#logFailure(s, e);
      }
      // Confirm (or see it back) one interval later, at most in 5 s.
      this.#schedule(s, Math.min(interval, 5_000));
      return;
    }
    s.notFoundInARow = 0;
    this.#logFailure(s, e);
    this.#schedule(s, Math.min(interval, s.backoffMs));
    s.backoffMs = Math.min(s.backoffMs * 2, MAX_INTERVAL_MS);
  }

  #logFailure(s: NameState, e: ResolveError): void {
    const n = this.#limit.hit(s.host);
    if (n === undefined) return;
    this.#logger.warn(
      { target: `${s.host}:${s.port}`, addresses: s.addrs, error: e.code, failures: n, listeners: s.listeners, hint: `${e.message}; connections keep going to the last addresses. Check the DNS server${this.#config.dnsServers.length > 0 ? `s (--dns-servers ${this.#config.dnsServers.join(',')})` : ' (/etc/resolv.conf)'}` },
      NAMES_MESSAGES.failed,
    );
  }
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
