/**
 * `--forward BIND=NAME:PORT`: forward targets that are host names, resolved
 * by a real DNS server (Debian's dnsmasq, authoritative for meshpipe.test,
 * TTL 1 s, answering from a hosts file the test rewrites and reloads with
 * SIGHUP) through `--dns-servers`; by the system resolver from /etc/hosts
 * (a network namespace with its own, mounted by `ip netns exec`); and
 * `localhost` without any DNS.
 *
 * What is checked through the real CLI and real sockets: a name that does
 * not resolve stops the start (exit 2, naming it); new connections spread
 * over every address (A and AAAA); an address that refuses is failed over
 * (no client sees a reset) and counted; a changed record reaches the engine
 * on the TTL; a name gone from DNS loses its addresses and each connection
 * is then reset and counted, with one warning, not one per connection.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { promises as dns } from 'node:dns';
import { once } from 'node:events';
import { chmodSync, mkdirSync, mkdtempSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { CLI, runCli, startProxy, waitFor, withTimeout } from './helpers.js';
import { createPod, requireNetns, tcpRequest } from './netns.js';
import { adminAddress, adminRequest, scrape } from './admin-client.js';
import type { EngineSnapshot } from '../ts/engine/index.js';

interface Dns {
  port: number;
  /** Rewrites the hosts file and waits until dnsmasq has read it. */
  setHosts(text: string): Promise<void>;
}

/** A UDP port that was free a moment ago. */
async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  s.bind(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address();
  s.close();
  return port;
}

/** dnsmasq on 127.0.0.1, authoritative for meshpipe.test (NXDOMAIN for unknown names), records from a hosts file, TTL 1 s. */
async function startDns(t: TestContext, hosts: string): Promise<Dns> {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-dns-'));
  chmodSync(dir, 0o755);
  const file = join(dir, 'hosts');
  writeFileSync(file, hosts, { mode: 0o644 });
  const port = await freeUdpPort();
  const child = spawn('dnsmasq', [
    '--keep-in-foreground', '--no-resolv', '--no-hosts', `--addn-hosts=${file}`, '--local=/meshpipe.test/', '--local-ttl=1',
    `--port=${port}`, '--listen-address=127.0.0.1', '--bind-interfaces', '--conf-file=/dev/null', '--pid-file=', '--log-facility=-',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  let log = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (log += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (log += d));
  const reads = () => (log.match(/read .*hosts - \d+ names?/g) ?? []).length;
  await waitFor(() => reads() > 0, `dnsmasq to start:\n${log}`, 10_000);
  // Answering: an authoritative answer (an address, or NXDOMAIN), not a refused or lost query.
  const resolver = new dns.Resolver({ timeout: 500, tries: 1 });
  resolver.setServers([`127.0.0.1:${port}`]);
  await waitFor(
    () => resolver.resolve4('probe.meshpipe.test').then(() => true, (e: NodeJS.ErrnoException) => e.code === 'ENOTFOUND'),
    `dnsmasq to answer on port ${port}:\n${log}`,
    10_000,
  );
  return {
    port,
    async setHosts(text: string) {
      const before = reads();
      writeFileSync(file, text);
      child.kill('SIGHUP');
      await waitFor(() => reads() > before, `dnsmasq to reload its hosts:\n${log}`, 10_000);
    },
  };
}

/** Echo servers on several loopback addresses, one port; records which address each connection reached. */
async function echoOn(t: TestContext, hosts: readonly string[], port = 0): Promise<{ port: number; hits: Map<string, number>; close(host: string): Promise<void> }> {
  const hits = new Map<string, number>();
  const servers = new Map<string, net.Server>();
  let bound = port;
  for (const host of hosts) {
    const server = net.createServer((s) => {
      hits.set(host, (hits.get(host) ?? 0) + 1);
      s.on('error', () => undefined);
      s.pipe(s);
    });
    server.listen(bound, host);
    await once(server, 'listening');
    bound = (server.address() as net.AddressInfo).port;
    servers.set(host, server);
    t.after(() => server.close());
  }
  return {
    port: bound,
    hits,
    close: (host) => new Promise<void>((r) => servers.get(host)!.close(() => r())),
  };
}

/** One round trip through the proxy: resolves with "ok" or the error code (a reset). */
async function roundTrip(port: number): Promise<string> {
  return withTimeout(new Promise<string>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    s.on('data', (d) => {
      got += d.toString();
      if (got === 'ping') {
        s.end();
        resolve('ok');
      }
    });
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    s.on('close', () => resolve(got === 'ping' ? 'ok' : 'closed'));
    s.write('ping');
  }), 5_000, 'a round trip through the proxy');
}

/** Sends `request` through the proxy and resolves with whatever came back before the close (or the error code). */
async function roundTripRaw(port: number, request: string): Promise<string> {
  return withTimeout(new Promise<string>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    s.on('data', (d) => (got += d.toString()));
    s.on('error', (e: NodeJS.ErrnoException) => resolve(got || (e.code ?? 'error')));
    s.on('close', () => resolve(got || 'closed'));
    s.write(request);
  }), 5_000, 'a request through the proxy');
}

async function snapshot(admin: string): Promise<EngineSnapshot> {
  return JSON.parse((await adminRequest(admin, '/snapshot')).body) as EngineSnapshot;
}

describe('--forward to a host name', () => {
  test('a name that does not resolve: exit 2 before anything listens, naming the forward and the name', async (t) => {
    const dns = await startDns(t, '127.0.0.2 db.meshpipe.test\n');
    const r = await runCli(['proxy', '--forward', '127.0.0.1:0=nope.meshpipe.test:5432', '--dns-servers', `127.0.0.1:${dns.port}`]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^meshpipe proxy: error: --forward 127\.0\.0\.1:0=nope\.meshpipe\.test:5432: nope\.meshpipe\.test does not resolve \(ENOTFOUND/m);
    assert.match(r.stderr, /\(ERR_INVALID_CONFIG\)\n$/);
    assert.doesNotMatch(r.stderr, /listener bound/);
  });

  test('connections spread over A and AAAA addresses, fail over when one refuses, follow a changed record, and are refused once the name is gone', async (t) => {
    const servers = await echoOn(t, ['127.0.0.2', '127.0.0.3', '::1']);
    const dns = await startDns(t, `127.0.0.2 db.meshpipe.test\n127.0.0.3 db.meshpipe.test\n::1 db.meshpipe.test\n`);
    const { proc, ports } = await startProxy([
      '--forward', `127.0.0.1:0=db.meshpipe.test:${servers.port},mode=opaque`, '--dns-servers', `127.0.0.1:${dns.port}`, '--admin', '127.0.0.1:0',
    ], { t });
    const admin = await adminAddress(proc);
    const resolved = proc.logs.find((l) => l.msg === 'forward target resolved')!;
    assert.deepEqual(resolved['addresses'], ['127.0.0.2', '::1', '127.0.0.3'], 'A and AAAA interleaved, IPv4 first');
    assert.equal(resolved['ttlMs'], 1000, 'the TTL is the records\'');

    // Spread: six connections reach every address twice.
    for (let i = 0; i < 6; i++) assert.equal(await roundTrip(ports[0]!), 'ok');
    assert.deepEqual(Object.fromEntries(servers.hits), { '127.0.0.2': 2, '::1': 2, '127.0.0.3': 2 });

    // One address refuses: every connection still gets through (failover), the address is marked down.
    await servers.close('127.0.0.3');
    for (let i = 0; i < 6; i++) assert.equal(await roundTrip(ports[0]!), 'ok', `connection ${i} after 127.0.0.3 stopped`);
    const afterFailover = (await snapshot(admin)).names[0]!;
    assert.ok(afterFailover.failovers >= 1 && afterFailover.dialFailures >= 1, JSON.stringify(afterFailover));
    assert.deepEqual(afterFailover.down, [`127.0.0.3:${servers.port}`]);
    assert.equal(servers.hits.get('127.0.0.3'), 2, 'nothing reached the stopped server');

    // A changed record reaches the engine on the TTL (1 s); new connections go to the new address.
    const moved = await echoOn(t, ['127.0.0.4'], servers.port);
    await dns.setHosts(`127.0.0.4 db.meshpipe.test\n`);
    await proc.waitForLog((l) => l.msg === 'forward target addresses changed' && JSON.stringify(l['addresses']) === '["127.0.0.4"]', 'the new address', 10_000);
    for (let i = 0; i < 3; i++) assert.equal(await roundTrip(ports[0]!), 'ok');
    assert.equal(moved.hits.get('127.0.0.4'), 3);

    // Gone from DNS (NXDOMAIN twice): the addresses are dropped, each connection is reset and counted, one warning.
    await dns.setHosts('127.0.0.9 other.meshpipe.test\n');
    await proc.waitForLog((l) => l.msg === 'forward target no longer resolves: new connections are refused until it does', 'the name to be gone', 20_000);
    for (let i = 0; i < 5; i++) assert.notEqual(await roundTrip(ports[0]!), 'ok', `connection ${i} to a name without addresses`);
    const gone = (await snapshot(admin)).names[0]!;
    assert.deepEqual(gone.addresses, []);
    assert.equal(gone.noAddress, 5);
    const families = await scrape(admin);
    const unresolved = families.get('meshpipe_forward_unresolved_total')?.samples.find((s) => s.labels['listener'] === `forward:127.0.0.1:0`);
    assert.equal(unresolved?.value, 5);
    assert.ok((families.get('meshpipe_forward_resolve_failures_total')?.samples[0]?.value ?? 0) >= 2);
    await proc.waitForLog((l) => l.msg === 'connections refused: the forward target host name has no address', 'the per-connection warning', 10_000);
    await waitFor(async () => (await snapshot(admin)).names[0]!.noAddress === 5, 'the counters to settle');
    // Rate-limited: five refused connections, one line.
    assert.equal(proc.logs.filter((l) => l.msg === 'connections refused: the forward target host name has no address').length, 1);

    // Back in DNS: served again.
    await dns.setHosts(`127.0.0.4 db.meshpipe.test\n`);
    await proc.waitForLog((l) => l.msg === 'forward target addresses changed' && JSON.stringify(l['addresses']) === '["127.0.0.4"]' && JSON.stringify(l['previous']) === '[]', 'the name to be back', 20_000);
    assert.equal(await roundTrip(ports[0]!), 'ok');
  });

  test('a name that comes to point at the admin server: its loopback addresses are left out at every resolution, not only at start', async (t) => {
    const probe = net.createServer().listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const adminPort = (probe.address() as net.AddressInfo).port;
    probe.close();
    // At start the name points elsewhere (TEST-NET-1, nothing connects there in this test).
    const dns = await startDns(t, '192.0.2.1 admin.meshpipe.test\n');
    const { proc, ports } = await startProxy([
      '--forward', `127.0.0.1:0=admin.meshpipe.test:${adminPort},mode=opaque`, '--dns-servers', `127.0.0.1:${dns.port}`, '--admin', `127.0.0.1:${adminPort}`,
    ], { t });
    // The record moves to loopback (and the unspecified address, which Linux connects to the local host).
    await dns.setHosts('127.0.0.1 admin.meshpipe.test\n0.0.0.0 admin.meshpipe.test\n');
    const warned = await proc.waitForLog((l) => l.msg === 'forward target resolves to the admin server: those addresses are left out', 'the refusal', 10_000);
    assert.deepEqual([...(warned['refused'] as string[])].sort(), ['0.0.0.0', '127.0.0.1']);
    await proc.waitForLog((l) => l.msg === 'forward target addresses changed' && JSON.stringify(l['addresses']) === '[]', 'the addresses to be dropped', 10_000);
    // A shutdown sent through the forward never reaches the admin server.
    const reply = await roundTripRaw(ports[0]!, `POST /shutdown HTTP/1.1\r\nHost: 127.0.0.1:${adminPort}\r\nmeshpipe-admin: 1\r\nContent-Length: 0\r\n\r\n`);
    assert.doesNotMatch(reply, /^HTTP\/1\.1 202/);
    assert.ok(proc.running, 'the proxy is still running');
    assert.equal((await adminRequest(`127.0.0.1:${adminPort}`, '/live')).status, 200);
  });

  test('a name that comes to point at the proxy itself: each connection refused as a loop, one warning with a hint', async (t) => {
    const probe = net.createServer().listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const port = (probe.address() as net.AddressInfo).port;
    probe.close();
    const server = await echoOn(t, ['127.0.0.2'], port);
    const dns = await startDns(t, '127.0.0.2 self.meshpipe.test\n');
    const { proc } = await startProxy(['--forward', `127.0.0.1:${port}=self.meshpipe.test:${port}`, '--dns-servers', `127.0.0.1:${dns.port}`, '--admin', '127.0.0.1:0'], { t });
    assert.equal(await roundTrip(port), 'ok');
    assert.equal(server.hits.get('127.0.0.2'), 1);
    // Now the name resolves to the proxy's own listening address.
    await dns.setHosts('127.0.0.1 self.meshpipe.test\n');
    await proc.waitForLog((l) => l.msg === 'forward target addresses changed' && JSON.stringify(l['addresses']) === '["127.0.0.1"]', 'the loop address', 10_000);
    for (let i = 0; i < 3; i++) assert.notEqual(await roundTrip(port), 'ok', 'a loop is refused, not forwarded to itself');
    const line = await proc.waitForLog((l) => l.msg === 'connections refused: their target was the proxy itself (a forwarding loop)', 'the loop warning', 10_000);
    assert.match(String(line['hint']), /one of the proxy's own listeners/);
    assert.equal((await snapshot(await adminAddress(proc))).errors.loopRefused, 3);
  });

  test('a name DNS does not know but /etc/hosts does: found through the system resolver (getaddrinfo)', async (t) => {
    if (!(await requireNetns(t))) return;
    const pod = await createPod('hosts');
    t.after(() => pod.cleanup());
    // `ip netns exec` mounts these over /etc/hosts and /etc/resolv.conf for the pod's processes only.
    const etc = join('/etc/netns', pod.ns);
    mkdirSync(etc, { recursive: true });
    t.after(() => {
      rmSync(etc, { recursive: true, force: true });
      // The folder itself only if nothing else uses it (rmdir refuses a non-empty folder).
      try {
        rmdirSync('/etc/netns');
      } catch {
        // in use, or already gone
      }
    });
    writeFileSync(join(etc, 'hosts'), '127.0.0.1 localhost\n127.0.0.7 db.hosts-only\n');
    writeFileSync(join(etc, 'resolv.conf'), 'nameserver 127.0.0.1\n'); // nothing answers DNS in the pod
    const server = pod.spawn(process.execPath, ['-e', "require('net').createServer((s) => s.end('from hosts\\n')).listen(7000, '127.0.0.7', () => console.log('LISTENING'))"]);
    await server.waitFor(/LISTENING/);
    const proxy = pod.spawn(process.execPath, [CLI, 'proxy', '--forward', '127.0.0.1:15000=db.hosts-only:7000', '--admin', 'off']);
    t.after(() => proxy.stop(5000));
    await proxy.waitFor(/"msg":"proxy ready"/, 15_000);
    assert.match(proxy.output(), /"addresses":\["127\.0\.0\.7"\],"ttlMs":null,"via":"system".*"msg":"forward target resolved"/);
    assert.equal(await tcpRequest(pod, '127.0.0.1', 15000), 'from hosts');
  });

  test('localhost reaches 127.0.0.1 and ::1 (whichever the server listens on), and a localhost bind listens on both', async (t) => {
    const v4only = await echoOn(t, ['127.0.0.1']);
    const { proc, ports } = await startProxy(['--forward', `localhost:0=localhost:${v4only.port}`], { t });
    const resolved = proc.logs.find((l) => l.msg === 'forward target resolved')!;
    assert.deepEqual(resolved['addresses'], ['127.0.0.1', '::1']);
    for (let i = 0; i < 4; i++) assert.equal(await roundTrip(ports[0]!), 'ok', `connection ${i}: ::1 refuses, 127.0.0.1 serves`);
    assert.equal(v4only.hits.get('127.0.0.1'), 4);

    const probe = net.createServer().listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const port = (probe.address() as net.AddressInfo).port;
    probe.close();
    const both = await startProxy(['--forward', `localhost:${port}=127.0.0.1:${v4only.port}`], { t });
    assert.deepEqual(both.bound.map((b) => b.address), [`127.0.0.1:${port}`, `[::1]:${port}`]);
    for (const host of ['127.0.0.1', '::1']) {
      const ok = await withTimeout(new Promise<string>((resolve) => {
        const s = net.connect(port, host, () => s.write('ping'));
        s.on('data', () => {
          s.end();
          resolve('ok');
        });
        s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
      }), 5_000, `a round trip through [${host}]:${port}`);
      assert.equal(ok, 'ok', host);
    }
  });
});
