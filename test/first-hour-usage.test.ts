/**
 * A third walk through a new user's first hour (after first-hour.test.ts and
 * first-hour-input.test.ts), through the real CLI, for what was still rough:
 *
 * - `meshpipe explain` used node's own argument errors ("Option '--port
 *   <value>' argument missing", a two-line "ambiguous" message for `--port
 *   --json`); it now shares the other commands' parser: the flag, what it
 *   takes, one line.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { runCli } from './helpers.js';

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
});
