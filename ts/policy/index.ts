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
 * in the inputs). compiler.ts is the one compiler, incremental: frame.ts
 * compiles this workload's own rules, outbound.ts one destination at a
 * time, destinations.ts keeps the engine's exact destinations and shared
 * port tables in step and yields the deltas. compile.ts runs it one-shot
 * (explain), flags.ts with empty inputs (a proxy without policy sources);
 * source.ts feeds it from files and the Kubernetes watch, worker.ts runs
 * that in a worker thread, and sidecar.ts hands the tables and deltas to a
 * running sidecar. lookup.ts answers "what does this table decide" with the
 * engine's own lookup, through the addon.
 * authz.ts compiles Linkerd's authorization resources and default policies
 * into the table's inbound authorization, mesh-destinations.ts the meshed
 * peers of pods with the sidecar and the `--destinations FILE` entries (the
 * mesh parts ride in the same table).
 * endpoints.ts compiles Services and their EndpointSlices, incrementally, and
 * the static `--endpoints FILE` (endpoints-file.ts) into the engine's
 * endpoints table for per-request HTTP balancing; the worker sends it with
 * the policy and endpoints-feed.ts hands it to the engine.
 *
 * Other folders import from here (the Kubernetes object types and loaders from
 * ts/policy/k8s/). Files of the policy folder and of k8s/ import each other
 * directly.
 */
export { effectiveToJson, type EffectivePolicy, type PolicyInputs, type PortDecision, type WorkloadIdentity } from './model.js';
export { generalProblem, lineProblem, type PolicyProblem } from './problems.js';
export { findWorkload } from './frame.js';
export {
  addressIn,
  DEFAULT_CLUSTER_NETWORKS,
  inNetworks,
  isCidrError,
  parseCidr,
  parseCidrList,
  parseCidrListStrict,
  type Cidr,
} from './cidr.js';
export { parseDownwardApi } from './downward-api.js';
export { compilePolicy, compileAllWorkloads, type CompileResult } from './compile.js';
export { PolicyCompiler } from './compiler.js';
export { flagsPolicy, meshSettings } from './flags.js';
export { lookupPolicy, authorizeClient, type LookupResult } from './lookup.js';
export type { PolicyUpdate } from './source.js';
export { createSidecarPolicy, POLICY_MESSAGES, type SidecarPolicy, type PolicyEngine } from './sidecar.js';
export { compileAuthz, defaultPolicyRules, DEFAULT_INBOUND_POLICY_ANNOTATION, type AuthzInputs, type AuthzResult } from './authz.js';
export { parseDestinationsFile, isMeshed, meshPeerOf, MESH_ANNOTATIONS, DEFAULT_TUNNEL_PORT } from './mesh-destinations.js';
export { EndpointsCompiler, compileEndpoints, type EndpointsChange } from './endpoints.js';
export { parseEndpointsFile, readEndpointsFile, socketAddr, type EndpointsProblem } from './endpoints-file.js';
export { describeResource, PROXY_RBAC_MANIFEST, WATCH_VERBS, watchedKinds, type KindSpec } from './k8s/index.js';
