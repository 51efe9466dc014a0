/**
 * PolicySource with files: the downward-API annotations file updated the way
 * the kubelet does it (a new timestamped directory and an atomic `..data`
 * symlink swap), a malformed line keeping that key's last good value, a
 * missing file keeping the last good annotations, a manifest file that stops
 * parsing keeping its last good content, and every such error staying in
 * `problems` until it is fixed. Also: the stat poll alone (no fs.watch event)
 * picks up a change.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPolicySource, type PolicySource, type PolicySourceOptions } from '../ts/policy/source.js';
import { lookupPolicy } from '../ts/policy/lookup.js';
import { DEFAULT_CLUSTER_NETWORKS } from '../ts/policy/cidr.js';
import { DEFAULT_OPAQUE_PORTS, parsePortListStrict } from '../ts/config/port-list.js';
import { waitFor } from './helpers.js';

const BASE: PolicySourceOptions = {
  clusterNetworks: DEFAULT_CLUSTER_NETWORKS.split(','),
  defaultOpaquePorts: parsePortListStrict(DEFAULT_OPAQUE_PORTS),
  inboundDetectTimeoutMs: 10_000,
  outboundDetectTimeoutMs: 10_000,
  debounceMs: 20,
  pollIntervalMs: 100,
};

/** A downward-API volume laid out as the kubelet writes it. */
class PodInfoVolume {
  private n = 0;
  constructor(readonly dir: string) {}
  get file(): string {
    return join(this.dir, 'annotations');
  }
  write(text: string): void {
    const ts = `..2026_11_26_00_00_00.${++this.n}`;
    mkdirSync(join(this.dir, ts));
    writeFileSync(join(this.dir, ts, 'annotations'), text);
    symlinkSync(ts, join(this.dir, '..data_tmp'));
    renameSync(join(this.dir, '..data_tmp'), join(this.dir, '..data')); // the atomic swap
    try {
      symlinkSync('..data/annotations', this.file);
    } catch {
      // already points through ..data
    }
  }
}

/** What the engine decides for an inbound connection to `port` under the source's current table. */
function inboundMode(source: PolicySource, port: number): string {
  return lookupPolicy(source.table(), 'inbound', '10.0.0.1', port).mode;
}

test('annotations file: kubelet-style updates, bad lines keep the last good value, missing file keeps the last good annotations', async (t) => {
  const vol = new PodInfoVolume(mkdtempSync(join(tmpdir(), 'meshpipe-podinfo-')));
  vol.write('config.linkerd.io/opaque-ports="9000"\napp="x"\n');
  const source = createPolicySource({ ...BASE, annotationsFile: vol.file, namespace: 'ns', pod: 'p-1' });
  t.after(() => source.close());
  const first = await source.start();
  assert.equal(inboundMode(source, 9000), 'opaque');
  assert.equal(lookupPolicy(source.table(), 'inbound', '10.0.0.1', 9000).source,
    `opaque: pod annotation config.linkerd.io/opaque-ports on Pod ns/p-1 (annotations file ${vol.file})`);
  assert.equal(first.generation, 1);

  vol.write('config.linkerd.io/opaque-ports="9001-9002"\n');
  await waitFor(() => inboundMode(source, 9001) === 'opaque', 'the swapped file to be re-read');
  const second = source.current()!;
  assert.equal(inboundMode(source, 9000), 'detect');
  assert.equal(second.generation, 2);
  assert.deepEqual(second.problems, []);

  // A malformed line for the same key: its last good value stays, the error is visible.
  vol.write('config.linkerd.io/opaque-ports="9003\nconfig.linkerd.io/skip-outbound-ports="25"\n');
  await waitFor(() => source.current()!.problems.length > 0, 'the bad line to be reported');
  const third = source.current()!;
  assert.match(third.problems[0]?.message ?? '', /annotations: line 1: value of config\.linkerd\.io\/opaque-ports has no closing quote; keeping the last good value/);
  assert.equal(inboundMode(source, 9001), 'opaque', 'not narrowed');
  assert.equal(inboundMode(source, 9003), 'detect', 'not widened');
  assert.equal(lookupPolicy(source.table(), 'outbound', '10.1.1.1', 25).source.startsWith('skip:'), true, 'the valid line applies');

  // The file disappears: keep the last good annotations.
  rmSync(vol.file);
  await waitFor(() => source.current()!.problems.some((p) => /cannot read: ENOENT.*keeping the last good annotations/.test(p.message)), 'the missing file to be reported');
  assert.equal(inboundMode(source, 9001), 'opaque');

  // Fixed: the problems clear.
  vol.write('config.linkerd.io/opaque-ports="9004"\n');
  await waitFor(() => inboundMode(source, 9004) === 'opaque' && source.current()!.problems.length === 0, 'the fixed file to clear the problems');
});

test('manifests: a file that stops parsing keeps its last good content until fixed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-manifests-'));
  const file = join(dir, 'app.yaml');
  const deploy = (ports: string): string => [
    'apiVersion: apps/v1', 'kind: Deployment', 'metadata: { name: app, namespace: ns }', 'spec:', '  template:', '    metadata:',
    `      annotations: { config.linkerd.io/opaque-ports: "${ports}" }`, '    spec:', '      containers: [{ name: a, ports: [{ containerPort: 7000 }] }]', '',
  ].join('\n');
  writeFileSync(file, deploy('7000'));
  const source = createPolicySource({ ...BASE, manifests: [dir], namespace: 'ns', pod: 'app-1' });
  t.after(() => source.close());
  const first = await source.start();
  assert.equal(inboundMode(source, 7000), 'opaque');

  writeFileSync(file, `${deploy('7001')}  broken: [unclosed\n`);
  await waitFor(() => source.current()!.problems.length >= 2, 'the broken file to be reported');
  const broken = source.current()!;
  assert.ok(broken.problems.some((p) => /app\.yaml document 0: YAML does not parse/.test(p.message)), broken.problems.map((p) => p.message).join('\n'));
  assert.ok(broken.problems.some((p) => /keeping its last good content/.test(p.message)));
  assert.equal(inboundMode(source, 7000), 'opaque', 'the last good content stays in force');
  assert.equal(broken.generation, first.generation, 'the engine table did not change');

  writeFileSync(file, deploy('7001'));
  await waitFor(() => inboundMode(source, 7001) === 'opaque' && source.current()!.problems.length === 0, 'the fixed file');
  assert.equal(inboundMode(source, 7000), 'detect');
});

test('the stat poll alone picks up a change (no fs.watch event for a file outside the watched paths)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-poll-'));
  const real = join(dir, 'real');
  mkdirSync(real);
  writeFileSync(join(real, 'annotations'), 'config.linkerd.io/opaque-ports="8000"\n');
  const linkDir = join(dir, 'link');
  mkdirSync(linkDir);
  // The watched directory holds only a symlink; writes to the target directory raise no event there.
  symlinkSync(join(real, 'annotations'), join(linkDir, 'annotations'));
  const source = createPolicySource({ ...BASE, annotationsFile: join(linkDir, 'annotations') });
  t.after(() => source.close());
  await source.start();
  writeFileSync(join(real, 'annotations'), 'config.linkerd.io/opaque-ports="8001"\n');
  await waitFor(() => inboundMode(source, 8001) === 'opaque', 'the poll to notice the change', 3000);
});

test('a background reload that throws is reported as reloadFailed (no unhandled rejection), and the next change applies', async (t) => {
  const vol = new PodInfoVolume(mkdtempSync(join(tmpdir(), 'meshpipe-podinfo-')));
  vol.write('config.linkerd.io/opaque-ports="9000"\n');
  const source = createPolicySource({ ...BASE, annotationsFile: vol.file });
  t.after(() => source.close());
  await source.start();
  const failures: unknown[] = [];
  source.on('reloadFailed', (err) => failures.push(err));
  // A consumer whose `policy` listener throws makes the reload started by the file change reject.
  let broken = true;
  source.on('policy', () => {
    if (broken) throw new Error('listener bug');
  });
  vol.write('config.linkerd.io/opaque-ports="9001"\n');
  await waitFor(() => failures.length > 0, 'the failed reload to be reported');
  assert.match(String(failures[0]), /listener bug/);

  broken = false;
  vol.write('config.linkerd.io/opaque-ports="9002"\n');
  await waitFor(() => inboundMode(source, 9002) === 'opaque', 'the next change to apply');
  assert.equal(failures.length, 1);
});

/** The Service -> endpoints pairs of the source's whole endpoints table. */
function endpointsOf(source: PolicySource): string[] {
  return (source.endpointsTable()?.upsert ?? []).map((e) => `${e.service} ${e.endpoints.join(' ')}`);
}

test('--endpoints file: read again only once it changed, from the last good entries; an edit applies and a bad edit keeps them', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-endpoints-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'endpoints');
  writeFileSync(file, '10.96.0.1:80 10.0.0.9:80\n');
  const { fileSignatureSync } = await import('../ts/policy/file-signature.js');
  const applied: string[][] = [];
  // The entries the owner holds (start-up read, or an earlier worker's last
  // good ones) differ from the file, but the signature says the file did not
  // change since: it is not read again (a pipe could not be).
  const fromFile = [{ service: '10.96.0.1:80', endpoints: ['10.0.0.1:80'], source: 'start' }];
  const source = createPolicySource({ ...BASE, endpoints: { fromFile }, endpointsFile: file, endpointsFileSignature: fileSignatureSync(file) });
  t.after(() => source.close());
  source.on('endpointsFile', (services) => applied.push(services.map((s) => s.service)));
  await source.start();
  assert.deepEqual(endpointsOf(source), ['10.96.0.1:80 10.0.0.1:80'], 'unchanged file: the held entries stay');
  assert.deepEqual(applied, []);

  writeFileSync(file, '10.96.0.1:80 10.0.0.2:80 10.0.0.3:80\n');
  await waitFor(() => endpointsOf(source)[0] === '10.96.0.1:80 10.0.0.2:80 10.0.0.3:80', 'the edit applied', 5000, 20);
  assert.deepEqual(applied, [['10.96.0.1:80']], 'the owner is told, to restart a worker from these');

  writeFileSync(file, '10.96.0.1:80 not-an-address\n');
  await waitFor(() => source.current()?.problems.some((p) => p.message.includes(`${file}:1`) && p.message.includes('keeping the last good entries')), 'the bad edit reported', 5000, 20);
  assert.deepEqual(endpointsOf(source), ['10.96.0.1:80 10.0.0.2:80 10.0.0.3:80']);
  writeFileSync(file, '10.96.0.2:80 10.0.0.4:80\n');
  await waitFor(() => endpointsOf(source).join() === '10.96.0.2:80 10.0.0.4:80', 'a good edit replaces the file\'s Services', 5000, 20);
  assert.ok(!source.current()!.problems.some((p) => p.message.includes(file)), 'its problem is gone');
});

test('--endpoints file bad when a worker (re)starts: the held entries stay in force and the problem is listed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-endpoints-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'endpoints');
  writeFileSync(file, 'garbage\n');
  const fromFile = [{ service: '10.96.0.1:80', endpoints: ['10.0.0.2:80'], source: 'last good' }];
  const source = createPolicySource({ ...BASE, endpoints: { fromFile }, endpointsFile: file, endpointsFileSignature: 'an older signature' });
  t.after(() => source.close());
  const first = await source.start();
  assert.deepEqual(endpointsOf(source), ['10.96.0.1:80 10.0.0.2:80']);
  assert.ok(first.problems.some((p) => p.message.includes(`${file}:1`)), first.problems.map((p) => p.message).join('\n'));
});
