/**
 * `meshpipe run` never leaves its app behind, and as PID 1 it leaves no
 * zombies:
 * - meshpipe SIGKILLed: the app dies too (parent-death signal). Proof: the
 *   app shares meshpipe's stdout pipe, which closes only when every process
 *   holding it is gone.
 * - A second SIGTERM while the app ignores SIGTERM: meshpipe kills the app,
 *   reaps it, and only then exits 143.
 * - As PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`), a
 *   grandchild orphaned by the app is reaped by meshpipe once it exits, and
 *   the app's own exit code still passes through.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { CLI, childEnv, CliProcess, waitFor, withTimeout } from './helpers.js';
import { requireNetns } from './netns.js';

const NODE = process.execPath;
/** Prints its pid, ignores SIGTERM (saying so), runs until killed. */
const STUBBORN_APP = "process.on('SIGTERM', () => console.log('IGNORED SIGTERM')); console.log('APP ' + process.pid); setInterval(() => {}, 1000);";

/** A process state from /proc ('Z' for a zombie), or undefined when the pid is gone. */
function procState(pid: number): string | undefined {
  try {
    return /\) (\S) /.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

async function appPid(proc: CliProcess): Promise<number> {
  const m = await waitFor(() => /^APP (\d+)$/m.exec(proc.stdout), 'the app to start', 10_000);
  return Number(m[1]);
}

describe('meshpipe run: the app never outlives meshpipe', () => {
  test('meshpipe killed by SIGKILL: the app dies with it', async (t) => {
    const proc = new CliProcess(['run', '--forward', '127.0.0.1:0=127.0.0.1:1', '--', NODE, '-e', STUBBORN_APP]);
    const pid = await appPid(proc);
    t.after(() => {
      if (procState(pid) !== undefined && procState(pid) !== 'Z') process.kill(pid, 'SIGKILL');
    });
    proc.kill();
    // 'close' needs the app's end of the shared stdout pipe closed too.
    await withTimeout(proc.exited, 10_000, `the app (pid ${pid}) to die with meshpipe`);
    // The pipe closes when the dying app releases its files, a moment before the kernel
    // marks it a zombie (exit_files comes before exit_notify): wait for that state, bounded.
    await waitFor(() => {
      const state = procState(pid);
      return state === undefined || state === 'Z';
    }, `the app (pid ${pid}) gone or a zombie after meshpipe's SIGKILL (state ${procState(pid)})`, 5_000);
  });

  test('a second SIGTERM: the app, which ignores SIGTERM, is killed and reaped before meshpipe exits 143', async (t) => {
    const proc = new CliProcess(['run', '--forward', '127.0.0.1:0=127.0.0.1:1', '--', NODE, '-e', STUBBORN_APP]);
    t.after(() => proc.kill());
    const pid = await appPid(proc);
    t.after(() => {
      if (procState(pid) !== undefined && procState(pid) !== 'Z') process.kill(pid, 'SIGKILL');
    });
    proc.signal('SIGTERM');
    await waitFor(() => /^IGNORED SIGTERM$/m.test(proc.stdout), 'the app to get the first SIGTERM');
    proc.signal('SIGTERM');
    const exit = await withTimeout(proc.exited, 10_000, 'meshpipe and its app to exit on the second SIGTERM');
    assert.equal(exit.code, 143);
    assert.ok(proc.logs.some((l) => l.msg === 'second stop signal: killing the app before exiting'));
    assert.equal(procState(pid), undefined, 'meshpipe reaped the app itself before exiting');
  });
});

describe('meshpipe run as PID 1', () => {
  test('an orphaned grandchild is reaped, and the app exit code passes through', async (t) => {
    // unshare --pid needs root, as the namespace tests do.
    if (!(await requireNetns(t))) return;
    // The app: checks it runs under PID 1, orphans a short-lived grandchild (its
    // parent shell exits at once), then waits, bounded, for it to disappear
    // from /proc (a zombie stays until PID 1 reaps it).
    const app = [
      'echo "APP PPID $PPID"',
      'orphan=$(sh -c \'sleep 0.2 >/dev/null 2>&1 & echo $!\')',
      'echo "ORPHAN $orphan"',
      'i=0; while [ -e /proc/$orphan ] && [ $i -lt 200 ]; do state=$(cut -d" " -f3 /proc/$orphan/stat 2>/dev/null); sleep 0.05; i=$((i+1)); done',
      'if [ -e /proc/$orphan ]; then echo "ORPHAN LEFT state=$(cut -d" " -f3 /proc/$orphan/stat)"; else echo "ORPHAN REAPED last=$state"; fi',
      'exit 7',
    ].join('\n');
    const child = spawn('unshare', ['--pid', '--fork', '--mount-proc', NODE, CLI, 'run', '--forward', '127.0.0.1:0=127.0.0.1:1', '--', 'sh', '-c', app], {
      env: childEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    t.after(() => child.kill('SIGKILL'));
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const code = await withTimeout(new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c))), 30_000, 'meshpipe run under unshare to exit');
    assert.match(out, /^APP PPID 1$/m, `meshpipe is PID 1 of the namespace\n${out}\n${err}`);
    assert.match(err, /"pid1":true/);
    assert.match(out, /^ORPHAN REAPED/m, `${out}\n${err}`);
    assert.equal(code, 7, err);
    assert.ok(existsSync('/proc/self'), 'sanity');
  });
});
