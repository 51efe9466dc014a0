/**
 * Forwarding loops through the real CLI. A fixed target that is one of the
 * proxy's own listeners is refused at start with exit 2 and a message naming
 * both (the same address, a wildcard bind, another listener, or one of the
 * machine's interface addresses, which only the engine knows once bound), and
 * nothing is left listening. At run time, in a network namespace with
 * `meshpipe init` rules, a connection redirected to the inbound listener
 * whose target is the proxy's own outbound listener is refused before any
 * dial and counted, instead of looping through the proxy.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { networkInterfaces } from 'node:os';
import { fileURLToPath } from 'node:url';
import { freePort, isListening, runCli } from './helpers.js';
import { createPodPair, requireNetns, tcpRequest } from './netns.js';
import { startSidecar } from './netns-sidecar.js';

const CLI_INIT = fileURLToPath(new URL('../ts/cli/init.js', import.meta.url));
const RUN_INIT = `import { main } from ${JSON.stringify(CLI_INIT)}; process.exitCode = await main(process.argv.slice(1));`;

/** An IPv4 address of one of this machine's interfaces other than loopback. */
function interfaceAddress(): string | undefined {
  return Object.values(networkInterfaces())
    .flat()
    .find((i) => i?.family === 'IPv4' && !i.internal)?.address;
}

test('a forward to its own listener exits 2 before serving, naming both', async () => {
  const [p, q] = [await freePort(), await freePort()];
  const cases: Array<{ args: string[]; expect: string[] }> = [
    { args: ['--forward', `127.0.0.1:${p}=127.0.0.1:${p}`], expect: [`forwards to 127.0.0.1:${p}`, `own listener "forward:127.0.0.1:${p}" (bind 127.0.0.1:${p})`] },
    { args: ['--forward', `0.0.0.0:${p}=127.0.0.1:${p}`], expect: [`forwards to 127.0.0.1:${p}`, `(bind 0.0.0.0:${p})`] },
    { args: ['--forward', `127.0.0.1:${p}=[::ffff:127.0.0.1]:${p}`], expect: [`forwards to [::ffff:127.0.0.1]:${p}`] },
    {
      args: ['--forward', `127.0.0.1:${p}=127.0.0.1:${q}`, '--forward', `127.0.0.1:${q}=10.255.255.1:80`],
      expect: [`"forward:127.0.0.1:${p}" forwards to 127.0.0.1:${q}`, `own listener "forward:127.0.0.1:${q}"`],
    },
  ];
  const ip = interfaceAddress();
  assert.ok(ip !== undefined, 'this machine has a non-loopback IPv4 interface address');
  // Only the engine, once bound, knows this one: 0.0.0.0 receives connections to every local address.
  cases.push({ args: ['--forward', `0.0.0.0:${p}=${ip}:${p}`], expect: [`forwards to ${ip}:${p}`, `(bind 0.0.0.0:${p})`] });
  for (const c of cases) {
    const r = await runCli(['proxy', ...c.args]);
    assert.equal(r.code, 2, `${c.args.join(' ')}: exit ${r.code}\n${r.stderr}`);
    for (const e of c.expect) assert.ok(r.stderr.includes(e), `${c.args.join(' ')}: stderr lacks ${JSON.stringify(e)}:\n${r.stderr}`);
    assert.match(r.stderr, /loop/);
    assert.equal(await isListening(p), false, 'nothing is left listening');
  }
});

test('run time: a redirected connection whose target is the proxy\'s own listener is refused before any dial, and counted', async (t) => {
  if (!(await requireNetns(t))) return;
  const pair = await createPodPair();
  t.after(() => pair.cleanup());
  const init = await pair.server.exec(process.execPath, ['--input-type=module', '-e', RUN_INIT, '--', '--no-ipv6']);
  assert.equal(init.code, 0, init.stderr);
  const sidecar = await startSidecar(pair.server);
  t.after(() => sidecar.stop());
  // From the other pod to the server pod's port 4140: iptables redirects it
  // to the inbound listener, whose target is the sidecar's own outbound
  // listener's port: the inbound guard refuses a proxy port before the loop
  // check is even needed.
  for (let i = 0; i < 20; i++) {
    const reply = await tcpRequest(pair.client, pair.server.addr4!, 4140);
    assert.ok(reply === '' || reply.startsWith('ERROR'), `refused, got ${JSON.stringify(reply)}`);
  }
  const snap = await sidecar.snapshot();
  const refused = snap.acceptErrors.filter((e) => e.direction === 'inbound' && e.error === 'proxy_port');
  assert.equal(refused[0]?.count, 20, JSON.stringify(snap.acceptErrors));
  const outbound = snap.listeners.find((l) => l.name === 'outbound');
  assert.equal(outbound?.accepted, 0, 'the loop never reached the outbound listener');
  assert.equal(snap.tcp.filter((s) => s.dstOpenTotal > 0).length, 0, 'nothing was dialled');
  assert.equal(snap.limits.fds.used, 0, 'no descriptor is held');
});
