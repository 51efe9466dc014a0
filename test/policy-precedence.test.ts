/**
 * Table-driven precedence tests: each row compiles YAML fixtures as one pod,
 * builds the engine table, and checks the first-match lookup for a direction,
 * destination address and port against the expected mode and source string.
 * The rows cover every level of the inbound chain (skip > flag > Server
 * (oldest, then name) > workload annotation > namespace annotation >
 * filtered defaults > detect) and of the outbound chain (appProtocol >
 * Service annotation > namespace annotation > cluster defaults, pod IPs,
 * targetPort, external profiles, skip subnets), plus the consistency of the
 * effective policy with the table.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileFixtures } from './policy-helpers.js';
import { parsePortListStrict } from '../ts/config/port-list.js';
import type { PolicyInputs } from '../ts/policy/model.js';

type Row = readonly [
  files: readonly string[], pod: string | undefined, direction: 'inbound' | 'outbound', address: string, port: number,
  mode: string, source: string,
];

const BASIC = ['basic.yaml'];
const SERVERS = ['servers.yaml'];
const INHERIT = ['namespace-inherit.yaml'];
const OUT = ['outbound.yaml'];
const DEFAULTS = 'opaque: default opaque ports (25,587,3306,4444,5432,6379,9300,11211) inside clusterNetworks';

const ROWS: readonly Row[] = [
  // Inbound: defaults filtered to the workload's container ports.
  [BASIC, 'db/mysql-7d9c-abcde', 'inbound', '10.244.1.5', 3306, 'opaque', 'opaque: default opaque ports (3306)'],
  [BASIC, 'db/mysql-7d9c-abcde', 'inbound', '10.244.1.5', 8080, 'detect', 'detect: no Server, annotation or default opaque port covers it'],
  [BASIC, 'db/mysql-7d9c-abcde', 'inbound', '10.244.1.5', 6379, 'detect', 'default'],
  // No such Pod in the manifests: the Deployment is found by the pod name's prefix.
  [BASIC, 'db/mysql-5f6d7b9c8-x2x7q', 'inbound', '10.244.1.6', 3306, 'opaque', 'opaque: default opaque ports (3306)'],
  // Servers: oldest wins (api-http, 2024-01 beats aaa-api-http-newer, 2024-06, despite the name).
  [SERVERS, 'web/api-6b7c-1', 'inbound', '10.0.0.1', 8080, 'http2',
    'http2: Server web/api-http proxyProtocol=HTTP/2 (oldest of 2 Servers selecting port 8080; also aaa-api-http-newer (opaque))'],
  // Same age (no timestamps): by name; a Server beats the workload annotation listing 9090.
  [SERVERS, 'web/api-6b7c-1', 'inbound', '10.0.0.1', 9090, 'grpc',
    'grpc: Server web/a-admin proxyProtocol=gRPC (oldest of 2 Servers selecting port 9090; also b-admin (unknown))'],
  // The workload annotation, with a container port name.
  [SERVERS, 'web/api-6b7c-1', 'inbound', '10.0.0.1', 6379, 'opaque', 'opaque: pod annotation config.linkerd.io/opaque-ports on Deployment web/api'],
  // The annotation replaces the defaults: 5432 is a default opaque port but not listed.
  [SERVERS, 'web/api-6b7c-1', 'inbound', '10.0.0.1', 5432, 'detect',
    'detect: not listed in pod annotation config.linkerd.io/opaque-ports on Deployment web/api (it replaces the defaults)'],
  // Namespace annotation inherited (numbers, ranges, and a name resolved against the workload's ports).
  [INHERIT, 'cache/memcached-0', 'inbound', '10.0.0.2', 11211, 'opaque',
    'opaque: namespace annotation config.linkerd.io/opaque-ports on Namespace cache (inherited by StatefulSet cache/memcached)'],
  [INHERIT, 'cache/memcached-0', 'inbound', '10.0.0.2', 11212, 'opaque',
    'opaque: namespace annotation config.linkerd.io/opaque-ports on Namespace cache (inherited by StatefulSet cache/memcached)'],
  [INHERIT, 'cache/memcached-0', 'inbound', '10.0.0.2', 7003, 'opaque',
    'opaque: namespace annotation config.linkerd.io/opaque-ports on Namespace cache (inherited by StatefulSet cache/memcached)'],
  [INHERIT, 'cache/memcached-0', 'inbound', '10.0.0.2', 6379, 'detect',
    'detect: not listed in namespace annotation config.linkerd.io/opaque-ports on Namespace cache (it replaces the defaults)'],
  // A workload with its own annotation does not merge the namespace's.
  [INHERIT, 'cache/own-x1y2z', 'inbound', '10.0.0.3', 6379, 'opaque', 'opaque: pod annotation config.linkerd.io/opaque-ports on DaemonSet cache/own'],
  [INHERIT, 'cache/own-x1y2z', 'inbound', '10.0.0.3', 11211, 'detect',
    'detect: not listed in pod annotation config.linkerd.io/opaque-ports on DaemonSet cache/own (it replaces the defaults)'],
  // The caller's own switches: skip-outbound-ports, and the disabled outbound detect timeout.
  [INHERIT, 'cache/nightly-28000000-abcde', 'outbound', '10.1.2.3', 25, 'opaque',
    'skip: config.linkerd.io/skip-outbound-ports 25,587 (bypasses the proxy; opaque if it arrives)'],
  [INHERIT, 'cache/nightly-28000000-abcde', 'outbound', '10.1.2.3', 8000, 'detect',
    '365d: config.linkerd.io/proxy-disable-outbound-protocol-detect-timeout on CronJob cache/nightly'],
  // Outbound: appProtocol beats the Service annotation that lists the same port.
  [OUT, 'shop/client', 'outbound', '10.96.1.2', 80, 'http2', 'http2: appProtocol kubernetes.io/h2c on Service shop/web port 80 (http)'],
  [OUT, 'shop/client', 'outbound', '10.96.1.2', 81, 'opaque', 'opaque: appProtocol linkerd.io/opaque on Service shop/web port 81 (legacy)'],
  [OUT, 'shop/client', 'outbound', '10.96.1.2', 82, 'detect', 'default'],
  // Namespace annotation inherited by a Service without its own.
  [OUT, 'shop/client', 'outbound', '10.96.1.1', 5432, 'opaque',
    'opaque: namespace annotation config.linkerd.io/opaque-ports on Namespace shop (inherited by Service shop/pg)'],
  // The Service annotation replaces the cluster defaults for its address (dual-stack: both addresses).
  [OUT, 'shop/client', 'outbound', '10.96.1.3', 6379, 'detect',
    'detect: not listed in Service annotation config.linkerd.io/opaque-ports on Service shop/redis (it replaces the defaults)'],
  [OUT, 'shop/client', 'outbound', 'fd00:10:96::3', 9999, 'opaque', 'opaque: Service annotation config.linkerd.io/opaque-ports on Service shop/redis'],
  [OUT, 'shop/client', 'outbound', '10.96.1.3', 9999, 'opaque', 'opaque: Service annotation config.linkerd.io/opaque-ports on Service shop/redis'],
  // Service decisions follow targetPort (by name and by number) to the selected pods' IPs.
  [OUT, 'shop/client', 'outbound', '10.244.2.7', 5432, 'opaque',
    'opaque: namespace annotation config.linkerd.io/opaque-ports on Namespace shop (inherited by Service shop/pg) (targetPort 5432 of Service port 5432)'],
  [OUT, 'shop/client', 'outbound', '10.244.2.8', 8080, 'http2',
    'http2: appProtocol kubernetes.io/h2c on Service shop/web port 80 (http) (targetPort 8080 of Service port 80)'],
  // A destination pod's own annotation applies to its IP, and replaces the defaults there.
  [OUT, 'shop/client', 'outbound', '10.244.2.8', 4050, 'opaque', 'opaque: pod annotation config.linkerd.io/opaque-ports on Pod shop/web-1'],
  [OUT, 'shop/client', 'outbound', '10.244.2.8', 3306, 'detect',
    'detect: not listed in pod annotation config.linkerd.io/opaque-ports on Pod shop/web-1 (it replaces the defaults)'],
  // Cluster defaults for unknown addresses inside clusterNetworks.
  [OUT, 'shop/client', 'outbound', '10.244.9.9', 3306, 'opaque', DEFAULTS],
  [OUT, 'shop/client', 'outbound', 'fd00::1234', 6379, 'opaque', DEFAULTS],
  // Outside clusterNetworks: defaults only with enable-external-profiles on the caller.
  [OUT, 'shop/client', 'outbound', '203.0.113.9', 3306, 'opaque',
    'opaque: default opaque ports (25,587,3306,4444,5432,6379,9300,11211) outside clusterNetworks: config.linkerd.io/enable-external-profiles=true on Pod shop/client'],
  [BASIC, 'db/mysql-7d9c-abcde', 'outbound', '203.0.113.9', 3306, 'detect', 'default'],
  // Loopback (a --forward target) counts as local: the defaults apply.
  [BASIC, 'db/mysql-7d9c-abcde', 'outbound', '127.0.0.1', 6379, 'opaque',
    'opaque: default opaque ports (25,587,3306,4444,5432,6379,9300,11211) for loopback (local --forward targets)'],
  [BASIC, 'db/mysql-7d9c-abcde', 'outbound', '::1', 5432, 'opaque',
    'opaque: default opaque ports (25,587,3306,4444,5432,6379,9300,11211) for loopback (local --forward targets)'],
  // skip-subnets on the caller: never detected.
  [OUT, 'shop/client', 'outbound', '192.0.2.10', 80, 'opaque',
    'skip: config.linkerd.io/skip-subnets 192.0.2.0/24 (bypasses the proxy; opaque if it arrives)'],
  // Service ports via manifests: defaults on the clusterIP, appProtocol http on another port.
  [BASIC, 'db/mysql-7d9c-abcde', 'outbound', '10.96.0.10', 3306, 'opaque', 'opaque: default opaque ports (3306)'],
  [BASIC, 'db/mysql-7d9c-abcde', 'outbound', '10.96.0.10', 80, 'http1', 'http1: appProtocol http on Service db/mysql port 80 (http)'],
  [BASIC, 'db/mysql-7d9c-abcde', 'outbound', '10.244.1.5', 8080, 'http1',
    'http1: appProtocol http on Service db/mysql port 80 (http) (targetPort 8080 of Service port 80)'],
];

for (const [files, pod, direction, address, port, mode, source] of ROWS) {
  test(`${files.join('+')} as ${pod}: ${direction} ${address}:${port} -> ${mode}`, async () => {
    const c = await compileFixtures(files, pod);
    const hit = c.lookup(direction, address, port);
    assert.equal(hit.mode, mode, `mode for ${direction} ${address}:${port} (source ${hit.source})`);
    assert.equal(hit.source, source);
  });
}

test('a --opaque-ports flag beats a Server and applies outbound to any address', async () => {
  const overrides: Partial<PolicyInputs> = { opaquePorts: parsePortListStrict('8080') };
  const c = await compileFixtures(SERVERS, 'web/api-6b7c-1', overrides);
  assert.deepEqual({ ...c.lookup('inbound', '10.0.0.1', 8080) }, {
    mode: 'opaque', source: 'opaque: --opaque-ports flag', detectTimeoutMs: null, matched: 'rule', destination: null, mesh: null,
    // The Server still selects the port for authorization (it has no AuthorizationPolicy here: nobody).
    authz: { port: 8080, srvKind: 'server', srvName: 'api-http', rules: [] },
  });
  assert.equal(c.lookup('outbound', '203.0.113.1', 8080).mode, 'opaque');
});

test('a replaced default opaque list replaces it everywhere', async () => {
  const c = await compileFixtures(BASIC, 'db/mysql-7d9c-abcde', { defaultOpaquePorts: parsePortListStrict('8080,9000-9100') });
  assert.equal(c.lookup('inbound', '10.244.1.5', 3306).mode, 'detect');
  assert.equal(c.lookup('inbound', '10.244.1.5', 8080).source, 'opaque: default opaque ports (8080)');
  assert.equal(c.lookup('outbound', '10.9.9.9', 3306).mode, 'detect');
  assert.equal(c.lookup('outbound', '10.9.9.9', 9050).mode, 'opaque');
});

test('the disabled inbound detect timeout puts 365d on every detecting inbound rule', async () => {
  const c = await compileFixtures(BASIC, 'db/mysql-7d9c-abcde', {
    workloadAnnotations: { 'config.linkerd.io/proxy-disable-inbound-protocol-detect-timeout': 'true' },
    workloadAnnotationsOrigin: '/etc/podinfo/annotations',
  });
  const day365 = 365 * 86_400_000;
  assert.equal(c.lookup('inbound', '10.244.1.5', 8080).detectTimeoutMs, day365);
  assert.equal(c.lookup('inbound', '10.244.1.5', 3306).detectTimeoutMs, null, 'opaque rules need no timeout');
  assert.equal(c.lookup('outbound', '10.244.1.5', 8081).detectTimeoutMs, null, 'outbound keeps its configured timeout');
  assert.equal(c.result.effective.inbound.detectTimeout.ms, day365);
});

test('annotations from the downward-API file replace the manifest annotations of this pod', async () => {
  const c = await compileFixtures(SERVERS, 'web/api-6b7c-1', {
    workloadAnnotations: { 'config.linkerd.io/opaque-ports': 'pg' },
    workloadAnnotationsOrigin: '/etc/podinfo/annotations',
  });
  assert.equal(c.lookup('inbound', '10.0.0.1', 5432).source,
    'opaque: pod annotation config.linkerd.io/opaque-ports on Pod web/api-6b7c-1 (annotations file /etc/podinfo/annotations)');
  assert.equal(c.lookup('inbound', '10.0.0.1', 6379).mode, 'detect', 'the manifest value "9090,redis" no longer applies');
  assert.equal(c.lookup('inbound', '10.0.0.1', 8080).mode, 'http2', 'Servers still win');
});

test('the effective policy and the engine table agree on every listed port', async () => {
  for (const [files, pod] of [[BASIC, 'db/mysql-7d9c-abcde'], [SERVERS, 'web/api-1'], [INHERIT, 'cache/memcached-0'], [OUT, 'shop/web-1']] as const) {
    const c = await compileFixtures(files, pod);
    assert.ok(c.result.effective.inbound.ports.length > 0, `${pod} has ports`);
    for (const p of c.result.effective.inbound.ports) {
      assert.equal(c.lookup('inbound', '10.0.0.1', p.ports.from).mode, p.mode, `${pod} inbound ${p.ports.from}`);
    }
    for (const d of c.result.effective.outbound.destinations) {
      for (const address of d.addresses) {
        // The first decision covering a port is what the table gives for it.
        const seen = new Set<number>();
        for (const dec of d.decisions) {
          if (seen.has(dec.ports.from)) continue;
          seen.add(dec.ports.from);
          assert.equal(c.lookup('outbound', address, dec.ports.from).mode, dec.mode, `${pod} outbound ${address}:${dec.ports.from}`);
        }
      }
    }
  }
});

test('the table is valid for the engine: ports ordered, CIDRs canonical, addresses exact, deterministic', async () => {
  const a = await compileFixtures(OUT, 'shop/client');
  const b = await compileFixtures(OUT, 'shop/client');
  assert.deepEqual(a.table, b.table);
  for (const r of [...a.table.rules, ...a.table.fallbackRules]) {
    assert.ok(r.ports[0] >= 1 && r.ports[0] <= r.ports[1] && r.ports[1] <= 65535, JSON.stringify(r));
    if (r.net !== null) assert.match(r.net, /^[0-9a-f.:]+\/\d+$/);
    assert.ok(r.source.length > 0);
  }
  const ids = new Set(a.table.tables.map((t) => t.id));
  for (const t of a.table.tables) {
    for (const [from, to, , source] of t.ports) assert.ok(from >= 1 && from <= to && to <= 65535 && source < t.sources.length, JSON.stringify(t));
  }
  for (const [address, table] of a.table.addresses) {
    assert.match(address, /^[0-9a-f.:]+$/);
    assert.ok(ids.has(table), `${address} points at a defined table`);
  }
  const addresses = a.table.addresses.map(([address]) => address);
  assert.ok(addresses.includes('10.96.1.2'));
  assert.ok(addresses.includes('fd00:10:96::3'));
});
