/**
 * The inbound authorization compiler: Linkerd's Server, AuthorizationPolicy,
 * MeshTLSAuthentication and NetworkAuthentication and the default policies
 * compiled for one workload, with every decision asked of the engine itself
 * (the addon's `authzDecide` compiles the table with the same Rust code the
 * data path will use). Mistakes in policy are reported and never widen
 * access.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';
import { authzDecide } from '../ts/engine/mesh.js';
import { compileAuthz, defaultPolicyRules, DEFAULT_INBOUND_POLICY_ANNOTATION, type AuthzInputs } from '../ts/policy/authz.js';
import { normalizeAuthzObjects, type AuthzObject } from '../ts/policy/k8s/authz-objects.js';
import { normalizeObject, type ObjectProblem, type ServerObject, type WorkloadObject, type NamespaceObject } from '../ts/policy/k8s/objects.js';
import { DEFAULT_CLUSTER_NETWORKS } from '../ts/policy/cidr.js';
import { DEFAULT_IDENTITY_TEMPLATE } from '../ts/identity/name.js';
import { compileFixtures, fixture } from './policy-helpers.js';
import { authorizeClient } from '../ts/policy/lookup.js';

const ID = (sa: string, ns: string): string => `${sa}.${ns}.serviceaccount.identity.linkerd.cluster.local`;

interface Loaded {
  servers: ServerObject[];
  workloads: WorkloadObject[];
  namespaces: NamespaceObject[];
  objects: AuthzObject[];
  problems: string[];
}

function load(file: string): Loaded {
  const docs = parseAllDocuments(readFileSync(fixture(file), 'utf8'));
  const items = (Array.isArray(docs) ? docs : [docs]).map((d) => d.toJS() as unknown);
  const out: Loaded = { servers: [], workloads: [], namespaces: [], objects: [], problems: [] };
  const problems: ObjectProblem[] = [];
  for (const item of items) {
    const o = normalizeObject(item, problems);
    if (o?.kind === 'Server') out.servers.push(o);
    else if (o?.kind === 'Namespace') out.namespaces.push(o);
    else if (o && (o.kind === 'Pod' || o.kind === 'Deployment')) out.workloads.push(o);
  }
  const authz = normalizeAuthzObjects(items, file);
  out.objects = authz.objects;
  out.problems = authz.problems.map((p) => p.message);
  return out;
}

function inputs(l: Loaded, overrides: Partial<AuthzInputs> = {}): AuthzInputs {
  const workload = l.workloads.find((w) => w.name === 'db');
  return {
    workload,
    ref: { kind: 'Pod', namespace: 'shop', name: 'db' },
    namespace: 'shop',
    workloadAnnotations: workload?.annotations ?? {},
    namespaceAnnotations: l.namespaces.find((n) => n.name === 'shop')?.annotations ?? {},
    servers: l.servers,
    objects: l.objects,
    clusterNetworks: DEFAULT_CLUSTER_NETWORKS.split(','),
    defaultPolicy: 'all-unauthenticated',
    trustDomain: 'cluster.local',
    identityTemplate: DEFAULT_IDENTITY_TEMPLATE,
    ...overrides,
  };
}

test('Servers, AuthorizationPolicies and authentications compile to per-port rules the engine enforces', () => {
  const l = load('authz.yaml');
  // Problems found while reading the objects: the bad identity and the bad network, each ignored alone.
  assert.ok(l.problems.some((m) => m.includes('MeshTLSAuthentication shop/ops-mesh') && m.includes('"Not An Identity"')), l.problems.join('\n'));
  assert.ok(l.problems.some((m) => m.includes('NetworkAuthentication shop/monitoring') && m.includes('300.1.1.1/8')), l.problems.join('\n'));
  assert.ok(l.problems.some((m) => m.includes('AuthorizationPolicy shop/route-only') && m.includes('HTTPRoute')), l.problems.join('\n'));

  const { spec, problems } = compileAuthz(inputs(l));
  const messages = problems.map((p) => p.message);
  assert.ok(messages.some((m) => m.includes('AuthorizationPolicy shop/broken-ref') && m.includes('no MeshTLSAuthentication shop/nobody') && m.includes('authorizes nothing')), messages.join('\n'));
  assert.deepEqual(spec.ports.map((p) => [p.port, p.srvKind, p.srvName, p.rules.map((r) => r.name)]), [
    [5432, 'server', 'db-pg', ['pg-web', 'scrape']],
    [9090, 'server', 'db-metrics', ['metrics-ops', 'scrape']],
  ]);
  assert.deepEqual(spec.ports[0]!.rules[0], { kind: 'authorizationpolicy', name: 'pg-web', networks: [], identities: [ID('web', 'shop')] });
  assert.deepEqual(spec.ports[1]!.rules[0]!.identities, ['*.ops.serviceaccount.identity.linkerd.cluster.local', '*.audit.serviceaccount.identity.linkerd.cluster.local']);
  assert.deepEqual(spec.default, { port: 0, srvKind: 'default', srvName: 'cluster-authenticated', rules: defaultPolicyRules('cluster-authenticated', DEFAULT_CLUSTER_NETWORKS.split(',')) });

  const decide = (port: number, client: string | null, ip: string): string => {
    const d = authzDecide(spec, port, client, ip);
    return d.allow ? `allow ${d.srvKind}/${d.srvName} by ${d.authzKind}/${d.authzName}` : `deny ${d.srvKind}/${d.srvName}`;
  };
  // The Postgres port: web only (any address), or the monitoring network (no TLS needed).
  assert.equal(decide(5432, ID('web', 'shop'), '10.1.2.3'), 'allow server/db-pg by authorizationpolicy/pg-web');
  assert.equal(decide(5432, ID('api', 'shop'), '10.1.2.3'), 'deny server/db-pg');
  assert.equal(decide(5432, null, '10.1.2.3'), 'deny server/db-pg', 'no mesh TLS, not from the monitoring network');
  assert.equal(decide(5432, null, '192.168.7.10'), 'allow server/db-pg by authorizationpolicy/scrape');
  assert.equal(decide(5432, null, '192.168.7.200'), 'deny server/db-pg', 'the except carves out the upper half');
  // Metrics: any service account of ops or audit, by suffix.
  assert.equal(decide(9090, ID('prometheus', 'ops'), '172.16.0.9'), 'allow server/db-metrics by authorizationpolicy/metrics-ops');
  assert.equal(decide(9090, ID('prometheus', 'audit'), '172.16.0.9'), 'allow server/db-metrics by authorizationpolicy/metrics-ops');
  assert.equal(decide(9090, ID('prometheus', 'notops'), '172.16.0.9'), 'deny server/db-metrics');
  // Port 8080 has no Server here (the other namespace's does not count): the namespace's default.
  assert.equal(decide(8080, ID('web', 'shop'), '10.0.0.1'), 'allow default/cluster-authenticated by default/cluster-authenticated');
  assert.equal(decide(8080, null, '10.0.0.1'), 'deny default/cluster-authenticated', 'cluster-authenticated needs mesh TLS');
  assert.equal(decide(8080, ID('web', 'shop'), '203.0.113.1'), 'deny default/cluster-authenticated', 'and a cluster address');
});

test('default policies: workload annotation > namespace annotation > cluster default; a bad value denies, reported', () => {
  const l = load('authz.yaml');
  const withPod = (annotations: Record<string, string>): AuthzInputs => inputs(l, { workloadAnnotations: annotations });
  assert.equal(compileAuthz(withPod({ 'config.linkerd.io/default-inbound-policy': 'all-authenticated' })).spec.default.srvName, 'all-authenticated');
  assert.equal(compileAuthz(withPod({})).spec.default.srvName, 'cluster-authenticated', 'inherited from the namespace');
  const cluster = compileAuthz(inputs(l, { namespaceAnnotations: {}, defaultPolicy: 'cluster-unauthenticated' }));
  assert.equal(cluster.spec.default.srvName, 'cluster-unauthenticated');
  assert.equal(authzDecide(cluster.spec, 8080, null, '10.9.9.9').allow, true);
  assert.equal(authzDecide(cluster.spec, 8080, null, '8.8.8.8').allow, false);

  const typo = compileAuthz(withPod({ 'config.linkerd.io/default-inbound-policy': 'all-unauthenicated' }));
  assert.equal(typo.spec.default.srvName, 'deny');
  assert.equal(authzDecide(typo.spec, 8080, ID('web', 'shop'), '10.0.0.1').allow, false);
  assert.ok(typo.problems.some((p) => p.message.includes('Pod shop/db') && p.message.includes('"all-unauthenicated"') && p.message.includes('using deny')));

  for (const [policy, tls, ip, allow] of [
    ['all-unauthenticated', null, '8.8.8.8', true],
    ['all-authenticated', null, '10.0.0.1', false],
    ['all-authenticated', ID('x', 'y'), '8.8.8.8', true],
    ['audit', null, '8.8.8.8', true],
    ['deny', ID('x', 'y'), '10.0.0.1', false],
  ] as const) {
    const spec = compileAuthz(inputs(l, { workloadAnnotations: {}, namespaceAnnotations: { [DEFAULT_INBOUND_POLICY_ANNOTATION]: policy } })).spec;
    assert.equal(authzDecide(spec, 8080, tls, ip).allow, allow, `${policy} ${tls ?? 'plaintext'} ${ip}`);
  }
});

test('a Server without AuthorizationPolicy denies everything; unknown workload gets only the default', () => {
  const l = load('authz.yaml');
  const onlyServers = compileAuthz(inputs(l, { objects: [] })).spec;
  for (const client of [null, ID('web', 'shop')]) {
    assert.deepEqual(authzDecide(onlyServers, 5432, client, '10.0.0.1'), { allow: false, srvKind: 'server', srvName: 'db-pg', authzKind: null, authzName: null });
  }
  // A Server whose proxyProtocol is unknown is ignored by the port policy, but still guards its port here.
  const typo = l.servers.map((s) => (s.name === 'db-pg' ? { ...s, proxyProtocol: 'HTTP/3' } : s));
  const guarded = compileAuthz(inputs(l, { servers: typo, objects: [] })).spec;
  assert.deepEqual(authzDecide(guarded, 5432, null, '10.0.0.1'), { allow: false, srvKind: 'server', srvName: 'db-pg', authzKind: null, authzName: null });
  const unknown = compileAuthz(inputs(l, { workload: undefined }));
  assert.deepEqual(unknown.spec.ports, []);
  // The engine refuses a table it cannot compile, with the port named.
  assert.throws(
    () => authzDecide({ ports: [{ port: 80, srvKind: 'server', srvName: 's', rules: [{ kind: 'authorizationpolicy', name: 'p', networks: [{ cidr: 'nope', except: [] }], identities: [] }] }], default: onlyServers.default, exposedPorts: null }, 80, null, '10.0.0.1'),
    (err: Error & { code?: string }) => err.code === 'ERR_POLICY' && /port 80/.test(err.message),
  );
});

test('the policy table carries the workload\'s authorization: the engine decides from the compiled table, explain reads it back', async () => {
  const c = await compileFixtures(['authz.yaml'], 'shop/db');
  const decide = (port: number, client: string | null, ip: string): string => {
    const d = authorizeClient(c.table, port, client, ip);
    return d.allow ? `allow ${d.srvName} by ${d.authzName}` : `deny ${d.srvName}`;
  };
  assert.equal(decide(5432, ID('web', 'shop'), '10.1.2.3'), 'allow db-pg by pg-web');
  assert.equal(decide(5432, null, '10.1.2.3'), 'deny db-pg');
  assert.equal(decide(5432, null, '::ffff:192.168.7.10'), 'allow db-pg by scrape', 'IPv4-mapped client addresses');
  const who = c.lookup('inbound', '10.0.0.1', 5432).authz;
  assert.equal(who?.srvName, 'db-pg');
  assert.deepEqual(who?.rules.map((r) => r.name), ['pg-web', 'scrape']);
  assert.equal(c.result.effective.inbound.authorization.ports.length, c.table.authz?.ports.length);
  // The tunnel reaches only the ports the workload declares.
  assert.deepEqual(c.table.authz?.exposedPorts, [5432, 8080, 9090]);
});
