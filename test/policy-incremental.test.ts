/**
 * The incremental compiler (issue 10 §3): one pod's change recomputes that
 * pod only and sends only its addresses; a Service, Server or Namespace
 * change sends the destinations it affects; port tables are shared by every
 * pod with the same ports and annotations, so a change's size does not grow
 * with the cluster. And the property that makes it safe: after any sequence
 * of changes, the engine that received the deltas decides exactly as a fresh
 * compile of the same objects (fast-check, both through the engine's own
 * lookup).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PolicyCompiler } from '../ts/policy/compiler.js';
import { settingsOf } from '../ts/policy/compile.js';
import { NativeProxy, PolicyLookup, type EngineConfig } from '../ts/engine/native.js';
import type { NamespaceObject, PolicyObject, ServerObject, ServiceObject, WorkloadObject } from '../ts/policy/k8s/objects.js';
import type { PolicyChange } from '../ts/policy/model.js';
import { baseInputs } from './policy-helpers.js';

function pod(ns: string, name: string, ip: string | undefined, labels: Record<string, string>, annotations: Record<string, string> = {}): WorkloadObject {
  return {
    kind: 'Pod', namespace: ns, name, annotations, labels, podIPs: ip === undefined ? [] : [ip], serviceAccount: 'default',
    containerPorts: [{ name: 'http', port: 8080, protocol: 'TCP' }, { name: 'admin', port: 9090, protocol: 'TCP' }, { name: 'db', port: 5432, protocol: 'TCP' }],
  };
}

function service(ns: string, name: string, ip: string, selector: Record<string, string> | undefined, appProtocol?: string): ServiceObject {
  return {
    kind: 'Service', namespace: ns, name, annotations: {}, selector, clusterIPs: [ip],
    ports: [{ name: 'http', port: 80, targetPort: 'http', appProtocol, protocol: 'TCP' }, { name: 'pg', port: 5432, targetPort: 5432, appProtocol: undefined, protocol: 'TCP' }],
  };
}

function namespace(name: string, opaque?: string): NamespaceObject {
  return { kind: 'Namespace', name, annotations: opaque === undefined ? {} : { 'config.linkerd.io/opaque-ports': opaque } };
}

function server(ns: string, name: string, app: string, port: number | string, proxyProtocol: string): ServerObject {
  return { kind: 'Server', namespace: ns, name, matchLabels: { app }, matchExpressions: [], port, proxyProtocol, createdAt: 1 };
}

const ip = (i: number): string => `10.244.${Math.floor(i / 250)}.${(i % 250) + 1}`;

/** A cluster: `pods` pods in workloads of 10 replicas, a Service per workload, a Server, two namespaces. */
function cluster(pods: number): PolicyObject[] {
  const out: PolicyObject[] = [namespace('shop'), namespace('tenant', '9000-9100,5432')];
  for (let w = 0; w < pods / 10; w++) {
    const ns = w % 2 === 0 ? 'shop' : 'tenant';
    out.push(service(ns, `app-${w}`, `10.96.${Math.floor(w / 250)}.${(w % 250) + 1}`, { app: `app-${w}` }, w % 3 === 0 ? 'kubernetes.io/h2c' : undefined));
    for (let r = 0; r < 10; r++) out.push(pod(ns, `app-${w}-${r}`, ip(w * 10 + r), { app: `app-${w}` }, { 'config.linkerd.io/opaque-ports': 'db' }));
  }
  out.push(server('shop', 'admin', 'app-0', 'admin', 'gRPC'));
  return out;
}

function loaded(objects: readonly PolicyObject[]): PolicyCompiler {
  const compiler = new PolicyCompiler(settingsOf(baseInputs({ identity: { namespace: 'shop', pod: 'client-1' } })));
  for (const o of objects) compiler.upsert('k', o);
  return compiler;
}

function bytes(change: unknown): number {
  return Buffer.byteLength(JSON.stringify(change));
}

test('one pod changes: only its addresses are sent, with a shared table, whatever the cluster size', () => {
  const sizes: number[] = [];
  for (const n of [1_000, 10_000]) {
    const compiler = loaded(cluster(n));
    const table = compiler.table(1);
    assert.equal(table.addresses.length, n + n / 10, `${n} pod IPs and ${n / 10} clusterIPs`);
    assert.ok(table.tables.length < n / 4, `tables are shared by replicas (${table.tables.length} tables for ${n} pods and ${n / 10} Services)`);
    assert.equal(compiler.flush()?.addresses.length, n + n / 10, 'the first flush is everything');

    // A pod is rescheduled: new IP, same workload.
    compiler.upsert('k', pod('shop', 'app-4-3', '10.99.0.7', { app: 'app-4' }, { 'config.linkerd.io/opaque-ports': 'db' }));
    const moved = compiler.flush();
    assert.ok(moved);
    assert.deepEqual(moved.addresses.map((a) => [a[0], a[2]]), [['10.99.0.7', 'Pod shop/app-4-3']]);
    assert.deepEqual(moved.removeAddresses, [ip(43)]);
    assert.deepEqual(moved.tables, [], 'the replicas\' table is reused');
    assert.equal(moved.frame, null);
    sizes.push(bytes(moved));

    // It gets its own annotation: one new table, one address, nothing else.
    compiler.upsert('k', pod('shop', 'app-4-3', '10.99.0.7', { app: 'app-4' }, { 'config.linkerd.io/opaque-ports': '8080' }));
    const annotated = compiler.flush();
    assert.ok(annotated);
    assert.equal(annotated.addresses.length, 1);
    assert.equal(annotated.tables.length, 1);
    assert.deepEqual(annotated.changed, ['Pod shop/app-4-3']);

    // Nothing changed: nothing to send.
    compiler.upsert('k', pod('shop', 'app-4-3', '10.99.0.7', { app: 'app-4' }, { 'config.linkerd.io/opaque-ports': '8080' }));
    assert.equal(compiler.flush(), undefined);
  }
  // Only ids and addresses differ in length (a table id of 2 or 3 digits).
  assert.ok(Math.abs(sizes[0]! - sizes[1]!) <= 8 && sizes.every((n) => n < 400), `a one-pod delta does not grow with the cluster (${sizes.join(' vs ')} bytes)`);
});

test('a Service, Server or Namespace change sends the destinations it affects, nothing else', () => {
  const compiler = loaded(cluster(1_000));
  compiler.flush();
  // appProtocol on app-1's Service: its clusterIP and its 10 pods (carried through targetPort).
  compiler.upsert('k', service('tenant', 'app-1', '10.96.0.2', { app: 'app-1' }, 'linkerd.io/opaque'));
  const svc = compiler.flush();
  assert.ok(svc);
  assert.deepEqual(svc.addresses.map((a) => a[2]).sort(), ['Service tenant/app-1', ...Array.from({ length: 10 }, (_, r) => `Pod tenant/app-1-${r}`)].sort());
  // A Server for app-2's pods: those 10 pods only.
  compiler.upsert('k', server('shop', 'app-2-http', 'app-2', 'http', 'HTTP/2'));
  const srv = compiler.flush();
  assert.ok(srv);
  assert.deepEqual(srv.addresses.map((a) => a[2]).sort(), Array.from({ length: 10 }, (_, r) => `Pod shop/app-2-${r}`).sort());
  // The tenant namespace's annotation: its 500 pods (one shared table) and 50 Services, not the shop's.
  compiler.upsert('k', namespace('tenant', '9000-9200'));
  const ns = compiler.flush();
  assert.ok(ns);
  assert.ok(ns.addresses.every((a) => a[2].includes('tenant/')), 'only the tenant namespace');
  assert.equal(ns.addresses.filter((a) => a[2].startsWith('Pod ')).length, 500);
  assert.ok(ns.tables.length < 100, `pods share tables: ${ns.tables.length} new tables for 500 pods and 50 Services`);
});

test('a 40 KB namespace annotation inherited by 2,000 pods crosses once, as one port table', () => {
  // Every other port from 1000: about 8,000 ranges, 40 KB of text.
  const value = Array.from({ length: 8_000 }, (_, i) => String(1000 + 2 * i)).join(',');
  assert.ok(value.length > 40_000);
  const objects: PolicyObject[] = [namespace('tenant', value)];
  for (let i = 0; i < 2_000; i++) objects.push(pod('tenant', `p-${i}`, ip(i), { app: `a${i % 20}` }));
  const compiler = loaded(objects);
  const first = compiler.flush();
  assert.ok(first);
  assert.equal(first.addresses.length, 2_000);
  assert.equal(first.tables.length, 1, 'one table for every pod inheriting the value');
  const size = bytes(first);
  assert.ok(size < 600_000, `the table crosses once, not once per pod (${size} bytes for 2,000 pods)`);
  // A new pod in that namespace: its address only.
  compiler.upsert('k', pod('tenant', 'p-new', '10.99.9.9', { app: 'a1' }));
  const one = compiler.flush();
  assert.ok(one);
  assert.equal(bytes(one) < 400 && one.tables.length === 0, true, `${bytes(one)} bytes`);
  // And the engine answers from ranges: an odd port between two listed ones is not opaque.
  const lookup = new PolicyLookup(compiler.table(2));
  assert.equal(lookup.explain('outbound', '10.99.9.9', 1000).mode, 'opaque');
  assert.equal(lookup.explain('outbound', '10.99.9.9', 1001).mode, 'detect');
  assert.equal(lookup.explain('outbound', '10.99.9.9', 16998).mode, 'opaque');
});

/** A random change to a small cluster where addresses collide (shared IPs, reused IPs). */
const IPS = ['10.244.0.1', '10.244.0.2', '10.244.0.3', '10.96.0.1', 'fd00::1', '::ffff:10.244.0.2'];
const LABELS: Record<string, string>[] = [{ app: 'a' }, { app: 'b' }, { app: 'a', tier: 'x' }];
const opArb = fc.oneof(
  fc.record({ op: fc.constant('pod' as const), ns: fc.constantFrom('shop', 'tenant'), name: fc.constantFrom('p1', 'p2', 'p3', 'p4'),
    ip: fc.option(fc.constantFrom(...IPS), { nil: undefined }), labels: fc.constantFrom(...LABELS),
    opaque: fc.option(fc.constantFrom('8080', '9000-9100', 'admin', '5432,6379', 'bogus!'), { nil: undefined }) }),
  fc.record({ op: fc.constant('service' as const), ns: fc.constantFrom('shop', 'tenant'), name: fc.constantFrom('s1', 's2'),
    ip: fc.constantFrom(...IPS), selector: fc.option(fc.constantFrom(...LABELS), { nil: undefined }),
    appProtocol: fc.option(fc.constantFrom('kubernetes.io/h2c', 'linkerd.io/opaque', 'http'), { nil: undefined }) }),
  fc.record({ op: fc.constant('server' as const), ns: fc.constantFrom('shop', 'tenant'), name: fc.constantFrom('v1', 'v2'),
    app: fc.constantFrom('a', 'b'), port: fc.constantFrom<number | string>(8080, 'admin', 9090), proxyProtocol: fc.constantFrom('opaque', 'HTTP/2', 'unknown') }),
  fc.record({ op: fc.constant('namespace' as const), name: fc.constantFrom('shop', 'tenant'), opaque: fc.option(fc.constantFrom('8080', '3306,9000'), { nil: undefined }) }),
  fc.record({ op: fc.constant('delete' as const), kind: fc.constantFrom('Pod', 'Service', 'Server', 'Namespace'), ns: fc.constantFrom('shop', 'tenant'),
    name: fc.constantFrom('p1', 'p2', 's1', 'v1', 'shop', 'tenant') }),
);
type Op = typeof opArb extends fc.Arbitrary<infer T> ? T : never;

function apply(compiler: PolicyCompiler, op: Op, objects: Map<string, PolicyObject>): void {
  let o: PolicyObject | undefined;
  if (op.op === 'pod') o = pod(op.ns, op.name, op.ip, op.labels, op.opaque === undefined ? {} : { 'config.linkerd.io/opaque-ports': op.opaque });
  else if (op.op === 'service') o = service(op.ns, op.name, op.ip, op.selector, op.appProtocol);
  else if (op.op === 'server') o = server(op.ns, op.name, op.app, op.port, op.proxyProtocol);
  else if (op.op === 'namespace') o = namespace(op.name, op.opaque);
  if (o) {
    compiler.upsert('k', o);
    objects.set(`${o.kind}/${o.kind === 'Namespace' ? '' : o.namespace}/${o.name}`, o);
    return;
  }
  if (op.op !== 'delete') return;
  const ns = op.kind === 'Namespace' ? '' : op.ns;
  compiler.remove('k', { kind: op.kind, namespace: ns, name: op.name });
  objects.delete(`${op.kind}/${ns}/${op.name}`);
}

const ENGINE: EngineConfig = {
  workers: 1, limits: { inboundConnections: 0, outboundConnections: 0, detectingConnections: 1024, fdReserve: 128, bulkBuffers: 4 }, connectTimeoutMs: 1000, idleTimeoutMs: 3_600_000,
  listeners: [{ name: 'unused', bind: '127.0.0.1:0', target: { kind: 'fixed', addr: '127.0.0.1:9' }, mode: null, direction: 'outbound' }],
  detect: { inboundTimeoutMs: 1000, outboundTimeoutMs: 1000, serverFirstGraceMs: 0, serverFirstCapacity: 16, serverFirstTtlMs: 1000, portTimeouts: [] },
  metrics: { maxTargets: 10, retainIdleMs: 600_000 },
  policy: { generation: 0, rules: [], fallbackRules: [], destinationDetectTimeoutMs: null, tables: [], addresses: [], authz: null, meshDestinations: [] },
};

test('after any sequence of changes, the engine fed the deltas decides as a fresh compile does', async () => {
  const engine = new NativeProxy(ENGINE); // never started: only its policy is used
  const probes = [...IPS, '10.244.0.9', '203.0.113.5', '127.0.0.1'];
  const ports = [80, 5432, 6379, 8080, 9000, 9050, 9090, 3306];
  fc.assert(fc.property(fc.array(fc.array(opArb, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 12 }), (batches) => {
    const objects = new Map<string, PolicyObject>();
    const compiler = loaded([]);
    let generation = 1;
    engine.setPolicy(compiler.table(generation));
    compiler.flush(); // the whole table carried everything so far
    for (const batch of batches) {
      for (const op of batch) apply(compiler, op, objects);
      const change = compiler.flush();
      if (!change) continue;
      const { frame, tables, dropTables, addresses, removeAddresses } = change;
      const delta: PolicyChange = { generation: generation + 1, base: generation, frame, tables, dropTables, addresses, removeAddresses };
      engine.updatePolicy(delta);
      generation++;
    }
    const fresh = new PolicyLookup(loaded([...objects.values()]).table(generation));
    for (const address of probes) {
      for (const port of ports) {
        for (const direction of ['inbound', 'outbound'] as const) {
          const got = engine.explainPolicy(direction, address, port);
          const want = fresh.explain(direction, address, port);
          assert.deepEqual({ mode: got.mode, source: got.source }, { mode: want.mode, source: want.source },
            `${direction} ${address}:${port} after ${JSON.stringify(batches)}`);
        }
      }
    }
  }), { numRuns: 150 });
  await engine.close(0);
});
