/**
 * The inbound side as an attacker on the network sees it (two network
 * namespaces, `meshpipe init` rules for both families in the server pod,
 * the real sidecar under uid 2102):
 * - An app port bound to 127.0.0.1 (or ::1) in the pod is NOT reachable
 *   through the inbound redirect; ports bound to the pod IP or to any
 *   address are, and the app sees the connection come from the pod's IP,
 *   never from 127.0.0.1.
 * - A redirected connection to an address that is not one of the pod's IPs
 *   is refused and counted (inbound_tcp_accept_errors_total{error="not_pod_ip"}).
 * - A proxy whose admin port is not the one init exempted: a POST /shutdown
 *   sent to that port from another pod lands on the inbound listener and is
 *   refused (error="proxy_port"), also with the 127.0.0.1 opt-in, which
 *   otherwise exposes the loopback-only port (its documented risk).
 * - `meshpipe init --write-state` + `meshpipe proxy --init-state`: a proxy
 *   whose admin port or uid differ from what the rules exempt refuses to start.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPodPair, requireNetns, startResponder, tcpRequest, type Pod } from './netns.js';
import { SIDECAR_UID, startSidecar } from './netns-sidecar.js';
import type { EngineSnapshot } from '../ts/engine/native.js';

const CLI = fileURLToPath(new URL('../ts/cli/main.js', import.meta.url));
const RUN_INIT = `import { main } from ${JSON.stringify(fileURLToPath(new URL('../ts/cli/init.js', import.meta.url)))}; process.exitCode = await main(process.argv.slice(1));`;
const APP = { uid: 1000 };
const dirs: string[] = [];
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

async function init(pod: Pod, args: string[]): Promise<void> {
  const r = await pod.exec(process.execPath, ['--input-type=module', '-e', RUN_INIT, '--', ...args]);
  assert.equal(r.code, 0, `meshpipe init ${args.join(' ')}: ${r.stdout}\n${r.stderr}`);
}

function acceptErrors(snap: EngineSnapshot, error: string): number {
  return snap.acceptErrors.filter((e) => e.direction === 'inbound' && e.error === error).reduce((n, e) => n + e.count, 0);
}

const esc = (s: string) => s.replaceAll('.', '\\.');

describe('inbound: only the pod IPs, never loopback', () => {
  test('loopback-only ports stay private; pod-IP and wildcard ports are reached, from the pod IP; other addresses are refused', async (t) => {
    if (!(await requireNetns(t))) return;
    const pair = await createPodPair();
    t.after(() => pair.cleanup());
    const { client, server } = pair;
    const v4 = server.addr4!;
    const v6 = server.addr6!;
    await init(server, ['--ipv6']);
    // No --inbound-ips: the pod IPs come from the interfaces (10.250.n.2, fd00:250:n::2).
    const sidecar = await startSidecar(server, ['--ipv6', 'true']);
    const guardLine = /^.*"msg":"inbound connections accepted to the pod IPs only".*$/m.exec(sidecar.process.output())?.[0] ?? '';
    assert.match(guardLine, new RegExp(`"podIps":\\[[^\\]]*"${esc(v4)}"`), guardLine);
    assert.match(guardLine, /"podIpsFrom":"interfaces"/);

    await startResponder(server, '127.0.0.1', 7001, 'loopback-only', APP);
    await startResponder(server, '::1', 7005, 'loopback6-only', APP);
    await startResponder(server, v4, 7002, 'pod-ip', APP);
    await startResponder(server, v6, 7004, 'pod-ip6', APP);
    await startResponder(server, '::', 7003, 'any', APP);

    // Loopback-only ports are not reachable through the redirect, in either family.
    for (const [host, port] of [[v4, 7001], [v6, 7005]] as const) {
      const r = await tcpRequest(client, host, port);
      assert.match(r, /^ERROR/, `${host}:${port} must not be reachable: ${r}`);
    }
    // Ports bound to the pod IP or to every address are, and the app sees the pod IP as the peer.
    assert.match(await tcpRequest(client, v4, 7002), new RegExp(`^pod-ip local=${esc(v4)}:7002 remote=${esc(v4)}:\\d+$`));
    assert.match(await tcpRequest(client, v6, 7004), new RegExp(`^pod-ip6 local=${v6}:7004 remote=${v6}:\\d+$`));
    const any = await tcpRequest(client, v4, 7003);
    assert.match(any, new RegExp(`^any local=(::ffff:)?${esc(v4)}:7003 remote=(::ffff:)?${esc(v4)}:\\d+$`));
    assert.doesNotMatch(any, /remote=(::ffff:)?127\./);
    assert.match(await tcpRequest(client, v6, 7003), new RegExp(`^any local=${v6}:7003 remote=${v6}:\\d+$`));

    // A packet for another address, routed to this pod: PREROUTING redirects it, the proxy refuses it.
    const r = await client.exec('ip', ['route', 'add', '10.99.0.1/32', 'via', v4]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(await tcpRequest(client, '10.99.0.1', 7003), /^ERROR/);

    const snap = await sidecar.snapshot();
    assert.equal(acceptErrors(snap, 'not_pod_ip'), 1, JSON.stringify(snap.acceptErrors));
    assert.equal(acceptErrors(snap, 'proxy_port'), 0);
    // The refused loopback-only connections reached the pod IP and found nothing listening there.
    const refused = snap.tcp.filter((s) => s.direction === 'inbound' && (s.targetPort === 7001 || s.targetPort === 7005));
    assert.ok(refused.every((s) => s.targetIp === v4 || s.targetIp === v6), JSON.stringify(refused));
    const metrics = await server.exec('curl', ['-sS', 'http://127.0.0.1:4191/metrics']);
    assert.match(metrics.stdout, /^inbound_tcp_accept_errors_total\{error="not_pod_ip"\} 1$/m);
    await sidecar.stop();
  });

  test('the admin port is never reached through the inbound listener, with or without the 127.0.0.1 opt-in', async (t) => {
    if (!(await requireNetns(t))) return;
    const pair = await createPodPair();
    t.after(() => pair.cleanup());
    const { client, server } = pair;
    const v4 = server.addr4!;
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-inbound-'));
    dirs.push(dir);
    chmodSync(dir, 0o755); // the proxy reads the state as another uid
    const state = join(dir, 'init-state.json');
    await init(server, ['--no-ipv6', '--write-state', state]);
    await startResponder(server, '127.0.0.1', 7001, 'loopback-only', APP);

    // The recorded rules catch the mismatch before anything listens: admin port and uid.
    const args = ['proxy', '--inbound', '0.0.0.0:4143', '--outbound', '127.0.0.1:4140', '--ipv6', 'false', '--init-state', state];
    const mismatch = await server.exec(process.execPath, [CLI, ...args, '--admin', '127.0.0.1:9191'], { uid: 1000 });
    assert.equal(mismatch.code, 2, mismatch.stderr);
    assert.match(mismatch.stderr, /the admin port 9191 is not exempted from inbound redirection \(meshpipe init exempts 4190,4191\)/);
    assert.match(mismatch.stderr, /runs as uid 1000 but meshpipe init exempts uid 2102/);

    for (const optIn of [[], ['--inbound-host', '127.0.0.1']]) {
      // Without --init-state nothing stops the mismatch at start-up: the engine refuses instead.
      const proxy = server.spawn(process.execPath, [CLI, ...args.slice(0, -2), '--admin', '127.0.0.1:9191', '--drain-timeout', '1s', ...optIn], {
        uid: SIDECAR_UID,
        env: { ...process.env, MESHPIPE_LOG_LEVEL: 'info' },
      });
      await proxy.waitFor(/"msg":"proxy ready"/, 15_000);
      // From the other pod, to the admin port: redirected to 4143, refused as one of the proxy's own ports.
      const shutdown = await client.exec('curl', ['-sS', '-X', 'POST', '-H', 'meshpipe-admin: 1', '--max-time', '5', '-w', ' %{http_code}', `http://${v4}:9191/shutdown`]);
      assert.notEqual(shutdown.code, 0, `the request must fail: ${shutdown.stdout}`);
      assert.doesNotMatch(proxy.output(), /"msg":"shutdown requested"/);
      const snap = await server.exec('curl', ['-sS', 'http://127.0.0.1:9191/snapshot']);
      const counts = (JSON.parse(snap.stdout) as EngineSnapshot).acceptErrors;
      assert.equal(counts.find((e) => e.direction === 'inbound' && e.error === 'proxy_port')?.count, 1, JSON.stringify(counts));
      const loopbackApp = await tcpRequest(client, v4, 7001);
      if (optIn.length === 0) {
        assert.match(loopbackApp, /^ERROR/);
      } else {
        // The documented risk of the opt-in, and its warning.
        assert.match(loopbackApp, /^loopback-only local=127\.0\.0\.1:7001 remote=127\.0\.0\.1:/);
        assert.match(proxy.output(), /"level":"warn"[^\n]*"risk":"inbound connections reach the app at 127\.0\.0\.1/);
      }
      assert.equal(await proxy.stop(5000), 0);
    }
  });
});
