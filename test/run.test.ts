/**
 * `meshpipe run -- COMMAND`: the wrapper's exit codes (0, non-zero, killed
 * by a signal -> 128 + N, not found -> 127), the app starting only once the
 * proxy is ready (a Job-like app that uses the proxy at once and whose exit
 * ends meshpipe), no app at all when the proxy cannot start, and signals:
 * SIGHUP and SIGTERM reach the app, SIGTERM turns /ready 503 and stops the
 * inbound listener while the outbound one keeps serving the still-running
 * app, and a second SIGTERM exits at once.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync } from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CliProcess, freePort, HOST, isListening, runCli, startEchoServer, waitFor, withTimeout } from './helpers.js';
import { adminAddress, adminRequest } from './admin-client.js';

const NODE = process.execPath;

/** An app that connects to 127.0.0.1:PORT, sends `ping`, expects `ping` back, exits 0 (3 on any failure). */
const PING_APP = `
const net = require('node:net');
const s = net.connect({ host: '127.0.0.1', port: Number(process.argv[1]) });
let got = '';
s.on('data', (d) => { got += d; if (got === 'ping') { console.log('PING OK'); s.end(); process.exit(0); } });
s.on('error', (e) => { console.log('PING FAILED ' + e.code); process.exit(3); });
s.write('ping');
`;

describe('meshpipe run: exit codes', () => {
  for (const [what, script, expected] of [
    ['exit 0', 'exit 0', 0],
    ['a non-zero exit', 'exit 7', 7],
    ['killed by SIGKILL', 'kill -KILL $$', 137],
    ['killed by SIGTERM', 'kill -TERM $$', 143],
  ] as const) {
    test(`${what} -> ${expected}, after the drain`, async () => {
      const r = await runCli(['run', '--forward', '127.0.0.1:0=127.0.0.1:1', '--', 'sh', '-c', script]);
      assert.equal(r.code, expected, r.stderr);
      // The proxy's logs are on stderr; stdout is the app's alone.
      assert.equal(r.stdout, '', 'nothing of meshpipe on stdout');
      const logs = r.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg: string; exitCode?: number });
      const msgs = logs.map((l) => l.msg);
      assert.ok(msgs.indexOf('proxy ready') < msgs.indexOf('app started'), 'app started after ready');
      assert.equal(logs.find((l) => l.msg === 'app exited')?.exitCode, expected);
      assert.ok(msgs.indexOf('app exited') < msgs.indexOf('drain finished'));
    });
  }

  test('a command that does not exist -> 127 and a clear message', async () => {
    const r = await runCli(['run', '--forward', '127.0.0.1:0=127.0.0.1:1', '--', 'meshpipe-no-such-command-xyz']);
    assert.equal(r.code, 127);
    assert.match(r.stderr, /cannot run meshpipe-no-such-command-xyz: command not found/);
  });

  test('no command, or a bad --ready-timeout -> exit 2 naming the problem', async () => {
    const none = await runCli(['run', '--forward', '127.0.0.1:0=127.0.0.1:1']);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /^meshpipe run: error: no command to run: expected meshpipe run \[options\] -- COMMAND/);
    const bad = await runCli(['run', '--ready-timeout', 'soon', '--forward', '127.0.0.1:0=127.0.0.1:1', '--', 'true']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /invalid --ready-timeout "soon"/);
  });
});

describe('meshpipe run: start-up', () => {
  test('a Job-like app uses the proxy at once (it is ready first) and its exit ends meshpipe', async (t) => {
    const echo = await startEchoServer(t);
    const port = await freePort();
    const r = await runCli(['run', '--forward', `127.0.0.1:${port}=127.0.0.1:${echo.port},mode=opaque`, '--', NODE, '-e', PING_APP, String(port)], { timeoutMs: 15_000 });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    // The app's stdout is not interleaved with the proxy's log lines (those are on stderr).
    assert.equal(r.stdout, 'PING OK\n');
    assert.match(r.stderr, /"msg":"proxy ready"/);
    assert.equal(echo.accepted.length, 1);
    assert.ok(r.durationMs < 10_000, `meshpipe ended ${r.durationMs} ms after start`);
  });

  test('the proxy cannot start (address in use): the app never runs, exit 1 with the reason', async (t) => {
    const blocker = net.createServer().listen(0, HOST);
    await once(blocker, 'listening');
    t.after(() => blocker.close());
    const taken = (blocker.address() as net.AddressInfo).port;
    const marker = join(mkdtempSync(join(tmpdir(), 'meshpipe-run-')), 'app-ran');
    const r = await runCli(['run', '--forward', `127.0.0.1:${taken}=127.0.0.1:1`, '--', 'touch', marker]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`127\\.0\\.0\\.1:${taken}`));
    assert.match(r.stderr, /ERR_ADDR_IN_USE/);
    assert.equal(existsSync(marker), false, 'the app must not have run');
    assert.doesNotMatch(r.stderr, /"msg":"app started"/);
  });
});

/**
 * An app that reports signals: SIGHUP before SIGTERM prints GOT SIGHUP; SIGTERM
 * prints GOT SIGTERM; a SIGHUP after SIGTERM makes it finish its work (a ping
 * through the proxy's outbound listener) and exit 0. A second SIGTERM exits 5.
 */
const SIGNAL_APP = `
const net = require('node:net');
let terms = 0;
process.on('SIGHUP', () => {
  if (terms === 0) { console.log('GOT SIGHUP'); return; }
  const s = net.connect({ host: '127.0.0.1', port: Number(process.argv[1]) });
  let got = '';
  s.on('data', (d) => { got += d; if (got === 'late') { console.log('LATE OK'); s.end(); process.exit(0); } });
  s.on('error', (e) => { console.log('LATE FAILED ' + e.code); process.exit(4); });
  s.write('late');
});
process.on('SIGTERM', () => { terms++; console.log('GOT SIGTERM ' + terms); if (terms > 1) process.exit(5); });
// Never outlive the meshpipe that started it (e.g. when a failed test SIGKILLs meshpipe).
const parent = process.ppid;
setInterval(() => { if (process.ppid !== parent) process.exit(9); }, 200);
console.log('APP READY');
`;

describe('meshpipe run: signals and the shutdown sequence', () => {
  test('SIGHUP/SIGTERM forwarded; /ready 503 and inbound stopped at once; outbound serves the app until it exits', async (t) => {
    const echo = await startEchoServer(t);
    const outPort = await freePort();
    const inPort = await freePort();
    const proc = new CliProcess([
      'run', '--admin', '127.0.0.1:0',
      '--forward', `127.0.0.1:${outPort}=127.0.0.1:${echo.port},mode=opaque`,
      '--forward', `127.0.0.1:${inPort}=127.0.0.1:${echo.port},mode=opaque,direction=inbound`,
      '--', NODE, '-e', SIGNAL_APP, String(outPort),
    ]);
    t.after(() => proc.kill());
    const admin = await adminAddress(proc);
    await waitFor(() => /^APP READY$/m.test(proc.stdout), 'APP READY');
    assert.equal((await adminRequest(admin, '/ready')).status, 200);

    proc.signal('SIGHUP');
    await waitFor(() => /^GOT SIGHUP$/m.test(proc.stdout), 'the app to get SIGHUP');
    assert.ok(proc.running, 'SIGHUP does not stop meshpipe');

    proc.signal('SIGTERM');
    await waitFor(() => /^GOT SIGTERM 1$/m.test(proc.stdout), 'the app to get SIGTERM');
    await waitFor(async () => (await adminRequest(admin, '/ready')).status === 503, '/ready 503');
    await proc.waitForLog((l) => l.msg === 'inbound listeners stopped accepting', 'inbound stop');
    assert.equal(await isListening(inPort), false, 'inbound listener stopped');
    assert.equal(await isListening(outPort), true, 'outbound listener still accepts while the app runs');
    assert.ok(proc.running);

    proc.signal('SIGHUP'); // the app finishes its work through the proxy and exits 0
    const exit = await withTimeout(proc.exited, 10_000, 'meshpipe to exit');
    assert.equal(exit.code, 0, proc.stderr);
    assert.match(proc.stdout, /^LATE OK$/m);
    const msgs = proc.logs.map((l) => l.msg);
    assert.ok(msgs.indexOf('app exited') < msgs.indexOf('drain started'), 'drain starts after the app exited');
    assert.ok(msgs.includes('drain finished'));
  });

  test('POST /shutdown sends the app SIGTERM; its exit code passes through', async (t) => {
    const app = "process.on('SIGTERM', () => { console.log('BYE'); process.exit(0); }); setInterval(() => {}, 1000); console.log('APP READY');";
    const proc = new CliProcess(['run', '--admin', '127.0.0.1:0', '--forward', '127.0.0.1:0=127.0.0.1:1', '--', NODE, '-e', app]);
    t.after(() => proc.kill());
    const admin = await adminAddress(proc);
    await waitFor(() => /^APP READY$/m.test(proc.stdout), 'APP READY');
    const r = await adminRequest(admin, '/shutdown', 'POST');
    assert.equal(r.status, 202);
    const exit = await withTimeout(proc.exited, 10_000, 'meshpipe to exit');
    assert.equal(exit.code, 0, proc.stderr);
    assert.match(proc.stdout, /^BYE$/m);
  });

  test('a second SIGTERM exits at once with 143', async (t) => {
    const proc = new CliProcess(['run', '--forward', '127.0.0.1:0=127.0.0.1:1', '--', NODE, '-e', SIGNAL_APP, '1']);
    t.after(() => proc.kill());
    await waitFor(() => /^APP READY$/m.test(proc.stdout), 'APP READY');
    proc.signal('SIGTERM');
    await waitFor(() => /^GOT SIGTERM 1$/m.test(proc.stdout), 'first SIGTERM at the app');
    assert.ok(proc.running, 'meshpipe waits for the app after one SIGTERM');
    proc.signal('SIGTERM');
    const exit = await withTimeout(proc.exited, 5000, 'meshpipe to exit on the second SIGTERM');
    assert.equal(exit.code, 143);
    assert.ok(proc.logs.some((l) => l.msg === 'second signal: exiting now'));
  });
});
