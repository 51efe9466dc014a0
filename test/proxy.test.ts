/**
 * The `Proxy` library API (ts/engine/proxy.ts) over the real addon: the lifecycle
 * state machine (start once, close idempotent), bound addresses, errors with
 * stable codes (address in use names the address), stopAccepting, the
 * keep-alive handle, and process exit: a program that embeds the proxy and
 * never closes it still exits (the engine does not hold the event loop), and
 * one that asks for keepAlive stays up until it closes the proxy.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { objectLayer, resolveConfig } from '../ts/config/config.js';
import { MeshpipeError } from '../ts/errors.js';
import { Proxy } from '../ts/engine/proxy.js';
import { collect, connect, HOST, isListening, ROOT, sha256, startEchoServer, startServer, waitFor, withTimeout } from './helpers.js';

function configFor(forward: string[]) {
  return resolveConfig([objectLayer({ forward, admin: 'off', workers: 1 }, 'test')]);
}

function portOf(addr: string): number {
  return Number(addr.slice(addr.lastIndexOf(':') + 1));
}

test('start resolves with the bound addresses; close drains and is idempotent', async (t) => {
  const echo = await startEchoServer(t);
  const proxy = Proxy.fromConfig(configFor([`${HOST}:0=${HOST}:${echo.port}`, `${HOST}:0=${HOST}:${echo.port},mode=opaque,direction=inbound`]));
  assert.equal(proxy.state, 'new');
  const bound = await proxy.start();
  assert.equal(proxy.state, 'running');
  assert.deepEqual(bound.map((b) => b.name), [`forward:${HOST}:0`, `forward:${HOST}:0#2`]);
  assert.deepEqual(bound.map((b) => b.direction), ['outbound', 'inbound']);
  assert.ok(bound.every((b) => b.bind.startsWith(`${HOST}:`) && portOf(b.bind) > 0), JSON.stringify(bound));
  assert.equal(proxy.listeners, bound);

  const client = await connect(portOf(bound[1]!.bind));
  client.end('through the library');
  assert.equal((await withTimeout(collect(client), 5000, 'echo')).sha256, sha256('through the library'));
  const snap = proxy.snapshot();
  assert.equal(snap.listeners.length, 2);
  assert.equal(snap.listeners[1]?.accepted, 1);

  await assert.rejects(proxy.start(), (err: unknown) => err instanceof MeshpipeError && err.code === 'ERR_STARTUP');
  const a = proxy.close({ drainMs: 1000 });
  const b = proxy.close({ drainMs: 5 });
  assert.equal(a, b, 'a second close returns the first one');
  const summary = await a;
  assert.equal(summary.cut, 0);
  assert.equal(proxy.state, 'closed');
  assert.equal(await isListening(portOf(bound[0]!.bind)), false, 'closed listeners refuse connections');
});

test('stopAccepting stops one listener; the other keeps serving', async (t) => {
  const echo = await startEchoServer(t);
  const proxy = Proxy.fromConfig(configFor([`${HOST}:0=${HOST}:${echo.port},mode=opaque`, `[::1]:0=${HOST}:${echo.port},mode=opaque`]));
  t.after(() => proxy.close({ drainMs: 0 }));
  const bound = await proxy.start();
  assert.throws(() => proxy.stopAccepting(['forward:nope']), (err: unknown) => err instanceof MeshpipeError && /unknown listener "forward:nope"/.test(err.message));
  proxy.stopAccepting([bound[0]!.name]);
  await waitFor(async () => !(await isListening(portOf(bound[0]!.bind))), 'the stopped listener to refuse', 3000);
  const client = await connect(portOf(bound[1]!.bind), '::1');
  client.end('still here');
  assert.equal((await withTimeout(collect(client), 5000, 'echo')).sha256, sha256('still here'));
  assert.equal(proxy.snapshot().listeners.find((l) => l.name === bound[0]!.name)?.accepting, false);
});

test('an address in use rejects with ERR_ADDR_IN_USE naming it, and binds nothing else', async (t) => {
  const holder = await startServer(undefined, t);
  const free = (await startServer(undefined, t)).port;
  const other = await startServer(undefined, t);
  await other.close(); // its port is now free: the first listener would bind it
  const proxy = Proxy.fromConfig(configFor([`${HOST}:${other.port}=${HOST}:${free}`, `${HOST}:${holder.port}=${HOST}:${free}`]));
  await assert.rejects(proxy.start(), (err: unknown) => {
    assert.ok(err instanceof MeshpipeError);
    assert.equal(err.code, 'ERR_ADDR_IN_USE');
    assert.ok(err.message.includes(`${HOST}:${holder.port}`), err.message);
    assert.equal(err.exitCode, 1);
    return true;
  });
  assert.equal(proxy.state, 'failed');
  assert.equal(await isListening(other.port), false, 'a failed start leaves no listener behind');
});

/** Runs a small ES module program that embeds the proxy; resolves with its exit. */
async function runEmbedded(body: string, timeoutMs: number): Promise<{ code: number | null; output: string; ms: number }> {
  const program = `
    import { Proxy } from ${JSON.stringify(join(ROOT, 'dist/ts/engine/proxy.js'))};
    import { resolveConfig, objectLayer } from ${JSON.stringify(join(ROOT, 'dist/ts/config/config.js'))};
    const config = resolveConfig([objectLayer({ forward: ['127.0.0.1:0=127.0.0.1:9'], admin: 'off', workers: 1 }, 'embedded')]);
    ${body}
  `;
  const started = Date.now();
  const child = spawn(process.execPath, ['--input-type=module', '-e', program], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr.on('data', (c: Buffer) => (output += c.toString()));
  try {
    const [code] = (await withTimeout(once(child, 'close'), timeoutMs, 'the embedding program to exit')) as [number | null];
    return { code, output, ms: Date.now() - started };
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
}

test('an embedding program that never closes the proxy still exits: the engine does not hold the event loop', async () => {
  const r = await runEmbedded(`
    const proxy = Proxy.fromConfig(config);
    const bound = await proxy.start();
    console.log('bound', bound[0].bind);
  `, 15_000);
  assert.equal(r.code, 0, r.output);
  assert.match(r.output, /^bound 127\.0\.0\.1:\d+/);
});

test('keepAlive holds the process while the proxy runs and releases it on close', async () => {
  const r = await runEmbedded(`
    const proxy = Proxy.fromConfig(config, { keepAlive: true });
    await proxy.start();
    setTimeout(async () => { const s = await proxy.close({ drainMs: 0 }); console.log('closed', JSON.stringify(s)); }, 1000).unref();
  `, 15_000);
  assert.equal(r.code, 0, r.output);
  const closed = /^closed (.*)$/m.exec(r.output);
  assert.ok(closed, r.output);
  assert.deepEqual(JSON.parse(closed[1]!), { drained: 0, cut: 0 });
  assert.ok(r.ms >= 1000, `the process stayed up until close (${r.ms} ms)`);
});
