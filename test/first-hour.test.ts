/**
 * What a new user meets in their first hour (issue 15), each through the
 * real CLI where a user would meet it:
 * durations that cannot surprise (a bare number is refused with the units;
 * `1m30s` works), unknown `MESHPIPE_*` variables named with the closest
 * known one, options ignored in combination refused as flags and warned
 * about from env/files, `meshpipe help <command>`, one error format for
 * every command, logs on stderr (stdout stays clean), JSON when piped and
 * text at a terminal (a pty from util-linux `script`), the engine's debug
 * lines in the same text format, the Ctrl-C hint, and notable failures
 * logged once with what to do (rate-limited under a flood).
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { CLI, childEnv, connect, freePort, HOST, runCli, startEchoServer, startProxy, waitFor, withTimeout } from './helpers.js';
import { loadConfig } from '../ts/config/index.js';
import { DurationError, parseDuration, formatDuration } from '../ts/config/durations.js';
import { renderTextLine } from '../ts/observe/log-format.js';
import { RateLimited } from '../ts/observe/rate-limited.js';

describe('durations', () => {
  test('a bare number is refused with the units; compound forms and 0 are accepted', async () => {
    assert.throws(() => parseDuration('10'), /a number without a unit/);
    assert.throws(() => parseDuration(5000), /a number without a unit/, 'a number in a config file too');
    assert.equal(parseDuration('1m30s'), 90_000);
    assert.equal(parseDuration('1h30m'), 5_400_000);
    assert.equal(parseDuration('1.5s'), 1500);
    assert.equal(parseDuration('2m0.5s'), 120_500);
    assert.equal(parseDuration('0'), 0);
    assert.equal(parseDuration(0), 0);
    for (const bad of ['1m30', 'm30s', '5x']) {
      assert.throws(() => parseDuration(bad), (e: unknown) => e instanceof DurationError && /expected a number with a unit/.test(e.hint), bad);
    }
    // Almost right: how to write it (test/first-hour-usage.test.ts).
    assert.throws(() => parseDuration('1 m'), (e: unknown) => e instanceof DurationError && /^write it as 1m /.test(e.hint), '1 m');
    assert.throws(() => parseDuration('-1s'), (e: unknown) => e instanceof DurationError && e.hint === 'a duration cannot be negative', '-1s');
    assert.equal(formatDuration(90_000), '1m30s');
    assert.equal(formatDuration(parseDuration('1m30s')), '1m30s');

    const r = await runCli(['proxy', '--forward', '127.0.0.1:0=127.0.0.1:1', '--drain-timeout', '10']);
    assert.equal(r.code, 2);
    assert.equal(
      r.stderr,
      'meshpipe proxy: error: invalid drainTimeout "10" (from --drain-timeout): expected a duration like 30s, 500ms or 5m; write the unit: 10s (seconds) or 10ms (milliseconds); units ms, s, m, h, d, combinable as in 1m30s (ERR_INVALID_CONFIG)\n',
    );
    const env = await runCli(['proxy', '--forward', '127.0.0.1:0=127.0.0.1:1'], { env: { MESHPIPE_IDLE_TIMEOUT: '3600' } });
    assert.equal(env.code, 2);
    assert.match(env.stderr, /invalid idleTimeout "3600" \(from MESHPIPE_IDLE_TIMEOUT\): .*write the unit: 3600s \(seconds\) or 3600ms/);
    assert.equal(loadConfig({ env: { MESHPIPE_DRAIN_TIMEOUT: '1m30s' } }).drainTimeoutMs, 90_000);
  });
});

describe('forward target names: config', () => {
  test('--resolve-interval is ttl or a duration of at least 100ms; --dns-servers takes IPs with optional ports', () => {
    assert.equal(loadConfig({ env: {} }).resolveIntervalMs, 'ttl');
    assert.equal(loadConfig({ env: { MESHPIPE_RESOLVE_INTERVAL: '5s' } }).resolveIntervalMs, 5000);
    assert.throws(() => loadConfig({ env: { MESHPIPE_RESOLVE_INTERVAL: '50ms' } }), /invalid resolveInterval "50ms" \(from MESHPIPE_RESOLVE_INTERVAL\): expected ttl/);
    assert.throws(() => loadConfig({ env: { MESHPIPE_RESOLVE_INTERVAL: '5' } }), /write the unit: 5s/);
    assert.deepEqual(loadConfig({ env: { MESHPIPE_DNS_SERVERS: '10.96.0.10, 127.0.0.1:5353,[fd00::a]:53' } }).dnsServers, ['10.96.0.10', '127.0.0.1:5353', '[fd00::a]:53']);
    assert.throws(() => loadConfig({ env: { MESHPIPE_DNS_SERVERS: 'dns.example' } }), /invalid dnsServers .*"dns\.example": expected an IP address with an optional port/);
  });
});

describe('environment and option combinations', () => {
  test('an unknown MESHPIPE_* variable is a warning naming the closest known one', async (t) => {
    const c = loadConfig({ env: { MESHPIPE_DRAIN_TIMOUT: '10s', MESHPIPE_TOTALLY_ELSE: '1', MESHPIPE_CONFIG: '' } });
    assert.deepEqual(c.warnings, [
      'unknown environment variable MESHPIPE_DRAIN_TIMOUT is ignored (did you mean MESHPIPE_DRAIN_TIMEOUT?); meshpipe proxy --help lists every variable',
      'unknown environment variable MESHPIPE_TOTALLY_ELSE is ignored; meshpipe proxy --help lists every variable',
    ]);
    // The running proxy logs it.
    const echo = await startEchoServer(t);
    const { proc } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port}`], { t, env: { MESHPIPE_DRAIN_TIMOUT: '10s' } });
    const warning = proc.logs.find((l) => l.level === 'warn' && /MESHPIPE_DRAIN_TIMOUT/.test(l.msg));
    assert.ok(warning, JSON.stringify(proc.logs));
    assert.match(warning.msg, /did you mean MESHPIPE_DRAIN_TIMEOUT\?/);
  });

  test('options ignored in combination: errors as flags, warnings from the environment', async () => {
    const cases: [string[], RegExp][] = [
      [['--forward', '127.0.0.1:0=127.0.0.1:1', '--inbound', '0.0.0.0:4143'], /--inbound is ignored: it configures the sidecar layout, which does not run with --forward \(remove one of them\)/],
      [['--forward', '127.0.0.1:0=127.0.0.1:1', '--inbound-ips', '10.0.0.5'], /--inbound-ips is ignored/],
      [['--forward', '127.0.0.1:0=127.0.0.1:1', '--admin', 'off', '--admin-expose-debug'], /--admin-expose-debug is ignored: the admin server is off/],
      [['--forward', '127.0.0.1:0=127.0.0.1:1', '--kubeconfig', '/tmp/kc'], /--kubeconfig is ignored: it is read only with --kube/],
      [['--forward', '127.0.0.1:0=127.0.0.1:1', '--inbound-stop-delay', '5s'], /--inbound-stop-delay is ignored: there is no inbound listener/],
    ];
    for (const [args, pattern] of cases) {
      const r = await runCli(['proxy', ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, pattern);
      assert.match(r.stderr, /^meshpipe proxy: error: .* \(ERR_INVALID_CONFIG\)\n$/);
    }
    const fromEnv = loadConfig({ env: { MESHPIPE_FORWARD: '127.0.0.1:0=127.0.0.1:1', MESHPIPE_INBOUND: '0.0.0.0:4143' } });
    assert.deepEqual(fromEnv.warnings, ['MESHPIPE_INBOUND is ignored: it configures the sidecar layout, which does not run with MESHPIPE_FORWARD (remove one of them)']);
    // A combination that is used is no warning.
    assert.deepEqual(loadConfig({ env: { MESHPIPE_FORWARD: '127.0.0.1:0=127.0.0.1:1,direction=inbound', MESHPIPE_INBOUND_STOP_DELAY: '1s' } }).warnings, []);
  });
});

describe('commands', () => {
  test('meshpipe help proxy shows the proxy\'s help; help of an unknown command is an error', async () => {
    const help = await runCli(['help', 'proxy']);
    const direct = await runCli(['proxy', '--help']);
    assert.equal(help.code, 0);
    assert.equal(help.stdout, direct.stdout);
    assert.match(help.stdout, /^Usage: meshpipe proxy/);
    assert.match((await runCli(['help', 'explain'])).stdout, /^Usage: meshpipe explain/);
    const bad = await runCli(['help', 'frobnicate']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^meshpipe: error: unknown command "frobnicate"/);
    assert.match((await runCli(['help'])).stdout, /^Usage: meshpipe <command>/);
  });

  test('every command reports errors as "meshpipe <command>: error: <message> (<CODE>)"', async () => {
    const cases: [string[], RegExp][] = [
      [['proxy', '--bogus'], /^meshpipe proxy: error: unknown option --bogus for meshpipe proxy; .*\(ERR_INVALID_ARGUMENT\)\n$/],
      [['run', '--forward', '127.0.0.1:0=127.0.0.1:1'], /^meshpipe run: error: no command to run: expected meshpipe run \[options\] -- COMMAND \[ARGS\.\.\.\] \(ERR_INVALID_ARGUMENT\)\n$/],
      [['init', '--proxy-uid', 'abc'], /^meshpipe init: error: .*\(ERR_[A-Z_]+\)\n$/],
      [['explain', '--port', '0'], /^meshpipe explain: error: --port "0": expected a port number 1-65535 \(ERR_INVALID_ARGUMENT\)\n$/],
      [['inject', '/nonexistent.yaml'], /^meshpipe inject: error: .*\/nonexistent\.yaml.*\(ERR_[A-Z_]+\)\n$/],
      [['identity', 'check', '--dir', '/nonexistent'], /^meshpipe identity: error: .*\(ERR_[A-Z_]+\)\n$/],
      [['frobnicate'], /^meshpipe: error: unknown command "frobnicate".*\(ERR_INVALID_ARGUMENT\)\n$/],
    ];
    for (const [args, pattern] of cases) {
      const r = await runCli(args);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.stderr, pattern, args.join(' '));
    }
  });
});

/** Runs `meshpipe ARGS` under a pty (util-linux `script`), so stderr is a terminal; returns what the terminal showed. */
async function underTerminal(args: string[], act: (output: () => string) => Promise<void>): Promise<string> {
  const command = [process.execPath, CLI, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const child = spawn('script', ['-qfec', command, '/dev/null'], { env: childEnv({ MESHPIPE_ADMIN: 'off' }), stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  const closed = once(child, 'close');
  try {
    await act(() => out);
  } finally {
    child.kill('SIGKILL');
    await closed;
  }
  return out;
}

describe('logs', () => {
  test('logs go to stderr as JSON when it is not a terminal; stdout stays empty', async (t) => {
    const echo = await startEchoServer(t);
    const { proc } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port}`], { t });
    assert.ok(proc.logs.some((l) => l.msg === 'proxy ready'), 'JSON lines parsed from stderr');
    proc.signal('SIGTERM');
    await proc.exited;
    assert.equal(proc.stdout, '', 'nothing on stdout');
  });

  test('at a terminal logs are text, and --log-level debug shows each connection\'s stages from the engine in the same format', async (t) => {
    const echo = await startEchoServer(t);
    const port = await freePort();
    const out = await underTerminal(['proxy', '--forward', `${HOST}:${port}=${HOST}:${echo.port}`, '--log-level', 'debug'], async (output) => {
      await waitFor(() => /INFO {2}proxy ready/.test(output()), `"proxy ready" at the terminal:\n${output()}`, 15_000);
      const s = await connect(port);
      s.write('hello');
      await once(s, 'data');
      s.end();
      await waitFor(() => /DEBUG closed component=engine/.test(output()), `the engine's "closed" line:\n${output()}`, 10_000);
    });
    const lines = out.split(/\r?\n/).filter((l) => l.trim() !== '');
    assert.ok(!lines.some((l) => l.startsWith('{')), `no JSON at a terminal:\n${out}`);
    assert.match(out, /^\d\d:\d\d:\d\d\.\d{3}Z INFO {2}listener bound listener=forward:127\.0\.0\.1:\d+ /m);
    for (const stage of ['accepted', 'policy', 'detected', 'connected', 'closed']) {
      assert.match(out, new RegExp(`^\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z DEBUG ${stage} component=engine listener=forward:127\\.0\\.0\\.1:${port} `, 'm'), `${stage}:\n${out}`);
    }
  });

  test('--log-format text renders pino lines: fields in order, quotes only when needed, errors by message, hints on their own line', () => {
    assert.equal(
      renderTextLine('{"level":"warn","time":"2026-11-30T12:34:56.789Z","pid":1,"name":"meshpipe","msg":"x","a":"b c","n":3,"err":{"type":"Error","message":"boom","stack":"..."},"hint":"do this"}'),
      '12:34:56.789Z WARN  x a="b c" n=3 err=boom\n  hint: do this\n',
    );
    assert.equal(renderTextLine('not json'), 'not json\n');
  });

  test('the first Ctrl-C says the proxy drains for up to the drain timeout and that a second one exits at once', async (t) => {
    const echo = await startEchoServer(t);
    const { proc } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port}`, '--drain-timeout', '1m30s'], { t });
    proc.signal('SIGINT');
    const line = await proc.waitForLog((l) => l.msg === 'shutdown requested', '"shutdown requested"');
    assert.equal(line['hint'], 'draining: open connections get up to 1m30s (--drain-timeout) to finish; a second Ctrl-C exits at once');
    assert.equal((await proc.exited).code, 0);
  });
});

describe('notable failures', () => {
  test('a forward target that refuses: one warning with what to do, not one per connection', async (t) => {
    const dead = await freePort();
    const { proc, ports } = await startProxy(['--forward', `${HOST}:0=${HOST}:${dead}`], { t });
    for (let i = 0; i < 40; i++) {
      const s = net.connect(ports[0]!, HOST);
      s.on('error', () => undefined);
      s.write('x');
      await withTimeout(new Promise((r) => s.once('close', r)), 5000, 'the reset');
    }
    const line = await proc.waitForLog((l) => l.msg === 'the forward target refused connections', 'the refusal warning', 10_000);
    assert.equal(line.level, 'warn');
    assert.equal(line['target'], `${HOST}:${dead}`);
    assert.match(String(line['hint']), new RegExp(`nothing accepts connections at 127\\.0\\.0\\.1:${dead}: is the server running`));
    // What a client sees depends on the protocol: HTTP requests are answered, not reset.
    assert.match(String(line['hint']), /get a reset \(HTTP clients a 502 Bad Gateway\)\.$/);
    // The listener is named by the port it got, not the 0 it was asked for.
    assert.match(String(line['hint']), new RegExp(`Clients of 127\\.0\\.0\\.1:${ports[0]} get a reset`));
    // Two more polls: still one line (rate-limited), the counts are in the metrics.
    await new Promise((r) => setTimeout(r, 4500));
    assert.equal(proc.logs.filter((l) => l.msg === 'the forward target refused connections').length, 1);
  });

  test('connections without an original destination (no meshpipe init): one warning naming init and the exempt uid', async (t) => {
    const port = await freePort();
    const { proc } = await startProxy(['--outbound', `${HOST}:${port}`, '--inbound', 'off'], { t });
    for (let i = 0; i < 3; i++) {
      const s = net.connect(port, HOST);
      s.on('error', () => undefined);
      await withTimeout(new Promise((r) => s.once('close', r)), 5000, 'the reset');
    }
    const line = await proc.waitForLog((l) => l.msg === 'connections without an original destination were refused', 'the warning', 10_000);
    assert.match(String(line['hint']), /is `meshpipe init` installed in this network namespace, and does the proxy run as the uid it exempts \(--proxy-uid, default 2102\)\?/);
  });

  test('the rate limiter: first at once, then at most once per interval with the count held back', () => {
    let now = 0;
    const r = new RateLimited(60_000, () => now);
    assert.equal(r.hit('k', 3), 3);
    assert.equal(r.hit('k', 5), undefined);
    now = 30_000;
    assert.equal(r.hit('k'), undefined);
    now = 61_000;
    assert.equal(r.hit('k', 2), 8, 'the 6 held back and these 2');
    assert.equal(r.hit('other'), 1, 'keys are independent');
    r.reset('k');
    assert.equal(r.hit('k'), 1);
  });
});
