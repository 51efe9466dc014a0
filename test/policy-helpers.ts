/**
 * Helpers for the policy tests: fixture paths, default policy inputs, and a
 * one-call "compile these fixtures as this pod and give me the table" so the
 * table-driven tests read as data. Every lookup is the engine's own, through
 * the addon (ts/policy/lookup.ts), on the compiled table: a test checks what
 * the engine would actually do, not only what the effective policy claims.
 */
import { join } from 'node:path';
import { loadManifests } from '../ts/policy/k8s/manifests.js';
import { DEFAULT_CLUSTER_NETWORKS } from '../ts/policy/cidr.js';
import { compilePolicy, type CompileResult } from '../ts/policy/compile.js';
import { lookupPolicy, type LookupResult } from '../ts/policy/lookup.js';
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
    manifests: { namespaces: [], services: [], workloads: [], servers: [], endpointSlices: [], authz: [], ignored: 0, problems: [] },
    identity: { namespace: undefined, pod: undefined },
    ...overrides,
  };
}

export interface Compiled {
  readonly result: CompileResult;
  readonly table: PolicyTable;
  lookup(direction: 'inbound' | 'outbound', address: string, port: number): LookupResult;
}

/** Compiles fixtures (file names under test/fixtures/policy) as pod `ns/pod`. */
export async function compileFixtures(
  files: readonly string[], pod: string | undefined, overrides: Partial<PolicyInputs> = {},
): Promise<Compiled> {
  const manifests = await loadManifests(files.map(fixture));
  const [namespace, name] = pod === undefined ? [undefined, undefined] : pod.split('/');
  const result = compilePolicy(baseInputs({ manifests, identity: { namespace, pod: name }, ...overrides }));
  const table = result.table;
  return {
    result,
    table,
    lookup(direction, address, port) {
      const hit = lookupPolicy(table, direction, address, port);
      if (hit.matched !== 'default' || direction === 'outbound') return hit;
      // Inbound with no matching rule: the effective policy explains why it is detect.
      const line = result.effective.inbound.ports.find((p) => p.ports.from === port);
      return { ...hit, source: line?.source ?? hit.source };
    },
  };
}

/** A ConfigMap whose 300 keys all reference one anchor (what Helm charts and kustomize output look like). */
export function benignAliases(count = 300): string {
  const lines = ['apiVersion: v1', 'kind: ConfigMap', 'metadata: { name: shared-settings, namespace: shop }', 'data:', '  base: &base "same value"'];
  for (let i = 0; i < count; i++) lines.push(`  key${i}: *base`);
  return `${lines.join('\n')}\n`;
}

/** "Billion laughs": each level aliases the previous one ten times (10^12 nodes expanded). */
export function aliasBomb(): string {
  const lines = ['a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]'];
  for (let i = 1; i <= 12; i++) lines.push(`a${i}: &a${i} [${Array<string>(10).fill(`*a${i - 1}`).join(', ')}]`);
  return `${lines.join('\n')}\n`;
}

/** A Deployment whose labels are an anchor reused by its selector, with an opaque port. */
export function deployment(port: number): string {
  return [
    'apiVersion: apps/v1', 'kind: Deployment', 'metadata: { name: app, namespace: shop }', 'spec:',
    '  selector: { matchLabels: &labels { app: app } }', '  template:',
    `    metadata: { labels: *labels, annotations: { config.linkerd.io/opaque-ports: "${port}" } }`,
    `    spec: { containers: [{ name: app, image: x, ports: [{ containerPort: ${port} }] }] }`, '',
  ].join('\n');
}
