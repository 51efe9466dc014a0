/**
 * The endpoints table for per-request HTTP balancing: Service address
 * (cluster IP and port) -> the addresses of its ready endpoints, compiled
 * from Kubernetes Services and EndpointSlices (manifests or the live watch)
 * and from a static `--endpoints FILE` for Services outside Kubernetes; the
 * engine's side is crates/meshpipe-core/src/http/balance.rs.
 *
 * The engine gets changes, not the whole table: `endpointsDelta` compares a
 * new table with the one last sent and yields only the Services that were
 * added, changed or removed, so a cluster where one Deployment scales does
 * not resend every Service.
 *
 * File format, one Service per line, `#` starts a comment:
 *   SERVICE-IP:PORT ENDPOINT-IP:PORT [ENDPOINT-IP:PORT...]
 * e.g. `10.96.0.20:80 10.42.0.7:8080 10.42.1.9:8080`; IPv6 in brackets.
 * A Service with no endpoint answers 503.
 */
import { isIP } from 'node:net';
import type { EndpointsUpdate, ServiceEndpointsSpec } from '../engine/index.js';
import type { EndpointSliceObject } from './k8s/endpoint-slices.js';
import type { ServiceObject } from './k8s/objects.js';

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

function hostPort(ip: string, port: number): string {
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
 * Services (with a cluster IP) and their EndpointSlices -> one entry per
 * Service port: `clusterIP:port` -> the ready addresses with the slice's
 * port of the same name.
 */
export function compileEndpoints(services: readonly ServiceObject[], slices: readonly EndpointSliceObject[]): ServiceEndpointsSpec[] {
  const bySvc = new Map<string, EndpointSliceObject[]>();
  for (const s of slices) {
    if (s.serviceName === undefined || s.addressType === 'FQDN') continue;
    const key = `${s.namespace}/${s.serviceName}`;
    const list = bySvc.get(key) ?? [];
    list.push(s);
    bySvc.set(key, list);
  }
  const out: ServiceEndpointsSpec[] = [];
  for (const svc of services) {
    const ips = svc.clusterIPs.filter((ip) => isIP(ip) !== 0);
    if (ips.length === 0) continue;
    const mine = bySvc.get(`${svc.namespace}/${svc.name}`) ?? [];
    for (const port of svc.ports) {
      if (port.protocol !== 'TCP') continue;
      const endpoints = new Set<string>();
      for (const slice of mine) {
        const sp = slice.ports.find((p) => (p.name ?? '') === (port.name ?? '') && p.protocol === 'TCP');
        if (sp === undefined) continue;
        for (const a of slice.addresses) if (isIP(a) !== 0) endpoints.add(hostPort(a, sp.port));
      }
      for (const ip of ips) {
        out.push({ service: hostPort(ip, port.port), endpoints: [...endpoints].sort(), source: `Service ${svc.namespace}/${svc.name}` });
      }
    }
  }
  return out;
}

/** What the engine was last sent, by Service address. */
export type SentEndpoints = Map<string, string>;

/**
 * The update that turns the table last sent (`sent`, updated in place) into
 * `next`; undefined when nothing changed. Later entries for the same Service
 * win (the file after Kubernetes).
 */
export function endpointsDelta(sent: SentEndpoints, next: readonly ServiceEndpointsSpec[], generation: number): EndpointsUpdate | undefined {
  const table = new Map<string, ServiceEndpointsSpec>();
  for (const e of next) table.set(e.service, e);
  const upsert: ServiceEndpointsSpec[] = [];
  for (const [service, e] of table) {
    const key = JSON.stringify(e.endpoints);
    if (sent.get(service) !== key) {
      upsert.push(e);
      sent.set(service, key);
    }
  }
  const remove = [...sent.keys()].filter((s) => !table.has(s));
  for (const s of remove) sent.delete(s);
  if (upsert.length === 0 && remove.length === 0) return undefined;
  return { generation, replace: false, upsert, remove };
}
