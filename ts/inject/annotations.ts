/**
 * The annotations injection reads, and what they mean for one pod.
 *
 * Whether to inject: `meshpipe.io/inject` or Linkerd's `linkerd.io/inject`
 * (`enabled` | `disabled`), on the pod (template) or on its Namespace. The
 * first one set wins, in this order: the pod's `meshpipe.io/inject`, the pod's
 * `linkerd.io/inject`, the namespace's `meshpipe.io/inject`, the namespace's
 * `linkerd.io/inject`; with none set, the caller's default decides (the CLI
 * injects what it is given; the webhook injects only what is enabled).
 *
 * How to inject: Linkerd's `config.linkerd.io/*` keys that shape the pod
 * (skip ports and subnets for `meshpipe init`, the proxy's uid, its resources,
 * native or classic sidecar) and meshpipe's `config.meshpipe.io/drain-timeout`
 * (the `config.meshpipe.io/identity*` keys are read by identity.ts with the
 * same lookup). As in Linkerd's injector, a key set on the pod wins, and the
 * namespace's value applies when the pod has none (no merging).
 *
 * Validation is strict: the values end up in a pod spec and in `meshpipe init`
 * flags, where a bad token would fail the pod at start. Every problem names the
 * object (the pod's owner, or the Namespace a value was inherited from), the
 * key, the value and what is expected; the caller leaves that object
 * unchanged.
 */
import { formatPortList, parseDuration, parsePortList } from '../config/index.js';
import { MESH_ANNOTATIONS, parseCidrList } from '../policy/index.js';
import { describeObject, type ObjectName } from './kinds.js';
import { parseQuantity } from './quantity.js';

export const INJECT_KEYS = Object.freeze({ meshpipe: 'meshpipe.io/inject', linkerd: 'linkerd.io/inject' });

/** Keys read from the pod (or its namespace) to shape the injected containers. */
export const CONFIG_KEYS = Object.freeze({
  skipInboundPorts: 'config.linkerd.io/skip-inbound-ports',
  skipOutboundPorts: 'config.linkerd.io/skip-outbound-ports',
  skipSubnets: 'config.linkerd.io/skip-subnets',
  proxyUid: 'config.linkerd.io/proxy-uid',
  nativeSidecar: 'config.linkerd.io/proxy-enable-native-sidecar',
  cpuRequest: 'config.linkerd.io/proxy-cpu-request',
  cpuLimit: 'config.linkerd.io/proxy-cpu-limit',
  memoryRequest: 'config.linkerd.io/proxy-memory-request',
  memoryLimit: 'config.linkerd.io/proxy-memory-limit',
  ephemeralStorageRequest: 'config.linkerd.io/proxy-ephemeral-storage-request',
  ephemeralStorageLimit: 'config.linkerd.io/proxy-ephemeral-storage-limit',
  drainTimeout: 'config.meshpipe.io/drain-timeout',
});

/** Annotations injection writes on the pod, so it can tell an injected pod and undo itself. */
export const MARKER_KEYS = Object.freeze({
  /** The meshpipe version that injected the pod. */
  injected: 'meshpipe.io/injected',
  /** Present only when injection raised terminationGracePeriodSeconds: the value before ("unset" if none). */
  originalGracePeriod: 'meshpipe.io/original-termination-grace-period-seconds',
  /**
   * Where the proxy's identity comes from (`cert-manager-csi`, `secret`, `none`): peers
   * read it to know whether this pod's proxy can terminate mesh TLS (ts/policy/mesh-destinations.ts).
   */
  identity: MESH_ANNOTATIONS.injectedIdentity,
});

/** The default uid of the proxy (Linkerd's, and `meshpipe init --proxy-uid`'s). */
export const DEFAULT_PROXY_UID = 2102;

export type Annotations = Readonly<Record<string, string>>;

/** One invalid annotation (or, with `field`, a field of the pod spec), naming where it was set. */
export interface AnnotationProblem {
  readonly object: ObjectName;
  /** The annotation key, or with `field` the field's path, e.g. `spec.containers[app].ports`. */
  readonly key: string;
  readonly value: string;
  readonly message: string;
  readonly field?: boolean;
}

export function formatProblem(p: AnnotationProblem): string {
  return `${describeObject(p.object)}: ${p.field === true ? p.key : `annotation ${p.key}`}: "${p.value}": ${p.message}`;
}

/** Where the pod's annotations and its namespace's come from, for messages. */
export interface AnnotationSources {
  readonly pod: Annotations;
  readonly podObject: ObjectName;
  readonly namespace: Annotations;
  readonly namespaceObject: ObjectName;
}

/** A value read with inheritance: the pod's own, else its namespace's. */
export interface Found {
  readonly value: string;
  readonly object: ObjectName;
  readonly where: 'pod' | 'namespace';
}

export function lookup(src: AnnotationSources, key: string): Found | undefined {
  const own = src.pod[key];
  if (own !== undefined) return { value: own, object: src.podObject, where: 'pod' };
  const inherited = src.namespace[key];
  if (inherited !== undefined) return { value: inherited, object: src.namespaceObject, where: 'namespace' };
  return undefined;
}

/** Records a problem with a value found by `lookup`, saying which pod inherited it from its namespace. */
export function problemWith(src: AnnotationSources, problems: AnnotationProblem[], f: Found, key: string, message: string): void {
  problems.push({ object: f.object, key, value: f.value, message: f.where === 'namespace' ? `${message} (inherited by ${describeObject(src.podObject)})` : message });
}

export interface InjectDecision {
  readonly inject: boolean;
  /** Why, for reports: `meshpipe.io/inject=disabled on Deployment shop/web`, or `default`. */
  readonly because: string;
}

/**
 * Whether the pod is to be injected (see the module doc for the order).
 * A value other than enabled/disabled is a problem, and decides nothing.
 */
export function decideInjection(src: AnnotationSources, defaultInject: boolean, problems: AnnotationProblem[]): InjectDecision {
  const candidates: [Annotations, ObjectName, string][] = [
    [src.pod, src.podObject, INJECT_KEYS.meshpipe],
    [src.pod, src.podObject, INJECT_KEYS.linkerd],
    [src.namespace, src.namespaceObject, INJECT_KEYS.meshpipe],
    [src.namespace, src.namespaceObject, INJECT_KEYS.linkerd],
  ];
  for (const [annotations, object, key] of candidates) {
    const value = annotations[key];
    if (value === undefined) continue;
    const v = value.trim();
    if (v === 'enabled' || v === 'disabled') return { inject: v === 'enabled', because: `${key}=${v} on ${describeObject(object)}` };
    const hint = v === 'ingress' ? " (Linkerd's ingress mode is not supported by meshpipe)" : '';
    problems.push({ object, key, value, message: `expected "enabled" or "disabled"${hint}` });
    return { inject: false, because: `invalid ${key}` };
  }
  return { inject: defaultInject, because: defaultInject ? 'injected by default' : `neither ${INJECT_KEYS.meshpipe} nor ${INJECT_KEYS.linkerd} is enabled on the pod or its namespace` };
}

/** Everything about the injected containers that comes from annotations. */
export interface PodSettings {
  /** Normalised lists for `meshpipe init` flags; empty when not set. */
  readonly skipInboundPorts: string;
  readonly skipOutboundPorts: string;
  readonly skipSubnets: string;
  readonly proxyUid: number;
  /** Native sidecar (an init container with restartPolicy Always), or a classic container; undefined = the caller's default. */
  readonly nativeSidecar: boolean | undefined;
  readonly requests: Readonly<Record<string, string>>;
  readonly limits: Readonly<Record<string, string>>;
  /** From config.meshpipe.io/drain-timeout; undefined = derived from terminationGracePeriodSeconds. */
  readonly drainTimeoutMs: number | undefined;
}

const BOOL_TRUE = new Set(['1', 't', 'T', 'true', 'TRUE', 'True']);
const BOOL_FALSE = new Set(['0', 'f', 'F', 'false', 'FALSE', 'False']);

/** Reads and validates the config annotations; problems are appended, bad keys fall back to defaults. */
export function readSettings(src: AnnotationSources, problems: AnnotationProblem[]): PodSettings {
  const problem = (f: Found, key: string, message: string): void => problemWith(src, problems, f, key, message);

  const ports = (key: string): string => {
    const f = lookup(src, key);
    if (f === undefined) return '';
    const parsed = parsePortList(f.value);
    for (const e of parsed.errors) problem(f, key, `entry "${e.token}": ${e.reason}`);
    return formatPortList(parsed.ranges);
  };
  const skipInboundPorts = ports(CONFIG_KEYS.skipInboundPorts);
  const skipOutboundPorts = ports(CONFIG_KEYS.skipOutboundPorts);

  let skipSubnets = '';
  const subnets = lookup(src, CONFIG_KEYS.skipSubnets);
  if (subnets !== undefined) {
    const parsed = parseCidrList(subnets.value);
    for (const e of parsed.errors) problem(subnets, CONFIG_KEYS.skipSubnets, `entry "${e.token}": ${e.reason}`);
    skipSubnets = parsed.cidrs.map((c) => c.text).join(',');
  }

  let proxyUid = DEFAULT_PROXY_UID;
  const uid = lookup(src, CONFIG_KEYS.proxyUid);
  if (uid !== undefined) {
    const text = uid.value.trim();
    if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > 4294967294) {
      problem(uid, CONFIG_KEYS.proxyUid, 'expected a uid 1-4294967294 (the proxy never runs as root, uid 0)');
    } else proxyUid = Number(text);
  }

  let nativeSidecar: boolean | undefined;
  const native = lookup(src, CONFIG_KEYS.nativeSidecar);
  if (native !== undefined) {
    const text = native.value.trim();
    if (BOOL_TRUE.has(text)) nativeSidecar = true;
    else if (BOOL_FALSE.has(text)) nativeSidecar = false;
    else problem(native, CONFIG_KEYS.nativeSidecar, 'expected "true" or "false"');
  }

  const requests: Record<string, string> = {};
  const limits: Record<string, string> = {};
  for (const [resource, reqKey, limKey] of [
    ['cpu', CONFIG_KEYS.cpuRequest, CONFIG_KEYS.cpuLimit],
    ['memory', CONFIG_KEYS.memoryRequest, CONFIG_KEYS.memoryLimit],
    ['ephemeral-storage', CONFIG_KEYS.ephemeralStorageRequest, CONFIG_KEYS.ephemeralStorageLimit],
  ] as const) {
    const values: (number | undefined)[] = [];
    for (const [key, into] of [[reqKey, requests], [limKey, limits]] as const) {
      const f = lookup(src, key);
      if (f === undefined) {
        values.push(undefined);
        continue;
      }
      const q = parseQuantity(f.value);
      if ('error' in q) {
        problem(f, key, q.error);
        values.push(undefined);
      } else {
        into[resource] = f.value.trim();
        values.push(q.value);
      }
    }
    const [req, lim] = values;
    if (req !== undefined && lim !== undefined && req > lim) {
      const f = lookup(src, reqKey) as Found;
      problem(f, reqKey, `the request is larger than ${limKey} "${lookup(src, limKey)?.value}": a request must not exceed its limit`);
    }
  }

  let drainTimeoutMs: number | undefined;
  const drain = lookup(src, CONFIG_KEYS.drainTimeout);
  if (drain !== undefined) {
    try {
      drainTimeoutMs = parseDuration(drain.value);
    } catch (err) {
      problem(drain, CONFIG_KEYS.drainTimeout, (err as Error).message);
    }
  }

  return { skipInboundPorts, skipOutboundPorts, skipSubnets, proxyUid, nativeSidecar, requests, limits, drainTimeoutMs };
}
