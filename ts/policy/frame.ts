/**
 * The frame of the engine table: everything that comes from this proxy's own
 * workload rather than from destinations. That is its inbound decisions, its
 * own outbound switches (skip ports, skip subnets, enable-external-profiles,
 * the detect-timeout annotations), the `--opaque-ports` flag and the cluster
 * defaults, as the ordered `rules` and `fallbackRules` of the engine table
 * (ts/engine/boundary.ts PolicySpec; ARCHITECTURE.md).
 *
 * Inbound, per port of this workload (first present source decides):
 *   skip-inbound-ports (never detected) > `--opaque-ports` flag >
 *   a Server selecting the port (oldest, then by name) >
 *   the workload's opaque-ports annotation > the namespace's annotation
 *   (inherited only when the workload has none; no merge) >
 *   the default opaque ports filtered to the workload's container ports >
 *   detect.
 * The annotation levels are exclusive, as in Linkerd (whose injector writes
 * the defaults only onto objects without the annotation): a workload that sets
 * `opaque-ports: "8080"` gets 8080 opaque and 3306 detected.
 *
 * The table's order encodes the precedence:
 *   rules:         the inbound decisions as compiled (skip ports first, then
 *                  the flag, Servers, the opaque-ports chain), then a catch-all
 *                  inbound `detect` rule only when a timeout annotation
 *                  changed the inbound detect timeout; outbound
 *                  skip-outbound-ports and skip-subnets (opaque: never
 *                  detected, in case such a connection reaches the proxy at
 *                  all), then the --opaque-ports flag;
 *   destinations:  per exact address (compiler.ts, destinations.ts);
 *   fallbackRules: the cluster defaults (default opaque ports per
 *                  clusterNetwork and for loopback, and for any address with
 *                  enable-external-profiles), then the outbound timeout
 *                  catch-all if overridden.
 *
 * The frame also carries this workload's mesh parts: its inbound
 * authorization (authz.ts: its Servers, Linkerd's authorization resources,
 * the default inbound policy, and the ports its containers expose, which
 * bound the 4143 tunnel) and the static meshed destinations
 * (`--destinations FILE`, mesh-destinations.ts).
 */

import type { AuthzObject, NamespaceObject, ObjectRef, ServerObject, WorkloadObject } from './k8s/objects.js';
import { describeRef } from './k8s/objects.js';
import {
  containerPortResolver,
  filterRangesToPorts,
  readBoolAnnotation,
  readPortAnnotation,
  readSubnetsAnnotation,
  serverDecisions,
} from './annotations.js';
import { compileAuthz } from './authz.js';
import {
  ANNOTATIONS,
  DISABLED_DETECT_TIMEOUT_MS,
  type AuthzSpec,
  type DestinationSpec,
  type MeshSettings,
  type DetectTimeout,
  type Direction,
  type EffectivePolicy,
  type PolicyRule,
  type PortDecision,
  type PortMode,
  type WorkloadIdentity,
} from './model.js';
import { clusterDefaults, decision, type OutboundContext } from './outbound.js';
import type { PolicyProblem } from './problems.js';
import type { Cidr } from './cidr.js';
import { formatPortList, type PortRange } from '../config/index.js';

/** What the compiler is configured with (install-time defaults and flags). */
export interface CompilerSettings {
  /** Replaceable as a whole (Linkerd's proxy.opaquePorts). */
  readonly defaultOpaquePorts: readonly PortRange[];
  /** `--opaque-ports`: this proxy's own opaque ports, both directions, any address. */
  readonly opaquePorts: readonly PortRange[];
  /** Where `opaquePorts` came from, for sources (default `--opaque-ports flag`). */
  readonly opaquePortsOrigin?: string | undefined;
  /** Parsed clusterNetworks. */
  readonly networks: readonly Cidr[];
  readonly inboundDetectTimeoutMs: number;
  readonly outboundDetectTimeoutMs: number;
  readonly identity: WorkloadIdentity;
  readonly mesh: MeshSettings;
}

/** This proxy's own workload, as far as the inputs identify it. */
export interface SelfWorkload {
  /** The object the annotations are attributed to in problems. */
  readonly ref: ObjectRef;
  readonly workload: WorkloadObject | undefined;
  readonly annotations: Readonly<Record<string, string>>;
  /** e.g. `on Deployment db/mysql` or `on Pod db/x (annotations file /etc/podinfo/annotations)`. */
  readonly where: string;
  /** The annotations file path when the annotations came from one (for problems). */
  readonly file: string | undefined;
}

/** The namespace findWorkload looks in. */
export function selfNamespace(identity: WorkloadIdentity): string {
  return identity.namespace ?? 'default';
}

/** True when a workload object could be this proxy's (its name is the pod's, or a `<name>-` prefix of it). */
export function couldBeSelf(identity: WorkloadIdentity, w: { kind: string; namespace: string; name: string }): boolean {
  const pod = identity.pod;
  if (pod === undefined || w.namespace !== selfNamespace(identity)) return false;
  return w.name === pod || (w.kind !== 'Pod' && pod.startsWith(`${w.name}-`));
}

/**
 * Finds this proxy's workload among the candidates of its namespace: the Pod
 * with that name, else the workload controller whose name is the longest
 * `<name>-` prefix of the pod name (Deployment `web` for pod
 * `web-5d8f7c9b4-x2x7q`, StatefulSet `db` for `db-0`).
 */
export function findWorkload(identity: WorkloadIdentity, candidates: Iterable<WorkloadObject>): WorkloadObject | undefined {
  const { pod } = identity;
  if (pod === undefined) return undefined;
  const namespace = selfNamespace(identity);
  let exact: WorkloadObject | undefined;
  let best: WorkloadObject | undefined;
  for (const w of candidates) {
    if (w.namespace !== namespace) continue;
    if (w.kind === 'Pod') {
      if (w.name === pod) exact ??= w;
      continue;
    }
    if (w.name === pod || pod.startsWith(`${w.name}-`)) {
      if (!best || w.name.length > best.name.length) best = w;
    }
  }
  return exact ?? best;
}

/** Resolves this proxy's workload and the annotations that apply to it. */
export function resolveSelf(
  identity: WorkloadIdentity,
  workload: WorkloadObject | undefined,
  workloadAnnotations: Readonly<Record<string, string>> | undefined,
  annotationsOrigin: string | undefined,
): SelfWorkload {
  const namespace = identity.namespace ?? workload?.namespace ?? '';
  const ref: ObjectRef = identity.pod !== undefined
    ? { kind: 'Pod', namespace: namespace === '' ? 'default' : namespace, name: identity.pod }
    : workload ? { kind: workload.kind, namespace: workload.namespace, name: workload.name } : { kind: 'Pod', namespace, name: '(this pod)' };
  if (workloadAnnotations !== undefined) {
    const origin = annotationsOrigin === undefined ? '' : ` (annotations file ${annotationsOrigin})`;
    const on = identity.pod !== undefined ? ` on ${describeRef(ref)}` : '';
    return { ref, workload, annotations: workloadAnnotations, where: `${on}${origin}`.trim(), file: annotationsOrigin };
  }
  if (workload) {
    const wref = { kind: workload.kind, namespace: workload.namespace, name: workload.name };
    return { ref: wref, workload, annotations: workload.annotations, where: `on ${describeRef(wref)}`, file: undefined };
  }
  return { ref, workload, annotations: {}, where: `on ${describeRef(ref)}`, file: undefined };
}

function timeoutFor(
  self: SelfWorkload, key: string, configuredMs: number, direction: string, problems: PolicyProblem[],
): DetectTimeout {
  const flag = readBoolAnnotation(self.ref, self.annotations, key, problems, self.file);
  if (flag.value) return { ms: DISABLED_DETECT_TIMEOUT_MS, source: `365d: ${key} ${self.where}`, overridden: true };
  return { ms: configuredMs, source: `configured ${direction} detect timeout`, overridden: false };
}

/** Inbound decisions for this workload, in precedence order. */
function compileInbound(
  settings: CompilerSettings, self: SelfWorkload, skipInbound: readonly PortRange[], servers: readonly ServerObject[],
  namespace: (name: string) => NamespaceObject | undefined, problems: PolicyProblem[],
): { decisions: PortDecision[]; ports: PortDecision[] } {
  const decisions: PortDecision[] = [];
  const containerPorts = self.workload?.containerPorts;
  const nameOf = (port: number): string | undefined => containerPorts?.find((p) => p.port === port)?.name;
  const at = (r: PortRange, mode: PortMode, source: string, name?: string): PortDecision => decision(r.from, r.to, mode, source, name);
  const skipSource = `skip: ${ANNOTATIONS.skipInboundPorts} ${self.where} (bypasses the proxy; opaque if it arrives)`;
  for (const r of skipInbound) decisions.push(at(r, 'opaque', skipSource));
  const flagSource = `opaque: ${settings.opaquePortsOrigin ?? '--opaque-ports flag'}`;
  for (const r of settings.opaquePorts) decisions.push(at(r, 'opaque', flagSource));

  if (self.workload) {
    for (const d of serverDecisions(servers, self.workload.namespace, self.workload.labels, self.workload.containerPorts, self.ref, problems)) {
      decisions.push(decision(d.port, d.port, d.mode, d.source, d.name));
    }
  }

  // The opaque-ports chain: workload annotation, else namespace annotation, else defaults.
  const resolver = containerPortResolver(containerPorts);
  const own = readPortAnnotation(self.ref, self.annotations, ANNOTATIONS.opaquePorts, problems, {
    resolver, namedPorts: containerPorts, origin: self.file,
  });
  let fallback: string;
  if (own.present) {
    const src = `opaque: pod annotation ${ANNOTATIONS.opaquePorts} ${self.where}`;
    for (const r of own.ranges) decisions.push(at(r, 'opaque', src, r.from === r.to ? nameOf(r.from) : undefined));
    fallback = `detect: not listed in pod annotation ${ANNOTATIONS.opaquePorts} ${self.where} (it replaces the defaults)`;
  } else {
    const nsName = self.workload?.namespace ?? (self.ref.namespace || undefined);
    const ns = nsName === undefined ? undefined : namespace(nsName);
    const nsRef: ObjectRef = { kind: 'Namespace', namespace: '', name: nsName ?? '' };
    const inherited = ns
      ? readPortAnnotation(nsRef, ns.annotations, ANNOTATIONS.opaquePorts, problems, {
        resolver, namedPorts: containerPorts, resolvingFor: self.ref,
      })
      : undefined;
    if (inherited?.present) {
      const src = `opaque: namespace annotation ${ANNOTATIONS.opaquePorts} on Namespace ${nsName} (inherited by ${describeRef(self.ref)})`;
      for (const r of inherited.ranges) decisions.push(at(r, 'opaque', src, r.from === r.to ? nameOf(r.from) : undefined));
      fallback = `detect: not listed in namespace annotation ${ANNOTATIONS.opaquePorts} on Namespace ${nsName} (it replaces the defaults)`;
    } else if (containerPorts !== undefined) {
      for (const r of filterRangesToPorts(settings.defaultOpaquePorts, containerPorts.map((p) => p.port))) {
        decisions.push(at(r, 'opaque', `opaque: default opaque ports (${r.from})`, nameOf(r.from)));
      }
      fallback = 'detect: no Server, annotation or default opaque port covers it';
    } else {
      const src = `opaque: default opaque ports (${formatPortList(settings.defaultOpaquePorts)}; container ports unknown, not filtered)`;
      for (const r of settings.defaultOpaquePorts) decisions.push(at(r, 'opaque', src));
      fallback = 'detect: no Server, annotation or default opaque port covers it';
    }
  }

  // One display line per declared container port and per single configured port (bounded: a
  // 40 KB annotation lists thousands).
  const singles = new Set<number>(containerPorts?.map((p) => p.port) ?? []);
  for (const d of decisions) if (d.ports.from === d.ports.to && singles.size < 1024) singles.add(d.ports.from);
  const ports: PortDecision[] = [];
  const sorted = [...singles].sort((a, b) => a - b);
  for (const port of sorted) {
    const hit = decisions.find((d) => port >= d.ports.from && port <= d.ports.to);
    ports.push(hit
      ? decision(port, port, hit.mode, hit.source, nameOf(port) ?? hit.name)
      : decision(port, port, 'detect', fallback, nameOf(port)));
  }
  return { decisions, ports };
}

/** The frame: this workload's effective parts and the engine's ordered rules. */
export interface Frame {
  readonly self: SelfWorkload;
  readonly context: OutboundContext;
  readonly effective: Omit<EffectivePolicy, 'outbound'> & { readonly outbound: Omit<EffectivePolicy['outbound'], 'destinations'> };
  readonly rules: readonly PolicyRule[];
  readonly fallbackRules: readonly PolicyRule[];
  readonly destinationDetectTimeoutMs: number | null;
  readonly authz: AuthzSpec;
  readonly meshDestinations: readonly DestinationSpec[];
  readonly problems: readonly PolicyProblem[];
}

function rule(
  direction: Direction, net: string | null, from: number, to: number, mode: PortMode, timeoutMs: number | null, source: string,
): PolicyRule {
  // A declared or detected mode may still read the client first; only opaque never does.
  return Object.freeze({ direction, net, ports: Object.freeze([from, to] as const), mode, detectTimeoutMs: mode === 'opaque' ? null : timeoutMs, source });
}

/** This workload's authorization table; the tunnel reaches only the TCP ports its containers declare, when known. */
function compileWorkloadAuthz(
  settings: CompilerSettings, self: SelfWorkload, servers: readonly ServerObject[], authzObjects: readonly AuthzObject[],
  namespace: (name: string) => NamespaceObject | undefined, problems: PolicyProblem[],
): AuthzSpec {
  const ns = self.workload?.namespace ?? self.ref.namespace;
  const result = compileAuthz({
    workload: self.workload,
    ref: self.ref,
    namespace: ns,
    workloadAnnotations: self.annotations,
    namespaceAnnotations: namespace(ns)?.annotations ?? {},
    servers,
    objects: authzObjects,
    clusterNetworks: settings.networks.map((n) => n.text),
    defaultPolicy: settings.mesh.defaultInboundPolicy,
    trustDomain: settings.mesh.trustDomain,
    identityTemplate: settings.mesh.identityTemplate,
  });
  problems.push(...result.problems);
  const declared = self.workload?.containerPorts.filter((p) => p.protocol === 'TCP').map((p) => p.port);
  const exposedPorts = declared !== undefined && declared.length > 0 ? [...new Set(declared)].sort((a, b) => a - b) : null;
  return { ...result.spec, exposedPorts };
}

/** Compiles the frame for this workload. Never throws on bad input. */
export function compileFrame(
  settings: CompilerSettings,
  workload: WorkloadObject | undefined,
  selfAnnotations: { readonly values: Readonly<Record<string, string>>; readonly origin: string | undefined } | undefined,
  servers: readonly ServerObject[],
  namespace: (name: string) => NamespaceObject | undefined,
  authzObjects: readonly AuthzObject[] = [],
  meshDestinations: readonly DestinationSpec[] = [],
): Frame {
  const problems: PolicyProblem[] = [];
  const self = resolveSelf(settings.identity, workload, selfAnnotations?.values, selfAnnotations?.origin);
  const a = self.annotations;
  const skipInbound = readPortAnnotation(self.ref, a, ANNOTATIONS.skipInboundPorts, problems, { allowNames: false, origin: self.file }).ranges;
  const skipOutbound = readPortAnnotation(self.ref, a, ANNOTATIONS.skipOutboundPorts, problems, { allowNames: false, origin: self.file }).ranges;
  const skipSubnets = readSubnetsAnnotation(self.ref, a, ANNOTATIONS.skipSubnets, problems, self.file);
  const external = readBoolAnnotation(self.ref, a, ANNOTATIONS.enableExternalProfiles, problems, self.file);
  const inbound = compileInbound(settings, self, skipInbound, servers, namespace, problems);
  const enableExternalProfiles = {
    enabled: external.value,
    source: external.present ? `${ANNOTATIONS.enableExternalProfiles}=${a[ANNOTATIONS.enableExternalProfiles]} ${self.where}` : 'not set',
  };
  const context: OutboundContext = {
    networks: settings.networks, defaults: settings.defaultOpaquePorts, externalProfiles: enableExternalProfiles, mesh: settings.mesh,
  };
  const authz = compileWorkloadAuthz(settings, self, servers, authzObjects, namespace, problems);
  const inTimeout = timeoutFor(self, ANNOTATIONS.disableInboundDetectTimeout, settings.inboundDetectTimeoutMs, 'inbound', problems);
  const outTimeout = timeoutFor(self, ANNOTATIONS.disableOutboundDetectTimeout, settings.outboundDetectTimeoutMs, 'outbound', problems);
  const defaults = clusterDefaults(context);

  const inT = inTimeout.overridden ? inTimeout.ms : null;
  const outT = outTimeout.overridden ? outTimeout.ms : null;
  const rules: PolicyRule[] = [];
  for (const dec of inbound.decisions) rules.push(rule('inbound', null, dec.ports.from, dec.ports.to, dec.mode, inT, dec.source));
  if (inT !== null) rules.push(rule('inbound', null, 1, 65535, 'detect', inT, inTimeout.source));
  if (skipOutbound.length > 0) {
    const src = `skip: ${ANNOTATIONS.skipOutboundPorts} ${formatPortList(skipOutbound)} (bypasses the proxy; opaque if it arrives)`;
    for (const r of skipOutbound) rules.push(rule('outbound', null, r.from, r.to, 'opaque', null, src));
  }
  for (const net of skipSubnets) {
    rules.push(rule('outbound', net, 1, 65535, 'opaque', null, `skip: ${ANNOTATIONS.skipSubnets} ${net} (bypasses the proxy; opaque if it arrives)`));
  }
  const flagSource = `opaque: ${settings.opaquePortsOrigin ?? '--opaque-ports flag'}`;
  for (const r of settings.opaquePorts) rules.push(rule('outbound', null, r.from, r.to, 'opaque', null, flagSource));
  const fallbackRules: PolicyRule[] = [];
  for (const g of defaults) fallbackRules.push(rule('outbound', g.net, g.ports.from, g.ports.to, 'opaque', null, g.source));
  if (outT !== null) fallbackRules.push(rule('outbound', null, 1, 65535, 'detect', outT, outTimeout.source));

  return {
    self,
    context,
    effective: {
      workload: self.workload ? { kind: self.workload.kind, namespace: self.workload.namespace, name: self.workload.name } : undefined,
      inbound: { decisions: inbound.decisions, ports: inbound.ports, detectTimeout: inTimeout, authorization: authz },
      outbound: { defaults, detectTimeout: outTimeout, meshDestinations },
      skipInboundPorts: skipInbound,
      skipOutboundPorts: skipOutbound,
      skipSubnets,
      enableExternalProfiles,
      opaquePortsFlag: settings.opaquePorts,
      clusterNetworks: settings.networks.map((n) => n.text),
      defaultOpaquePorts: settings.defaultOpaquePorts,
    },
    rules,
    fallbackRules,
    destinationDetectTimeoutMs: outT,
    authz,
    meshDestinations,
    problems,
  };
}
