/**
 * Test helpers for the admin server: find the admin address a `meshpipe`
 * child logged (`admin server listening`), fetch its endpoints, and scrape
 * /metrics through the strict Prometheus parser (test/prom-parse.ts), so
 * every scrape in a test is also a format check.
 */
import type { CliProcess } from './helpers.js';
import { parsePrometheusText, type Family } from './prom-parse.js';

/** The admin `host:port` the process logged (waits for the line). */
export async function adminAddress(proc: CliProcess): Promise<string> {
  const line = await proc.waitForLog((l) => l.msg === 'admin server listening', '"admin server listening"');
  return String(line['address']);
}

export interface HttpResult {
  status: number;
  body: string;
  headers: Headers;
}

/** The header mutating admin requests need (ts/observe/admin-server.ts). */
export const ADMIN_HEADERS: Readonly<Record<string, string>> = { 'meshpipe-admin': '1' };

/**
 * One request to the admin server (no keep-alive reuse surprises: fetch
 * closes idle sockets itself). POST and PUT carry the `meshpipe-admin`
 * header unless `headers` says otherwise.
 */
export async function adminRequest(addr: string, path: string, method = 'GET', headers: Record<string, string> = method === 'POST' || method === 'PUT' ? { ...ADMIN_HEADERS } : {}, body?: string): Promise<HttpResult> {
  const res = await fetch(`http://${addr}${path}`, { method, headers, ...(body !== undefined ? { body } : {}), signal: AbortSignal.timeout(10_000) });
  return { status: res.status, body: await res.text(), headers: res.headers };
}

/** GET /metrics, parsed strictly; also checks the content type Prometheus expects. */
export async function scrape(addr: string): Promise<Map<string, Family>> {
  const res = await adminRequest(addr, '/metrics');
  if (res.status !== 200) throw new Error(`GET /metrics: ${res.status} ${res.body}`);
  const type = res.headers.get('content-type') ?? '';
  if (!type.startsWith('text/plain; version=0.0.4')) throw new Error(`GET /metrics: unexpected content type ${type}`);
  return parsePrometheusText(res.body);
}
