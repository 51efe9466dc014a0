/**
 * Draining on SIGTERM through the real CLI: several 16 MiB echo transfers in
 * flight when the signal arrives all complete with SHA-256 equal (no
 * in-flight transfer fails), new connections are refused once the drain
 * started, and the process exits 0 reporting every connection drained; and
 * the deadline: a half-closed connection that would never finish is cut at
 * --drain-timeout, so it cannot hold the process.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { collect, connect, isListening, MiB, startEchoServer, startServer, startProxy, waitFor, withTimeout, writeRandom } from './helpers.js';

describe('drain on SIGTERM', () => {
  test('4 x 16 MiB transfers in flight during SIGTERM all complete with SHA-256 equal', async (t) => {
    const echo = await startEchoServer(t);
    const { proc, ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${echo.port},mode=opaque`, '--drain-timeout', '60s'], { t });
    const port = ports[0]!;
    const transfers = await Promise.all(
      [0, 1, 2, 3].map(async () => {
        const socket = await connect(port);
        const received = collect(socket);
        // Paced writes (256 KiB every 20 ms, ~1.3 s per transfer) keep all four in flight at the signal.
        const sent = writeRandom(socket, 16 * MiB, { delayMs: 20 }).then((sha) => {
          socket.end();
          return sha;
        });
        return { socket, received, sent };
      }),
    );
    await waitFor(() => transfers.every((x) => x.socket.bytesRead >= MiB), 'every transfer to have echoed 1 MiB', 20_000);
    proc.signal('SIGTERM');
    await proc.waitForLog((l) => l.msg === 'drain started', '"drain started"');
    assert.ok(transfers.every((x) => x.socket.bytesRead < 16 * MiB), 'the transfers were still in flight at the signal');
    assert.equal(await isListening(port), false, 'no new connections during the drain');

    const results = await withTimeout(Promise.all(transfers.map(async (x) => ({ sent: await x.sent, got: await x.received }))), 60_000, 'the transfers');
    for (const [i, r] of results.entries()) {
      assert.equal(r.got.bytes, 16 * MiB, `transfer ${i} bytes`);
      assert.equal(r.got.sha256, r.sent, `transfer ${i} SHA-256`);
      assert.equal(r.got.ended, true, `transfer ${i} ended cleanly`);
      assert.equal(r.got.error, undefined, `transfer ${i} error`);
    }
    const exit = await withTimeout(proc.exited, 10_000, 'meshpipe to exit');
    assert.equal(exit.code, 0, proc.stderr);
    const finished = proc.logs.find((l) => l.msg === 'drain finished');
    assert.equal(finished?.['drained'], 4);
    assert.equal(finished?.['cut'], 0);
  });

  test('a half-closed connection is cut at --drain-timeout and cannot hold the process', async (t) => {
    // The server never ends its side: without the deadline this connection would stay open forever.
    const server = await startServer(({ socket }) => socket.on('error', () => undefined), t);
    const { proc, ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${server.port},mode=opaque`, '--drain-timeout', '700ms'], { t });
    const socket = await connect(ports[0]!);
    const got = collect(socket);
    socket.end('half-closed by the client');
    await waitFor(() => server.accepted[0] !== undefined, 'the server to accept');
    const fromClient = await withTimeout(server.accepted[0]!.received, 5000, 'the client FIN to reach the server');
    assert.equal(fromClient.bytes, 'half-closed by the client'.length);
    assert.equal(fromClient.ended, true);

    const signalledAt = Date.now();
    proc.signal('SIGTERM');
    const exit = await withTimeout(proc.exited, 10_000, 'meshpipe to exit after the deadline');
    const elapsed = (proc.exitedAt ?? Date.now()) - signalledAt;
    assert.equal(exit.code, 0);
    assert.ok(elapsed >= 600, `exited after ${elapsed} ms: before the deadline`);
    assert.ok(elapsed < 5000, `exited after ${elapsed} ms: the deadline did not hold`);
    const finished = proc.logs.find((l) => l.msg === 'drain finished');
    assert.equal(finished?.['cut'], 1);
    await withTimeout(got, 5000, 'the client to see its connection closed');
  });
});
