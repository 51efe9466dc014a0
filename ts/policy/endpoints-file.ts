/**
 * The static endpoints file (`--endpoints FILE`): Services outside
 * Kubernetes and their endpoints, for per-request HTTP balancing. It is read
 * first at start on the main thread, so a line that does not parse stops the
 * start with an error naming the file and the line (exit 2), as every other
 * configuration error does; its entries then go to the endpoints compiler
 * (endpoints.ts), where they win over Kubernetes for a Service both name.
 * The policy worker then watches it (source.ts): an edit replaces the
 * entries, and an edit with a bad line keeps the last good ones and is
 * reported as a policy problem naming the line.
 *
 * Format, one Service per line, `#` starts a comment:
 *   SERVICE-IP:PORT ENDPOINT-IP:PORT [ENDPOINT-IP:PORT...]
 * e.g. `10.96.0.20:80 10.42.0.7:8080 10.42.1.9:8080`; IPv6 in brackets.
 * A Service with no endpoint answers 503.
 */
import { isIP } from 'node:net';
import type { ServiceEndpointsSpec } from '../engine/index.js';
import { isPipeSync, readPipeOnceSync, readWatchedTextSync } from '../config/index.js';
import { MeshpipeError } from '../errors.js';
import { MAX_MANIFEST_BYTES } from './k8s/manifests.js';

/** The largest endpoints file read (the policy files' bound). */
const MAX_ENDPOINTS_FILE_BYTES = MAX_MANIFEST_BYTES;

/** A line of an endpoints file that could not be used. */
export interface EndpointsProblem {
  readonly line: number;
  readonly message: string;
}

/** `ip:port` (IPv6 in brackets) as the engine parses it, or undefined. */
export function socketAddr(text: string): string | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|(\d{1,3}(?:\.\d{1,3}){3})):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const ip = m[1] ?? m[2]!;
  const port = Number(m[3]);
  if (isIP(ip) === 0 || port < 1 || port > 65535) return undefined;
  return m[1] !== undefined ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/** `ip:port`, IPv6 in brackets. */
export function hostPort(ip: string, port: number): string {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/** Parses an endpoints file; bad lines are problems naming the line, the others count. */
export function parseEndpointsFile(text: string, file: string): { services: ServiceEndpointsSpec[]; problems: EndpointsProblem[] } {
  const services: ServiceEndpointsSpec[] = [];
  const problems: EndpointsProblem[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (line === '') return;
    const [service, ...endpoints] = line.split(/\s+/);
    const where = `${file}:${i + 1}`;
    const svc = socketAddr(service!);
    if (svc === undefined) {
      problems.push({ line: i + 1, message: `${where}: "${service}" is not a Service address; expected SERVICE-IP:PORT ENDPOINT-IP:PORT...` });
      return;
    }
    const bad = endpoints.find((e) => socketAddr(e) === undefined);
    if (bad !== undefined) {
      problems.push({ line: i + 1, message: `${where}: "${bad}" is not an endpoint address; expected IP:PORT (IPv6 as [addr]:port)` });
      return;
    }
    services.push({ service: svc, endpoints: endpoints.map((e) => socketAddr(e)!), source: where });
  });
  return { services, problems };
}

/**
 * Reads `--endpoints FILE`: a regular file, or a pipe given at start
 * (`<(generate)`, read to its end once), at most 32 MiB either way.
 * @throws MeshpipeError ERR_INVALID_CONFIG naming the file (and each bad line)
 */
export function readEndpointsFile(file: string): ServiceEndpointsSpec[] {
  let text: string;
  try {
    text = isPipeSync(file) ? readPipeOnceSync(file, MAX_ENDPOINTS_FILE_BYTES) : readWatchedTextSync(file, MAX_ENDPOINTS_FILE_BYTES);
  } catch (err) {
    throw new MeshpipeError('ERR_INVALID_CONFIG', `--endpoints ${file}: cannot read: ${(err as Error).message}`, { key: 'endpoints', cause: err });
  }
  const { services, problems } = parseEndpointsFile(text, file);
  if (problems.length > 0) {
    throw new MeshpipeError('ERR_INVALID_CONFIG', `--endpoints: ${problems.map((p) => p.message).join('; ')}`, { key: 'endpoints' });
  }
  return services;
}
