/**
 * The meshed-destinations table: pods with the sidecar (their identity from
 * service account, namespace and trust domain, or an explicit annotation;
 * their tunnel port), the static `--destinations` file (addresses and
 * networks, bad lines reported by line), conflicts reported with the first
 * entry kept, and lookups asked of the engine's own IP-indexed table.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { destinationsLookup } from '../ts/engine/mesh.js';
import { compileDestinations, parseDestinationsFile } from '../ts/policy/mesh-destinations.js';
import { loadManifests } from '../ts/policy/k8s/manifests.js';
import { DEFAULT_IDENTITY_TEMPLATE } from '../ts/identity/name.js';
import { fixture } from './policy-helpers.js';

test('meshed pods become IP-indexed entries with their identity and tunnel port', async () => {
  const manifests = await loadManifests([fixture('meshed-pods.yaml')]);
  const { spec, problems } = compileDestinations({
    generation: 3, pods: manifests.workloads, trustDomain: 'cluster.local', identityTemplate: DEFAULT_IDENTITY_TEMPLATE,
  });
  assert.deepEqual(spec.entries.map((e) => [e.net, e.identity, e.tunnelPort, e.source]), [
    ['10.0.1.5/32', 'web.shop.serviceaccount.identity.linkerd.cluster.local', 4143, 'Pod shop/web-1'],
    ['fd00::105/128', 'web.shop.serviceaccount.identity.linkerd.cluster.local', 4143, 'Pod shop/web-1'],
    ['10.0.1.6/32', 'default.shop.serviceaccount.identity.linkerd.cluster.local', 14143, 'Pod shop/api-1'],
    ['10.0.2.7/32', 'spiffe://example.org/ns/ext/sa/legacy', 4143, 'Pod ext/legacy-1'],
  ]);
  const messages = problems.map((p) => p.message);
  assert.ok(messages.some((m) => m.includes('Pod shop/bad-port') && m.includes('meshpipe.io/inbound-port') && m.includes('"70000"')), messages.join('\n'));
  assert.ok(messages.some((m) => m.includes('Pod shop/bad-id') && m.includes('"Web Server"') && m.includes('not treated as meshed')), messages.join('\n'));
  assert.equal(problems.length, 2);

  const look = (ip: string): string => {
    const d = destinationsLookup(spec, ip);
    return d === null ? 'plaintext' : `${d.identity}:${d.tunnelPort}`;
  };
  assert.equal(look('10.0.1.5'), 'web.shop.serviceaccount.identity.linkerd.cluster.local:4143');
  assert.equal(look('::ffff:10.0.1.6'), 'default.shop.serviceaccount.identity.linkerd.cluster.local:14143');
  assert.equal(look('fd00::105'), 'web.shop.serviceaccount.identity.linkerd.cluster.local:4143');
  assert.equal(look('10.0.1.9'), 'plaintext', 'a pod without the sidecar');
  assert.equal(look('10.0.1.10'), 'plaintext', 'inject: disabled');

  // A SPIFFE template.
  const spiffe = compileDestinations({ generation: 1, pods: manifests.workloads, trustDomain: 'cluster.local', identityTemplate: 'spiffe://{trustDomain}/ns/{ns}/sa/{sa}' });
  assert.equal(spiffe.spec.entries[0]?.identity, 'spiffe://cluster.local/ns/shop/sa/web');
});

test('the destinations file: addresses and networks, bad lines named, file entries win conflicts', async () => {
  const text = [
    '# hosts outside Kubernetes',
    '192.0.2.10   db.legacy.serviceaccount.identity.linkerd.cluster.local',
    '198.51.100.0/24 cache.legacy.serviceaccount.identity.linkerd.cluster.local 14143  # a whole network',
    '',
    '10.0.1.5 override.shop.serviceaccount.identity.linkerd.cluster.local',
    '192.0.2.300 x.y.serviceaccount.identity.linkerd.cluster.local',
    '192.0.2.11 NotAnIdentity',
    '192.0.2.12 a.b.serviceaccount.identity.linkerd.cluster.local 0',
    '192.0.2.13',
  ].join('\n');
  const file = parseDestinationsFile('/etc/meshpipe/destinations', text);
  assert.deepEqual(file.entries.map((e) => [e.net, e.tunnelPort, e.source]), [
    ['192.0.2.10/32', 4143, '/etc/meshpipe/destinations:2'],
    ['198.51.100.0/24', 14143, '/etc/meshpipe/destinations:3'],
    ['10.0.1.5/32', 4143, '/etc/meshpipe/destinations:5'],
  ]);
  assert.deepEqual(file.problems.map((p) => p.line), [6, 7, 8, 9]);
  assert.match(file.problems[0]!.message, /^\/etc\/meshpipe\/destinations: line 6: "192\.0\.2\.300 .*": "192\.0\.2\.300" is not an IPv4 or IPv6 address/);
  assert.match(file.problems[1]!.message, /identity "NotAnIdentity"/);
  assert.match(file.problems[2]!.message, /tunnel port "0": expected 1-65535/);
  assert.match(file.problems[3]!.message, /expected ADDRESS\|CIDR IDENTITY \[TUNNEL-PORT\]/);

  const manifests = await loadManifests([fixture('meshed-pods.yaml')]);
  const { spec, problems } = compileDestinations({
    generation: 1, pods: manifests.workloads, trustDomain: 'cluster.local', identityTemplate: DEFAULT_IDENTITY_TEMPLATE, fileEntries: file.entries,
  });
  const conflict = problems.find((p) => p.token === '10.0.1.5/32');
  assert.match(conflict?.message ?? '', /Pod shop\/web-1 says web\.shop.* but \/etc\/meshpipe\/destinations:5 \(override\.shop.*\) comes first and is used/);
  assert.equal(destinationsLookup(spec, '10.0.1.5')?.identity, 'override.shop.serviceaccount.identity.linkerd.cluster.local');
  assert.equal(destinationsLookup(spec, '198.51.100.77')?.tunnelPort, 14143, 'a network entry covers its addresses');
  assert.equal(destinationsLookup(spec, '198.51.101.1'), null);
});
