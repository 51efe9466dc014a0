/**
 * Pods in phase Succeeded or Failed are no policy source (issue 10 §5): their
 * IPs are reused by new pods, so a finished Job's opaque port must not stick
 * to the address. From manifests, a finished pod keeps no address; from the
 * Kubernetes API they are not even watched (fieldSelector on status.phase),
 * and a pod that finishes leaves the watch as a deletion.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compilePolicy } from '../ts/policy/compile.js';
import { lookupPolicy } from '../ts/policy/lookup.js';
import { parseManifestText, mergeManifests } from '../ts/policy/k8s/manifests.js';
import { createPolicySource } from '../ts/policy/source.js';
import { DEFAULT_CLUSTER_NETWORKS } from '../ts/policy/cidr.js';
import { DEFAULT_OPAQUE_PORTS, parsePortListStrict } from '../ts/config/port-list.js';
import { FakeKubeApi } from './fake-kube-api.js';
import { baseInputs } from './policy-helpers.js';
import { waitFor } from './helpers.js';

function podYaml(name: string, phase: string, ip: string, opaque: string | undefined): string {
  return [
    'apiVersion: v1', 'kind: Pod', `metadata: { name: ${name}, namespace: jobs${opaque === undefined ? '' : `, annotations: { config.linkerd.io/opaque-ports: "${opaque}" }`} }`,
    'spec: { containers: [{ name: c, image: x, ports: [{ containerPort: 9000 }] }] }',
    `status: { phase: ${phase}, podIP: ${ip}, podIPs: [{ ip: ${ip} }] }`, '',
  ].join('\n');
}

test('manifests: a Succeeded or Failed pod keeps no address; the pod that reuses its IP decides', () => {
  const text = [
    podYaml('nightly-1', 'Succeeded', '10.244.0.9', '9000'),
    podYaml('web-1', 'Running', '10.244.0.9', undefined),
    podYaml('crashed-1', 'Failed', '10.244.0.10', '9000'),
  ].join('---\n');
  const manifests = mergeManifests([parseManifestText('pods.yaml', text)]);
  const { table } = compilePolicy(baseInputs({ manifests }));
  assert.equal(lookupPolicy(table, 'outbound', '10.244.0.9', 9000).source, 'default', 'the finished Job\'s opaque port is gone with it');
  assert.equal(lookupPolicy(table, 'outbound', '10.244.0.10', 9000).source, 'default');
  assert.deepEqual(table.addresses, [], 'no destination carries a finished pod');
});

test('kube: finished pods are not watched; a pod that finishes leaves as a deletion', async (t) => {
  const api = new FakeKubeApi();
  await api.start();
  t.after(() => api.close());
  const PODS = '/api/v1/pods';
  const pod = (name: string, phase: string, ip: string): Parameters<FakeKubeApi['apply']>[1] => ({
    metadata: { name, namespace: 'jobs', annotations: { 'config.linkerd.io/opaque-ports': '9000' } },
    spec: { containers: [{ name: 'c', image: 'x', ports: [{ containerPort: 9000 }] }] },
    status: { phase, podIP: ip, podIPs: [{ ip }] },
  });
  api.apply(PODS, pod('done-before', 'Succeeded', '10.244.1.1'));
  api.apply(PODS, pod('running', 'Running', '10.244.1.2'));
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-phase-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig());
  const source = createPolicySource({
    kube: true, kubeconfig, kubeWatch: { backoffInitialMs: 50 },
    clusterNetworks: DEFAULT_CLUSTER_NETWORKS.split(','), defaultOpaquePorts: parsePortListStrict(DEFAULT_OPAQUE_PORTS),
    inboundDetectTimeoutMs: 10_000, outboundDetectTimeoutMs: 10_000, debounceMs: 10, pollIntervalMs: 200,
  });
  t.after(() => source.close());
  await source.start();
  const mode = (ip: string): string => lookupPolicy(source.table(), 'outbound', ip, 9000).mode;
  assert.equal(mode('10.244.1.2'), 'opaque');
  assert.equal(mode('10.244.1.1'), 'detect', 'a pod already finished is not listed');
  const lists = api.requests.filter((r) => r.startsWith('GET /api/v1/pods?')).map(decodeURIComponent);
  assert.ok(lists.length > 0 && lists.every((r) => r.includes('fieldSelector=status.phase!=Succeeded,status.phase!=Failed')), lists.join('\n'));

  // The pod finishes: the watch with the field selector reports it deleted.
  api.apply(PODS, pod('running', 'Succeeded', '10.244.1.2'));
  await waitFor(() => mode('10.244.1.2') === 'detect', 'the finished pod\'s address to leave the table');
  // A new pod gets the IP, without the annotation: it decides.
  api.apply(PODS, { ...pod('new', 'Running', '10.244.1.2'), metadata: { name: 'new', namespace: 'jobs' } });
  await waitFor(() => source.table().addresses.length === 0 && source.stats().objects === 1, 'the new pod to be known');
  assert.equal(mode('10.244.1.2'), 'detect');
});
