/**
 * Metric cardinality under hostile input, end to end through the real CLI
 * and its admin server: 13,000 TLS ClientHellos with junk SNIs sent to an
 * inbound listener. Every scrape during and after the flood keeps its tcp_*
 * lines and parses strictly; the inbound side is capped at maxMetricTargets
 * series plus its overflow series, so the page stays bounded; and an outbound
 * target seen after the flood still gets its own series (each direction has
 * its own budget). The page size and scrape times are reported.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { adminAddress, adminRequest } from './admin-client.js';
import { HOST, startEchoServer, startProxy, waitFor, withTimeout } from './helpers.js';
import { parsePrometheusText, samples, type Family } from './prom-parse.js';

const JUNK = 13_000;
const CONCURRENCY = 64;
const MAX_TARGETS = 1000;

/** A minimal TLS ClientHello record with `sni` (RFC 8446 §4.1.2, RFC 6066 §3). */
function clientHello(sni: string): Buffer {
  const name = Buffer.from(sni);
  const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
  const entry = Buffer.concat([Buffer.from([0]), u16(name.length), name]);
  const ext = Buffer.concat([u16(0), u16(entry.length + 2), u16(entry.length), entry]);
  const body = Buffer.concat([Buffer.from([3, 3]), Buffer.alloc(32, 7), Buffer.from([0, 0, 2, 0x13, 0x01, 1, 0]), u16(ext.length), ext]);
  const hs = Buffer.concat([Buffer.from([1, 0]), u16(body.length), body]);
  return Buffer.concat([Buffer.from([0x16, 3, 1]), u16(hs.length), hs]);
}

/** Sends `data`, ends, and resolves when the echo has ended. */
function exchange(port: number, data: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: HOST }, () => s.end(data));
    s.on('data', () => undefined);
    s.on('close', () => resolve());
    s.on('error', reject);
  });
}

interface Scraped {
  page: Map<string, Family>;
  bytes: number;
  ms: number;
}

async function timedScrape(admin: string): Promise<Scraped> {
  const started = process.hrtime.bigint();
  const r = await adminRequest(admin, '/metrics');
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  assert.equal(r.status, 200, r.body.slice(0, 200));
  return { page: parsePrometheusText(r.body), bytes: Buffer.byteLength(r.body), ms };
}

test(`${JUNK} junk SNIs on the inbound port: every scrape keeps its tcp_* lines, the page stays bounded, outbound keeps its own series`, async (t) => {
  const echo = await startEchoServer(t);
  const { proc, ports } = await startProxy(
    [
      '--forward', `${HOST}:0=${HOST}:${echo.port},direction=inbound`,
      '--forward', `${HOST}:0=${HOST}:${echo.port},direction=outbound`,
      '--admin', '127.0.0.1:0',
    ],
    { t, env: { MESHPIPE_MAX_METRIC_TARGETS: String(MAX_TARGETS) } },
  );
  const admin = await adminAddress(proc);
  const [inbound, outbound] = [ports[0]!, ports[1]!];

  let next = 0;
  const scrapes: Scraped[] = [];
  const worker = async () => {
    while (next < JUNK) {
      const i = next++;
      await exchange(inbound, clientHello(`junk-${i}-${(i * 2654435761) % 1e9}.example`));
      // Scrape now and then while the flood goes on.
      if (i % 2500 === 0 && i > 0) scrapes.push(await timedScrape(admin));
    }
  };
  await withTimeout(Promise.all(Array.from({ length: CONCURRENCY }, worker)), 300_000, `${JUNK} junk connections`);
  await exchange(outbound, Buffer.from('GET / HTTP/1.1\r\nHost: after-the-flood\r\n\r\n'));
  // Every connection is closed on both sides before the final scrape counts them.
  const final = await waitFor(
    async () => {
      const s = await timedScrape(admin);
      return samples(s.page, 'tcp_open_connections').every((x) => x.value === 0) ? s : undefined;
    },
    'every connection closed',
    30_000,
    50,
  );
  scrapes.push(final);

  for (const [i, s] of scrapes.entries()) {
    assert.ok(samples(s.page, 'tcp_open_total').length > 0, `scrape ${i} has its tcp_* lines`);
  }
  const opens = samples(final.page, 'tcp_open_total', { peer: 'src', direction: 'inbound' });
  const overflow = opens.filter((s) => s.labels['target_addr'] === 'overflow');
  assert.equal(opens.length - overflow.length, MAX_TARGETS, 'inbound: the budget of series');
  assert.equal(overflow.length, 1);
  assert.equal(overflow[0]!.value, JUNK - MAX_TARGETS, 'the rest is counted in the overflow series');
  const out = samples(final.page, 'tcp_open_total', { peer: 'src', direction: 'outbound' });
  assert.equal(out.length, 1);
  assert.equal(out[0]!.labels['target_addr'], `${HOST}:${echo.port}`, 'the outbound target has its own series, not overflow');
  const mib = final.bytes / 2 ** 20;
  t.diagnostic(`final page ${mib.toFixed(1)} MiB; scrape times ${scrapes.map((s) => `${s.ms.toFixed(0)} ms`).join(', ')}`);
  // ~40 lines per series, SNI labels included: about 10 MiB for 1,000 series. A bound, not a timing.
  assert.ok(mib < 24, `the page stays bounded (${mib.toFixed(1)} MiB)`);
});
