/**
 * Running the proxy as root after `meshpipe init` (which exempts uid 2102)
 * would loop its own connections back into it: the proxy reads the rules at
 * start (root can) and refuses, exit 2, saying which uid to run as. Without
 * the rules, or under the exempt uid, it starts.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { createPod, requireNetns } from './netns.js';
import { SIDECAR_UID } from './netns-sidecar.js';

const CLI = fileURLToPath(new URL('../ts/cli/main.js', import.meta.url));
const PROXY = [CLI, 'proxy', '--inbound', 'off', '--outbound', '127.0.0.1:4140', '--admin', 'off', '--drain-timeout', '0'];

describe('the proxy\'s uid after meshpipe init', () => {
  test('as root it refuses to start (exit 2, naming the exempt uid); before init, and as uid 2102, it starts', async (t) => {
    if (!(await requireNetns(t))) return;
    const pod = await createPod('uid');
    t.after(() => pod.cleanup());

    // No rules yet: root may run it (nothing redirects its connections).
    const before = pod.spawn(process.execPath, PROXY);
    await before.waitFor(/"msg":"proxy ready"/, 15_000);
    await before.stop(5000);

    const init = await pod.exec(process.execPath, [CLI, 'init']);
    assert.equal(init.code, 0, init.stderr);

    const root = await pod.exec(process.execPath, PROXY, { timeoutMs: 20_000 });
    assert.equal(root.code, 2, `${root.stdout}\n${root.stderr}`);
    assert.match(root.stderr, /^meshpipe proxy: error: meshpipe init redirects this network namespace's outgoing TCP and exempts uid 2102, but this proxy runs as uid 0 \(root\): its own connections would be redirected back into its outbound listener, in a loop\. Run it as uid 2102, e\.g\. setpriv --reuid=2102 /m);
    assert.doesNotMatch(root.stderr, /listener bound/);

    const exempt = pod.spawn(process.execPath, PROXY, { uid: SIDECAR_UID });
    await exempt.waitFor(/"msg":"proxy ready"/, 15_000);
    await exempt.stop(5000);
  });
});
