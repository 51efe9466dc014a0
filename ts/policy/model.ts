/**
 * The typed inputs and outputs of the port policy layer.
 *
 * PolicyInputs is everything the compiler looks at: install-time defaults
 * (default opaque ports, clusterNetworks, detect timeouts, the `--opaque-ports`
 * flag), this workload's own annotations (downward-API file), the Kubernetes
 * objects (manifests and/or the live API) and this workload's identity.
 * EffectivePolicy is the answer with a human-readable source for every
 * decision; `effectiveToJson` (below) is what `meshpipe explain --json` and
 * the admin server's /policy print. PolicyTable is the engine's table
 * (ordered rules, exact destinations with shared port tables, fallback
 * rules; ARCHITECTURE.md) and PolicyChange a delta to it. PolicyProblem
 * (problems.ts) names what was wrong in the inputs.
 */

import type { ManifestSet } from './k8s/manifests.js';
import type { ObjectRef } from './k8s/objects.js';
import { formatPortList, type DefaultInboundPolicy, type PortRange } from '../config/index.js';
import { DEFAULT_IDENTITY_TEMPLATE } from '../identity/name.js';

// The engine's types (ARCHITECTURE.md), defined once in ts/engine/native.ts; type-only, so the addon is not loaded.
import type {
  AddressSpec, AuthzSpec, DestinationSpec, Direction, MeshPeerSpec, PolicyChange, PolicyDecision, PolicyFrame, PolicyRule, PolicyTable, PortMode,
} from '../engine/index.js';

export type { AddressSpec, AuthzSpec, DestinationSpec, Direction, MeshPeerSpec, PolicyChange, PolicyDecision, PolicyFrame, PolicyRule, PolicyTable, PortMode };

/**
 * What the mesh parts of the table depend on besides the objects: how a
 * meshed pod's identity is named, and the cluster's default inbound policy
 * (`--trust-domain`, `--identity-template`, `--default-inbound-policy`).
 */
export interface MeshSettings {
  readonly trustDomain: string;
  readonly identityTemplate: string;
  readonly defaultInboundPolicy: DefaultInboundPolicy;
}

export const DEFAULT_MESH_SETTINGS: MeshSettings = Object.freeze({
  trustDomain: 'cluster.local', identityTemplate: DEFAULT_IDENTITY_TEMPLATE, defaultInboundPolicy: 'all-unauthenticated',
});

/** The annotations the policy layer honours. */
export const ANNOTATIONS = {
  opaquePorts: 'config.linkerd.io/opaque-ports',
  skipInboundPorts: 'config.linkerd.io/skip-inbound-ports',
  skipOutboundPorts: 'config.linkerd.io/skip-outbound-ports',
  skipSubnets: 'config.linkerd.io/skip-subnets',
  enableExternalProfiles: 'config.linkerd.io/enable-external-profiles',
  disableInboundDetectTimeout: 'config.linkerd.io/proxy-disable-inbound-protocol-detect-timeout',
  disableOutboundDetectTimeout: 'config.linkerd.io/proxy-disable-outbound-protocol-detect-timeout',
} as const;

/** Linkerd's "disabled" detect timeout: 365 days. */
export const DISABLED_DETECT_TIMEOUT_MS = 365 * 86_400_000;

/** Server `proxyProtocol` values -> engine modes. */
export const PROXY_PROTOCOL_MODES: Readonly<Record<string, PortMode>> = {
  unknown: 'detect', 'HTTP/1': 'http1', 'HTTP/2': 'http2', gRPC: 'grpc', opaque: 'opaque', TLS: 'tls',
};

/** Service `appProtocol` values honoured (others fall through to annotations). */
export const APP_PROTOCOL_MODES: Readonly<Record<string, PortMode>> = {
  'linkerd.io/opaque': 'opaque', http: 'http1', 'kubernetes.io/h2c': 'http2',
};

/** Which pod this proxy serves, when known. */
export interface WorkloadIdentity {
  readonly namespace: string | undefined;
  /** Pod name; resolved against Pods first, then workloads whose pods carry this name's prefix. */
  readonly pod: string | undefined;
}

export interface PolicyInputs {
  /** Replaceable as a whole (Linkerd's proxy.opaquePorts). */
  readonly defaultOpaquePorts: readonly PortRange[];
  /** `--opaque-ports`: this proxy's own opaque ports, both directions, any address. */
  readonly opaquePorts: readonly PortRange[];
  /** Where `opaquePorts` came from, for sources (default `--opaque-ports flag`). */
  readonly opaquePortsOrigin?: string | undefined;
  /** CIDR strings, already validated. */
  readonly clusterNetworks: readonly string[];
  readonly inboundDetectTimeoutMs: number;
  readonly outboundDetectTimeoutMs: number;
  /** This pod's own annotations (downward-API file); they replace the manifest's for this workload. */
  readonly workloadAnnotations: Readonly<Record<string, string>> | undefined;
  /** Where workloadAnnotations came from, for sources (e.g. the file path). */
  readonly workloadAnnotationsOrigin: string | undefined;
  readonly manifests: ManifestSet;
  readonly identity: WorkloadIdentity;
  /** Default: DEFAULT_MESH_SETTINGS. */
  readonly mesh?: MeshSettings | undefined;
  /** Static meshed destinations (`--destinations FILE`, parsed). */
  readonly meshDestinations?: readonly DestinationSpec[] | undefined;
}

/** One decision for a port range of this workload (inbound) or of a destination (outbound). */
export interface PortDecision {
  readonly ports: PortRange;
  /** The port's name (container or Service port) when it has one. */
  readonly name: string | undefined;
  readonly mode: PortMode;
  /** Why, e.g. `opaque: Server db/mysql proxyProtocol=opaque`. */
  readonly source: string;
}

/** Outbound decisions for one destination (a Service's clusterIP, a pod IP, or an unaddressed Service). */
export interface DestinationPolicy {
  readonly object: ObjectRef;
  /** Exact addresses the decisions apply to; empty when unknown (Service without clusterIP in manifests). */
  readonly addresses: readonly string[];
  /** In precedence order: the first decision covering a port wins. */
  readonly decisions: readonly PortDecision[];
  /** A meshed pod: the identity it proves and its tunnel port. */
  readonly mesh?: MeshPeerSpec | undefined;
}

export interface DetectTimeout {
  readonly ms: number;
  readonly source: string;
  /** True when an annotation changed it from the configured value (rules then carry it). */
  readonly overridden: boolean;
}

export interface EffectivePolicy {
  /** The workload this proxy serves, if identified. */
  readonly workload: ObjectRef | undefined;
  readonly inbound: {
    /** In precedence order; the first decision covering a port wins. Ports not covered: detect. */
    readonly decisions: readonly PortDecision[];
    /** One line per declared container port (and each explicitly configured port), for display. */
    readonly ports: readonly PortDecision[];
    readonly detectTimeout: DetectTimeout;
    /** Who may connect to which port (the engine's authorization table). */
    readonly authorization: AuthzSpec;
  };
  readonly outbound: {
    readonly destinations: readonly DestinationPolicy[];
    /** Cluster-wide defaults: default opaque ports inside clusterNetworks (and everywhere with external profiles). */
    readonly defaults: readonly { readonly net: string | null; readonly ports: PortRange; readonly source: string }[];
    readonly detectTimeout: DetectTimeout;
    /** Static meshed destinations (`--destinations FILE`). */
    readonly meshDestinations: readonly DestinationSpec[];
  };
  readonly skipInboundPorts: readonly PortRange[];
  readonly skipOutboundPorts: readonly PortRange[];
  readonly skipSubnets: readonly string[];
  readonly enableExternalProfiles: { readonly enabled: boolean; readonly source: string };
  readonly opaquePortsFlag: readonly PortRange[];
  readonly clusterNetworks: readonly string[];
  readonly defaultOpaquePorts: readonly PortRange[];
}

/** The per-workload part of the JSON (also what /policy serves for the running proxy). */
export function effectiveToJson(e: EffectivePolicy): Record<string, unknown> {
  const port = (d: PortDecision): Record<string, unknown> => ({
    port: d.ports.from === d.ports.to ? d.ports.from : `${d.ports.from}-${d.ports.to}`,
    name: d.name ?? null, mode: d.mode, source: d.source,
  });
  return {
    workload: e.workload ? { kind: e.workload.kind, namespace: e.workload.namespace, name: e.workload.name } : null,
    inbound: {
      ports: e.inbound.ports.map(port),
      rules: e.inbound.decisions.map(port),
      detectTimeoutMs: e.inbound.detectTimeout.ms,
      detectTimeoutSource: e.inbound.detectTimeout.source,
      authorization: e.inbound.authorization,
    },
    outbound: {
      destinations: e.outbound.destinations.map((d) => ({
        kind: d.object.kind, namespace: d.object.namespace, name: d.object.name, addresses: d.addresses, ports: d.decisions.map(port),
        ...(d.mesh ? { mesh: d.mesh } : {}),
      })),
      meshDestinations: e.outbound.meshDestinations,
      clusterDefaults: e.outbound.defaults.map((g) => ({ net: g.net, ports: formatPortList([g.ports]), source: g.source })),
      detectTimeoutMs: e.outbound.detectTimeout.ms,
      detectTimeoutSource: e.outbound.detectTimeout.source,
    },
    skipInboundPorts: formatPortList(e.skipInboundPorts),
    skipOutboundPorts: formatPortList(e.skipOutboundPorts),
    skipSubnets: e.skipSubnets,
    enableExternalProfiles: e.enableExternalProfiles,
    clusterNetworks: e.clusterNetworks,
    defaultOpaquePorts: formatPortList(e.defaultOpaquePorts),
  };
}
