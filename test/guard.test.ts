/**
 * The process-level guard (ts/sidecar/guard.ts) in a real `meshpipe proxy`:
 * an error is injected from outside the product (test/fault-injector.ts,
 * preloaded with NODE_OPTIONS) while a connection is being proxied.
 * - An unhandled rejection is logged with its stable message, counted in
 *   meshpipe_uncaught_errors_total, and the proxy keeps serving (the open
 *   connection and new ones), then stops normally (exit 0).
 * - An uncaught exception is logged, /ready turns 503, the listener stops,
 *   the open connection is still carried to its end (drained, not cut), and
 *   the process exits 1.
 * Without the guard, Node's default would kill the process at once, cutting
 * the connection.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { collect, connect, isListening, startEchoServer, startProxy, waitFor } from './helpers.js';
import { adminAddress, adminRequest, scrape } from './admin-client.js';
import { total } from './prom-parse.js';

const INJECTOR = fileURLToPath(new URL('./fault-injector.js', import.meta.url));

async function proxyWithInjector(t: Parameters<typeof startEchoServer>[0], kind: 'exception' | 'rejection') {
  const echo = await startEchoServer(t);
  const running = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${echo.port},mode=opaque`, '--admin', '127.0.0.1:0', '--drain-timeout', '20s'], {
    t,
    env: { NODE_OPTIONS: `--import=${INJECTOR}`, FAULT_KIND: kind },
  });
  const admin = await adminAddress(running.proc);
  // A connection in flight when the error happens.
  const socket = await connect(running.ports[0]!);
  const echoed = collect(socket);
  socket.write('before ');
  await waitFor(() => socket.bytesRead === 7, 'the first echo');
  running.proc.signal('SIGUSR2');
  await waitFor(() => running.proc.stderr.includes(`FAULT INJECTED ${kind}`), 'the fault to be injected');
  return { ...running, admin, socket, echoed };
}

describe('errors nobody caught', () => {
  test('an unhandled rejection is logged and counted; the proxy keeps serving', async (t) => {
    const { proc, admin, socket, echoed, ports } = await proxyWithInjector(t, 'rejection');
    const line = await proc.waitForLog((l) => l.msg === 'unhandled rejection', '"unhandled rejection"');
    assert.equal(line.level, 'error');
    assert.equal(line['action'], 'keep serving');
    assert.match(JSON.stringify(line['err']), /injected rejection/);
    assert.equal((await adminRequest(admin, '/ready')).status, 200);
    assert.equal(total(await scrape(admin), 'meshpipe_uncaught_errors_total', { kind: 'rejection' }), 1);
    // The open connection and a new one both work.
    const again = await connect(ports[0]!);
    const echoedAgain = collect(again);
    again.end('new');
    assert.equal((await echoedAgain).bytes, 3);
    socket.end('after');
    assert.equal((await echoed).bytes, 12);
    assert.ok(proc.running);
    proc.signal('SIGTERM');
    assert.equal((await proc.exited).code, 0);
  });

  test('an uncaught exception drains: /ready 503, no new connections, the open one finishes, exit 1', async (t) => {
    const { proc, admin, socket, echoed, ports } = await proxyWithInjector(t, 'exception');
    const line = await proc.waitForLog((l) => l.msg === 'uncaught exception', '"uncaught exception"');
    assert.equal(line.level, 'fatal');
    assert.equal(line['action'], 'drain');
    const requested = await proc.waitForLog((l) => l.msg === 'shutdown requested', '"shutdown requested"');
    assert.equal(requested['reason'], 'uncaught exception');
    await proc.waitForLog((l) => l.msg === 'drain started', '"drain started"');
    assert.equal((await adminRequest(admin, '/ready')).status, 503);
    assert.equal(total(await scrape(admin), 'meshpipe_uncaught_errors_total', { kind: 'exception' }), 1);
    assert.equal(await isListening(ports[0]!), false, 'the listener stopped accepting');
    // The connection that was open is carried to its end.
    socket.end('after');
    assert.equal((await echoed).bytes, 12);
    const exit = await proc.exited;
    assert.equal(exit.code, 1, proc.stderr);
    const finished = proc.logs.find((l) => l.msg === 'drain finished');
    assert.equal(finished?.['drained'], 1);
    assert.equal(finished?.['cut'], 0);
  });
});
