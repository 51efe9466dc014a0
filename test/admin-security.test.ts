/**
 * The admin server as an attacker sees it from a browser on the same host:
 * a page cannot stop the proxy or change its logging (CSRF: a simple POST
 * without the meshpipe-admin header or a JSON content type, a cross-origin
 * Origin, Sec-Fetch-Site: cross-site), nor read peers, SNI and policy
 * through DNS rebinding (a Host header that is not a loopback address,
 * "127.attacker.example" included). Requests are made with node:http, which
 * lets the test set Host and Origin the way a browser would.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startProxy, waitFor } from './helpers.js';
import { adminAddress } from './admin-client.js';

interface Reply {
  status: number;
  body: string;
}

function request(admin: string, method: string, path: string, headers: Record<string, string>, body = ''): Promise<Reply> {
  const [host, port] = [admin.slice(0, admin.lastIndexOf(':')), Number(admin.slice(admin.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, method, path, headers, timeout: 10_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('admin server: mutating endpoints refuse what a web page can send', () => {
  test('simple, cross-origin, cross-site and rebinding requests are 403; the proxy keeps running; a real one works', async (t) => {
    const { proc } = await startProxy(['--forward', '127.0.0.1:0=127.0.0.1:1', '--admin', '127.0.0.1:0'], { t });
    const admin = await adminAddress(proc);
    const port = admin.slice(admin.lastIndexOf(':') + 1);
    const local = `127.0.0.1:${port}`;
    const refused: Array<[string, string, Record<string, string>, RegExp]> = [
      // What a <form method=post> or a no-cors fetch sends: no custom header, a simple content type.
      ['POST', '/shutdown', { host: local, 'content-type': 'text/plain' }, /needs a "meshpipe-admin: 1" header or a JSON content type/],
      ['POST', '/shutdown', { host: local, 'content-type': 'application/x-www-form-urlencoded', origin: `http://${local}` }, /needs a "meshpipe-admin: 1" header/],
      ['PUT', '/log-filter', { host: local }, /needs a "meshpipe-admin: 1" header/],
      // Cross-origin and cross-site, even with the header (a CORS preflight would be needed and is never granted).
      ['POST', '/shutdown', { host: local, 'meshpipe-admin': '1', origin: 'http://evil.example' }, /cross-origin requests are refused/],
      ['POST', '/shutdown', { host: local, 'meshpipe-admin': '1', origin: `http://localhost:${Number(port) + 1}` }, /cross-origin/],
      ['POST', '/shutdown', { host: local, 'meshpipe-admin': '1', origin: 'null' }, /cross-origin/],
      ['POST', '/shutdown', { host: local, 'meshpipe-admin': '1', 'sec-fetch-site': 'cross-site' }, /cross-site requests are refused/],
      // DNS rebinding: the browser sends the attacker's name as Host.
      ['POST', '/shutdown', { host: `evil.example:${port}`, 'meshpipe-admin': '1' }, /Host header "evil\.example:\d+" is not a loopback address/],
      ['POST', '/shutdown', { host: `127.attacker.example:${port}`, 'meshpipe-admin': '1' }, /not a loopback address/],
      ['PUT', '/log-filter', { host: `evil.example:${port}`, 'content-type': 'application/json' }, /not a loopback address/],
      // The debug endpoints too, through rebinding (the peer is loopback, the name is not).
      ['GET', '/connections', { host: `evil.example:${port}` }, /not a loopback address/],
      ['GET', '/snapshot', { host: `evil.example:${port}` }, /not a loopback address/],
      ['GET', '/policy', { host: `evil.example:${port}` }, /not a loopback address/],
    ];
    for (const [method, path, headers, pattern] of refused) {
      const r = await request(admin, method, path, headers, path === '/log-filter' ? 'trace' : '');
      assert.equal(r.status, 403, `${method} ${path} ${JSON.stringify(headers)}: ${r.status} ${r.body}`);
      assert.match(r.body, pattern, `${method} ${path} ${JSON.stringify(headers)}`);
    }
    assert.ok(!proc.logs.some((l) => l.msg === 'shutdown requested' || l.msg === 'engine log filter changed'), 'nothing was changed');
    assert.ok(proc.logs.some((l) => l.msg === 'admin request refused' && l['path'] === '/shutdown'), 'refusals of mutating requests are logged');
    // Probes and scrapes do not care about Host (Prometheus uses the pod IP).
    assert.equal((await request(admin, 'GET', '/ready', { host: `10.1.2.3:${port}` })).status, 200);
    assert.equal((await request(admin, 'GET', '/metrics', { host: `10.1.2.3:${port}` })).status, 200);
    // The debug endpoints with a loopback Host, and the named forms of loopback.
    for (const host of [local, `localhost:${port}`, `[::1]:${port}`]) {
      assert.equal((await request(admin, 'GET', '/snapshot', { host })).status, 200, host);
    }

    // What meshpipe's own tools and an operator's curl send.
    const filter = await request(admin, 'PUT', '/log-filter', { host: local, 'content-type': 'application/json' }, JSON.stringify({ filter: 'warn' }));
    assert.equal(filter.status, 200, filter.body);
    assert.equal(filter.body, 'engine log filter: warn\n');
    const bad = await request(admin, 'PUT', '/log-filter', { host: local, 'content-type': 'application/json' }, '{"filter": 7}');
    assert.equal(bad.status, 400);
    const same = await request(admin, 'POST', '/shutdown', { host: `localhost:${port}`, origin: `http://localhost:${port}`, 'content-type': 'application/json; charset=utf-8' });
    assert.equal(same.status, 202, same.body);
    await waitFor(() => proc.logs.some((l) => l.msg === 'shutdown requested'), 'the shutdown to start');
    assert.equal((await proc.exited).code, 0);
  });
});
