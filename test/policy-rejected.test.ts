/**
 * A policy update the engine refuses is loud and harmless (issue 10 §3):
 * logged at error level, counted (`meshpipe_policy_updates_total{result=
 * "rejected"}`), shown on /policy until an update is accepted again, and the
 * last good policy stays in force (checked with real connections). With no
 * valid policy at all (the sources' first table refused), /ready says so.
 *
 * The sidecar runs in process with its real policy worker and real engine;
 * the only thing the test changes is the bytes on the way from the worker to
 * the engine (a wrong base generation, an invalid network), so the engine's
 * own validation does the refusing.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sidecar } from '../ts/sidecar/lifecycle.js';
import { createSidecarPolicy, type PolicyEngine, type SidecarPolicy } from '../ts/policy/sidecar.js';
import { parseProxyArgv } from '../ts/cli/args.js';
import { createLogger } from '../ts/observe/logger.js';
import type { EngineSnapshot, PolicyDecision } from '../ts/engine/native.js';
import { adminRequest, scrape } from './admin-client.js';
import { HOST, collect, connect, sha256, startEchoServer, waitFor } from './helpers.js';
import { deployment } from './policy-helpers.js';

function put(path: string, text: string): void {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

/** Faults on the wire from the worker to the engine. */
interface Faults {
  delta: boolean;
  whole: boolean;
}

/** The real sidecar policy, with the bytes it hands the engine altered while a fault is on. */
function faulty(real: SidecarPolicy, faults: Faults): SidecarPolicy {
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  const edit = (bytes: Uint8Array, change: (value: Record<string, unknown>) => void): Uint8Array => {
    const value = JSON.parse(decoder.decode(bytes)) as Record<string, unknown>;
    change(value);
    return encoder.encode(JSON.stringify(value));
  };
  return {
    initial: real.initial,
    notInForce: () => real.notInForce(),
    view: (snapshot) => real.view(snapshot),
    close: () => real.close(),
    start: (engine) => real.start({
      setPolicy: (bytes) => engine.setPolicy(faults.whole
        ? edit(bytes, (t) => (t['rules'] as unknown[]).push({ direction: 'outbound', net: '300.0.0.0/8', ports: [1, 2], mode: 'opaque', detectTimeoutMs: null, source: 'fault' }))
        : bytes),
      updatePolicy: (bytes) => engine.updatePolicy(faults.delta ? edit(bytes, (d) => (d['base'] = Number(d['base']) + 1000)) : bytes),
      updateEndpoints: (bytes) => engine.updateEndpoints(bytes),
    } satisfies PolicyEngine),
  };
}

interface Harness {
  sidecar: Sidecar;
  admin: string;
  port: number;
  echoPort: number;
  file: string;
  logs: Record<string, unknown>[];
}

async function start(t: TestContext, faults: Faults): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-rejected-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const echo = await startEchoServer(t);
  const file = join(dir, 'app.yaml');
  put(file, deployment(echo.port));
  const { config } = parseProxyArgv([
    '--forward', `${HOST}:0=${HOST}:${echo.port},direction=inbound`, '--manifests', dir,
    '--namespace', 'shop', '--pod', 'app-7c9d-x', '--admin', `${HOST}:0`,
  ], { env: {} });
  const logs: Record<string, unknown>[] = [];
  const logger = createLogger('info', { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
  const sidecar = new Sidecar(config, logger, { policy: faulty(createSidecarPolicy(config, logger), faults) });
  t.after(() => sidecar.drain());
  const bound = await sidecar.start();
  return { sidecar, admin: sidecar.admin!.address, port: Number(bound[0]!.bind.split(':').pop()), echoPort: echo.port, file, logs };
}

/** What the engine decides for an inbound connection to the echo port. */
function inbound(h: Harness): PolicyDecision {
  return h.sidecar.proxy.explainPolicy('inbound', HOST, h.echoPort);
}

async function opaqueConnections(h: Harness): Promise<number> {
  const snap = JSON.parse((await adminRequest(h.admin, '/snapshot')).body) as EngineSnapshot;
  return snap.detect.filter((d) => d.direction === 'inbound' && d.targetPort === h.echoPort && d.result === 'opaque_port').reduce((n, d) => n + d.count, 0);
}

async function roundTrip(port: number): Promise<void> {
  const socket = await connect(port);
  const echoed = collect(socket);
  const text = 'GET / HTTP/1.1\r\nHost: app\r\n\r\n';
  socket.end(text);
  assert.equal((await echoed).sha256, sha256(text));
}

async function rejectedTotal(admin: string): Promise<number> {
  const family = (await scrape(admin)).get('meshpipe_policy_updates_total');
  return family?.samples.find((s) => s.labels['result'] === 'rejected')?.value ?? 0;
}

test('a refused update: logged, counted, on /policy; the last good policy stays in force', async (t) => {
  const faults: Faults = { delta: false, whole: false };
  const h = await start(t, faults);
  await roundTrip(h.port);
  await waitFor(async () => (await opaqueConnections(h)) === 1, 'the first connection to skip detection');
  assert.equal(await rejectedTotal(h.admin), 0);

  // The workload no longer lists the port, but every update on the way is refused.
  faults.delta = true;
  faults.whole = true;
  put(h.file, deployment(h.echoPort + 1));
  await waitFor(async () => (await rejectedTotal(h.admin)) >= 2, 'the delta and then the whole table to be refused');
  const refusals = h.logs.filter((l) => l['msg'] === 'policy rejected by the engine; the last good policy stays in force');
  assert.ok(refusals.length >= 2 && refusals.every((l) => l['level'] === 'error'), JSON.stringify(refusals));
  assert.match(JSON.stringify(refusals[0]), /applies to generation \d+, but the engine has generation \d+/);
  const policy = JSON.parse((await adminRequest(h.admin, '/policy')).body) as { inForce: boolean; engine: { updatesRejected: number; lastRejection: { message: string } | null } };
  assert.ok(policy.engine.updatesRejected >= 2);
  assert.match(policy.engine.lastRejection?.message ?? '', /300\.0\.0\.0\/8/, 'the last refusal is shown with its reason');
  assert.equal(policy.inForce, true, 'the first table is still in force');
  assert.equal((await adminRequest(h.admin, '/ready')).status, 200);
  // Still the old policy: the port stays opaque.
  assert.equal(inbound(h).mode, 'opaque');
  await roundTrip(h.port);
  await waitFor(async () => (await opaqueConnections(h)) === 2, 'the next connection to skip detection too');

  // The fault passes: the whole table, asked for again with backoff, is accepted and the refusal clears.
  faults.delta = false;
  faults.whole = false;
  await waitFor(() => inbound(h).mode === 'detect', 'the new policy once the engine accepts it', 20_000);
  const after = JSON.parse((await adminRequest(h.admin, '/policy')).body) as { engine: { lastRejection: unknown } };
  assert.equal(after.engine.lastRejection, null);
});

test('no valid policy at all: /ready says so until the engine accepts a table from the sources', async (t) => {
  const faults: Faults = { delta: false, whole: true };
  const h = await start(t, faults);
  const ready = await adminRequest(h.admin, '/ready');
  assert.equal(ready.status, 503);
  assert.equal(ready.body, 'not ready: no valid policy\n');
  const policy = JSON.parse((await adminRequest(h.admin, '/policy')).body) as { inForce: boolean; notInForce: string };
  assert.equal(policy.inForce, false);
  assert.match(policy.notInForce, /the engine refused the first table \(generation 1\): .*300\.0\.0\.0\/8/);
  assert.equal(inbound(h).source, 'default', 'meanwhile the engine has the flags-only policy, which does not know the port');

  faults.whole = false;
  await waitFor(async () => (await adminRequest(h.admin, '/ready')).status === 200, '/ready once a table is accepted', 20_000);
  assert.equal(inbound(h).source, 'opaque: pod annotation config.linkerd.io/opaque-ports on Deployment shop/app');
});
