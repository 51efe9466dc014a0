/**
 * The endpoints table for per-request HTTP balancing: Services and their
 * EndpointSlices from manifests (ready endpoints only, ports matched by
 * name, FQDN slices and headless Services left out, malformed fields
 * reported), the static `--endpoints FILE` (bad lines named by line), the
 * incremental compiler (a change yields only the Service addresses it
 * touched; the file wins; one address family per cluster IP), and the
 * engine applying a whole table and changes onto their base generation.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseProxyArgv } from '../ts/cli/args.js';
import { buildEngineConfig } from '../ts/engine/build-config.js';
import { NativeProxy, type EndpointsUpdate } from '../ts/engine/native.js';
import { compileEndpoints, EndpointsCompiler } from '../ts/policy/endpoints.js';
import { parseEndpointsFile } from '../ts/policy/endpoints-file.js';
import { normalizeObject, type PolicyObject } from '../ts/policy/k8s/objects.js';
import { loadManifests } from '../ts/policy/k8s/manifests.js';
import { fixture } from './policy-helpers.js';

test('Services and EndpointSlices from manifests become Service address -> ready endpoints', async () => {
  const m = await loadManifests([fixture('endpoint-slices.yaml')]);
  assert.equal(m.endpointSlices.length, 3);
  assert.ok(m.problems.some((p) => p.message.includes('EndpointSlice shop/web-def') && p.message.includes('70000')), m.problems.map((p) => p.message).join('\n'));
  const table = compileEndpoints([...m.services, ...m.endpointSlices]);
  assert.deepEqual(table.map((e) => [e.service, e.endpoints, e.source]), [
    ['10.96.0.20:80', ['10.42.0.7:8080', '10.42.1.9:8080', '10.42.3.4:8080'], 'Service shop/web'],
    ['10.96.0.20:9000', ['10.42.0.7:9000', '10.42.1.9:9000'], 'Service shop/web'],
  ]);
});

test('--endpoints files: addresses checked, bad lines named', () => {
  const { services, problems } = parseEndpointsFile(
    ['# static Services', '10.96.0.30:80 10.0.0.1:8080 10.0.0.2:8080', '[fd00::30]:443 [fd00::1]:8443  # v6', '', 'nope 10.0.0.1:80', '10.96.0.31:80 10.0.0.1'].join('\n'),
    'eps.txt',
  );
  assert.deepEqual(services, [
    { service: '10.96.0.30:80', endpoints: ['10.0.0.1:8080', '10.0.0.2:8080'], source: 'eps.txt:2' },
    { service: '[fd00::30]:443', endpoints: ['[fd00::1]:8443'], source: 'eps.txt:3' },
  ]);
  assert.deepEqual(problems.map((p) => p.line), [5, 6]);
  assert.match(problems[0]!.message, /^eps\.txt:5: "nope" is not a Service address/);
  assert.match(problems[1]!.message, /^eps\.txt:6: "10\.0\.0\.1" is not an endpoint address/);
});

function object(raw: Record<string, unknown>, kind: string): PolicyObject {
  const o = normalizeObject(raw, [], 'default', kind);
  assert.ok(o, kind);
  return o;
}

function service(name: string, clusterIPs: string[], port = 80): PolicyObject {
  return object({ metadata: { name, namespace: 'shop' }, spec: { clusterIPs, ports: [{ name: 'http', port, targetPort: 8080 }] } }, 'Service');
}

function slice(name: string, owner: string, addresses: string[], addressType = 'IPv4'): PolicyObject {
  return object({
    metadata: { name, namespace: 'shop', labels: { 'kubernetes.io/service-name': owner } },
    addressType, ports: [{ name: 'http', port: 8080, protocol: 'TCP' }], endpoints: addresses.map((a) => ({ addresses: [a] })),
  }, 'EndpointSlice');
}

test('the compiler yields only the Service addresses a change touched; the file wins; one family per cluster IP', () => {
  const file = [{ service: '10.96.0.9:80', endpoints: ['192.0.2.1:80'], source: 'eps:1' }];
  const c = new EndpointsCompiler(file);
  c.upsert('k', service('web', ['10.96.0.20', 'fd00::20']));
  c.upsert('k', service('api', ['10.96.0.21']));
  c.upsert('k', slice('web-a', 'web', ['10.42.0.7']));
  c.upsert('k', slice('web-v6', 'web', ['fd00::7'], 'IPv6'));
  c.upsert('k', slice('api-a', 'api', ['10.42.0.8']));
  const first = c.flush()!;
  assert.deepEqual(first.upsert.map((e) => [e.service, e.endpoints]).sort(), [
    ['10.96.0.20:80', ['10.42.0.7:8080']],
    ['10.96.0.21:80', ['10.42.0.8:8080']],
    ['10.96.0.9:80', ['192.0.2.1:80']],
    ['[fd00::20]:80', ['[fd00::7]:8080']],
  ]);
  assert.equal(c.flush(), undefined, 'nothing changed, nothing to send');

  // One slice of one Service scales: only that Service's address changes.
  c.upsert('k', slice('web-a', 'web', ['10.42.0.7', '10.42.1.9']));
  assert.deepEqual(c.flush(), { upsert: [{ service: '10.96.0.20:80', endpoints: ['10.42.0.7:8080', '10.42.1.9:8080'], source: 'Service shop/web' }], remove: [] });
  // A slice relabelled to another Service leaves the first one and joins the second.
  c.upsert('k', slice('web-a', 'api', ['10.42.0.7']));
  const moved = c.flush()!;
  assert.deepEqual(moved.upsert.map((e) => [e.service, e.endpoints]).sort(), [['10.96.0.20:80', []], ['10.96.0.21:80', ['10.42.0.7:8080', '10.42.0.8:8080']]]);
  // A Service that takes the file's address does not win it; the file's entry stays.
  c.upsert('k', service('clash', ['10.96.0.9']));
  assert.equal(c.flush(), undefined, 'the file wins the address');
  // A Service deleted: its addresses go.
  c.remove('k', { kind: 'Service', namespace: 'shop', name: 'web' });
  assert.deepEqual(c.flush(), { upsert: [], remove: ['10.96.0.20:80', '[fd00::20]:80'] });
  assert.equal(c.size, 2);
});

test('the engine applies a whole table, then changes onto its generation, and refuses a change onto another', async () => {
  const config = parseProxyArgv(['--forward', '127.0.0.1:0=127.0.0.1:9'], { env: {} }).config;
  const engine = new NativeProxy(buildEngineConfig(config));
  const a = { service: '10.96.0.1:80', endpoints: ['10.0.0.1:80'], source: 's' };
  const b = { service: '10.96.0.2:80', endpoints: ['10.0.0.2:80'], source: 's' };
  const whole: EndpointsUpdate = { generation: 5, base: 0, replace: true, upsert: [a, b], remove: [] };
  assert.equal(engine.updateEndpoints(whole), 5);
  assert.equal(engine.updateEndpoints({ generation: 6, base: 5, replace: false, upsert: [{ ...a, endpoints: ['10.0.0.9:80'] }], remove: [b.service] }), 6);
  assert.throws(() => engine.updateEndpoints({ generation: 7, base: 5, replace: false, upsert: [], remove: [a.service] }),
    (err: Error & { code?: string }) => err.code === 'ERR_POLICY' && err.message.includes('generation 5') && err.message.includes('whole table'));
  assert.throws(() => engine.updateEndpoints({ generation: 7, base: 6, replace: false, upsert: [{ service: 'x', endpoints: [], source: 'f:1' }], remove: [] }),
    (err: Error & { code?: string }) => err.code === 'ERR_POLICY' && err.message.includes('f:1'));
  assert.throws(() => engine.updateEndpoints(new TextEncoder().encode('{"generation":')), (err: Error & { code?: string }) => err.code === 'ERR_POLICY');
  engine.start();
  const snap = engine.snapshot().endpoints;
  assert.deepEqual([snap.generation, snap.services, snap.updatesApplied, snap.updatesRejected], [6, 1, 2, 3]);
  assert.ok(snap.lastRejection?.message.includes('endpoints update'), JSON.stringify(snap.lastRejection));
  await engine.close(0);
});
