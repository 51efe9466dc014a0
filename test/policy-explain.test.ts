/**
 * `meshpipe explain`, run as the real CLI (`node dist/ts/cli/main.js explain`):
 * every branch of the seed page's decision tree (TLS; default opaque port
 * inside / outside clusterNetworks; other port inside / outside), the
 * server-first note, the JSON form, the effective policy of manifests with
 * sources, the current policy for a port with manifests, and usage errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from './helpers.js';
import { fixture } from './policy-helpers.js';

async function explain(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runCli(['explain', ...args]);
}

test('TLS: nothing to configure', async () => {
  const r = await explain(['--port', '8443', '--tls']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /1\. Is the protocol wrapped in TLS\? yes/);
  assert.match(r.stdout, /=> nothing to configure/);
  assert.doesNotMatch(r.stdout, /2\. Is 8443/);
});

test('default opaque port, destination outside clusterNetworks: enable-external-profiles on the caller', async () => {
  const r = await explain(['--port', '3306', '--destination', '203.0.113.9']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /2\. Is 3306 in the default opaque ports \(25,587,3306,4444,5432,6379,9300,11211\)\? yes/);
  assert.match(r.stdout, /203\.0\.113\.9: no/);
  assert.match(r.stdout, /=> set config\.linkerd\.io\/enable-external-profiles: "true" on the caller/);
  assert.ok(r.stdout.includes('3306 is in the default opaque list; destination 203.0.113.9 is outside clusterNetworks: set config.linkerd.io/enable-external-profiles on the caller'));
});

test('default opaque port, destination inside clusterNetworks: nothing needed', async () => {
  const r = await explain(['--port', '3306', '--protocol', 'mysql', '--destination', '10.2.3.4']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /Port 3306 \(mysql, server speaks first\)/);
  assert.match(r.stdout, /=> nothing to configure/);
  assert.doesNotMatch(r.stdout, /enable-external-profiles/);
});

test('other port inside clusterNetworks: opaque-ports on the destination, with the server-first note', async () => {
  const r = await explain(['--port', '4222', '--protocol', 'nats', '--destination', '10.2.3.4']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /=> set config\.linkerd\.io\/opaque-ports: "4222" on the destination/);
  assert.match(r.stdout, /not stalled 10 s: only the first connection to a target waits the grace period/);
  assert.match(r.stdout, /marking the port opaque is still the precise fix/);
});

test('other port outside clusterNetworks: skip-outbound-ports on the caller; custom clusterNetworks', async () => {
  const r = await explain(['--port', '2525', '--destination', '10.2.3.4', '--cluster-networks', '192.168.0.0/16']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /\(192\.168\.0\.0\/16\)\? 10\.2\.3\.4: no/);
  assert.match(r.stdout, /=> set config\.linkerd\.io\/skip-outbound-ports: "2525" on the caller/);
});

test('no destination: both branches; --protocol alone covers its ports (galera)', async () => {
  const r = await explain(['--protocol', 'galera']);
  assert.equal(r.code, 0, r.stderr);
  for (const port of [3306, 4444, 4567, 4568]) assert.match(r.stdout, new RegExp(`^Port ${port} \\(galera`, 'm'));
  assert.match(r.stdout, /destination inside clusterNetworks: set config\.linkerd\.io\/opaque-ports: "4567" on the destination/);
  assert.match(r.stdout, /destination outside clusterNetworks: set config\.linkerd\.io\/skip-outbound-ports: "4568" on the caller/);
  assert.match(r.stdout, /Linkerd's chart skips them/);
});

test('--json: the same answer for scripts', async () => {
  const r = await explain(['--port', '3306', '--destination', '203.0.113.9', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { ports: { port: number; inDefaultOpaquePorts: boolean; insideClusterNetworks: boolean; advice: { action: string }[] }[] };
  assert.equal(j.ports[0]?.port, 3306);
  assert.equal(j.ports[0]?.inDefaultOpaquePorts, true);
  assert.equal(j.ports[0]?.insideClusterNetworks, false);
  assert.match(j.ports[0]?.advice[0]?.action ?? '', /enable-external-profiles/);
});

test('with manifests and no port: every workload port with its source', async () => {
  const r = await explain(['--manifests', fixture('servers.yaml'), '--manifests', fixture('basic.yaml')]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^Deployment web\/api$/m);
  assert.match(r.stdout, /inbound\s+8080 \(http\)\s+http2\s+http2: Server web\/api-http proxyProtocol=HTTP\/2/);
  assert.match(r.stdout, /inbound\s+3306 \(mysql\)\s+opaque\s+opaque: default opaque ports \(3306\)/);
  assert.match(r.stdout, /Service db\/mysql \(10\.96\.0\.10\)/);
  assert.match(r.stdout, /outbound\s+80 \(http\)\s+http1\s+http1: appProtocol http on Service db\/mysql port 80 \(http\)/);
});

test('with manifests, --json: per workload and port, mode and source; problems listed', async () => {
  const r = await explain(['--manifests', fixture('bad.yaml'), '--json']);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as {
    workloads: { kind: string; name: string; inbound: { port: number; mode: string; source: string }[] }[];
    problems: { token: string; annotation: string; message: string }[];
  };
  const app = j.workloads.find((w) => w.kind === 'Deployment' && w.name === 'app');
  assert.deepEqual(app?.inbound.find((p) => p.port === 80), {
    port: 80, name: 'http', mode: 'opaque', source: 'opaque: pod annotation config.linkerd.io/opaque-ports on Deployment bad/app',
  });
  assert.ok(j.problems.some((p) => p.token === '7000-6000' && p.annotation === 'config.linkerd.io/opaque-ports'));
});

test('--port with manifests and a pod: the current policy says what applies today', async () => {
  const r = await explain(['--port', '6379', '--manifests', fixture('servers.yaml'), '--namespace', 'web', '--pod', 'api-1', '--destination', '10.9.9.9']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /inbound Deployment web\/api port 6379: opaque \(opaque: pod annotation config\.linkerd\.io\/opaque-ports on Deployment web\/api\)/);
  assert.match(r.stdout, /outbound 10\.9\.9\.9:6379: opaque \(opaque: default opaque ports/);
});

test('--annotations: a downward-API file for this pod, bad lines reported', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-explain-'));
  const file = join(dir, 'annotations');
  writeFileSync(file, 'config.linkerd.io/opaque-ports="9000-9010"\nbroken line\n');
  const r = await explain(['--annotations', file, '--port', '9005']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /inbound this pod port 9005: opaque \(opaque: pod annotation config\.linkerd\.io\/opaque-ports \(annotations file /);
  assert.match(r.stdout, /line 2: expected key="value"/);
});

test('usage errors exit 2 and name the bad value', async () => {
  const bad = [
    [['--port', '70000'], /--port "70000": expected a port number 1-65535/],
    [['--port', '80', '--destination', 'example.com'], /--destination "example.com": expected an IPv4 or IPv6 address/],
    [['--port', '80', '--cluster-networks', '10.0.0.0/99'], /--cluster-networks: "10.0.0.0\/99": prefix length "99" is invalid/],
    [['--port', '80', '--default-opaque-ports', '7000-6000'], /--default-opaque-ports: "7000-6000"/],
    [['--protocol', 'gopher'], /--protocol "gopher" is not in the table/],
    [['--bogus'], /Unknown option '--bogus'/],
  ] as const;
  for (const [args, pattern] of bad) {
    const r = await explain([...args]);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, pattern);
  }
});

test('--port with manifests and a pod: who may connect and why, and one client\'s decision (the engine\'s, from the compiled table)', async () => {
  const base = ['--manifests', fixture('authz.yaml'), '--namespace', 'shop', '--pod', 'db', '--port', '5432'];
  const r = await explain(base);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /who may connect: Server db-pg: the first rule a client satisfies lets it in, anyone else is refused/);
  assert.match(r.stdout, /authorizationpolicy pg-web: meshed clients web\.shop\.serviceaccount\.identity\.linkerd\.cluster\.local from any address/);
  assert.match(r.stdout, /authorizationpolicy scrape: anyone \(no mesh TLS needed\) from 192\.168\.7\.0\/24 except 192\.168\.7\.128\/25/);
  const web = await explain([...base, '--client', 'web.shop.serviceaccount.identity.linkerd.cluster.local', '--client-ip', '10.0.3.7']);
  assert.match(web.stdout, /web\.shop\.serviceaccount\.identity\.linkerd\.cluster\.local from 10\.0\.3\.7: allowed by authorizationpolicy pg-web/);
  const plain = await explain([...base, '--client', 'none', '--client-ip', '10.0.3.7', '--json']);
  const client = (JSON.parse(plain.stdout) as { ports: { current: { direction: string; client?: { allow: boolean; srvName: string } }[] }[] }).ports[0]!.current
    .find((c) => c.direction === 'inbound')!.client;
  assert.deepEqual({ allow: client?.allow, srv: client?.srvName }, { allow: false, srv: 'db-pg' });
  const other = await explain(['--manifests', fixture('authz.yaml'), '--namespace', 'shop', '--pod', 'db', '--port', '8080', '--default-inbound-policy', 'deny']);
  assert.match(other.stdout, /who may connect: default policy cluster-authenticated/, 'the namespace annotation beats the flag');
  const bad = await explain([...base, '--client', 'Not An Identity', '--client-ip', '10.0.3.7']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--client "Not An Identity"/);
});

test('--destination with manifests and --destinations: the meshed peer, opaque ports through the tunnel', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-explain-'));
  const file = join(dir, 'destinations');
  writeFileSync(file, '192.0.2.10 db.legacy.serviceaccount.identity.linkerd.cluster.local 14143\n');
  const pod = await explain(['--manifests', fixture('meshed-pods.yaml'), '--port', '3306', '--destination', '10.0.1.5']);
  assert.equal(pod.code, 0, pod.stderr);
  assert.match(pod.stdout, /outbound 10\.0\.1\.5:3306: opaque/);
  assert.match(pod.stdout, /mesh: mutual TLS to web\.shop\.serviceaccount\.identity\.linkerd\.cluster\.local through its tunnel port 4143 \(meshed: meshpipe\.io\/inject=enabled on Pod shop\/web-1 \(service account web\)\)/);
  assert.match(pod.stdout, /opaque: no detection; the bytes go through the peer's tunnel as they are/);
  const host = await explain(['--destinations', file, '--port', '5432', '--destination', '192.0.2.10', '--json']);
  const out = (JSON.parse(host.stdout) as { ports: { current: { direction: string; mesh?: { identity: string; tunnelPort: number; source: string } | null }[] }[] }).ports[0]!.current
    .find((c) => c.direction === 'outbound')!;
  assert.deepEqual(out.mesh, { identity: 'db.legacy.serviceaccount.identity.linkerd.cluster.local', tunnelPort: 14143, source: `${file}:1` });
  const none = await explain(['--port', '5432', '--destination', '192.0.2.11']);
  assert.match(none.stdout, /mesh: not meshed: no mesh TLS/);
});
