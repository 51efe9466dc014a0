/**
 * One-shot compiles over the one compiler (compiler.ts): PolicyInputs (a
 * loaded set of manifests, this workload's annotations and identity, the
 * install-time defaults) -> the effective policy with a source for every
 * decision, the problems, and the engine table.
 *
 * The flags-only proxy is the case with no objects and no annotations
 * (flags.ts), `meshpipe explain` the case with manifests; the sidecar feeds
 * the same compiler incrementally (source.ts). The rules are in frame.ts
 * (this workload: inbound, its own switches, cluster defaults) and
 * outbound.ts (destinations).
 */

import type { WorkloadObject } from './k8s/objects.js';
import { isCidrError, parseCidr, type Cidr } from './cidr.js';
import { PolicyCompiler, type CompilerSettings } from './compiler.js';
import { DEFAULT_MESH_SETTINGS, type EffectivePolicy, type PolicyInputs, type PolicyTable } from './model.js';
import type { PolicyProblem } from './problems.js';

export interface CompileResult {
  readonly effective: EffectivePolicy;
  readonly problems: readonly PolicyProblem[];
  /** The engine table (generation 1). */
  readonly table: PolicyTable;
}

/** Parses clusterNetworks; the config already refused bad ones, so a stray one is skipped. */
export function parseNetworks(networks: readonly string[]): Cidr[] {
  const out: Cidr[] = [];
  for (const n of networks) {
    const c = parseCidr(n);
    if (!isCidrError(c)) out.push(c);
  }
  return out;
}

/** The compiler settings of a set of inputs. */
export function settingsOf(inputs: Omit<PolicyInputs, 'manifests' | 'workloadAnnotations' | 'workloadAnnotationsOrigin'>): CompilerSettings {
  return {
    defaultOpaquePorts: inputs.defaultOpaquePorts,
    opaquePorts: inputs.opaquePorts,
    opaquePortsOrigin: inputs.opaquePortsOrigin,
    networks: parseNetworks(inputs.clusterNetworks),
    inboundDetectTimeoutMs: inputs.inboundDetectTimeoutMs,
    outboundDetectTimeoutMs: inputs.outboundDetectTimeoutMs,
    identity: inputs.identity,
    mesh: inputs.mesh ?? DEFAULT_MESH_SETTINGS,
  };
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/** Loads inputs into a fresh compiler. Objects of the same kind and name are all kept (in input order). */
export function compilerFor(inputs: PolicyInputs): PolicyCompiler {
  const compiler = new PolicyCompiler(settingsOf(inputs));
  compiler.setSelfAnnotations(inputs.workloadAnnotations, inputs.workloadAnnotationsOrigin);
  const m = inputs.manifests;
  const objects = [...m.namespaces, ...m.services, ...m.workloads, ...m.servers, ...m.authz];
  // Each object its own origin, numbered: duplicates (the same object in two files) stay distinct.
  const width = String(objects.length).length;
  objects.forEach((o, i) => compiler.upsert(`#${String(i).padStart(width, '0')}`, o));
  compiler.setOriginProblems('inputs', m.problems);
  if (inputs.meshDestinations !== undefined) compiler.setMeshDestinations('mesh destinations', inputs.meshDestinations);
  return compiler;
}

/** Compiles the effective policy of this proxy's workload. Never throws on bad input. */
export function compilePolicy(inputs: PolicyInputs): CompileResult {
  const compiler = compilerFor(inputs);
  const table = compiler.table(1);
  return { effective: deepFreeze(compiler.effective().effective), problems: Object.freeze(compiler.problems()), table };
}

/**
 * Compiles every workload in the manifests as if it were this proxy's
 * (`meshpipe explain --manifests` with no --port).
 */
export function compileAllWorkloads(inputs: PolicyInputs): { workload: WorkloadObject; result: CompileResult }[] {
  return inputs.manifests.workloads.map((w) => ({
    workload: w,
    result: compilePolicy({
      ...inputs,
      workloadAnnotations: undefined,
      workloadAnnotationsOrigin: undefined,
      identity: { namespace: w.namespace, pod: w.name },
    }),
  }));
}
