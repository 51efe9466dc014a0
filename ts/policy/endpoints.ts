/**
 * The endpoints table for per-request HTTP balancing: Service address
 * (cluster IP and port) -> the addresses of its ready endpoints, compiled
 * incrementally from Kubernetes Services and EndpointSlices (manifests or the
 * live watch) and the static `--endpoints FILE` (endpoints-file.ts); the
 * engine's side is crates/meshpipe-core/src/http/endpoints.rs.
 *
 * Like the port policy (compiler.ts) it is fed one object at a time and
 * indexed so that a change costs what it touches, not the cluster: a Service
 * or an EndpointSlice marks its Service (`namespace/name`), and `flush()`
 * recompiles only the marked Services from their own slices and returns the
 * change for the engine: the Service addresses whose endpoints changed, and
 * those that are gone. A Service port maps to the ready addresses of its
 * slices' port of the same name, per address family (an IPv4 cluster IP
 * balances over the IPv4 slices, an IPv6 one over the IPv6 slices); FQDN
 * slices and Services without a cluster IP (headless) are left out. When
 * two sources claim one Service address the file wins, then the first
 * Service by namespace, name and origin, so the table never depends on the
 * order events arrived in.
 */
import { isIP } from 'node:net';
import type { ServiceEndpointsSpec } from '../engine/index.js';
import type { EndpointSliceObject } from './k8s/endpoint-slices.js';
import type { PolicyObject, ServiceObject } from './k8s/objects.js';
import { hostPort } from './endpoints-file.js';

/** What `flush()` returns: the Service addresses set (added or changed) and removed. */
export interface EndpointsChange {
  readonly upsert: readonly ServiceEndpointsSpec[];
  readonly remove: readonly string[];
}

/** The static file's claims: sorts before every Service's (`namespace/name\0origin`), so the file wins. */
const FILE_OWNER = '\u0000file';

type Entries = Map<string, ServiceEndpointsSpec>;

function contentKey(spec: ServiceEndpointsSpec): string {
  return JSON.stringify([spec.endpoints, spec.source]);
}

/** The entries of one Service from its slices: `clusterIP:port` -> the ready endpoints of the port of the same name and family. */
function serviceEntries(svc: ServiceObject, slices: Iterable<EndpointSliceObject>): Entries {
  const out: Entries = new Map();
  const ips = svc.clusterIPs.filter((ip) => isIP(ip) !== 0);
  if (ips.length === 0) return out;
  const list = [...slices];
  const source = `Service ${svc.namespace}/${svc.name}`;
  for (const port of svc.ports) {
    if (port.protocol !== 'TCP') continue;
    for (const ip of ips) {
      const family = isIP(ip) === 6 ? 'IPv6' : 'IPv4';
      const endpoints = new Set<string>();
      for (const slice of list) {
        if (slice.addressType !== family) continue;
        const sp = slice.ports.find((p) => (p.name ?? '') === (port.name ?? '') && p.protocol === 'TCP');
        if (sp === undefined) continue;
        for (const a of slice.addresses) if (isIP(a) !== 0) endpoints.add(hostPort(a, sp.port));
      }
      const service = hostPort(ip, port.port);
      out.set(service, { service, endpoints: [...endpoints].sort(), source });
    }
  }
  return out;
}

/** An incremental compiler of the endpoints table. */
export class EndpointsCompiler {
  /** Services by `namespace/name`, one per origin. */
  readonly #services = new Map<string, Map<string, ServiceObject>>();
  /** EndpointSlices by their Service's `namespace/name`, keyed `origin\0namespace/name`. */
  readonly #slices = new Map<string, Map<string, EndpointSliceObject>>();
  /** The Service each slice is indexed under (a slice's label can change). */
  readonly #sliceService = new Map<string, string>();
  /** The objects of each origin (`kind\0namespace/name`), for `setOrigin`. */
  readonly #origins = new Map<string, Set<string>>();
  /** Services to recompile. */
  readonly #dirty = new Set<string>();
  /** What each owner (the file, or a Service of one origin) claims. */
  readonly #claimed = new Map<string, Entries>();
  /** The origins each Service has claims from. */
  readonly #claimOrigins = new Map<string, Set<string>>();
  /** Claims per Service address: owner -> entry. */
  readonly #claims = new Map<string, Entries>();
  /** The table as of the last flush: Service address -> entry and content key. */
  readonly #table = new Map<string, { spec: ServiceEndpointsSpec; key: string }>();
  /** Service addresses whose claims changed since the last flush. */
  readonly #touched = new Set<string>();

  /** `fromFile`: the static file's entries (a later line wins for the same Service). */
  constructor(fromFile: readonly ServiceEndpointsSpec[] = []) {
    this.setFile(fromFile);
  }

  /** Replaces the static file's entries (`--endpoints FILE` changed; a later line wins for the same Service). */
  setFile(fromFile: readonly ServiceEndpointsSpec[]): void {
    const entries: Entries = new Map();
    for (const e of fromFile) entries.set(e.service, e);
    this.#claim(FILE_OWNER, entries);
  }

  /** True for the kinds this compiler reads. */
  static reads(o: { readonly kind: string }): boolean {
    return o.kind === 'Service' || o.kind === 'EndpointSlice';
  }

  /** Replaces every Service and EndpointSlice of one origin (a manifest file). */
  setOrigin(origin: string, objects: readonly PolicyObject[]): void {
    const keep = new Set<string>();
    for (const o of objects) {
      if (o.kind !== 'Service' && o.kind !== 'EndpointSlice') continue;
      keep.add(`${o.kind}\u0000${o.namespace}/${o.name}`);
      this.upsert(origin, o);
    }
    for (const k of [...(this.#origins.get(origin) ?? [])]) {
      if (keep.has(k)) continue;
      const [kind, id] = k.split('\u0000') as [string, string];
      const slash = id.indexOf('/');
      this.remove(origin, { kind, namespace: id.slice(0, slash), name: id.slice(slash + 1) });
    }
  }

  /** Adds or replaces one object (other kinds are ignored). */
  upsert(origin: string, o: PolicyObject): void {
    if (o.kind === 'Service') this.#putService(origin, o.namespace, o.name, o);
    else if (o.kind === 'EndpointSlice') this.#putSlice(origin, o.namespace, o.name, o);
  }

  /** Removes one object (other kinds are ignored). */
  remove(origin: string, o: { readonly kind: string; readonly namespace?: string; readonly name: string }): void {
    if (o.kind === 'Service') this.#putService(origin, o.namespace ?? '', o.name, undefined);
    else if (o.kind === 'EndpointSlice') this.#putSlice(origin, o.namespace ?? '', o.name, undefined);
  }

  #indexOrigin(origin: string, key: string, present: boolean): void {
    let set = this.#origins.get(origin);
    if (present) {
      if (!set) this.#origins.set(origin, (set = new Set()));
      set.add(key);
    } else if (set) {
      set.delete(key);
      if (set.size === 0) this.#origins.delete(origin);
    }
  }

  #putService(origin: string, namespace: string, name: string, next: ServiceObject | undefined): void {
    const id = `${namespace}/${name}`;
    let byOrigin = this.#services.get(id);
    if (next) {
      if (!byOrigin) this.#services.set(id, (byOrigin = new Map<string, ServiceObject>()));
      byOrigin.set(origin, next);
    } else if (byOrigin) {
      byOrigin.delete(origin);
      if (byOrigin.size === 0) this.#services.delete(id);
    }
    this.#indexOrigin(origin, `Service\u0000${id}`, next !== undefined);
    this.#dirty.add(id);
  }

  #putSlice(origin: string, namespace: string, name: string, next: EndpointSliceObject | undefined): void {
    const key = `${origin}\u0000${namespace}/${name}`;
    const before = this.#sliceService.get(key);
    if (before !== undefined) {
      const set = this.#slices.get(before);
      set?.delete(key);
      if (set?.size === 0) this.#slices.delete(before);
      this.#sliceService.delete(key);
      this.#dirty.add(before);
    }
    if (next && next.serviceName !== undefined && next.addressType !== 'FQDN') {
      const id = `${namespace}/${next.serviceName}`;
      let set = this.#slices.get(id);
      if (!set) this.#slices.set(id, (set = new Map<string, EndpointSliceObject>()));
      set.set(key, next);
      this.#sliceService.set(key, id);
      this.#dirty.add(id);
    }
    this.#indexOrigin(origin, `EndpointSlice\u0000${namespace}/${name}`, next !== undefined);
  }

  /** Sets what `owner` claims, marking the Service addresses whose claims changed. */
  #claim(owner: string, entries: Entries): void {
    const prev = this.#claimed.get(owner);
    for (const [service] of prev ?? []) {
      if (entries.has(service)) continue;
      const claims = this.#claims.get(service);
      claims?.delete(owner);
      if (claims?.size === 0) this.#claims.delete(service);
      this.#touched.add(service);
    }
    for (const [service, spec] of entries) {
      const before = prev?.get(service);
      if (before !== undefined && contentKey(before) === contentKey(spec)) continue;
      let claims = this.#claims.get(service);
      if (!claims) this.#claims.set(service, (claims = new Map<string, ServiceEndpointsSpec>()));
      claims.set(owner, spec);
      this.#touched.add(service);
    }
    if (entries.size > 0) this.#claimed.set(owner, entries);
    else this.#claimed.delete(owner);
  }

  #compile(id: string): void {
    const services = this.#services.get(id);
    const slices = this.#slices.get(id)?.values() ?? [];
    const sliceList = [...slices];
    const before = this.#claimOrigins.get(id) ?? new Set<string>();
    const after = new Set<string>();
    for (const [origin, svc] of services ?? []) {
      const entries = serviceEntries(svc, sliceList);
      this.#claim(`${id}\u0000${origin}`, entries);
      if (entries.size > 0) after.add(origin);
    }
    for (const origin of before) if (!after.has(origin)) this.#claim(`${id}\u0000${origin}`, new Map());
    if (after.size > 0) this.#claimOrigins.set(id, after);
    else this.#claimOrigins.delete(id);
  }

  /** True when something waits for `flush()`. */
  get dirty(): boolean {
    return this.#dirty.size > 0 || this.#touched.size > 0;
  }

  /** Recompiles the marked Services; returns the change for the engine, or undefined when the table did not change. */
  flush(): EndpointsChange | undefined {
    for (const id of this.#dirty) this.#compile(id);
    this.#dirty.clear();
    const upsert: ServiceEndpointsSpec[] = [];
    const remove: string[] = [];
    for (const service of this.#touched) {
      let winner: [string, ServiceEndpointsSpec] | undefined;
      for (const claim of this.#claims.get(service) ?? []) if (winner === undefined || claim[0] < winner[0]) winner = claim;
      if (winner === undefined) {
        if (this.#table.delete(service)) remove.push(service);
        continue;
      }
      const key = contentKey(winner[1]);
      if (this.#table.get(service)?.key === key) continue;
      this.#table.set(service, { spec: winner[1], key });
      upsert.push(winner[1]);
    }
    this.#touched.clear();
    return upsert.length === 0 && remove.length === 0 ? undefined : { upsert, remove };
  }

  /** The whole table as of the last flush, by Service address. O(table): at start and on a resync only. */
  whole(): ServiceEndpointsSpec[] {
    return [...this.#table.keys()].sort().map((s) => this.#table.get(s)!.spec);
  }

  /** Service addresses in the table. */
  get size(): number {
    return this.#table.size;
  }
}

/**
 * Services and their EndpointSlices -> the table, one-shot (explain, tests):
 * the incremental compiler with one origin.
 */
export function compileEndpoints(objects: readonly PolicyObject[], fromFile: readonly ServiceEndpointsSpec[] = []): ServiceEndpointsSpec[] {
  const compiler = new EndpointsCompiler(fromFile);
  compiler.setOrigin('manifests', objects);
  compiler.flush();
  return compiler.whole();
}
