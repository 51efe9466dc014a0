/**
 * The policy layer driving the real engine: a PolicySource watching a
 * downward-API annotations file feeds its first whole table to the engine
 * config and its deltas to `Proxy.updatePolicy`, the way the sidecar wires
 * it. Editing the file mid-stream switches the port from detect to
 * opaque: a connection opened before keeps flowing untouched, and the next
 * connection is counted as `opaque_port` instead of being detected.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Proxy } from '../ts/engine/proxy.js';
import { createPolicySource } from '../ts/policy/source.js';
import { DEFAULT_CLUSTER_NETWORKS } from '../ts/policy/cidr.js';
import { DEFAULT_OPAQUE_PORTS, parsePortListStrict } from '../ts/config/port-list.js';
import { startEchoServer, waitFor, withTimeout } from './helpers.js';

async function roundTrip(socket: net.Socket, text: string): Promise<string> {
  let got = '';
  const done = new Promise<void>((resolve) => {
    const onData = (b: Buffer): void => {
      got += b.toString();
      if (got.length >= text.length) {
        socket.off('data', onData);
        resolve();
      }
    };
    socket.on('data', onData);
  });
  socket.write(text);
  await withTimeout(done, 5000, `echo of ${JSON.stringify(text)}`);
  return got;
}

test('editing the annotations file switches a port from detect to opaque for new connections only', async (t) => {
  const echo = await startEchoServer(t);
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-swap-'));
  const file = join(dir, 'annotations');
  writeFileSync(file, 'app="demo"\n');
  const source = createPolicySource({
    annotationsFile: file, clusterNetworks: DEFAULT_CLUSTER_NETWORKS.split(','),
    defaultOpaquePorts: parsePortListStrict(DEFAULT_OPAQUE_PORTS), inboundDetectTimeoutMs: 10_000, outboundDetectTimeoutMs: 10_000,
    debounceMs: 20, pollIntervalMs: 100,
  });
  t.after(() => source.close());
  const initial = await source.start();
  const proxy = new Proxy({
    workers: 1, limits: { inboundConnections: 0, outboundConnections: 0, detectingConnections: 1024, fdReserve: 128, bulkBuffers: 4 }, idleTimeoutMs: 3_600_000, connectTimeoutMs: 2000,
    listeners: [{ name: 'in', bind: '127.0.0.1:0', target: { kind: 'fixed', addr: `127.0.0.1:${echo.port}` }, mode: null, direction: 'inbound' }],
    detect: { inboundTimeoutMs: 10_000, outboundTimeoutMs: 10_000, serverFirstGraceMs: 0, serverFirstCapacity: 16, serverFirstTtlMs: 60_000, portTimeouts: [] },
    metrics: { maxTargets: 100, retainIdleMs: 600_000 },
    policy: source.table(),
  });
  const [bound] = await proxy.start();
  t.after(() => proxy.close({ drainMs: 100 }));
  source.on('policy', (u) => {
    if (u.change) proxy.updatePolicy(u.change); // the wiring the sidecar does (from its worker thread)
  });
  const port = Number(bound?.bind.split(':').pop());
  const detected = (result: string): number =>
    proxy.snapshot().detect.filter((d) => d.direction === 'inbound' && d.targetPort === echo.port && d.result === result)
      .reduce((n, d) => n + d.count, 0);

  const a = net.connect(port, '127.0.0.1');
  await once(a, 'connect');
  t.after(() => a.destroy());
  assert.equal(await roundTrip(a, 'hello, not http\r\n'), 'hello, not http\r\n');
  await waitFor(() => detected('not_http') === 1, 'the first connection to be detected as not_http');
  assert.equal(detected('opaque_port'), 0);

  writeFileSync(file, `app="demo"\nconfig.linkerd.io/opaque-ports="${echo.port}"\n`);
  await waitFor(() => proxy.snapshot().policyGeneration === source.current()?.generation && source.current()!.generation > initial.generation,
    'the new policy to reach the engine');

  // The connection opened before the swap keeps flowing, untouched.
  assert.equal(await roundTrip(a, 'still flowing'), 'still flowing');
  const b = net.connect(port, '127.0.0.1');
  await once(b, 'connect');
  t.after(() => b.destroy());
  assert.equal(await roundTrip(b, 'hello again'), 'hello again');
  await waitFor(() => detected('opaque_port') === 1, 'the new connection to skip detection (opaque_port)');
  assert.equal(detected('not_http'), 1, 'the old connection was not re-detected');
});
