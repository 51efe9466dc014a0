/**
 * ts/policy/: the port policy, Linkerd's way: which ports are opaque, which
 * are detected, which are skipped, and why (docs/policy.md).
 *
 * Inputs are the workload's annotations (downward-api.ts reads the kubelet's
 * file; annotations.ts reads the `config.linkerd.io/*` keys), the Kubernetes
 * objects (k8s/: manifests and a live watch) and the install-time defaults
 * (cidr.ts for clusterNetworks and skip subnets). compile.ts and outbound.ts
 * turn them into an EffectivePolicy with a source for every decision and the
 * engine's PolicyTable (model.ts holds the types, problems.ts what was wrong
 * in the inputs); source.ts recompiles when an input changes, and sidecar.ts
 * hands the tables to a running sidecar. authz.ts compiles Linkerd's
 * authorization resources and default policies into the engine's inbound
 * authorization table, destinations.ts the meshed-destinations table (pods
 * with the sidecar and `--destinations FILE`); neither is wired into the
 * running proxy yet. endpoints.ts compiles Services and their EndpointSlices
 * (and `--endpoints FILE`) into the engine's endpoints table for per-request
 * HTTP balancing.
 *
 * Other folders import from here (the Kubernetes object types and loaders from
 * ts/policy/k8s/). Files of the policy folder and of k8s/ import each other
 * directly.
 */
export { effectiveToJson, type EffectivePolicy, type PolicyInputs, type PortDecision } from './model.js';
export { lineProblem, type PolicyProblem } from './problems.js';
export {
  DEFAULT_CLUSTER_NETWORKS,
  inNetworks,
  isCidrError,
  parseCidr,
  parseCidrList,
  parseCidrListStrict,
  type Cidr,
} from './cidr.js';
export { parseDownwardApi } from './downward-api.js';
export { compilePolicy, compileAllWorkloads, toPolicyTable, lookupPolicy, type CompileResult } from './compile.js';
export type { PolicyUpdate } from './source.js';
export { startSidecarPolicy, type SidecarPolicy } from './sidecar.js';
export { compileAuthz, defaultPolicyRules, DEFAULT_INBOUND_POLICY_ANNOTATION, type AuthzInputs, type AuthzResult } from './authz.js';
export {
  compileDestinations,
  parseDestinationsFile,
  isMeshed,
  MESH_ANNOTATIONS,
  DEFAULT_TUNNEL_PORT,
  type DestinationsInputs,
  type DestinationsResult,
} from './destinations.js';
export { compileEndpoints, endpointsDelta, parseEndpointsFile, socketAddr, type EndpointsProblem, type SentEndpoints } from './endpoints.js';
