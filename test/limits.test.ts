/**
 * Resource limits through the real CLI: `--max-connections` holds
 * connections past the limit in the kernel backlog (accepted once a slot
 * frees up, never accepted-and-dropped), and each direction has its own
 * slots (idle inbound clients do not starve outbound traffic); the
 * descriptor reserve keeps `/live` and `/metrics` answering when hundreds of
 * silent clients meet a low RLIMIT_NOFILE; running out of file descriptors
 * anyway (EMFILE, with the reserve off) neither kills the proxy nor makes its
 * accept loop spin: it backs off and serves again once descriptors are free;
 * and `--idle-timeout` closes forwarded connections that stopped talking.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net, { type Socket } from 'node:net';
import { adminAddress, adminRequest, scrape } from './admin-client.js';
import { closed, collect, connect, cpuTimeMs, HOST, sha256, sleep, startEchoServer, startProxy, withTimeout } from './helpers.js';
import { total } from './prom-parse.js';

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
  // --fd-reserve 0: no descriptor budget, so the engine really runs into EMFILE.
  const { proc, ports } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port},mode=opaque`, '--workers', '1', '--fd-reserve', '0'], { t, fdLimit: 160 });
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

/** Connects and proves the connection is served: one byte echoed. */
async function served(port: number): Promise<Socket> {
  const c = await connect(port);
  c.write('x');
  await withTimeout(once(c, 'data'), 5000, `an echo on port ${port}`);
  return c;
}

test('--max-connections applies to each direction: idle inbound connections do not starve outbound traffic', async (t) => {
  const echo = await startEchoServer(t);
  const { ports } = await startProxy([
    '--forward', `${HOST}:0=${HOST}:${echo.port},mode=opaque,direction=inbound`,
    '--forward', `${HOST}:0=${HOST}:${echo.port},mode=opaque,direction=outbound`,
    '--max-connections', '3',
  ], { t });
  const [inbound, outbound] = [ports[0]!, ports[1]!];
  const idle: Socket[] = [];
  t.after(() => idle.forEach((c) => c.destroy()));
  for (let i = 0; i < 3; i++) idle.push(await served(inbound));
  const fourth = await connect(inbound);
  idle.push(fourth);
  const fourthEcho = once(fourth, 'data');
  fourth.write('4');
  // Outbound has its own three slots, whatever inbound holds.
  const out: Socket[] = [];
  for (let i = 0; i < 3; i++) out.push(await served(outbound));
  out.forEach((c) => c.destroy());
  const early = await Promise.race([fourthEcho.then(() => 'echoed'), sleep(300).then(() => 'waiting')]);
  assert.equal(early, 'waiting', 'the fourth inbound connection waits in the backlog');
  idle[0]!.destroy();
  await withTimeout(fourthEcho, 5000, 'the fourth inbound echo once an inbound slot is free');
});

test('descriptor reserve: at a 256-descriptor limit, 700 silent clients leave /live and /metrics answering, and the proxy serves again once they leave', async (t) => {
  const echo = await startEchoServer(t);
  const { proc, ports } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port}`, '--admin', '127.0.0.1:0'], { t, fdLimit: 256 });
  const admin = await adminAddress(proc);
  const clients: Socket[] = [];
  t.after(() => clients.forEach((c) => c.destroy()));
  // Silent clients: they connect (the kernel completes every handshake) and never send a byte.
  for (let i = 0; i < 700; i++) {
    const c = net.connect({ port: ports[0]!, host: HOST });
    c.on('error', () => undefined);
    clients.push(c);
    await Promise.race([once(c, 'connect'), once(c, 'close')]).catch(() => undefined);
  }
  // However many the engine has taken, probes and scrapes keep answering.
  for (let i = 0; i < 5; i++) {
    const live = await adminRequest(admin, '/live');
    assert.equal(live.status, 200, `/live #${i}: ${live.body}`);
  }
  const page = await scrape(admin);
  const budget = total(page, 'meshpipe_fd_budget');
  const used = total(page, 'meshpipe_fd_budget_used');
  t.diagnostic(`descriptor budget ${budget}, used ${used}, waits ${total(page, 'meshpipe_fd_budget_waits_total')}, process open fds ${total(page, 'process_open_fds')}`);
  assert.ok(budget > 0 && budget < 256 - 128, `the budget leaves the reserve free (budget ${budget})`);
  assert.ok(used > budget - 2, `the engine took its whole budget (${used} of ${budget})`);
  assert.ok(total(page, 'meshpipe_fd_budget_waits_total') > 0, 'connections waited in the backlog for descriptors');
  assert.equal(total(page, 'meshpipe_listener_accept_errors_total'), 0, 'and never ran into EMFILE');
  assert.ok(total(page, 'process_open_fds') < 256 - 64, `descriptors stay free (${total(page, 'process_open_fds')} open)`);

  for (const c of clients) c.destroy();
  clients.length = 0;
  const fresh = await connect(ports[0]!);
  fresh.end('after the flood');
  const r = await withTimeout(collect(fresh), 15_000, 'an echo once the silent clients left');
  assert.equal(r.sha256, sha256('after the flood'));
  assert.ok(proc.running);
});

test('--idle-timeout closes a forwarded connection on both sides after it stopped talking, and counts it', async (t) => {
  const echo = await startEchoServer(t);
  const { proc, ports } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port},mode=opaque`, '--admin', '127.0.0.1:0', '--idle-timeout', '300ms'], { t });
  const admin = await adminAddress(proc);
  const c = await served(ports[0]!);
  const started = Date.now();
  const end = await withTimeout(closed(c), 10_000, 'the idle connection to be closed');
  t.diagnostic(`closed ${Date.now() - started} ms after the last byte (idle timeout 300 ms, checked every 75 ms)`);
  assert.equal(end.how, 'end', `the client got a FIN (${end.error ?? 'no error'})`);
  const upstream = await echo.connection(1);
  assert.equal((await withTimeout(upstream.received, 5000, 'the target side to end')).ended, true, 'the target got a FIN');
  const page = await scrape(admin);
  assert.equal(total(page, 'meshpipe_tcp_idle_timeouts_total'), 1);
  assert.equal(total(page, 'tcp_close_total', { errno: '' }), 2, 'both sides closed cleanly');
});
