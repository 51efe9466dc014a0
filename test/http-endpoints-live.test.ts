/**
 * The endpoints of HTTP balancing kept live by the policy worker:
 *
 * - through the real CLI with `--kube` against a local API server
 *   (fake-kube-api.ts): a Service and its EndpointSlice are listed before
 *   the listeners bind, requests of one client connection spread over the
 *   ready endpoints, and an EndpointSlice change (one endpoint added, one
 *   no longer ready) reaches the engine without a restart: the new endpoint
 *   gets requests, the unready one none;
 * - in process, with the real worker and engine and only the bytes on the
 *   way to the engine altered: an endpoints change the engine refuses is
 *   logged at error level, counted (`meshpipe_endpoints_updates_total{result=
 *   "rejected"}`, and on /policy), and healed by the whole table it asks
 *   for.
 *
 * The backends are real HTTP servers on 127.0.0.2-4 (one port, as the
 * endpoints of a Service share their target port).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sidecar } from '../ts/sidecar/lifecycle.js';
import { createSidecarPolicy, type PolicyEngine, type SidecarPolicy } from '../ts/policy/sidecar.js';
import { parseProxyArgv } from '../ts/cli/args.js';
import { createLogger } from '../ts/observe/logger.js';
import { adminAddress, adminRequest, scrape } from './admin-client.js';
import { FakeKubeApi } from './fake-kube-api.js';
import { freePort, HOST, startProxy, waitFor } from './helpers.js';
import { total } from './prom-parse.js';

const BACKENDS = ['127.0.0.2', '127.0.0.3', '127.0.0.4'] as const;

/** Three HTTP servers on one port, each answering its own address. */
async function backends(t: TestContext): Promise<number> {
  let port = 0;
  for (const host of BACKENDS) {
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => res.end(host));
    });
    server.listen(port, host);
    await once(server, 'listening');
    t.after(() => server.close());
    port = (server.address() as AddressInfo).port;
  }
  return port;
}

/** `n` requests over one keep-alive connection; which backend answered how often. */
async function spread(port: number, n: number): Promise<Map<string, number>> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const seen = new Map<string, number>();
  try {
    for (let i = 0; i < n; i++) {
      const body = await new Promise<string>((resolve, reject) => {
        const req = http.get({ host: HOST, port, path: `/${i}`, agent }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve(`${res.statusCode} ${text}`));
        });
        req.on('error', reject);
      });
      seen.set(body, (seen.get(body) ?? 0) + 1);
    }
  } finally {
    agent.destroy();
  }
  return seen;
}

function answered(seen: Map<string, number>): string[] {
  return [...seen.keys()].sort();
}

function service(port: number): Record<string, unknown> & { metadata: { name: string; namespace: string } } {
  return { metadata: { name: 'web', namespace: 'shop' }, spec: { clusterIP: HOST, clusterIPs: [HOST], ports: [{ name: 'http', port, targetPort: 'http' }] } };
}

function slice(port: number, endpoints: { ip: string; ready: boolean }[]): Record<string, unknown> & { metadata: { name: string; namespace: string; labels: Record<string, string> } } {
  return {
    metadata: { name: 'web-x1', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'web' } },
    addressType: 'IPv4',
    ports: [{ name: 'http', port, protocol: 'TCP' }],
    endpoints: endpoints.map((e) => ({ addresses: [e.ip], conditions: { ready: e.ready } })),
  };
}

test('kube: EndpointSlices listed before bind, balanced over, and followed live', async (t) => {
  const port = await backends(t);
  const svcPort = await freePort(); // the "cluster IP" 127.0.0.1:svcPort: nothing listens there
  const api = new FakeKubeApi();
  await api.start();
  t.after(() => api.close());
  api.apply('/api/v1/services', service(svcPort));
  const SLICES = '/apis/discovery.k8s.io/v1/endpointslices';
  api.apply(SLICES, slice(port, [{ ip: '127.0.0.2', ready: true }, { ip: '127.0.0.3', ready: true }]));
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-endpoints-kube-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig());

  const { proc, ports } = await startProxy(['--forward', `${HOST}:0=${HOST}:${svcPort}`, '--kube', '--kubeconfig', kubeconfig, '--admin', `${HOST}:0`], { t });
  const ready = proc.logs.findIndex((l) => l.msg === 'proxy ready');
  const loaded = proc.logs.findIndex((l) => l.msg === 'endpoints updated' && l['services'] === 1 && l['upserted'] === 1);
  assert.ok(loaded >= 0 && loaded < ready, 'the endpoints table was in the engine before the proxy was ready');
  assert.ok(api.requests.some((r) => r.startsWith(`GET ${SLICES}?`) && r.includes('limit=')), 'EndpointSlices were listed');
  await waitFor(() => api.requests.some((r) => r.startsWith(`GET ${SLICES}?`) && r.includes('watch=1')), 'EndpointSlices to be watched');
  const admin = await adminAddress(proc);

  const first = await spread(ports[0]!, 60);
  assert.deepEqual(answered(first), ['200 127.0.0.2', '200 127.0.0.3'], JSON.stringify([...first]));

  // The slice changes: 127.0.0.4 joins, 127.0.0.2 is no longer ready.
  api.apply(SLICES, slice(port, [{ ip: '127.0.0.2', ready: false }, { ip: '127.0.0.3', ready: true }, { ip: '127.0.0.4', ready: true }]));
  let f = await scrape(admin);
  await waitFor(async () => total((f = await scrape(admin)), 'meshpipe_endpoints_generation') >= 2, 'the change to reach the engine');
  const after = await spread(ports[0]!, 60);
  assert.deepEqual(answered(after), ['200 127.0.0.3', '200 127.0.0.4'], JSON.stringify([...after]));
  assert.equal(f.get('meshpipe_endpoints_updates_total')?.samples.find((s) => s.labels['result'] === 'rejected')?.value, 0);
  assert.equal(total(f, 'meshpipe_endpoints_services'), 1);

  // The Service is deleted: its address has no endpoints table entry, requests go to the original destination (nothing there).
  api.remove('/api/v1/services', 'shop', 'web');
  await waitFor(async () => total(await scrape(admin), 'meshpipe_endpoints_services') === 0, 'the Service to leave the table');
  const gone = answered(await spread(ports[0]!, 1));
  assert.match(gone[0]!, /^502 /, `the original destination refuses: 502 (${gone.join()})`);
});

function put(path: string, text: string): void {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

function manifest(svcPort: number, port: number, ready: string[]): string {
  return [service(svcPort), slice(port, ready.map((ip) => ({ ip, ready: true })))]
    .map((o, i) => JSON.stringify({ apiVersion: i === 0 ? 'v1' : 'discovery.k8s.io/v1', kind: i === 0 ? 'Service' : 'EndpointSlice', ...o }))
    .join('\n---\n');
}

/** The real sidecar policy, with the endpoints changes it hands the engine altered while `fault.on`. */
function faulty(real: SidecarPolicy, fault: { on: boolean }): SidecarPolicy {
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  return {
    initial: real.initial,
    notInForce: () => real.notInForce(),
    view: (snapshot) => real.view(snapshot),
    close: () => real.close(),
    start: (engine) => real.start({
      setPolicy: (bytes) => engine.setPolicy(bytes),
      updatePolicy: (bytes) => engine.updatePolicy(bytes),
      updateEndpoints: (bytes) => {
        const update = JSON.parse(decoder.decode(bytes)) as { replace: boolean; base: number };
        // A change onto a generation the engine does not have: refused by the engine itself.
        if (fault.on && !update.replace) update.base += 1000;
        return engine.updateEndpoints(encoder.encode(JSON.stringify(update)));
      },
    } satisfies PolicyEngine),
  };
}

test('an endpoints change the engine refuses: logged, counted, healed by the whole table', async (t) => {
  const port = await backends(t);
  const svcPort = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-endpoints-rejected-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'web.yaml');
  put(file, manifest(svcPort, port, ['127.0.0.2']));
  const { config } = parseProxyArgv(['--forward', `${HOST}:0=${HOST}:${svcPort}`, '--manifests', dir, '--admin', `${HOST}:0`], { env: {} });
  const logs: Record<string, unknown>[] = [];
  const logger = createLogger('info', { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
  const fault = { on: true };
  const sidecar = new Sidecar(config, logger, { policy: faulty(createSidecarPolicy(config, logger), fault) });
  t.after(() => sidecar.drain());
  const bound = await sidecar.start();
  const listen = Number(bound[0]!.bind.split(':').pop());
  const admin = sidecar.admin!.address;
  assert.deepEqual(answered(await spread(listen, 5)), ['200 127.0.0.2'], 'the first (whole) table applies');

  const rejected = async (): Promise<number> =>
    (await scrape(admin)).get('meshpipe_endpoints_updates_total')?.samples.find((s) => s.labels['result'] === 'rejected')?.value ?? 0;
  put(file, manifest(svcPort, port, ['127.0.0.3']));
  await waitFor(async () => (await rejected()) >= 1, 'the change to be refused');
  const refusal = logs.find((l) => l['msg'] === 'endpoints rejected by the engine; the last good table stays in force');
  assert.equal(refusal?.['level'], 'error', JSON.stringify(refusal));
  assert.match(JSON.stringify(refusal), /applies to generation \d+, but the engine has generation \d+: send the whole table/);

  // The refusal asked the worker for the whole table, which is never altered: the new endpoint is in force.
  await waitFor(async () => answered(await spread(listen, 3)).join() === '200 127.0.0.3', 'the whole table to replace the refused change');
  const policy = JSON.parse((await adminRequest(admin, '/policy')).body) as { endpoints: { updatesRejected: number; lastRejection: unknown } };
  assert.ok(policy.endpoints.updatesRejected >= 1, `the refusal stays counted on /policy: ${JSON.stringify(policy.endpoints)}`);
  assert.equal(policy.endpoints.lastRejection, null, 'an accepted table clears the last refusal');

  // With the fault gone, changes apply as changes again.
  fault.on = false;
  const before = await rejected();
  put(file, manifest(svcPort, port, ['127.0.0.3', '127.0.0.4']));
  await waitFor(async () => answered(await spread(listen, 20)).join() === '200 127.0.0.3,200 127.0.0.4', 'the change to apply');
  assert.equal(await rejected(), before, 'no refusal once the fault is gone');
});
