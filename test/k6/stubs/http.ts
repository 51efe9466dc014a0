/**
 * Stub of `k6/http`: each call performs the request for real (io-worker.ts)
 * and returns a k6-shaped Response (status, body, headers, proto, timings,
 * json()), recording http_reqs, http_req_duration and http_req_failed.
 */
import { call } from '../bridge.js';
import type { HttpResult } from '../io-worker.js';
import { record } from '../metrics.js';

interface Params {
  headers?: Record<string, string>;
  tags?: Record<string, string>;
}

declare const __K6_OPTIONS: { insecureSkipTLSVerify?: boolean } | undefined;

export function request(method: string, url: string, body?: string | null, params: Params = {}): object {
  const insecure = typeof __K6_OPTIONS === 'object' && __K6_OPTIONS?.insecureSkipTLSVerify === true;
  const r = call<HttpResult>('http', { method, url, body: body ?? undefined, headers: params.headers ?? {}, insecure });
  const tags = { method, url, name: params.tags?.['name'] ?? url, status: String(r.status), ...params.tags };
  record('http_reqs', 'counter', 1, tags);
  record('http_req_duration', 'trend', r.durationMs, tags);
  record('http_req_failed', 'rate', r.error !== '' || r.status === 0 || r.status >= 400 ? 1 : 0, tags);
  return {
    status: r.status,
    proto: r.proto,
    body: r.body,
    headers: r.headers,
    url,
    error: r.error,
    error_code: r.error === '' ? 0 : 1000,
    timings: { duration: r.durationMs },
    json: () => JSON.parse(r.body) as unknown,
  };
}

export const get = (url: string, params?: Params): object => request('GET', url, null, params);
export const head = (url: string, params?: Params): object => request('HEAD', url, null, params);
export const del = (url: string, body?: string, params?: Params): object => request('DELETE', url, body, params);
export const post = (url: string, body?: string, params?: Params): object => request('POST', url, body, params);
export const put = (url: string, body?: string, params?: Params): object => request('PUT', url, body, params);
export const patch = (url: string, body?: string, params?: Params): object => request('PATCH', url, body, params);

export default { request, get, head, del, post, put, patch };
