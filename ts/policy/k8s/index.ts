/**
 * ts/policy/k8s/: the Kubernetes objects the port policy reads.
 *
 * objects.ts reduces Namespaces, Services, Pods, the workload kinds' pod
 * templates and `policy.linkerd.io` Servers to typed, frozen shapes;
 * manifests.ts loads them from files and folders (`--manifests`); watch.ts
 * keeps them current from the API server (`--kube`) through
 * @kubernetes/client-node informers.
 *
 * Other folders import from here. watch.ts is deliberately not re-exported:
 * it loads the Kubernetes client, which ts/policy/source.ts imports on demand
 * when the watch is configured.
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
