/**
 * The admin server (node:http, default 127.0.0.1:4191 like Linkerd's proxy
 * admin port; `--admin ADDR`, `--admin off`). It runs on the Node side and
 * never touches proxied traffic.
 *
 *   GET  /metrics      Prometheus text format (ts/observe/metrics.ts; one engine snapshot per scrape)
 *   GET  /ready        200 once every listener is bound and the policy is loaded; 503 while starting or draining,
 *                      or while no valid port policy is in force (the engine refused the sources' first table)
 *   GET  /live         200 while the process runs
 *   POST /shutdown     starts the shutdown sequence (as SIGTERM would); loopback peers only (403
 *                      otherwise), 404 when disabled (`adminShutdown: false` / `--no-admin-shutdown`)
 *   GET  /policy       the effective port policy and where each rule came from, plus the learned
 *                      server-first targets, as JSON (the provider is injectable)
 *   GET  /connections  a bounded JSON list of live connections (`?limit=N`, at most 1000)
 *
 * Unknown paths are 404, a known path with the wrong method is 405 with an
 * `Allow` header. HEAD is accepted wherever GET is. Errors inside a handler
 * are 500 with the message, never a crash of the proxy.
 */
import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { MeshpipeError } from '../errors.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';
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
  readonly logger?: Logger;
}

interface Route {
  readonly methods: readonly string[];
  handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> | void;
}

/** True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (`::ffff:127.x.y.z`). */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return v4.startsWith('127.') || address === '::1';
}

function send(res: http.ServerResponse, status: number, body: string, contentType = 'text/plain; charset=utf-8', extra: http.OutgoingHttpHeaders = {}): void {
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
  #address: string | undefined;

  constructor(options: AdminServerOptions) {
    this.#options = options;
    this.#routes = new Map<string, Route>([
      ['/metrics', { methods: ['GET', 'HEAD'], handle: (_req, res) => this.#metrics(res) }],
      ['/ready', { methods: ['GET', 'HEAD'], handle: (_req, res) => this.#ready(res) }],
      ['/live', { methods: ['GET', 'HEAD'], handle: (_req, res) => send(res, 200, 'live\n') }],
      ['/shutdown', { methods: ['POST'], handle: (req, res) => this.#shutdown(req, res) }],
      ['/policy', { methods: ['GET', 'HEAD'], handle: async (_req, res) => sendJson(res, 200, await this.#options.policy()) }],
      ['/connections', { methods: ['GET', 'HEAD'], handle: (_req, res, url) => this.#connections(res, url) }],
      ['/snapshot', { methods: ['GET', 'HEAD'], handle: (_req, res) => sendJson(res, 200, this.#options.snapshot?.() ?? {}) }],
      ['/log-filter', { methods: ['PUT'], handle: (req, res) => this.#logFilter(req, res) }],
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
    const text = await this.#options.metrics.render();
    send(res, 200, text, this.#options.metrics.contentType);
  }

  #ready(res: http.ServerResponse): void {
    const reason = this.#options.notReady();
    if (reason === null) send(res, 200, 'ready\n');
    else send(res, 503, `not ready: ${reason}\n`);
  }

  /** PUT /log-filter: the body (text, at most 4 KiB) becomes the engine's trace filter. Loopback peers only. */
  async #logFilter(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const apply = this.#options.logFilter;
    if (apply === undefined) {
      send(res, 404, 'the log filter cannot be changed on this server\n');
      return;
    }
    const peer = req.socket.remoteAddress;
    if (!isLoopback(peer)) {
      send(res, 403, `the log filter can be changed only from loopback peers; ${peer ?? 'unknown peer'} is not\n`);
      return;
    }
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
    const filter = Buffer.concat(chunks).toString('utf8').trim();
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
    if (!isLoopback(peer)) {
      this.#options.logger?.warn({ peer }, 'admin shutdown refused: not a loopback peer');
      send(res, 403, `shutdown is accepted only from loopback peers; ${peer ?? 'unknown peer'} is not\n`);
      return;
    }
    this.#options.logger?.info({ peer }, 'admin shutdown requested');
    send(res, 202, 'shutdown started\n');
    // After the response is written, so the caller learns it was accepted.
    setImmediate(shutdown);
  }

  #connections(res: http.ServerResponse, url: URL): void {
    const limit = parseLimit(url.searchParams.get('limit'));
    const connections = this.#options.connections(limit);
    sendJson(res, 200, { limit, count: connections.length, connections });
  }
}
