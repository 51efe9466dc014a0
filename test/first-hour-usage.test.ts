/**
 * A third walk through a new user's first hour (after first-hour.test.ts and
 * first-hour-input.test.ts), through the real CLI, for what was still rough:
 *
 * - `meshpipe explain` used node's own argument errors ("Option '--port
 *   <value>' argument missing", a two-line "ambiguous" message for `--port
 *   --json`); it now shares the other commands' parser: the flag, what it
 *   takes, one line;
 * - `meshpipe explain --manifests DIR --namespace shopp --pod web-1` (a typo,
 *   or a pod of no workload in the files) answered quietly for a pod with no
 *   container ports and none of the workload's annotations; it is now a
 *   problem naming the pod and the workloads the files have (exit 1 with
 *   --strict);
 * - `meshpipe run -- COMMAND` with a COMMAND that is not there (or not
 *   executable) started the proxy, logged, then said so in two lines and
 *   drained; it now says so in one line before anything starts (127, 126);
 * - two forwards on one bind address showed the whole list as JSON
 *   (`invalid forward ["a=b","a=c"]`); the second forward is named alone,
 *   with the one that has the address;
 * - `meshpipe init --proxy-uid 0` (or `--proxy-gid 0`) was accepted: the
 *   rules then let every process running as root, often the app, bypass the
 *   proxy; it is refused (exit 2), as injection refuses the proxy-uid
 *   annotation 0;
 * - `meshpipe proxy --inbound 127.0.0.2:14143` (trying a mesh on one
 *   machine) started quietly, and every connection to it was reset as "not a
 *   pod IP", seen only in a counter; the start now warns that the listener's
 *   address is no pod IP, with what to do;
 * - an unknown config file key with a likely meaning (`drainTimout`,
 *   `drain-timeout`) was followed by all 60 keys on the same line; the
 *   suggestion now comes with where the keys are listed (the list stays for
 *   a key with no close match);
 * - a duration that was almost right (`5 s`, `10S`, `5min`, `2 hours`,
 *   `1h 30m`) got the generic "expected a number with a unit"; it now gets
 *   the way to write it (`5s`, `2h`, `1h30m`), and `-5s` that a duration
 *   cannot be negative;
 * - an option ignored because the admin server (or the inbound listener) is
 *   off said "(--admin off)" even when the off came from MESHPIPE_ADMIN or
 *   the config file; it names where it came from;
 * - `explain --protocol mysq` said only "not in the table", and with
 *   `--port` the unknown name was dropped without a word; both name the
 *   likely protocol, and with a port a warning says the answer is for the
 *   port alone;
 * - `--identity-dir ca` (the CA folder of `identity init`, a likely first
 *   try) or a folder that does not exist said only "ca/tls.crt: ... no such
 *   file"; the folder is now named for what it is;
 * - `meshpipe proxy --kube --admin off` without Kubernetes credentials exited
 *   0 with nothing printed in most runs (the failed start's close waited on
 *   the unref'd policy worker with nothing else on the event loop); it exits
 *   2 naming the kubeconfig every time.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { runCli, startProxy, withTimeout } from './helpers.js';
import { DurationError, parseDuration } from '../ts/config/durations.js';

/** The README's example app (Deployment shop/web). */
const EXAMPLE = fileURLToPath(new URL('../../examples/k8s/', import.meta.url));

/** Asserts a usage error: exit 2, exactly one line on stderr matching `pattern`, nothing on stdout. */
function assertOneLineError(r: { code: number | null; stdout: string; stderr: string }, pattern: RegExp, what: string): void {
  assert.equal(r.code, 2, `${what}: exit 2 (stderr: ${r.stderr})`);
  assert.equal(r.stdout, '', `${what}: nothing on stdout`);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `${what}: one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0]!, pattern, what);
}

describe('explain', () => {
  test('a forgotten value, a value for a switch and a stray word: one line naming the flag and what it takes', async () => {
    const cases: [string[], RegExp][] = [
      [['explain', '--port'], /^meshpipe explain: error: option --port needs a value: --port PORT \(ERR_INVALID_ARGUMENT\)$/],
      [['explain', '--port', '--json'], /^meshpipe explain: error: option --port needs a value \(got the option --json instead\): --port PORT \(ERR_INVALID_ARGUMENT\)$/],
      [['explain', '--manifests'], /^meshpipe explain: error: option --manifests needs a value: --manifests PATH \(ERR_INVALID_ARGUMENT\)$/],
      [['explain', '--port', '80', '--json=yes'], /^meshpipe explain: error: option --json takes no value \(got "yes"\) \(ERR_INVALID_ARGUMENT\)$/],
      [['explain', '3306'], /^meshpipe explain: error: unexpected argument "3306" for meshpipe explain; run meshpipe explain --help \(ERR_INVALID_ARGUMENT\)$/],
    ];
    for (const [args, pattern] of cases) assertOneLineError(await runCli(args), pattern, args.join(' '));
    // Still answered: repeated --port, -h.
    const two = await runCli(['explain', '--port', '80', '--port', '3306', '--json']);
    assert.equal(two.code, 0, two.stderr);
    assert.deepEqual((JSON.parse(two.stdout) as { ports: { port: number }[] }).ports.map((p) => p.port), [80, 3306]);
    const help = await runCli(['explain', '-h']);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /^Usage: meshpipe explain/);
  });

  test('a protocol not in the table: the likely one, and with --port a warning that the answer is for the port alone', async () => {
    assertOneLineError(
      await runCli(['explain', '--protocol', 'mysq']),
      /^meshpipe explain: error: --protocol "mysq" is not in the table \(did you mean mysql\?\): expected a name of meshpipe explain --help's table, or --port as well \(ERR_INVALID_ARGUMENT\)$/,
      'mysq',
    );
    assertOneLineError(await runCli(['explain', '--protocol', 'foo']), /^meshpipe explain: error: --protocol "foo" is not in the table: expected/, 'foo: nothing close');
    const withPort = await runCli(['explain', '--protocol', 'smpt', '--port', '25']);
    assert.equal(withPort.code, 0, withPort.stderr);
    assert.match(withPort.stdout, /^Port 25\n/);
    assert.equal(withPort.stderr, 'meshpipe explain: warning: --protocol "smpt" is not in the table (did you mean smtp?): the answer is for the port alone (run meshpipe explain --help for the table)\n');
  });

  test('a --pod that is no workload of the manifests is a problem naming it and what the files have', async () => {
    const typo = await runCli(['explain', '--manifests', EXAMPLE, '--namespace', 'shopp', '--pod', 'web-1', '--port', '3306', '--json', '--strict']);
    assert.equal(typo.code, 1, typo.stderr);
    const problems = (JSON.parse(typo.stdout) as { problems: string[] }).problems;
    assert.equal(problems.length, 1, problems.join('\n'));
    assert.match(problems[0]!, /^--pod web-1 in namespace shopp: no workload in --manifests is this pod .*; the manifests have Deployment shop\/web$/);
    assert.match(typo.stderr, /1 problem in the inputs \(--strict\)/);
    // Without --strict the answer stands (exit 0), the problem listed under it.
    const text = await runCli(['explain', '--manifests', EXAMPLE, '--namespace', 'shop', '--pod', 'nope']);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /Problems \(valid entries still apply\):\n {2}--pod nope in namespace shop: no workload/);
    // A name from the downward API's POD_NAME is named as that, not as a flag that was not given.
    const fromEnv = await runCli(['explain', '--manifests', EXAMPLE, '--port', '3306'], { env: { POD_NAME: 'nope', POD_NAMESPACE: 'shop' } });
    assert.equal(fromEnv.code, 0, fromEnv.stderr);
    assert.match(fromEnv.stdout, /\n {2}POD_NAME nope in namespace shop: no workload in --manifests is this pod/);
    // The pod of the Deployment (its name begins with "web-"): no problem.
    const good = await runCli(['explain', '--manifests', EXAMPLE, '--namespace', 'shop', '--pod', 'web-7d9f', '--port', '3306', '--json', '--strict']);
    assert.equal(good.code, 0, good.stderr);
    assert.deepEqual((JSON.parse(good.stdout) as { problems: string[] }).problems, []);
  });
});

describe('run', () => {
  test('a command that is not there, or not executable: one line, 127 or 126, the proxy never started', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-usage-'));
    const data = join(dir, 'data.txt');
    writeFileSync(data, 'not a program\n');
    chmodSync(data, 0o644);
    const forward = ['--forward', '127.0.0.1:0=127.0.0.1:1', '--log-format', 'json'];
    const cases: [string, number, RegExp][] = [
      ['meshpipe-no-such-command-xyz', 127, /^meshpipe run: error: cannot run meshpipe-no-such-command-xyz: command not found \(not in any folder of PATH\); the proxy was not started \(ERR_COMMAND_NOT_FOUND\)$/],
      [join(dir, 'missing'), 127, /: command not found \(no such file\); the proxy was not started \(ERR_COMMAND_NOT_FOUND\)$/],
      ['', 127, /^meshpipe run: error: cannot run "": the command name is empty: expected meshpipe run \[options\] -- COMMAND \[ARGS\.\.\.\]; the proxy was not started \(ERR_COMMAND_NOT_FOUND\)$/],
      [data, 126, /: permission denied \(not an executable file\); the proxy was not started \(ERR_COMMAND_NOT_EXECUTABLE\)$/],
      [dir, 126, /: permission denied \(not an executable file\); the proxy was not started \(ERR_COMMAND_NOT_EXECUTABLE\)$/],
    ];
    for (const [command, code, pattern] of cases) {
      const r = await runCli(['run', ...forward, '--', command]);
      assert.equal(r.code, code, `${command}: exit ${code} (stderr: ${r.stderr})`);
      const lines = r.stderr.split('\n').filter((l) => l !== '');
      // One line: no "proxy ready", no "app could not be started" log, no drain.
      assert.equal(lines.length, 1, `${command}: one line on stderr, got:\n${r.stderr}`);
      assert.match(lines[0]!, pattern, command);
    }
    // A command found in PATH still runs, with its exit code passed through.
    const ok = await runCli(['run', ...forward, '--admin', 'off', '--', 'sh', '-c', 'exit 3']);
    assert.equal(ok.code, 3, ok.stderr);
  });
});

describe('durations', () => {
  test('almost right: the way to write it; negative: said so', async () => {
    const cases: [string, string][] = [['5 s', '5s'], ['10S', '10s'], ['5min', '5m'], ['2 hours', '2h'], ['1h 30m', '1h30m'], ['1.5 sec', '1.5s'], ['250 msec', '250ms']];
    for (const [written, meant] of cases) {
      assert.throws(() => parseDuration(written), (e: unknown) => e instanceof DurationError && e.hint.startsWith(`write it as ${meant} (`), written);
      assert.equal(parseDuration(meant) > 0, true, meant);
    }
    assert.throws(() => parseDuration('-5s'), (e: unknown) => e instanceof DurationError && e.hint === 'a duration cannot be negative');
    assert.throws(() => parseDuration('soon'), (e: unknown) => e instanceof DurationError && /^expected a number with a unit/.test(e.hint));
    // Through the CLI: flags of proxy and run.
    assertOneLineError(
      await runCli(['proxy', '--forward', '127.0.0.1:0=127.0.0.1:1', '--drain-timeout', '5 s']),
      /^meshpipe proxy: error: invalid drainTimeout "5 s" \(from --drain-timeout\): expected a duration like 30s, 500ms or 5m; write it as 5s \(a number and its unit, no space; units ms, s, m, h, d\) \(ERR_INVALID_CONFIG\)$/,
      '5 s',
    );
    assertOneLineError(
      await runCli(['proxy', '--forward', '127.0.0.1:0=127.0.0.1:1', '--idle-timeout', '-5s']),
      /^meshpipe proxy: error: invalid idleTimeout "-5s" \(from --idle-timeout\): expected a duration like 1h or 30m \(0 = never\); a duration cannot be negative \(ERR_INVALID_CONFIG\)$/,
      '-5s',
    );
    assertOneLineError(
      await runCli(['run', '--ready-timeout', '5sec', '--forward', '127.0.0.1:0=127.0.0.1:1', '--', 'true']),
      /^meshpipe run: error: invalid --ready-timeout "5sec": .*; write it as 5s \(/,
      '5sec',
    );
  });
});

describe('config file', () => {
  test('an unknown key: the likely one and where the keys are listed; the whole list only without a likely one', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-usage-'));
    const file = (name: string, text: string): string => {
      const path = join(dir, name);
      writeFileSync(path, text);
      return path;
    };
    const kebab = file('kebab.yaml', 'forward: [127.0.0.1:0=127.0.0.1:1]\ndrain-timeout: 20s\n');
    const r = await runCli(['proxy', '--config', kebab]);
    assertOneLineError(
      r,
      /^meshpipe proxy: error: unknown key "drain-timeout" in config file .*kebab\.yaml \(did you mean "drainTimeout"\?\): the keys are the options of meshpipe proxy --help in camelCase \(--drain-timeout: drainTimeout\) \(ERR_INVALID_CONFIG\)$/,
      'kebab-case key',
    );
    assert.ok(r.stderr.length < 300, `one short line: ${r.stderr}`);
    const far = file('far.json', '{"forward": ["127.0.0.1:0=127.0.0.1:1"], "adminPort": 5}');
    assertOneLineError(
      await runCli(['proxy', '--config', far]),
      /^meshpipe proxy: error: unknown key "adminPort" in config file .*far\.json: expected one of forward, drainTimeout, .*dnsServers \(ERR_INVALID_CONFIG\)$/,
      'no likely key',
    );
  });
});

describe('ignored options', () => {
  test('the "off" that makes an option pointless is named where it was written', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-usage-'));
    const file = join(dir, 'admin-off.yaml');
    writeFileSync(file, 'admin: off\n');
    const forward = ['--forward', '127.0.0.1:0=127.0.0.1:1'];
    const cases: [string[], NodeJS.ProcessEnv, RegExp][] = [
      [[...forward, '--admin-expose-debug'], { MESHPIPE_ADMIN: 'off' }, /^meshpipe proxy: error: --admin-expose-debug is ignored: the admin server is off \(MESHPIPE_ADMIN=off\) \(ERR_INVALID_CONFIG\)$/],
      // The tests' environment sets MESHPIPE_ADMIN=off (helpers.ts); empty, it is not read, so the file's off applies.
      [[...forward, '--config', file, '--admin-expose-debug'], { MESHPIPE_ADMIN: '' }, /^meshpipe proxy: error: --admin-expose-debug is ignored: the admin server is off \(admin: off in config file .*admin-off\.yaml\) \(ERR_INVALID_CONFIG\)$/],
      [[...forward, '--admin', 'off', '--no-admin-shutdown'], {}, /^meshpipe proxy: error: --no-admin-shutdown is ignored: the admin server is off \(--admin off\) \(ERR_INVALID_CONFIG\)$/],
      [['--inbound-host', '127.0.0.1'], { MESHPIPE_INBOUND: 'off' }, /^meshpipe proxy: error: --inbound-host is ignored: the inbound listener is off \(MESHPIPE_INBOUND=off\) \(ERR_INVALID_CONFIG\)$/],
    ];
    for (const [args, env, pattern] of cases) assertOneLineError(await runCli(['proxy', ...args], { env }), pattern, args.join(' '));
  });
});

describe('proxy', () => {
  test('--kube without credentials and --admin off: exit 2 naming the kubeconfig, every time', async () => {
    const home = mkdtempSync(join(tmpdir(), 'meshpipe-usage-home-'));
    const env = { HOME: home, KUBECONFIG: '', KUBERNETES_SERVICE_HOST: '', MESHPIPE_ADMIN: 'off' };
    // It exited 0 silently in about two runs of three: five runs catch that.
    for (let i = 0; i < 5; i++) {
      assertOneLineError(
        await runCli(['proxy', '--kube', '--forward', '127.0.0.1:0=127.0.0.1:1'], { env }),
        new RegExp(`^meshpipe proxy: error: the default kubeconfig ${home}/\\.kube/config: cannot load: .*--kube needs --kubeconfig FILE.*\\(ERR_INVALID_CONFIG\\)$`),
        `run ${i + 1}`,
      );
    }
  });

  test('an inbound listener on an address that is no pod IP: a warning at start, and connections to it are refused as it says', async (t) => {
    const args = ['--outbound', 'off', '--admin', 'off', '--ipv6', 'false', '--inbound-ips', '203.0.113.7'];
    const { proc, ports } = await startProxy(['--inbound', '127.0.0.1:0', ...args], { t });
    const warning = proc.logs.find((l) => l.msg === 'the inbound listener is bound to an address that is not one of the pod IPs');
    assert.ok(warning, `the warning:\n${proc.stderr}`);
    assert.equal(warning.level, 'warn');
    assert.deepEqual(warning['podIps'], ['203.0.113.7']);
    // Without an identity there is no tunnel: a connection dialled to the listener was not
    // redirected, and is refused for having no original destination. The hint names that counter.
    assert.match(String(warning['hint']), new RegExp(`^every connection to 127\\.0\\.0\\.1:${ports[0]} is refused and counted \\(inbound_tcp_accept_errors_total\\{error="no_original_dst"\\}\\).*--inbound-ips`));
    // As the warning says: a connection gets nothing through and is closed (the reset may
    // come before the client saw its connect complete).
    const socket = net.createConnection({ host: '127.0.0.1', port: ports[0]! });
    socket.on('connect', () => socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    let received = 0;
    socket.on('data', (chunk: Buffer) => (received += chunk.length));
    socket.on('error', () => undefined);
    // Not events.once: it rejects on the 'error' (ECONNRESET) that comes first.
    await withTimeout(new Promise((resolve) => socket.once('close', resolve)), 5_000, 'the refused connection to close');
    assert.equal(received, 0, 'nothing came back');
    // Counted as the hint said (the rate-limited log of that counter).
    const counted = await proc.waitForLog((l) => l.msg === 'connections without an original destination were refused', 'the no_original_dst warning', 10_000);
    assert.equal(counted['count'], 1);
    // Every address (the default's form), in IPv6's long form too: no warning.
    for (const every of ['0.0.0.0:0', '[::0]:0']) {
      const wildcard = await startProxy(['--inbound', every, ...args], { t });
      assert.equal(wildcard.proc.logs.filter((l) => l.level === 'warn').length, 0, `${every}: ${wildcard.proc.stderr}`);
    }
  });

  test('an inbound connection refused because its destination is no pod IP is logged with the pod IPs, not only counted', async (t) => {
    // With an identity, a connection dialled to the inbound port itself is the tunnel, checked
    // against the pod IPs (no iptables needed): 127.0.0.1 is none of them.
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-usage-'));
    const ca = join(dir, 'ca');
    const web = join(dir, 'web');
    assert.equal((await runCli(['identity', 'init', '--out', ca])).code, 0);
    assert.equal((await runCli(['identity', 'issue', '--name', 'web.shop.serviceaccount.identity.linkerd.cluster.local', '--ca-dir', ca, '--out', web])).code, 0);
    const { proc, ports } = await startProxy(['--inbound', '127.0.0.1:0', '--outbound', 'off', '--admin', 'off', '--ipv6', 'false', '--inbound-ips', '203.0.113.7', '--identity-dir', web], { t });
    // With the identity, the start-up warning names the counter the tunnel's refusal goes to.
    const warning = proc.logs.find((l) => l.msg === 'the inbound listener is bound to an address that is not one of the pod IPs');
    assert.match(String(warning?.['hint']), /is refused and counted \(inbound_tcp_accept_errors_total\{error="not_pod_ip"\}\)/, proc.stderr);
    const socket = net.createConnection({ host: '127.0.0.1', port: ports[0]! });
    socket.on('error', () => undefined);
    await withTimeout(new Promise((resolve) => socket.once('close', resolve)), 5_000, 'the refused connection to close');
    // Logged where operators look (rate-limited), with the pod IPs it was checked against.
    const refused = await proc.waitForLog((l) => l.msg === 'inbound connections refused: their destination is not one of the pod IPs', 'the not_pod_ip warning', 10_000);
    assert.equal(refused.level, 'warn');
    assert.equal(refused['count'], 1);
    assert.deepEqual(refused['podIps'], ['203.0.113.7']);
    assert.equal(refused['podIpsFrom'], '--inbound-ips');
    assert.match(String(refused['hint']), /pod's own IPs only \(203\.0\.113\.7, from --inbound-ips\).*--inbound-ips.*error="not_pod_ip"/);
  });

  test('two forwards on one address: the second is named alone, with the one that has the address', async () => {
    const first = '127.0.0.1:18000=127.0.0.1:8000';
    const second = '127.0.0.1:18000=127.0.0.1:9000';
    assertOneLineError(
      await runCli(['proxy', '--forward', first, '--forward', second]),
      /^meshpipe proxy: error: invalid forward "127\.0\.0\.1:18000=127\.0\.0\.1:9000" \(from --forward\): bind address 127\.0\.0\.1:18000 is already the bind of forward "127\.0\.0\.1:18000=127\.0\.0\.1:8000": expected each forward on an address of its own \(another port\) \(ERR_INVALID_CONFIG\)$/,
      'flags',
    );
    assertOneLineError(
      await runCli(['proxy'], { env: { MESHPIPE_FORWARD: `${first};${second}` } }),
      /^meshpipe proxy: error: invalid forward "127\.0\.0\.1:18000=127\.0\.0\.1:9000" \(from MESHPIPE_FORWARD\): bind address 127\.0\.0\.1:18000 is already the bind of forward "127\.0\.0\.1:18000=127\.0\.0\.1:8000"/,
      'env',
    );
  });
});

describe('init', () => {
  test('--proxy-uid 0 and --proxy-gid 0 are refused before any rule is planned; other ids still are', async () => {
    assertOneLineError(
      await runCli(['init', '--dry-run', '--proxy-uid', '0']),
      /^meshpipe init: error: --proxy-uid "0" is invalid: uid 0 is root, and connections made as root \(often the app's\) would bypass the proxy; expected the proxy's own uid 1-4294967294 .*\(ERR_INVALID_ARGUMENT\)$/,
      'uid 0',
    );
    assertOneLineError(
      await runCli(['init', '--dry-run', '--proxy-gid', '0']),
      /^meshpipe init: error: --proxy-gid "0" is invalid: gid 0 is the root group.*expected the proxy's own gid 1-4294967294 .*\(ERR_INVALID_ARGUMENT\)$/,
      'gid 0',
    );
    const ok = await runCli(['init', '--dry-run', '--proxy-uid', '1000', '--proxy-gid', '1000']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /--uid-owner 1000 /);
    assert.match(ok.stdout, /--gid-owner 1000 /);
  });
});

describe('identity', () => {
  test('an identity folder that is the CA folder, or no folder at all, is named for what it is', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-usage-'));
    const ca = join(dir, 'ca');
    const init = await runCli(['identity', 'init', '--out', ca]);
    assert.equal(init.code, 0, init.stderr);
    assertOneLineError(
      await runCli(['proxy', '--identity-dir', ca, '--forward', '127.0.0.1:0=127.0.0.1:1']),
      new RegExp(`^meshpipe proxy: error: ${ca}/tls\\.crt: cannot read the certificate chain \\(PEM\\): no such file \\(${ca} is a CA folder, written by meshpipe identity init; a proxy's identity folder is written by meshpipe identity issue --name NAME --ca-dir ${ca} --out DIR\\) \\(ERR_IDENTITY\\)$`),
      'the CA folder',
    );
    const missing = join(dir, 'wbe');
    assertOneLineError(
      await runCli(['identity', 'check', '--identity-dir', missing]),
      new RegExp(`^meshpipe identity: error: ${missing}/tls\\.crt: cannot read the certificate chain \\(PEM\\): no such file \\(the folder ${missing} does not exist\\) \\(ERR_IDENTITY\\)$`),
      'no folder',
    );
    // The folder issue writes is loaded.
    const web = join(dir, 'web');
    const issued = await runCli(['identity', 'issue', '--name', 'web.shop.serviceaccount.identity.linkerd.cluster.local', '--ca-dir', ca, '--out', web]);
    assert.equal(issued.code, 0, issued.stderr);
    const check = await runCli(['identity', 'check', '--identity-dir', web]);
    assert.equal(check.code, 0, check.stderr);
  });
});
