/**
 * One policy truth (issue 11 §2): `meshpipe explain` answers with the
 * engine's own lookup, and TypeScript's CIDR rules (used to validate
 * annotations and flags before a table reaches the engine) agree with the
 * engine's, checked against each other by fast-check through the addon.
 * The cases that used to disagree: `::ffff:a.b.c.d` destinations (matched in
 * Rust, never in TypeScript) and `::ffff:…/104` networks (accepted by
 * TypeScript, refused by Rust: the whole table with them).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { cidrContains, isCidrError, parseCidr } from '../ts/policy/cidr.js';
import { PolicyLookup } from '../ts/engine/native.js';
import { runCli, startEchoServer, startProxy, HOST } from './helpers.js';
import { adminAddress, adminRequest } from './admin-client.js';

const SERVICE = [
  'apiVersion: v1', 'kind: Service', 'metadata: { name: legacy, namespace: shop }',
  'spec: { clusterIP: "::ffff:10.96.0.9", ports: [{ name: p, port: 9999, appProtocol: linkerd.io/opaque }] }', '',
].join('\n');

test('explain: an IPv4-mapped clusterIP is matched by the IPv4 address and by its mapped form', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-mapped-'));
  const file = join(dir, 'svc.yaml');
  writeFileSync(file, SERVICE);
  for (const destination of ['10.96.0.9', '::ffff:10.96.0.9']) {
    const r = await runCli(['explain', '--manifests', file, '--port', '9999', '--destination', destination]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /outbound (10\.96\.0\.9|\[::ffff:10\.96\.0\.9\]):9999: opaque \(opaque: appProtocol linkerd\.io\/opaque on Service shop\/legacy port 9999 \(p\)\)/,
      `${destination}:\n${r.stdout}`);
  }
});

test('explain and the proxy: an IPv4-mapped clusterNetwork /104 is the IPv4 /8, accepted by the engine', async (t) => {
  const r = await runCli(['explain', '--port', '3306', '--destination', '10.1.2.3', '--cluster-networks', '::ffff:10.0.0.0/104']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /\(10\.0\.0\.0\/8\)\? 10\.1\.2\.3: yes/);
  assert.match(r.stdout, /outbound 10\.1\.2\.3:3306: opaque \(opaque: default opaque ports .* inside clusterNetworks\)/);

  // The running proxy with a policy source: its table carries the network, and the engine accepted it.
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-mapped-'));
  writeFileSync(join(dir, 'svc.yaml'), SERVICE);
  const echo = await startEchoServer(t);
  const { proc } = await startProxy(['--forward', `${HOST}:0=${HOST}:${echo.port}`, '--manifests', dir, '--cluster-networks', '::ffff:10.0.0.0/104',
    '--admin', `${HOST}:0`], { t });
  const admin = await adminAddress(proc);
  assert.equal((await adminRequest(admin, '/ready')).status, 200);
  const policy = JSON.parse((await adminRequest(admin, '/policy')).body) as { fallbackRules: { net: string | null }[]; engine: { updatesRejected: number; addresses: number } };
  assert.ok(policy.fallbackRules.some((r) => r.net === '10.0.0.0/8'), JSON.stringify(policy.fallbackRules.map((r) => r.net)));
  assert.equal(policy.engine.updatesRejected, 0);
  assert.equal(policy.engine.addresses, 1, 'the mapped clusterIP is one exact destination');
});

/** Address text in every form both sides must read alike. */
const v4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((p) => p.join('.'));
const v6 = fc.array(fc.nat(0xffff), { minLength: 8, maxLength: 8 }).map((h) => h.map((x) => x.toString(16)).join(':'));
const zeros = fc.constantFrom('::', '::1', 'fd00::', 'fd00::1', '::ffff:0:0');
const mapped = v4.map((a) => `::ffff:${a}`);
const address = fc.oneof(v4, v6, zeros, mapped, mapped.map((a) => a.toUpperCase()));
const prefix = fc.oneof(fc.nat(33), fc.integer({ min: 90, max: 130 }), fc.constantFrom('08', '+8', '', '1000', 'x'));
const cidr = fc.oneof(
  fc.tuple(address, prefix).map(([a, p]) => `${a}/${String(p)}`),
  address,
  fc.constantFrom('10.0.0.0/8 ', 'fe80::1%eth0/64', '10.0.0.0/8/8', 'nope/8', '/8', '1.2.3/8'),
);

test('TypeScript and the engine agree on every CIDR and address (fast-check through the addon)', () => {
  fc.assert(fc.property(cidr, fc.array(address, { minLength: 1, maxLength: 6 }), (net, addresses) => {
    const ts = parseCidr(net);
    let engine: PolicyLookup | undefined;
    try {
      engine = new PolicyLookup({
        generation: 1, fallbackRules: [], destinationDetectTimeoutMs: null, tables: [], addresses: [], authz: null, meshDestinations: [],
        rules: [{ direction: 'outbound', net, ports: [1, 65535], mode: 'opaque', detectTimeoutMs: null, source: 'net' }],
      });
    } catch {
      engine = undefined;
    }
    assert.equal(engine !== undefined, !isCidrError(ts), `${JSON.stringify(net)}: TypeScript ${isCidrError(ts) ? `refuses (${ts.error})` : `reads ${ts.text}`}, the engine ${engine ? 'accepts' : 'refuses'}`);
    if (engine === undefined || isCidrError(ts)) return;
    // The canonical text TypeScript hands the engine means the same network.
    const canonical = new PolicyLookup({
      generation: 1, fallbackRules: [], destinationDetectTimeoutMs: null, tables: [], addresses: [], authz: null, meshDestinations: [],
      rules: [{ direction: 'outbound', net: ts.text, ports: [1, 65535], mode: 'opaque', detectTimeoutMs: null, source: 'net' }],
    });
    for (const a of addresses) {
      const inEngine: boolean = engine.explain('outbound', a, 80).matched === 'rule';
      assert.equal(cidrContains(ts, a), inEngine, `${a} in ${net} (${ts.text})`);
      assert.equal(canonical.explain('outbound', a, 80).matched === 'rule', inEngine, `${a} in ${ts.text}`);
    }
  }), { numRuns: 2000 });
});
