/**
 * HTTP-aware proxying end to end, with real clients and servers through the
 * real CLI, and the metrics checked against the requests actually made:
 * curl (HTTP/1.0, HTTP/1.1 keep-alive, h2c with prior knowledge, chunked
 * uploads, `Expect: 100-continue`, HEAD), h2load with many concurrent
 * streams, a WebSocket echo (ws) over an HTTP/1.1 upgrade, CONNECT and
 * absolute-form requests through meshpipe to a real forward proxy
 * (tinyproxy), and errors as HTTP responses (502, 504).
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { WebSocket, WebSocketServer } from 'ws';
import { CLI, freePort, HOST, sha256, startProxy, waitFor } from './helpers.js';
import { adminAddress, scrape } from './admin-client.js';
import { samples, total, type Family } from './prom-parse.js';

const execFileP = promisify(execFile);

async function curl(...args: string[]): Promise<string> {
  const { stdout } = await execFileP('curl', ['-sS', '--max-time', '20', ...args], { maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

/** An HTTP/1.1 origin: echoes method, URL, version and the request body's SHA-256. */
async function h1Origin(t: TestContext): Promise<number> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.url?.startsWith('/slow')) {
        setTimeout(() => res.end('slow'), 3000).unref();
        return;
      }
      const body = Buffer.concat(chunks);
      res.setHeader('x-origin-saw-version', req.httpVersion);
      res.setHeader('x-origin-saw-te', String(req.headers['transfer-encoding'] ?? ''));
      const text = `${req.method} ${req.url} ${body.length} ${sha256(body)}`;
      // HEAD answers with the Content-Length a GET would have.
      res.setHeader('content-length', Buffer.byteLength(text));
      res.end(req.method === 'HEAD' ? undefined : text);
    });
  });
  server.listen(0, HOST);
  await once(server, 'listening');
  t.after(() => server.close());
  return (server.address() as AddressInfo).port;
}

/** Waits until a scrape satisfies `ok`. */
async function scrapeUntil(admin: string, what: string, ok: (f: Map<string, Family>) => boolean): Promise<Map<string, Family>> {
  let last: Map<string, Family> | undefined;
  await waitFor(async () => ok((last = await scrape(admin))), what, 10_000, 50);
  return last!;
}

describe('HTTP proxying end to end', () => {
  test('curl: HTTP/1.0, HTTP/1.1 keep-alive, chunked upload, 100-continue, HEAD, counted exactly', async (t) => {
    const port = await h1Origin(t);
    const { proc, ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${port}`, '--admin', '127.0.0.1:0'], { t });
    const admin = await adminAddress(proc);
    const base = `http://127.0.0.1:${ports[0]}`;

    // HTTP/1.0: answered, upstream spoken as HTTP/1.1.
    const v10 = await curl('-0', '-i', `${base}/ten`);
    assert.match(v10, /^HTTP\/1\.[01] 200/);
    assert.match(v10, /x-origin-saw-version: 1\.1/i);
    assert.match(v10, /GET \/ten 0 /);

    // HTTP/1.1: three requests on one connection (curl reuses it).
    const three = await curl('-w', '%{num_connects}\\n', `${base}/a`, `${base}/b`, `${base}/c`);
    assert.match(three, /GET \/a 0 [0-9a-f]{64}1\nGET \/b 0 [0-9a-f]{64}0\nGET \/c 0 [0-9a-f]{64}0\n/, three);

    // Chunked upload of 3 MiB, with Expect: 100-continue.
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-http-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const data = Buffer.alloc(3 * 1024 * 1024, 7);
    writeFileSync(join(dir, 'up.bin'), data);
    const chunked = await curl('-H', 'Transfer-Encoding: chunked', '-H', 'Expect: 100-continue', '--data-binary', `@${join(dir, 'up.bin')}`, `${base}/up`);
    assert.equal(chunked, `POST /up ${data.length} ${sha256(data)}`);

    // HEAD: headers only, the GET's Content-Length kept, and the connection reusable.
    const head = await curl('-I', '-w', '%{size_download}', `${base}/h`, `${base}/h`);
    assert.match(head, /^HTTP\/1\.1 200/);
    assert.match(head, /content-length: 74\r?\n/i, head);
    assert.match(head, /\r\n\r\n0HTTP\/1\.1 200[^]*\r\n\r\n0$/, head);

    const series = { direction: 'outbound', authority: `127.0.0.1:${ports[0]}`, target_addr: `127.0.0.1:${port}` };
    const f = await scrapeUntil(admin, 'seven responses', (m) => total(m, 'response_total', series) === 7);
    assert.equal(total(f, 'request_total', series), 7);
    assert.equal(total(f, 'response_total', { ...series, status_code: '200', classification: 'success' }), 7);
    assert.equal(total(f, 'response_latency_ms_count', series), 7);
    assert.equal(total(f, 'outbound_tcp_detect_http_results_total', { result: 'http/1' }), 4, 'four client connections');
  });

  test('h2c with prior knowledge (curl) and h2load with 100 concurrent streams', async (t) => {
    const server = http2.createServer();
    server.on('stream', (stream, headers) => {
      stream.respond({ ':status': 200, 'content-type': 'text/plain' });
      stream.end(`h2 ${String(headers[':path'])}`);
    });
    server.listen(0, HOST);
    await once(server, 'listening');
    t.after(() => server.close());
    const port = (server.address() as AddressInfo).port;
    const { proc, ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${port},mode=http2`, '--admin', '127.0.0.1:0'], { t });
    const admin = await adminAddress(proc);
    assert.equal(await curl('--http2-prior-knowledge', `http://127.0.0.1:${ports[0]}/x`), 'h2 /x');
    const { stdout } = await execFileP('h2load', ['-n', '4000', '-c', '4', '-m', '100', `http://127.0.0.1:${ports[0]}/load`], { timeout: 60_000 });
    assert.match(stdout, /requests: 4000 total, 4000 started, 4000 done, 4000 succeeded, 0 failed, 0 errored/, stdout);
    const series = { direction: 'outbound', target_addr: `127.0.0.1:${port}` };
    const f = await scrapeUntil(admin, '4001 responses', (m) => total(m, 'response_total', series) === 4001);
    assert.equal(total(f, 'request_total', series), 4001);
    assert.equal(total(f, 'response_total', { ...series, status_code: '200' }), 4001);
  });

  test('a WebSocket echo over an HTTP/1.1 upgrade', async (t) => {
    const wss = new WebSocketServer({ host: HOST, port: 0 });
    await once(wss, 'listening');
    wss.on('connection', (ws) => ws.on('message', (m, binary) => ws.send(m, { binary })));
    t.after(() => wss.close());
    const port = (wss.address() as AddressInfo).port;
    const { proc, ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${port}`, '--admin', '127.0.0.1:0'], { t });
    const admin = await adminAddress(proc);
    const ws = new WebSocket(`ws://127.0.0.1:${ports[0]}/chat`);
    await once(ws, 'open');
    const messages = ['hello', 'x'.repeat(200_000), Buffer.alloc(70_000, 3).toString('base64')];
    for (const m of messages) {
      ws.send(m);
      const [echo] = (await once(ws, 'message')) as [Buffer];
      assert.equal(echo.toString(), m);
    }
    ws.close();
    await once(ws, 'close');
    const f = await scrapeUntil(admin, 'the 101', (m) => total(m, 'response_total', { status_code: '101' }) === 1);
    assert.equal(total(f, 'request_total', { direction: 'outbound' }), 1);
  });

  test('CONNECT and absolute-form requests through meshpipe to a forward proxy (tinyproxy)', async (t) => {
    const origin = await h1Origin(t);
    const tinyPort = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-tinyproxy-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    // No ConnectPort line: CONNECT is allowed to any port.
    writeFileSync(join(dir, 'tinyproxy.conf'), [
      `Port ${tinyPort}`, `Listen ${HOST}`, 'Timeout 30', 'MaxClients 20', `Allow ${HOST}`, 'LogLevel Info', `LogFile "${join(dir, 'log')}"`,
    ].join('\n'));
    const tiny = spawn('tinyproxy', ['-d', '-c', join(dir, 'tinyproxy.conf')], { stdio: 'ignore' });
    t.after(() => tiny.kill());
    await waitFor(async () => {
      try {
        await execFileP('curl', ['-sS', '-o', '/dev/null', `http://${HOST}:${tinyPort}/`]);
        return true;
      } catch (err) {
        return (err as { code?: number }).code === 22 ? true : false;
      }
    }, 'tinyproxy listening', 10_000, 50);
    const { ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${tinyPort}`, '--admin', '127.0.0.1:0'], { t });
    const via = `http://127.0.0.1:${ports[0]}`;
    // CONNECT (curl -p): the tunnel reaches the origin through tinyproxy.
    const tunnelled = await curl('-p', '-x', via, `http://127.0.0.1:${origin}/through-connect`);
    assert.match(tunnelled, /^GET \/through-connect 0 /);
    // HTTP/1.0 CONNECT too.
    const ten = await curl('-p', '--proxy1.0', `127.0.0.1:${ports[0]}`, `http://127.0.0.1:${origin}/connect10`);
    assert.match(ten, /^GET \/connect10 0 /);
    // Absolute-form GET: the forward proxy sees the absolute URI it needs.
    const absolute = await curl('-x', via, `http://127.0.0.1:${origin}/absolute`);
    assert.match(absolute, /^GET \/absolute 0 /);
  });

  test('errors are HTTP responses: 502 for a refused upstream, 504 past the response timeout', async (t) => {
    const dead = await freePort();
    const slow = await h1Origin(t);
    const { proc, ports } = await startProxy([
      '--forward', `127.0.0.1:0=127.0.0.1:${dead},mode=http1`,
      '--forward', `127.0.0.1:0=127.0.0.1:${slow}`,
      '--http-response-timeout', '300ms',
      '--admin', '127.0.0.1:0',
    ], { t });
    const admin = await adminAddress(proc);
    assert.equal(await curl('-o', '/dev/null', '-w', '%{http_code}', `http://127.0.0.1:${ports[0]}/`), '502');
    assert.equal(await curl('-o', '/dev/null', '-w', '%{http_code}', `http://127.0.0.1:${ports[1]}/slow`), '504');
    const f = await scrapeUntil(admin, 'both errors', (m) => samples(m, 'outbound_http_errors_total').length > 0 && total(m, 'outbound_http_errors_total', { error: 'gateway_timeout' }) === 1);
    assert.equal(total(f, 'outbound_http_errors_total', { error: 'bad_gateway' }), 1);
    assert.equal(total(f, 'response_total', { status_code: '502', classification: 'failure', error: 'bad_gateway' }), 1);
    assert.equal(total(f, 'response_total', { status_code: '504', classification: 'failure', error: 'gateway_timeout' }), 1);
  });
});

describe('HTTP/1 request heads are timed from their first byte, idle keep-alive is not', () => {
  test('a keep-alive connection idle past --http-header-timeout is reused; a trickled head is cut off and counted', async (t) => {
    const origin = await h1Origin(t);
    const { proc, ports } = await startProxy([
      '--forward', `127.0.0.1:0=127.0.0.1:${origin}`,
      '--http-header-timeout', '300ms',
      '--admin', '127.0.0.1:0',
    ], { t });
    const admin = await adminAddress(proc);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    t.after(() => agent.destroy());
    const get = (path: string) => new Promise<{ body: string; port: number }>((resolve, reject) => {
      const req = http.get({ host: HOST, port: ports[0], path, agent }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ body, port: req.socket!.localPort! }));
      });
      req.on('error', reject);
    });
    const first = await get('/one');
    assert.match(first.body, /^GET \/one 0 /);
    // Idle for three head timeouts between requests (hyper's own timer
    // would close the connection here).
    await new Promise((r) => setTimeout(r, 1000));
    const second = await get('/two');
    assert.match(second.body, /^GET \/two 0 /);
    assert.equal(second.port, first.port, 'the same client connection served both requests');
    // A head that never completes: the proxy closes the connection.
    const slow = net.connect(ports[0]!, HOST);
    await once(slow, 'connect');
    slow.write('GET /never HTTP/1.1\r\nHost: a\r\n');
    const received: Buffer[] = [];
    slow.on('data', (c: Buffer) => received.push(c));
    await once(slow, 'close');
    assert.equal(Buffer.concat(received).length, 0, 'closed without a response');
    const f = await scrapeUntil(admin, 'header_timeout counted', (m) => total(m, 'outbound_http_errors_total', { error: 'header_timeout' }) === 1);
    assert.equal(total(f, 'outbound_http_errors_total', { error: 'header_timeout' }), 1);
  });

  test('--http-header-timeout 0 is refused with what is expected', async () => {
    const r = await execFileP(process.execPath, [CLI, 'run', '--forward', '127.0.0.1:0=127.0.0.1:1', '--http-header-timeout', '0']).catch((e: { stderr: string; code: number }) => e);
    assert.notEqual((r as { code?: number }).code ?? 0, 0);
    assert.match((r as { stderr: string }).stderr, /http-header-timeout.*at least 1ms/);
  });
});
