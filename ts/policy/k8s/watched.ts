/**
 * What the Kubernetes watch (watch.ts) lists and watches, as one table, and
 * so what RBAC it needs: list and watch of each collection, cluster-wide
 * for the cluster-scoped ones. deploy/kubernetes/proxy-rbac.yaml grants
 * exactly that and is tested against this table; a 403 names the resource
 * and that manifest.
 *
 * A leaf with no I/O, so that `meshpipe inject` can name the manifest
 * without loading the watch.
 */

/** One watched collection: what the reflector lists and watches, and what RBAC must allow for it. */
export interface KindSpec {
  readonly kind: string;
  readonly path: string;
  /** The API group (`""` for the core group), as a Role's `apiGroups` names it. */
  readonly group: string;
  /** The resource (plural), as a Role's `resources` names it. */
  readonly resource: string;
  /** The namespace it is listed in; undefined: across the cluster (only a ClusterRoleBinding grants that). */
  readonly namespace: string | undefined;
  readonly query?: Readonly<Record<string, string>>;
  /** Ask for PartialObjectMetadata (metadata only). */
  readonly metadataOnly?: boolean;
}

/** The verbs the watch uses on every collection (no get: it never reads one object by name). */
export const WATCH_VERBS: readonly string[] = Object.freeze(['list', 'watch']);

/** Where the RBAC the watch needs is shipped; named in the message of a 403. */
export const PROXY_RBAC_MANIFEST = 'deploy/kubernetes/proxy-rbac.yaml';

function collection(kind: string, group: string, version: string, resource: string, namespace?: string): KindSpec {
  const base = group === '' ? `/api/${version}` : `/apis/${group}/${version}`;
  const at = namespace === undefined ? '' : `/namespaces/${encodeURIComponent(namespace)}`;
  return { kind, path: `${base}${at}/${resource}`, group, resource, namespace };
}

/**
 * Every collection the watch lists and watches: cluster-wide kinds always
 * (EndpointSlices unless `endpointSlices` is false: the HTTP layer off), the workload controllers only in `controllersNamespace` (when set). The
 * single source of truth for the reflectors and for the RBAC they need
 * (deploy/kubernetes/proxy-rbac.yaml is checked against it).
 */
export function watchedKinds(
  options: { serverApiVersion?: string | undefined; controllersNamespace?: string | undefined; endpointSlices?: boolean | undefined } = {},
): KindSpec[] {
  const version = options.serverApiVersion ?? 'v1beta3';
  const specs: KindSpec[] = [
    { ...collection('Namespace', '', 'v1', 'namespaces'), metadataOnly: true },
    collection('Service', '', 'v1', 'services'),
    { ...collection('Pod', '', 'v1', 'pods'), query: { fieldSelector: 'status.phase!=Succeeded,status.phase!=Failed' } },
    collection('Server', 'policy.linkerd.io', version, 'servers'),
    collection('AuthorizationPolicy', 'policy.linkerd.io', 'v1alpha1', 'authorizationpolicies'),
    collection('MeshTLSAuthentication', 'policy.linkerd.io', 'v1alpha1', 'meshtlsauthentications'),
    collection('NetworkAuthentication', 'policy.linkerd.io', 'v1alpha1', 'networkauthentications'),
  ];
  // HTTP balancing's endpoints (docs/http.md), unless the HTTP layer is off.
  if (options.endpointSlices !== false) specs.push(collection('EndpointSlice', 'discovery.k8s.io', 'v1', 'endpointslices'));
  const ns = options.controllersNamespace;
  if (ns !== undefined) {
    specs.push(
      collection('Deployment', 'apps', 'v1', 'deployments', ns),
      collection('StatefulSet', 'apps', 'v1', 'statefulsets', ns),
      collection('DaemonSet', 'apps', 'v1', 'daemonsets', ns),
      collection('ReplicaSet', 'apps', 'v1', 'replicasets', ns),
      collection('Job', 'batch', 'v1', 'jobs', ns),
      collection('CronJob', 'batch', 'v1', 'cronjobs', ns),
    );
  }
  return specs;
}

/** `pods`, `servers.policy.linkerd.io`: the resource as RBAC and the API server's messages name it. */
export function describeResource(spec: Pick<KindSpec, 'group' | 'resource'>): string {
  return spec.group === '' ? spec.resource : `${spec.resource}.${spec.group}`;
}
