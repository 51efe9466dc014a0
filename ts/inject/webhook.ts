/**
 * The mutating admission webhook's HTTPS server.
 *
 * - `POST /inject`: an AdmissionReview v1 (JSON, at most 8 MiB) answered by
 *   review.ts. Malformed requests get HTTP 400/405/413/415 with a plain-text
 *   reason (the API server logs it and applies the webhook's failurePolicy).
 *   Answers come from memory (the namespace cache), well within the API
 *   server's timeout; a request whose body does not arrive within
 *   `requestTimeoutMs` is cut.
 * - `GET /ready`: 200 once the certificate is loaded, the listener is bound
 *   and the Namespace cache has synced; 503 otherwise and while shutting
 *   down (so the Service stops sending reviews before the process exits).
 * - `GET /live`: 200 while the process serves.
 * - `GET /metrics`: Prometheus text: reviews by result, certificate reloads.
 *
 * TLS 1.2 or newer; the certificate is swapped in place when its files
 * change (tls-files.ts), without dropping the listener.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Registry } from 'prom-client';
import type { Logger } from '../observe/index.js';
import type { NamespaceSource } from './namespaces.js';
import { answerReview, BadReview, readReview, type ReviewContext, type ReviewResult } from './review.js';
import { TlsFiles } from './tls-files.js';

export const MAX_REVIEW_BYTES = 8 * 1024 * 1024;

export interface WebhookOptions {
  readonly host: string;
  readonly port: number;
  /** The certificate (chain) and key files, e.g. a cert-manager Secret's tls.crt and tls.key. */
  readonly certFile: string;
  readonly keyFile: string;
  /** How often the files are polled besides being watched. Default 10 s. */
  readonly tlsPollMs?: number;
  readonly namespaces: NamespaceSource;
  readonly review: Omit<ReviewContext, 'namespaceAnnotations'>;
  readonly logger: Logger;
  /** Cut a request whose headers and body take longer than this. Default 10 s (the API server's default webhook timeout). */
  readonly requestTimeoutMs?: number;
}

export interface Webhook {
  /** The bound address, e.g. `127.0.0.1:8443`. */
  readonly address: string;
  readonly port: number;
  /** Turns /ready to 503, stops accepting, waits for open requests, closes. */
  close(): Promise<void>;
}

function text(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', ...headers });
  res.end(`${body}\n`);
}

/**
 * Reads the body up to `limit` bytes. Past the limit the rest is read and
 * discarded (bounded by the server's request timeout), so the client can
 * finish sending and read the 413 instead of a reset.
 */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer | 'too large'> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = Number(req.headers['content-length'] ?? '0') > limit;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) tooLarge = true;
      if (!tooLarge) chunks.push(chunk);
    });
    req.on('end', () => resolve(tooLarge ? 'too large' : Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** Starts the webhook server; resolves once it listens. */
export async function startWebhook(options: WebhookOptions): Promise<Webhook> {
  const { logger, namespaces } = options;
  const registry = new Registry();
  const reviews = new Counter({ name: 'meshpipe_injector_reviews_total', help: 'AdmissionReviews answered, by result', labelNames: ['result'], registers: [registry] });
  const reloads = new Counter({ name: 'meshpipe_injector_tls_reloads_total', help: 'Certificate reloads, by result', labelNames: ['result'], registers: [registry] });
  let stopping = false;
  const ctx: ReviewContext = { ...options.review, namespaceAnnotations: (name) => namespaces.annotations(name) };

  // Created first so that reloads can reach it; the certificate is set before it listens.
  const srv: Server = createServer({ minVersion: 'TLSv1.2' });
  const tls = new TlsFiles(options.certFile, options.keyFile, {
    reloaded: (p) => {
      srv.setSecureContext({ cert: p.cert, key: p.key, minVersion: 'TLSv1.2' });
      reloads.inc({ result: 'ok' });
      logger.info({ cert: options.certFile }, 'tls certificate reloaded');
    },
    failed: (message) => {
      reloads.inc({ result: 'failed' });
      logger.warn({ err: message }, 'tls certificate reload failed; serving the current one');
    },
  }, options.tlsPollMs);
  const pair = await tls.start();
  srv.setSecureContext({ cert: pair.cert, key: pair.key, minVersion: 'TLSv1.2' });
  const timeout = options.requestTimeoutMs ?? 10_000;
  srv.requestTimeout = timeout;
  srv.headersTimeout = Math.min(timeout, 60_000);

  const handleReview = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (req.method !== 'POST') return text(res, 405, 'POST an AdmissionReview to /inject', { allow: 'POST' });
    const type = String(req.headers['content-type'] ?? '');
    if (!/^application\/json\b/i.test(type)) return text(res, 415, `expected content-type application/json, got "${type}"`);
    const body = await readBody(req, MAX_REVIEW_BYTES);
    if (body === 'too large') {
      return text(res, 413, `the AdmissionReview is larger than ${MAX_REVIEW_BYTES} bytes`);
    }
    let request;
    try {
      request = readReview(JSON.parse(body.toString('utf8')) as unknown);
    } catch (err) {
      const why = err instanceof BadReview ? err.message : `not JSON: ${(err as Error).message}`;
      reviews.inc({ result: 'bad_request' });
      logger.warn({ err: why }, 'bad admission request');
      return text(res, 400, why);
    }
    const answer = answerReview(request, ctx);
    reviews.inc({ result: answer.result });
    const level: Record<ReviewResult, 'info' | 'warn' | 'debug'> = {
      injected: 'info', updated: 'info', uninjected: 'info', unchanged: 'debug', skipped: 'debug', ignored: 'debug', invalid: 'warn', error: 'warn',
    };
    logger[level[answer.result]]({ uid: request['uid'], result: answer.result, detail: answer.detail }, 'admission review');
    const json = JSON.stringify(answer.body);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) });
    res.end(json);
  };

  srv.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const done = (p: Promise<void> | void): void => {
      void Promise.resolve(p).catch((err: unknown) => {
        logger.error({ err: err instanceof Error ? err.message : String(err) }, 'webhook request failed');
        if (!res.headersSent) text(res, 500, 'internal error');
        else res.destroy();
      });
    };
    switch (path) {
      case '/inject':
        return done(handleReview(req, res));
      case '/ready': {
        const why = stopping ? 'shutting down' : !namespaces.ready() ? 'namespace annotations not synced yet' : '';
        return done(why === '' ? text(res, 200, 'ready') : text(res, 503, `not ready: ${why}`));
      }
      case '/live':
        return done(text(res, 200, 'live'));
      case '/metrics':
        return done(registry.metrics().then((m) => {
          res.writeHead(200, { 'content-type': registry.contentType });
          res.end(m);
        }));
      default:
        return done(text(res, 404, 'not found: the webhook serves POST /inject, GET /ready, /live, /metrics'));
    }
  });
  srv.on('tlsClientError', (err) => logger.debug({ err: err.message }, 'tls handshake failed'));

  srv.listen(options.port, options.host);
  await Promise.race([
    once(srv, 'listening'),
    once(srv, 'error').then(([err]) => {
      throw err as Error;
    }),
  ]);
  const addr = srv.address() as AddressInfo;
  const address = addr.family === 'IPv6' ? `[${addr.address}]:${addr.port}` : `${addr.address}:${addr.port}`;
  return {
    address,
    port: addr.port,
    async close() {
      stopping = true;
      tls.close();
      namespaces.close();
      const closed = once(srv, 'close');
      srv.close();
      srv.closeIdleConnections();
      await closed;
    },
  };
}
