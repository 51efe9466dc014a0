/**
 * The README's quick start, run as written, in a fresh clone: the commands
 * are read from the README's fenced blocks (marked `<!-- quickstart-... -->`),
 * so this test breaks when the README changes in a way that no longer works.
 *
 * - install: `git clone` of this repository (its committed HEAD) into a
 *   temporary folder, then the install block (`npm install`, `npm link`,
 *   `meshpipe --version`) there. npm's global prefix is a temporary folder
 *   (npm_config_prefix), so `npm link` touches nothing of the machine, and
 *   its bin folder goes first on PATH, as it is on a user's. The native addon
 *   of this checkout is copied into the clone with its source stamp: the
 *   install script reuses it when the clone's Rust sources are the same (as
 *   the README says), and otherwise builds (with this checkout's cargo target
 *   folder, incrementally).
 * - run and try: inside a fresh network namespace (so the README's fixed
 *   ports 8000, 18000 and 4191 cannot collide with anything), the run block's
 *   commands start in the background (a web server, the proxy), then the try
 *   block's commands must succeed (a request through the proxy; its metrics
 *   show the HTTP/1 detection); Ctrl-C (SIGINT) drains the proxy, exit 0,
 *   with the drain hint in its log.
 * - explain: the explain block's command prints exactly the README's output block.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, waitFor, withTimeout } from './helpers.js';
import { createPod, requireNetns, run } from './netns.js';

/** The fenced block right after `<!-- name -->`. */
function block(readme: string, name: string): string {
  const at = readme.indexOf(`<!-- ${name} -->`);
  assert.ok(at >= 0, `README has no <!-- ${name} --> block`);
  const m = /```[a-z]*\n([\s\S]*?)```/.exec(readme.slice(at));
  assert.ok(m, `README: no fenced block after <!-- ${name} -->`);
  return m[1]!;
}

/** The commands of a shell block: every line that is not blank or a comment. */
function commands(text: string): string[] {
  return text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
}

test('the README quick start works as written in a fresh clone', { timeout: 900_000 }, async (t) => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const install = commands(block(readme, 'quickstart-install'));
  const start = commands(block(readme, 'quickstart-run'));
  const tryIt = commands(block(readme, 'quickstart-try'));
  const explain = commands(block(readme, 'quickstart-explain'));
  const explainOutput = block(readme, 'quickstart-explain-output');
  assert.deepEqual(install, ['npm install', 'npm link', 'meshpipe --version'], 'the install block (update this test with the README)');

  const home = mkdtempSync(join(tmpdir(), 'meshpipe-readme-'));
  const clone = join(home, 'meshpipe');
  const prefix = join(home, 'npm-prefix');
  const cloned = await run('git', ['clone', '--quiet', ROOT, clone], { timeoutMs: 120_000 });
  assert.equal(cloned.code, 0, cloned.stderr);
  // The addon of this checkout, with its stamp: reused when the clone's Rust sources hash the same.
  for (const f of readdirSync(join(ROOT, 'native')).filter((f) => f.endsWith('.node') || f === '.source-hash')) {
    cpSync(join(ROOT, 'native', f), join(clone, 'native', f));
  }
  const env: NodeJS.ProcessEnv = {
    ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MESHPIPE_') && !k.startsWith('npm_'))),
    PATH: `${join(prefix, 'bin')}:${process.env['PATH'] ?? ''}`,
    npm_config_prefix: prefix,
    npm_config_prefer_offline: 'true',
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
    CARGO_TARGET_DIR: join(ROOT, 'target'),
  };
  const sh = (cmd: string, timeoutMs = 600_000) => run('bash', ['-o', 'pipefail', '-c', `cd ${JSON.stringify(clone)} && ${cmd}`], { env, timeoutMs });

  for (const cmd of install) {
    const r = await sh(cmd);
    assert.equal(r.code, 0, `${cmd}:\n${r.stdout}\n${r.stderr}`);
    if (cmd === 'meshpipe --version') assert.equal(r.stdout, `${(JSON.parse(readFileSync(join(clone, 'package.json'), 'utf8')) as { version: string }).version}\n`);
  }
  assert.ok(existsSync(join(prefix, 'bin', 'meshpipe')), 'npm link put meshpipe in the prefix\'s bin');

  // The explain block prints exactly the README's output.
  assert.equal(explain.length, 1);
  const explained = await sh(explain[0]!, 60_000);
  assert.equal(explained.code, 0, explained.stderr);
  assert.equal(explained.stdout, explainOutput, 'meshpipe explain --manifests examples/k8s/ prints the README\'s output');

  // Run and try, in a namespace of their own.
  if (!(await requireNetns(t))) return;
  const pod = await createPod('readme');
  t.after(() => pod.cleanup());
  const background = start.map((cmd) => {
    const line = cmd.replace(/\s*&$/, '');
    // exec: the pid is the command's own, so Ctrl-C (SIGINT) reaches it.
    return { cmd: line, proc: pod.spawn('bash', ['-c', `cd ${JSON.stringify(clone)} && exec ${line}`], { env }) };
  });
  const proxy = background.find((b) => b.cmd.startsWith('meshpipe proxy'));
  assert.ok(proxy, 'the run block starts meshpipe proxy');
  await proxy.proc.waitFor(/"msg":"proxy ready"/, 30_000);
  // The web server has started once it answers (it is not the proxy's to announce).
  await waitFor(async () => (await pod.exec('curl', ['-sS', '-o', '/dev/null', 'http://127.0.0.1:8000/'], { timeoutMs: 5000 })).code === 0, 'the web server', 15_000);
  const outputs: string[] = [];
  for (const cmd of tryIt) {
    const r = await pod.exec('bash', ['-o', 'pipefail', '-c', `cd ${JSON.stringify(clone)} && ${cmd}`], { env, timeoutMs: 30_000 });
    assert.equal(r.code, 0, `${cmd}:\n${r.stdout}\n${r.stderr}`);
    outputs.push(r.stdout);
  }
  assert.match(outputs[0] ?? '', /<!DOCTYPE HTML|<html/i, 'the page came through the proxy');
  assert.match(outputs[1] ?? '', /^outbound_tcp_detect_http_results_total\{result="http\/1",target_port="8000"\} 1$/m, 'the metrics show the HTTP/1 detection');

  // Ctrl-C: the drain, its hint, exit 0.
  const exited = once(proxy.proc.child, 'close');
  process.kill(proxy.proc.pid, 'SIGINT');
  const [code] = (await withTimeout(exited, 15_000, 'the proxy to drain and exit after Ctrl-C')) as [number | null];
  assert.equal(code, 0, proxy.proc.output());
  assert.match(proxy.proc.output(), /"hint":"draining: open connections get up to 30s \(--drain-timeout\) to finish; a second Ctrl-C exits at once"/);
  assert.match(proxy.proc.output(), /"msg":"drain finished"/);
  for (const b of background) if (b !== proxy) await b.proc.stop(5000);
});
