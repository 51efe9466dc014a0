/**
 * The admin server (node:http, default 127.0.0.1:4191 like Linkerd's proxy
 * admin port; `--admin ADDR`, `--admin off`). It runs on the Node side and
 * never touches proxied traffic.
 *
 *   GET  /metrics      Prometheus text format (ts/observe/metrics.ts; one engine snapshot per scrape, shared
 *                      by scrapes that arrive together: shared-render.ts)
 *   GET  /ready        200 once every listener is bound and the policy is loaded; 503 while starting or draining,
 *                      or while no valid port policy is in force (the engine refused the sources' first table)
 *   GET  /live         200 while the process runs
 *   POST /shutdown     starts the shutdown sequence (as SIGTERM would); 404 when disabled
 *                      (`adminShutdown: false` / `--no-admin-shutdown`)
 *   PUT  /log-filter   replaces the engine's trace filter
 *   GET  /policy       the effective port policy and where each rule came from, plus the learned
 *                      server-first targets, as JSON (the provider is injectable)
 *   GET  /connections  a bounded JSON list of live connections (`?limit=N`, at most 1000)
 *   GET  /snapshot     the raw engine counters
 *
 * Who may call what (403 with the reason otherwise):
 * - /metrics, /ready, /live: anyone who reaches the port (Prometheus, kubelet probes).
 * - /connections, /snapshot, /policy expose peer addresses, SNI and policy:
 *   loopback peers with a loopback `Host` only, unless `exposeDebug`
 *   (`--admin-expose-debug`). The `Host` check defeats DNS rebinding: a web
 *   page whose name was re-pointed at 127.0.0.1 sends its own name as Host.
 * - Mutating endpoints (POST /shutdown, PUT /log-filter): loopback peers, a
 *   loopback `Host`, no cross-origin `Origin` or `Sec-Fetch-Site`, and a
 *   request a browser cannot send without a CORS preflight (which this server
 *   never grants): a `Meshpipe-Admin` header (any value) or a JSON content
 *   type. So a page in a browser on the same host can neither stop the proxy
 *   nor change its logging (CSRF, DNS rebinding).
 *
 * Open connections are bounded (64): at the bound the oldest idle one is
 * closed to admit a new one (admin-connections.ts), so a pod holding idle
 * connections to 0.0.0.0:4191 can take neither the descriptors the engine
 * leaves free nor the probes' access.
 *
 * Unknown paths are 404, a known path with the wrong method is 405 with an
 * `Allow` header. HEAD is accepted wherever GET is. Errors inside a handler
 * are 500 with the message, never a crash of the proxy.
 */
import http from 'node:http';
import { once } from 'node:events';
import { isIP, type AddressInfo } from 'node:net';
import { MeshpipeError } from '../errors.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';
import { SharedRender } from './shared-render.js';
import { AdminConnections } from './admin-connections.js';
import type { ConnectionInfo } from '../engine/index.js';

/** The largest `/connections?limit=` honoured (larger values are capped). */
export const MAX_CONNECTIONS_LIMIT = 1000;
export const DEFAULT_CONNECTIONS_LIMIT = 100;

/** Why the proxy is not ready, or null when it is. */
export type NotReadyReason = 'starting' | 'draining' | 'no valid policy' | null;

export interface AdminServerOptions {
  /** `host` and `port` to bind (port 0 = ephemeral). */
  readonly host: string;
  readonly port: number;
  readonly metrics: Metrics;
  /** Null when ready; otherwise why not. */
  readonly notReady: () => NotReadyReason;
  /** Extra lines for /ready (the mesh identity, a failing reload). */
  readonly readyDetails?: () => readonly string[];
  /** Live connections, at most `limit`. */
  readonly connections: (limit: number) => ConnectionInfo[];
  /** The JSON document served at /policy (it may be computed elsewhere: a promise). */
  readonly policy: () => unknown;
  /** The raw engine counters (one snapshot), served at /snapshot for debugging and tests. */
  readonly snapshot?: () => unknown;
  /** Starts the shutdown sequence; null disables POST /shutdown. */
  readonly shutdown: (() => void) | null;
  /** Replaces the engine's trace filter (PUT /log-filter); throws on a bad filter. Absent: 404. */
  readonly logFilter?: (filter: string) => void;
  /** Serve /connections, /snapshot and /policy to any peer (default: loopback peers only). */
  readonly exposeDebug?: boolean;
  readonly logger?: Logger;
}

/** The header that makes a mutating request non-simple (any value will do). */
export const ADMIN_HEADER = 'meshpipe-admin';

/** Who may call a route: anyone, the debug rule, or the mutating rule (see the module doc). */
type Access = 'public' | 'debug' | 'mutating';

interface Route {
  readonly methods: readonly string[];
  readonly access: Access;
  handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> | void;
}

/** True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (`::ffff:127.x.y.z`). */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return v4.startsWith('127.') || address === '::1';
}

/** A loopback name as a URL or Host header spells it: 127.x.y.z, [::1], localhost. */
function isLoopbackName(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/^\[|\]$/g, '');
  // isIP first: "127.attacker.example" is a name an attacker controls.
  return h === 'localhost' || (isIP(h) !== 0 && isLoopback(h));
}

/** A `Host` header (`name[:port]`) naming a loopback host. */
export function isLoopbackHostHeader(host: string | undefined): boolean {
  if (host === undefined || host === '') return false;
  const m = /^(\[[^\]]*\]|[^:]*)(?::\d*)?$/.exec(host.trim());
  return m !== null && isLoopbackName(m[1]!);
}

function isJson(contentType: string | undefined): boolean {
  return contentType !== undefined && /^application\/([\w.+-]*\+)?json\s*(;|$)/i.test(contentType.trim());
}

/** The body of PUT /log-filter: plain text, or with a JSON content type a JSON string or `{"filter": "..."}`. */
function logFilterBody(body: string, contentType: string | undefined): string {
  if (!isJson(contentType)) return body.trim();
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch (err) {
    throw new MeshpipeError('ERR_INVALID_ARGUMENT', `the JSON body does not parse: ${(err as Error).message}; expected "FILTER" or {"filter": "FILTER"}`);
  }
  const filter = typeof value === 'string' ? value : (value as { filter?: unknown } | null)?.filter;
  if (typeof filter !== 'string') throw new MeshpipeError('ERR_INVALID_ARGUMENT', 'expected a JSON body "FILTER" or {"filter": "FILTER"}');
  return filter.trim();
}

function send(res: http.ServerResponse, status: number, body: string | Buffer, contentType = 'text/plain; charset=utf-8', extra: http.OutgoingHttpHeaders = {}): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store', ...extra });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

function sendJson(res: http.ServerResponse, status: number, value: unknown): void {
  send(res, status, `${JSON.stringify(value, null, 2)}\n`, 'application/json; charset=utf-8');
}

/** Parses `?limit=`; absent = default, above the cap = the cap; anything but a whole number >= 1 is an error. */
export function parseLimit(raw: string | null): number {
  if (raw === null || raw === '') return DEFAULT_CONNECTIONS_LIMIT;
  if (!/^\d+$/.test(raw) || Number(raw) < 1) {
    throw new MeshpipeError('ERR_INVALID_ARGUMENT', `invalid limit "${raw}": expected a whole number from 1 to ${MAX_CONNECTIONS_LIMIT}`);
  }
  return Math.min(Number(raw), MAX_CONNECTIONS_LIMIT);
}

export class AdminServer {
  readonly #server: http.Server;
  readonly #options: AdminServerOptions;
  readonly #routes: ReadonlyMap<string, Route>;
  readonly #metricsText: SharedRender;
  readonly #open: AdminConnections;
  #address: string | undefined;

  constructor(options: AdminServerOptions) {
    this.#options = options;
    this.#metricsText = new SharedRender(() => options.metrics.render());
    this.#routes = new Map<string, Route>([
      ['/metrics', { methods: ['GET', 'HEAD'], access: 'public', handle: (_req, res) => this.#metrics(res) }],
      ['/ready', { methods: ['GET', 'HEAD'], access: 'public', handle: (_req, res) => this.#ready(res) }],
      ['/live', { methods: ['GET', 'HEAD'], access: 'public', handle: (_req, res) => send(res, 200, 'live\n') }],
      ['/shutdown', { methods: ['POST'], access: 'mutating', handle: (req, res) => this.#shutdown(req, res) }],
      ['/policy', { methods: ['GET', 'HEAD'], access: 'debug', handle: async (_req, res) => sendJson(res, 200, await this.#options.policy()) }],
      ['/connections', { methods: ['GET', 'HEAD'], access: 'debug', handle: (_req, res, url) => this.#connections(res, url) }],
      ['/snapshot', { methods: ['GET', 'HEAD'], access: 'debug', handle: (_req, res) => sendJson(res, 200, this.#options.snapshot?.() ?? {}) }],
      ['/log-filter', { methods: ['PUT'], access: 'mutating', handle: (req, res) => this.#logFilter(req, res) }],
    ]);
    this.#server = http.createServer((req, res) => {
      // #dispatch answers a failing handler with a 500 itself; this only
      // catches a failure while doing that: drop the request, keep the proxy.
      this.#dispatch(req, res).catch((err: unknown) => {
        res.destroy();
        this.#options.logger?.error({ err, url: req.url }, 'admin request failed');
      });
    });
    // Scrapers and probes use short requests; an idle keep-alive socket must not delay close().
    this.#server.keepAliveTimeout = 5_000;
    this.#server.headersTimeout = 10_000;
    this.#server.requestTimeout = 30_000;
    // At most ADMIN_MAX_CONNECTIONS open; idle ones make room (admin-connections.ts).
    this.#open = new AdminConnections(this.#server, options.logger);
  }

  /** Open admin connections, and how many were closed or refused at the limit. */
  get openConnections(): { open: number; evicted: number } {
    return { open: this.#open.size, evicted: this.#open.evicted };
  }

  /** The bound `host:port` (after `start()`). */
  get address(): string {
    if (this.#address === undefined) throw new MeshpipeError('ERR_NOT_STARTED', 'the admin server is not listening yet');
    return this.#address;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  /**
   * Binds the admin address.
   * @throws MeshpipeError ERR_ADDR_IN_USE / ERR_ADDR_NOT_AVAILABLE / ERR_BIND naming the address.
   */
  async start(): Promise<string> {
    const { host, port } = this.#options;
    const shown = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
    this.#server.listen({ host, port, exclusive: true });
    try {
      await Promise.race([once(this.#server, 'listening'), once(this.#server, 'error').then(([err]) => Promise.reject(err as Error))]);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const mapped = code === 'EADDRINUSE' ? 'ERR_ADDR_IN_USE' : code === 'EADDRNOTAVAIL' ? 'ERR_ADDR_NOT_AVAILABLE' : code === 'EACCES' ? 'ERR_PERMISSION' : 'ERR_BIND';
      const why = code === 'EADDRINUSE' ? 'the address is already in use' : (err as Error).message;
      throw new MeshpipeError(mapped, `cannot bind the admin server to ${shown}: ${why} (choose another with --admin ADDR, or --admin off)`, { key: 'admin', cause: err });
    }
    // After start-up an 'error' (e.g. EMFILE while accepting) must not become
    // an uncaught exception, which would drain the whole proxy: log it, keep serving.
    this.#server.on('error', (err) => this.#options.logger?.error({ err }, 'admin server error'));
    const a = this.#server.address() as AddressInfo;
    this.#address = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
    return this.#address;
  }

  /** Stops listening and closes every open admin connection (idle keep-alives too). Idempotent. */
  async close(): Promise<void> {
    if (!this.#server.listening) return;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    await closed;
  }

  async #dispatch(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://admin');
    } catch {
      send(res, 400, 'bad request target\n');
      return;
    }
    const route = this.#routes.get(url.pathname);
    if (route === undefined) {
      send(res, 404, `not found: ${url.pathname} (endpoints: ${[...this.#routes.keys()].join(', ')})\n`);
      return;
    }
    if (!route.methods.includes(req.method ?? '')) {
      send(res, 405, `method ${req.method} not allowed on ${url.pathname}: use ${route.methods.join(' or ')}\n`, undefined, { allow: route.methods.join(', ') });
      return;
    }
    const refused = this.#refusal(route.access, req, url.pathname);
    if (refused !== null) {
      if (route.access === 'mutating') this.#options.logger?.warn({ peer: req.socket.remoteAddress, path: url.pathname, reason: refused }, 'admin request refused');
      send(res, 403, `${refused}\n`);
      return;
    }
    try {
      await route.handle(req, res, url);
    } catch (err) {
      if (err instanceof MeshpipeError && err.code === 'ERR_INVALID_ARGUMENT') {
        send(res, 400, `${err.message}\n`);
        return;
      }
      this.#options.logger?.error({ err, path: url.pathname }, 'admin request failed');
      if (!res.headersSent) send(res, 500, `${url.pathname} failed: ${err instanceof Error ? err.message : String(err)}\n`);
      else res.destroy();
    }
  }

  async #metrics(res: http.ServerResponse): Promise<void> {
    const text = await this.#metricsText.next();
    send(res, 200, text, this.#options.metrics.contentType);
  }

  #ready(res: http.ServerResponse): void {
    const reason = this.#options.notReady();
    const details = this.#options.readyDetails?.() ?? [];
    const tail = details.map((d) => `${d}\n`).join('');
    if (reason === null) send(res, 200, `ready\n${tail}`);
    else send(res, 503, `not ready: ${reason}\n${tail}`);
  }

  /** PUT /log-filter: the body (text or JSON, at most 4 KiB) becomes the engine's trace filter. */
  async #logFilter(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const apply = this.#options.logFilter;
    if (apply === undefined) {
      send(res, 404, 'the log filter cannot be changed on this server\n');
      return;
    }
    const peer = req.socket.remoteAddress;
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > 4096) {
        send(res, 413, 'a log filter is at most 4096 bytes\n');
        req.destroy();
        return;
      }
      chunks.push(chunk);
    }
    const filter = logFilterBody(Buffer.concat(chunks).toString('utf8'), req.headers['content-type']);
    try {
      apply(filter);
    } catch (err) {
      throw new MeshpipeError('ERR_INVALID_ARGUMENT', err instanceof Error ? err.message : String(err));
    }
    this.#options.logger?.info({ peer, filter }, 'engine log filter changed');
    send(res, 200, `engine log filter: ${filter}\n`);
  }

  #shutdown(req: http.IncomingMessage, res: http.ServerResponse): void {
    const shutdown = this.#options.shutdown;
    if (shutdown === null) {
      send(res, 404, 'the shutdown endpoint is disabled (adminShutdown: false / --no-admin-shutdown)\n');
      return;
    }
    const peer = req.socket.remoteAddress;
    this.#options.logger?.info({ peer }, 'admin shutdown requested');
    send(res, 202, 'shutdown started\n');
    // After the response is written, so the caller learns it was accepted.
    setImmediate(shutdown);
  }

  /** Why `req` may not use a route of this access class, or null when it may. */
  #refusal(access: Access, req: http.IncomingMessage, path: string): string | null {
    if (access === 'public' || (access === 'debug' && this.#options.exposeDebug === true)) return null;
    const peer = req.socket.remoteAddress;
    if (!isLoopback(peer)) {
      const hint = access === 'debug' ? ' (start the proxy with --admin-expose-debug to serve it to any peer)' : '';
      return `${path} is served only to loopback peers; ${peer ?? 'unknown peer'} is not${hint}`;
    }
    const host = req.headers.host;
    if (!isLoopbackHostHeader(host)) {
      return `${path}: the Host header ${JSON.stringify(host ?? '')} is not a loopback address (use http://127.0.0.1:${this.port} or http://localhost:${this.port}); refused against DNS rebinding`;
    }
    if (access === 'debug') return null;
    const origin = req.headers.origin;
    if (origin !== undefined && !this.#sameOrigin(origin)) {
      return `${path}: cross-origin requests are refused (Origin ${JSON.stringify(origin)})`;
    }
    const site = req.headers['sec-fetch-site'];
    if (site !== undefined && site !== 'same-origin' && site !== 'none') {
      return `${path}: cross-site requests are refused (Sec-Fetch-Site: ${String(site)})`;
    }
    if (req.headers[ADMIN_HEADER] === undefined && !isJson(req.headers['content-type'])) {
      return `${path} needs a "${ADMIN_HEADER}: 1" header or a JSON content type, e.g. curl -X ${req.method} -H '${ADMIN_HEADER}: 1' http://127.0.0.1:${this.port}${path}`;
    }
    return null;
  }

  /** Whether `origin` is this server's own (a loopback host on its port). */
  #sameOrigin(origin: string): boolean {
    let url: URL;
    try {
      url = new URL(origin);
    } catch {
      return false;
    }
    const port = url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
    return url.protocol === 'http:' && port === this.port && isLoopbackName(url.hostname);
  }

  #connections(res: http.ServerResponse, url: URL): void {
    const limit = parseLimit(url.searchParams.get('limit'));
    const connections = this.#options.connections(limit);
    sendJson(res, 200, { limit, count: connections.length, connections });
  }
}
