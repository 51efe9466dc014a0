/**
 * 1 GiB streamed through the HTTP proxy each way (an upload with a chunked
 * body, a download with a Content-Length), with the SHA-256 equal at both
 * ends and the proxy's resident memory flat: bodies stream with
 * backpressure, nothing is buffered whole.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { HOST, MiB, startProxy } from './helpers.js';

const GiB = 1024 * MiB;
const CHUNK = 256 * 1024;

/** Deterministic content: chunk i is filled with byte i mod 251, then its index. */
function chunkAt(i: number): Buffer {
  const b = Buffer.alloc(CHUNK, i % 251);
  b.writeUInt32BE(i, 0);
  return b;
}

function source(total: number): Readable {
  let i = 0;
  return new Readable({
    read() {
      if (i * CHUNK >= total) this.push(null);
      else this.push(chunkAt(i++));
    },
  });
}

function expectedSha(total: number): string {
  const h = createHash('sha256');
  for (let i = 0; i * CHUNK < total; i++) h.update(chunkAt(i));
  return h.digest('hex');
}

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

test('1 GiB up and down: SHA-256 equal, proxy RSS flat', { timeout: 300_000 }, async (t) => {
  const server = http.createServer((req, res) => {
    if (req.method === 'POST') {
      const h = createHash('sha256');
      let n = 0;
      req.on('data', (c: Buffer) => { h.update(c); n += c.length; });
      req.on('end', () => res.end(`${n} ${h.digest('hex')}`));
    } else {
      res.writeHead(200, { 'content-length': GiB });
      source(GiB).pipe(res);
    }
  });
  server.listen(0, HOST);
  await once(server, 'listening');
  t.after(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const { proc, ports } = await startProxy(['--forward', `127.0.0.1:0=127.0.0.1:${port}`], { t });
  const agent = new http.Agent({ keepAlive: true });
  t.after(() => agent.destroy());
  // Warm up (the pools, the first request), then take the baseline.
  await new Promise<void>((resolve, reject) => {
    const req = http.request({ host: HOST, port: ports[0], method: 'POST', path: '/warm', agent }, (r) => { r.resume(); r.on('end', resolve); });
    req.on('error', reject);
    req.end('warm');
  });
  const baseline = rssBytes(proc.pid);
  let peak = baseline;
  const sampler = setInterval(() => { peak = Math.max(peak, rssBytes(proc.pid)); }, 100);
  t.after(() => clearInterval(sampler));

  const want = expectedSha(GiB);
  const uploaded = await new Promise<string>((resolve, reject) => {
    const req = http.request({ host: HOST, port: ports[0], method: 'POST', path: '/up', agent }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    source(GiB).pipe(req);
  });
  assert.equal(uploaded, `${GiB} ${want}`);

  const down = createHash('sha256');
  let got = 0;
  await new Promise<void>((resolve, reject) => {
    http.get({ host: HOST, port: ports[0], path: '/down', agent }, (res) => {
      pipeline(res, async function* (chunks: AsyncIterable<Buffer>) {
        for await (const c of chunks) { down.update(c); got += c.length; }
        yield '';
      }).then(() => resolve(), reject);
    }).on('error', reject);
  });
  clearInterval(sampler);
  assert.equal(got, GiB);
  assert.equal(down.digest('hex'), want);
  const grew = peak - baseline;
  t.diagnostic(`proxy RSS: baseline ${(baseline / MiB).toFixed(1)} MiB, peak ${(peak / MiB).toFixed(1)} MiB while 2 GiB streamed`);
  assert.ok(grew < 64 * MiB, `proxy RSS grew by ${(grew / MiB).toFixed(1)} MiB while 2 GiB streamed through it (baseline ${(baseline / MiB).toFixed(1)} MiB)`);
});
