/**
 * ts/engine/: the TypeScript side of the native engine.
 *
 * native.ts loads the napi-rs addon (lazily, on the first `NativeProxy` or
 * `PolicyLookup`) and types everything that crosses the boundary
 * (ARCHITECTURE.md); build-config.ts turns a `ProxyConfig` into the engine's
 * `EngineConfig`; proxy.ts is the library `Proxy` (start once, close once,
 * errors as `MeshpipeError`s).
 * mesh.ts is the addon's identity functions and its authorization and
 * meshed-destination decisions.
 *
 * Other folders import from here; the engine folder itself depends on
 * ts/config/, ts/errors.ts and, for the flags-only policy a config gives,
 * ts/policy/flags.ts.
 */
export { Proxy, MeshpipeProxy, type ProxyState, type ProxyOptions } from './proxy.js';
export { buildEngineConfig } from './build-config.js';
export { setEngineLog, spawnApp, reapChildren, PolicyLookup, type EngineLogStream } from './native.js';
export { reachesLoopback, resolvePodIps, proxyPorts, type PodIps } from './inbound.js';
export { identityInit, identityIssue, identityCheck, authzDecide } from './mesh.js';
export type {
  AuthzSpec,
  PortAuthzSpec,
  AuthzRuleSpec,
  NetworkSpec,
  DecisionInfo,
  DestinationSpec,
  EndpointsUpdate,
  ServiceEndpointsSpec,
  HttpSpec,
  HttpSnapshot,
  MeshPeerSpec,
  IdentityInfo,
  TrustBundle,
  IssuedPem,
  LoadSpec,
  IdentityInstalled,
  MeshSnapshot,
} from './boundary.js';
export type {
  EngineConfig,
  PolicyTable,
  PolicyChange,
  PolicyFrame,
  PolicyDecision,
  AddressSpec,
  PolicyRule,
  PortMode,
  Direction,
  BoundListener,
  CloseSummary,
  EngineSnapshot,
  FailureCounts,
  HistogramSnapshot,
  TcpSeriesSnapshot,
  ConnectionInfo,
} from './native.js';
