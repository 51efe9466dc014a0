/**
 * The policy compiler: Kubernetes objects and this workload's annotations in,
 * the engine table out, incrementally. It is the only compiler: `meshpipe
 * explain`, the flags-only proxy (no objects at all) and a sidecar watching a
 * 50,000-pod cluster all go through it.
 *
 * Objects arrive one at a time (a watch event, a manifest file that changed)
 * and are indexed by namespace, and pods by label, so a change finds what it
 * affects without a scan of the cluster:
 *   a Pod                -> that pod's destination (and the frame, if it is this proxy's pod);
 *   a Service            -> its destinations, and the pods its old or new selector selects
 *                           (their decisions carried through targetPort);
 *   a Server             -> the pods of its namespace its selector matches (and the frame
 *                           in this proxy's namespace);
 *   a Namespace          -> the Services and pods of that namespace (inherited annotations);
 *   a workload controller-> the frame, when it could be this proxy's workload;
 *   an AuthorizationPolicy of this proxy's namespace, any MeshTLSAuthentication
 *   or NetworkAuthentication (a policy may refer across namespaces),
 *   the static meshed destinations -> the frame (its authorization);
 *   this pod's annotations (downward-API file) -> the frame.
 * `flush()` recompiles only what was marked and returns the change for the
 * engine: the frame when it changed, new and dropped port tables, and the
 * addresses set or removed (destinations.ts). The rules of each part are in
 * frame.ts (this workload) and outbound.ts (destinations).
 */

import type { AuthzObject, NamespaceObject, PolicyObject, ServerObject, ServiceObject, WorkloadObject } from './k8s/objects.js';
import { describeRef, serviceSelects } from './k8s/objects.js';
import { readPortAnnotation } from './annotations.js';
import { canonicalAddress } from './cidr.js';
import { compileFrame, couldBeSelf, findWorkload, selfNamespace, type CompilerSettings, type Frame } from './frame.js';
import { DestinationTable, type Claim, type DestinationChanges } from './destinations.js';
import { peerKey, staticDestinations } from './mesh-destinations.js';
import {
  ANNOTATIONS,
  type DestinationSpec,
  type MeshPeerSpec,
  type DestinationPolicy,
  type EffectivePolicy,
  type PolicyFrame,
  type PolicyTable,
  type PortDecision,
} from './model.js';
import { compilePod, compileService, podDestination, ref, type OutboundContext, type SharedChain, type ServiceResult } from './outbound.js';
import { objectProblem, type PolicyProblem } from './problems.js';

export type { CompilerSettings } from './frame.js';

/** The change `flush()` returns: what the engine must apply. */
export interface CompilerChange extends DestinationChanges {
  /** The new frame; null when it did not change. */
  readonly frame: PolicyFrame | null;
  /** Destinations recompiled (first few names, for logs). */
  readonly changed: readonly string[];
}

type Key = string;

/**
 * A string built from parts is a tree of pieces in V8 until something flattens
 * it; one kept per pod costs several objects. Kept strings are made flat.
 */
export function flat(s: string): string {
  return JSON.parse(JSON.stringify(s)) as string;
}

function objectKey(o: PolicyObject, origin: string): Key {
  const ns = o.kind === 'Namespace' ? '' : o.namespace;
  return flat(`${o.kind}\u0000${ns}\u0000${o.name}\u0000${origin}`);
}

/** `Kind ns/name` from an object key (names are computed when needed, not kept per pod). */
function nameOf(key: Key): string {
  const [kind, ns, name] = key.split('\u0000');
  return `${kind} ${ns}/${name}`;
}

/** `kind\0ns\0name\0origin` -> `ns\0name\0origin`. */
function rest(key: Key): string {
  return key.slice(key.indexOf('\u0000') + 1);
}

function add(index: Map<string, Set<Key>>, at: string, key: Key): void {
  let set = index.get(at);
  if (!set) index.set(at, (set = new Set()));
  set.add(key);
}

function del(index: Map<string, Set<Key>>, at: string, key: Key): void {
  const set = index.get(at);
  if (!set) return;
  set.delete(key);
  if (set.size === 0) index.delete(at);
}

function firstPair(map: Readonly<Record<string, string>> | undefined): [string, string] | undefined {
  if (map === undefined) return undefined;
  for (const k in map) return [k, map[k] as string];
  return undefined;
}

function tuples(decisions: readonly PortDecision[]): string {
  return JSON.stringify(decisions.map((d) => [d.ports.from, d.ports.to, d.mode, d.source]));
}

/** Content keys as one instance each (equal pods, equal keys: kept once). */
const contents = new Map<string, string>();

function sharedContent(content: string): string {
  const hit = contents.get(content);
  if (hit !== undefined) return hit;
  if (contents.size >= 65_536) contents.clear();
  contents.set(content, content);
  return content;
}

/** A pod's claim on its addresses: its own decisions, then its shared annotation chain. */
class PodClaim implements Claim {
  constructor(
    readonly key: Key,
    readonly content: string,
    readonly own: readonly PortDecision[],
    readonly chain: SharedChain | undefined,
    readonly mesh: MeshPeerSpec | undefined,
  ) {}

  get name(): string {
    return nameOf(this.key);
  }

  order(): string {
    return `1\u0000${rest(this.key)}`;
  }

  decisions(): readonly PortDecision[] {
    if (this.chain === undefined) return this.own;
    return this.own.length === 0 ? this.chain.decisions : [...this.own, ...this.chain.decisions];
  }
}

/** A Service's claim on its clusterIPs inside (part 0) or outside (part 1) clusterNetworks. */
class ServiceClaim implements Claim {
  constructor(
    readonly key: Key,
    readonly part: 0 | 1,
    readonly name: string,
    readonly content: string,
    readonly list: readonly PortDecision[],
  ) {}

  /** A Service address is never meshed: kube-proxy picks the pod, the proxy cannot know its identity. */
  get mesh(): undefined {
    return undefined;
  }

  order(): string {
    return `0\u0000${rest(this.key)}\u0000${this.part}`;
  }

  decisions(): readonly PortDecision[] {
    return this.list;
  }
}

function isAuthz(o: PolicyObject): o is AuthzObject {
  return o.kind === 'AuthorizationPolicy' || o.kind === 'MeshTLSAuthentication' || o.kind === 'NetworkAuthentication';
}

/** The engine's frame of a compiled frame. */
function frameSpec(f: Frame): PolicyFrame {
  return {
    rules: f.rules, fallbackRules: f.fallbackRules, destinationDetectTimeoutMs: f.destinationDetectTimeoutMs, authz: f.authz, meshDestinations: f.meshDestinations,
  };
}

/** An incremental compiler for one proxy's workload. */
export class PolicyCompiler {
  readonly settings: CompilerSettings;
  readonly #objects = new Map<Key, PolicyObject>();
  readonly #origins = new Map<string, Set<Key>>();
  readonly #namespaces = new Map<string, Set<Key>>();
  readonly #services = new Map<string, Set<Key>>();
  readonly #pods = new Map<string, Set<Key>>();
  readonly #servers = new Map<string, Set<Key>>();
  /** AuthorizationPolicies, MeshTLSAuthentications, NetworkAuthentications by namespace. */
  readonly #authz = new Map<string, Set<Key>>();
  #meshDestinations: readonly DestinationSpec[] = [];
  readonly #controllers = new Map<string, Set<Key>>();
  readonly #podsByLabel = new Map<string, Set<Key>>();
  readonly #servicesBySelector = new Map<string, Set<Key>>();
  readonly #selfPods = new Set<Key>();
  readonly #problems = new Map<string, readonly PolicyProblem[]>();
  #problemsVersion = 0;
  #selfAnnotations: { values: Readonly<Record<string, string>>; origin: string | undefined } | undefined;
  #frame: Frame | undefined;
  #frameJson = '';
  #frameDirty = true;
  #frameChange: PolicyFrame | null = null;
  readonly #dirtyServices = new Set<Key>();
  readonly #dirtyPods = new Set<Key>();
  readonly #compiledServices = new Map<Key, { result: ServiceResult; claims: [ServiceClaim | undefined, ServiceClaim | undefined]; addresses: [string[], string[]]; carried: string }>();
  readonly #compiledPods = new Map<Key, { claim: PodClaim; addresses: readonly string[] }>();
  readonly #destinations = new DestinationTable();
  #changed: string[] = [];

  constructor(settings: CompilerSettings) {
    this.settings = settings;
  }

  // ---- inputs

  /** Replaces every object of one origin (a manifest file, a relisted kind). */
  setOrigin(origin: string, objects: readonly PolicyObject[], problems: readonly PolicyProblem[] = []): void {
    const keep = new Set<Key>();
    for (const o of objects) {
      const key = objectKey(o, origin);
      keep.add(key);
      this.#put(key, origin, o);
    }
    for (const key of [...(this.#origins.get(origin) ?? [])]) if (!keep.has(key)) this.#put(key, origin, undefined);
    this.#setProblems(`origin\u0000${origin}`, problems);
  }

  /** Adds or replaces one object; `problems` are what reading it found. */
  upsert(origin: string, object: PolicyObject, problems: readonly PolicyProblem[] = []): void {
    const key = objectKey(object, origin);
    this.#put(key, origin, object);
    this.#setProblems(`object\u0000${key}`, problems);
  }

  /** Removes one object. */
  remove(origin: string, object: { readonly kind: string; readonly namespace?: string; readonly name: string }): void {
    const key = objectKey({ kind: object.kind, namespace: object.namespace ?? '', name: object.name } as PolicyObject, origin);
    this.#put(key, origin, undefined);
    this.#setProblems(`object\u0000${key}`, []);
  }

  /** Problems of an origin as a whole (a file that does not parse, an unreachable API). */
  setOriginProblems(origin: string, problems: readonly PolicyProblem[]): void {
    this.#setProblems(`origin\u0000${origin}`, problems);
  }

  /** The static meshed destinations (`--destinations FILE`); a network listed twice keeps its first entry. */
  setMeshDestinations(origin: string, entries: readonly DestinationSpec[], problems: readonly PolicyProblem[] = []): void {
    const kept = staticDestinations(entries);
    this.#setProblems(`origin\u0000${origin}`, [...problems, ...kept.problems]);
    if (JSON.stringify(kept.entries) === JSON.stringify(this.#meshDestinations)) return;
    this.#meshDestinations = Object.freeze(kept.entries);
    this.#frameDirty = true;
  }

  /** This pod's own annotations (downward-API file); undefined: from its object. */
  setSelfAnnotations(values: Readonly<Record<string, string>> | undefined, origin: string | undefined): void {
    const next = values === undefined ? undefined : { values, origin };
    if (JSON.stringify(next) === JSON.stringify(this.#selfAnnotations)) return;
    this.#selfAnnotations = next;
    this.#frameDirty = true;
  }

  #put(key: Key, origin: string, next: PolicyObject | undefined): void {
    // EndpointSlices are for HTTP balancing (endpoints.ts), not port policy.
    if (next?.kind === 'EndpointSlice') return;
    const prev = this.#objects.get(key);
    if (prev === next) return;
    if (prev) this.#unindex(key, origin, prev);
    if (next) {
      this.#objects.set(key, next);
      this.#index(key, origin, next);
    } else {
      this.#objects.delete(key);
    }
    this.#affect(key, prev, next);
  }

  #index(key: Key, origin: string, o: PolicyObject): void {
    add(this.#origins, origin, key);
    if (o.kind === 'Namespace') add(this.#namespaces, o.name, key);
    else if (o.kind === 'Service') {
      add(this.#services, o.namespace, key);
      const pair = firstPair(o.selector);
      if (pair) add(this.#servicesBySelector, `${o.namespace}\u0000${pair[0]}\u0000${pair[1]}`, key);
    } else if (o.kind === 'Server') add(this.#servers, o.namespace, key);
    else if (isAuthz(o)) add(this.#authz, o.namespace, key);
    else if (o.kind === 'Pod') {
      add(this.#pods, o.namespace, key);
      for (const k in o.labels) add(this.#podsByLabel, `${o.namespace}\u0000${k}\u0000${o.labels[k]}`, key);
      if (o.name === this.settings.identity.pod && o.namespace === selfNamespace(this.settings.identity)) this.#selfPods.add(key);
    } else add(this.#controllers, o.namespace, key);
  }

  #unindex(key: Key, origin: string, o: PolicyObject): void {
    del(this.#origins, origin, key);
    if (o.kind === 'Namespace') del(this.#namespaces, o.name, key);
    else if (o.kind === 'Service') {
      del(this.#services, o.namespace, key);
      const pair = firstPair(o.selector);
      if (pair) del(this.#servicesBySelector, `${o.namespace}\u0000${pair[0]}\u0000${pair[1]}`, key);
    } else if (o.kind === 'Server') del(this.#servers, o.namespace, key);
    else if (isAuthz(o)) del(this.#authz, o.namespace, key);
    else if (o.kind === 'Pod') {
      del(this.#pods, o.namespace, key);
      for (const k in o.labels) del(this.#podsByLabel, `${o.namespace}\u0000${k}\u0000${o.labels[k]}`, key);
      this.#selfPods.delete(key);
    } else del(this.#controllers, o.namespace, key);
  }

  /** Marks what a change of one object affects. */
  #affect(key: Key, prev: PolicyObject | undefined, next: PolicyObject | undefined): void {
    const o = (next ?? prev) as PolicyObject;
    const identity = this.settings.identity;
    switch (o.kind) {
      case 'Namespace': {
        const problems: PolicyProblem[] = [];
        // Validated even when nothing inherits the value (names resolve per object later).
        if (next) readPortAnnotation({ kind: 'Namespace', namespace: '', name: o.name }, (next as NamespaceObject).annotations, ANNOTATIONS.opaquePorts, problems, { resolver: () => 1 });
        this.#setProblems(`namespace\u0000${key}`, problems);
        for (const k of this.#services.get(o.name) ?? []) this.#dirtyServices.add(k);
        for (const k of this.#pods.get(o.name) ?? []) this.#dirtyPods.add(k);
        if (o.name === selfNamespace(identity) || o.name === identity.namespace) this.#frameDirty = true;
        break;
      }
      case 'Service':
        this.#dirtyServices.add(key);
        for (const s of [prev, next]) if (s) this.#markSelected(s as ServiceObject);
        break;
      case 'Server':
        for (const s of [prev, next]) if (s) this.#markMatched(s as ServerObject);
        if (o.namespace === selfNamespace(identity)) this.#frameDirty = true;
        break;
      case 'Pod':
        this.#dirtyPods.add(key);
        if (couldBeSelf(identity, o)) this.#frameDirty = true;
        break;
      case 'AuthorizationPolicy':
        if (o.namespace === selfNamespace(identity)) this.#frameDirty = true;
        break;
      case 'MeshTLSAuthentication':
      case 'NetworkAuthentication':
        // Referred to by name from policies of any namespace.
        this.#frameDirty = true;
        break;
      case 'Deployment':
      case 'StatefulSet':
      case 'DaemonSet':
      case 'ReplicaSet':
      case 'Job':
      case 'CronJob':
        // Only to find this proxy's own workload.
        if (couldBeSelf(identity, o)) this.#frameDirty = true;
        break;
      case 'EndpointSlice':
        break; // never stored (#put): endpoints.ts compiles them
    }
  }

  /** Marks the pods a Service selects. */
  #markSelected(svc: ServiceObject): void {
    const pair = firstPair(svc.selector);
    if (!pair) return;
    for (const k of this.#podsByLabel.get(`${svc.namespace}\u0000${pair[0]}\u0000${pair[1]}`) ?? []) {
      const pod = this.#objects.get(k) as WorkloadObject | undefined;
      if (pod && serviceSelects(svc, pod.labels)) this.#dirtyPods.add(k);
    }
  }

  /** Marks the pods a Server may select (by its first matchLabels pair; all pods of the namespace without one). */
  #markMatched(server: ServerObject): void {
    const pair = firstPair(server.matchLabels);
    const candidates = pair ? this.#podsByLabel.get(`${server.namespace}\u0000${pair[0]}\u0000${pair[1]}`) : this.#pods.get(server.namespace);
    for (const k of candidates ?? []) this.#dirtyPods.add(k);
  }

  #setProblems(slot: string, problems: readonly PolicyProblem[]): void {
    const prev = this.#problems.get(slot);
    if (problems.length === 0) {
      if (prev !== undefined) {
        this.#problems.delete(slot);
        this.#problemsVersion++;
      }
      return;
    }
    if (prev !== undefined && prev.length === problems.length && prev.every((p, i) => p.message === problems[i]?.message)) return;
    this.#problems.set(slot, problems);
    this.#problemsVersion++;
  }

  // ---- lookups over the indexes

  #namespace(name: string): NamespaceObject | undefined {
    let best: Key | undefined;
    for (const k of this.#namespaces.get(name) ?? []) if (best === undefined || k < best) best = k;
    return best === undefined ? undefined : (this.#objects.get(best) as NamespaceObject);
  }

  #all<T extends PolicyObject>(index: Map<string, Set<Key>>, at: string): T[] {
    const out: T[] = [];
    for (const k of index.get(at) ?? []) out.push(this.#objects.get(k) as T);
    return out;
  }

  #carriedFor(pod: WorkloadObject): ServiceResult['carried'][number][] {
    const keys = new Set<Key>();
    for (const k in pod.labels) {
      for (const s of this.#servicesBySelector.get(`${pod.namespace}\u0000${k}\u0000${pod.labels[k]}`) ?? []) keys.add(s);
    }
    const out: ServiceResult['carried'][number][] = [];
    for (const k of [...keys].sort()) {
      const svc = this.#objects.get(k) as ServiceObject;
      if (!serviceSelects(svc, pod.labels)) continue;
      out.push(...(this.#compiledServices.get(k)?.result.carried ?? []));
    }
    return out;
  }

  // ---- compiling

  #canonical(ref: { kind: string; namespace: string; name: string }, field: string, addresses: readonly string[], problems: PolicyProblem[]): string[] {
    const out: string[] = [];
    for (const a of addresses) {
      const c = canonicalAddress(a);
      if (c === undefined) problems.push(objectProblem(ref, field, a, 'not an IP address; no outbound policy for it'));
      else if (!out.includes(c)) out.push(c);
    }
    return out;
  }

  #compileService(key: Key, ctx: OutboundContext): void {
    const svc = this.#objects.get(key) as ServiceObject | undefined;
    const prev = this.#compiledServices.get(key);
    const problems: PolicyProblem[] = [];
    const result = svc ? compileService(svc, this.#namespace(svc.namespace), ctx, problems) : undefined;
    const addresses: [string[], string[]] = [[], []];
    const claims: [ServiceClaim | undefined, ServiceClaim | undefined] = [undefined, undefined];
    for (const part of [0, 1] as const) {
      const found = result?.parts.find((p) => p.part === part)?.destination;
      const after = found ? this.#canonical(found.object, 'spec.clusterIPs', found.addresses, problems) : [];
      addresses[part] = after;
      const claim = found && after.length > 0
        ? new ServiceClaim(key, part, describeRef(found.object), sharedContent(`service\u0000${tuples(found.decisions)}`), found.decisions)
        : undefined;
      claims[part] = claim;
      this.#destinations.update(prev?.claims[part], prev?.addresses[part] ?? [], claim, after);
    }
    this.#setProblems(`destination\u0000${key}`, problems);
    const carried = result ? tuples(result.carried.map((c) => c.decision)) + JSON.stringify(result.carried.map((c) => c.targetPort)) : '';
    if (result) this.#compiledServices.set(key, { result, claims, addresses, carried });
    else this.#compiledServices.delete(key);
    // What its pods inherit changed: they recompile too.
    if (prev && prev.carried !== carried && svc) this.#markSelected(svc);
    if (svc) this.#noteChanged(describeRef(ref(svc)));
  }

  #compilePod(key: Key, ctx: OutboundContext): void {
    const pod = this.#objects.get(key) as WorkloadObject | undefined;
    const prev = this.#compiledPods.get(key);
    const problems: PolicyProblem[] = [];
    const result = pod
      ? compilePod(pod, this.#namespace(pod.namespace), this.#all<ServerObject>(this.#servers, pod.namespace), this.#carriedFor(pod), ctx, problems)
      : undefined;
    let addresses: readonly string[] = result ? this.#canonical(result.object, 'status.podIPs', result.addresses, problems) : [];
    // Usually the canonical form is the pod's own list: keep that one.
    if (result && addresses.length === result.addresses.length && addresses.every((a, i) => a === result.addresses[i])) addresses = result.addresses;
    const claim = result && addresses.length > 0
      ? new PodClaim(key, sharedContent(`pod\u0000${result.ownKey}\u0000${result.chain?.key ?? ''}\u0000${peerKey(result.mesh)}`), result.own, result.chain, result.mesh)
      : undefined;
    this.#destinations.update(prev?.claim, prev?.addresses ?? [], claim, addresses);
    this.#setProblems(`destination\u0000${key}`, problems);
    if (claim) this.#compiledPods.set(key, { claim, addresses });
    else this.#compiledPods.delete(key);
    if (pod) this.#noteChanged(describeRef(ref(pod)));
  }

  #noteChanged(name: string): void {
    if (this.#changed.length < 8) this.#changed.push(name);
  }

  #findSelf(): WorkloadObject | undefined {
    const identity = this.settings.identity;
    const candidates: WorkloadObject[] = [];
    for (const k of this.#selfPods) candidates.push(this.#objects.get(k) as WorkloadObject);
    for (const k of this.#controllers.get(selfNamespace(identity)) ?? []) candidates.push(this.#objects.get(k) as WorkloadObject);
    return findWorkload(identity, candidates);
  }

  /** True when something is marked for recompiling. */
  get dirty(): boolean {
    return this.#frameDirty || this.#dirtyServices.size > 0 || this.#dirtyPods.size > 0;
  }

  /** Recompiles what changed; returns the change for the engine, or undefined when the table did not change. */
  flush(): CompilerChange | undefined {
    this.#recompile();
    const frame = this.#frameChange;
    this.#frameChange = null;
    const changes = this.#destinations.takeChanges();
    const changed = this.#changed;
    this.#changed = [];
    if (frame === null && changes === undefined) return undefined;
    return { frame, changed, ...(changes ?? { tables: [], dropTables: [], addresses: [], removeAddresses: [] }) };
  }

  /** Recompiles what is marked; the changes wait for the next flush(). */
  #recompile(): void {
    if (this.#frameDirty || this.#frame === undefined) {
      this.#frameDirty = false;
      const before = this.#frame?.context.externalProfiles.enabled;
      const allAuthz: AuthzObject[] = [];
      for (const keys of this.#authz.values()) for (const k of keys) allAuthz.push(this.#objects.get(k) as AuthzObject);
      const next = compileFrame(
        this.settings, this.#findSelf(), this.#selfAnnotations,
        this.#all<ServerObject>(this.#servers, selfNamespace(this.settings.identity)), (n) => this.#namespace(n),
        allAuthz, this.#meshDestinations,
      );
      this.#setProblems('frame', next.problems);
      const json = JSON.stringify([next.rules, next.fallbackRules, next.destinationDetectTimeoutMs, next.authz, next.meshDestinations]);
      if (json !== this.#frameJson) {
        this.#frameJson = json;
        this.#frameChange = frameSpec(next);
      }
      this.#frame = next;
      // Which clusterIPs count as inside clusterNetworks depends on enable-external-profiles.
      if (before !== undefined && before !== next.context.externalProfiles.enabled) {
        for (const k of this.#compiledServices.keys()) this.#dirtyServices.add(k);
      }
    }
    const ctx = this.#frame.context;
    for (const k of this.#dirtyServices) this.#compileService(k, ctx);
    this.#dirtyServices.clear();
    for (const k of this.#dirtyPods) this.#compilePod(k, ctx);
    this.#dirtyPods.clear();
    this.#destinations.settle();
  }

  /** The ordered rules of the current table (recompiling what is marked; the changes still wait for flush()). */
  frame(): PolicyFrame {
    if (this.dirty || this.#frame === undefined) this.#recompile();
    return frameSpec(this.#frame as Frame);
  }

  /** The whole current table (recompiling what is marked; the changes still wait for flush()). */
  table(generation: number): PolicyTable {
    if (this.dirty || this.#frame === undefined) this.#recompile();
    const frame = this.#frame as Frame;
    const whole = this.#destinations.whole();
    return {
      generation,
      rules: frame.rules,
      fallbackRules: frame.fallbackRules,
      destinationDetectTimeoutMs: frame.destinationDetectTimeoutMs,
      tables: whole.tables,
      addresses: whole.addresses,
      authz: frame.authz,
      meshDestinations: frame.meshDestinations,
    };
  }

  /** The effective policy with every destination (O(cluster): for explain and /policy, not per change). */
  effective(limit = Number.POSITIVE_INFINITY): { effective: EffectivePolicy; destinations: number } {
    if (this.dirty || this.#frame === undefined) this.#recompile();
    const frame = this.#frame as Frame;
    const all: [string, () => DestinationPolicy][] = [];
    for (const [k, s] of this.#compiledServices) for (const p of s.result.parts) all.push([`0\u0000${rest(k)}\u0000${p.part}`, () => p.destination]);
    for (const [k, p] of this.#compiledPods) {
      const pod = this.#objects.get(k);
      if (!pod) continue;
      all.push([`1\u0000${rest(k)}`, () => podDestination({ object: ref(pod), addresses: p.addresses, own: p.claim.own, ownKey: '', chain: p.claim.chain, mesh: p.claim.mesh })]);
    }
    all.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const destinations = all.slice(0, limit).map(([, d]) => d());
    const effective: EffectivePolicy = { ...frame.effective, outbound: { ...frame.effective.outbound, destinations } };
    return { effective, destinations: all.length };
  }

  /** Every problem, origins first, each message once. */
  problems(): PolicyProblem[] {
    const seen = new Set<string>();
    const out: PolicyProblem[] = [];
    const push = (list: readonly PolicyProblem[]): void => {
      for (const p of list) {
        if (seen.has(p.message)) continue;
        seen.add(p.message);
        out.push(p);
      }
    };
    for (const [slot, list] of this.#problems) if (slot.startsWith('origin\u0000')) push(list);
    for (const [slot, list] of this.#problems) if (!slot.startsWith('origin\u0000')) push(list);
    return out;
  }

  /** Changes whenever the problems do. */
  get problemsVersion(): number {
    return this.#problemsVersion;
  }

  /** Sizes, for /policy and logs. */
  stats(): { objects: number; addresses: number; tables: number } {
    return { objects: this.#objects.size, addresses: this.#destinations.addresses, tables: this.#destinations.tables };
  }
}
