/**
 * Injection and uninjection of one pod template (or Pod), as pure functions
 * of plain JSON: the same code serves `meshpipe inject`, `meshpipe uninject`
 * and the admission webhook.
 *
 * Injection is a function of the pod without meshpipe: an injected pod is
 * first uninjected, then injected again from its current annotations, and
 * compared with what it is. So injecting twice changes nothing, and a pod
 * whose annotations changed since it was injected is brought up to date.
 * Uninjection removes exactly what injection added: the `meshpipe-init` and
 * `meshpipe-proxy` containers, the `meshpipe-*` volumes (the identity's
 * included), the marker annotations, and restores `terminationGracePeriodSeconds` when injection
 * raised it (the original is kept in an annotation until then).
 *
 * Pods are never injected when that would break them or the node: host
 * network pods (the iptables rules would land in the node's namespace), pods
 * that already carry Linkerd's proxy, and pods whose containers use the
 * proxy's ports. Those are reported and left unchanged. A pod injected with
 * less than it asked for (a proxy without the API watch, because the pod
 * turns its service account token off: kube-watch.ts) is injected, with a
 * warning naming why.
 */
import {
  decideInjection,
  MARKER_KEYS,
  readSettings,
  type AnnotationProblem,
  type AnnotationSources,
  type Annotations,
} from './annotations.js';
import { describeIdentity, identityMarker, readIdentity } from './identity.js';
import { isObject, type JsonObject, type JsonValue, type ObjectName } from './kinds.js';
import { readKubeWatch } from './kube-watch.js';
import { jsonEqual } from './patch.js';
import { addedVolumes, initContainer, NAMES, PORTS, proxyContainer, type InjectOptions } from './sidecar.js';

/** The grace period Kubernetes uses when a pod sets none. */
export const DEFAULT_GRACE_PERIOD_S = 30;
/** Room left after the proxy's drain for the process to exit, when the grace period is raised for it. */
export const GRACE_MARGIN_S = 5;

const OUR_CONTAINERS = new Set<string>([NAMES.init, NAMES.proxy]);
const OUR_VOLUMES = new Set<string>([NAMES.podinfoVolume, NAMES.xtablesVolume, NAMES.identityVolume]);
const LINKERD_CONTAINERS = new Set(['linkerd-proxy', 'linkerd-init']);

export interface TemplateInput {
  /** The pod template (`{ metadata, spec }`) or the Pod. */
  readonly template: JsonObject;
  /** The object it belongs to (the workload, or the Pod). */
  readonly object: ObjectName;
  /** The annotations of the object's Namespace, when known. */
  readonly namespaceAnnotations: Annotations;
}

export type InjectOutcome =
  | {
    readonly action: 'injected' | 'updated'; readonly template: JsonObject; readonly because: string; readonly identity: string;
    /** What the pod gets less of than it asked for, and why (it is injected all the same). */
    readonly warnings: readonly AnnotationProblem[];
  }
  | { readonly action: 'unchanged'; readonly because: string; readonly warnings: readonly AnnotationProblem[] }
  | { readonly action: 'uninjected'; readonly template: JsonObject; readonly because: string }
  | { readonly action: 'skipped'; readonly because: string; readonly warn: boolean }
  | { readonly action: 'invalid'; readonly problems: readonly AnnotationProblem[] };

function named(list: JsonValue | undefined): JsonObject[] {
  return Array.isArray(list) ? list.filter(isObject) : [];
}

function nameOf(item: JsonObject): string {
  return typeof item['name'] === 'string' ? item['name'] : '';
}

/** True when the template carries anything injection adds. */
export function isInjected(template: JsonObject): boolean {
  const meta = isObject(template['metadata']) ? template['metadata'] : {};
  const ann = isObject(meta['annotations']) ? meta['annotations'] : {};
  const spec = isObject(template['spec']) ? template['spec'] : {};
  return Object.hasOwn(ann, MARKER_KEYS.injected)
    || [...named(spec['initContainers']), ...named(spec['containers'])].some((c) => OUR_CONTAINERS.has(nameOf(c)))
    || named(spec['volumes']).some((v) => OUR_VOLUMES.has(nameOf(v)));
}

/** Removes `names` from the array at obj[key]; drops the key when it becomes empty through this. */
function removeNamed(obj: JsonObject, key: string, names: ReadonlySet<string>): void {
  const list = obj[key];
  if (!Array.isArray(list)) return;
  const kept = list.filter((x) => !(isObject(x) && names.has(nameOf(x))));
  if (kept.length === list.length) return;
  if (kept.length === 0) delete obj[key];
  else obj[key] = kept;
}

/** The template without anything injection added (a copy; the input is not changed). */
export function uninjectTemplate(template: JsonObject): JsonObject {
  const out = structuredClone(template);
  const spec = out['spec'];
  if (isObject(spec)) {
    removeNamed(spec, 'initContainers', OUR_CONTAINERS);
    removeNamed(spec, 'containers', OUR_CONTAINERS);
    removeNamed(spec, 'volumes', OUR_VOLUMES);
  }
  const meta = out['metadata'];
  const ann = isObject(meta) ? meta['annotations'] : undefined;
  if (isObject(meta) && isObject(ann)) {
    const original = ann[MARKER_KEYS.originalGracePeriod];
    if (typeof original === 'string' && isObject(spec)) {
      if (/^\d+$/.test(original)) spec['terminationGracePeriodSeconds'] = Number(original);
      else delete spec['terminationGracePeriodSeconds'];
    }
    const before = Object.keys(ann).length;
    delete ann[MARKER_KEYS.injected];
    delete ann[MARKER_KEYS.originalGracePeriod];
    delete ann[MARKER_KEYS.identity];
    if (Object.keys(ann).length === 0 && before > 0) {
      delete meta['annotations'];
      if (Object.keys(meta).length === 0) delete out['metadata'];
    }
  }
  return out;
}

/** The template's annotations as strings; a non-string value is a problem (the API server refuses it). */
function readAnnotations(template: JsonObject, object: ObjectName, problems: AnnotationProblem[]): Record<string, string> {
  const meta = template['metadata'];
  const raw = isObject(meta) ? meta['annotations'] : undefined;
  const out: Record<string, string> = {};
  if (!isObject(raw)) return out;
  for (const [key, value] of Object.entries(raw)) {
    if (typeof value === 'string') out[key] = value;
    else if (key.includes('meshpipe.io/') || key.includes('linkerd.io/')) {
      problems.push({ object, key, value: JSON.stringify(value), message: 'annotation values must be strings: quote the value in YAML' });
    }
  }
  return out;
}

/** Reasons the pod must not be injected at all (reported, not fatal). */
function refusal(spec: JsonObject): string | undefined {
  if (spec['hostNetwork'] === true) {
    return "the pod uses the host's network (hostNetwork: true): meshpipe init would rewrite the node's iptables";
  }
  const linkerd = [...named(spec['initContainers']), ...named(spec['containers'])].find((c) => LINKERD_CONTAINERS.has(nameOf(c)));
  if (linkerd !== undefined) return `the pod already has Linkerd's ${nameOf(linkerd)} container: remove it first (linkerd uninject)`;
  return undefined;
}

/** App containers that listen on the proxy's ports would never receive traffic (or keep the proxy from starting). */
function portConflicts(spec: JsonObject, object: ObjectName): AnnotationProblem[] {
  const taken = new Set<number>([PORTS.inbound, PORTS.outbound, PORTS.admin, 4190]);
  const problems: AnnotationProblem[] = [];
  for (const c of [...named(spec['initContainers']), ...named(spec['containers'])]) {
    for (const p of named(c['ports'])) {
      const port = p['containerPort'];
      if (typeof port === 'number' && taken.has(port)) {
        problems.push({
          object, field: true, key: `spec.containers[${nameOf(c)}].ports`, value: String(port),
          message: `port ${port} is the proxy's (inbound 4143, outbound 4140, admin 4191, 4190 reserved): move the app to another port`,
        });
      }
    }
  }
  return problems;
}

/** The injected form of an uninjected template (its identity, described, and any warnings), or the problems that prevent it. */
function build(base: JsonObject, input: TemplateInput, opts: InjectOptions, sources: AnnotationSources, problems: AnnotationProblem[]): { template: JsonObject; identity: string; warnings: AnnotationProblem[] } | undefined {
  const settings = readSettings(sources, problems);
  const identity = readIdentity(sources, opts.identity, problems);
  const spec = base['spec'] as JsonObject;
  const kube = readKubeWatch(sources, opts.kubeWatch, spec, problems);
  problems.push(...portConflicts(spec, input.object));
  if (problems.length > 0) return undefined;

  const out = structuredClone(base);
  const outSpec = out['spec'] as JsonObject;
  const native = settings.nativeSidecar ?? opts.sidecar === 'native';
  const current = typeof spec['terminationGracePeriodSeconds'] === 'number' ? spec['terminationGracePeriodSeconds'] : undefined;
  const grace = current ?? DEFAULT_GRACE_PERIOD_S;
  const drainMs = settings.drainTimeoutMs ?? grace * 1000;
  const needed = Math.ceil(drainMs / 1000) + GRACE_MARGIN_S;
  const marker: Record<string, string> = { [MARKER_KEYS.injected]: opts.version, [MARKER_KEYS.identity]: identityMarker(identity) };
  if (settings.drainTimeoutMs !== undefined && needed > grace) {
    outSpec['terminationGracePeriodSeconds'] = needed;
    marker[MARKER_KEYS.originalGracePeriod] = current === undefined ? 'unset' : String(current);
  }

  const meta = isObject(out['metadata']) ? out['metadata'] : (out['metadata'] = {});
  const ann = isObject(meta['annotations']) ? meta['annotations'] : (meta['annotations'] = {});
  Object.assign(ann, marker);

  const proxy = proxyContainer(settings, { identity, kube }, opts, native, drainMs);
  const init = initContainer(settings, opts);
  const appInit = named(outSpec['initContainers']);
  outSpec['initContainers'] = native ? [init, proxy, ...appInit] : [init, ...appInit];
  if (!native) outSpec['containers'] = [proxy, ...named(outSpec['containers'])];
  outSpec['volumes'] = [...named(outSpec['volumes']), ...addedVolumes(settings, { identity, kube }, opts)];
  return { template: out, identity: describeIdentity(identity), warnings: kube.warning === undefined ? [] : [kube.warning] };
}

/**
 * Decides and computes the injection of one template.
 * @param defaultInject inject when no annotation says (true for the CLI, false for the webhook)
 */
export function injectTemplate(input: TemplateInput, opts: InjectOptions, defaultInject: boolean): InjectOutcome {
  const { template, object } = input;
  const problems: AnnotationProblem[] = [];
  const spec = template['spec'];
  if (!isObject(spec) || !Array.isArray(spec['containers']) || spec['containers'].length === 0) {
    return { action: 'invalid', problems: [{ object, field: true, key: 'spec.containers', value: '', message: 'the pod has no containers' }] };
  }
  const injected = isInjected(template);
  const base = injected ? uninjectTemplate(template) : template;
  const sources: AnnotationSources = {
    pod: readAnnotations(base, object, problems),
    podObject: object,
    namespace: input.namespaceAnnotations,
    namespaceObject: { kind: 'Namespace', namespace: undefined, name: object.namespace ?? '(unknown)' },
  };
  const decision = decideInjection(sources, defaultInject, problems);
  if (problems.length > 0) return { action: 'invalid', problems };
  if (!decision.inject) {
    if (injected) return { action: 'uninjected', template: base, because: decision.because };
    return { action: 'skipped', because: decision.because, warn: false };
  }
  const refused = refusal(base['spec'] as JsonObject);
  if (refused !== undefined) return { action: 'skipped', because: refused, warn: true };
  const desired = build(base, input, opts, sources, problems);
  if (desired === undefined) return { action: 'invalid', problems };
  if (jsonEqual(desired.template, template)) return { action: 'unchanged', because: 'already injected as planned', warnings: desired.warnings };
  return { action: injected ? 'updated' : 'injected', template: desired.template, because: decision.because, identity: desired.identity, warnings: desired.warnings };
}
