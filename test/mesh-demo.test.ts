/**
 * The README's "try the mesh on one machine" script, examples/mesh-demo.sh,
 * run as a user would run it: two network-namespace pods with `meshpipe
 * init`'s rules and transparent sidecars with their own identities, a curl
 * from one pod to the other's app. The script checks each step itself (the
 * answer, the capture showing no plaintext on the wire, both sidecars'
 * metrics naming the verified peer, `meshpipe explain`) and exits 1 naming
 * the step that failed; this test holds it to that, and to leaving nothing
 * behind: no namespace, no process, no state folder, whether it succeeds,
 * fails at a step, or is interrupted with Ctrl-C. `--keep` leaves the pods
 * up, a second run refuses to start over them, and `--clean` removes them.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { requireNetns, run } from './netns.js';

const SCRIPT = fileURLToPath(new URL('../../examples/mesh-demo.sh', import.meta.url));
const NAMESPACES = ['meshpipe-demo-client', 'meshpipe-demo-server'];
const STATE = '/run/meshpipe-demo';

async function namespaces(): Promise<string[]> {
  const r = await run('ip', ['netns', 'list']);
  return r.stdout.split('\n').map((l) => l.split(' ')[0]!).filter((n) => NAMESPACES.includes(n));
}

/** Processes whose command line names the demo's state folder (the sidecars, tcpdump). */
async function demoProcesses(): Promise<string[]> {
  const r = await run('ps', ['-eo', 'pid=,args=']);
  return r.stdout.split('\n').filter((l) => l.includes(STATE));
}

async function demo(...args: string[]): Promise<{ code: number | null; out: string }> {
  return demoWith(process.env, ...args);
}

async function demoWith(env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ code: number | null; out: string }> {
  const r = await run('bash', [SCRIPT, ...args], { timeoutMs: 120_000, env });
  return { code: r.code, out: r.stdout + r.stderr };
}

/** Nothing of the demo is left: no namespace, no process, no state folder. */
async function assertNothingLeft(): Promise<void> {
  assert.deepEqual(await namespaces(), [], 'the namespaces are removed');
  assert.deepEqual(await demoProcesses(), [], 'no app, sidecar or capture is left running');
  assert.equal(existsSync(STATE), false, `${STATE} is removed`);
}

describe('examples/mesh-demo.sh', () => {
  test('two pods meshed with mutual TLS: the request crosses encrypted, both sidecars name the verified peer, nothing is left behind', async (t) => {
    if (!(await requireNetns(t))) return;
    t.after(() => demo('--clean'));
    assert.deepEqual(await namespaces(), [], 'no demo pods before the test (a --keep run left some?)');

    // A caller's MESHPIPE_* settings are not the demo's: a config file that does not exist
    // would make every sidecar refuse to start if the script passed it on.
    const r = await demoWith({ ...process.env, MESHPIPE_CONFIG: '/nonexistent/meshpipe.yaml', MESHPIPE_LOG_LEVEL: 'silent' });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /hello from the server pod: GET \/meshpipe-demo-\d+ from 10\.77\.0\.2/);
    // CI installs tcpdump: the capture step must have run, not been passed over.
    assert.match(r.out, /On the wire between the pods: [1-9]\d* packets, all on port 4143, the tunnel \(on port 8080: 0\)/);
    assert.match(r.out, /appears in none of them/);
    assert.match(r.out, /client pod, outbound: tcp_open_total\{[^}]*tls="true"[^}]*server_id="server\.demo\.serviceaccount\.identity\.linkerd\.cluster\.local"/);
    assert.match(r.out, /server pod, inbound: +tcp_open_total\{[^}]*tls="true"[^}]*client_id="client\.demo\.serviceaccount\.identity\.linkerd\.cluster\.local"/);
    assert.match(r.out, /server pod, HTTP: +request_total\{direction="inbound"/);
    assert.match(r.out, /mesh: mutual TLS to server\.demo\.serviceaccount\.identity\.linkerd\.cluster\.local through its tunnel port 4143/);

    await assertNothingLeft();
  });

  test('a step that fails exits 1 naming it, shows the logs, and removes everything, even with --keep', async (t) => {
    if (!(await requireNetns(t))) return;
    t.after(() => demo('--clean'));
    // A tcpdump that fails the way a real one does without the capability: the capture step
    // fails after the pods and sidecars are up.
    const bin = mkdtempSync(join(tmpdir(), 'mesh-demo-bin-'));
    t.after(() => rmSync(bin, { recursive: true, force: true }));
    writeFileSync(join(bin, 'tcpdump'), '#!/bin/sh\necho "tcpdump: eth0: You don\'t have permission to capture on that device" >&2\nexit 1\n');
    chmodSync(join(bin, 'tcpdump'), 0o755);

    const r = await demoWith({ ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` }, '--keep');
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /both sidecars ready/);
    assert.match(r.out, /mesh-demo: FAILED: tcpdump exited before logging/);
    assert.match(r.out, /You don't have permission to capture/, 'the failing step\'s log is shown');
    await assertNothingLeft();
  });

  test('Ctrl-C while the pods are up removes everything', async (t) => {
    if (!(await requireNetns(t))) return;
    t.after(() => demo('--clean'));
    // A capture that never starts: the script waits for it with both sidecars up, so the
    // interrupt lands there and not after the script is done. Its command line names the state
    // folder, so a capture left running would show in demoProcesses().
    const bin = mkdtempSync(join(tmpdir(), 'mesh-demo-bin-'));
    t.after(() => rmSync(bin, { recursive: true, force: true }));
    writeFileSync(join(bin, 'tcpdump'), '#!/bin/sh\nwhile :; do sleep 1; done\n');
    chmodSync(join(bin, 'tcpdump'), 0o755);

    const child = spawn('bash', [SCRIPT, '--keep'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` } });
    let out = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const closed = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('A request from the client pod')) resolve();
      });
      void closed.then(() => reject(new Error(`the demo ended before its sidecars were ready:\n${out}`)));
    });
    assert.equal((await demoProcesses()).length > 0, true, 'the sidecars are running when interrupted');
    child.kill('SIGINT');
    assert.equal(await closed, 130, out);
    await assertNothingLeft();
  });

  test('--keep leaves the pods serving; a second run refuses; --clean removes everything', async (t) => {
    if (!(await requireNetns(t))) return;
    t.after(() => demo('--clean'));

    const kept = await demo('--keep');
    assert.equal(kept.code, 0, kept.out);
    assert.match(kept.out, /The pods keep running/);
    assert.deepEqual((await namespaces()).sort(), [...NAMESPACES].sort());
    // The printed way to use them works: a request through both sidecars, as the app's uid.
    const curl = await run('ip', ['netns', 'exec', 'meshpipe-demo-client', 'setpriv', '--reuid', '1000', '--regid', '1000', '--clear-groups',
      'curl', '-sS', '--max-time', '10', 'http://10.77.0.2:8080/again']);
    assert.equal(curl.code, 0, curl.stderr);
    assert.equal(curl.stdout, 'hello from the server pod: GET /again from 10.77.0.2\n');

    const again = await demo();
    assert.equal(again.code, 2, again.out);
    assert.match(again.out, /the demo pods exist already \(an earlier --keep\): remove them with .*--clean/);

    const cleaned = await demo('--clean');
    assert.equal(cleaned.code, 0, cleaned.out);
    assert.deepEqual(await namespaces(), []);
    assert.deepEqual(await demoProcesses(), []);
    assert.equal(existsSync(STATE), false);
  });
});
