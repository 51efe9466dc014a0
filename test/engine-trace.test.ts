/**
 * The engine's per-connection traces: with `--log-level debug` every stage of
 * a connection (accepted, policy, detected, connected, closed) is a JSON line
 * on the same stream as the rest of the logs, tagged with the connection's
 * id and target; at the default level there are none; `--engine-log` with a
 * span-field directive traces only the connections to one target, and
 * PUT /log-filter changes that at run time.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { collect, connect, runCli, sha256, startEchoServer, startProxy, waitFor, type LogLine } from './helpers.js';
import { adminAddress } from './admin-client.js';

const STAGES = ['accepted', 'policy', 'detected', 'connected', 'closed'];

function engineLines(logs: readonly LogLine[]): LogLine[] {
  return logs.filter((l) => l['component'] === 'engine');
}

/** One round trip through the proxy on `port`; resolves when the echo came back and the socket closed. */
async function roundTrip(port: number): Promise<void> {
  const socket = await connect(port);
  const got = collect(socket);
  socket.end('hello engine\n');
  const received = await got;
  assert.equal(received.sha256, sha256('hello engine\n'));
  socket.destroy();
}

describe('engine traces', () => {
  test('--log-level debug: every stage of a connection, one JSON line each, with its id and target', async (t) => {
    const echo = await startEchoServer(t);
    const { proc, ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${echo.port}`, '--admin', 'off', '--log-level', 'debug'], { t });
    await roundTrip(ports[0]!);
    const lines = await waitFor(() => {
      const l = engineLines(proc.logs);
      return l.some((x) => x.msg === 'closed') ? l : undefined;
    }, 'the engine to log the close');
    const ids = new Set(lines.map((l) => l['id']));
    assert.equal(ids.size, 1, `one connection, one id: ${JSON.stringify(lines)}`);
    assert.deepEqual(lines.map((l) => l.msg), STAGES, JSON.stringify(lines));
    for (const l of lines) {
      assert.equal(l.level, 'debug');
      assert.equal(l['name'], 'meshpipe');
      assert.equal(typeof l['time'], 'string');
      assert.equal(l['pid'], proc.pid);
      assert.equal(l['listener'], `forward:127.0.0.1:0`);
    }
    // The target is recorded once known (from the policy stage on).
    assert.equal(lines.find((l) => l.msg === 'connected')!['target'], `127.0.0.1:${echo.port}`);
    const detected = lines.find((l) => l.msg === 'detected')!;
    assert.equal(detected['result'], 'not_http');
    const closed = lines.find((l) => l.msg === 'closed')!;
    assert.equal(closed['client_to_server'], 13);
    assert.equal(closed['server_to_client'], 13);
  });

  test('the default level writes no engine lines', async (t) => {
    const echo = await startEchoServer(t);
    const { proc, ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${echo.port}`, '--admin', 'off'], { t });
    await roundTrip(ports[0]!);
    await roundTrip(ports[0]!);
    assert.deepEqual(engineLines(proc.logs), []);
  });

  test('--engine-log traces one target only; PUT /log-filter switches to another at run time', async (t) => {
    const a = await startEchoServer(t);
    const b = await startEchoServer(t);
    const only = (port: number) => `warn,meshpipe_core[conn{target=127.0.0.1:${port}}]=debug`;
    const { proc, ports } = await startProxy(
      ['--forward', `127.0.0.1:0=127.0.0.1:${a.port}`, '--forward', `127.0.0.1:0=127.0.0.1:${b.port}`, '--admin', '127.0.0.1:0', '--engine-log', only(a.port)],
      { t },
    );
    const admin = await adminAddress(proc);
    await roundTrip(ports[1]!);
    await roundTrip(ports[0]!);
    await waitFor(() => engineLines(proc.logs).some((l) => l.msg === 'closed'), 'the traced connection to close');
    const traced = engineLines(proc.logs);
    assert.ok(traced.length > 0);
    // Events before the target is known (accepted) carry no target; every later one names A.
    for (const l of traced.filter((x) => x['target'] !== undefined)) assert.equal(l['target'], `127.0.0.1:${a.port}`);
    assert.ok(!traced.some((l) => l['target'] === `127.0.0.1:${b.port}`), 'B is not traced');

    const res = await fetch(`http://${admin}/log-filter`, { method: 'PUT', headers: { 'meshpipe-admin': '1' }, body: only(b.port) });
    assert.equal(res.status, 200, await res.text());
    const before = proc.logs.length;
    await roundTrip(ports[0]!);
    await roundTrip(ports[1]!);
    await waitFor(() => engineLines(proc.logs.slice(before)).some((l) => l.msg === 'closed'), 'the newly traced connection to close');
    const after = engineLines(proc.logs.slice(before)).filter((l) => l['target'] !== undefined);
    assert.ok(after.length > 0 && after.every((l) => l['target'] === `127.0.0.1:${b.port}`), JSON.stringify(after));

    const bad = await fetch(`http://${admin}/log-filter`, { method: 'PUT', headers: { 'meshpipe-admin': '1' }, body: 'meshpipe_core=loud' });
    assert.equal(bad.status, 400);
    assert.match(await bad.text(), /invalid engine log filter "meshpipe_core=loud".*expected/);
  });

  test('a bad --engine-log exits 2 naming the filter and what is expected', async () => {
    const r = await runCli(['proxy', '--forward', '127.0.0.1:0=127.0.0.1:9', '--admin', 'off', '--engine-log', 'meshpipe_core=loud']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /meshpipe_core=loud/);
    assert.match(r.stderr, /expected RUST_LOG-style directives/);
  });
});
