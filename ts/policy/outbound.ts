/**
 * Outbound decisions: what a connection from this workload to a given
 * destination address and port should be, from the destination's objects,
 * one object at a time (the incremental compiler in compiler.ts recomputes
 * only the objects a change touches).
 *
 * Per Service port (applied to the Service's clusterIPs):
 *   appProtocol (linkerd.io/opaque -> opaque, http -> http1,
 *   kubernetes.io/h2c -> http2) > the Service's opaque-ports annotation
 *   (port names resolve against Service port names) > the destination
 *   namespace's annotation (only when the Service has none; no merge) >
 *   cluster defaults (default opaque ports, inside clusterNetworks).
 * Per Pod IP (pods with a known status.podIP, not Succeeded or Failed):
 *   a Server selecting the pod's port > a selecting Service's appProtocol or
 *   opaque decision carried over through targetPort > the Pod's own
 *   opaque-ports (or its namespace's) > cluster defaults; and, for a pod
 *   with the sidecar, its mesh peer (mesh-destinations.ts): connections to
 *   any of its ports then go over mutual TLS through its tunnel port.
 * An annotation replaces the defaults, so a default opaque port that the
 * annotation does not list gets an explicit `detect` decision (otherwise the
 * generic cluster-default rule would catch it).
 *
 * A pod's annotation-derived decisions are the same for every pod with the
 * same value (all replicas of a workload, every pod of a namespace that
 * inherits its value), so they are built once per value and shared; their
 * sources say `{destination}` where the pod's name goes (the engine and
 * explain put the name in when they show a source).
 */

import type { NamespaceObject, ObjectRef, ServerObject, ServiceObject, WorkloadObject } from './k8s/objects.js';
import { describeRef } from './k8s/objects.js';
import {
  containerPortResolver,
  readPortAnnotation,
  serverDecisions,
  servicePortResolver,
  subtractRanges,
  type PortAnnotation,
} from './annotations.js';
import { inNetworks, type Cidr } from './cidr.js';
import {
  ANNOTATIONS,
  APP_PROTOCOL_MODES,
  type DestinationPolicy,
  type EffectivePolicy,
  type MeshPeerSpec,
  type MeshSettings,
  type PortDecision,
  type PortMode,
} from './model.js';
import { meshPeerOf } from './mesh-destinations.js';
import { objectProblem, type PolicyProblem } from './problems.js';
import { formatPortList, portInRanges, type PortRange } from '../config/index.js';

/** Where a destination's own name goes in a shared source. */
export const DESTINATION = '{destination}';

/** What every outbound decision depends on besides the destination's own objects. */
export interface OutboundContext {
  readonly networks: readonly Cidr[];
  readonly defaults: readonly PortRange[];
  readonly externalProfiles: { readonly enabled: boolean; readonly source: string };
  /** How meshed pods' identities are named. */
  readonly mesh: MeshSettings;
}

export function decision(from: number, to: number, mode: PortMode, source: string, name?: string): PortDecision {
  return Object.freeze({ ports: Object.freeze({ from, to }), name, mode, source });
}

export function ref(o: { kind: string; namespace?: string; name: string }): ObjectRef {
  return { kind: o.kind, namespace: o.namespace ?? '', name: o.name };
}

/** The opaque-ports chain of an object: its own annotation, else its namespace's. `who` names the object in the label. */
function opaqueChain(
  object: ObjectRef,
  who: string,
  annotations: Readonly<Record<string, string>>,
  ns: NamespaceObject | undefined,
  resolve: { resolver: ReturnType<typeof servicePortResolver> | undefined; namedPorts: readonly { name: string | undefined; port: number }[] | undefined },
  problems: PolicyProblem[],
): { value: PortAnnotation; label: string } | undefined {
  const own = readPortAnnotation(object, annotations, ANNOTATIONS.opaquePorts, problems, resolve);
  const kindWord = object.kind === 'Service' ? 'Service' : 'pod';
  if (own.present) return { value: own, label: `${kindWord} annotation ${ANNOTATIONS.opaquePorts} on ${who}` };
  if (!ns) return undefined;
  const nsRef: ObjectRef = { kind: 'Namespace', namespace: '', name: ns.name };
  const inherited = readPortAnnotation(nsRef, ns.annotations, ANNOTATIONS.opaquePorts, problems, { ...resolve, resolvingFor: object });
  if (!inherited.present) return undefined;
  return { value: inherited, label: `namespace annotation ${ANNOTATIONS.opaquePorts} on Namespace ${ns.name} (inherited by ${who})` };
}

/** A Service decision that also applies to the Service's pods through targetPort. */
export interface CarriedDecision {
  readonly service: ServiceObject;
  readonly port: number;
  readonly targetPort: number | string;
  readonly decision: PortDecision;
}

/** A Service's decisions per port; `positive` ones also apply to its pods via targetPort. */
function serviceDecisions(
  svc: ServiceObject, ns: NamespaceObject | undefined, defaults: readonly PortRange[], problems: PolicyProblem[],
): { port: number; targetPort: number | string; decision: PortDecision; positive: boolean }[] {
  const svcRef = ref(svc);
  const chain = opaqueChain(svcRef, describeRef(svcRef), svc.annotations, ns, {
    resolver: servicePortResolver(svc.ports), namedPorts: svc.ports,
  }, problems);
  const out: { port: number; targetPort: number | string; decision: PortDecision; positive: boolean }[] = [];
  for (const p of svc.ports) {
    if (p.protocol !== 'TCP') continue;
    const label = p.name ? `${p.port} (${p.name})` : String(p.port);
    const targetPort = p.targetPort ?? p.port;
    const appMode = p.appProtocol === undefined ? undefined : APP_PROTOCOL_MODES[p.appProtocol];
    if (appMode !== undefined) {
      out.push({ port: p.port, targetPort, positive: true,
        decision: decision(p.port, p.port, appMode, `${appMode}: appProtocol ${p.appProtocol} on ${describeRef(svcRef)} port ${label}`, p.name) });
    } else if (chain) {
      if (portInRanges(p.port, chain.value.ranges)) {
        out.push({ port: p.port, targetPort, positive: true, decision: decision(p.port, p.port, 'opaque', `opaque: ${chain.label}`, p.name) });
      } else if (portInRanges(p.port, defaults)) {
        out.push({ port: p.port, targetPort, positive: false,
          decision: decision(p.port, p.port, 'detect', `detect: not listed in ${chain.label} (it replaces the defaults)`, p.name) });
      }
    } else if (portInRanges(p.port, defaults)) {
      out.push({ port: p.port, targetPort, positive: false, decision: decision(p.port, p.port, 'opaque', `opaque: default opaque ports (${p.port})`, p.name) });
    }
  }
  return out;
}

/** One Service's destinations (its clusterIPs inside and outside clusterNetworks) and what its pods inherit. */
export interface ServiceResult {
  /** Part 0: inside clusterNetworks (or no clusterIP at all); part 1: outside. */
  readonly parts: readonly { readonly part: 0 | 1; readonly destination: DestinationPolicy }[];
  readonly carried: readonly CarriedDecision[];
}

export function compileService(
  svc: ServiceObject, ns: NamespaceObject | undefined, ctx: OutboundContext, problems: PolicyProblem[],
): ServiceResult {
  const decisions = serviceDecisions(svc, ns, ctx.defaults, problems);
  const carried: CarriedDecision[] = [];
  for (const x of decisions) if (x.positive) carried.push({ service: svc, port: x.port, targetPort: x.targetPort, decision: x.decision });
  const external = ctx.externalProfiles.enabled;
  const inside = svc.clusterIPs.filter((ip) => external || inNetworks(ctx.networks, ip));
  const outside = svc.clusterIPs.filter((ip) => !inside.includes(ip));
  const list = decisions.map((x) => x.decision);
  const parts: { part: 0 | 1; destination: DestinationPolicy }[] = [];
  if (svc.clusterIPs.length === 0 || inside.length > 0) {
    parts.push({ part: 0, destination: { object: ref(svc), addresses: inside, decisions: list } });
  }
  if (outside.length > 0) {
    // Linkerd gives no cluster defaults to addresses outside clusterNetworks.
    const adjusted = list.map((x) => x.source.startsWith('opaque: default opaque ports')
      ? decision(x.ports.from, x.ports.to, 'detect', `detect: clusterIP outside clusterNetworks, default opaque ports not applied (no ${ANNOTATIONS.enableExternalProfiles})`, x.name)
      : x);
    parts.push({ part: 1, destination: { object: ref(svc), addresses: outside, decisions: adjusted } });
  }
  return { parts, carried };
}

/** A pod's annotation-derived decisions, shared by every pod with the same value. */
export interface SharedChain {
  /** Identifies the content (value, how names resolved, which level it came from). */
  readonly key: string;
  readonly decisions: readonly PortDecision[];
}

/** A pod destination as segments: its own Servers and carried decisions, then a shared chain. */
export interface PodResult {
  readonly object: ObjectRef;
  readonly addresses: readonly string[];
  /** Servers and carried Service decisions (specific to the pod's labels; shared by equal pods). */
  readonly own: readonly PortDecision[];
  /** Identifies `own`'s content (equal lists, equal keys). */
  readonly ownKey: string;
  readonly chain: SharedChain | undefined;
  /** A meshed pod's peer (shared by every pod with the same one). */
  readonly mesh: MeshPeerSpec | undefined;
}

// Decisions and lists of them recur on every replica: one instance each (bounded tables).
const SHARED_MAX = 65_536;
const sharedDecisions = new Map<string, PortDecision>();
const sharedLists = new Map<string, { key: string; list: readonly PortDecision[] }>();
const decisionIds = new WeakMap<PortDecision, number>();
let lastDecisionId = 0;

function sharedDecision(d: PortDecision): PortDecision {
  const key = `${d.ports.from}\u0000${d.ports.to}\u0000${d.mode}\u0000${d.name ?? ''}\u0000${d.source}`;
  const hit = sharedDecisions.get(key);
  if (hit) return hit;
  if (sharedDecisions.size >= SHARED_MAX) sharedDecisions.clear();
  sharedDecisions.set(key, d);
  decisionIds.set(d, ++lastDecisionId);
  return d;
}

const NONE: readonly PortDecision[] = Object.freeze([]);

function sharedList(list: readonly PortDecision[]): { key: string; list: readonly PortDecision[] } {
  if (list.length === 0) return { key: '', list: NONE };
  const shared = list.map(sharedDecision);
  const key = shared.map((d) => decisionIds.get(d) ?? 0).join(',');
  const hit = sharedLists.get(key);
  if (hit) return hit;
  if (sharedLists.size >= SHARED_MAX) sharedLists.clear();
  const entry = { key, list: Object.freeze(shared) };
  sharedLists.set(key, entry);
  return entry;
}

const chainCache = new Map<string, SharedChain>();
const CHAIN_CACHE_MAX = 4096;
// Parsed values are cached (annotations.ts), so equal values share one ranges array: its identity
// keys the chain without formatting a 40 KB list again for every pod.
const rangeIds = new WeakMap<readonly PortRange[], number>();
let lastRangeId = 0;

function rangesId(ranges: readonly PortRange[]): number {
  let id = rangeIds.get(ranges);
  if (id === undefined) {
    id = ++lastRangeId;
    rangeIds.set(ranges, id);
  }
  return id;
}

/** The decisions of an annotation value for pods: listed ranges opaque, unlisted default ports detect. */
function sharedChain(label: string, value: PortAnnotation, defaults: readonly PortRange[]): SharedChain {
  const key = `${label}\u0000${rangesId(value.ranges)}\u0000${rangesId(defaults)}`;
  const hit = chainCache.get(key);
  if (hit) return hit;
  const decisions: PortDecision[] = [];
  for (const r of value.ranges) decisions.push(decision(r.from, r.to, 'opaque', `opaque: ${label}`));
  for (const r of subtractRanges(defaults, value.ranges)) {
    decisions.push(decision(r.from, r.to, 'detect', `detect: not listed in ${label} (it replaces the defaults)`));
  }
  const chain: SharedChain = Object.freeze({ key, decisions: Object.freeze(decisions) });
  if (chainCache.size >= CHAIN_CACHE_MAX) chainCache.delete(chainCache.keys().next().value as string);
  chainCache.set(key, chain);
  return chain;
}

/**
 * One pod's destination. `servers` are the Servers of its namespace,
 * `carried` the decisions of the Services that select it, in Service order.
 * Undefined when it has no address, or neither decisions nor a mesh peer.
 */
export function compilePod(
  pod: WorkloadObject,
  ns: NamespaceObject | undefined,
  servers: readonly ServerObject[],
  carried: readonly CarriedDecision[],
  ctx: OutboundContext,
  problems: PolicyProblem[],
): PodResult | undefined {
  if (pod.podIPs.length === 0) return undefined;
  const podRef = ref(pod);
  const own: PortDecision[] = [];
  for (const s of serverDecisions(servers, pod.namespace, pod.labels, pod.containerPorts, podRef, problems)) {
    own.push(decision(s.port, s.port, s.mode, s.source, s.name));
  }
  for (const c of carried) {
    let tp: number | undefined;
    if (typeof c.targetPort === 'number') tp = c.targetPort;
    else tp = pod.containerPorts.find((p) => p.name === c.targetPort)?.port;
    if (tp === undefined) {
      problems.push(objectProblem(ref(c.service), 'spec.ports[].targetPort', String(c.targetPort),
        `no container port named "${c.targetPort}" on ${describeRef(podRef)}`));
      continue;
    }
    own.push(decision(tp, tp, c.decision.mode, `${c.decision.source} (targetPort ${tp} of Service port ${c.port})`));
  }
  const found = opaqueChain(podRef, DESTINATION, pod.annotations, ns, {
    resolver: containerPortResolver(pod.containerPorts), namedPorts: pod.containerPorts,
  }, problems);
  const chain = found ? sharedChain(found.label, found.value, ctx.defaults) : undefined;
  const mesh = meshPeerOf(pod, ctx.mesh, problems);
  if (own.length === 0 && (chain === undefined || chain.decisions.length === 0) && mesh === undefined) return undefined;
  const ownShared = sharedList(own);
  return { object: podRef, addresses: pod.podIPs, own: ownShared.list, ownKey: ownShared.key, chain, mesh };
}

/** A pod result as the effective policy shows it: every decision, the pod's name in its sources. */
export function podDestination(result: PodResult): DestinationPolicy {
  const name = describeRef(result.object);
  const decisions = [...result.own, ...(result.chain?.decisions ?? [])].map((x) =>
    x.source.includes(DESTINATION) ? decision(x.ports.from, x.ports.to, x.mode, x.source.replaceAll(DESTINATION, name), x.name) : x);
  const mesh = result.mesh ? { ...result.mesh, source: result.mesh.source.replaceAll(DESTINATION, name) } : undefined;
  return { object: result.object, addresses: result.addresses, decisions, ...(mesh ? { mesh } : {}) };
}

/** The cluster-wide defaults (fallback rules): default opaque ports inside clusterNetworks, for loopback, and with external profiles anywhere. */
export function clusterDefaults(ctx: OutboundContext): EffectivePolicy['outbound']['defaults'] {
  const list = formatPortList(ctx.defaults);
  const generic: { net: string | null; ports: PortRange; source: string }[] = [];
  for (const net of ctx.networks) {
    for (const r of ctx.defaults) generic.push({ net: net.text, ports: r, source: `opaque: default opaque ports (${list}) inside clusterNetworks` });
  }
  // Loopback never leaves the pod (Linkerd's iptables never redirect it), so the only loopback
  // destinations meshpipe sees are explicit --forward targets: local, hence "in cluster".
  for (const net of ['127.0.0.0/8', '::1/128']) {
    for (const r of ctx.defaults) generic.push({ net, ports: r, source: `opaque: default opaque ports (${list}) for loopback (local --forward targets)` });
  }
  if (ctx.externalProfiles.enabled) {
    for (const r of ctx.defaults) {
      generic.push({ net: null, ports: r, source: `opaque: default opaque ports (${list}) outside clusterNetworks: ${ctx.externalProfiles.source}` });
    }
  }
  return generic;
}
