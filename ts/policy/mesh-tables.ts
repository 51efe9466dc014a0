/**
 * The engine's two mesh tables from the policy inputs, compiled with every
 * port-policy reload: this workload's inbound authorization (compileAuthz:
 * its Servers, Linkerd's authorization resources and default policies,
 * plus the ports its containers expose, which bound the 4143 tunnel) and
 * the meshed destinations (compileDestinations: meshed pods and the
 * `--destinations` file). Problems name the object or file:line; nothing
 * here throws.
 */
import type { AuthzSpec, DestinationsSpec } from '../engine/index.js';
import type { DefaultInboundPolicy } from '../config/index.js';
import { compileAuthz } from './authz.js';
import { resolveSelf } from './compile.js';
import { compileDestinations } from './destinations.js';
import type { PolicyInputs } from './model.js';
import type { DestinationSpec } from '../engine/index.js';
import type { PolicyProblem } from './problems.js';

/** The mesh settings the tables need besides the policy inputs. */
export interface MeshInputs {
  readonly trustDomain: string;
  readonly identityTemplate: string;
  readonly defaultInboundPolicy: DefaultInboundPolicy;
  /** Parsed `--destinations FILE` entries. */
  readonly fileEntries: readonly DestinationSpec[];
}

export interface MeshTables {
  readonly authz: AuthzSpec;
  readonly destinations: DestinationsSpec;
  readonly problems: readonly PolicyProblem[];
}

/** Compiles both tables for `generation`. */
export function compileMeshTables(inputs: PolicyInputs, mesh: MeshInputs, generation: number): MeshTables {
  const self = resolveSelf(inputs);
  const namespace = self.ref.namespace;
  const ns = inputs.manifests.namespaces.find((n) => n.name === namespace);
  const authz = compileAuthz({
    generation,
    workload: self.workload,
    ref: self.ref,
    namespace,
    workloadAnnotations: self.annotations,
    namespaceAnnotations: ns?.annotations ?? {},
    servers: inputs.manifests.servers,
    objects: inputs.manifests.authz,
    clusterNetworks: inputs.clusterNetworks,
    defaultPolicy: mesh.defaultInboundPolicy,
    trustDomain: mesh.trustDomain,
    identityTemplate: mesh.identityTemplate,
  });
  // The tunnel reaches only the ports the workload declares, when they are known.
  const declared = self.workload?.containerPorts.filter((p) => p.protocol === 'TCP').map((p) => p.port);
  const exposedPorts = declared !== undefined && declared.length > 0 ? [...new Set(declared)].sort((a, b) => a - b) : null;
  const destinations = compileDestinations({
    generation,
    pods: inputs.manifests.workloads,
    trustDomain: mesh.trustDomain,
    identityTemplate: mesh.identityTemplate,
    fileEntries: mesh.fileEntries,
  });
  return {
    authz: { ...authz.spec, exposedPorts },
    destinations: destinations.spec,
    problems: [...authz.problems, ...destinations.problems],
  };
}
