/**
 * The inputs of the inbound guard and the admin rules, without sockets:
 * the defaults (original destination, no loopback rewrite), where the pod
 * IPs come from and how bad ones are reported, the proxy's own ports in the
 * engine config, the engine refusing a transparent inbound listener without
 * pod IPs, a --forward to the admin server refused, the loopback Host rule
 * (no "127.attacker.example"), and the init state comparison.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../ts/config/config.js';
import { flagLayer, parseOptions, PROXY_OPTIONS } from '../ts/cli/args.js';
import { buildEngineConfig } from '../ts/engine/build-config.js';
import { proxyPorts, reachesLoopback, resolvePodIps } from '../ts/engine/inbound.js';
import { NativeProxy } from '../ts/engine/native.js';
import { isLoopbackHostHeader } from '../ts/observe/admin-server.js';
import { initStateMismatches, initStateOf, readInitState, writeInitState } from '../ts/init/state.js';
import type { MeshpipeError } from '../ts/errors.js';

function config(argv: string[], env: NodeJS.ProcessEnv = {}) {
  const { values } = parseOptions(argv, PROXY_OPTIONS, 'meshpipe proxy');
  return loadConfig({ env, flags: flagLayer(values) });
}

describe('inbound defaults and pod IPs', () => {
  test('the default forwards to the original destination; the loopback rewrite is an opt-in', () => {
    const c = config([]);
    assert.equal(c.inboundHost, null);
    const e = buildEngineConfig(c, undefined, { ips: ['10.0.0.5'], source: '--inbound-ips' });
    const inbound = e.listeners.filter((l) => l.direction === 'inbound');
    assert.ok(inbound.length >= 1);
    for (const l of inbound) assert.deepEqual(l.target, { kind: 'originalDst', inboundHost: null });
    assert.deepEqual(e.inbound, { podIps: ['10.0.0.5'], proxyPorts: [4191, 4143, 4140] });
    const optIn = buildEngineConfig(config(['--inbound-host', '127.0.0.1']), undefined, { ips: ['10.0.0.5'], source: '--inbound-ips' });
    assert.deepEqual(optIn.listeners.find((l) => l.name === 'inbound')?.target, { kind: 'originalDst', inboundHost: '127.0.0.1' });
  });

  test('pod IPs: --inbound-ips, else POD_IPS, else the interfaces (loopback and link-local left out)', () => {
    const fromInterfaces = () => ['10.1.1.1', 'fe80::1', '169.254.1.1', 'fd00::9', '10.1.1.1'];
    assert.deepEqual(resolvePodIps(config(['--inbound-ips', '10.0.0.5, fd00::5']), { POD_IPS: '10.9.9.9' }, fromInterfaces), {
      ips: ['10.0.0.5', 'fd00::5'],
      source: '--inbound-ips',
    });
    assert.deepEqual(resolvePodIps(config([]), { POD_IPS: '10.9.9.9,fd00::9' }, fromInterfaces), { ips: ['10.9.9.9', 'fd00::9'], source: 'POD_IPS' });
    assert.deepEqual(resolvePodIps(config([]), {}, fromInterfaces), { ips: ['10.1.1.1', 'fd00::9'], source: 'interfaces' });
    // The real interfaces, as the engine reads them: never loopback.
    assert.ok(resolvePodIps(config([]), {}).ips.every((ip) => !ip.startsWith('127.') && ip !== '::1'));
  });

  test('bad pod IPs are errors naming the value and the source', () => {
    assert.throws(() => config(['--inbound-ips', '10.0.0.5,pod']), (e: MeshpipeError) => e.code === 'ERR_INVALID_CONFIG' && /invalid inboundIps.*--inbound-ips.*"pod" is not an IP address/.test(e.message));
    assert.throws(() => config(['--inbound-ips', '127.0.0.1']), /loopback or unspecified address/);
    assert.throws(() => config([], { MESHPIPE_INBOUND_IPS: '::' }), /MESHPIPE_INBOUND_IPS/);
    assert.throws(() => resolvePodIps(config([]), { POD_IPS: '10.0.0.1,::1' }), (e: MeshpipeError) => e.code === 'ERR_INVALID_CONFIG' && /invalid POD_IPS/.test(e.message));
    // No pod IP at all: a clear error, not a proxy that refuses everything.
    assert.throws(() => buildEngineConfig(config([]), undefined, { ips: [], source: 'interfaces' }), /needs the pod's IPs and none were found: give --inbound-ips/);
  });

  test('the engine itself refuses a transparent inbound listener without pod IPs', () => {
    const e = buildEngineConfig(config([]), undefined, { ips: ['10.0.0.5'], source: '--inbound-ips' });
    const withoutGuard = { ...e };
    delete withoutGuard.inbound;
    assert.throws(() => new NativeProxy(withoutGuard), (err: MeshpipeError) => err.code === 'ERR_INVALID_CONFIG' && /inbound\.podIps must list the pod's IPs/.test(err.message));
    assert.throws(() => new NativeProxy({ ...e, inbound: { podIps: ['127.0.0.1'], proxyPorts: [] } }), /not a loopback, unspecified or multicast address/);
  });

  test("the proxy's own ports; a --forward to the admin server is refused", () => {
    assert.deepEqual(proxyPorts(config(['--admin', 'off'])), [4143, 4140]);
    assert.deepEqual(proxyPorts(config(['--admin', '127.0.0.1:9191', '--outbound', 'off'])), [9191, 4143]);
    for (const target of ['127.0.0.1:4191', '127.0.0.5:4191']) {
      assert.throws(() => buildEngineConfig(config(['--forward', `0.0.0.0:8000=${target}`])), /targets the admin server \(127\.0\.0\.1:4191\)/);
    }
    assert.throws(() => buildEngineConfig(config(['--admin', '0.0.0.0:4191', '--forward', '0.0.0.0:8000=0.0.0.0:4191'])), /targets the admin server/);
    // The unspecified addresses connect to the local host; loopback in any IPv6 spelling.
    for (const target of ['0.0.0.0:4191', '[::]:4191', '[::1]:4191', '[0:0:0:0:0:0:0:1]:4191', '[::ffff:127.0.0.1]:4191', '[::ffff:7f00:2]:4191', '[::ffff:0.0.0.0]:4191']) {
      assert.throws(() => buildEngineConfig(config(['--forward', `0.0.0.0:8000=${target}`])), /targets the admin server \(127\.0\.0\.1:4191\)/, target);
    }
    for (const host of ['localhost', '127.255.0.1', '0.0.0.0', '::', '::1', '0::0:1', '::ffff:127.1.2.3', '::ffff:0:0']) assert.ok(reachesLoopback(host), host);
    for (const host of ['10.0.0.1', '128.0.0.1', '::2', '::ffff:10.0.0.1', '::ffff:8000:1', 'fe80::1', 'example.com', '']) assert.ok(!reachesLoopback(host), host);
    // Another port, or the admin server turned off: fine.
    assert.ok(buildEngineConfig(config(['--forward', '0.0.0.0:8000=127.0.0.1:4192'])));
    assert.ok(buildEngineConfig(config(['--admin', 'off', '--forward', '0.0.0.0:8000=127.0.0.1:4191'])));
  });
});

describe('admin Host rule', () => {
  test('loopback addresses and localhost, with or without a port; names that merely start with 127. are not', () => {
    for (const ok of ['127.0.0.1', '127.0.0.1:4191', '127.1.2.3:80', '[::1]:4191', '[::1]', 'localhost:4191', 'LOCALHOST']) assert.ok(isLoopbackHostHeader(ok), ok);
    for (const bad of [undefined, '', 'evil.example', '127.attacker.example:4191', '127.0.0.1.nip.io', '10.0.0.5:4191', '[::2]:4191', 'localhost.evil.example', '::1']) {
      assert.ok(!isLoopbackHostHeader(bad), String(bad));
    }
  });
});

describe('init state', () => {
  test('written by init, read back, and every mismatch named', () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-state-'));
    try {
      const path = join(dir, 'state.json');
      writeInitState(path, initStateOf({ proxyUid: 2102, proxyGid: null, inboundPort: 4143, outboundPort: 4140, adminPort: 4191, skipInboundPorts: [{ from: 9000, to: 9010 }], skipOutboundPorts: [], skipSubnets: [] }));
      const state = readInitState(path);
      const same = { uid: 2102, gid: 2102, adminPort: 4191, inboundPort: 4143, outboundPort: 4140 };
      assert.deepEqual(initStateMismatches(state, same), []);
      assert.deepEqual(initStateMismatches(state, { ...same, adminPort: 9005 }), [], 'a skipped inbound port is exempt too');
      const all = initStateMismatches(state, { uid: 0, gid: 0, adminPort: 9191, inboundPort: 4144, outboundPort: 4141 });
      assert.equal(all.length, 4, all.join('\n'));
      assert.match(all[0]!, /admin port 9191 is not exempted .*exempts 4190,4191,9000-9010/);
      assert.match(all[3]!, /runs as uid 0 but meshpipe init exempts uid 2102/);
      writeFileSync(path, '{"version": 2}');
      assert.throws(() => readInitState(path), /expected a JSON object with "version": 1/);
      assert.throws(() => readInitState(join(dir, 'missing.json')), /no such file; did meshpipe init run with --write-state/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
