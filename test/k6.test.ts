/**
 * The k6 scenarios of bench/k6/ (k6 itself cannot be installed here): each
 * script is loaded by Node with stubs of `k6`, `k6/http`, `k6/net/grpc`,
 * `k6/ws` and `k6/metrics` (test/k6/) that make the requests for real, and
 * run once (setup, one iteration of every scenario, teardown) against real
 * servers behind a real meshpipe (`--forward` listeners): an HTTP/1.1 server,
 * an HTTP/2 server over TLS, a gRPC server (@grpc/grpc-js) and a WebSocket
 * echo server (ws). The test asserts what the servers received, that every
 * scenario is an open-loop constant-arrival-rate one, and that the
 * thresholds parse and are evaluated against the measured samples (a bound
 * no request can meet fails them).
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createSecureServer, type Http2SecureServer } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { WebSocketServer } from 'ws';
import { ROOT, startProxy, type RunningProxy } from './helpers.js';
import { run } from './netns.js';

const K6_DIR = join(ROOT, 'bench/k6');
const REGISTER = fileURLToPath(new URL('./k6/register.js', import.meta.url));
const RUNNER = fileURLToPath(new URL('./k6/run-script.js', import.meta.url));

interface Outcome {
  error?: string;
  scenarios: Record<string, { executor: string; rate: number; timeUnit: string; exec: string }>;
  thresholds: { metric: string; expression: string; value: number; ok: boolean }[];
  metrics: Record<string, { type: string; count: number; values: number[] }>;
}

async function runScript(name: string, env: Record<string, string>): Promise<Outcome> {
  const r = await run(process.execPath, ['--import', REGISTER, RUNNER, join(K6_DIR, name), JSON.stringify(env)], { timeoutMs: 60_000 });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  let out: Outcome;
  try {
    out = JSON.parse(last) as Outcome;
  } catch {
    throw new Error(`${name}: no result (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  }
  assert.equal(out.error, undefined, `${name} threw: ${out.error}\n${r.stderr}`);
  assert.equal(r.code, 0, r.stderr);
  return out;
}

/** Every scenario is open loop at the benchmark's rate; every threshold holds; every check passed. */
function assertRun(name: string, out: Outcome, thresholdKeys: string[]): void {
  assert.ok(Object.keys(out.scenarios).length > 0, `${name}: no scenarios`);
  for (const [s, sc] of Object.entries(out.scenarios)) {
    assert.equal(sc.executor, 'constant-arrival-rate', `${name}/${s}`);
    assert.deepEqual([sc.rate, sc.timeUnit], [5000, '1s'], `${name}/${s}: the benchmark's 5,000/s open loop`);
  }
  assert.deepEqual([...new Set(out.thresholds.map((t) => t.metric))].sort(), [...thresholdKeys].sort(), `${name}: thresholds`);
  for (const t of out.thresholds) assert.ok(t.ok, `${name}: threshold ${t.metric} ${t.expression} failed (value ${t.value})`);
  const checks = out.metrics['checks'];
  assert.ok(checks !== undefined && checks.count > 0, `${name}: no checks ran`);
  assert.ok(checks.values.every((v) => v === 1), `${name}: a check failed`);
}

describe('k6 scenarios (bench/k6) against a local meshpipe', { concurrency: false }, () => {
  const received = {
    http1: [] as { method: string; url: string; type: string; body: string }[],
    h2: [] as { method: string; path: string; version: string }[],
    grpc: [] as { message: string; payload: number; scenario: string }[],
    ws: [] as string[],
  };
  let dir: string;
  let http1: HttpServer;
  let h2: Http2SecureServer;
  let grpcServer: grpc.Server;
  let wsHttp: HttpServer;
  let proxy: RunningProxy;
  let ports: { http1: number; h2: number; grpc: number; ws: number };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'meshpipe-k6-'));
    const cert = await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'key.pem'),
      '-out', join(dir, 'cert.pem'), '-days', '1', '-subj', '/CN=app.example', '-addext', 'subjectAltName=DNS:app.example']);
    assert.equal(cert.code, 0, cert.stderr);

    http1 = createHttpServer((req, res) => {
      let body = '';
      req.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => {
        received.http1.push({ method: req.method ?? '', url: req.url ?? '', type: req.headers['content-type'] ?? '', body });
        if (req.method === 'POST') res.writeHead(201, { 'content-type': 'application/json' }).end(body);
        else res.writeHead(200, { 'content-type': 'text/plain' }).end('hello\n');
      });
    });
    h2 = createSecureServer({ key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) }, (req, res) => {
      received.h2.push({ method: req.method, path: req.url, version: req.httpVersion });
      res.writeHead(200, { 'content-type': 'text/plain' }).end('hello h2\n');
    });
    const def = grpc.loadPackageDefinition(protoLoader.loadSync(join(K6_DIR, 'echo.proto'), { longs: String, defaults: true }));
    const Echo = (def['meshpipe'] as grpc.GrpcObject)['bench'] as grpc.GrpcObject;
    grpcServer = new grpc.Server();
    grpcServer.addService((Echo['Echo'] as grpc.ServiceClientConstructor).service, {
      Say: (call: grpc.ServerUnaryCall<{ message: string; payload: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        received.grpc.push({ message: call.request.message, payload: call.request.payload.length, scenario: String(call.metadata.get('x-scenario')[0] ?? '') });
        cb(null, { message: call.request.message, payloadSize: call.request.payload.length });
      },
    });
    const grpcPort = await new Promise<number>((resolve, reject) => grpcServer.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    wsHttp = createHttpServer();
    const wss = new WebSocketServer({ server: wsHttp, path: '/echo' });
    wss.on('connection', (socket) => socket.on('message', (d: Buffer) => {
      received.ws.push(d.toString('utf8'));
      socket.send(d.toString('utf8'));
    }));
    for (const s of [http1, h2, wsHttp]) {
      s.listen(0, '127.0.0.1');
      await once(s, 'listening');
    }
    const port = (s: HttpServer | Http2SecureServer): number => (s.address() as AddressInfo).port;
    const targets = [port(http1), port(h2), grpcPort, port(wsHttp)];
    proxy = await startProxy(targets.flatMap((p) => ['--forward', `127.0.0.1:0=127.0.0.1:${p}`]));
    const [a, b, c, d] = proxy.ports as [number, number, number, number];
    ports = { http1: a, h2: b, grpc: c, ws: d };
  });

  after(() => {
    proxy?.proc.kill();
    grpcServer?.forceShutdown();
    for (const s of [http1, h2, wsHttp]) s?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  // Local runs of one request: the test's own bound on p99, not the benchmark's (lib/config.js).
  const generous = { P99_MS: '10000' };

  test('http1.js: GET and POST over HTTP/1.1 through meshpipe', async () => {
    const out = await runScript('http1.js', { ...generous, TARGET: `http://127.0.0.1:${ports.http1}` });
    assertRun('http1.js', out, ['checks', 'dropped_iterations', 'http_req_failed', 'http_req_duration']);
    assert.deepEqual(received.http1, [
      { method: 'GET', url: '/hello?from=k6', type: '', body: '' },
      { method: 'POST', url: '/orders', type: 'application/json', body: '{"item":"k6","quantity":3}' },
    ]);
  });

  test('http2.js: GET over HTTP/2 (TLS, ALPN h2) through meshpipe', async () => {
    const out = await runScript('http2.js', { ...generous, TARGET: `https://127.0.0.1:${ports.h2}` });
    assertRun('http2.js', out, ['checks', 'dropped_iterations', 'http_req_failed', 'http_req_duration']);
    assert.deepEqual(received.h2, [{ method: 'GET', path: '/hello?from=k6-h2', version: '2.0' }]);
  });

  test('grpc.js: a unary call over h2c through meshpipe', async () => {
    const out = await runScript('grpc.js', { ...generous, TARGET: `127.0.0.1:${ports.grpc}` });
    assertRun('grpc.js', out, ['checks', 'dropped_iterations', 'grpc_req_duration']);
    assert.deepEqual(received.grpc, [{ message: 'hello from k6', payload: 1024, scenario: 'grpc' }]);
  });

  test('websocket.js: an upgrade and ten echoed messages through meshpipe', async () => {
    const out = await runScript('websocket.js', { ...generous, TARGET: `ws://127.0.0.1:${ports.ws}/echo` });
    assertRun('websocket.js', out, ['checks', 'dropped_iterations', 'ws_connecting', 'ws_echo_rtt']);
    assert.deepEqual(received.ws, Array.from({ length: 10 }, (_, i) => `message ${i}`));
    assert.equal(out.metrics['ws_echo_rtt']?.count, 10);
  });

  test('thresholds are evaluated against what was measured: a baseline sets the bound, an impossible bound fails', async () => {
    const withBaseline = await runScript('http1.js', { TARGET: `http://127.0.0.1:${ports.http1}`, BASELINE_P99_MS: '2', RATE: '200' });
    assert.ok(withBaseline.thresholds.some((t) => t.metric === 'http_req_duration' && t.expression === 'p(99)<2.3'), JSON.stringify(withBaseline.thresholds));
    assert.equal(withBaseline.scenarios['http1']?.rate, 200, 'RATE overrides the rate');
    const impossible = await runScript('http1.js', { TARGET: `http://127.0.0.1:${ports.http1}`, P99_MS: '0.000001' });
    const t = impossible.thresholds.find((x) => x.metric === 'http_req_duration');
    assert.ok(t !== undefined && !t.ok && t.value > 0.000001, `the p99 threshold must fail on a bound no request meets: ${JSON.stringify(t)}`);
  });
});
