/**
 * ts/policy/k8s/: the Kubernetes objects the port policy reads.
 *
 * objects.ts reduces Namespaces, Services, Pods, the workload kinds' pod
 * templates and `policy.linkerd.io` Servers to typed, frozen shapes;
 * manifests.ts loads them from files and folders (`--manifests`); watch.ts
 * keeps them current from the API server (`--kube`): list and watch on
 * client.ts with the credentials of kubeconfig.ts, slimmed on receipt;
 * watched.ts is the table of what it watches (and so the RBAC it needs).
 *
 * Other folders import from here. watch.ts is deliberately not re-exported:
 * ts/policy/source.ts imports it on demand when the watch is configured.
 */
export { describeRef, type ObjectRef } from './objects.js';
export { EMPTY_MANIFESTS, loadManifests, type ManifestSet } from './manifests.js';
export {
  normalizeAuthzObject,
  normalizeAuthzObjects,
  AUTHZ_KINDS,
  type AuthzObject,
  type AuthorizationPolicyObject,
  type MeshTlsAuthenticationObject,
  type NetworkAuthenticationObject,
} from './authz-objects.js';
export { describeResource, PROXY_RBAC_MANIFEST, WATCH_VERBS, watchedKinds, type KindSpec } from './watched.js';
