/**
 * Meshed destinations in the policy table: pods with the sidecar (their
 * identity from service account, namespace and trust domain, or an explicit
 * annotation; their tunnel port; injection's identity marker) carry a peer
 * on their port table, the
 * static `--destinations` file (addresses and networks, bad lines reported
 * by line) rides in the frame, and every answer is asked of the engine's own
 * lookup on the compiled table (the one the data path uses). A pod change is
 * a delta of that pod's addresses, never a rebuilt table.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDestinationsFile } from '../ts/policy/mesh-destinations.js';
import { PolicyCompiler } from '../ts/policy/compiler.js';
import { settingsOf } from '../ts/policy/compile.js';
import { normalizeObject, type ObjectProblem, type PolicyObject } from '../ts/policy/k8s/objects.js';
import { DEFAULT_IDENTITY_TEMPLATE } from '../ts/identity/name.js';
import { baseInputs, compileFixtures, type Compiled } from './policy-helpers.js';

const WEB = 'web.shop.serviceaccount.identity.linkerd.cluster.local';

function peer(c: Compiled, ip: string, port = 8080): string {
  const m = c.lookup('outbound', ip, port).mesh;
  return m === null ? 'plaintext' : `${m.identity}:${m.tunnelPort}`;
}

test('meshed pods carry their identity and tunnel port in the table', async () => {
  const c = await compileFixtures(['meshed-pods.yaml'], undefined);
  assert.equal(peer(c, '10.0.1.5'), `${WEB}:4143`);
  assert.equal(peer(c, 'fd00::105'), `${WEB}:4143`, 'every address of the pod');
  assert.equal(peer(c, '::ffff:10.0.1.6'), 'default.shop.serviceaccount.identity.linkerd.cluster.local:14143', 'IPv4-mapped; meshpipe.io/inbound-port');
  assert.equal(peer(c, '10.0.2.7'), 'spiffe://example.org/ns/ext/sa/legacy:4143', 'an explicit identity');
  assert.equal(peer(c, '10.0.1.9'), 'plaintext', 'a pod without the sidecar');
  assert.equal(peer(c, '10.0.1.10'), 'plaintext', 'inject: disabled');
  assert.equal(peer(c, '10.0.1.11'), 'plaintext', 'a bad tunnel port is never guessed');
  assert.equal(peer(c, '10.0.1.12'), 'plaintext', 'a bad identity is never used');
  // Meshed whatever the port: an opaque port goes through the tunnel too.
  assert.equal(peer(c, '10.0.1.5', 3306), `${WEB}:4143`);
  assert.equal(c.lookup('outbound', '10.0.1.5', 3306).mode, 'opaque');
  assert.equal(c.lookup('outbound', '10.0.1.5', 1).mesh?.source, 'meshed: meshpipe.io/inject=enabled on Pod shop/web-1 (service account web)');
  const messages = c.result.problems.map((p) => p.message);
  assert.ok(messages.some((m) => m.includes('Pod shop/bad-port') && m.includes('meshpipe.io/inbound-port') && m.includes('"70000"')), messages.join('\n'));
  assert.ok(messages.some((m) => m.includes('Pod shop/bad-id') && m.includes('"Web Server"') && m.includes('not treated as meshed')), messages.join('\n'));
  const meshed = c.result.effective.outbound.destinations.filter((d) => d.mesh !== undefined).map((d) => `${d.object.name} ${d.mesh?.identity}`);
  assert.deepEqual(meshed.sort(), ['api-1 default.shop.serviceaccount.identity.linkerd.cluster.local', 'legacy-1 spiffe://example.org/ns/ext/sa/legacy', `web-1 ${WEB}`]);

  const spiffe = await compileFixtures(['meshed-pods.yaml'], undefined, {
    mesh: { trustDomain: 'cluster.local', identityTemplate: 'spiffe://{trustDomain}/ns/{ns}/sa/{sa}', defaultInboundPolicy: 'all-unauthenticated' },
  });
  assert.equal(peer(spiffe, '10.0.1.5'), 'spiffe://cluster.local/ns/shop/sa/web:4143');
});

test('injected pods: the identity marker makes a pod meshed (its namespace asked for injection), and "none" never is', async () => {
  const c = await compileFixtures(['injected-pods.yaml'], undefined);
  assert.equal(peer(c, '10.0.3.5'), `${WEB}:4143`, 'injected with a CSI identity because its namespace asked');
  assert.equal(c.lookup('outbound', '10.0.3.5', 1).mesh?.source, 'meshed: meshpipe.io/injected-identity=cert-manager-csi on Pod shop/by-namespace-1 (service account web)');
  assert.equal(peer(c, '10.0.3.6'), 'api.shop.serviceaccount.identity.linkerd.cluster.local:4143', 'a Secret identity');
  assert.equal(peer(c, '10.0.3.7'), 'plaintext', 'its sidecar has no identity: mesh TLS to it could only fail, whatever meshpipe.io/inject says');
});

test('the destinations file: addresses and networks, bad lines named, an explicit address wins over a pod', async () => {
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
    '10.0.1.0/24 net.shop.serviceaccount.identity.linkerd.cluster.local',
    '198.51.100.0/24 other.legacy.serviceaccount.identity.linkerd.cluster.local',
  ].join('\n');
  const file = parseDestinationsFile('/etc/meshpipe/destinations', text);
  assert.deepEqual(file.entries.map((e) => [e.net, e.tunnelPort, e.source]), [
    ['192.0.2.10/32', 4143, '/etc/meshpipe/destinations:2'],
    ['198.51.100.0/24', 14143, '/etc/meshpipe/destinations:3'],
    ['10.0.1.5/32', 4143, '/etc/meshpipe/destinations:5'],
    ['10.0.1.0/24', 4143, '/etc/meshpipe/destinations:10'],
    ['198.51.100.0/24', 4143, '/etc/meshpipe/destinations:11'],
  ]);
  assert.deepEqual(file.problems.map((p) => p.line), [6, 7, 8, 9]);
  assert.match(file.problems[0]!.message, /^\/etc\/meshpipe\/destinations: line 6: "192\.0\.2\.300 .*": "192\.0\.2\.300" is not an IPv4 or IPv6 address/);
  assert.match(file.problems[1]!.message, /identity "NotAnIdentity"/);
  assert.match(file.problems[2]!.message, /tunnel port "0": expected 1-65535/);
  assert.match(file.problems[3]!.message, /expected ADDRESS\|CIDR IDENTITY \[TUNNEL-PORT\]/);

  const c = await compileFixtures(['meshed-pods.yaml'], undefined, { meshDestinations: file.entries });
  assert.equal(peer(c, '10.0.1.5'), 'override.shop.serviceaccount.identity.linkerd.cluster.local:4143', 'the explicit address wins over the pod');
  assert.equal(c.lookup('outbound', '10.0.1.5', 80).mesh?.source, '/etc/meshpipe/destinations:5');
  assert.equal(peer(c, '10.0.1.6'), 'default.shop.serviceaccount.identity.linkerd.cluster.local:14143', 'the pod wins over a network');
  assert.equal(peer(c, '10.0.1.9'), 'net.shop.serviceaccount.identity.linkerd.cluster.local:4143', 'the network covers the rest');
  assert.equal(peer(c, '198.51.100.77'), 'cache.legacy.serviceaccount.identity.linkerd.cluster.local:14143', 'the first of two entries for a network');
  assert.equal(peer(c, '198.51.101.1'), 'plaintext');
  const conflict = c.result.problems.find((p) => p.message.includes('198.51.100.0/24'));
  assert.match(conflict?.message ?? '', /:11 says other\.legacy.* but \/etc\/meshpipe\/destinations:3 \(cache\.legacy.* port 14143\) comes first and is used/);
  assert.equal(c.table.meshDestinations.length, 4);
});

test('replicas share one table with their peer; a pod change is a delta of its own addresses', () => {
  const problems: ObjectProblem[] = [];
  const pod = (name: string, ip: string, sa = 'web'): PolicyObject => normalizeObject({
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name, namespace: 'shop', labels: { app: 'web' }, annotations: { 'linkerd.io/inject': 'enabled' } },
    spec: { serviceAccountName: sa, containers: [{ ports: [{ containerPort: 8080 }] }] },
    status: { podIP: ip },
  }, problems) as PolicyObject;
  const compiler = new PolicyCompiler(settingsOf(baseInputs({
    mesh: { trustDomain: 'cluster.local', identityTemplate: DEFAULT_IDENTITY_TEMPLATE, defaultInboundPolicy: 'all-unauthenticated' },
  })));
  for (let i = 0; i < 50; i++) compiler.upsert('api', pod(`web-${i}`, `10.1.0.${i + 1}`));
  compiler.flush();
  const whole = compiler.table(1);
  const meshedTables = whole.tables.filter((t) => t.mesh !== null);
  assert.equal(meshedTables.length, 1, 'fifty replicas, one table');
  assert.equal(meshedTables[0]?.mesh?.identity, WEB);
  assert.equal(whole.addresses.length, 50);

  compiler.upsert('api', pod('web-7', '10.1.0.200'));
  const moved = compiler.flush();
  assert.deepEqual(moved?.addresses.map((a) => a[0]), ['10.1.0.200']);
  assert.deepEqual(moved?.removeAddresses, ['10.1.0.8']);
  assert.deepEqual(moved?.tables, [], 'the shared table is reused');
  assert.equal(moved?.frame, null);

  compiler.upsert('api', pod('web-9', '10.1.0.10', 'admin'));
  const other = compiler.flush();
  assert.equal(other?.tables.length, 1, 'another service account: another table');
  assert.equal(other?.tables[0]?.mesh?.identity, 'admin.shop.serviceaccount.identity.linkerd.cluster.local');
  assert.deepEqual(other?.addresses.map((a) => [a[0], a[1]]), [['10.1.0.10', other?.tables[0]?.id]]);

  compiler.remove('api', { kind: 'Pod', namespace: 'shop', name: 'web-9' });
  const gone = compiler.flush();
  assert.deepEqual(gone?.removeAddresses, ['10.1.0.10']);
  assert.deepEqual(gone?.dropTables, [other?.tables[0]?.id]);
  assert.deepEqual(problems, []);
});
