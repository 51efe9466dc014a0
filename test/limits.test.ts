/**
 * Resource limits through the real CLI: `--max-connections` holds
 * connections past the limit in the kernel backlog (accepted once a slot
 * frees up, never accepted-and-dropped), and running out of file descriptors
 * (EMFILE, provoked with a low RLIMIT_NOFILE) neither kills the proxy nor
 * makes its accept loop spin: it backs off and serves again once descriptors
 * are free.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net, { type Socket } from 'node:net';
import { collect, connect, cpuTimeMs, HOST, sha256, sleep, startEchoServer, startProxy, withTimeout } from './helpers.js';

test('--max-connections: connections past the limit wait in the backlog until a slot frees up', async (t) => {
  const echo = await startEchoServer(t);
  const { ports } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port},mode=opaque`, '--max-connections', '2'], { t });
  const first = await connect(ports[0]!);
  const second = await connect(ports[0]!);
  for (const c of [first, second]) {
    c.write('x');
    await withTimeout(once(c, 'data'), 5000, 'an echo within the limit');
  }
  // The kernel completes the third handshake (backlog) but the proxy does not accept it yet.
  const third = await connect(ports[0]!);
  const thirdEcho = once(third, 'data');
  third.write('third');
  const early = await Promise.race([thirdEcho.then(() => 'echoed'), sleep(700).then(() => 'waiting')]);
  assert.equal(early, 'waiting', 'the third connection is held while two are open');
  assert.equal(echo.accepted.length, 2);
  first.destroy();
  const [data] = (await withTimeout(thirdEcho, 5000, 'the third echo once a slot is free')) as [Buffer];
  assert.equal(data.toString(), 'third');
  second.destroy();
  third.destroy();
});

test('EMFILE: out of file descriptors, the proxy backs off without spinning and serves again afterwards', async (t) => {
  const echo = await startEchoServer(t);
  // 160 descriptors: Node, the engine's threads and the listener take ~40;
  // each proxied connection needs 2 (client + upstream) plus pipes.
  const { proc, ports } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port},mode=opaque`, '--workers', '1'], { t, fdLimit: 160 });
  const clients: Socket[] = [];
  t.after(() => clients.forEach((c) => c.destroy()));
  const echoed: Array<Promise<unknown>> = [];
  for (let i = 0; i < 200; i++) {
    // The kernel completes every handshake (backlog 4096) even when the proxy cannot
    // accept; a connection the proxy had to drop (EMFILE upstream) may be reset at once.
    const c = net.connect({ port: ports[0]!, host: HOST });
    c.on('error', () => undefined);
    c.write('x');
    echoed.push(
      new Promise((resolve) => {
        c.once('data', () => resolve('echo'));
        c.once('close', () => resolve('closed'));
      }),
    );
    clients.push(c);
    await Promise.race([once(c, 'connect'), once(c, 'close')]).catch(() => undefined);
  }
  await sleep(1000);
  const outcomes = await Promise.all(echoed.map((p) => Promise.race([p, sleep(1).then(() => 'waiting')])));
  const served = outcomes.filter((o) => o === 'echo').length;
  t.diagnostic(`${served} echoed, ${outcomes.filter((o) => o === 'closed').length} closed, ${outcomes.filter((o) => o === 'waiting').length} waiting`);
  assert.ok(served < 200, `the descriptor limit was actually reached (${served} of 200 connections answered)`);
  assert.ok(proc.running, 'the proxy survives EMFILE');

  // While connections wait in the backlog and accept() fails, the loop must back off, not spin.
  const before = cpuTimeMs(proc.pid);
  await sleep(2000);
  const used = cpuTimeMs(proc.pid) - before;
  t.diagnostic(`${used} ms CPU in 2 s`);
  // A loop retrying accept() without backing off would use a whole core (about 2000 ms in 2 s).
  assert.ok(used < 1000, `well below a spinning core while out of descriptors: used ${used} ms of CPU in 2 s`);

  for (const c of clients) c.destroy();
  clients.length = 0;
  // Descriptors are free again: a new connection is served (after at most one 1 s back-off).
  const fresh = await connect(ports[0]!);
  fresh.end('after EMFILE');
  const r = await withTimeout(collect(fresh), 10_000, 'an echo once descriptors are free');
  assert.equal(r.sha256, sha256('after EMFILE'));
  assert.ok(proc.running);
});
