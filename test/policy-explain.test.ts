/**
 * `meshpipe explain`, run as the real CLI (`node dist/ts/cli/main.js explain`):
 * every branch of the seed page's decision tree (TLS; default opaque port
 * inside / outside clusterNetworks; other port inside / outside), the
 * server-first note, the JSON form, the effective policy of manifests with
 * sources, the current policy for a port with manifests, and usage errors.
 * The verdicts come from the compiled policy: never "add it" for a port the
 * policy already makes opaque, never "nothing to configure" for one it
 * detects, never opaque for HTTP; exit codes for inputs with problems
 * (--strict for CI).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, runCli } from './helpers.js';
import { fixture } from './policy-helpers.js';

async function explain(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runCli(['explain', ...args]);
}

test('TLS: nothing to configure', async () => {
  const r = await explain(['--port', '8443', '--tls']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /1\. Is the protocol wrapped in TLS\? yes/);
  assert.match(r.stdout, /=> destination inside clusterNetworks: nothing to configure/);
  assert.match(r.stdout, /=> destination outside clusterNetworks: nothing to configure/);
  assert.doesNotMatch(r.stdout, /2\. Is 8443/);
});

test('default opaque port, destination outside clusterNetworks: enable-external-profiles on the caller', async () => {
  const r = await explain(['--port', '3306', '--destination', '203.0.113.9']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /2\. Is 3306 in the default opaque ports \(25,587,3306,4444,5432,6379,9300,11211\)\? yes/);
  assert.match(r.stdout, /203\.0\.113\.9: no/);
  assert.match(r.stdout, /=> outbound to 203\.0\.113\.9: set config\.linkerd\.io\/enable-external-profiles: "true" on the caller/);
  assert.match(r.stdout, /policy: outbound 203\.0\.113\.9:3306: detect/);
  assert.ok(r.stdout.includes('3306 is in the default opaque list; destination 203.0.113.9 is outside clusterNetworks: set config.linkerd.io/enable-external-profiles on the caller'));
});

test('default opaque port, destination inside clusterNetworks: nothing needed', async () => {
  const r = await explain(['--port', '3306', '--protocol', 'mysql', '--destination', '10.2.3.4']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /Port 3306 \(mysql, server speaks first\)/);
  assert.match(r.stdout, /=> outbound to 10\.2\.3\.4: nothing to configure/);
  assert.match(r.stdout, /policy: outbound 10\.2\.3\.4:3306: opaque \(opaque: default opaque ports/);
  assert.doesNotMatch(r.stdout, /enable-external-profiles/);
});

test('other port inside clusterNetworks: opaque-ports on the destination, with the server-first note', async () => {
  const r = await explain(['--port', '4222', '--protocol', 'nats', '--destination', '10.2.3.4']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /=> outbound to 10\.2\.3\.4: set config\.linkerd\.io\/opaque-ports: "4222" on the destination/);
  assert.match(r.stdout, /why: nats is server-first/);
  assert.match(r.stdout, /not stalled 10 s: only the first connection to a target waits the grace period/);
  assert.match(r.stdout, /marking the port opaque is still the precise fix/);
});

test('other port outside clusterNetworks: skip-outbound-ports on the caller; custom clusterNetworks', async () => {
  const r = await explain(['--port', '2525', '--destination', '10.2.3.4', '--cluster-networks', '192.168.0.0/16']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /\(192\.168\.0\.0\/16\)\? 10\.2\.3\.4: no/);
  assert.match(r.stdout, /=> outbound to 10\.2\.3\.4: set config\.linkerd\.io\/skip-outbound-ports: "2525" on the caller/);
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
  const j = JSON.parse(r.stdout) as { ports: { port: number; inDefaultOpaquePorts: boolean; insideClusterNetworks: boolean; verdicts: { action: string; mode: string; direction: string; address: string }[] }[] };
  assert.equal(j.ports[0]?.port, 3306);
  assert.equal(j.ports[0]?.inDefaultOpaquePorts, true);
  assert.equal(j.ports[0]?.insideClusterNetworks, false);
  assert.match(j.ports[0]?.verdicts[0]?.action ?? '', /enable-external-profiles/);
  assert.deepEqual([j.ports[0]?.verdicts[0]?.direction, j.ports[0]?.verdicts[0]?.address, j.ports[0]?.verdicts[0]?.mode], ['outbound', '203.0.113.9', 'detect']);
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

test('with manifests, --json: per workload and port, mode and source; problems listed (exit 1 with --strict)', async () => {
  const r = await explain(['--manifests', fixture('bad.yaml'), '--json']);
  assert.equal(r.code, 0, r.stderr);
  const strict = await explain(['--manifests', fixture('bad.yaml'), '--json', '--strict']);
  assert.equal(strict.code, 1, 'a bad annotation value fails --strict');
  assert.match(strict.stderr, /^meshpipe explain: error: \d+ problems? in the inputs \(--strict\)$/m);
  assert.equal(strict.stdout, r.stdout, 'the answer is printed either way');
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
  assert.match(r.stdout, /=> inbound to Deployment web\/api: nothing to configure\n\s+policy: inbound Deployment web\/api port 6379: opaque \(opaque: pod annotation config\.linkerd\.io\/opaque-ports on Deployment web\/api\)/);
  assert.match(r.stdout, /=> outbound to 10\.9\.9\.9: nothing to configure\n\s+policy: outbound 10\.9\.9\.9:6379: opaque \(opaque: default opaque ports/);
});

test('--annotations: a downward-API file for this pod, bad lines reported', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-explain-'));
  const file = join(dir, 'annotations');
  writeFileSync(file, 'config.linkerd.io/opaque-ports="9000-9010"\nbroken line\n');
  const r = await explain(['--annotations', file, '--port', '9005']);
  assert.equal(r.code, 0, r.stderr);
  // Already opaque through the annotation: nothing to add.
  assert.match(r.stdout, /=> inbound to this pod: nothing to configure\n\s+policy: inbound this pod port 9005: opaque \(opaque: pod annotation config\.linkerd\.io\/opaque-ports \(annotations file /);
  assert.doesNotMatch(r.stdout, /inbound to this pod: set config\.linkerd\.io\/opaque-ports/);
  assert.match(r.stdout, /line 2: expected key="value"/);
});

test('usage errors exit 2 and name the bad value', async () => {
  const bad = [
    [['--port', '70000'], /--port "70000": expected a port number 1-65535/],
    [['--port', '80', '--destination', 'example.com'], /--destination "example.com": expected an IPv4 or IPv6 address/],
    [['--port', '80', '--cluster-networks', '10.0.0.0/99'], /--cluster-networks: "10.0.0.0\/99": prefix length "99" is invalid/],
    [['--port', '80', '--default-opaque-ports', '7000-6000'], /--default-opaque-ports: "7000-6000"/],
    [['--protocol', 'gopher'], /--protocol "gopher" is not in the table/],
    [['--bogus'], /unknown option --bogus for meshpipe explain; run meshpipe explain --help for the options/],
    [['--manifests', '/nonexistent/k8s/'], /--manifests \/nonexistent\/k8s\/: no such file or folder/],
    [['--port', '80', '--annotations', '/nonexistent/annotations'], /--annotations \/nonexistent\/annotations: no such file or folder/],
  ] as const;
  for (const [args, pattern] of bad) {
    const r = await explain([...args]);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, pattern);
    assert.match(r.stderr, /^meshpipe explain: error: .*\(ERR_INVALID_ARGUMENT\)$/m, 'the one error format');
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

test('HTTP is never advised opaque: --protocol http says nothing to configure everywhere it is detected', async () => {
  for (const args of [['--port', '80', '--protocol', 'http'], ['--port', '8080'], ['--protocol', 'http', '--destination', '203.0.113.9']]) {
    const r = await explain(args);
    assert.equal(r.code, 0, r.stderr);
    const verdicts = r.stdout.match(/^ {2}=> .*$/gm) ?? [];
    assert.ok(verdicts.length >= 1, r.stdout);
    for (const v of verdicts) assert.match(v, /: nothing to configure$/, `${args.join(' ')}: ${v}`);
    assert.doesNotMatch(r.stdout, /opaque-ports: "80"|opaque-ports: "8080"|skip-outbound-ports/, args.join(' '));
    assert.doesNotMatch(r.stdout, /If the server speaks first/, 'no server-first note for HTTP');
  }
  // An HTTP port someone made opaque: nothing to add, and a note that it loses HTTP detection.
  const r = await explain(['--port', '80', '--protocol', 'http', '--opaque-ports', '80', '--destination', '10.1.1.1']);
  assert.match(r.stdout, /=> outbound to 10\.1\.1\.1: nothing to configure\n\s+policy: outbound 10\.1\.1\.1:80: opaque \(opaque: --opaque-ports flag\)\n\s+why: .*forwarded as TCP, without HTTP detection/);
});

test('the verdict follows the compiled policy: an annotation that replaces the defaults leaves 3306 detected, and explain says so', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-explain-'));
  writeFileSync(join(dir, 'app.yaml'), [
    'apiVersion: apps/v1', 'kind: Deployment', 'metadata: { name: app, namespace: shop }',
    'spec: { template: { metadata: { labels: { app: app }, annotations: { config.linkerd.io/opaque-ports: "4222" } },',
    '  spec: { containers: [{ name: app, ports: [{ containerPort: 3306 }, { containerPort: 4222 }] }] } } }', '',
  ].join('\n'));
  const r = await explain(['--manifests', dir, '--namespace', 'shop', '--pod', 'app-1', '--port', '3306', '--port', '4222']);
  assert.equal(r.code, 0, r.stderr);
  // Repeated --port: each is explained.
  assert.match(r.stdout, /^Port 3306$/m);
  assert.match(r.stdout, /^Port 4222$/m);
  const port3306 = r.stdout.slice(r.stdout.indexOf('Port 3306'), r.stdout.indexOf('Port 4222'));
  // Not "nothing to configure" next to a policy that says detect: the advice keeps the annotation's list.
  assert.match(port3306, /=> inbound to Deployment shop\/app: set config\.linkerd\.io\/opaque-ports: "4222,3306" on this workload/);
  assert.match(port3306, /policy: inbound Deployment shop\/app port 3306: detect \(detect: not listed in pod annotation/);
  for (const block of r.stdout.split(/^ {2}=> /m).slice(1)) {
    const mode = /policy: \S+ .*?: (\w+) \(/.exec(block)?.[1];
    if (block.startsWith('destination') || block.startsWith('inbound') || block.startsWith('outbound')) {
      assert.equal(block.includes('nothing to configure'), mode !== 'detect', `advice and policy agree:\n${block}`);
    }
  }
});

test('inputs with problems: a file that does not parse exits 1 (the answer is still printed); --strict fails on any problem', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-explain-'));
  writeFileSync(join(dir, 'broken.yaml'), 'kind: Service\nmetadata: { name: [unclosed\n');
  const r = await explain(['--manifests', dir]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stdout, /Problems \(valid entries still apply\):\n\s+.*broken\.yaml.*YAML does not parse/);
  assert.match(r.stderr, /^meshpipe explain: error: some inputs could not be used/m);
  const clean = mkdtempSync(join(tmpdir(), 'meshpipe-explain-'));
  writeFileSync(join(clean, 'ok.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: { name: shop }\n');
  assert.equal((await explain(['--manifests', clean, '--strict'])).code, 0, 'no problem: --strict passes');
});

test('explain reads the proxy\'s own configuration (--config FILE, MESHPIPE_* variables) for what its flags do not say', async () => {
  const fromEnv = await runCli(['explain', '--port', '4222', '--destination', '10.1.1.1'], { env: { MESHPIPE_OPAQUE_PORTS: '4222' } });
  assert.equal(fromEnv.code, 0, fromEnv.stderr);
  assert.match(fromEnv.stdout, /=> outbound to 10\.1\.1\.1: nothing to configure\n\s+policy: outbound 10\.1\.1\.1:4222: opaque \(opaque: MESHPIPE_OPAQUE_PORTS\)/);
  // A flag still wins over the environment.
  const flagWins = await runCli(['explain', '--port', '4222', '--destination', '10.1.1.1', '--opaque-ports', '9999'], { env: { MESHPIPE_OPAQUE_PORTS: '4222' } });
  assert.match(flagWins.stdout, /policy: outbound 10\.1\.1\.1:4222: detect/);

  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-explain-'));
  const config = join(dir, 'meshpipe.yaml');
  writeFileSync(config, `manifests: [${JSON.stringify(join(ROOT, 'examples/k8s'))}]\nnamespace: shop\npod: web-5d8f-abc\nclusterNetworks: 10.96.0.0/12\n`);
  const r = await runCli(['explain', '--config', config, '--port', '4222']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /3\. Is the destination inside clusterNetworks \(10\.96\.0\.0\/12\)\?/);
  assert.match(r.stdout, /=> inbound to Deployment shop\/web: nothing to configure\n\s+policy: inbound Deployment shop\/web port 4222: opaque \(opaque: pod annotation config\.linkerd\.io\/opaque-ports on Deployment shop\/web\)/);
});

test('"any other destination inside clusterNetworks" is not a known destination, even one at the network\'s first address', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-explain-'));
  writeFileSync(join(dir, 'svc.yaml'), [
    'apiVersion: v1', 'kind: Service', 'metadata: { name: first, namespace: shop }',
    'spec: { clusterIP: 10.0.0.1, ports: [{ name: p, port: 9000, appProtocol: linkerd.io/opaque }] }', '',
  ].join('\n'));
  const r = await explain(['--manifests', dir, '--port', '9000']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /=> outbound to Service shop\/first: nothing to configure\n\s+policy: outbound Service shop\/first \(10\.0\.0\.1\) port 9000: opaque/);
  assert.match(r.stdout, /=> destination inside clusterNetworks: set config\.linkerd\.io\/opaque-ports: "9000" on the destination/);
});
