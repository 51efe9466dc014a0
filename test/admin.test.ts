/**
 * The admin server and the shutdown sequence: /ready transitions (503 while
 * starting, 200 when running, 503 at once on shutdown and during the drain),
 * /live, /connections, /policy with rule sources and learned server-first
 * targets, 404/405/400 handling, POST /shutdown from loopback (accepted),
 * disabled (404) and from a non-loopback peer in a network namespace (403),
 * the debug endpoints loopback-only unless --admin-expose-debug,
 * and an admin address in use failing start-up with nothing left bound.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { collect, connect, HOST, isListening, runCli, startEchoServer, startProxy, startSourceServer, waitFor, CLI, sleep } from './helpers.js';
import { adminAddress, adminRequest, scrape } from './admin-client.js';
import { total } from './prom-parse.js';
import { createPodPair, requireNetns } from './netns.js';
import { loadConfig, objectLayer } from '../ts/config/config.js';
import { Sidecar } from '../ts/sidecar/lifecycle.js';
import { createLogger } from '../ts/observe/logger.js';

describe('readiness and the shutdown sequence (in process)', () => {
  test('/ready: 503 starting -> 200 ready -> 503 draining at once; the drain lets a live connection finish', async (t) => {
    const echo = await startEchoServer(t);
    const config = loadConfig({
      env: {},
      flags: objectLayer({ forward: [`127.0.0.1:0=127.0.0.1:${echo.port},mode=opaque`], admin: '127.0.0.1:0', drainTimeout: '10s', logLevel: 'silent' }, 'test'),
    });
    const sidecar = new Sidecar(config, createLogger('silent'));
    t.after(() => sidecar.drain());
    await sidecar.startAdmin();
    const admin = sidecar.admin!.address;
    assert.deepEqual(await statusOf(admin, '/ready'), [503, 'not ready: starting\n']);
    assert.deepEqual(await statusOf(admin, '/live'), [200, 'live\n']);

    const [bound] = await sidecar.start();
    assert.deepEqual(await statusOf(admin, '/ready'), [200, 'ready\n']);

    // A connection in flight when shutdown starts.
    const socket = await connect(Number(bound!.bind.split(':')[1]));
    const echoed = collect(socket);
    socket.write('before ');
    await waitFor(() => sidecar.proxy.connections(10).some((c) => c.state === 'forwarding'), 'the connection to forward');

    sidecar.requestShutdown('test');
    assert.deepEqual(await statusOf(admin, '/ready'), [503, 'not ready: draining\n']);
    const drained = sidecar.drain();
    await sleep(200);
    // Still draining: the admin server answers, readiness stays 503, the old connection still flows.
    assert.equal(sidecar.state, 'draining');
    assert.deepEqual(await statusOf(admin, '/ready'), [503, 'not ready: draining\n']);
    socket.end('after');
    assert.equal((await echoed).bytes, 'before after'.length);
    const summary = await drained;
    assert.deepEqual(summary, { drained: 1, cut: 0 });
    // The admin server is closed afterwards: nothing keeps the process alive.
    assert.equal(await isListening(Number(admin.split(':')[1])), false);
  });
});

async function statusOf(admin: string, path: string, method = 'GET'): Promise<[number, string]> {
  const r = await adminRequest(admin, path, method);
  return [r.status, r.body];
}

describe('admin endpoints (real CLI)', () => {
  test('404, 405 with Allow, /connections bounded, /policy with sources', async (t) => {
    const echo = await startEchoServer(t);
    const { proc, ports } = await startProxy(
      ['--forward', `127.0.0.1:0=127.0.0.1:${echo.port},mode=opaque`, '--admin', '127.0.0.1:0', '--opaque-ports', '7000-7010'],
      { t },
    );
    const admin = await adminAddress(proc);
    assert.equal((await adminRequest(admin, '/nope')).status, 404);
    const wrong = await adminRequest(admin, '/metrics', 'POST');
    assert.equal(wrong.status, 405);
    assert.equal(wrong.headers.get('allow'), 'GET, HEAD');
    assert.equal((await adminRequest(admin, '/shutdown')).status, 405);
    assert.equal((await adminRequest(admin, '/connections?limit=abc')).status, 400);
    assert.match((await adminRequest(admin, '/connections?limit=0')).body, /expected a whole number from 1 to 1000/);

    const sockets = await Promise.all([1, 2, 3].map(() => connect(ports[0]!)));
    for (const s of sockets) s.write('x');
    const list = await waitFor(async () => {
      const body = JSON.parse((await adminRequest(admin, '/connections?limit=5000')).body) as { limit: number; count: number; connections: Record<string, unknown>[] };
      return body.count === 3 ? body : undefined;
    }, 'three live connections');
    assert.equal(list.limit, 1000, 'limit is capped at 1000');
    const c = list.connections[0]!;
    for (const key of ['peer', 'target', 'protocol', 'tls', 'bytesIn', 'bytesOut', 'ageMs', 'state']) assert.ok(key in c, key);
    assert.equal(c['target'], `127.0.0.1:${echo.port}`);
    assert.equal(c['protocol'], 'opaque');
    const two = JSON.parse((await adminRequest(admin, '/connections?limit=2')).body) as { count: number };
    assert.equal(two.count, 2);
    for (const s of sockets) s.destroy();

    const policy = JSON.parse((await adminRequest(admin, '/policy')).body) as { rules: { ports: string; source: string; mode: string }[]; serverFirst: { targets: unknown[] } };
    // Port ranges as written (`7000-7010`), not the engine's [7000, 7010].
    assert.ok(policy.rules.some((r) => r.ports === '7000-7010' && r.source === 'opaque: --opaque-ports flag' && r.mode === 'opaque'), JSON.stringify(policy.rules));
    assert.ok(policy.rules.every((r) => typeof r.ports === 'string' && /^\d+(-\d+)?$/.test(r.ports)), JSON.stringify(policy.rules));
    assert.ok(policy.rules.some((r) => r.ports === '3306' && r.source.startsWith('opaque: default opaque ports (')));
    assert.deepEqual(policy.serverFirst.targets, []);
  });

  test('a learned server-first target: hint logged once, shown in /policy and the gauge', async (t) => {
    const banner = await startSourceServer(64, t); // speaks first, like SMTP or MySQL
    const { proc, ports } = await startProxy(
      ['--forward', `127.0.0.1:0=127.0.0.1:${banner.port}`, '--admin', '127.0.0.1:0', '--server-first-grace', '50ms'],
      { t },
    );
    const admin = await adminAddress(proc);
    const socket = await connect(ports[0]!);
    const got = collect(socket);
    await waitFor(() => socket.bytesRead >= 64, 'the banner through the proxy');
    socket.end();
    assert.equal((await got).bytes, 64);
    const line = await proc.waitForLog((l) => l.msg === 'server-first target learned', 'server-first log line', 5000);
    assert.equal(line['target'], `127.0.0.1:${banner.port}`);
    assert.match(String(line['hint']), new RegExp(`config\\.linkerd\\.io/opaque-ports: "${banner.port}"`));
    const policy = JSON.parse((await adminRequest(admin, '/policy')).body) as { serverFirst: { targets: { addr: string }[] } };
    assert.deepEqual(policy.serverFirst.targets.map((x) => x.addr), [`127.0.0.1:${banner.port}`]);
    const f = await scrape(admin);
    assert.equal(total(f, 'meshpipe_server_first_targets'), 1);
    assert.equal(total(f, 'outbound_tcp_detect_http_results_total', { result: 'server_first' }), 1);
  });

  test('POST /shutdown from loopback: 202, /ready 503 during the drain, exit 0 after the live connection ends', async (t) => {
    const echo = await startEchoServer(t);
    const { proc, ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${echo.port},mode=opaque`, '--admin', '127.0.0.1:0', '--drain-timeout', '20s'], { t });
    const admin = await adminAddress(proc);
    assert.deepEqual(await statusOf(admin, '/ready'), [200, 'ready\n']);
    const socket = await connect(ports[0]!);
    const echoed = collect(socket);
    socket.write('hello ');
    await waitFor(() => socket.bytesRead === 6, 'first echo');
    assert.deepEqual(await statusOf(admin, '/shutdown', 'POST'), [202, 'shutdown started\n']);
    await proc.waitForLog((l) => l.msg === 'drain started', '"drain started"');
    assert.deepEqual(await statusOf(admin, '/ready'), [503, 'not ready: draining\n']);
    assert.equal(await isListening(ports[0]!), false, 'the listener stopped accepting');
    socket.end('world');
    assert.equal((await echoed).bytes, 11);
    const exit = await proc.exited;
    assert.equal(exit.code, 0);
    const finished = proc.logs.find((l) => l.msg === 'drain finished');
    assert.equal(finished?.['drained'], 1);
    assert.equal(finished?.['cut'], 0);
  });

  test('--no-admin-shutdown: POST /shutdown is 404 and the proxy keeps running', async (t) => {
    const { proc } = await startProxy(['--forward', '127.0.0.1:0=127.0.0.1:1', '--admin', '127.0.0.1:0', '--no-admin-shutdown'], { t });
    const admin = await adminAddress(proc);
    const r = await adminRequest(admin, '/shutdown', 'POST');
    assert.equal(r.status, 404);
    assert.match(r.body, /disabled/);
    await sleep(200);
    assert.ok(proc.running);
    assert.deepEqual(await statusOf(admin, '/ready'), [200, 'ready\n']);
  });

  test('an admin address in use: exit 1 naming it, no listener left bound', async (t) => {
    const blocker = net.createServer().listen(0, HOST);
    await once(blocker, 'listening');
    t.after(() => blocker.close());
    const taken = `${HOST}:${(blocker.address() as net.AddressInfo).port}`;
    const free = net.createServer().listen(0, HOST);
    await once(free, 'listening');
    const port = (free.address() as net.AddressInfo).port;
    free.close();
    const r = await runCli(['proxy', '--forward', `127.0.0.1:${port}=127.0.0.1:1`, '--admin', taken]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`admin server to ${taken.replace(/\./g, '\\.')}.*already in use.*ERR_ADDR_IN_USE`));
    assert.equal(await isListening(port), false);
  });
});

describe('shutdown options', () => {
  test('adminShutdown and inboundStopDelay: flags, env, file values and errors naming the key', () => {
    const flags = (o: Record<string, unknown>) => loadConfig({ env: {}, flags: objectLayer(o, 'test') });
    assert.equal(flags({}).adminShutdown, true);
    assert.equal(flags({}).inboundStopDelayMs, 0);
    assert.equal(loadConfig({ env: { MESHPIPE_ADMIN_SHUTDOWN: 'false', MESHPIPE_INBOUND_STOP_DELAY: '2s' } }).adminShutdown, false);
    assert.equal(loadConfig({ env: { MESHPIPE_INBOUND_STOP_DELAY: '2s' } }).inboundStopDelayMs, 2000);
    assert.throws(() => loadConfig({ env: { MESHPIPE_ADMIN_SHUTDOWN: 'maybe' } }), /invalid adminShutdown "maybe" \(from MESHPIPE_ADMIN_SHUTDOWN\): expected true or false/);
    assert.throws(() => flags({ inboundStopDelay: 'soon' }), /invalid inboundStopDelay "soon".*expected a duration/);
  });

  test('--no-admin-shutdown and --inbound-stop-delay on the command line', async () => {
    const { parseProxyArgv } = await import('../ts/cli/args.js');
    const { config } = parseProxyArgv(['--forward', '127.0.0.1:0=127.0.0.1:1,direction=inbound', '--no-admin-shutdown', '--inbound-stop-delay', '1500ms'], { env: {} });
    assert.equal(config.adminShutdown, false);
    assert.equal(config.inboundStopDelayMs, 1500);
    assert.equal(config.sources.adminShutdown, '--no-admin-shutdown');
  });

  test('--inbound-stop-delay: inbound keeps accepting for the delay after /ready turned 503, then stops', async (t) => {
    const echo = await startEchoServer(t);
    const { proc, ports } = await startProxy([
      '--forward', `127.0.0.1:0=127.0.0.1:${echo.port},mode=opaque,direction=inbound`,
      '--admin', '127.0.0.1:0', '--inbound-stop-delay', '1500ms',
    ], { t });
    const admin = await adminAddress(proc);
    proc.signal('SIGTERM');
    await proc.waitForLog((l) => l.msg === 'shutdown requested', '"shutdown requested"');
    assert.deepEqual(await statusOf(admin, '/ready'), [503, 'not ready: draining\n']);
    // Inside the delay: a new inbound connection is still proxied.
    const s = await connect(ports[0]!);
    const got = collect(s);
    s.end('still served');
    assert.equal((await got).bytes, 'still served'.length);
    const stopped = await proc.waitForLog((l) => l.msg === 'inbound listeners stopped accepting', 'inbound stop', 5000);
    const requested = proc.logs.find((l) => l.msg === 'shutdown requested')!;
    const delay = Date.parse(String(stopped['time'])) - Date.parse(String(requested['time']));
    assert.ok(delay >= 1400 && delay < 4000, `inbound stopped ${delay} ms after the shutdown request`);
    assert.equal((await proc.exited).code, 0);
  });
});

describe('POST /shutdown from a non-loopback peer (network namespace)', () => {
  test('403 from the other pod, 202 from loopback in the proxy pod', async (t) => {
    if (!(await requireNetns(t))) return;
    const pods = await createPodPair();
    t.after(() => pods.cleanup());
    const proxy = pods.server.spawn(process.execPath, [CLI, 'proxy', '--forward', '127.0.0.1:0=127.0.0.1:1', '--admin', '0.0.0.0:4191'], {
      env: { ...process.env, MESHPIPE_LOG_LEVEL: 'info' },
    });
    await proxy.waitFor(/"msg":"proxy ready"/, 10_000);
    const url = `http://${pods.server.addr4}:4191`;
    const remote = await pods.client.exec('curl', ['-sS', '-X', 'POST', '-H', 'meshpipe-admin: 1', '-w', ' %{http_code}', `${url}/shutdown`]);
    assert.match(remote.stdout, /only to loopback peers; 10\.250\.\d+\.1 is not\n 403$/, remote.stdout + remote.stderr);
    // Probes and scrapes stay open to other pods (the kubelet and Prometheus come from elsewhere) ...
    for (const path of ['/ready', '/live', '/metrics']) {
      const r = await pods.client.exec('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', `${url}${path}`]);
      assert.equal(r.stdout, '200', path);
    }
    // ... the endpoints that show peers, SNI and policy do not.
    for (const path of ['/connections', '/snapshot', '/policy']) {
      const r = await pods.client.exec('curl', ['-sS', '-w', ' %{http_code}', `${url}${path}`]);
      assert.match(r.stdout, /only to loopback peers; 10\.250\.\d+\.1 is not \(start the proxy with --admin-expose-debug to serve it to any peer\)\n 403$/, `${path}: ${r.stdout}`);
      const local = await pods.server.exec('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', `http://127.0.0.1:4191${path}`]);
      assert.equal(local.stdout, '200', `${path} from loopback`);
    }
    await sleep(100);
    assert.doesNotMatch(proxy.output(), /"msg":"shutdown requested"/);
    const local = await pods.server.exec('curl', ['-sS', '-X', 'POST', '-H', 'meshpipe-admin: 1', '-w', ' %{http_code}', 'http://127.0.0.1:4191/shutdown']);
    assert.match(local.stdout, / 202$/);
    await proxy.waitFor(/"msg":"drain finished"/, 10_000);
    await waitFor(() => proxy.child.exitCode !== null, 'the proxy to exit', 5000);
    assert.equal(proxy.child.exitCode, 0);
  });
});

describe('--admin-expose-debug (network namespace)', () => {
  test('/connections, /snapshot and /policy are served to other pods; /shutdown still is not', async (t) => {
    if (!(await requireNetns(t))) return;
    const pods = await createPodPair();
    t.after(() => pods.cleanup());
    const proxy = pods.server.spawn(process.execPath, [CLI, 'proxy', '--forward', '127.0.0.1:0=127.0.0.1:1', '--admin', '0.0.0.0:4191', '--admin-expose-debug'], {
      env: { ...process.env, MESHPIPE_LOG_LEVEL: 'info' },
    });
    await proxy.waitFor(/"msg":"proxy ready"/, 10_000);
    const url = `http://${pods.server.addr4}:4191`;
    for (const path of ['/connections', '/snapshot', '/policy']) {
      const r = await pods.client.exec('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', `${url}${path}`]);
      assert.equal(r.stdout, '200', path);
    }
    const remote = await pods.client.exec('curl', ['-sS', '-X', 'POST', '-H', 'meshpipe-admin: 1', '-w', ' %{http_code}', `${url}/shutdown`]);
    assert.match(remote.stdout, / 403$/);
    assert.equal(await proxy.stop(5000), 0);
  });
});
