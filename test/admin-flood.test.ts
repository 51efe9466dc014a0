/**
 * A flood of /metrics scrapes cannot monopolise the process's event loop:
 * injected sidecars serve the admin port on 0.0.0.0 (the kubelet's probes
 * and Prometheus reach it), so any pod in the cluster can send them. Scrapes
 * that arrive while a render is pending share it, so the renders (one
 * engine snapshot each, milliseconds of main-thread work with many series)
 * do not grow with the number of flooding requests, and /live keeps
 * answering between them. A shared render starts after every request it
 * answers arrived: a scrape never returns counters older than itself.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { collect, connect, startEchoServer, waitFor, withTimeout } from './helpers.js';
import { parsePrometheusText, total } from './prom-parse.js';
import { loadConfig, objectLayer } from '../ts/config/config.js';
import { Metrics, type SnapshotSource } from '../ts/observe/metrics.js';
import { AdminServer } from '../ts/observe/admin-server.js';
import { AdminConnections } from '../ts/observe/admin-connections.js';
import { Proxy } from '../ts/engine/proxy.js';

/** Sends `count` pipelined GETs of `path` on one connection and resolves with the raw bytes once all were answered. */
function pipelined(port: number, path: string, count: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', reject);
    s.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    const req = `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`;
    s.end(req.repeat(count - 1) + `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
  });
}

test('concurrent /metrics scrapes share renders, and each sees the counters of its time', async (t) => {
  const echo = await startEchoServer(t);
  const config = loadConfig({ env: {}, flags: objectLayer({ forward: [`127.0.0.1:0=127.0.0.1:${echo.port},mode=opaque`], admin: 'off', logLevel: 'silent' }, 'test') });
  const proxy = Proxy.fromConfig(config);
  const [bound] = await proxy.start();
  t.after(() => proxy.close({ drainMs: 0 }));
  let snapshots = 0;
  const counting: SnapshotSource = { snapshot: () => (snapshots++, proxy.snapshot()) };
  const admin = new AdminServer({
    host: '127.0.0.1',
    port: 0,
    metrics: new Metrics(counting),
    notReady: () => null,
    connections: () => [],
    policy: () => ({}),
    shutdown: null,
  });
  await admin.start();
  t.after(() => admin.close());

  // 32 connections with 8 pipelined scrapes each, all at once.
  const pages = await Promise.all(Array.from({ length: 32 }, () => pipelined(admin.port, '/metrics', 8)));
  const answered = pages.reduce((n, p) => n + (p.match(/HTTP\/1\.1 200 OK/g)?.length ?? 0), 0);
  assert.equal(answered, 256, 'every scrape answered');
  assert.ok(snapshots <= 64, `256 scrapes took ${snapshots} engine snapshots: renders must be shared, not one per scrape`);

  // Freshness: a scrape right after traffic sees it, even with others in flight.
  const socket = await connect(Number(bound!.bind.split(':').pop()));
  const echoed = collect(socket);
  socket.end('fresh bytes');
  assert.equal((await echoed).bytes, 'fresh bytes'.length);
  await waitFor(() => proxy.snapshot().tcp.some((s) => s.bytesClientToServer === 'fresh bytes'.length), 'the engine to count the bytes');
  const busy = pipelined(admin.port, '/metrics', 8);
  const res = await fetch(`http://127.0.0.1:${admin.port}/metrics`);
  const page = parsePrometheusText(await res.text());
  assert.equal(total(page, 'tcp_read_bytes_total', { peer: 'src' }), 'fresh bytes'.length);
  await busy;
});

test('idle connections cannot exhaust the admin server: past 64 the oldest idle ones are closed, and probes are still answered', async (t) => {
  const admin = new AdminServer({
    host: '127.0.0.1',
    port: 0,
    metrics: new Metrics({ snapshot: () => { throw new Error('no scrape in this test'); } }),
    notReady: () => null,
    connections: () => [],
    policy: () => ({}),
    shutdown: null,
  });
  await admin.start();
  t.after(() => admin.close());
  // 300 connections that never send a byte (a pod flooding 0.0.0.0:4191).
  const closedByServer: Promise<void>[] = [];
  const idle: net.Socket[] = [];
  for (let i = 0; i < 300; i++) {
    const s = net.connect(admin.port, '127.0.0.1');
    s.on('error', () => {});
    closedByServer.push(new Promise((resolve) => s.once('close', () => resolve())));
    await new Promise<void>((resolve, reject) => { s.once('connect', () => resolve()); s.once('error', reject); });
    idle.push(s);
  }
  t.after(() => { for (const s of idle) s.destroy(); });
  // The server closes the oldest ones to stay within its bound: the first 236 are gone.
  await withTimeout(Promise.all(closedByServer.slice(0, 300 - 64)), 10_000, 'the server to close the 236 oldest idle connections');
  await waitFor(() => admin.openConnections.open <= 64, 'the admin server to hold at most 64 connections');
  assert.ok(admin.openConnections.evicted >= 236, JSON.stringify(admin.openConnections));
  // A probe (a new connection that sends its request at once) is served.
  const live = await fetch(`http://127.0.0.1:${admin.port}/live`);
  assert.equal(live.status, 200);
  assert.equal(await live.text(), 'live\n');
  // The newest idle connections are still open (nothing closed that did not have to be).
  assert.equal(idle.slice(-32).filter((s) => s.destroyed).length, 0);
  assert.ok(admin.openConnections.open <= 64, JSON.stringify(admin.openConnections));
});

test('connections whose answers are never read cannot lock the probes out: an answered request is not in flight', async (t) => {
  // The admin server's bound (AdminServer uses 64; 4 keeps the kernel
  // buffers this test fills small) on a server answering like /live.
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'content-length': 5 });
    res.end('live\n');
  });
  const tracked = new AdminConnections(server, undefined, 4);
  const serverSockets = new Map<number, net.Socket>();
  server.on('connection', (s: net.Socket) => serverSockets.set(s.remotePort!, s));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => { server.closeAllConnections(); server.close(); });
  const port = (server.address() as net.AddressInfo).port;
  // A pod that pipelines requests and never reads an answer: once the
  // kernel buffers toward it are full, the server's writes to it back up.
  const stalled: net.Socket[] = [];
  t.after(() => { for (const s of stalled) s.destroy(); });
  const batch = 'GET /live HTTP/1.1\r\nHost: 10.0.0.9\r\n\r\n'.repeat(1000);
  for (let i = 0; i < 4; i++) {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    await once(s, 'connect');
    s.pause();
    stalled.push(s);
    // The kernel took no more of the server's answers: they wait in Node.
    const backedUp = () => (serverSockets.get(s.localPort!)?.writableLength ?? 0) > 0;
    await withTimeout((async () => {
      while (!backedUp()) {
        if (s.write(batch)) continue;
        await new Promise<void>((resolve) => {
          const done = (): void => { clearTimeout(timer); s.off('drain', done); resolve(); };
          const timer = setTimeout(done, 20);
          s.once('drain', done);
        });
      }
    })(), 20_000, 'the server to stop writing to a peer that does not read');
  }
  assert.equal(tracked.size, 4);
  // A kubelet probe still gets its answer: every request of those
  // connections was answered, however slowly their peers read.
  const live = await withTimeout(fetch(`http://127.0.0.1:${port}/live`).then(async (r) => [r.status, await r.text()] as const), 5_000, 'the probe');
  assert.deepEqual(live, [200, 'live\n']);
  assert.ok(tracked.size <= 4, `${tracked.size} connections open`);
  assert.ok(tracked.evicted >= 1, 'a stalled connection made room');
});

test('requests whose bodies never finish arriving cannot lock the probes out', async (t) => {
  const admin = new AdminServer({
    host: '127.0.0.1',
    port: 0,
    metrics: new Metrics({ snapshot: () => { throw new Error('no scrape in this test'); } }),
    notReady: () => null,
    connections: () => [],
    policy: () => ({}),
    shutdown: null,
    logFilter: () => undefined,
  });
  await admin.start();
  t.after(() => admin.close());
  // 100 loopback peers each announce a 100-byte PUT /log-filter body and send 2 bytes of it.
  const stalled: net.Socket[] = [];
  t.after(() => { for (const s of stalled) s.destroy(); });
  for (let i = 0; i < 100; i++) {
    const s = net.connect(admin.port, '127.0.0.1');
    s.on('error', () => {});
    await once(s, 'connect');
    s.write(`PUT /log-filter HTTP/1.1\r\nHost: 127.0.0.1\r\nmeshpipe-admin: 1\r\nContent-Length: 100\r\n\r\nin`);
    stalled.push(s);
  }
  // Every one of them reached the handler (the limit is about open connections, so wait until it holds).
  await waitFor(() => admin.openConnections.open <= 64, 'the admin server to hold at most 64 connections');
  // Probes are still answered, again and again.
  for (let i = 0; i < 5; i++) {
    // A raw probe on a connection of its own, as the kubelet's (no client retry hides a refusal).
    const probe = net.connect(admin.port, '127.0.0.1');
    const answer = new Promise<string>((resolve) => {
      let got = '';
      probe.on('data', (d: Buffer) => (got += d.toString('latin1')));
      probe.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
      probe.on('close', () => resolve(got));
    });
    probe.end('GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
    assert.match(await withTimeout(answer, 5_000, `probe ${i}`), /^HTTP\/1\.1 200 [^]*\r\n\r\nlive\n$/, `probe ${i}`);
  }
  assert.ok(admin.openConnections.evicted >= 36, JSON.stringify(admin.openConnections));
});
