/**
 * The endpoints table for per-request HTTP balancing: Services and their
 * EndpointSlices from manifests (ready endpoints only, ports matched by
 * name, FQDN slices and headless Services left out, malformed fields
 * reported), the static `--endpoints FILE` (bad lines named by line), and
 * the incremental updates sent to the engine (only what changed), applied
 * by the engine itself.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseProxyArgv } from '../ts/cli/args.js';
import { buildEngineConfig } from '../ts/engine/build-config.js';
import { NativeProxy } from '../ts/engine/native.js';
import { compileEndpoints, endpointsDelta, parseEndpointsFile, type SentEndpoints } from '../ts/policy/endpoints.js';
import { loadManifests } from '../ts/policy/k8s/manifests.js';
import { fixture } from './policy-helpers.js';

test('Services and EndpointSlices from manifests become Service address -> ready endpoints', async () => {
  const m = await loadManifests([fixture('endpoint-slices.yaml')]);
  assert.equal(m.endpointSlices.length, 3);
  assert.ok(m.problems.some((p) => p.message.includes('EndpointSlice shop/web-def') && p.message.includes('70000')), m.problems.map((p) => p.message).join('\n'));
  const table = compileEndpoints(m.services, m.endpointSlices);
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

test('updates carry only what changed, and the engine applies them', async () => {
  const sent: SentEndpoints = new Map();
  const a = { service: '10.96.0.1:80', endpoints: ['10.0.0.1:80'], source: 's' };
  const b = { service: '10.96.0.2:80', endpoints: ['10.0.0.2:80'], source: 's' };
  const first = endpointsDelta(sent, [a, b], 1)!;
  assert.deepEqual(first.upsert.map((e) => e.service), ['10.96.0.1:80', '10.96.0.2:80']);
  assert.equal(endpointsDelta(sent, [a, b], 2), undefined, 'nothing changed, nothing sent');
  const second = endpointsDelta(sent, [{ ...a, endpoints: ['10.0.0.9:80'] }], 2)!;
  assert.deepEqual([second.upsert.map((e) => e.service), second.remove], [['10.96.0.1:80'], ['10.96.0.2:80']]);

  const config = parseProxyArgv(['--forward', '127.0.0.1:0=127.0.0.1:9'], { env: {} }).config;
  const engine = new NativeProxy(buildEngineConfig(config));
  assert.equal(engine.updateEndpoints(first), 1);
  assert.equal(engine.updateEndpoints(second), 2);
  assert.throws(() => engine.updateEndpoints({ generation: 3, replace: false, upsert: [{ service: 'x', endpoints: [], source: 'f:1' }], remove: [] }),
    (err: Error & { code?: string }) => err.code === 'ERR_POLICY' && err.message.includes('f:1'));
  await engine.close(0);
});
