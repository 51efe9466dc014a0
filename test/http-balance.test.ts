/**
 * Per-request balancing end to end through the CLI: a Service address from
 * `--endpoints FILE` resolved to three real backends, requests of one client
 * connection spread over all three, counted under the Service's target; an
 * edited file followed live (a bad edit keeps the last good entries and is
 * reported by file and line); and a bad endpoints file stops the start
 * naming the file and line.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, HOST, runCli, startProxy, waitFor } from './helpers.js';
import { adminAddress, scrape } from './admin-client.js';
import { total } from './prom-parse.js';

test('one client connection, three endpoints of a Service from --endpoints: every endpoint gets requests', async (t) => {
  const names = ['a', 'b', 'c'];
  const ports: number[] = [];
  for (const name of names) {
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => res.end(name));
    });
    server.listen(0, HOST);
    await once(server, 'listening');
    t.after(() => server.close());
    ports.push((server.address() as AddressInfo).port);
  }
  // The "cluster IP": a loopback address and port nothing listens on.
  const service = `127.0.0.1:${await freePort()}`;
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-endpoints-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'endpoints');
  writeFileSync(file, `# the web Service\n${service} ${ports.map((p) => `127.0.0.1:${p}`).join(' ')}\n`);
  const { proc, ports: listen } = await startProxy(['--forward', `127.0.0.1:0=${service}`, '--endpoints', file, '--admin', '127.0.0.1:0'], { t });
  assert.ok(proc.logs.some((l) => l.msg === 'endpoints updated' && l['upserted'] === 1), 'the table was sent before the listeners bound');
  const admin = await adminAddress(proc);

  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  const seen = new Map<string, number>();
  const sockets = new Set<unknown>();
  for (let i = 0; i < 90; i++) {
    const body = await new Promise<string>((resolve, reject) => {
      const req = http.get({ host: HOST, port: listen[0], path: `/${i}`, agent }, (res) => {
        sockets.add(res.socket);
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve(text));
      });
      req.on('error', reject);
    });
    seen.set(body, (seen.get(body) ?? 0) + 1);
  }
  assert.equal(sockets.size, 1, 'one client connection');
  assert.deepEqual([...seen.keys()].sort(), names, `every endpoint answered: ${JSON.stringify([...seen])}`);

  const series = { direction: 'outbound', target_addr: service };
  let f = await scrape(admin);
  await waitFor(async () => total((f = await scrape(admin)), 'response_total', series) === 90, '90 responses', 10_000, 50);
  assert.equal(total(f, 'request_total', series), 90);
  assert.equal(total(f, 'meshpipe_endpoints_generation'), 1);
  // Upstream connections are counted per endpoint (peer="dst").
  for (const p of ports) assert.ok(total(f, 'tcp_open_total', { target_addr: `127.0.0.1:${p}`, peer: 'dst' }) >= 1, `endpoint ${p}`);
});

test('a bad --endpoints file stops the start with exit 2, naming the file and line', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-endpoints-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'endpoints');
  writeFileSync(file, '10.96.0.1:80 10.0.0.1:80\n10.96.0.2:80 not-an-address\n');
  const r = await runCli(['proxy', '--forward', '127.0.0.1:0=127.0.0.1:9', '--endpoints', file, '--admin', 'off']);
  assert.equal(r.code, 2, r.stderr + r.stdout);
  assert.ok((r.stdout + r.stderr).includes(`${file}:2: "not-an-address" is not an endpoint address`), r.stdout + r.stderr);
});

/** A keep-alive GET through `port`; resolves with the body. */
function get(port: number, agent: http.Agent, path = '/'): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const req = http.get({ host: HOST, port, path, agent }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve(text));
    });
    req.on('error', reject);
  });
}

test('an edited --endpoints file is followed live; a bad edit keeps the last good entries and names the line', async (t) => {
  const ports: number[] = [];
  for (const name of ['a', 'b']) {
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => res.end(name));
    });
    server.listen(0, HOST);
    await once(server, 'listening');
    t.after(() => server.close());
    ports.push((server.address() as AddressInfo).port);
  }
  const service = `127.0.0.1:${await freePort()}`;
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-endpoints-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'endpoints');
  writeFileSync(file, `${service} 127.0.0.1:${ports[0]}\n`);
  const { proc, ports: listen } = await startProxy(['--forward', `127.0.0.1:0=${service}`, '--endpoints', file, '--admin', 'off', '--log-level', 'debug'], { t });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  assert.equal(await get(listen[0]!, agent), 'a');

  // The Service moves to b: the same client connection follows it.
  writeFileSync(file, `# moved\n${service} 127.0.0.1:${ports[1]}\n`);
  await waitFor(async () => (await get(listen[0]!, agent)) === 'b', 'requests answered by b after the file changed', 10_000, 50);
  // (An endpoints change is logged at debug level; the first, whole table at info.)
  assert.ok(proc.logs.some((l) => l.msg === 'endpoints updated' && l['generation'] === 2), 'a second endpoints generation was applied');

  // A bad edit: reported by file and line, and b keeps serving.
  writeFileSync(file, `${service} 127.0.0.1:${ports[0]} not-an-address\n`);
  const where = `${file}:1: "not-an-address" is not an endpoint address`;
  const reported = (l: Record<string, unknown>) => Array.isArray(l['problems']) && l['problems'].some((p) => typeof p === 'string' && p.startsWith(where) && p.endsWith('keeping the last good entries of the file'));
  await waitFor(() => proc.logs.some(reported), 'the bad line reported', 10_000, 50);
  for (let i = 0; i < 10; i++) assert.equal(await get(listen[0]!, agent), 'b', 'the last good entries stay in force');
  assert.ok(!proc.logs.some((l) => l.msg === 'endpoints updated' && Number(l['generation']) > 2), 'no endpoints change from the bad file');
});

test('an --endpoints file that is a pipe is read once, at start, and balanced over', async (t) => {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.end('piped'));
  });
  server.listen(0, HOST);
  await once(server, 'listening');
  t.after(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const service = `127.0.0.1:${await freePort()}`;
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-endpoints-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const fifo = join(dir, 'endpoints.fifo');
  execFileSync('mkfifo', [fifo]);
  // The writer blocks until the proxy opens the pipe (as `--endpoints <(gen)` would).
  const written = writeFile(fifo, `${service} 127.0.0.1:${port}\n`);
  const { ports: listen } = await startProxy(['--forward', `127.0.0.1:0=${service}`, '--endpoints', fifo, '--admin', 'off'], { t });
  await written;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  // A second read of the pipe (by the policy worker) would find it empty and
  // leave the Service without endpoints: a 503.
  for (let i = 0; i < 3; i++) assert.equal(await get(listen[0]!, agent), 'piped');
});
