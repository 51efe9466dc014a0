/**
 * End to end between two "pods" (network namespaces joined by a veth pair),
 * each with `meshpipe init` rules and a transparent meshpipe sidecar under uid
 * 2102, running real Debian software: nginx (HTTP/1.1 and cleartext HTTP/2)
 * with curl, redis-server with redis-cli and redis-benchmark, MariaDB (a
 * server-speaks-first protocol) on a port nobody configured, a server-first
 * peer on a port marked opaque, skip ports on both sides, a connection where
 * neither side speaks, and SHA-256 integrity of 32 MiB each way. Every check
 * reads the sidecars' own counters (EngineSnapshot) to prove which path the
 * bytes took and what detection decided. Root only; CI runs it.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPodPair, netnsSupport, requireNetns, startResponder, tcpRequest, type PodPair } from './netns.js';
import { connectionsTo, detectResults, startSidecar, type Sidecar } from './netns-sidecar.js';

const CLI_INIT = fileURLToPath(new URL('../ts/cli/init.js', import.meta.url));
const RUN_INIT = `import { main } from ${JSON.stringify(CLI_INIT)}; process.exitCode = await main(process.argv.slice(1));`;
const APP = { uid: 1000 };
const DETECT_TIMEOUT_S = 4;
const SIDECAR_FLAGS = ['--detect-timeout', `${DETECT_TIMEOUT_S}s`];

/**
 * The server pod as Kubernetes sees it, plus a policy.linkerd.io Server that
 * marks its port 3308 opaque (one of the four ways the seed page lists). Both
 * sidecars read it with --manifests: the server side as its own pod, the
 * client side to learn the destination's policy, as Linkerd's clients do.
 */
function serverManifests(podIP: string): string {
  return `apiVersion: v1
kind: Pod
metadata: { name: server, namespace: e2e, labels: { app: server } }
spec:
  containers:
    - name: app
      ports: [{ containerPort: 3307 }, { containerPort: 3308 }, { containerPort: 6379 }, { containerPort: 7070 }, { containerPort: 8080 }, { containerPort: 8082 }]
status: { podIP: ${podIP} }
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: banner, namespace: e2e, creationTimestamp: "2024-01-01T00:00:00Z" }
spec:
  podSelector: { matchLabels: { app: server } }
  port: 3308
  proxyProtocol: opaque
---
# A port with a Server denies what no AuthorizationPolicy allows: this one allows every client.
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: { name: everyone, namespace: e2e }
spec: { networks: [{ cidr: 0.0.0.0/0 }, { cidr: "::/0" }] }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: banner-everyone, namespace: e2e }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: banner }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: NetworkAuthentication, name: everyone }]
`;
}

/** Reads until EOF, replies with the SHA-256 of what it read, then closes. */
const SINK_SCRIPT = `
const net = require('node:net'); const { createHash } = require('node:crypto');
const server = net.createServer((s) => { const h = createHash('sha256'); s.on('data', (d) => h.update(d)); s.on('end', () => s.end(h.digest('hex'))); s.on('error', () => {}); });
server.listen({ host: '0.0.0.0', port: Number(process.argv[1]) }, () => console.log('LISTENING'));`;
/** Sends a file, half-closes, prints the reply. */
const SEND_SCRIPT = `
const net = require('node:net'); const fs = require('node:fs');
const [host, port, file] = process.argv.slice(1); let reply = '';
const s = net.connect({ host, port: Number(port) }, () => fs.createReadStream(file).pipe(s));
s.setEncoding('utf8'); s.on('data', (d) => (reply += d)); s.on('end', () => console.log(reply)); s.on('error', (e) => console.log('ERROR ' + e.code));`;
/** Connects, stays silent for DELAY ms, then sends "hello" and prints the echo. */
const SILENT_CLIENT_SCRIPT = `
const net = require('node:net'); const [host, port, delay] = process.argv.slice(1); let reply = '';
const s = net.connect({ host, port: Number(port) }, () => setTimeout(() => s.write('hello'), Number(delay)));
s.setEncoding('utf8'); s.on('data', (d) => { reply += d; if (reply === 'hello') { console.log(reply); s.end(); } }); s.on('error', (e) => console.log('ERROR ' + e.code));`;
/** Echo server that never speaks first. */
const ECHO_SCRIPT = `
const net = require('node:net');
net.createServer((s) => { s.pipe(s); s.on('error', () => {}); }).listen({ host: '0.0.0.0', port: Number(process.argv[1]) }, () => console.log('LISTENING'));`;

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

describe('two pods with transparent sidecars', { concurrency: false }, () => {
  let pair: PodPair;
  let clientSidecar: Sidecar;
  let serverSidecar: Sidecar;
  let dir: string;
  let dst: string;
  let ready = false;

  before(async () => {
    if (!(await netnsSupport()).ok) return; // each test reports the skip (or, in CI, fails)
    dir = mkdtempSync(join(tmpdir(), 'meshpipe-e2e-'));
    chmodSync(dir, 0o777); // the app uid writes downloads here
    pair = await createPodPair();
    const { client, server } = pair;
    dst = server.addr4 as string;
    for (const [pod, args] of [
      [client, ['--skip-outbound-ports', '9091,9093']],
      [server, ['--skip-inbound-ports', '9092,9093']],
    ] as const) {
      const r = await pod.exec(process.execPath, ['--input-type=module', '-e', RUN_INIT, '--', '--no-ipv6', ...args]);
      assert.equal(r.code, 0, r.stderr);
    }
    const manifests = join(dir, 'server-pod.yaml');
    writeFileSync(manifests, serverManifests(dst));
    clientSidecar = await startSidecar(client, [...SIDECAR_FLAGS, '--manifests', manifests]);
    serverSidecar = await startSidecar(server, [...SIDECAR_FLAGS, '--manifests', manifests, '--namespace', 'e2e', '--pod', 'server']);

    // Server pod: nginx (HTTP/1.1 on 8080, cleartext HTTP/2 on 8082), redis, MariaDB on 3307, small peers.
    mkdirSync(join(dir, 'www'));
    writeFileSync(join(dir, 'www', 'hello.txt'), 'hello from nginx\n');
    writeFileSync(join(dir, 'www', 'big.bin'), randomBytes(32 * 1024 * 1024));
    const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${dir}/${t};`).join(' ');
    writeFileSync(join(dir, 'nginx.conf'), `daemon off; master_process off; worker_processes 1; user root;
      error_log ${dir}/nginx-error.log; pid ${dir}/nginx.pid; events { worker_connections 256; }
      http { access_log off; ${temp} server { listen 8080; root ${dir}/www; } server { listen 8082 http2; root ${dir}/www; } }`);
    server.spawn('nginx', ['-c', join(dir, 'nginx.conf'), '-p', dir]);
    server.spawn('redis-server', ['--port', '6379', '--bind', '0.0.0.0', '--protected-mode', 'no', '--save', '', '--appendonly', 'no']);
    const db = join(dir, 'db');
    const install = await server.exec('mariadb-install-db', ['--no-defaults', `--datadir=${db}`, '--user=root', '--auth-root-authentication-method=normal', '--skip-test-db'], { timeoutMs: 120_000 });
    assert.equal(install.code, 0, install.stderr);
    const maria = server.spawn('mariadbd', ['--no-defaults', `--datadir=${db}`, '--port=3307', '--bind-address=0.0.0.0', `--socket=${dir}/mysqld.sock`,
      '--user=root', '--skip-grant-tables', '--skip-name-resolve', `--pid-file=${dir}/mariadb.pid`, '--innodb-buffer-pool-size=16M']);
    await maria.waitFor(/ready for connections/, 60_000);
    await startResponder(server, '0.0.0.0', 3308, 'banner-first');
    await startResponder(server, '0.0.0.0', 9091, 'skip-out');
    await startResponder(server, '0.0.0.0', 9092, 'skip-in');
    await startResponder(server, '0.0.0.0', 9093, 'skip-both');
    for (const [script, port] of [[SINK_SCRIPT, 7071], [ECHO_SCRIPT, 7070]] as const) {
      await server.spawn(process.execPath, ['-e', script, String(port)]).waitFor(/LISTENING/);
    }
    for (const port of [8080, 6379]) {
      // Readiness over the server pod's loopback, which is never redirected.
      for (let i = 0; ; i++) {
        const r = await server.exec('bash', ['-c', `exec 3<>/dev/tcp/127.0.0.1/${port}`]);
        if (r.code === 0) break;
        if (i > 100) throw new Error(`port ${port} did not open in the server pod`);
        await new Promise((res) => setTimeout(res, 100));
      }
    }
    ready = true;
  });

  after(async () => {
    await pair?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  async function gate(t: Parameters<typeof requireNetns>[0]): Promise<boolean> {
    if (!(await requireNetns(t))) return false;
    assert.ok(ready, 'setup failed (see the before hook)');
    return true;
  }

  test('HTTP/1.1 and HTTP/2 with curl: detected as HTTP on both sides', async (t) => {
    if (!(await gate(t))) return;
    const h1 = await pair.client.exec('curl', ['-sS', '-m', '10', '-w', '\\n%{http_version}', `http://${dst}:8080/hello.txt`], APP);
    assert.equal(h1.stdout, 'hello from nginx\n\n1.1', h1.stderr);
    const h2 = await pair.client.exec('curl', ['-sS', '-m', '10', '--http2-prior-knowledge', '-w', '\\n%{http_version}', `http://${dst}:8082/hello.txt`], APP);
    assert.equal(h2.stdout, 'hello from nginx\n\n2', h2.stderr);
    const [c, s] = [await clientSidecar.snapshot(), await serverSidecar.snapshot()];
    assert.ok((detectResults(c, 'outbound', 8080)['http/1'] ?? 0) >= 1, JSON.stringify(c.detect));
    assert.ok((detectResults(s, 'inbound', 8080)['http/1'] ?? 0) >= 1, JSON.stringify(s.detect));
    assert.ok((detectResults(c, 'outbound', 8082)['http/2'] ?? 0) >= 1, JSON.stringify(c.detect));
    assert.ok((detectResults(s, 'inbound', 8082)['http/2'] ?? 0) >= 1, JSON.stringify(s.detect));
  });

  test('redis on 6379: opaque by default on both sides, no detection delay', async (t) => {
    if (!(await gate(t))) return;
    const started = Date.now();
    const r = await pair.client.exec('redis-cli', ['-h', dst, '-p', '6379', 'SET', 'mesh', 'pipe'], APP);
    assert.equal(r.stdout.trim(), 'OK', r.stderr);
    assert.ok(Date.now() - started < 2000, `redis-cli took ${Date.now() - started} ms`);
    assert.equal((await pair.client.exec('redis-cli', ['-h', dst, '-p', '6379', 'GET', 'mesh'], APP)).stdout.trim(), 'pipe');
    const bench = await pair.client.exec('redis-benchmark', ['-h', dst, '-p', '6379', '-n', '2000', '-c', '4', '-t', 'ping', '-q'], { ...APP, timeoutMs: 60_000 });
    assert.equal(bench.code, 0, bench.stderr);
    assert.match(bench.stdout, /PING_INLINE: [\d.]+ requests per second/);
    const [c, s] = [await clientSidecar.snapshot(), await serverSidecar.snapshot()];
    assert.deepEqual(Object.keys(detectResults(c, 'outbound', 6379)), ['opaque_port'], JSON.stringify(c.detect));
    assert.deepEqual(Object.keys(detectResults(s, 'inbound', 6379)), ['opaque_port'], JSON.stringify(s.detect));
    assert.ok(connectionsTo(s, 'inbound', 6379) >= 6, 'redis traffic went through the server sidecar');
  });

  test('MariaDB (server speaks first) on an unconfigured port: works at once, and again without delay', async (t) => {
    if (!(await gate(t))) return;
    const query = async () => {
      const started = Date.now();
      const r = await pair.client.exec('mariadb', ['--no-defaults', '--protocol=TCP', '-h', dst, '-P', '3307', '-u', 'root', '-N', '-e', 'SELECT 6*7'], APP);
      assert.equal(r.stdout.trim(), '42', r.stderr);
      return Date.now() - started;
    };
    const first = await query();
    assert.ok(first < (DETECT_TIMEOUT_S * 1000) / 2, `first connection took ${first} ms: the detect timeout (${DETECT_TIMEOUT_S}s) must not apply`);
    const later = Math.max(await query(), await query());
    assert.ok(later < (DETECT_TIMEOUT_S * 1000) / 2, `later connections took up to ${later} ms`);
    const [c, s] = [await clientSidecar.snapshot(), await serverSidecar.snapshot()];
    assert.ok((detectResults(c, 'outbound', 3307)['server_first'] ?? 0) >= 1, JSON.stringify(c.detect));
    assert.ok((detectResults(s, 'inbound', 3307)['server_first'] ?? 0) >= 1, JSON.stringify(s.detect));
    assert.ok(c.serverFirst.targets.some((x) => x.addr === `${dst}:3307`), JSON.stringify(c.serverFirst));
  });

  test('a server-first peer on a port marked opaque by a policy.linkerd.io Server: no detection on either side', async (t) => {
    if (!(await gate(t))) return;
    // Through the server sidecar to the original destination: the app sees the pod's own IP as the peer.
    const own = dst.replaceAll('.', '\\.');
    assert.match(await tcpRequest(pair.client, dst, 3308, APP), new RegExp(`^banner-first local=${own}:3308 remote=${own}:`));
    const [c, s] = [await clientSidecar.snapshot(), await serverSidecar.snapshot()];
    assert.deepEqual(Object.keys(detectResults(c, 'outbound', 3308)), ['opaque_port']);
    assert.deepEqual(Object.keys(detectResults(s, 'inbound', 3308)), ['opaque_port']);
  });

  test('skip ports bypass the sidecars: traffic flows and their counters do not see it', async (t) => {
    if (!(await gate(t))) return;
    const esc = (a: string) => a.replaceAll('.', '\\.');
    const [server, client] = [esc(dst), esc(pair.client.addr4!)];
    // 9093 is skipped on both sides: the server app sees the client app's own address, no sidecar involved.
    assert.match(await tcpRequest(pair.client, dst, 9093, APP), new RegExp(`^skip-both local=${server}:9093 remote=${client}:`));
    // skip-outbound 9091 (client pod only): bypasses the client sidecar, then enters the server
    // sidecar, which forwards to the original destination (the app sees the pod's own IP as the peer).
    assert.match(await tcpRequest(pair.client, dst, 9091, APP), new RegExp(`^skip-out local=${server}:9091 remote=${server}:`));
    // skip-inbound 9092 (server pod only): through the client sidecar, then straight to the app.
    assert.match(await tcpRequest(pair.client, dst, 9092, APP), new RegExp(`^skip-in local=${server}:9092 remote=${client}:`));
    const [c, s] = [await clientSidecar.snapshot(), await serverSidecar.snapshot()];
    assert.equal(connectionsTo(c, 'outbound', 9093), 0);
    assert.equal(connectionsTo(s, 'inbound', 9093), 0);
    assert.equal(connectionsTo(c, 'outbound', 9091), 0, 'skip-outbound: the client sidecar never sees 9091');
    assert.equal(connectionsTo(s, 'inbound', 9091), 1, 'the server side does not skip 9091');
    assert.equal(connectionsTo(s, 'inbound', 9092), 0, 'skip-inbound: the server sidecar never sees 9092');
    assert.equal(connectionsTo(c, 'outbound', 9092), 1, 'the client side does not skip 9092');
  });

  test('neither side speaks: the detect timeout passes and the connection proceeds as TCP', async (t) => {
    if (!(await gate(t))) return;
    const delay = (DETECT_TIMEOUT_S + 1) * 1000;
    const r = await pair.client.exec(process.execPath, ['-e', SILENT_CLIENT_SCRIPT, dst, '7070', String(delay)], { ...APP, timeoutMs: 30_000 });
    assert.equal(r.stdout.trim(), 'hello', r.stderr);
    const [c, s] = [await clientSidecar.snapshot(), await serverSidecar.snapshot()];
    assert.deepEqual(Object.keys(detectResults(c, 'outbound', 7070)), ['read_timeout'], JSON.stringify(c.detect));
    assert.deepEqual(Object.keys(detectResults(s, 'inbound', 7070)), ['read_timeout'], JSON.stringify(s.detect));
  });

  test('SHA-256 integrity of 32 MiB each way through both sidecars', async (t) => {
    if (!(await gate(t))) return;
    const original = readFileSync(join(dir, 'www', 'big.bin'));
    const out = join(dir, 'download.bin');
    const dl = await pair.client.exec('curl', ['-sS', '-m', '60', '-o', out, `http://${dst}:8080/big.bin`], { ...APP, timeoutMs: 90_000 });
    assert.equal(dl.code, 0, dl.stderr);
    assert.equal(sha256(readFileSync(out)), sha256(original), 'download (server -> client)');
    const up = await pair.client.exec(process.execPath, ['-e', SEND_SCRIPT, dst, '7071', join(dir, 'www', 'big.bin')], { ...APP, timeoutMs: 90_000 });
    assert.equal(up.stdout.trim(), sha256(original), `upload (client -> server): ${up.stderr}`);
    const s = await serverSidecar.snapshot();
    const up7071 = s.tcp.filter((x) => x.direction === 'inbound' && x.targetPort === 7071).reduce((n, x) => n + x.bytesClientToServer, 0);
    assert.equal(up7071, original.length, 'the server sidecar carried every uploaded byte');
  });
});
