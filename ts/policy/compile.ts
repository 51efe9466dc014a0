/**
 * The precedence engine: PolicyInputs -> EffectivePolicy (+ problems), with a
 * source string for every decision.
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
 * Outbound decisions (outbound.ts) come from the destination objects;
 * skip ports, skip subnets, enable-external-profiles and the detect-timeout
 * switches come from this workload's own annotations. toPolicyTable (below)
 * turns the result into the engine's first-match rule list, and lookupPolicy
 * mirrors the engine's lookup for explain and tests.
 */

import type { ObjectRef, WorkloadObject } from './k8s/objects.js';
import { cidrContains, hostCidr, isCidrError, parseCidr } from './cidr.js';
import { describeRef } from './k8s/objects.js';
import {
  containerPortResolver,
  filterRangesToPorts,
  readBoolAnnotation,
  readPortAnnotation,
  readSubnetsAnnotation,
  serverDecisions,
} from './annotations.js';
import {
  ANNOTATIONS,
  DISABLED_DETECT_TIMEOUT_MS,
  type DetectTimeout,
  type Direction,
  type EffectivePolicy,
  type PolicyRule,
  type PolicyTable,
  type PortMode,
  type PolicyInputs,
  type PortDecision,
} from './model.js';
import { compileOutbound } from './outbound.js';
import type { PolicyProblem } from './problems.js';
import { formatPortList, type PortRange } from '../config/index.js';

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

export interface CompileResult {
  readonly effective: EffectivePolicy;
  readonly problems: readonly PolicyProblem[];
}

/**
 * Finds this proxy's workload: the Pod with that name, else the workload
 * controller whose name is the longest `<name>-` prefix of the pod name
 * (Deployment `web` for pod `web-5d8f7c9b4-x2x7q`, StatefulSet `db` for `db-0`).
 */
export function findWorkload(inputs: Pick<PolicyInputs, 'manifests' | 'identity'>): WorkloadObject | undefined {
  const { pod } = inputs.identity;
  if (pod === undefined) return undefined;
  const namespace = inputs.identity.namespace ?? 'default';
  const inNs = inputs.manifests.workloads.filter((w) => w.namespace === namespace);
  const exact = inNs.find((w) => w.kind === 'Pod' && w.name === pod);
  if (exact) return exact;
  let best: WorkloadObject | undefined;
  for (const w of inNs) {
    if (w.kind === 'Pod') continue;
    if (w.name === pod || pod.startsWith(`${w.name}-`)) {
      if (!best || w.name.length > best.name.length) best = w;
    }
  }
  return best;
}

/** Resolves this proxy's workload and the annotations that apply to it. */
export function resolveSelf(inputs: PolicyInputs): SelfWorkload {
  const workload = findWorkload(inputs);
  const namespace = inputs.identity.namespace ?? workload?.namespace ?? '';
  const ref: ObjectRef = inputs.identity.pod !== undefined
    ? { kind: 'Pod', namespace: namespace === '' ? 'default' : namespace, name: inputs.identity.pod }
    : workload ? { kind: workload.kind, namespace: workload.namespace, name: workload.name } : { kind: 'Pod', namespace, name: '(this pod)' };
  if (inputs.workloadAnnotations !== undefined) {
    const file = inputs.workloadAnnotationsOrigin;
    const origin = file === undefined ? '' : ` (annotations file ${file})`;
    const on = inputs.identity.pod !== undefined ? ` on ${describeRef(ref)}` : '';
    return { ref, workload, annotations: inputs.workloadAnnotations, where: `${on}${origin}`.trim(), file };
  }
  if (workload) {
    const wref = { kind: workload.kind, namespace: workload.namespace, name: workload.name };
    return { ref: wref, workload, annotations: workload.annotations, where: `on ${describeRef(wref)}`, file: undefined };
  }
  return { ref, workload, annotations: {}, where: `on ${describeRef(ref)}`, file: undefined };
}

function decision(ports: PortRange, mode: PortDecision['mode'], source: string, name?: string): PortDecision {
  return Object.freeze({ ports: Object.freeze({ from: ports.from, to: ports.to }), name, mode, source });
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
  inputs: PolicyInputs, self: SelfWorkload, skipInbound: readonly PortRange[], problems: PolicyProblem[],
): { decisions: PortDecision[]; ports: PortDecision[]; fallback: string } {
  const decisions: PortDecision[] = [];
  const containerPorts = self.workload?.containerPorts;
  const nameOf = (port: number): string | undefined => containerPorts?.find((p) => p.port === port)?.name;
  const skipSource = `skip: ${ANNOTATIONS.skipInboundPorts} ${self.where} (bypasses the proxy; opaque if it arrives)`;
  for (const r of skipInbound) decisions.push(decision(r, 'opaque', skipSource));
  for (const r of inputs.opaquePorts) decisions.push(decision(r, 'opaque', 'opaque: --opaque-ports flag'));

  if (self.workload) {
    const namespace = self.workload.namespace;
    for (const d of serverDecisions(inputs.manifests.servers, namespace, self.workload.labels, self.workload.containerPorts, self.ref, problems)) {
      decisions.push(decision({ from: d.port, to: d.port }, d.mode, d.source, d.name));
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
    for (const r of own.ranges) decisions.push(decision(r, 'opaque', src, r.from === r.to ? nameOf(r.from) : undefined));
    fallback = `detect: not listed in pod annotation ${ANNOTATIONS.opaquePorts} ${self.where} (it replaces the defaults)`;
  } else {
    const nsName = self.workload?.namespace ?? (self.ref.namespace || undefined);
    const ns = inputs.manifests.namespaces.find((n) => n.name === nsName);
    const nsRef: ObjectRef = { kind: 'Namespace', namespace: '', name: nsName ?? '' };
    const inherited = ns
      ? readPortAnnotation(nsRef, ns.annotations, ANNOTATIONS.opaquePorts, problems, {
        resolver, namedPorts: containerPorts, resolvingFor: self.ref,
      })
      : undefined;
    if (inherited?.present) {
      const src = `opaque: namespace annotation ${ANNOTATIONS.opaquePorts} on Namespace ${nsName} (inherited by ${describeRef(self.ref)})`;
      for (const r of inherited.ranges) decisions.push(decision(r, 'opaque', src, r.from === r.to ? nameOf(r.from) : undefined));
      fallback = `detect: not listed in namespace annotation ${ANNOTATIONS.opaquePorts} on Namespace ${nsName} (it replaces the defaults)`;
    } else if (containerPorts !== undefined) {
      for (const r of filterRangesToPorts(inputs.defaultOpaquePorts, containerPorts.map((p) => p.port))) {
        decisions.push(decision(r, 'opaque', `opaque: default opaque ports (${r.from})`, nameOf(r.from)));
      }
      fallback = 'detect: no Server, annotation or default opaque port covers it';
    } else {
      const src = `opaque: default opaque ports (${formatPortList(inputs.defaultOpaquePorts)}; container ports unknown, not filtered)`;
      for (const r of inputs.defaultOpaquePorts) decisions.push(decision(r, 'opaque', src));
      fallback = 'detect: no Server, annotation or default opaque port covers it';
    }
  }

  // One display line per declared container port and per single configured port.
  const singles = new Set<number>(containerPorts?.map((p) => p.port) ?? []);
  for (const d of decisions) if (d.ports.from === d.ports.to) singles.add(d.ports.from);
  const ports: PortDecision[] = [];
  for (const port of [...singles].sort((a, b) => a - b)) {
    const hit = decisions.find((d) => port >= d.ports.from && port <= d.ports.to);
    ports.push(hit
      ? decision({ from: port, to: port }, hit.mode, hit.source, nameOf(port) ?? hit.name)
      : decision({ from: port, to: port }, 'detect', fallback, nameOf(port)));
  }
  return { decisions, ports, fallback };
}

/** Removes duplicate problems (a namespace value is read once per inheriting object). */
function dedupe(problems: readonly PolicyProblem[]): PolicyProblem[] {
  const seen = new Set<string>();
  return problems.filter((p) => (seen.has(p.message) ? false : (seen.add(p.message), true)));
}

/** Compiles the effective policy of this proxy's workload. Never throws on bad input. */
export function compilePolicy(inputs: PolicyInputs): CompileResult {
  const problems: PolicyProblem[] = [...inputs.manifests.problems];
  // Namespace values are validated even when no loaded object inherits them (names resolve per object later).
  for (const ns of inputs.manifests.namespaces) {
    readPortAnnotation({ kind: 'Namespace', namespace: '', name: ns.name }, ns.annotations, ANNOTATIONS.opaquePorts, problems,
      { resolver: () => 1 });
  }
  const self = resolveSelf(inputs);
  const a = self.annotations;
  const skipInbound = readPortAnnotation(self.ref, a, ANNOTATIONS.skipInboundPorts, problems, { allowNames: false, origin: self.file }).ranges;
  const skipOutbound = readPortAnnotation(self.ref, a, ANNOTATIONS.skipOutboundPorts, problems, { allowNames: false, origin: self.file }).ranges;
  const skipSubnets = readSubnetsAnnotation(self.ref, a, ANNOTATIONS.skipSubnets, problems, self.file);
  const external = readBoolAnnotation(self.ref, a, ANNOTATIONS.enableExternalProfiles, problems, self.file);
  const inbound = compileInbound(inputs, self, skipInbound, problems);
  const enableExternalProfiles = {
    enabled: external.value,
    source: external.present ? `${ANNOTATIONS.enableExternalProfiles}=${a[ANNOTATIONS.enableExternalProfiles]} ${self.where}` : 'not set',
  };
  const outbound = compileOutbound(inputs, { externalProfiles: enableExternalProfiles }, problems);
  const effective: EffectivePolicy = {
    workload: self.workload ? { kind: self.workload.kind, namespace: self.workload.namespace, name: self.workload.name } : undefined,
    inbound: {
      decisions: inbound.decisions,
      ports: inbound.ports,
      detectTimeout: timeoutFor(self, ANNOTATIONS.disableInboundDetectTimeout, inputs.inboundDetectTimeoutMs, 'inbound', problems),
    },
    outbound: {
      destinations: outbound.destinations,
      defaults: outbound.defaults,
      detectTimeout: timeoutFor(self, ANNOTATIONS.disableOutboundDetectTimeout, inputs.outboundDetectTimeoutMs, 'outbound', problems),
    },
    skipInboundPorts: skipInbound,
    skipOutboundPorts: skipOutbound,
    skipSubnets,
    enableExternalProfiles,
    opaquePortsFlag: inputs.opaquePorts,
    clusterNetworks: inputs.clusterNetworks,
    defaultOpaquePorts: inputs.defaultOpaquePorts,
  };
  return { effective: deepFreeze(effective), problems: Object.freeze(dedupe(problems)) };
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/**
 * Compiles every workload in the manifests as if it were this proxy's
 * (`meshpipe explain --manifests` with no --port), keyed `Kind ns/name`.
 */
export function compileAllWorkloads(inputs: PolicyInputs): { workload: WorkloadObject; result: CompileResult }[] {
  return inputs.manifests.workloads.map((w) => ({
    workload: w,
    result: compilePolicy({
      ...inputs,
      workloadAnnotations: undefined,
      workloadAnnotationsOrigin: undefined,
      identity: { namespace: w.namespace, pod: w.name },
    }),
  }));
}

// ---------------------------------------------------------------------------
// The engine table.
/*
 * EffectivePolicy -> the engine's PolicyTable (ARCHITECTURE.md): an ordered
 * rule list where the first rule whose direction, network and port range
 * match wins and no match means `detect`. The order encodes the precedence
 * resolved above and in outbound.ts:
 *
 *   inbound:  the inbound decisions as compiled (skip ports first, then the
 *             --opaque-ports flag, Servers, the opaque-ports chain), then a
 *             catch-all `detect` rule only when a timeout annotation changed
 *             the inbound detect timeout.
 *   outbound: skip-outbound-ports and skip-subnets (opaque: never detected,
 *             in case such a connection reaches the proxy at all), the
 *             --opaque-ports flag, per-destination exact-address rules
 *             (/32, /128) in each destination's precedence order, the cluster
 *             defaults (default opaque ports per clusterNetwork, and for any
 *             address with enable-external-profiles), then the timeout
 *             catch-all if overridden.
 *
 * `lookupPolicy` is the same first-match lookup as the engine's `policy.rs`,
 * used by `meshpipe explain` and by tests to prove the two agree.
 */

function rule(
  direction: Direction, net: string | null, from: number, to: number, mode: PortMode, timeoutMs: number | null, source: string,
): PolicyRule {
  // A declared or detected mode may still read the client first; only opaque never does.
  return Object.freeze({ direction, net, ports: Object.freeze([from, to] as const), mode, detectTimeoutMs: mode === 'opaque' ? null : timeoutMs, source });
}

/** Builds the engine table. Deterministic: the same effective policy gives the same rules. */
export function toPolicyTable(effective: EffectivePolicy, generation: number): PolicyTable {
  const rules: PolicyRule[] = [];
  const inT = effective.inbound.detectTimeout.overridden ? effective.inbound.detectTimeout.ms : null;
  const outT = effective.outbound.detectTimeout.overridden ? effective.outbound.detectTimeout.ms : null;

  for (const dec of effective.inbound.decisions) {
    rules.push(rule('inbound', null, dec.ports.from, dec.ports.to, dec.mode, inT, dec.source));
  }
  if (inT !== null) rules.push(rule('inbound', null, 1, 65535, 'detect', inT, effective.inbound.detectTimeout.source));

  if (effective.skipOutboundPorts.length > 0) {
    const src = `skip: config.linkerd.io/skip-outbound-ports ${formatPortList(effective.skipOutboundPorts)} (bypasses the proxy; opaque if it arrives)`;
    for (const r of effective.skipOutboundPorts) rules.push(rule('outbound', null, r.from, r.to, 'opaque', null, src));
  }
  for (const net of effective.skipSubnets) {
    rules.push(rule('outbound', net, 1, 65535, 'opaque', null, `skip: config.linkerd.io/skip-subnets ${net} (bypasses the proxy; opaque if it arrives)`));
  }
  for (const r of effective.opaquePortsFlag) rules.push(rule('outbound', null, r.from, r.to, 'opaque', null, 'opaque: --opaque-ports flag'));
  for (const dest of effective.outbound.destinations) {
    for (const address of dest.addresses) {
      const host = hostCidr(address);
      if (!host) continue; // addresses are validated when objects are read; a stray one is skipped, not fatal
      for (const dec of dest.decisions) {
        rules.push(rule('outbound', host.text, dec.ports.from, dec.ports.to, dec.mode, outT, dec.source));
      }
    }
  }
  for (const g of effective.outbound.defaults) rules.push(rule('outbound', g.net, g.ports.from, g.ports.to, 'opaque', null, g.source));
  if (outT !== null) rules.push(rule('outbound', null, 1, 65535, 'detect', outT, effective.outbound.detectTimeout.source));
  return Object.freeze({ generation, rules: Object.freeze(rules) });
}

/** The result of a lookup, as the engine would decide it. */
export interface LookupResult {
  readonly mode: PortMode;
  readonly detectTimeoutMs: number | null;
  readonly source: string;
  /** Index of the matching rule, or -1 for the default. */
  readonly index: number;
}

/** First-match lookup, mirroring `PolicyTable::lookup` in crates/meshpipe-core/src/policy.rs. */
export function lookupPolicy(table: PolicyTable, direction: Direction, address: string, port: number): LookupResult {
  for (let i = 0; i < table.rules.length; i++) {
    const r = table.rules[i] as PolicyRule;
    if (r.direction !== direction || port < r.ports[0] || port > r.ports[1]) continue;
    if (r.net !== null) {
      const net = parseCidr(r.net);
      if (isCidrError(net) || !cidrContains(net, address)) continue;
    }
    return { mode: r.mode, detectTimeoutMs: r.detectTimeoutMs, source: r.source, index: i };
  }
  return { mode: 'detect', detectTimeoutMs: null, source: 'default', index: -1 };
}
