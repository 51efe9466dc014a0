/**
 * Outbound decisions: what a connection from this workload to a given
 * destination address and port should be, from the destination's objects.
 *
 * Per Service port (applied to the Service's clusterIPs):
 *   appProtocol (linkerd.io/opaque -> opaque, http -> http1,
 *   kubernetes.io/h2c -> http2) > the Service's opaque-ports annotation
 *   (port names resolve against Service port names) > the destination
 *   namespace's annotation (only when the Service has none; no merge) >
 *   cluster defaults (default opaque ports, inside clusterNetworks).
 * Per Pod IP (pods with a known status.podIP):
 *   a Server selecting the pod's port > a selecting Service's appProtocol or
 *   opaque decision carried over through targetPort > the Pod's own
 *   opaque-ports (or its namespace's) > cluster defaults.
 * An annotation replaces the defaults, so a default opaque port that the
 * annotation does not list gets an explicit `detect` decision (otherwise the
 * generic cluster-default rule would catch it).
 */

import type { NamespaceObject, ObjectRef, ServiceObject, WorkloadObject } from './k8s/objects.js';
import { describeRef, serviceSelects } from './k8s/objects.js';
import {
  containerPortResolver,
  readPortAnnotation,
  serverDecisions,
  servicePortResolver,
  subtractRanges,
  type PortAnnotation,
} from './annotations.js';
import { inNetworks, isCidrError, parseCidr, type Cidr } from './cidr.js';
import {
  ANNOTATIONS,
  APP_PROTOCOL_MODES,
  type DestinationPolicy,
  type EffectivePolicy,
  type PolicyInputs,
  type PortDecision,
  type PortMode,
} from './model.js';
import { objectProblem, type PolicyProblem } from './problems.js';
import { formatPortList, portInRanges, type PortRange } from '../config/index.js';

interface OutboundContext {
  readonly externalProfiles: { readonly enabled: boolean; readonly source: string };
}

function d(from: number, to: number, mode: PortMode, source: string, name?: string): PortDecision {
  return Object.freeze({ ports: Object.freeze({ from, to }), name, mode, source });
}

function ref(o: { kind: string; namespace?: string; name: string }): ObjectRef {
  return { kind: o.kind, namespace: o.namespace ?? '', name: o.name };
}

/** The opaque-ports chain of an object: its own annotation, else its namespace's. */
function opaqueChain(
  object: ObjectRef,
  annotations: Readonly<Record<string, string>>,
  ns: NamespaceObject | undefined,
  resolve: { resolver: ReturnType<typeof servicePortResolver> | undefined; namedPorts: readonly { name: string | undefined; port: number }[] | undefined },
  problems: PolicyProblem[],
): { value: PortAnnotation; label: string } | undefined {
  const own = readPortAnnotation(object, annotations, ANNOTATIONS.opaquePorts, problems, resolve);
  const kindWord = object.kind === 'Service' ? 'Service' : 'pod';
  if (own.present) return { value: own, label: `${kindWord} annotation ${ANNOTATIONS.opaquePorts} on ${describeRef(object)}` };
  if (!ns) return undefined;
  const nsRef: ObjectRef = { kind: 'Namespace', namespace: '', name: ns.name };
  const inherited = readPortAnnotation(nsRef, ns.annotations, ANNOTATIONS.opaquePorts, problems, { ...resolve, resolvingFor: object });
  if (!inherited.present) return undefined;
  return { value: inherited, label: `namespace annotation ${ANNOTATIONS.opaquePorts} on Namespace ${ns.name} (inherited by ${describeRef(object)})` };
}

/** A Service's decisions per port; `positive` ones also apply to its pods via targetPort. */
function serviceDecisions(
  svc: ServiceObject, ns: NamespaceObject | undefined, defaults: readonly PortRange[], problems: PolicyProblem[],
): { port: number; targetPort: number | string; decision: PortDecision; positive: boolean }[] {
  const svcRef = ref(svc);
  const chain = opaqueChain(svcRef, svc.annotations, ns, {
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
        decision: d(p.port, p.port, appMode, `${appMode}: appProtocol ${p.appProtocol} on ${describeRef(svcRef)} port ${label}`, p.name) });
    } else if (chain) {
      if (portInRanges(p.port, chain.value.ranges)) {
        out.push({ port: p.port, targetPort, positive: true, decision: d(p.port, p.port, 'opaque', `opaque: ${chain.label}`, p.name) });
      } else if (portInRanges(p.port, defaults)) {
        out.push({ port: p.port, targetPort, positive: false,
          decision: d(p.port, p.port, 'detect', `detect: not listed in ${chain.label} (it replaces the defaults)`, p.name) });
      }
    } else if (portInRanges(p.port, defaults)) {
      out.push({ port: p.port, targetPort, positive: false, decision: d(p.port, p.port, 'opaque', `opaque: default opaque ports (${p.port})`, p.name) });
    }
  }
  return out;
}

/** Compiles the outbound half of the effective policy. */
export function compileOutbound(
  inputs: PolicyInputs, ctx: OutboundContext, problems: PolicyProblem[],
): { destinations: DestinationPolicy[]; defaults: EffectivePolicy['outbound']['defaults'] } {
  const networks: Cidr[] = [];
  for (const n of inputs.clusterNetworks) {
    const c = parseCidr(n);
    if (!isCidrError(c)) networks.push(c);
  }
  const external = ctx.externalProfiles.enabled;
  const defaults = inputs.defaultOpaquePorts;
  const m = inputs.manifests;
  const nsByName = new Map(m.namespaces.map((n) => [n.name, n] as const));
  const destinations: DestinationPolicy[] = [];
  const byName = <T extends { namespace: string; name: string }>(a: T, b: T): number =>
    a.namespace === b.namespace ? (a.name < b.name ? -1 : 1) : a.namespace < b.namespace ? -1 : 1;

  // Services: decisions for their clusterIPs; positive ones are kept for their pods.
  const carried: { svc: ServiceObject; port: number; targetPort: number | string; decision: PortDecision }[] = [];
  for (const svc of [...m.services].sort(byName)) {
    const decisions = serviceDecisions(svc, nsByName.get(svc.namespace), defaults, problems);
    for (const x of decisions) if (x.positive) carried.push({ svc, port: x.port, targetPort: x.targetPort, decision: x.decision });
    const inside = svc.clusterIPs.filter((ip) => external || inNetworks(networks, ip));
    const outside = svc.clusterIPs.filter((ip) => !inside.includes(ip));
    const list = decisions.map((x) => x.decision);
    if (svc.clusterIPs.length === 0 || inside.length > 0) {
      destinations.push({ object: ref(svc), addresses: inside, decisions: list });
    }
    if (outside.length > 0) {
      // Linkerd gives no cluster defaults to addresses outside clusterNetworks.
      const adjusted = list.map((x) => x.source.startsWith('opaque: default opaque ports')
        ? d(x.ports.from, x.ports.to, 'detect', `detect: clusterIP outside clusterNetworks, default opaque ports not applied (no ${ANNOTATIONS.enableExternalProfiles})`, x.name)
        : x);
      destinations.push({ object: ref(svc), addresses: outside, decisions: adjusted });
    }
  }

  // Pods with known IPs.
  const pods = m.workloads.filter((w): w is WorkloadObject => w.kind === 'Pod' && w.podIPs.length > 0).sort(byName);
  for (const pod of pods) {
    const podRef = ref(pod);
    const decisions: PortDecision[] = [];
    for (const s of serverDecisions(m.servers, pod.namespace, pod.labels, pod.containerPorts, podRef, problems)) {
      decisions.push(d(s.port, s.port, s.mode, s.source, s.name));
    }
    for (const c of carried) {
      if (c.svc.namespace !== pod.namespace || !serviceSelects(c.svc, pod.labels)) continue;
      let tp: number | undefined;
      if (typeof c.targetPort === 'number') tp = c.targetPort;
      else tp = pod.containerPorts.find((p) => p.name === c.targetPort)?.port;
      if (tp === undefined) {
        problems.push(objectProblem(ref(c.svc), 'spec.ports[].targetPort', String(c.targetPort),
          `no container port named "${c.targetPort}" on ${describeRef(podRef)}`));
        continue;
      }
      decisions.push(d(tp, tp, c.decision.mode, `${c.decision.source} (targetPort ${tp} of Service port ${c.port})`));
    }
    const chain = opaqueChain(podRef, pod.annotations, nsByName.get(pod.namespace), {
      resolver: containerPortResolver(pod.containerPorts), namedPorts: pod.containerPorts,
    }, problems);
    if (chain) {
      for (const r of chain.value.ranges) decisions.push(d(r.from, r.to, 'opaque', `opaque: ${chain.label}`));
      for (const r of subtractRanges(defaults, chain.value.ranges)) {
        decisions.push(d(r.from, r.to, 'detect', `detect: not listed in ${chain.label} (it replaces the defaults)`));
      }
    }
    if (decisions.length > 0) destinations.push({ object: podRef, addresses: pod.podIPs, decisions });
  }

  const list = formatPortList(defaults);
  const generic: { net: string | null; ports: PortRange; source: string }[] = [];
  for (const net of networks) {
    for (const r of defaults) generic.push({ net: net.text, ports: r, source: `opaque: default opaque ports (${list}) inside clusterNetworks` });
  }
  // Loopback never leaves the pod (Linkerd's iptables never redirect it), so the only loopback
  // destinations meshpipe sees are explicit --forward targets: local, hence "in cluster".
  for (const net of ['127.0.0.0/8', '::1/128']) {
    for (const r of defaults) generic.push({ net, ports: r, source: `opaque: default opaque ports (${list}) for loopback (local --forward targets)` });
  }
  if (external) {
    for (const r of defaults) {
      generic.push({ net: null, ports: r, source: `opaque: default opaque ports (${list}) outside clusterNetworks: ${ctx.externalProfiles.source}` });
    }
  }
  return { destinations, defaults: generic };
}
