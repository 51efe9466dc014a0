/**
 * Protocol detection (issue 3) with real peers, through the `Proxy` library
 * API in this process so each test can read the engine's detection counters
 * from `snapshot()`: curl over HTTP/1.1 and HTTP/2 prior knowledge, curl over
 * TLS with SNI, a Node TLS client with a ClientHello larger than 8 KiB,
 * redis-cli against redis-server (not HTTP; opaque with --opaque-ports or
 * --default-opaque-ports), a trickling client that ends at the detect
 * timeout, a client that closes during detection, and a table of every
 * outcome (http/1, http/2, tls, not_http, opaque_port, read_timeout,
 * server_first) with SHA-256 checked both ways. The proxy is built from
 * command-line flags with the same parser as `meshpipe proxy`, so the flags
 * of issue 3 are exercised end to end. Every transfer checks its bytes.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { parseProxyArgv } from '../ts/cli/args.js';
import { Proxy } from '../ts/engine/proxy.js';
import type { EngineSnapshot } from '../ts/engine/native.js';
import { collect, connect, freePort, HOST, isListening, MiB, sha256, sleep, startEchoServer, startServer, waitFor, withTimeout } from './helpers.js';

const run = promisify(execFile);

/** Starts an in-process proxy from `meshpipe proxy` flags; closed after the test. */
async function startProxyInProcess(t: TestContext, args: string[]): Promise<{ proxy: Proxy; ports: number[] }> {
  const { config } = parseProxyArgv([...args, '--admin', 'off'], { env: {} });
  const proxy = Proxy.fromConfig(config);
  const bound = await proxy.start();
  t.after(() => proxy.close({ drainMs: 0 }));
  return { proxy, ports: bound.map((b) => Number(b.bind.slice(b.bind.lastIndexOf(':') + 1))) };
}

/** The count of one detection result for a target port. */
function detected(snapshot: EngineSnapshot, result: string, port: number): number {
  return snapshot.detect.filter((d) => d.result === result && d.targetPort === port).reduce((sum, d) => sum + d.count, 0);
}

/** Waits until the engine counted `result` for `port` at least `n` times (counters settle after close). */
async function expectDetected(proxy: Proxy, result: string, port: number, n = 1): Promise<void> {
  try {
    await waitFor(() => detected(proxy.snapshot(), result, port) >= n, `${n} x ${result} on port ${port}`, 5000);
  } catch (err) {
    assert.fail(`${(err as Error).message}; detect counters: ${JSON.stringify(proxy.snapshot().detect)}`);
  }
}

/** A self-signed certificate for meshpipe.test, made by the real openssl. */
async function certificate(): Promise<{ key: string; cert: string; certPath: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-tls-'));
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  await run('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=meshpipe.test',
    '-addext', 'subjectAltName=DNS:meshpipe.test', '-keyout', keyPath, '-out', certPath,
  ]);
  return { key: readFileSync(keyPath, 'utf8'), cert: readFileSync(certPath, 'utf8'), certPath };
}

test('curl over HTTP/1.1 is detected as http/1 and a 1 MiB upload arrives intact', async (t) => {
  const server = http.createServer((req, res) => {
    const hash = createHash('sha256');
    req.on('data', (c: Buffer) => hash.update(c));
    req.on('end', () => res.end(`${req.method} ${req.url} ${hash.digest('hex')}`));
  });
  server.listen(0, HOST);
  await once(server, 'listening');
  t.after(() => server.close());
  const port = (server.address() as { port: number }).port;
  const { proxy, ports } = await startProxyInProcess(t, ['--forward', `${HOST}:0=${HOST}:${port}`]);
  const body = randomBytes(MiB);
  const file = join(mkdtempSync(join(tmpdir(), 'meshpipe-h1-')), 'body');
  writeFileSync(file, body);
  const { stdout } = await run('curl', ['-sS', '--fail', '--http1.1', '--data-binary', `@${file}`, `http://${HOST}:${ports[0]}/upload`]);
  assert.equal(stdout, `POST /upload ${sha256(body)}`);
  await expectDetected(proxy, 'http/1', port);
});

test('curl with HTTP/2 prior knowledge is detected as http/2', async (t) => {
  const server = http2.createServer((req, res) => res.end(`h2 ${req.url}`));
  server.listen(0, HOST);
  await once(server, 'listening');
  t.after(() => server.close());
  const port = (server.address() as { port: number }).port;
  const { proxy, ports } = await startProxyInProcess(t, ['--forward', `${HOST}:0=${HOST}:${port}`]);
  const { stdout } = await run('curl', ['-sS', '--fail', '--http2-prior-knowledge', `http://${HOST}:${ports[0]}/grpc.Service/Method`]);
  assert.equal(stdout, 'h2 /grpc.Service/Method');
  await expectDetected(proxy, 'http/2', port);
});

test('TLS: curl with SNI and a ClientHello over 8 KiB are detected as tls, proxied intact, SNI kept', async (t) => {
  const { key, cert, certPath } = await certificate();
  const server = https.createServer({ key, cert, ALPNProtocols: ['http/1.1'] }, (req, res) => res.end(`tls ${req.url}`));
  server.listen(0, HOST);
  await once(server, 'listening');
  t.after(() => server.close());
  const port = (server.address() as { port: number }).port;
  const { proxy, ports } = await startProxyInProcess(t, ['--forward', `${HOST}:0=${HOST}:${port}`]);
  const { stdout } = await run('curl', [
    '-sS', '--fail', '--cacert', certPath, '--resolve', `meshpipe.test:${ports[0]}:${HOST}`, `https://meshpipe.test:${ports[0]}/secure`,
  ]);
  assert.equal(stdout, 'tls /secure');
  await expectDetected(proxy, 'tls', port);
  assert.ok(
    proxy.snapshot().tcp.some((s) => s.targetPort === port && s.sni === 'meshpipe.test'),
    `the SNI is kept for metrics: ${JSON.stringify(proxy.snapshot().tcp.map((s) => [s.targetPort, s.sni]))}`,
  );

  // A ClientHello of ~10 KiB (like post-quantum key shares): 300 ALPN names of 30 bytes.
  const alpn = Array.from({ length: 300 }, (_, i) => `x-meshpipe-padding-protocol-${String(i).padStart(3, '0')}`.slice(0, 30));
  alpn.push('http/1.1');
  const client = tls.connect({ host: HOST, port: ports[0]!, servername: 'meshpipe.test', ca: cert, ALPNProtocols: alpn });
  await withTimeout(once(client, 'secureConnect'), 10_000, 'the large ClientHello handshake');
  client.end('GET /big HTTP/1.1\r\nHost: meshpipe.test\r\nConnection: close\r\n\r\n');
  let response = '';
  client.setEncoding('utf8').on('data', (c: string) => (response += c));
  await withTimeout(once(client, 'end'), 10_000, 'the response');
  assert.match(response, /tls \/big$/);
  await expectDetected(proxy, 'tls', port, 2);
});

test('redis-cli: not HTTP on a detect port; opaque with --opaque-ports or --default-opaque-ports', async (t) => {
  const redisPort = await freePort();
  const redis = spawn('redis-server', ['--port', String(redisPort), '--bind', HOST, '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  t.after(() => redis.kill('SIGKILL'));
  await waitFor(() => isListening(redisPort), 'redis-server to listen', 10_000);
  const cases: Array<[string[], string]> = [
    [[], 'not_http'],
    [['--opaque-ports', String(redisPort)], 'opaque_port'],
    [['--default-opaque-ports', `1-10,${redisPort}`], 'opaque_port'],
  ];
  for (const [flags, result] of cases) {
    const { proxy, ports } = await startProxyInProcess(t, ['--forward', `${HOST}:0=${HOST}:${redisPort}`, ...flags]);
    const value = randomBytes(16 * 1024).toString('hex'); // one argv string must stay under 128 KiB
    const set = await run('redis-cli', ['-h', HOST, '-p', String(ports[0]), 'SET', 'k', value]);
    assert.equal(set.stdout.trim(), 'OK');
    const get = await run('redis-cli', ['-h', HOST, '-p', String(ports[0]), 'GET', 'k'], { maxBuffer: 4 * MiB });
    assert.equal(get.stdout.trim(), value, `${flags.join(' ') || 'no flags'}: the value round-trips intact`);
    await expectDetected(proxy, result, redisPort, 2);
    await proxy.close({ drainMs: 0 });
  }
});

test('a client trickling an unfinished request line ends at --detect-timeout as TCP with every byte forwarded', async (t) => {
  const echo = await startEchoServer(t);
  const { proxy, ports } = await startProxyInProcess(t, ['--forward', `${HOST}:0=${HOST}:${echo.port}`, '--detect-timeout', '1s', '--server-first-grace', '0']);
  const client = await connect(ports[0]!);
  const echoed = collect(client);
  const started = Date.now();
  let sent = 'GET /';
  client.write(sent);
  // One byte every 100 ms for 1.5 s: still a plausible request target at the 1 s timeout.
  for (let i = 0; i < 15; i++) {
    await sleep(100);
    client.write('a');
    sent += 'a';
  }
  const tail = randomBytes(256 * 1024);
  client.end(tail);
  const r = await withTimeout(echoed, 10_000, 'the echo');
  assert.equal(r.sha256, sha256(Buffer.concat([Buffer.from(sent), tail])), 'bytes read during detection come first, in order');
  assert.ok(Date.now() - started >= 1000);
  await expectDetected(proxy, 'read_timeout', echo.port);
});

test('--server-first-grace 0 turns the race off: a silent client waits for the detect timeout', async (t) => {
  const banner = '* OK IMAP4 ready\r\n';
  const server = await startServerWithBanner(t, banner);
  const { proxy, ports } = await startProxyInProcess(t, ['--forward', `${HOST}:0=${HOST}:${server}`, '--detect-timeout', '800ms', '--server-first-grace', '0']);
  const started = Date.now();
  const client = await connect(ports[0]!);
  const [first] = (await withTimeout(once(client, 'data'), 5000, 'the banner')) as [Buffer];
  const delay = Date.now() - started;
  assert.equal(first.toString(), banner);
  assert.ok(delay >= 700, `no server-first race: the banner waited for the 800 ms timeout (${delay} ms)`);
  client.destroy();
  await expectDetected(proxy, 'read_timeout', server);
});

test('--port-detect-timeout: one port gets its own detect timeout, others keep --detect-timeout', async (t) => {
  const banner = '* OK IMAP4 ready\r\n';
  const fast = await startServerWithBanner(t, banner);
  const slow = await startServerWithBanner(t, banner);
  const { proxy, ports } = await startProxyInProcess(t, [
    '--forward', `${HOST}:0=${HOST}:${fast}`, '--forward', `${HOST}:0=${HOST}:${slow}`,
    '--detect-timeout', '1500ms', '--server-first-grace', '0', '--port-detect-timeout', `outbound:${fast}=200ms`,
  ]);
  const firstByte = async (port: number): Promise<number> => {
    const started = Date.now();
    const client = await connect(port);
    const [first] = (await withTimeout(once(client, 'data'), 5000, 'the banner')) as [Buffer];
    assert.equal(first.toString(), banner);
    client.destroy();
    return Date.now() - started;
  };
  const [fastDelay, slowDelay] = await Promise.all([firstByte(ports[0]!), firstByte(ports[1]!)]);
  assert.ok(fastDelay >= 180 && fastDelay < 1200, `the port's own 200 ms timeout applies (${fastDelay} ms)`);
  assert.ok(slowDelay >= 1400, `the other port keeps --detect-timeout 1500ms (${slowDelay} ms)`);
  await expectDetected(proxy, 'read_timeout', fast);
  await expectDetected(proxy, 'read_timeout', slow);
});

test('server speaks first: the first connection races after the grace period, later ones skip detection', async (t) => {
  const banner = '220 mail.example ESMTP\r\n';
  const server = await startServerWithBanner(t, banner);
  const { proxy, ports } = await startProxyInProcess(t, ['--forward', `${HOST}:0=${HOST}:${server}`, '--server-first-grace', '100ms']);
  const delays: number[] = [];
  for (let i = 0; i < 10; i++) {
    const started = Date.now();
    const client = await connect(ports[0]!);
    const [first] = (await withTimeout(once(client, 'data'), 5000, `banner ${i + 1}`)) as [Buffer];
    delays.push(Date.now() - started);
    assert.equal(first.toString(), banner);
    client.end('QUIT\r\n');
    assert.equal((await withTimeout(collect(client), 5000, 'the echo')).sha256, sha256('QUIT\r\n'));
  }
  assert.ok(delays[0]! >= 90 && delays[0]! < 1500, `first banner after the 100 ms grace plus one round trip: ${delays[0]} ms`);
  // Later connections skip detection: the learned target answers them at once (counted below as
  // server_first cache hits), so each waits less than the first one's grace period did.
  const later = delays.slice(1).sort((a, b) => a - b);
  const median = later[Math.floor(later.length / 2)]!;
  assert.ok(median < delays[0]! / 2, `later connections skip the grace wait: first ${delays[0]} ms, later ${delays.slice(1).join(', ')} ms`);
  const learned = proxy.snapshot().serverFirst.targets.find((x) => x.addr === `${HOST}:${server}`);
  assert.equal(learned?.hits, 9, 'the nine later connections were answered from the learned target');
  await expectDetected(proxy, 'server_first', server);
  assert.ok(proxy.snapshot().serverFirst.targets.some((x) => x.addr === `${HOST}:${server}`), 'the target is remembered');
  assert.deepEqual(
    proxy.takeEvents().filter((e) => e.kind === 'serverFirstLearned').map((e) => e.target),
    [`${HOST}:${server}`],
    'exactly one learned event per target (one log hint)',
  );
});

test('a client that closes during detection is counted; --forward mode=http2 with non-HTTP/2 bytes is still proxied', async (t) => {
  const echo = await startEchoServer(t);
  const { proxy, ports } = await startProxyInProcess(t, [
    '--forward', `${HOST}:0=${HOST}:${echo.port}`,
    '--forward', `${HOST}:0=${HOST}:${echo.port},mode=http2`,
  ]);
  // Silent past the 100 ms grace (so the upstream is dialled for the
  // server-first race), then gone without a byte.
  const quitter = await connect(ports[0]!);
  await sleep(300);
  quitter.end();
  await withTimeout(collect(quitter), 5000, 'the quitter to be closed');
  await expectDetected(proxy, 'client_closed', echo.port);
  const upstream = await echo.connection(1);
  const atTarget = await withTimeout(upstream.received, 5000, 'the raced upstream connection to be closed too');
  assert.equal(atTarget.bytes, 0);

  const client = await connect(ports[1]!);
  const payload = Buffer.concat([Buffer.from('this is not an HTTP/2 preface at all\r\n'), randomBytes(MiB)]);
  const echoed = collect(client);
  client.end(payload);
  const r = await withTimeout(echoed, 10_000, 'the echo on the http2 port');
  assert.equal(r.sha256, sha256(payload), 'a declared mode that does not match is handled as TCP, not dropped');
});

test('no byte lost: every detection outcome forwards the detection bytes first, SHA-256 checked both ways (HTTP as TCP with --no-http)', async (t) => {
  const clientHello = await captureClientHello();
  const banner = Buffer.from('+OK POP3 ready\r\n');
  // One target per outcome (the counters are per target port).
  const cases: Array<{ result: string; mode?: string; banner?: boolean; first: Buffer; pauseMs?: number }> = [
    { result: 'http/1', first: Buffer.from('POST /upload HTTP/1.1\r\nHost: x\r\n\r\n') },
    { result: 'http/2', first: Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n') },
    { result: 'tls', first: clientHello },
    { result: 'not_http', first: Buffer.from([0, 1, 2, 3]) },
    { result: 'opaque_port', mode: 'opaque', first: Buffer.from('GET / HTTP/1.1\r\n') },
    { result: 'read_timeout', first: Buffer.from('GET /very-long-'), pauseMs: 700 },
    { result: 'server_first', banner: true, first: Buffer.alloc(0) },
  ];
  const servers = await Promise.all(
    cases.map((c) =>
      startServer(({ socket }) => {
        socket.on('error', () => undefined);
        if (c.banner) socket.write(banner);
        socket.pipe(socket);
      }, t),
    ),
  );
  const { proxy, ports } = await startProxyInProcess(t, [
    ...cases.flatMap((c, i) => ['--forward', `${HOST}:0=${HOST}:${servers[i]!.port}${c.mode ? `,mode=${c.mode}` : ''}`]),
    '--detect-timeout', '400ms',
    // The echo servers are no HTTP servers: HTTP is forwarded as bytes here
    // (the HTTP layer's own "nothing lost" is test/http-proxy.test.ts').
    '--no-http',
  ]);
  for (const [i, c] of cases.entries()) {
    const client = await connect(ports[i]!);
    const received = collect(client);
    // Server-first: speak only after the banner arrived ('readable' pauses the
    // stream while listened to; `collect` resumes flowing once it is removed).
    if (c.banner) await withTimeout(once(client, 'readable'), 5000, 'the banner');
    client.write(c.first);
    if (c.pauseMs) await sleep(c.pauseMs);
    const rest = randomBytes(2 * MiB);
    client.end(rest);
    const sent = Buffer.concat([c.first, rest]);
    const atClient = await withTimeout(received, 10_000, `the echo (${c.result})`);
    const atServer = await withTimeout(servers[i]!.accepted[0]!.received, 5000, `the server side (${c.result})`);
    assert.equal(atServer.sha256, sha256(sent), `${c.result}: client -> server intact, detection bytes first`);
    assert.equal(atClient.sha256, sha256(c.banner ? Buffer.concat([banner, sent]) : sent), `${c.result}: server -> client intact`);
    await expectDetected(proxy, c.result, servers[i]!.port);
  }
});

/** The first TLS record a real Node/OpenSSL client sends: a ClientHello with SNI. */
async function captureClientHello(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let done!: () => void;
  const got = new Promise<void>((r) => (done = r));
  const server = net.createServer((socket) => {
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      const all = Buffer.concat(chunks);
      if (all.length >= 5 && all.length >= 5 + all.readUInt16BE(3)) {
        done();
        socket.destroy();
      }
    });
  });
  server.listen(0, HOST);
  await once(server, 'listening');
  const client = tls.connect({ host: HOST, port: (server.address() as net.AddressInfo).port, servername: 'capture.test', rejectUnauthorized: false });
  client.on('error', () => undefined);
  await withTimeout(got, 5000, 'a ClientHello');
  client.destroy();
  server.close();
  const all = Buffer.concat(chunks);
  return all.subarray(0, 5 + all.readUInt16BE(3));
}

/** A server that greets every client first, then echoes. */
async function startServerWithBanner(t: TestContext, banner: string): Promise<number> {
  const server = await startServer(({ socket }) => {
    socket.on('error', () => undefined);
    socket.write(banner);
    socket.pipe(socket);
  }, t);
  return server.port;
}
