/**
 * Helpers for the policy tests: fixture paths, default policy inputs, and a
 * one-call "compile these fixtures as this pod and give me the table" so the
 * table-driven tests read as data. Every lookup goes through toPolicyTable and
 * the engine-equivalent first-match lookupPolicy, so a test checks what the
 * engine would actually do, not only what the effective policy claims.
 */
import { join } from 'node:path';
import { loadManifests } from '../ts/policy/k8s/manifests.js';
import { DEFAULT_CLUSTER_NETWORKS } from '../ts/policy/cidr.js';
import { compilePolicy, lookupPolicy, toPolicyTable, type CompileResult } from '../ts/policy/compile.js';
import type { PolicyInputs, PolicyTable } from '../ts/policy/model.js';
import { DEFAULT_OPAQUE_PORTS, parsePortListStrict } from '../ts/config/port-list.js';
import { ROOT } from './helpers.js';

export const FIXTURES = join(ROOT, 'test/fixtures/policy');

export function fixture(name: string): string {
  return join(FIXTURES, name);
}

export function baseInputs(overrides: Partial<PolicyInputs> = {}): PolicyInputs {
  return {
    defaultOpaquePorts: parsePortListStrict(DEFAULT_OPAQUE_PORTS),
    opaquePorts: [],
    clusterNetworks: DEFAULT_CLUSTER_NETWORKS.split(','),
    inboundDetectTimeoutMs: 10_000,
    outboundDetectTimeoutMs: 10_000,
    workloadAnnotations: undefined,
    workloadAnnotationsOrigin: undefined,
    manifests: { namespaces: [], services: [], workloads: [], servers: [], endpointSlices: [], ignored: 0, problems: [] },
    identity: { namespace: undefined, pod: undefined },
    ...overrides,
  };
}

export interface Compiled {
  readonly result: CompileResult;
  readonly table: PolicyTable;
  lookup(direction: 'inbound' | 'outbound', address: string, port: number): { mode: string; source: string; detectTimeoutMs: number | null };
}

/** Compiles fixtures (file names under test/fixtures/policy) as pod `ns/pod`. */
export async function compileFixtures(
  files: readonly string[], pod: string | undefined, overrides: Partial<PolicyInputs> = {},
): Promise<Compiled> {
  const manifests = await loadManifests(files.map(fixture));
  const [namespace, name] = pod === undefined ? [undefined, undefined] : pod.split('/');
  const result = compilePolicy(baseInputs({ manifests, identity: { namespace, pod: name }, ...overrides }));
  const table = toPolicyTable(result.effective, 1);
  return {
    result,
    table,
    lookup(direction, address, port) {
      const hit = lookupPolicy(table, direction, address, port);
      if (hit.index >= 0 || direction === 'outbound') return hit;
      // Inbound with no matching rule: the effective policy explains why it is detect.
      const line = result.effective.inbound.ports.find((p) => p.ports.from === port);
      return { ...hit, source: line?.source ?? hit.source };
    },
  };
}
