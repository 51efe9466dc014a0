/**
 * /metrics through the real CLI: counters checked against bytes actually
 * sent, for an opaque connection (`--forward ...,mode=opaque`) and for a
 * detected HTTP/1.1 request made by curl; every scrape is parsed by the
 * strict Prometheus text parser (test/prom-parse.ts), which also checks that
 * histograms are cumulative and end at +Inf == _count. The parser itself is
 * tested first, so a lenient parser cannot make the other tests pass.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import http from 'node:http';
import { once } from 'node:events';
import net, { type AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { collect, connect, HOST, startProxy, startSourceServer, waitFor, writeRandom } from './helpers.js';
import { adminRequest, adminAddress, scrape } from './admin-client.js';
import { parsePrometheusText, samples, total } from './prom-parse.js';

const execFileP = promisify(execFile);

describe('prometheus text parser (strictness)', () => {
  const ok = '# HELP a_total x\n# TYPE a_total counter\na_total{x="1",y="q\\"\\n\\\\"} 3\n';
  test('parses labels with escapes', () => {
    const f = parsePrometheusText(ok);
    assert.deepEqual(f.get('a_total')?.samples[0]?.labels, { x: '1', y: 'q"\n\\' });
  });
  for (const [what, text] of [
    ['a sample without TYPE', 'b 1\n'],
    ['a duplicate series', '# TYPE a counter\na{x="1"} 1\na{x="1"} 2\n'],
    ['a bad escape', '# TYPE a counter\na{x="\\t"} 1\n'],
    ['an unquoted label value', '# TYPE a counter\na{x=1} 1\n'],
    ['a bad value', '# TYPE a counter\na 1x\n'],
    ['a missing final newline', '# TYPE a counter\na 1'],
    ['non-contiguous samples', '# TYPE a counter\n# TYPE b counter\na 1\nb 1\na{x="2"} 1\n'],
    ['a non-cumulative histogram', '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n'],
    ['+Inf != _count', '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 2\n'],
  ] as const) {
    test(`rejects ${what}`, () => assert.throws(() => parsePrometheusText(text)));
  }
});

/** Polls /metrics until `ready(families)` holds, returning that scrape. */
async function scrapeUntil(addr: string, what: string, ready: (f: Awaited<ReturnType<typeof scrape>>) => boolean) {
  let last: Awaited<ReturnType<typeof scrape>> | undefined;
  await waitFor(async () => {
    last = await scrape(addr);
    return ready(last);
  }, what, 10_000, 50);
  return last!;
}

describe('/metrics counts what was sent', () => {
  test('an opaque connection: Linkerd names, labels and exact byte counts per peer', async (t) => {
    const fromServer = 300_001; // bytes the target sends
    const target = await startSourceServer(fromServer, t);
    const { proc, ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${target.port},mode=opaque`, '--admin', '127.0.0.1:0'], { t });
    const admin = await adminAddress(proc);
    const targetAddr = `127.0.0.1:${target.port}`;

    const socket = await connect(ports[0]!);
    const received = collect(socket);
    const fromClient = 1_048_576 + 123;
    const sent = await writeRandom(socket, fromClient);
    socket.end();
    const got = await received;
    assert.equal(got.bytes, fromServer);
    assert.equal((await target.connection(1)).socket.bytesRead, fromClient);
    assert.equal((await (await target.connection(1)).received).sha256, sent);

    const series = { direction: 'outbound', target_addr: targetAddr };
    const f = await scrapeUntil(admin, 'both tcp_close_total samples', (m) => total(m, 'tcp_close_total', series) === 2);
    const src = { ...series, peer: 'src' };
    const dst = { ...series, peer: 'dst' };
    assert.equal(f.get('tcp_open_total')?.type, 'counter');
    assert.equal(f.get('tcp_open_connections')?.type, 'gauge');
    assert.equal(f.get('tcp_connection_duration_ms')?.type, 'histogram');
    assert.equal(total(f, 'tcp_open_total', src), 1);
    assert.equal(total(f, 'tcp_open_total', dst), 1);
    assert.equal(total(f, 'tcp_open_connections', series), 0);
    // Linkerd's point of view: the proxy reads from the client what it writes to the server.
    assert.equal(total(f, 'tcp_read_bytes_total', src), fromClient);
    assert.equal(total(f, 'tcp_write_bytes_total', dst), fromClient);
    assert.equal(total(f, 'tcp_read_bytes_total', dst), fromServer);
    assert.equal(total(f, 'tcp_write_bytes_total', src), fromServer);
    assert.equal(total(f, 'tcp_close_total', { ...src, errno: '' }), 1);
    const [labels] = samples(f, 'tcp_open_total', src);
    assert.deepEqual(Object.keys(labels!.labels).sort(), ['direction', 'no_tls_reason', 'peer', 'sni', 'target_addr', 'target_ip', 'target_port', 'tls']);
    assert.equal(labels!.labels['target_ip'], '127.0.0.1');
    assert.equal(labels!.labels['target_port'], String(target.port));
    assert.equal(labels!.labels['tls'], 'no_identity');
    assert.equal(total(f, 'tcp_connection_duration_ms_count', src), 1);
    // An opaque listener never detects: no http/1, http/2 or not_http results.
    for (const result of ['http/1', 'http/2', 'not_http']) {
      assert.equal(total(f, 'outbound_tcp_detect_http_results_total', { result }), 0, result);
    }
    // Listener and process metrics are on the same page.
    assert.equal(total(f, 'meshpipe_listener_accepted_total', { direction: 'outbound' }), 1);
    assert.equal(total(f, 'meshpipe_listener_accepting'), 1);
    assert.ok(samples(f, 'process_resident_memory_bytes').length === 1, 'default process metrics present');
    assert.ok(samples(f, 'nodejs_eventloop_lag_seconds').length === 1, 'event-loop lag present');
    // HTTP families are on the page (Linkerd's names) but an opaque listener has no requests.
    for (const name of ['request_total', 'response_total']) assert.equal(samples(f, name).length, 0, name);
    assert.equal(f.get('response_latency_ms')?.type, 'histogram');
  });

  test('a detected HTTP/1.1 request (curl): detect result http/1, exact client bytes, HTTP metrics', async (t) => {
    const body = 'x'.repeat(5000);
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length, connection: 'close' }).end(body));
    });
    server.listen(0, HOST);
    await once(server, 'listening');
    t.after(() => server.close());
    const port = (server.address() as AddressInfo).port;
    const { proc, ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${port}`, '--admin', '127.0.0.1:0'], { t });
    const admin = await adminAddress(proc);

    const { stdout } = await execFileP('curl', [
      '-sS', '--http1.1', '-o', '/dev/null', '-w', '%{http_code} %{size_request} %{size_header} %{size_download}',
      '-H', 'x-test: metrics', `http://127.0.0.1:${ports[0]}/some/path?q=1`,
    ]);
    const [code, request, header, download] = stdout.trim().split(' ').map(Number);
    assert.equal(code, 200);
    assert.equal(download, body.length);

    const series = { direction: 'outbound', target_addr: `127.0.0.1:${port}` };
    const f = await scrapeUntil(admin, 'the connection closed', (m) => total(m, 'tcp_close_total', series) === 2);
    assert.equal(total(f, 'outbound_tcp_detect_http_results_total', { result: 'http/1', target_port: String(port) }), 1);
    assert.equal(total(f, 'inbound_tcp_detect_http_results_total'), 0);
    assert.equal(total(f, 'tcp_read_bytes_total', { ...series, peer: 'src' }), request);
    assert.equal(total(f, 'tcp_write_bytes_total', { ...series, peer: 'src' }), header! + download);
    // A series has one counter per direction: for an HTTP connection, the client side's.
    assert.equal(total(f, 'tcp_read_bytes_total', { ...series, peer: 'dst' }), header! + download);
    assert.equal(total(f, 'tcp_write_bytes_total', { ...series, peer: 'dst' }), request);
    assert.equal(total(f, 'meshpipe_detect_duration_ms_count', { direction: 'outbound' }), 1);
    const http1 = { ...series, authority: `127.0.0.1:${ports[0]}` };
    assert.equal(total(f, 'request_total', http1), 1);
    assert.equal(total(f, 'response_total', { ...http1, status_code: '200', classification: 'success', grpc_status: '', error: '' }), 1);
    assert.equal(total(f, 'response_latency_ms_count', http1), 1);
    assert.equal(total(f, 'meshpipe_server_first_targets'), 0);
  });

  test('a failed connect is counted and the listener keeps serving', async (t) => {
    const { proc, ports } = await startProxy(['--forward', '127.0.0.1:0=127.0.0.1:1,mode=opaque', '--admin', '127.0.0.1:0'], { t });
    const admin = await adminAddress(proc);
    for (let i = 0; i < 3; i++) {
      // The proxy closes (or resets) the client as soon as the connect fails, possibly before
      // Node reports 'connect': only the close matters here.
      const s = net.connect({ port: ports[0]!, host: HOST });
      s.on('error', () => undefined);
      await new Promise((r) => s.on('close', r)); // not once(): it rejects on 'error'
    }
    const f = await scrapeUntil(admin, 'three connect failures', (m) => total(m, 'meshpipe_connect_failures_total') === 3);
    assert.equal(total(f, 'tcp_close_total', { peer: 'dst', errno: 'ECONNREFUSED' }), 3);
    // /connections is empty again and well-formed.
    const res = await adminRequest(admin, '/connections');
    assert.equal(res.status, 200);
    assert.deepEqual(JSON.parse(res.body), { limit: 100, count: 0, connections: [] });
  });
});
