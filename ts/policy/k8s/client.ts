/**
 * A minimal Kubernetes API client for list and watch, on node:http(s) with
 * the credentials of kubeconfig.ts.
 *
 * Why not @kubernetes/client-node's typed API and informers: importing the
 * library loads every generated API model, its typed lists turn every object
 * into class instances (slow at 10,000 pods), and its informers keep every
 * object whole (a pod is kilobytes; policy needs a few hundred bytes of it).
 * Here a list is paginated (`limit`/`continue`), each item is handed to the
 * caller as plain JSON and can be slimmed at once, and a watch is read line
 * by line with a bounded line length. Nothing is held but what the caller
 * keeps.
 */

import http from 'node:http';
import https from 'node:https';
import type { ApiCredentials } from './kubeconfig.js';

/** The longest watch event line accepted (one object); a longer one ends the watch with an error. */
export const MAX_EVENT_BYTES = 16 * 1024 * 1024;
/** The largest list page accepted. */
export const MAX_PAGE_BYTES = 256 * 1024 * 1024;

/** An HTTP error from the API server, with its status code (410 = the resourceVersion is gone). */
export class KubeApiError extends Error {
  readonly statusCode: number;
  constructor(statusCode: number, message: string) {
    super(message);
    this.name = 'KubeApiError';
    this.statusCode = statusCode;
  }
}

export interface RequestOptions {
  readonly query?: Readonly<Record<string, string | undefined>>;
  readonly accept?: string;
  /** Abort the request (a watch being stopped). */
  readonly signal?: AbortSignal;
  /** No byte for this long ends the request with an error (a silent, half-open connection). */
  readonly idleTimeoutMs?: number;
  /** Called once the server has answered 200 (a watch is established). */
  readonly onOpen?: () => void;
}

export class KubeClient {
  readonly #credentials: ApiCredentials;
  readonly #server: URL;

  constructor(credentials: ApiCredentials) {
    this.#credentials = credentials;
    this.#server = credentials.server;
  }

  async #open(path: string, options: RequestOptions): Promise<http.IncomingMessage> {
    const url = new URL(this.#server.pathname.replace(/\/$/, '') + path, this.#server);
    for (const [k, v] of Object.entries(options.query ?? {})) if (v !== undefined) url.searchParams.set(k, v);
    const opts: https.RequestOptions = { method: 'GET', headers: { accept: options.accept ?? 'application/json' } };
    await this.#credentials.apply(opts);
    const request = url.protocol === 'https:' ? https.request : http.request;
    return new Promise((resolve, reject) => {
      const req = request(url, { ...opts, signal: options.signal }, (res) => resolve(res));
      req.on('error', reject);
      if (options.idleTimeoutMs !== undefined) {
        req.setTimeout(options.idleTimeoutMs, () => req.destroy(new Error(`no answer from ${url.host} for ${options.idleTimeoutMs} ms`)));
      }
      req.end();
    });
  }

  /** GETs a JSON document (a list page). */
  async getJson(path: string, options: RequestOptions = {}): Promise<unknown> {
    const res = await this.#open(path, options);
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of res as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_PAGE_BYTES) {
        res.destroy();
        throw new Error(`${path}: the answer is larger than ${MAX_PAGE_BYTES} bytes`);
      }
      chunks.push(chunk);
    }
    const text = Buffer.concat(chunks).toString('utf8');
    if (res.statusCode !== 200) throw new KubeApiError(res.statusCode ?? 0, statusMessage(res.statusCode, text));
    return JSON.parse(text) as unknown;
  }

  /**
   * Streams a watch: `onEvent` gets each parsed line. Resolves when the
   * server ends the watch; rejects on an HTTP error (KubeApiError), a broken
   * connection, an oversized line, or the signal.
   */
  async watch(path: string, options: RequestOptions, onEvent: (event: unknown) => void): Promise<void> {
    const res = await this.#open(path, options);
    if (res.statusCode !== 200) {
      let text = '';
      for await (const chunk of res as AsyncIterable<Buffer>) if (text.length < 65536) text += chunk.toString('utf8');
      throw new KubeApiError(res.statusCode ?? 0, statusMessage(res.statusCode, text));
    }
    options.onOpen?.();
    try {
      await readLines(res, path, onEvent);
    } finally {
      res.destroy();
    }
  }
}

/** Reads newline-delimited JSON, each line at most MAX_EVENT_BYTES. */
async function readLines(res: http.IncomingMessage, path: string, onEvent: (event: unknown) => void): Promise<void> {
  {
    let pending: Buffer[] = [];
    let pendingSize = 0;
    for await (const chunk of res as AsyncIterable<Buffer>) {
      let start = 0;
      for (let nl = chunk.indexOf(10); nl >= 0; nl = chunk.indexOf(10, start)) {
        pending.push(chunk.subarray(start, nl));
        const line = Buffer.concat(pending).toString('utf8');
        pending = [];
        pendingSize = 0;
        start = nl + 1;
        if (line.trim() !== '') onEvent(JSON.parse(line) as unknown);
      }
      if (start < chunk.length) {
        pending.push(chunk.subarray(start));
        pendingSize += chunk.length - start;
        if (pendingSize > MAX_EVENT_BYTES) {
          throw new Error(`${path}: a watch event is larger than ${MAX_EVENT_BYTES} bytes`);
        }
      }
    }
    if (res.errored) throw res.errored;
  }
}

function statusMessage(code: number | undefined, body: string): string {
  try {
    const status = JSON.parse(body) as { message?: unknown; reason?: unknown };
    if (typeof status.message === 'string') return `${status.message} (${code})`;
    if (typeof status.reason === 'string') return `${status.reason} (${code})`;
  } catch {
    // not a Status object
  }
  return `${http.STATUS_CODES[code ?? 0] ?? 'HTTP error'} (${code})`;
}
