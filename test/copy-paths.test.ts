/**
 * Which path carries a bulk stream, through the real CLI: by default a
 * direction whose read fills the 16 KiB buffer is copied through a lent
 * 4 MiB bulk buffer (`--bulk-buffers`, 4 by default), with `--bulk-buffers
 * 0` it is spliced; either way every byte arrives (SHA-256 both ways), and
 * the metrics say which path was taken and what the buffers cost.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { adminAddress, scrape } from './admin-client.js';
import { collect, connect, HOST, MiB, runCli, startEchoServer, startProxy, waitFor, withTimeout, writeRandom } from './helpers.js';
import { total } from './prom-parse.js';

/** Sends `bytes` random bytes through the proxy to the echo and checks what comes back. */
async function echoThrough(port: number, bytes: number): Promise<void> {
  const c = await connect(port);
  const back = collect(c);
  const sent = await writeRandom(c, bytes, { chunk: 1 * MiB });
  c.end();
  const got = await withTimeout(back, 60_000, 'the echo of the bulk stream');
  assert.equal(got.bytes, bytes);
  assert.equal(got.sha256, sent, 'the bulk stream came back unchanged');
  assert.ok(got.ended, 'with a clean end');
}

test('by default a bulk stream is copied through a lent bulk buffer, and the metrics say so', async (t) => {
  const echo = await startEchoServer(t);
  const { proc, ports } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port},mode=opaque`, '--admin', '127.0.0.1:0'], { t });
  const admin = await adminAddress(proc);
  await echoThrough(ports[0]!, 64 * MiB);
  const page = await waitFor(async () => {
    const p = await scrape(admin);
    return total(p, 'tcp_read_bytes_total') >= 128 * MiB ? p : undefined;
  }, 'the bytes counted both ways');
  assert.equal(total(page, 'meshpipe_copy_switched_total', { to: 'bulk' }), 2, 'both directions took the bulk copy');
  assert.equal(total(page, 'meshpipe_copy_switched_total', { to: 'splice' }), 0);
  assert.equal(total(page, 'meshpipe_copy_bulk_buffers_limit'), 4);
  assert.equal(total(page, 'meshpipe_copy_bulk_buffer_bytes'), 4 * MiB);
  assert.equal(total(page, 'meshpipe_copy_bulk_refused_total'), 0);
  const held = total(page, 'meshpipe_copy_bulk_buffers');
  assert.ok(held >= 1 && held <= 2, `the finished stream's buffers are cached, within the budget (${held})`);
});

test('--bulk-buffers 0: bulk streams are spliced, losslessly', async (t) => {
  const echo = await startEchoServer(t);
  const { proc, ports } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port},mode=opaque`, '--admin', '127.0.0.1:0', '--bulk-buffers', '0'], { t });
  const admin = await adminAddress(proc);
  await echoThrough(ports[0]!, 64 * MiB);
  const page = await scrape(admin);
  assert.equal(total(page, 'meshpipe_copy_switched_total', { to: 'splice' }), 2, 'both directions were spliced');
  assert.equal(total(page, 'meshpipe_copy_switched_total', { to: 'bulk' }), 0);
  assert.equal(total(page, 'meshpipe_copy_bulk_buffers_limit'), 0);
  assert.equal(total(page, 'meshpipe_copy_bulk_buffers'), 0, 'no bulk buffer was allocated');
});

test('--bulk-buffers out of range exits 2 naming the flag and what it expects', async () => {
  for (const bad of ['-1', '1025', 'many']) {
    const r = await runCli(['proxy', '--forward', `${HOST}:0=${HOST}:9`, '--bulk-buffers', bad]);
    assert.equal(r.code, 2, `--bulk-buffers ${bad}: ${r.stderr}`);
    assert.match(r.stderr, /bulkBuffers/, r.stderr);
    assert.match(r.stderr, /0-1024/, r.stderr);
  }
});
