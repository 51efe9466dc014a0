/**
 * Live policy through the real CLI (issue 4): `meshpipe proxy --annotations
 * FILE` reads the workload's downward-API annotations, and editing the file
 * under the running proxy swaps the new policy into the engine. The port of an
 * inbound listener goes from detect to opaque; a connection opened before the
 * change keeps flowing untouched (SHA-256 of everything it carried), new
 * connections get the new mode (detection results read from the admin
 * server's /snapshot), and an edit with bad entries applies only the valid
 * ones while /policy shows the problems.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

import { HOST, collect, connect, sha256, startEchoServer, startProxy, waitFor } from './helpers.js';
import { adminAddress, adminRequest } from './admin-client.js';
import type { EngineSnapshot } from '../ts/engine/native.js';

/** Writes the file the way the kubelet does: a new file renamed over the old one. */
function writeAnnotations(path: string, lines: string[]): void {
  writeFileSync(`${path}.tmp`, lines.join('\n') + '\n');
  renameSync(`${path}.tmp`, path);
}

async function detectResults(admin: string, port: number): Promise<Record<string, number>> {
  const snap = JSON.parse((await adminRequest(admin, '/snapshot')).body) as EngineSnapshot;
  const out: Record<string, number> = {};
  for (const d of snap.detect) if (d.direction === 'inbound' && d.targetPort === port) out[d.result] = d.count;
  return out;
}

test('editing the annotations file under a running proxy: detect -> opaque for new connections only', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-reload-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'annotations');
  writeAnnotations(file, ['config.linkerd.io/opaque-ports="25"', 'linkerd.io/inject="enabled"']);
  const echo = await startEchoServer(t);
  const { proc, ports } = await startProxy(
    // --no-http: the echo server is no HTTP server; the swap is what is tested.
    ['--forward', `${HOST}:0=${HOST}:${echo.port},direction=inbound`, '--annotations', file, '--admin', `${HOST}:0`, '--no-http'],
    { t },
  );
  const admin = await adminAddress(proc);
  const request = Buffer.from('GET / HTTP/1.1\r\nHost: app\r\n\r\n');
  // The first table's line says what its counts are and where the rules are shown.
  const first = await proc.waitForLog((l) => l.msg === 'policy loaded' && Number(l['generation']) === 1, 'the first policy');
  assert.match(String(first['hint']), /objects: .*addresses: .*meshpipe explain --port PORT/);

  // Before: the port is not in the workload's list, so it is detected.
  const early = await connect(ports[0]!);
  const earlyEcho = collect(early);
  early.write(request);
  await waitFor(async () => (await detectResults(admin, echo.port))['http/1'] === 1, 'http/1 detected before the edit');

  // Edit: the port becomes opaque. Wait for the engine to report the new generation.
  writeAnnotations(file, [`config.linkerd.io/opaque-ports="25,${echo.port}"`, 'linkerd.io/inject="enabled"']);
  await proc.waitForLog((l) => l.msg === 'policy loaded' && Number(l['generation']) >= 2, 'the new policy', 10_000);

  // The connection opened before the change keeps flowing.
  const more = randomBytes(2 * 1024 * 1024);
  early.end(more);
  const back = await earlyEcho;
  assert.equal(back.sha256, sha256(Buffer.concat([request, more])), 'the old connection is untouched by the swap');

  // New connections are opaque: no detection at all.
  const late = await connect(ports[0]!);
  const lateEcho = collect(late);
  late.end(request);
  assert.equal((await lateEcho).sha256, sha256(request));
  await waitFor(async () => (await detectResults(admin, echo.port))['opaque_port'] === 1, 'opaque_port after the edit');
  assert.deepEqual(await detectResults(admin, echo.port), { 'http/1': 1, opaque_port: 1 });

  // An edit with a bad token and a malformed line: the valid entries of the
  // list still apply (Linkerd's rule: the port is no longer listed, so it is
  // detected again), nothing is widened, and the problems show on /policy.
  writeAnnotations(file, ['config.linkerd.io/opaque-ports="25,x!"', 'this is not a downward-API line']);
  const policy = await waitFor(async () => {
    const body = JSON.parse((await adminRequest(admin, '/policy')).body) as { problems?: string[] };
    return (body.problems?.length ?? 0) > 0 ? body : undefined;
  }, 'the problem on /policy', 10_000);
  assert.ok(policy.problems!.some((p) => p.includes('x!') || p.includes('line 2')), JSON.stringify(policy.problems));
  const third = await connect(ports[0]!);
  const thirdEcho = collect(third);
  third.end(request);
  await thirdEcho;
  await waitFor(async () => (await detectResults(admin, echo.port))['http/1'] === 2, 'detect again: the port is no longer listed');
});
