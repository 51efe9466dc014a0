/**
 * Kubernetes EndpointSlices (discovery.k8s.io/v1), reduced to what
 * per-request HTTP balancing needs: which Service a slice belongs to (the
 * `kubernetes.io/service-name` label), its named ports, and the addresses of
 * its ready endpoints. A malformed field is a problem naming the slice; the
 * rest of the slice still counts.
 */
import type { ObjectProblem } from './objects.js';

export interface EndpointSlicePort {
  /** Matches the Service port's name ('' or undefined for an unnamed single port). */
  readonly name: string | undefined;
  readonly port: number;
  readonly protocol: string;
}

export interface EndpointSliceObject {
  readonly kind: 'EndpointSlice';
  readonly namespace: string;
  readonly name: string;
  /** The owning Service (`kubernetes.io/service-name`); undefined = not a Service's slice. */
  readonly serviceName: string | undefined;
  /** `IPv4`, `IPv6` or `FQDN` (FQDN slices are not balanced over). */
  readonly addressType: string;
  readonly ports: readonly EndpointSlicePort[];
  /** Addresses of endpoints whose `conditions.ready` is not false. */
  readonly addresses: readonly string[];
}

type Raw = Record<string, unknown>;
const rec = (v: unknown): Raw => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Raw) : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** Normalises one raw EndpointSlice. */
export function normalizeEndpointSlice(raw: Raw, namespace: string, name: string, problems: ObjectProblem[]): EndpointSliceObject {
  const ref = { kind: 'EndpointSlice', namespace, name };
  const labels = rec(rec(raw['metadata'])['labels']);
  const ports: EndpointSlicePort[] = [];
  for (const p of arr(raw['ports'])) {
    const pr = rec(p);
    const port = pr['port'];
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
      problems.push({ object: ref, field: 'ports[].port', token: String(port), reason: 'expected a port number 1-65535' });
      continue;
    }
    ports.push(Object.freeze({ name: str(pr['name']), port, protocol: str(pr['protocol']) ?? 'TCP' }));
  }
  const addresses: string[] = [];
  for (const e of arr(raw['endpoints'])) {
    const er = rec(e);
    // Kubernetes: an unknown (absent) ready condition means ready.
    if (rec(er['conditions'])['ready'] === false) continue;
    for (const a of arr(er['addresses'])) if (typeof a === 'string' && a !== '') addresses.push(a);
  }
  return Object.freeze({
    kind: 'EndpointSlice',
    namespace,
    name,
    serviceName: str(labels['kubernetes.io/service-name']),
    addressType: str(raw['addressType']) ?? 'IPv4',
    ports: Object.freeze(ports),
    addresses: Object.freeze(addresses),
  });
}
