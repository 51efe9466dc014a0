/**
 * ts/observe/metrics.ts in process, against the real engine: one `snapshot()` per
 * scrape, the fast text path equal to prom-client's own rendering of the same
 * metric objects, the overflow series past `maxMetricTargets`, and label
 * escaping (the one place a stub source is used: the engine cannot be made to
 * report an SNI containing quotes, backslashes and newlines from a test).
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { collect, connect, startEchoServer, waitFor } from './helpers.js';
import { parsePrometheusText, samples, total } from './prom-parse.js';
import { loadConfig, objectLayer } from '../ts/config/config.js';
import { Metrics, type SnapshotSource } from '../ts/observe/metrics.js';
import { Proxy } from '../ts/engine/proxy.js';
import type { EngineSnapshot } from '../ts/engine/native.js';

/** A proxy with one opaque forward per target port, `maxMetricTargets` as given. */
async function startProxy(targets: number[], maxMetricTargets: number) {
  const config = loadConfig({
    env: {},
    flags: objectLayer({ forward: targets.map((p) => `127.0.0.1:0=127.0.0.1:${p},mode=opaque`), admin: 'off', maxMetricTargets, logLevel: 'silent' }, 'test'),
  });
  const proxy = Proxy.fromConfig(config);
  const bound = await proxy.start();
  return { proxy, ports: bound.map((b) => Number(b.bind.split(':').pop())) };
}

async function roundTrip(port: number, payload: string): Promise<void> {
  const s = await connect(port);
  const got = collect(s);
  s.end(payload);
  assert.equal((await got).bytes, payload.length);
}

/** Parses a page and keeps only the engine families (process metrics change between two renders). */
function engineFamilies(text: string) {
  const all = parsePrometheusText(text);
  return [...all.values()].filter((f) => !f.name.startsWith('process_') && !f.name.startsWith('nodejs_'));
}

describe('metrics rendering (in process, real engine)', () => {
  test('one snapshot per scrape; render() equals prom-client registry.metrics()', async (t) => {
    const echo = await startEchoServer(t);
    const { proxy, ports } = await startProxy([echo.port], 1000);
    t.after(() => proxy.close({ drainMs: 0 }));
    for (let i = 0; i < 3; i++) await roundTrip(ports[0]!, `payload ${i}`);
    await waitFor(() => proxy.snapshot().tcp[0]?.closes.reduce((n, c) => n + c.count, 0) === 6, 'six closes');

    let calls = 0;
    const counting: SnapshotSource = { snapshot: () => (calls++, proxy.snapshot()) };
    const metrics = new Metrics(counting);
    const fast = await metrics.render();
    assert.equal(calls, 1, 'render() took exactly one snapshot');
    const slow = await metrics.registry.metrics();
    assert.equal(calls, 2, 'registry.metrics() took exactly one snapshot for all engine families');
    await metrics.registry.getMetricsAsJSON();
    assert.equal(calls, 3);

    assert.deepEqual(engineFamilies(fast), engineFamilies(slow));
    // Byte-for-byte too, for the engine part (everything before the process metrics).
    const cut = (text: string) => text.slice(0, text.indexOf('# HELP process_'));
    assert.equal(cut(fast), cut(slow));
    const f = parsePrometheusText(fast);
    assert.equal(total(f, 'tcp_read_bytes_total', { peer: 'src' }), 'payload 0'.length * 3);
    assert.equal(total(f, 'tcp_open_total', { peer: 'dst' }), 3);
    // The default 1,024 inbound detection slots: a host may hold 64, an IPv6 /64 256.
    assert.equal(total(f, 'meshpipe_detecting_share_limit', { scope: 'host' }), 64);
    assert.equal(total(f, 'meshpipe_detecting_share_limit', { scope: 'ipv6_prefix64' }), 256);
    assert.deepEqual(
      samples(f, 'meshpipe_detecting_refused_total').map((x) => `${x.labels['direction']}/${x.labels['reason']}=${x.value}`).sort(),
      ['inbound/full=0', 'inbound/host_share=0', 'outbound/full=0'],
    );
  });

  test('targets past maxMetricTargets fold into target_addr="overflow"', async (t) => {
    const [a, b, c] = await Promise.all([startEchoServer(t), startEchoServer(t), startEchoServer(t)]);
    const { proxy, ports } = await startProxy([a.port, b.port, c.port], 1);
    t.after(() => proxy.close({ drainMs: 0 }));
    await roundTrip(ports[0]!, 'first');
    await roundTrip(ports[1]!, 'second!');
    await roundTrip(ports[2]!, 'third!!!');
    const metrics = new Metrics(proxy, { defaultMetrics: false });
    const f = await waitFor(async () => {
      const page = parsePrometheusText(await metrics.render());
      return total(page, 'tcp_close_total') === 6 ? page : undefined;
    }, 'all closes counted');
    const targets = samples(f, 'tcp_open_total', { peer: 'src' }).map((s) => s.labels['target_addr']);
    assert.deepEqual(targets.sort(), [`127.0.0.1:${a.port}`, 'overflow']);
    const overflow = { target_addr: 'overflow', peer: 'src' };
    assert.equal(total(f, 'tcp_open_total', overflow), 2);
    assert.equal(total(f, 'tcp_read_bytes_total', overflow), 'second!'.length + 'third!!!'.length);
    assert.equal(samples(f, 'tcp_open_total', overflow)[0]!.labels['target_ip'], '');
    assert.equal(samples(f, 'tcp_open_total', overflow)[0]!.labels['target_port'], '');
    assert.equal(total(f, 'meshpipe_tcp_series'), 2);
  });
});

describe('metrics rendering (label escaping, failing snapshots)', () => {
  const snapshot = (sni: string): EngineSnapshot => ({
    uptimeMs: 1, policyGeneration: 7, listeners: [], detect: [], detectDurationMs: [], serverFirst: { targets: [] },
    policy: { generation: 7, rules: 0, fallbackRules: 0, addresses: 0, meshed: 0, tables: 0, sources: 0, updatesApplied: 0, updatesRejected: 0, lastRejection: null },
    copy: { splicedDirections: 0, bulkDirections: 0, bulkBuffers: 0, bulkBuffersLimit: 4, bulkBufferBytes: 4194304, bulkRefused: 0 }, errors: { connectFailed: 0, loopRefused: 0, originalDstFailed: 0, notPodIp: 0, eventsDropped: 0 }, names: [],
    mesh: { identity: null, identityGeneration: 0, handshakeMs: [], handshakeErrors: [], tunnelErrors: [], authz: [] },
    acceptErrors: [
      { direction: 'inbound', error: 'not_pod_ip', count: 3 }, { direction: 'inbound', error: 'proxy_port', count: 2 },
      { direction: 'outbound', error: 'loop', count: 1 }, { direction: 'outbound', error: 'not_pod_ip', count: 0 },
    ],
    tcpSeries: [1, 0], evictedSeries: 0, http: [], httpSeries: [0, 0], httpErrors: [],
    endpoints: { generation: 0, services: 0, updatesApplied: 0, updatesRejected: 0, lastRejection: null },
    limits: {
      connections: [{ direction: 'inbound', limit: null, used: 0, refused: 0 }, { direction: 'outbound', limit: null, used: 0, refused: 0 }],
      detecting: [{ direction: 'inbound', limit: 1024, used: 1024, refused: 4 }, { direction: 'outbound', limit: 1024, used: 0, refused: 1 }],
      detectingShare: { host: 64, prefix64: 256, refused: 9 },
      fds: { processLimit: 1024, reserve: 128, budget: 800, used: 0, waits: 0 },
    },
    tcp: [{
      direction: 'inbound', targetAddr: '10.0.0.1:443', targetIp: '10.0.0.1', targetPort: 443, tls: 'opaque', noTlsReason: null, sni, clientId: null, serverId: null,
      overflow: false, srcOpenTotal: 1, srcOpen: 0, dstOpenTotal: 1, dstOpen: 0, bytesClientToServer: 5, bytesServerToClient: 6,
      closes: [{ peer: 'src', errno: 'ECONNRESET', count: 1 }],
      durationMs: { buckets: [1, 10], counts: [0, 1, 0], sum: 2.5, count: 1 }, idleTimeouts: 0,
    }],
  });

  test('an SNI with quotes, backslashes and newlines is escaped and parses back unchanged', async () => {
    const sni = 'evil"name\\with\nnewline';
    const metrics = new Metrics({ snapshot: () => snapshot(sni) }, { defaultMetrics: false });
    const text = await metrics.render();
    const f = parsePrometheusText(text);
    assert.equal(samples(f, 'tcp_open_total', { peer: 'src' })[0]!.labels['sni'], sni);
    assert.equal(text, await metrics.registry.metrics());
    assert.equal(total(f, 'tcp_connection_duration_ms_bucket', { le: '10' }), 1);
    assert.equal(total(f, 'tcp_connection_duration_ms_bucket', { le: '+Inf' }), 1);
    assert.equal(total(f, 'meshpipe_policy_generation'), 7);
    // Linkerd's accept errors, per reason; outbound never shows the inbound-only reasons.
    assert.equal(total(f, 'inbound_tcp_accept_errors_total', { error: 'not_pod_ip' }), 3);
    assert.equal(total(f, 'inbound_tcp_accept_errors_total', { error: 'proxy_port' }), 2);
    assert.deepEqual(samples(f, 'outbound_tcp_accept_errors_total').map((x) => x.labels['error']), ['loop']);
    // Detection refusals: a full direction and a host at its share, apart.
    assert.equal(total(f, 'meshpipe_detecting_refused_total', { direction: 'inbound', reason: 'full' }), 4);
    assert.equal(total(f, 'meshpipe_detecting_refused_total', { direction: 'inbound', reason: 'host_share' }), 9);
    assert.equal(total(f, 'meshpipe_detecting_refused_total', { direction: 'outbound', reason: 'full' }), 1);
    assert.equal(samples(f, 'meshpipe_detecting_refused_total', { direction: 'outbound', reason: 'host_share' }).length, 0);
  });

  test('a failing snapshot renders empty engine metrics and counts the failure', async () => {
    const metrics = new Metrics({ snapshot: () => { throw new Error('engine gone'); } }, { defaultMetrics: false });
    await metrics.render();
    const f = parsePrometheusText(await metrics.render());
    assert.equal(total(f, 'meshpipe_snapshot_errors_total'), 2);
    assert.equal(samples(f, 'tcp_open_total').length, 0);
    assert.equal(metrics.snapshotErrors.count, 2);
  });
});
