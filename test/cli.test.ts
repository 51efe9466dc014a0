/**
 * Integration tests of the `meshpipe` command itself, run as a real child
 * process: version and help output, usage errors (exit 2), invalid config
 * (exit 2, key named, nothing listens), address in use (exit 1, address
 * named), and the lifecycle: SIGTERM/SIGINT drain (a transfer in flight
 * finishes, exit 0), the drain deadline (a connection still open is cut and
 * the process exits promptly), and the forced exit on a second signal.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROXY_OPTIONS } from '../ts/cli/args.js';
import {
  closed,
  collect,
  connect,
  freePort,
  HOST,
  isListening,
  MiB,
  ROOT,
  runCli,
  sleep,
  startEchoServer,
  startProxy,
  startServer,
  waitFor,
  withTimeout,
  writeRandom,
} from './helpers.js';

const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

test('--version prints the package version', async () => {
  for (const flag of ['--version', '-V']) {
    const r = await runCli([flag]);
    assert.equal(r.code, 0);
    assert.equal(r.stdout, `${version}\n`);
  }
});

test('--help lists the subcommands; proxy --help lists every option with its default', async () => {
  const main = await runCli(['--help']);
  assert.equal(main.code, 0);
  for (const cmd of ['proxy', 'run', 'init', 'explain']) assert.match(main.stdout, new RegExp(`^  ${cmd}\\s`, 'm'), `help lacks ${cmd}`);
  const proxy = await runCli(['proxy', '--help']);
  assert.equal(proxy.code, 0, proxy.stderr);
  for (const o of PROXY_OPTIONS) assert.ok(proxy.stdout.includes(`--${o.flag}`), `proxy --help lacks --${o.flag}`);
  for (const d of ['default: 30s', 'default: 0', 'default: info', 'default: 10s', 'default: 100ms', 'default: 25,587,3306,4444,5432,6379,9300,11211', 'default: 127.0.0.1:4191',
    'default: 1h', 'default: 128', 'default: 1024', 'default: the value of maxConnections', "Envoy's tcp_proxy", 'default: 10m']) {
    assert.ok(proxy.stdout.includes(d), `proxy --help lacks "${d}"`);
  }
  // --help wins over an otherwise invalid command line: it never binds.
  const invalid = await runCli(['proxy', '--drain-timeout', 'abc', '--help']);
  assert.equal(invalid.code, 0);
});

test('usage errors exit 2 with a clear message', async () => {
  const cases: Array<[string[], RegExp]> = [
    [[], /Usage: meshpipe <command>/],
    [['frobnicate'], /unknown command "frobnicate": expected one of proxy, run, init, explain/],
    [['--frobnicate'], /unknown option --frobnicate/],
    [['proxy', '--forwrd', '127.0.0.1:0=127.0.0.1:1'], /unknown option --forwrd for meshpipe proxy/],
    [['proxy', '--forward'], /option --forward needs a value/],
    [['proxy', 'extra'], /unexpected argument "extra"/],
    [['proxy', '--forward', '127.0.0.1:0=127.0.0.1:1', '--', 'sleep', '1'], /unexpected arguments after --: sleep 1/],
    [['proxy', '--inbound', 'off', '--outbound', 'off'], /no listeners configured: expected --forward BIND=TARGET, or the sidecar layout/],
  ];
  for (const [args, pattern] of cases) {
    const r = await runCli(args);
    assert.equal(r.code, 2, `meshpipe ${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, pattern);
    assert.doesNotMatch(r.stderr, /internal error|at .*\.js:\d+/, 'no stack traces for usage errors');
  }
});

test('a subcommand whose module is missing is reported as not available (exit 2)', async () => {
  // A copy of the CLI with nothing beside it but its own dependencies.
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-cli-'));
  mkdirSync(join(dir, 'dist/ts/cli'), { recursive: true });
  mkdirSync(join(dir, 'dist/ts/sidecar'), { recursive: true });
  for (const f of ['cli/main.js', 'cli/version.js', 'cli/report.js', 'errors.js', 'sidecar/guard.js']) copyFileSync(join(ROOT, 'dist/ts', f), join(dir, 'dist/ts', f));
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module', version: '9.9.9' }));
  const script = join(dir, 'dist/ts/cli/main.js');
  const r = await runCli(['explain', '--port', '80'], { script });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /command "explain" is not available in this build \(.*cli\/explain\.js is missing\)/);
  assert.equal((await runCli(['--version'], { script })).stdout, '9.9.9\n', 'the version comes from the package.json three levels up');
});

test('an invalid config exits 2 naming the key, the value and the source, and nothing listens', async () => {
  const port = await freePort();
  const forward = `${HOST}:${port}=${HOST}:1`;
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-cfg-'));
  const typo = join(dir, 'typo.yaml');
  writeFileSync(typo, `forward: ["${forward}"]\ndrainTimout: 5s\n`);
  const cases: Array<{ args: string[]; env?: NodeJS.ProcessEnv; expect: string[] }> = [
    { args: ['--forward', forward, '--drain-timeout', 'abc'], expect: ['invalid drainTimeout "abc" (from --drain-timeout): expected a duration', '(ERR_INVALID_CONFIG)'] },
    { args: ['--forward', forward, '--opaque-ports', '7000-6000'], expect: ['invalid opaquePorts "7000-6000"', '6000 is lower than 7000'] },
    { args: ['--forward', `${forward},mode=http3`], expect: ['invalid forward', 'mode "http3"'] },
    { args: ['--forward', forward], env: { MESHPIPE_MAX_CONNECTIONS: 'lots' }, expect: ['invalid maxConnections "lots" (from MESHPIPE_MAX_CONNECTIONS)'] },
    { args: ['--config', typo], expect: ['unknown key "drainTimout"', typo, 'did you mean "drainTimeout"'] },
  ];
  for (const c of cases) {
    const r = await runCli(['proxy', ...c.args], c.env ? { env: c.env } : {});
    assert.equal(r.code, 2, `${c.args.join(' ')}: ${r.stderr}`);
    for (const fragment of c.expect) assert.ok(r.stderr.includes(fragment), `stderr ${JSON.stringify(r.stderr)} lacks ${JSON.stringify(fragment)}`);
    assert.doesNotMatch(r.stdout, /listener bound/);
    assert.equal(await isListening(port), false, `nothing may listen on ${port} after an invalid config`);
  }
});

test('an address already in use exits 1 naming the address and how to find who holds it', async (t) => {
  const holder = await startServer(undefined, t);
  const r = await runCli(['proxy', '--forward', `${HOST}:0=${HOST}:1`, '--forward', `${HOST}:${holder.port}=${HOST}:1`]);
  assert.equal(r.code, 1, r.stderr);
  assert.ok(r.stderr.includes(`${HOST}:${holder.port}`), `stderr names the address: ${r.stderr}`);
  assert.match(r.stderr, new RegExp(`another process listens there \\(\`ss -ltnp 'sport = :${holder.port}'\` shows which\\); stop it, or choose another address .*\\(ERR_ADDR_IN_USE\\)\\n$`));
});

test('logs are JSON lines: one "listener bound" per listener with the bound port, then "proxy ready"', async (t) => {
  const echo = await startEchoServer(t);
  const { proc, bound, ports } = await startProxy(
    ['--forward', `${HOST}:0=${HOST}:${echo.port}`, '--forward', `localhost:0=${HOST}:${echo.port},mode=opaque,direction=inbound`],
    { t },
  );
  assert.equal(bound.length, 2);
  assert.equal(bound[0]?.listener, `forward:${HOST}:0`);
  assert.equal(bound[1]?.listener, `forward:${HOST}:0#2`);
  assert.equal(bound[1]?.mode, 'opaque');
  assert.equal(bound[1]?.direction, 'inbound');
  assert.equal(bound[0]?.target, `${HOST}:${echo.port}`);
  for (const port of ports) assert.ok(port > 0 && port < 65536 && bound.some((b) => b.address === `${HOST}:${port}`));
  assert.notEqual(ports[0], ports[1]);
  for (const line of proc.logs) assert.equal(typeof line.time, 'string');
  proc.signal('SIGTERM');
  assert.equal((await withTimeout(proc.exited, 5000, 'exit')).code, 0);
});

test('SIGTERM during a transfer: the transfer finishes within the drain deadline, new connections are refused, exit 0', async (t) => {
  const sink = await startServer(({ socket, received }) => {
    // Reply with the digest of what arrived once the client is done (`received` never rejects).
    void received.then((r) => socket.end(`${r.bytes} ${r.sha256}`));
  }, t);
  const { proc, ports } = await startProxy(['--forward', `${HOST}:0=${HOST}:${sink.port}`, '--drain-timeout', '20s'], { t });
  const client = await connect(ports[0]!);
  const reply = collectText(client);
  // ~3 s of paced sending; SIGTERM arrives after ~0.5 s, in the middle.
  const sending = writeRandom(client, 24 * MiB, { chunk: MiB, delayMs: 120 });
  await sleep(500);
  proc.signal('SIGTERM');
  await proc.waitForLog((l) => l.msg === 'drain started', '"drain started"');
  // The listening socket closes as the drain begins: new connections are refused.
  await waitFor(async () => !(await isListening(ports[0]!)), 'the listener to refuse new connections', 3000);
  const digest = await sending;
  client.end();
  assert.equal(await withTimeout(reply, 10_000, 'digest reply'), `${24 * MiB} ${digest}`);
  const exit = await withTimeout(proc.exited, 10_000, 'exit after the drain');
  assert.deepEqual(exit, { code: 0, signal: null });
  const finished = proc.logs.find((l) => l.msg === 'drain finished');
  assert.ok(finished, 'logs "drain finished"');
  assert.equal(finished.cut, 0, 'nothing was cut');
});

test('a connection still open at the drain deadline is cut and the process exits 0 promptly', async (t) => {
  const echo = await startEchoServer(t);
  // mode=opaque: the lifecycle must not depend on how fast detection decides.
  const { proc, ports } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port},mode=opaque`, '--drain-timeout', '1s'], { t });
  const client = await connect(ports[0]!);
  client.write('hello');
  const echoed = await withTimeout(once(client, 'data'), 5000, 'echo');
  assert.equal(String(echoed[0]), 'hello');
  const upstream = await echo.connection(1);
  const clientClosed = closed(client);
  const upstreamClosed = collect(upstream.socket);
  const signalledAt = Date.now();
  proc.signal('SIGTERM');
  const exit = await withTimeout(proc.exited, 5000, 'exit at the drain deadline');
  const elapsed = Date.now() - signalledAt;
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.ok(elapsed >= 900, `waited for the deadline (${elapsed} ms)`);
  assert.ok(elapsed < 3000, `exited promptly after the 1 s deadline (${elapsed} ms)`);
  await withTimeout(clientClosed, 2000, 'the client to see the close');
  await withTimeout(upstreamClosed, 2000, 'the target to see the close');
  const finished = proc.logs.find((l) => l.msg === 'drain finished');
  assert.equal(finished?.cut, 1);
});

test('SIGINT drains too; a second signal during the drain exits at once with 128+signal', async (t) => {
  const echo = await startEchoServer(t);
  const idle = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port}`], { t });
  idle.proc.signal('SIGINT');
  assert.deepEqual(await withTimeout(idle.proc.exited, 5000, 'exit on SIGINT'), { code: 0, signal: null });

  const busy = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port},mode=opaque`, '--drain-timeout', '60s'], { t });
  const client = await connect(busy.ports[0]!);
  client.on('error', () => undefined);
  client.write('x');
  await withTimeout(once(client, 'data'), 5000, 'echo');
  busy.proc.signal('SIGTERM');
  await busy.proc.waitForLog((l) => l.msg === 'drain started', '"drain started"');
  const second = Date.now();
  busy.proc.signal('SIGTERM');
  const exit = await withTimeout(busy.proc.exited, 5000, 'forced exit');
  assert.deepEqual(exit, { code: 143, signal: null });
  const afterSecond = Date.now() - second;
  assert.ok(afterSecond < 2000, `the second signal does not wait for the 60 s drain (exited ${afterSecond} ms after it)`);
  client.destroy();
});

/** Collects a socket's data as text until EOF. */
function collectText(socket: net.Socket): Promise<string> {
  let text = '';
  socket.setEncoding('utf8').on('data', (c: string) => (text += c));
  return new Promise((resolve, reject) => {
    socket.on('end', () => resolve(text));
    socket.on('error', reject);
  });
}
