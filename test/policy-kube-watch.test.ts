/**
 * The live Kubernetes watch, end to end: a PolicySource with `kube: true`
 * and a kubeconfig pointing at a local HTTP server that speaks the list/watch
 * protocol (fake-kube-api.ts), driven through the real
 * @kubernetes/client-node informers. Checks: the initial list, ADDED /
 * MODIFIED / DELETED events recompiling the policy, a dropped watch being
 * resumed from its resourceVersion, an unreachable API keeping the last good
 * policy (with the error visible), and a relist after 410 Gone noticing a
 * deletion that happened while disconnected. Every collection of
 * watched.ts (the table the RBAC manifest is checked against) is the one
 * listed. RBAC missing for one kind (the fake API answers 403 for Servers):
 * the policy source names the resource and deploy/kubernetes/proxy-rbac.yaml
 * while the other kinds apply, and heals once it is granted; through the
 * real CLI, the proxy starts, is ready with the problem under /ready's 200,
 * and logs it once, then its recovery.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPolicySource, type PolicyUpdate } from '../ts/policy/source.js';
import { lookupPolicy } from '../ts/policy/lookup.js';
import { DEFAULT_CLUSTER_NETWORKS } from '../ts/policy/cidr.js';
import { DEFAULT_OPAQUE_PORTS, parsePortListStrict } from '../ts/config/port-list.js';
import { watchedKinds } from '../ts/policy/k8s/watched.js';
import { FakeKubeApi } from './fake-kube-api.js';
import { HOST, startEchoServer, startProxy, waitFor } from './helpers.js';
import { adminAddress, adminRequest } from './admin-client.js';

const SERVERS = '/apis/policy.linkerd.io/v1beta3/servers';

/** A list (not a watch) request of `path`, in pages. */
function isList(request: string, path: string): boolean {
  return request.startsWith(`GET ${path}?`) && request.includes('limit=') && !request.includes('watch=');
}

function deployment(annotations: Record<string, string> = {}): { metadata: { name: string; namespace: string }; spec: unknown } {
  return {
    metadata: { name: 'api', namespace: 'web' },
    spec: {
      selector: { matchLabels: { app: 'api' } },
      template: {
        metadata: { labels: { app: 'api' }, annotations },
        spec: { containers: [{ name: 'api', image: 'x', ports: [{ name: 'http', containerPort: 8080 }, { name: 'redis', containerPort: 6379 }] }] },
      },
    },
  };
}

function server(proxyProtocol: string): { metadata: { name: string; namespace: string; creationTimestamp: string }; spec: unknown } {
  return {
    metadata: { name: 'api-http', namespace: 'web', creationTimestamp: '2024-01-01T00:00:00Z' },
    spec: { podSelector: { matchLabels: { app: 'api' } }, port: 'http', proxyProtocol },
  };
}

test('kube watch: list, events, dropped watch, unreachable API, 410 relist', async (t) => {
  const api = new FakeKubeApi();
  await api.start();
  t.after(() => api.close());
  api.apply('/api/v1/namespaces', { metadata: { name: 'web' } });
  api.apply('/apis/apps/v1/deployments', deployment());
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-kube-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig());

  const source = createPolicySource({
    kube: true, kubeconfig, kubeWatch: { backoffInitialMs: 50, backoffMaxMs: 200 },
    clusterNetworks: DEFAULT_CLUSTER_NETWORKS.split(','), defaultOpaquePorts: parsePortListStrict(DEFAULT_OPAQUE_PORTS),
    inboundDetectTimeoutMs: 10_000, outboundDetectTimeoutMs: 10_000, namespace: 'web', pod: 'api-7c9d8-abcde',
    debounceMs: 10, pollIntervalMs: 200,
  });
  t.after(() => source.close());
  const updates: PolicyUpdate[] = [];
  source.on('policy', (u) => updates.push(u));
  const mode = (port: number): string => lookupPolicy(source.table(), 'inbound', '10.0.0.1', port).mode;
  const outbound = (addr: string, port: number): string => lookupPolicy(source.table(), 'outbound', addr, port).mode;

  const first = await source.start();
  assert.equal(source.effective().effective.workload?.name, 'api', 'the Deployment is found from the pod name');
  assert.equal(mode(6379), 'opaque', 'default opaque port filtered to container ports');
  assert.equal(mode(8080), 'detect');
  assert.deepEqual(first.problems.map((p) => p.message), []);
  assert.ok(api.requests.some((r) => isList(r, SERVERS)), 'Servers were listed');
  const podWatch = api.requests.find((r) => r.startsWith('GET /api/v1/pods?') && r.includes('watch=1'));
  assert.ok(podWatch, 'Pods are watched');
  assert.match(decodeURIComponent(podWatch), /fieldSelector=status\.phase!=Succeeded,status\.phase!=Failed/, 'finished pods are not watched');
  assert.ok(api.requests.some((r) => isList(r, '/apis/apps/v1/namespaces/web/deployments')), 'controllers are listed in this namespace only');
  assert.ok(!api.requests.some((r) => isList(r, '/apis/apps/v1/deployments')), 'not cluster-wide');
  // The table the RBAC manifest is checked against is what the watch lists, no more, no less.
  const listed = new Set(api.requests.filter((r) => r.startsWith('GET ') && r.includes('limit=') && !r.includes('watch=')).map((r) => r.slice(4, r.indexOf('?'))));
  assert.deepEqual([...listed].sort(), watchedKinds({ controllersNamespace: 'web', endpointSlices: false }).map((k) => k.path).sort());

  // ADDED, then MODIFIED.
  api.apply(SERVERS, server('opaque'));
  await waitFor(() => mode(8080) === 'opaque', 'the ADDED Server to make 8080 opaque');
  assert.match(lookupPolicy(source.table(), 'inbound', '10.0.0.1', 8080).source, /^opaque: Server web\/api-http proxyProtocol=opaque$/);
  api.apply(SERVERS, server('HTTP/2'));
  await waitFor(() => mode(8080) === 'http2', 'the MODIFIED Server to make 8080 http2');

  // A Service with appProtocol informs the outbound side; its annotation changes are picked up.
  api.apply('/api/v1/services', {
    metadata: { name: 'cache', namespace: 'web' },
    spec: { clusterIP: '10.96.5.5', ports: [{ name: 'c', port: 5000, appProtocol: 'linkerd.io/opaque' }, { name: 'd', port: 5001 }] },
  });
  await waitFor(() => outbound('10.96.5.5', 5000) === 'opaque', 'the Service appProtocol');
  assert.equal(outbound('10.96.5.5', 5001), 'detect');

  // A dropped watch connection: the informers re-watch from their resourceVersion; events keep coming.
  const watchesBefore = api.requests.filter((r) => r.includes('watch=1')).length;
  api.dropWatches();
  api.apply('/api/v1/services', {
    metadata: { name: 'cache', namespace: 'web', annotations: { 'config.linkerd.io/opaque-ports': 'd' } },
    spec: { clusterIP: '10.96.5.5', ports: [{ name: 'c', port: 5000, appProtocol: 'linkerd.io/opaque' }, { name: 'd', port: 5001 }] },
  });
  await waitFor(() => outbound('10.96.5.5', 5001) === 'opaque', 'the Service change made while the watch was down', 10_000);
  await waitFor(() => api.openWatches() >= 10, 'every informer to watch again', 10_000);
  const rewatches = api.requests.filter((r) => r.includes('watch=1')).slice(watchesBefore);
  assert.ok(rewatches.length >= 10, `every kind re-watched (${rewatches.length})`);
  assert.ok(rewatches.every((r) => /resourceVersion=\d+/.test(r)), 're-watches resume from a resourceVersion');

  // The API becomes unreachable: the last good policy stays, the error is visible.
  const generationBefore = source.current()!.generation;
  api.setDown(true);
  api.dropWatches();
  await waitFor(() => source.current()!.problems.some((p) => /Kubernetes API: .*watch/.test(p.message)), 'the unreachable API to show as a problem', 10_000);
  assert.equal(mode(8080), 'http2', 'the last good policy stays in force');
  assert.equal(source.current()!.generation, generationBefore, 'the engine table did not change');

  // While disconnected the Server is deleted and history compacted: reconnecting gets 410 and relists.
  api.remove(SERVERS, 'web', 'api-http');
  api.compact();
  const listsBefore = api.requests.filter((r) => isList(r, SERVERS)).length;
  api.setDown(false);
  await waitFor(() => mode(8080) === 'detect', 'the relist after 410 to notice the deleted Server', 10_000);
  assert.ok(api.requests.filter((r) => isList(r, SERVERS)).length > listsBefore, 'Servers were listed again');
  await waitFor(() => source.current()!.problems.length === 0, 'the API problem to clear once it is back', 10_000);
  assert.ok(source.current()!.generation > generationBefore);
  assert.ok(updates.length >= 5, `policy events were emitted (${updates.length})`);
});

test('kube watch: a kubeconfig that cannot be loaded is a config error naming it', async () => {
  const source = createPolicySource({
    kube: true, kubeconfig: '/nonexistent/meshpipe-kubeconfig',
    clusterNetworks: DEFAULT_CLUSTER_NETWORKS.split(','), defaultOpaquePorts: parsePortListStrict(DEFAULT_OPAQUE_PORTS),
    inboundDetectTimeoutMs: 10_000, outboundDetectTimeoutMs: 10_000,
  });
  await assert.rejects(source.start(), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ERR_INVALID_CONFIG');
    assert.match(err.message, /--kubeconfig \/nonexistent\/meshpipe-kubeconfig: cannot load: ENOENT/);
    return true;
  });
  await source.close();
});

test('kube watch: an API server that never answers does not hold up start; the problem is visible', async (t) => {
  // A listener that accepts and never responds (a black-holed API server).
  const { createServer } = await import('node:net');
  const sockets: Socket[] = [];
  const silent = createServer((s) => sockets.push(s));
  silent.listen(0, '127.0.0.1');
  await new Promise((r) => silent.once('listening', r));
  t.after(() => {
    for (const s of sockets) s.destroy();
    silent.close();
  });
  const port = (silent.address() as AddressInfo).port;
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-kube-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, [
    'apiVersion: v1', 'kind: Config',
    `clusters: [{ name: x, cluster: { server: "http://127.0.0.1:${port}", insecure-skip-tls-verify: true } }]`,
    'users: [{ name: u, user: { token: t } }]', 'contexts: [{ name: x, context: { cluster: x, user: u } }]', 'current-context: x', '',
  ].join('\n'));
  const source = createPolicySource({
    kube: true, kubeconfig, kubeWatch: { startTimeoutMs: 300 },
    clusterNetworks: DEFAULT_CLUSTER_NETWORKS.split(','), defaultOpaquePorts: parsePortListStrict(DEFAULT_OPAQUE_PORTS),
    inboundDetectTimeoutMs: 10_000, outboundDetectTimeoutMs: 10_000,
  });
  t.after(() => source.close());
  const started = Date.now();
  const first = await source.start();
  assert.ok(Date.now() - started < 5000, 'start did not wait for the silent API');
  assert.match(first.problems.map((p) => p.message).join('\n'), /Kubernetes API: no answer yet to the first list of Namespace, Service, Pod/);
  assert.equal(lookupPolicy(source.table(), 'outbound', '10.1.1.1', 3306).mode, 'opaque', 'the defaults apply meanwhile');
  assert.equal(first.kind, 'whole');
});

const SERVERS_FORBIDDEN = /Kubernetes API: Server watch: forbidden to list and watch servers\.policy\.linkerd\.io cluster-wide: grant deploy\/kubernetes\/proxy-rbac\.yaml to the proxy's service account \(servers\.policy\.linkerd\.io is forbidden: User "system:serviceaccount:shop:default" cannot list resource "servers" in API group "policy\.linkerd\.io" at the cluster scope \(403\)\); keeping the last known objects/;

test('kube watch: 403 for one kind names the resource and the RBAC manifest; the other kinds apply; granting it heals', async (t) => {
  const api = new FakeKubeApi();
  await api.start();
  t.after(() => api.close());
  api.forbid(SERVERS);
  api.apply(SERVERS, server('opaque'));
  api.apply('/apis/apps/v1/deployments', deployment());
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-kube-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig());
  const source = createPolicySource({
    kube: true, kubeconfig, kubeWatch: { backoffInitialMs: 50, backoffMaxMs: 200 },
    clusterNetworks: DEFAULT_CLUSTER_NETWORKS.split(','), defaultOpaquePorts: parsePortListStrict(DEFAULT_OPAQUE_PORTS),
    inboundDetectTimeoutMs: 10_000, outboundDetectTimeoutMs: 10_000, namespace: 'web', pod: 'api-7c9d8-abcde',
    debounceMs: 10, pollIntervalMs: 200,
  });
  t.after(() => source.close());
  const first = await source.start();
  const messages = first.problems.map((p) => p.message);
  assert.equal(messages.length, 1, messages.join('\n'));
  assert.match(messages[0] as string, SERVERS_FORBIDDEN);
  assert.deepEqual(source.sourceProblems().map((p) => p.message), messages, 'a problem of the source, not of its content');
  // Every other kind applies: the Deployment is this pod's workload, and a Service added later is seen.
  assert.equal(source.effective().effective.workload?.name, 'api');
  assert.equal(lookupPolicy(source.table(), 'inbound', '10.0.0.1', 8080).mode, 'detect', 'the forbidden Server is not known');
  api.apply('/api/v1/services', { metadata: { name: 'cache', namespace: 'web' }, spec: { clusterIP: '10.96.5.5', ports: [{ name: 'c', port: 5000, appProtocol: 'linkerd.io/opaque' }] } });
  await waitFor(() => lookupPolicy(source.table(), 'outbound', '10.96.5.5', 5000).mode === 'opaque', 'the Service through the allowed watch');
  // The kind keeps retrying: granting it later takes effect without a restart.
  api.allow(SERVERS);
  await waitFor(() => lookupPolicy(source.table(), 'inbound', '10.0.0.1', 8080).mode === 'opaque', 'the Server once it may be listed', 10_000);
  await waitFor(() => source.current()!.problems.length === 0, 'the problem to clear', 10_000);
  assert.deepEqual(source.sourceProblems(), []);
});

test('kube watch through the CLI: without RBAC for Servers the proxy starts, is ready, names the resource on /ready and in one log line', async (t) => {
  const api = new FakeKubeApi();
  await api.start();
  t.after(() => api.close());
  api.forbid(SERVERS);
  api.apply('/api/v1/namespaces', { metadata: { name: 'web' } });
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-kube-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig());
  const echo = await startEchoServer(t);
  const { proc } = await startProxy([
    '--forward', `${HOST}:0=${HOST}:${echo.port},direction=inbound`, '--kube', '--kubeconfig', kubeconfig,
    '--namespace', 'web', '--pod', 'api-7c9d8-abcde', '--admin', `${HOST}:0`,
  ], { t });
  const admin = await adminAddress(proc);
  const failing = await proc.waitForLog((l) => l.msg === 'policy source failing; the last known objects stay in force', 'the source failure log line');
  assert.equal(failing.level, 'warn');
  const logged = failing['problems'] as string[];
  assert.equal(logged.length, 1, JSON.stringify(logged));
  assert.match(logged[0] as string, SERVERS_FORBIDDEN);
  const ready = await adminRequest(admin, '/ready');
  assert.equal(ready.status, 200, `a missing grant does not make the proxy unready: ${ready.body}`);
  const lines = ready.body.trimEnd().split('\n');
  assert.equal(lines[0], 'ready');
  assert.match(lines.find((l) => l.startsWith('policy source: ')) ?? '', SERVERS_FORBIDDEN);
  // Retries do not repeat the log line; the grant heals it, with a line saying so.
  await waitFor(() => api.requests.filter((r) => r.startsWith(`GET ${SERVERS}?`)).length >= 3, 'the forbidden kind to be retried', 10_000);
  assert.equal(proc.logs.filter((l) => l.msg === failing.msg).length, 1, 'logged once, not per retry');
  api.allow(SERVERS);
  const recovered = await proc.waitForLog((l) => l.msg === 'policy sources answer again', 'the recovery log line', 20_000);
  assert.match((recovered['resolved'] as string[]).join('\n'), /servers\.policy\.linkerd\.io/);
  const after = await adminRequest(admin, '/ready');
  assert.equal(after.status, 200);
  assert.doesNotMatch(after.body, /policy source/);
});
