/**
 * Wrong input in the first hour, through the real CLI: each mistake a new
 * user makes gets one line on stderr that names what is wrong and what is
 * expected, a stable code, and exit 2, before anything listens.
 *
 * - a typo in a flag names the flag it was probably meant to be (proxy, run,
 *   explain, identity, inject);
 * - a flag whose value was forgotten (`--drain-timeout --log-format text`)
 *   is blamed, not the stray word after the next flag;
 * - a config file that does not parse is reported in one line (no code
 *   frame), a folder given as the config file is named as one; a forward in
 *   the file's object form names its unknown key, missing key or non-string
 *   value (it only said "expected BIND=TARGET");
 * - a forward target written as a URL is refused with the host:port to write;
 * - a forward that listens on the admin server's address is a config error
 *   naming --admin, not "address in use" (exit 1) after the admin server
 *   bound;
 * - a --manifests or --annotations path that does not exist stops the start
 *   (it used to run with the defaults and a warning), from flags and env;
 * - help names the variable of a --no-X flag with its value (MESHPIPE_HTTP=false:
 *   MESHPIPE_HTTP alone reads as the way to turn HTTP on); `meshpipe identity`
 *   alone is a usage error with its help on stderr, as `meshpipe` alone;
 * - `meshpipe inject` (and uninject) without a FILE at a terminal says what
 *   it needs instead of waiting silently for stdin; a FILE that does not
 *   exist says "no such file" and what is expected;
 * - the second Ctrl-C/SIGTERM's line says how many open connections the
 *   forced exit cuts;
 * - `listener bound` says the mode a forward's connections get and where it
 *   comes from (it said `mode=policy` for every forward without `mode=`).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, childEnv, connect, freePort, HOST, isListening, runCli, startEchoServer, startProxy, withTimeout } from './helpers.js';

/** Asserts a usage error: exit 2, exactly one line on stderr matching `pattern`, nothing on stdout. */
function assertOneLineError(r: { code: number | null; stdout: string; stderr: string }, pattern: RegExp, what: string): void {
  assert.equal(r.code, 2, `${what}: exit 2 (stderr: ${r.stderr})`);
  assert.equal(r.stdout, '', `${what}: nothing on stdout`);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `${what}: one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0]!, pattern, what);
}

describe('flags', () => {
  test('a typo in a flag names the closest one, for every command', async () => {
    const cases: [string[], RegExp][] = [
      [['proxy', '--forwrd', '127.0.0.1:0=127.0.0.1:1'], /^meshpipe proxy: error: unknown option --forwrd for meshpipe proxy \(did you mean --forward\?\); .*\(ERR_INVALID_ARGUMENT\)$/],
      [['run', '--drain-timout', '1s', '--', 'true'], /^meshpipe run: error: unknown option --drain-timout for meshpipe run \(did you mean --drain-timeout\?\); .*\(ERR_INVALID_ARGUMENT\)$/],
      [['explain', '--prot', '3306'], /^meshpipe explain: error: unknown option --prot for meshpipe explain \(did you mean --port\?\); .*\(ERR_INVALID_ARGUMENT\)$/],
      [['identity', 'issue', '--nme', 'web.ns'], /^meshpipe identity: error: unknown option --nme for meshpipe identity issue \(did you mean --name\?\); .*\(ERR_INVALID_ARGUMENT\)$/],
      [['inject', '--dry-runn'], /^meshpipe inject: error: unknown option --dry-runn for meshpipe inject \(did you mean --dry-run\?\); .*\(ERR_INVALID_ARGUMENT\)$/],
    ];
    for (const [args, pattern] of cases) assertOneLineError(await runCli(args), pattern, args.join(' '));
    // Nothing to guess from: no suggestion rather than a wrong one.
    const short = await runCli(['proxy', '-x']);
    assertOneLineError(short, /^meshpipe proxy: error: unknown option -x for meshpipe proxy; run meshpipe proxy --help for the options \(ERR_INVALID_ARGUMENT\)$/, '-x');
  });

  test('a flag whose value was forgotten is named, not the word after the next flag', async () => {
    const r = await runCli(['proxy', '--forward', `${HOST}:0=${HOST}:1`, '--drain-timeout', '--log-format', 'text']);
    assertOneLineError(r, /^meshpipe proxy: error: option --drain-timeout needs a value \(got the option --log-format instead\): --drain-timeout DURATION \(ERR_INVALID_ARGUMENT\)$/, 'missing value');
    // A value that really starts with -- can still be given inline.
    const inline = await runCli(['proxy', '--forward', `${HOST}:0=${HOST}:1`, '--drain-timeout=--5s']);
    assertOneLineError(inline, /^meshpipe proxy: error: invalid drainTimeout "--5s" \(from --drain-timeout\)/, 'inline value');
  });
});

describe('help', () => {
  test('a --no-X flag names its variable with the value that does the same', async () => {
    const r = await runCli(['proxy', '--help']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /--no-http\n.*\(default: HTTP proxied per request; env MESHPIPE_HTTP=false\)\n/);
    assert.match(r.stdout, /--no-admin-shutdown\n.*\(default: shutdown enabled; env MESHPIPE_ADMIN_SHUTDOWN=false\)\n/);
  });

  test('meshpipe identity alone: exit 2, its help on stderr, nothing on stdout', async () => {
    const r = await runCli(['identity']);
    assert.equal(r.code, 2);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^Usage: meshpipe identity init/);
    const help = await runCli(['identity', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^Usage: meshpipe identity init/);
  });
});

describe('config file', () => {
  test('a file that does not parse is one line with the place; a folder is named as one', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-firsthour-'));
    const bad = join(dir, 'meshpipe.yaml');
    writeFileSync(bad, 'forward: [\n  - 127.0.0.1:0=127.0.0.1:1\n');
    assertOneLineError(
      await runCli(['proxy', '--config', bad]),
      new RegExp(`^meshpipe proxy: error: config file ${bad} does not parse as YAML or JSON: .* at line 2, column 3 \\(ERR_INVALID_CONFIG\\)$`),
      'bad YAML',
    );
    assertOneLineError(
      await runCli(['proxy', '--config', dir]),
      new RegExp(`^meshpipe proxy: error: cannot read config file ${dir}: it is a folder; expected a YAML or JSON file \\(ERR_INVALID_CONFIG\\)$`),
      'a folder',
    );
  });
});

describe('config file forwards', () => {
  test('the object form names an unknown key, a missing one and a value that is not a string', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-firsthour-'));
    const cases: [string, RegExp][] = [
      ['forward:\n  - bnd: 127.0.0.1:0\n    target: 127.0.0.1:6379\n', /: unknown key "bnd" \(did you mean "bind"\?\): a forward object has bind, target, mode, direction \(ERR_INVALID_CONFIG\)$/],
      ['forward:\n  - bind: 127.0.0.1:0\n', /: "target" is missing: a forward object needs bind and target \(mode and direction are optional\) \(ERR_INVALID_CONFIG\)$/],
      ['forward:\n  - bind: 127.0.0.1:0\n    target: 6379\n', /: "target" is 6379: expected a string, e\.g\. .*\(ERR_INVALID_CONFIG\)$/],
    ];
    for (const [i, [text, pattern]] of cases.entries()) {
      const file = join(dir, `forward-${i}.yaml`);
      writeFileSync(file, text);
      const r = await runCli(['proxy', '--config', file]);
      assertOneLineError(r, new RegExp(`^meshpipe proxy: error: invalid forward .* \\(from config file ${file}, key forward\\)${pattern.source}`), text);
    }
  });
});

describe('addresses', () => {
  test('a forward target written as a URL: the host:port to write instead', async () => {
    const cases: [string, string][] = [['http://127.0.0.1:8000/', '127.0.0.1:8000'], ['https://example.com/x', 'example.com:443'], ['http://db.internal', 'db.internal:80']];
    for (const [url, bare] of cases) {
      const r = await runCli(['proxy', '--forward', `${HOST}:0=${url}`]);
      assertOneLineError(
        r,
        new RegExp(`: target address "${url.replace(/\./g, '\\.')}": expected host:port without a scheme or path \\(meshpipe forwards TCP\\), e\\.g\\. ${bare.replace(/\./g, '\\.')} \\(ERR_INVALID_CONFIG\\)$`),
        url,
      );
    }
  });

  test('a forward on the admin server\'s address is a config error naming --admin; nothing listens', async () => {
    const port = await freePort();
    for (const bind of [`${HOST}:${port}`, `0.0.0.0:${port}`]) {
      const r = await runCli(['proxy', '--forward', `${bind}=${HOST}:1`, '--admin', `${HOST}:${port}`]);
      assertOneLineError(
        r,
        new RegExp(`^meshpipe proxy: error: --forward ${bind.replace(/\./g, '\\.')}=127\\.0\\.0\\.1:1 listens on the admin server's address \\(127\\.0\\.0\\.1:${port}, --admin\\): .*--admin ADDR.* \\(ERR_INVALID_CONFIG\\)$`),
        bind,
      );
      assert.equal(await isListening(port), false, `nothing listens on ${port} after the refusal`);
    }
  });
});

describe('policy files', () => {
  test('a --manifests or --annotations path that does not exist stops the start, from flags and env', async () => {
    const missing = join(mkdtempSync(join(tmpdir(), 'meshpipe-firsthour-')), 'cluster');
    const forward = ['--forward', `${HOST}:0=${HOST}:1`];
    assertOneLineError(
      await runCli(['proxy', ...forward, '--manifests', missing]),
      new RegExp(`^meshpipe proxy: error: manifests "${missing}" \\(from --manifests\\): no such file or folder; expected a Kubernetes manifest file or a folder of them \\(ERR_INVALID_CONFIG\\)$`),
      '--manifests',
    );
    assertOneLineError(
      await runCli(['run', ...forward, '--', 'true'], { env: childEnv({ MESHPIPE_ANNOTATIONS: missing }) }),
      new RegExp(`^meshpipe run: error: annotations "${missing}" \\(from MESHPIPE_ANNOTATIONS\\): no such file or folder; expected the workload's annotations file .*\\(ERR_INVALID_CONFIG\\)$`),
      'MESHPIPE_ANNOTATIONS',
    );
  });
});

describe('start-up lines', () => {
  test('listener bound says the mode each forward\'s connections get, and where it comes from', async (t) => {
    const { bound } = await startProxy([
      '--forward', `${HOST}:0=${HOST}:8000`,
      '--forward', `${HOST}:0=${HOST}:6379`,
      '--forward', `${HOST}:0=${HOST}:7000`,
      '--forward', `${HOST}:0=${HOST}:8000,mode=http1`,
      '--forward', `${HOST}:0=localhost:8000`,
      '--opaque-ports', '7000',
    ], { t });
    const modes = bound.map((l) => [l['target'], l['mode'], l['policy']]);
    assert.deepEqual(modes, [
      [`${HOST}:8000`, 'detect', 'detect: nothing configured for it'],
      [`${HOST}:6379`, 'opaque', 'opaque: default opaque ports (25,587,3306,4444,5432,6379,9300,11211) for loopback (local --forward targets)'],
      [`${HOST}:7000`, 'opaque', 'opaque: --opaque-ports flag'],
      [`${HOST}:8000`, 'http1', undefined],
      ['localhost:8000', 'policy', undefined],
    ]);
  });
});

describe('inject', () => {
  test('without a FILE at a terminal it says what it needs instead of waiting for stdin', async () => {
    for (const command of ['inject', 'uninject']) {
      // A pty (util-linux `script`) makes the command's stdin a terminal; ours stays open, so
      // a command that reads it waits until the timeout.
      const child = spawn('script', ['-qfec', `'${process.execPath}' '${CLI}' ${command}`, '/dev/null'], { env: childEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      const exited = once(child, 'close');
      try {
        const [code] = (await withTimeout(exited, 10_000, `meshpipe ${command} at a terminal to exit; output so far: ${out}`)) as [number | null];
        assert.equal(code, 2, out);
        assert.match(out, new RegExp(`meshpipe ${command}: error: meshpipe ${command} needs manifests: a FILE \\(meshpipe ${command} deploy\\.yaml\\), or piped in \\(kubectl get deploy web -o yaml \\| meshpipe ${command} -\\); stdin is a terminal \\(ERR_INVALID_ARGUMENT\\)`));
      } finally {
        child.kill('SIGKILL');
      }
    }
  });

  test('a FILE that does not exist: no such file, and what is expected', async () => {
    const r = await runCli(['inject', '/nonexistent/shop.yaml']);
    assertOneLineError(r, /^meshpipe inject: error: cannot read \/nonexistent\/shop\.yaml: no such file; expected a file of Kubernetes manifests \(YAML or JSON\), or - for stdin \(ERR_INVALID_ARGUMENT\)$/, 'missing FILE');
  });
});

describe('inputs read once, bounded and checked', () => {
  /** Runs `meshpipe ARGS` with `input` on stdin. */
  async function withStdin(args: string[], input: Buffer): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const child = spawn(process.execPath, [CLI, ...args], { env: childEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
    const [code] = (await withTimeout(once(child, 'close'), 30_000, `meshpipe ${args.join(' ')}`)) as [number | null];
    return { code, stdout, stderr };
  }

  test('--config that is a device or a folder is refused naming what it is, never read without end', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-input-'));
    for (const [path, what] of [['/dev/zero', 'a character device'], [dir, 'a folder']] as const) {
      const r = await runCli(['proxy', '--forward', '127.0.0.1:0=127.0.0.1:9', '--admin', 'off', '--config', path], { timeoutMs: 20_000 });
      assertOneLineError(r, new RegExp(`^meshpipe proxy: error: cannot read config file ${path}: it is ${what}; expected a YAML or JSON file \\(ERR_INVALID_CONFIG\\)$`), path);
    }
    writeFileSync(join(dir, 'big.yaml'), `# ${'x'.repeat(1024 * 1024)}\n`);
    const big = await runCli(['proxy', '--forward', '127.0.0.1:0=127.0.0.1:9', '--admin', 'off', '--config', join(dir, 'big.yaml')], { timeoutMs: 20_000 });
    assertOneLineError(big, /cannot read config file \S+big\.yaml: \d+ bytes, more than the 1048576 allowed/, 'an oversized config');
  });

  test('explain --annotations from a device is refused, not read until the heap runs out', async () => {
    const r = await runCli(['explain', '--port', '80', '--annotations', '/dev/zero'], { timeoutMs: 20_000 });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--annotations \/dev\/zero: a character device, not a regular file/);
  });

  test('inject: aliases within the budget are expanded; an alias bomb, deep nesting and non-UTF-8 bytes are errors naming where', async () => {
    const deploy = (extra: string) => `apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: web:1\n${extra}`;
    // One anchor used 120 times (more than the yaml library's default of 100).
    const aliases = `${deploy('        env:\n')}${Array.from({ length: 120 }, (_, i) => `        - {name: V${i}, value: *v}\n`).join('')}`.replace('image: web:1', 'image: &v web:1');
    const ok = await withStdin(['inject', '-'], Buffer.from(aliases));
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /linkerd\.io\/inject|meshpipe/);
    // A billion laughs.
    const levels = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]'];
    for (let i = 1; i < 9; i++) levels.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(10).fill(`*${String.fromCharCode(96 + i)}`).join(',')}]`);
    const bomb = await withStdin(['inject', '-'], Buffer.from(`${levels.join('\n')}\n`));
    assertOneLineError(bomb, /^meshpipe inject: error: stdin:1: document 1: YAML aliases would expand its \d+ nodes by more than 1000000 \(an alias bomb\?\); expected manifests without such aliases \(ERR_INVALID_ARGUMENT\)$/, 'an alias bomb');
    const deep = await withStdin(['inject', '-'], Buffer.from(`${'['.repeat(200_000)}${']'.repeat(200_000)}\n`));
    assert.equal(deep.code, 2, deep.stderr);
    assert.doesNotMatch(deep.stderr, /internal error| {4}at /, 'no stack trace');
    const latin1 = Buffer.concat([Buffer.from(deploy('')), Buffer.from('---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: "caf'), Buffer.from([0xe9]), Buffer.from('"}\n')]);
    const bad = await withStdin(['inject', '-'], latin1);
    assertOneLineError(bad, /^meshpipe inject: error: stdin:19: not UTF-8; meshpipe inject reads manifests as UTF-8 text/, 'non-UTF-8');
    assert.equal(bad.stdout, '', 'nothing written back altered');
  });

  test('inject reads at most 32 MiB of manifests from stdin', async () => {
    const r = await withStdin(['inject', '-'], Buffer.alloc(33 * 1024 * 1024, 0x23));
    assertOneLineError(r, /^meshpipe inject: error: stdin: more than the 33554432 bytes of manifests meshpipe inject reads/, 'oversized stdin');
  });
});

describe('shutdown', () => {
  test('a second signal says how many open connections the forced exit cuts', async (t) => {
    const echo = await startEchoServer(t);
    const { proc, ports } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port},mode=opaque`, '--drain-timeout', '1m'], { t });
    const client = await connect(ports[0]!);
    client.on('error', () => undefined);
    t.after(() => client.destroy());
    // The connection is through (echoed) before the first signal.
    client.write('x');
    await withTimeout(once(client, 'data'), 5000, 'the echo');
    proc.signal('SIGTERM');
    await proc.waitForLog((l) => l.msg === 'drain started', '"drain started"');
    proc.signal('SIGTERM');
    const line = await proc.waitForLog((l) => l.msg === 'second signal: exiting now', 'the forced exit line');
    assert.equal(line['cut'], 1, JSON.stringify(line));
    assert.equal(line['exitCode'], 143);
    assert.equal((await proc.exited).code, 143);
  });
});
