/**
 * Which Kubernetes objects carry a pod template, and where.
 *
 * `meshpipe inject` changes pods: a Pod itself, or the pod template of a
 * workload that creates pods (Deployment, StatefulSet, DaemonSet, ReplicaSet,
 * Job: `spec.template`; CronJob: `spec.jobTemplate.spec.template`). A `List`
 * (what `kubectl get -o yaml` prints for several objects) holds such objects
 * in `items`. Every other kind passes through untouched. Locations are JSON
 * Pointer token arrays (RFC 6901), so the same path addresses the object in a
 * YAML document, in a plain JSON value and in a JSONPatch operation.
 */

/** A plain JSON object as parsed from YAML or JSON. */
export type JsonObject = { [key: string]: JsonValue };
export type JsonValue = string | number | boolean | null | JsonValue[] | JsonObject;

/** The kinds whose pods are injected, with the path of their pod template. */
export const POD_TEMPLATE_PATHS: Readonly<Record<string, readonly string[]>> = Object.freeze({
  Pod: [],
  Deployment: ['spec', 'template'],
  StatefulSet: ['spec', 'template'],
  DaemonSet: ['spec', 'template'],
  ReplicaSet: ['spec', 'template'],
  Job: ['spec', 'template'],
  CronJob: ['spec', 'jobTemplate', 'spec', 'template'],
});

/** The kinds `meshpipe inject` changes (List aside). */
export const INJECTABLE_KINDS: readonly string[] = Object.freeze(Object.keys(POD_TEMPLATE_PATHS));

/** How an object is named in reports: `Deployment shop/web`, `Pod web-7d9f-*` (generateName). */
export interface ObjectName {
  readonly kind: string;
  readonly namespace: string | undefined;
  readonly name: string;
}

/** One pod template found in a document, with the object that holds it. */
export interface TemplateSite {
  /** Tokens from the document root to the pod template (or the Pod). */
  readonly path: readonly string[];
  /** The object the template belongs to (for reports and namespace lookup). */
  readonly object: ObjectName;
  /** The top-level object (an item of a List, or the document itself). */
  readonly objectPath: readonly string[];
}

export function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The value at `path`, or undefined when a step is missing or not a container. */
export function getPath(root: JsonValue, path: readonly string[]): JsonValue | undefined {
  let cur: JsonValue | undefined = root;
  for (const token of path) {
    if (Array.isArray(cur)) cur = cur[Number(token)];
    else if (isObject(cur)) cur = Object.hasOwn(cur, token) ? cur[token] : undefined;
    else return undefined;
  }
  return cur;
}

function str(value: JsonValue | undefined): string | undefined {
  return typeof value === 'string' && value !== '' ? value : undefined;
}

/** The object's name for reports; a Pod being created may only have a generateName. */
export function objectName(obj: JsonObject, fallbackNamespace?: string): ObjectName {
  const meta = isObject(obj['metadata']) ? obj['metadata'] : {};
  const generate = str(meta['generateName']);
  return {
    kind: str(obj['kind']) ?? '(no kind)',
    namespace: str(meta['namespace']) ?? fallbackNamespace,
    name: str(meta['name']) ?? (generate !== undefined ? `${generate}*` : '(no name)'),
  };
}

/** `Deployment shop/web`, or `Pod web` when the namespace is not known. */
export function describeObject(o: ObjectName): string {
  return `${o.kind} ${o.namespace !== undefined ? `${o.namespace}/` : ''}${o.name}`;
}

/**
 * Every pod template in one parsed document: none for other kinds, one for a
 * workload, one per injectable item of a List.
 */
export function findTemplates(doc: JsonValue): TemplateSite[] {
  if (!isObject(doc)) return [];
  const kind = doc['kind'];
  if (kind === 'List' || (typeof kind === 'string' && kind.endsWith('List') && Array.isArray(doc['items']))) {
    const items = doc['items'];
    if (!Array.isArray(items)) return [];
    return items.flatMap((item, i) => siteOf(item, [`items`, String(i)]));
  }
  return siteOf(doc, []);
}

function siteOf(obj: JsonValue, base: readonly string[]): TemplateSite[] {
  if (!isObject(obj) || typeof obj['kind'] !== 'string') return [];
  const rel = POD_TEMPLATE_PATHS[obj['kind']];
  if (rel === undefined) return [];
  // A workload without its template (e.g. a partial patch file) is not a pod to inject.
  if (!isObject(getPath(obj, rel))) return [];
  return [{ path: [...base, ...rel], object: objectName(obj), objectPath: base }];
}
