/**
 * The Kubernetes objects the policy layer reads, reduced to the fields that
 * matter for port policy, and the normaliser that turns raw objects (parsed
 * YAML/JSON from manifests, or objects from the API server via
 * @kubernetes/client-node, whose typed lists carry `Date`s and whose watch
 * events carry strings) into these typed, frozen shapes.
 *
 * Kinds: Namespace, Service, Pod, the pod templates of Deployment,
 * StatefulSet, DaemonSet, ReplicaSet, Job and CronJob, of `policy.linkerd.io`
 * Server, AuthorizationPolicy, MeshTLSAuthentication and
 * NetworkAuthentication (the last three in authz-objects.ts), and
 * discovery.k8s.io EndpointSlice (endpoint-slices.ts). Anything else
 * is "ignored" (counted, not an error). A known kind with a malformed field yields a problem naming the
 * object and the field; the rest of the object still counts.
 *
 * Only what policy reads is kept: of the annotations, the
 * `config.linkerd.io/*` ones (a pod's `kubectl.kubernetes.io/last-applied-
 * configuration` alone can be kilobytes, and a watch holds every pod of the
 * cluster); labels in full (selectors may use any). A Pod in phase Succeeded
 * or Failed keeps no IP: its address is free and will be reused by another
 * pod, so it must not carry this pod's policy.
 *
 * Replicas repeat each other: the same namespace, label set, annotation set
 * and container ports on every pod of a workload. Those parts are shared
 * between objects (`shared`, below) instead of kept once per pod, which is
 * most of what a watch of 50,000 pods would otherwise hold.
 */

import { normalizeEndpointSlice, type EndpointSliceObject } from './endpoint-slices.js';

export type { EndpointSliceObject } from './endpoint-slices.js';

import { isAuthzKind, normalizeAuthzObject, type AuthzObject } from './authz-objects.js';

export type { AuthzObject } from './authz-objects.js';

export interface ObjectRef {
  readonly kind: string;
  readonly namespace: string;
  readonly name: string;
}

export interface NamespaceObject {
  readonly kind: 'Namespace';
  readonly name: string;
  readonly annotations: Readonly<Record<string, string>>;
}

export interface ServicePort {
  readonly name: string | undefined;
  readonly port: number;
  /** Number, a container port name, or undefined (= `port`). */
  readonly targetPort: number | string | undefined;
  readonly appProtocol: string | undefined;
  readonly protocol: string;
}

export interface ServiceObject {
  readonly kind: 'Service';
  readonly namespace: string;
  readonly name: string;
  readonly annotations: Readonly<Record<string, string>>;
  readonly ports: readonly ServicePort[];
  /** Undefined = no selector (endpoints managed elsewhere). */
  readonly selector: Readonly<Record<string, string>> | undefined;
  /** From spec.clusterIP / spec.clusterIPs when known (absent in most manifests). */
  readonly clusterIPs: readonly string[];
}

export interface ContainerPort {
  readonly name: string | undefined;
  readonly port: number;
  readonly protocol: string;
}

export const WORKLOAD_KINDS = ['Pod', 'Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job', 'CronJob'] as const;
export type WorkloadKind = (typeof WORKLOAD_KINDS)[number];

/** A Pod, or the pod template of a workload controller. */
export interface WorkloadObject {
  readonly kind: WorkloadKind;
  readonly namespace: string;
  readonly name: string;
  /** The pod's (or pod template's) annotations. */
  readonly annotations: Readonly<Record<string, string>>;
  /** The pod's (or pod template's) labels. */
  readonly labels: Readonly<Record<string, string>>;
  readonly containerPorts: readonly ContainerPort[];
  /** status.podIP(s); Pods only, when known. */
  readonly podIPs: readonly string[];
  /** spec.serviceAccountName (`default` when unset, as Kubernetes assigns it). */
  readonly serviceAccount: string;
}

export interface LabelSelectorRequirement {
  readonly key: string;
  readonly operator: string;
  readonly values: readonly string[];
}

export interface ServerObject {
  readonly kind: 'Server';
  readonly namespace: string;
  readonly name: string;
  readonly matchLabels: Readonly<Record<string, string>>;
  readonly matchExpressions: readonly LabelSelectorRequirement[];
  /** Port number or container port name. */
  readonly port: number | string;
  /** As written: unknown, HTTP/1, HTTP/2, gRPC, opaque, TLS (default unknown). */
  readonly proxyProtocol: string;
  /** ms since the epoch; undefined when not set (manifests): sorts as newest. */
  readonly createdAt: number | undefined;
}

export type PolicyObject = NamespaceObject | ServiceObject | WorkloadObject | ServerObject | AuthzObject | EndpointSliceObject;

/** A problem found while reading an object or a file. */
export interface ObjectProblem {
  readonly object: ObjectRef;
  readonly field: string;
  readonly token: string;
  readonly reason: string;
}

type Raw = Record<string, unknown>;

function isRecord(v: unknown): v is Raw {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function rec(v: unknown): Raw {
  return isRecord(v) ? v : {};
}

function arr(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

// ---------------------------------------------------------------------------
// Sharing equal parts between objects.

/** Distinct shared values kept at most; past it the table starts over (sharing is an optimisation, never a semantic). */
const SHARED_MAX = 65_536;
const sharedValues = new Map<string, unknown>();

/** One instance per distinct value (frozen), keyed by `key` (the value's JSON). */
function shared<T>(key: string, value: T): T {
  const hit = sharedValues.get(key);
  if (hit !== undefined) return hit as T;
  if (sharedValues.size >= SHARED_MAX) sharedValues.clear();
  sharedValues.set(key, value);
  return value;
}

/** A short string as one instance (namespaces, names of ports, label keys and values recur on every replica). */
function text(s: string): string {
  return s.length > 128 ? s : shared(`s\u0000${s}`, s);
}

/** A string map (annotations, labels, selectors); other values are stringified (objects as JSON) as Kubernetes would refuse them anyway. */
function sharedMap(kind: string, map: Record<string, string>): Readonly<Record<string, string>> {
  return shared(`${kind}\u0000${JSON.stringify(map)}`, map);
}

function stringMap(v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(rec(v))) {
    if (val === null || val === undefined) continue;
    out[text(k)] = text(typeof val === 'string' ? val : typeof val === 'number' || typeof val === 'boolean' ? String(val) : JSON.stringify(val));
  }
  return sharedMap('m', Object.freeze(out));
}

/**
 * The annotations policy reads: `config.linkerd.io/*` (ports, protocols,
 * default inbound policy), `meshpipe.io/*` (injection, identity, tunnel port)
 * and Linkerd's injection switch `linkerd.io/inject` (which pods are meshed).
 */
const POLICY_ANNOTATION_PREFIXES = ['config.linkerd.io/', 'meshpipe.io/'];
const POLICY_ANNOTATIONS = new Set(['linkerd.io/inject']);

function isPolicyAnnotation(key: string): boolean {
  return POLICY_ANNOTATIONS.has(key) || POLICY_ANNOTATION_PREFIXES.some((p) => key.startsWith(p));
}

function policyAnnotations(v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(rec(v))) {
    if (!isPolicyAnnotation(k) || val === null || val === undefined) continue;
    out[k] = typeof val === 'string' ? val : typeof val === 'number' || typeof val === 'boolean' ? String(val) : JSON.stringify(val);
  }
  return sharedMap('a', Object.freeze(out));
}

function portNumber(v: unknown): number | undefined {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN;
  return Number.isInteger(n) && n >= 1 && n <= 65535 ? n : undefined;
}

function timestamp(v: unknown): number | undefined {
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? undefined : v.getTime();
  if (typeof v === 'string') {
    const t = Date.parse(v);
    return Number.isNaN(t) ? undefined : t;
  }
  return undefined;
}

/** The pod template (metadata + spec) of a workload controller, by kind. */
function podTemplate(kind: WorkloadKind, raw: Raw): { metadata: Raw; spec: Raw } {
  if (kind === 'Pod') return { metadata: rec(raw['metadata']), spec: rec(raw['spec']) };
  const spec = rec(raw['spec']);
  const template = kind === 'CronJob' ? rec(rec(rec(spec['jobTemplate'])['spec'])['template']) : rec(spec['template']);
  return { metadata: rec(template['metadata']), spec: rec(template['spec']) };
}

function containerPorts(podSpec: Raw, ref: ObjectRef, problems: ObjectProblem[]): ContainerPort[] {
  const out: ContainerPort[] = [];
  const containers = [...arr(podSpec['containers']), ...arr(podSpec['initContainers'])];
  for (const c of containers) {
    for (const p of arr(rec(c)['ports'])) {
      const pr = rec(p);
      const port = portNumber(pr['containerPort']);
      if (port === undefined) {
        problems.push({ object: ref, field: 'containerPort', token: String(pr['containerPort']), reason: 'expected a port number 1-65535' });
        continue;
      }
      const name = str(pr['name']);
      out.push(Object.freeze({ name: name === undefined ? undefined : text(name), port, protocol: text(str(pr['protocol']) ?? 'TCP') }));
    }
  }
  return shared(`p\u0000${JSON.stringify(out)}`, Object.freeze(out)) as ContainerPort[];
}

/** Phases whose pod no longer holds its IP (Kubernetes reuses it). */
export const FINISHED_PHASES: readonly string[] = ['Succeeded', 'Failed'];

function podIPs(raw: Raw): string[] {
  const status = rec(raw['status']);
  if (FINISHED_PHASES.includes(str(status['phase']) ?? '')) return [];
  const ips = new Set<string>();
  const single = str(status['podIP']);
  if (single) ips.add(single);
  for (const p of arr(status['podIPs'])) {
    const ip = str(rec(p)['ip']);
    if (ip) ips.add(ip);
  }
  return [...ips];
}

/** True for apiVersions of the Linkerd policy API group (any version). */
function isLinkerdPolicy(apiVersion: string | undefined): boolean {
  return apiVersion !== undefined && apiVersion.startsWith('policy.linkerd.io/');
}

/**
 * Normalises one raw object. Returns undefined for kinds the policy layer
 * does not read; pushes problems for malformed fields of known kinds.
 * `defaultNamespace` applies to namespaced objects without one (kubectl's
 * behaviour for manifests).
 */
export function normalizeObject(
  raw: unknown, problems: ObjectProblem[], defaultNamespace = 'default', kindOverride?: string,
): PolicyObject | undefined {
  if (!isRecord(raw)) return undefined;
  // Items of a List from the API server carry no kind; the caller knows it.
  const kind = kindOverride ?? str(raw['kind']);
  if (isAuthzKind(kind)) return normalizeAuthzObject(raw, problems, defaultNamespace, kindOverride);
  const metadata = rec(raw['metadata']);
  const name = str(metadata['name']) ?? '';
  const namespace = text(str(metadata['namespace']) ?? defaultNamespace);
  if (kind === 'Namespace') {
    return Object.freeze({ kind, name, annotations: policyAnnotations(metadata['annotations']) });
  }
  if (kind === 'EndpointSlice') return normalizeEndpointSlice(raw, namespace, name, problems);
  if (kind === 'Service') {
    const ref = { kind, namespace, name };
    const spec = rec(raw['spec']);
    const ports: ServicePort[] = [];
    for (const p of arr(spec['ports'])) {
      const pr = rec(p);
      const port = portNumber(pr['port']);
      if (port === undefined) {
        problems.push({ object: ref, field: 'spec.ports[].port', token: String(pr['port']), reason: 'expected a port number 1-65535' });
        continue;
      }
      const tp = pr['targetPort'];
      const targetPort = typeof tp === 'number' ? tp : typeof tp === 'string' ? (/^\d+$/.test(tp) ? Number(tp) : tp) : undefined;
      ports.push(Object.freeze({
        name: str(pr['name']), port, targetPort, appProtocol: str(pr['appProtocol']), protocol: str(pr['protocol']) ?? 'TCP',
      }));
    }
    const clusterIPs = new Set<string>();
    const single = str(spec['clusterIP']);
    if (single && single !== 'None') clusterIPs.add(single);
    for (const ip of arr(spec['clusterIPs'])) if (typeof ip === 'string' && ip !== 'None') clusterIPs.add(ip);
    return Object.freeze({
      kind, namespace, name,
      annotations: policyAnnotations(metadata['annotations']),
      ports: Object.freeze(ports),
      selector: isRecord(spec['selector']) ? stringMap(spec['selector']) : undefined,
      clusterIPs: Object.freeze([...clusterIPs]),
    });
  }
  if (kind !== undefined && (WORKLOAD_KINDS as readonly string[]).includes(kind)) {
    const wkind = kind as WorkloadKind;
    const ref = { kind, namespace, name };
    const tpl = podTemplate(wkind, raw);
    return Object.freeze({
      kind: wkind, namespace, name,
      annotations: policyAnnotations(tpl.metadata['annotations']),
      labels: stringMap(tpl.metadata['labels']),
      containerPorts: containerPorts(tpl.spec, ref, problems),
      podIPs: Object.freeze(wkind === 'Pod' ? podIPs(raw) : []),
      serviceAccount: str(tpl.spec['serviceAccountName']) ?? str(tpl.spec['serviceAccount']) ?? 'default',
    });
  }
  if (kind === 'Server' && (kindOverride !== undefined || isLinkerdPolicy(str(raw['apiVersion'])))) {
    const ref = { kind, namespace, name };
    const spec = rec(raw['spec']);
    const selector = rec(spec['podSelector']);
    const rawPort = spec['port'];
    let port: number | string;
    if (typeof rawPort === 'string' && !/^\d+$/.test(rawPort)) {
      port = rawPort;
    } else {
      const n = portNumber(rawPort);
      if (n === undefined) {
        problems.push({ object: ref, field: 'spec.port', token: String(rawPort), reason: 'expected a port number 1-65535 or a container port name' });
        return undefined;
      }
      port = n;
    }
    if (!isRecord(spec['podSelector'])) {
      problems.push({ object: ref, field: 'spec.podSelector', token: '', reason: 'missing podSelector: the Server selects no pods (externalWorkloadSelector is not supported)' });
      return undefined;
    }
    const matchExpressions: LabelSelectorRequirement[] = arr(selector['matchExpressions']).map((e) => {
      const er = rec(e);
      return Object.freeze({
        key: str(er['key']) ?? '',
        operator: str(er['operator']) ?? '',
        values: Object.freeze(arr(er['values']).map((v) => String(v))),
      });
    });
    return Object.freeze({
      kind: 'Server' as const, namespace, name,
      matchLabels: stringMap(selector['matchLabels']),
      matchExpressions: Object.freeze(matchExpressions),
      port,
      proxyProtocol: str(spec['proxyProtocol']) ?? 'unknown',
      createdAt: timestamp(metadata['creationTimestamp']),
    });
  }
  return undefined;
}

/**
 * Evaluates a Server's podSelector against pod labels. Returns a reason when
 * an expression is malformed (the Server then selects nothing, visibly).
 */
export function selectorMatches(server: ServerObject, labels: Readonly<Record<string, string>>): boolean | { error: string } {
  for (const [k, v] of Object.entries(server.matchLabels)) if (labels[k] !== v) return false;
  for (const e of server.matchExpressions) {
    const has = Object.prototype.hasOwnProperty.call(labels, e.key);
    switch (e.operator) {
      case 'In':
        if (!has || !e.values.includes(labels[e.key] as string)) return false;
        break;
      case 'NotIn':
        if (has && e.values.includes(labels[e.key] as string)) return false;
        break;
      case 'Exists':
        if (!has) return false;
        break;
      case 'DoesNotExist':
        if (has) return false;
        break;
      default:
        return { error: `matchExpressions operator "${e.operator}" for key "${e.key}": expected In, NotIn, Exists or DoesNotExist` };
    }
  }
  return true;
}

/** True when a Service selector (non-empty) selects pods with these labels. */
export function serviceSelects(service: ServiceObject, labels: Readonly<Record<string, string>>): boolean {
  if (!service.selector || Object.keys(service.selector).length === 0) return false;
  return Object.entries(service.selector).every(([k, v]) => labels[k] === v);
}

/** `Kind namespace/name` (or `Namespace name`) for messages. */
export function describeRef(ref: ObjectRef): string {
  return ref.kind === 'Namespace' || ref.namespace === '' ? `${ref.kind} ${ref.name}` : `${ref.kind} ${ref.namespace}/${ref.name}`;
}
