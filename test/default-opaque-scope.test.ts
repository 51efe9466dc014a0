/**
 * Where the default opaque ports apply when the proxy has no policy source
 * (no annotations, manifests or Kubernetes watch), checked three ways that
 * must agree: the real proxy (what its detection did, from its counters),
 * `meshpipe explain` (its verdict for the same port and destination), and
 * `meshpipe proxy --help` (what it promises). Outbound they apply inside
 * --cluster-networks (and to loopback), not to every destination.
 *
 * The destination is a server in another network namespace (10.250.n.2), so
 * "outside the cluster networks" is a real address, made outside by
 * `--cluster-networks 192.168.0.0/16`. The server speaks first: on a
 * detected port the proxy's server-first race decides (`server_first`), on
 * an opaque port detection is skipped (`opaque`).
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { createPodPair, requireNetns, startResponder, tcpRequest, type Pod } from './netns.js';
import { detectResults } from './netns-sidecar.js';
import { runCli } from './helpers.js';
import type { EngineSnapshot } from '../ts/engine/native.js';

const PORT = 7777;
const ADMIN = '127.0.0.1:4191';
const CLI = fileURLToPath(new URL('../ts/cli/main.js', import.meta.url));

/** Runs a plain forwarding proxy in `pod`, makes one connection through it, returns its detection results for PORT. */
async function detectThroughProxy(pod: Pod, target: string, flags: readonly string[]): Promise<Record<string, number>> {
  const proc = pod.spawn(process.execPath, [CLI, 'proxy', '--forward', `127.0.0.1:15000=${target}:${PORT}`, '--admin', ADMIN, '--drain-timeout', '1s', ...flags], {
    env: { ...process.env, MESHPIPE_LOG_LEVEL: 'info' },
  });
  try {
    await proc.waitFor(/"msg":"proxy ready"/, 15_000);
    assert.match(await tcpRequest(pod, '127.0.0.1', 15000), /^server local=/);
    const r = await pod.exec('curl', ['-sS', '--max-time', '5', `http://${ADMIN}/snapshot`], { timeoutMs: 10_000 });
    assert.equal(r.code, 0, r.stderr);
    return detectResults(JSON.parse(r.stdout) as EngineSnapshot, 'outbound', PORT);
  } finally {
    await proc.stop(5000);
  }
}

/** explain's verdict (the compiled policy's mode) for PORT to `destination`. */
async function explainMode(destination: string, flags: readonly string[]): Promise<string> {
  const r = await runCli(['explain', '--port', String(PORT), '--destination', destination, '--json', ...flags]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { ports: { verdicts: { mode: string }[] }[] };
  return j.ports[0]!.verdicts[0]!.mode;
}

describe('default opaque ports without a policy source', () => {
  test('outbound: opaque inside --cluster-networks, detected outside; explain and --help say the same', async (t) => {
    if (!(await requireNetns(t))) return;
    const pair = await createPodPair();
    t.after(() => pair.cleanup());
    const server = pair.server.addr4!;
    await startResponder(pair.server, server, PORT, 'server');
    const defaults = ['--default-opaque-ports', String(PORT)];

    // Inside the cluster networks (the default ones hold 10.0.0.0/8): opaque.
    const inside = await detectThroughProxy(pair.client, server, defaults);
    assert.deepEqual(inside, { opaque_port: 1 }, `inside: ${JSON.stringify(inside)}`);
    assert.equal(await explainMode(server, defaults), 'opaque');

    // Outside them: detected (the server-first race decides), not opaque.
    const outsideFlags = [...defaults, '--cluster-networks', '192.168.0.0/16'];
    const outside = await detectThroughProxy(pair.client, server, outsideFlags);
    assert.equal(outside['opaque_port'], undefined, `outside: ${JSON.stringify(outside)}`);
    assert.equal(outside['server_first'], 1, `outside: ${JSON.stringify(outside)}`);
    assert.equal(await explainMode(server, outsideFlags), 'detect');

    // What --help promises.
    const help = await runCli(['proxy', '--help']);
    assert.match(help.stdout, /--default-opaque-ports LIST\n\s+replaces the default opaque port list \(Linkerd proxy\.opaquePorts\): opaque inbound, and outbound to --cluster-networks and loopback/);
  });
});
