/**
 * The policy of a proxy with no policy source (no annotations file, no
 * manifests, no Kubernetes watch): the one compiler (compiler.ts) with empty
 * inputs. So the plain proxy decides exactly as a sidecar would for a
 * workload it knows nothing about: `--opaque-ports` opaque in both
 * directions; inbound, the default opaque ports (container ports unknown, so
 * not filtered) and the default inbound policy on every port; outbound, the
 * default opaque ports inside clusterNetworks and for loopback (`--forward`
 * targets on this host), anything else detected.
 */
import type { ProxyConfig } from '../config/index.js';
import { compilePolicy, type CompileResult } from './compile.js';
import type { MeshSettings, PolicyInputs } from './model.js';

/** Where `--opaque-ports` came from, as its sources say it: the flag, or the env var or file key that set it. */
export function opaquePortsOrigin(config: Pick<ProxyConfig, 'sources'>): string {
  const source = config.sources.opaquePorts;
  return source === 'default' || source.startsWith('--') ? '--opaque-ports flag' : source;
}

/** The mesh settings of a config. */
export function meshSettings(config: Pick<ProxyConfig, 'trustDomain' | 'identityTemplate' | 'defaultInboundPolicy'>): MeshSettings {
  return { trustDomain: config.trustDomain, identityTemplate: config.identityTemplate, defaultInboundPolicy: config.defaultInboundPolicy };
}

/** The compiler inputs a config gives, before any policy source adds objects or annotations. */
export function configInputs(config: ProxyConfig): PolicyInputs {
  return {
    defaultOpaquePorts: config.defaultOpaquePorts,
    opaquePorts: config.opaquePorts,
    opaquePortsOrigin: opaquePortsOrigin(config),
    clusterNetworks: config.clusterNetworks,
    inboundDetectTimeoutMs: config.inboundDetectTimeoutMs,
    outboundDetectTimeoutMs: config.outboundDetectTimeoutMs,
    workloadAnnotations: undefined,
    workloadAnnotationsOrigin: undefined,
    manifests: { namespaces: [], services: [], workloads: [], servers: [], endpointSlices: [], authz: [], ignored: 0, problems: [] },
    identity: { namespace: config.namespace ?? process.env['POD_NAMESPACE'], pod: config.pod ?? process.env['POD_NAME'] },
    mesh: meshSettings(config),
  };
}

/** The flags-only policy: the compiler with empty inputs. */
export function flagsPolicy(config: ProxyConfig): CompileResult {
  return compilePolicy(configInputs(config));
}
