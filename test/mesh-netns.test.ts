/**
 * Mutual TLS between two sidecars, end to end, in network namespaces: each
 * pod has `meshpipe init` rules and a transparent sidecar with its own
 * identity from `meshpipe identity`; the client sidecar knows the server
 * pod as a meshed destination (`--destinations`), the server sidecar reads
 * its pod, Servers and authorization resources from manifests. Traffic goes
 * client app → outbound → mTLS to 4143 (the tunnel, with the transport
 * header) → inbound → app, with SHA-256 equal both ways, and a capture on
 * the veth shows no plaintext. Every refusal is played by a real peer
 * (openssl s_client / s_server, bash's /dev/tcp) and read back from the
 * sidecars' counters: plaintext, no client certificate, an untrusted CA,
 * expired client and server certificates, a wrong ALPN, the wrong server
 * identity, truncated, oversized and unauthorized-port headers, and an
 * AuthorizationPolicy that denies the client. Rotation: the certificate
 * files are replaced under the running pair; new connections show the new
 * serials in /connections, and a transfer in flight finishes intact.
 * Server speaks first through the mesh: a greeting that comes back through
 * the tunnel before the silent client speaks is learned; a slow HTTP client
 * is not.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, chownSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPodPair, netnsSupport, requireNetns, run, startResponder, tcpRequest, type Pod, type PodPair, type PodProcess } from './netns.js';
import { SIDECAR_UID, detectResults, startSidecar, type Sidecar } from './netns-sidecar.js';
import { waitFor } from './helpers.js';
import type { ConnectionInfo, EngineSnapshot } from '../ts/engine/native.js';

const CLI = fileURLToPath(new URL('../ts/cli/main.js', import.meta.url));
const RUN_INIT = `import { main } from ${JSON.stringify(fileURLToPath(new URL('../ts/cli/init.js', import.meta.url)))}; process.exitCode = await main(process.argv.slice(1));`;
const APP = { uid: 1000 };
/** Runs as the sidecar's uid: exempt from the client pod's redirect, so it reaches 4143 as a raw peer. */
const RAW = { uid: SIDECAR_UID };
const ID = (sa: string) => `${sa}.e2e.serviceaccount.identity.linkerd.cluster.local`;
const CLIENT_ID = ID('client');
const SERVER_ID = ID('server');
const ALPN = 'transport.l5d.io/v1';
const PREFACE = Buffer.from('transport.l5d.io/v1\r\n\r\n');

/** Echoes every connection until EOF. */
const ECHO = `const net = require('node:net');
for (const p of process.argv.slice(1)) net.createServer((s) => { s.pipe(s); s.on('error', () => {}); }).listen({ host: '0.0.0.0', port: Number(p) });
console.log('LISTENING');`;
/**
 * An HTTP/1.1 app: answers `hello <x-marker header> <request body bytes>`;
 * `/sha` answers the request body's `<SHA-256> <bytes>`; an `Upgrade: echo`
 * is answered 101 and the connection then echoes its bytes.
 */
const HTTP_APP = `const http = require('node:http'); const { createHash } = require('node:crypto');
const srv = http.createServer((req, res) => {
  const h = createHash('sha256'); let n = 0; req.on('data', (d) => { n += d.length; if (req.url === '/sha') h.update(d); });
  req.on('end', () => res.end(req.url === '/sha' ? h.digest('hex') + ' ' + n + '\\n' : 'hello ' + req.headers['x-marker'] + ' ' + n + '\\n')); });
srv.on('upgrade', (req, sock, head) => { sock.on('error', () => {}); sock.write('HTTP/1.1 101 Switching Protocols\\r\\nConnection: Upgrade\\r\\nUpgrade: echo\\r\\n\\r\\n'); if (head.length) sock.write(head); sock.pipe(sock); });
srv.listen({ host: '0.0.0.0', port: Number(process.argv[1]) }, () => console.log('LISTENING'));`;
/**
 * An HTTP/1.1 client that connects, stays silent for MS milliseconds (a
 * pool connecting ahead of its first request), then sends one request with
 * `x-marker: slow` and prints the whole response once the server closes.
 */
const SLOW_HTTP = `const net = require('node:net');
const [host, port, ms] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port) }, () => setTimeout(() => s.write('GET / HTTP/1.1\\r\\nHost: x\\r\\nx-marker: slow\\r\\nConnection: close\\r\\n\\r\\n'), Number(ms)));
let out = ''; s.setEncoding('utf8'); s.on('data', (d) => (out += d)); s.on('end', () => process.stdout.write(out));
s.on('error', (e) => { console.log('ERROR ' + e.code); process.exit(1); });`;
/**
 * Upgrades an HTTP/1.1 connection (`Upgrade: echo`), then sends SIZE random
 * bytes, half-closes and reads the echo; prints "SENT <sha> GOT <sha> <bytes>",
 * "STATUS <line>" (not upgraded) or "ERROR <code>".
 */
const UPGRADER = `const net = require('node:net'); const { createHash, randomBytes } = require('node:crypto');
const [host, port, size] = process.argv.slice(1); const data = randomBytes(Number(size));
const s = net.connect({ host, port: Number(port) }, () => s.write('GET /ws HTTP/1.1\\r\\nHost: ' + host + '\\r\\nConnection: Upgrade\\r\\nUpgrade: echo\\r\\n\\r\\n'));
let head = Buffer.alloc(0); let up = false; const got = createHash('sha256'); let bytes = 0;
s.on('data', (d) => {
  if (!up) {
    head = Buffer.concat([head, d]); const i = head.indexOf('\\r\\n\\r\\n'); if (i < 0) return;
    const status = head.subarray(0, i).toString().split('\\r\\n')[0];
    if (!/^HTTP\\/1\\.1 101 /.test(status)) { console.log('STATUS ' + status); process.exit(1); }
    up = true; d = head.subarray(i + 4); s.end(data);
  }
  got.update(d); bytes += d.length;
});
s.on('end', () => { console.log('SENT ' + createHash('sha256').update(data).digest('hex') + ' GOT ' + got.digest('hex') + ' ' + bytes); process.exit(0); });
s.on('error', (e) => { console.log('ERROR ' + e.code); process.exit(1); });`;
/**
 * An HTTP/2 app without TLS (h2c, prior knowledge): answers `h2 <path> <body
 * bytes>`; `/sha` answers the request body's `<SHA-256> <bytes>`.
 */
const H2_APP = `const http2 = require('node:http2'); const { createHash } = require('node:crypto');
const srv = http2.createServer({}, (req, res) => {
  const h = createHash('sha256'); let n = 0; req.on('data', (d) => { n += d.length; if (req.url === '/sha') h.update(d); });
  req.on('end', () => res.end(req.url === '/sha' ? h.digest('hex') + ' ' + n + '\\n' : 'h2 ' + req.url + ' ' + n + '\\n')); });
srv.listen({ host: '0.0.0.0', port: Number(process.argv[1]) }, () => console.log('LISTENING'));`;
/**
 * CONNECTs through the forward proxy at host:port to TARGET, then sends SIZE
 * random bytes and reads the echo, closing once all of it is back (tinyproxy
 * closes both ways at a client's half-close, dropping what the server has
 * not answered yet); prints "SENT <sha> GOT <sha> <bytes>", "STATUS <line>"
 * (refused) or "ERROR <code>".
 */
const CONNECTER = `const net = require('node:net'); const { createHash, randomBytes } = require('node:crypto');
const [host, port, target, size] = process.argv.slice(1); const data = randomBytes(Number(size));
const s = net.connect({ host, port: Number(port) }, () => s.write('CONNECT ' + target + ' HTTP/1.1\\r\\nHost: ' + target + '\\r\\n\\r\\n'));
let head = Buffer.alloc(0); let open = false; const got = createHash('sha256'); let bytes = 0;
s.on('data', (d) => {
  if (!open) {
    head = Buffer.concat([head, d]); const i = head.indexOf('\\r\\n\\r\\n'); if (i < 0) return;
    const status = head.subarray(0, i).toString().split('\\r\\n')[0];
    if (!/^HTTP\\/1\\.[01] 200 /.test(status)) { console.log('STATUS ' + status); process.exit(1); }
    open = true; d = head.subarray(i + 4); s.write(data);
  }
  got.update(d); bytes += d.length;
  if (bytes >= data.length) s.end();
});
s.on('end', () => { console.log('SENT ' + createHash('sha256').update(data).digest('hex') + ' GOT ' + got.digest('hex') + ' ' + bytes); process.exit(0); });
s.on('error', (e) => { console.log('ERROR ' + e.code); process.exit(1); });`;
/**
 * Sends SIZE bytes (a fixed pattern with a plaintext marker), half-closes,
 * reads the echo; prints "SENT <sha> GOT <sha> <bytes>" or "ERROR <code>".
 * With a 4th argument "hold", sends half, prints HALF once it is echoed, and
 * waits for a line on stdin before sending the rest.
 */
const SENDER = `const net = require('node:net'); const { createHash } = require('node:crypto');
const [host, port, size, hold] = process.argv.slice(1); const n = Number(size);
const data = Buffer.alloc(n); const marker = Buffer.from('MESHPIPE-PLAINTEXT-MARKER ');
for (let i = 0; i < n; i++) data[i] = marker[i % marker.length];
const got = createHash('sha256'); let bytes = 0; let half = false;
const s = net.connect({ host, port: Number(port) }, () => {
  if (hold !== 'hold') { s.end(data); return; }
  s.write(data.subarray(0, n / 2));
  process.stdin.once('data', () => s.end(data.subarray(n / 2)));
});
s.on('data', (d) => { got.update(d); bytes += d.length; if (hold === 'hold' && !half && bytes >= n / 2) { half = true; console.log('HALF'); } });
s.on('end', () => { console.log('SENT ' + createHash('sha256').update(data).digest('hex') + ' GOT ' + got.digest('hex') + ' ' + bytes); process.exit(0); });
s.on('error', (e) => { console.log('ERROR ' + e.code); process.exit(1); });`;

function handshakeErrors(snap: EngineSnapshot, direction: string, reason: string): number {
  return snap.mesh.handshakeErrors.filter((e) => e.direction === direction && e.reason === reason).reduce((n, e) => n + e.count, 0);
}
function tunnelErrors(snap: EngineSnapshot, reason: string): number {
  return snap.mesh.tunnelErrors.find((e) => e.reason === reason)?.count ?? 0;
}
function authz(snap: EngineSnapshot, allow: boolean, srvName: string): number {
  return snap.mesh.authz.filter((a) => a.allow === allow && a.srvName === srvName).reduce((n, a) => n + a.count, 0);
}

describe('mutual TLS between two sidecars', { concurrency: false }, () => {
  let pair: PodPair;
  let dir: string;
  let ip: string;
  /** Server pod addresses: .3 serves an expired certificate, .4 is listed under the wrong identity. */
  let expiredIp: string;
  let wrongIp: string;
  let clientSidecar: Sidecar;
  let serverSidecar: Sidecar;

  const cli = async (args: string[]): Promise<string> => {
    const r = await run(process.execPath, [CLI, ...args]);
    assert.equal(r.code, 0, `meshpipe ${args.join(' ')}: ${r.stderr}`);
    return r.stdout + r.stderr;
  };
  const issue = (name: string, out: string, ttl = '24h', ca = 'ca') =>
    cli(['identity', 'issue', '--name', name, '--ttl', ttl, '--ca-dir', join(dir, ca), '--out', join(dir, out), '--force']);
  /** Files the sidecar (uid 2102) reads. */
  const handOver = (sub: string) => {
    chownSync(join(dir, sub), SIDECAR_UID, SIDECAR_UID);
    for (const f of readdirSync(join(dir, sub))) chownSync(join(dir, sub, f), SIDECAR_UID, SIDECAR_UID);
  };
  const send = async (pod: Pod, host: string, port: number, size: number): Promise<string> => {
    const r = await pod.exec(process.execPath, ['-e', SENDER, host, String(port), String(size)], { ...APP, timeoutMs: 60_000 });
    return r.stdout.trim();
  };
  /** openssl s_client as a raw peer of the server's tunnel; stdin is sent after the handshake. */
  const sClient = (args: string[], input: Buffer | string = '') =>
    pair.client.exec('bash', ['-c', `printf '%s' "$1" | base64 -d | openssl s_client -connect ${ip}:4143 -servername ${SERVER_ID} -tls1_3 ${args.join(' ')}`,
      '--', Buffer.from(input).toString('base64')], { ...RAW, timeoutMs: 20_000 });
  const header = (port: number) => Buffer.concat([PREFACE, Buffer.from([0, 0, 0, 3, 0x08, port & 0x7f | 0x80, port >> 7])]);
  const me = (sub: string) => `-cert ${join(dir, sub, "tls.crt")} -cert_chain ${join(dir, sub, "tls.crt")} -key ${join(dir, sub, "tls.key")}`;

  before(async () => {
    if (!(await netnsSupport()).ok) return;
    dir = mkdtempSync(join(tmpdir(), 'meshpipe-mesh-'));
    chmodSync(dir, 0o755);
    await cli(['identity', 'init', '--out', join(dir, 'ca')]);
    await cli(['identity', 'init', '--out', join(dir, 'other-ca')]);
    // Short-lived certificates first: they have expired by the time they are used.
    await issue(CLIENT_ID, 'expired-client', '1s');
    await issue(SERVER_ID, 'expired-server', '1s');
    await issue(CLIENT_ID, 'client');
    await issue(SERVER_ID, 'server');
    await issue(CLIENT_ID, 'impostor', '24h', 'other-ca');
    for (const sub of ['client', 'server', 'expired-client', 'expired-server', 'impostor']) handOver(sub);

    pair = await createPodPair();
    const { client, server } = pair;
    ip = server.addr4!;
    const base = ip.slice(0, ip.lastIndexOf('.'));
    expiredIp = `${base}.3`;
    wrongIp = `${base}.4`;
    for (const extra of [expiredIp, wrongIp]) {
      const r = await server.exec('ip', ['addr', 'add', `${extra}/24`, 'dev', 'eth0']);
      assert.equal(r.code, 0, r.stderr);
    }
    for (const [pod, args] of [[client, []], [server, ['--skip-inbound-ports', '14143']]] as const) {
      const r = await pod.exec(process.execPath, ['--input-type=module', '-e', RUN_INIT, '--', '--no-ipv6', ...args]);
      assert.equal(r.code, 0, r.stderr);
    }
    writeFileSync(join(dir, 'server.yaml'), `apiVersion: v1
kind: Pod
metadata: { name: server, namespace: e2e, labels: { app: server } }
spec:
  serviceAccountName: server
  containers: [{ name: app, ports: [{ containerPort: 8080 }, { containerPort: 8081 }, { containerPort: 8082 }, { containerPort: 8083 }, { containerPort: 8084 }, { containerPort: 8085 }, { containerPort: 7070 }, { containerPort: 7071 }] }]
status: { podIP: ${ip} }
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: echo, namespace: e2e, creationTimestamp: "2024-01-01T00:00:00Z" }
spec: { podSelector: { matchLabels: { app: server } }, port: 7070, proxyProtocol: opaque }
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: sink, namespace: e2e, creationTimestamp: "2024-01-01T00:00:00Z" }
spec: { podSelector: { matchLabels: { app: server } }, port: 7071, proxyProtocol: opaque }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: { name: clients, namespace: e2e }
spec: { identities: ["${CLIENT_ID}"] }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: echo-clients, namespace: e2e }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: echo }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: clients }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: { name: admins, namespace: e2e }
spec: { identities: ["${ID('admin')}"] }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: sink-admins, namespace: e2e }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: sink }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: admins }]
`);
    writeFileSync(join(dir, 'destinations'), `${ip} ${SERVER_ID}\n${expiredIp} ${SERVER_ID} 14143\n${wrongIp} ${ID('someone-else')}\n`);
    chmodSync(join(dir, 'server.yaml'), 0o644);
    chmodSync(join(dir, 'destinations'), 0o644);
    serverSidecar = await startSidecar(server, ['--identity-dir', join(dir, 'server'), '--manifests', join(dir, 'server.yaml'), '--namespace', 'e2e', '--pod', 'server']);
    clientSidecar = await startSidecar(client, ['--identity-dir', join(dir, 'client'), '--destinations', join(dir, 'destinations')]);
    await server.spawn(process.execPath, ['-e', ECHO, '8080', '7070', '7071'], APP).waitFor(/LISTENING/);
    await startResponder(server, '0.0.0.0', 8081, 'responder', APP);
    await server.spawn(process.execPath, ['-e', HTTP_APP, '8082'], APP).waitFor(/LISTENING/);
    await server.spawn(process.execPath, ['-e', H2_APP, '8084'], APP).waitFor(/LISTENING/);
    // A forward proxy for CONNECT (no Allow lines: every client; no ConnectPort lines: every port).
    writeFileSync(join(dir, 'tinyproxy.conf'), ['Port 8085', 'Listen 0.0.0.0', 'Timeout 30', 'MaxClients 20', 'LogLevel Info', `LogFile "${join(dir, 'tinyproxy.log')}"`].join('\n'));
    chmodSync(join(dir, 'tinyproxy.conf'), 0o644);
    writeFileSync(join(dir, 'tinyproxy.log'), '', { mode: 0o666 });
    chownSync(join(dir, 'tinyproxy.log'), APP.uid, APP.uid);
    server.spawn('tinyproxy', ['-d', '-c', join(dir, 'tinyproxy.conf')], APP);
    await waitFor(async () => (await server.exec('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', 'http://127.0.0.1:8085/'])).stdout !== '000', 'tinyproxy listening', 10_000);
    // A "peer proxy" whose certificate has expired, on a port the server pod does not redirect.
    const expired = server.spawn('openssl', ['s_server', '-accept', `${expiredIp}:14143`, '-tls1_3', '-cert', join(dir, 'expired-server', 'tls.crt'),
      '-key', join(dir, 'expired-server', 'tls.key'), '-CAfile', join(dir, 'ca', 'ca.crt'), '-alpn', ALPN, '-naccept', '10']);
    await expired.waitFor(/ACCEPT/);
    // The short-lived certificates must have expired before they are used (1 s lifetime).
    for (const sub of ['expired-client', 'expired-server']) {
      const r = await run('openssl', ['x509', '-in', join(dir, sub, 'tls.crt'), '-noout', '-checkend', '0']);
      if (r.code === 0) {
        const end = await run('openssl', ['x509', '-in', join(dir, sub, 'tls.crt'), '-noout', '-enddate']);
        const left = Date.parse(end.stdout.replace('notAfter=', '').trim()) - Date.now();
        await new Promise((res) => setTimeout(res, Math.max(0, left) + 1100));
      }
    }
  });

  after(async () => {
    await pair?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('client → outbound → mTLS tunnel → inbound → app: SHA-256 equal both ways, no plaintext on the wire, tls="true" with both identities', async (t) => {
    if (!(await requireNetns(t))) return;
    const pcap = join(dir, 'veth.pcap');
    const capture = pair.client.spawn('tcpdump', ['-i', 'eth0', '-n', '-U', '-s', '0', '-w', pcap, 'tcp']);
    await capture.waitFor(/listening on eth0/);
    const size = 8 * 1024 * 1024;
    const out = await send(pair.client, ip, 8080, size);
    const m = /^SENT ([0-9a-f]{64}) GOT ([0-9a-f]{64}) (\d+)$/.exec(out);
    assert.ok(m, `transfer failed: ${out}\n${clientSidecar.process.output().slice(-3000)}`);
    assert.equal(m[2], m[1], 'the echo equals what was sent');
    assert.equal(Number(m[3]), size);
    await capture.stop();
    const wire = readFileSync(pcap);
    assert.ok(wire.length > size, `the capture holds the transfer (${wire.length} bytes)`);
    assert.equal(wire.indexOf('MESHPIPE-PLAINTEXT-MARKER'), -1, 'no plaintext payload between the pods');
    assert.equal(wire.indexOf(PREFACE), -1, 'the transport header travels inside TLS');
    assert.ok(wire.indexOf(Buffer.from([0x17, 0x03, 0x03])) >= 0, 'TLS application data records on the wire');

    const c = await clientSidecar.snapshot();
    const out8080 = c.tcp.filter((s) => s.direction === 'outbound' && s.targetPort === 8080);
    assert.deepEqual(out8080.map((s) => [s.tls, s.serverId]), [['true', SERVER_ID]], JSON.stringify(out8080));
    assert.ok(c.mesh.handshakeMs[1]!.count >= 1, 'an outbound handshake was timed');
    assert.equal(c.mesh.identity?.name, CLIENT_ID);
    const s = await serverSidecar.snapshot();
    const in8080 = s.tcp.filter((x) => x.direction === 'inbound' && x.targetPort === 8080);
    assert.deepEqual(in8080.map((x) => [x.tls, x.clientId, x.targetIp]), [['true', CLIENT_ID, ip]], JSON.stringify(in8080));
    assert.equal(in8080[0]!.bytesClientToServer, size);
    assert.ok(s.mesh.handshakeMs[0]!.count >= 1);
    const metrics = await pair.server.exec('curl', ['-sS', 'http://127.0.0.1:4191/metrics']);
    assert.match(metrics.stdout, new RegExp(`^tcp_open_total\\{[^}]*direction="inbound"[^}]*tls="true"[^}]*client_id="${CLIENT_ID.replaceAll('.', '\\.')}"`, 'm'));
    assert.match(metrics.stdout, /^inbound_tcp_authz_allow_total\{[^}]*srv_kind="default",srv_name="all-unauthenticated"[^}]*tls="true"/m);
    assert.match(metrics.stdout, /^meshpipe_tls_handshake_duration_ms_count\{direction="inbound"\} [1-9]/m);
    const cm = await pair.client.exec('curl', ['-sS', 'http://127.0.0.1:4191/metrics']);
    assert.match(cm.stdout, new RegExp(`^tcp_open_total\\{[^}]*direction="outbound"[^}]*tls="true"[^}]*server_id="${SERVER_ID.replaceAll('.', '\\.')}"`, 'm'));
    assert.match(cm.stdout, /^identity_cert_expiration_timestamp_seconds \d+/m);
    const ready = await pair.client.exec('curl', ['-sS', 'http://127.0.0.1:4191/ready']);
    assert.match(ready.stdout, new RegExp(`^ready\\nidentity: ${CLIENT_ID.replaceAll('.', '\\.')} serial [0-9a-f]+ expires `));
  });

  test('HTTP to a meshed destination is proxied per request and rides mTLS: requests and their pooled upstream connection say tls="true" with the server identity, no plaintext on the wire', async (t) => {
    if (!(await requireNetns(t))) return;
    const before = (await clientSidecar.snapshot()).mesh.handshakeMs[1]!.count;
    const pcap = join(dir, 'http.pcap');
    // --immediate-mode: a few small packets must reach the file before the capture is stopped.
    const capture = pair.client.spawn('tcpdump', ['-i', 'eth0', '-n', '-U', '--immediate-mode', '-s', '0', '-w', pcap, 'tcp']);
    await capture.waitFor(/listening on eth0/);
    // Two requests on one client connection (curl reuses it), one with a body.
    const r = await pair.client.exec('curl', ['-sS', '--http1.1', '-H', 'x-marker: MESHPIPE-PLAINTEXT-MARKER', `http://${ip}:8082/a`,
      '--next', '-sS', '--http1.1', '-H', 'x-marker: MESHPIPE-PLAINTEXT-MARKER', '--data-binary', 'MESHPIPE-PLAINTEXT-MARKER-BODY', `http://${ip}:8082/b`],
    { ...APP, timeoutMs: 20_000 });
    assert.equal(r.stdout, 'hello MESHPIPE-PLAINTEXT-MARKER 0\nhello MESHPIPE-PLAINTEXT-MARKER 30\n', `${r.stderr}\n${clientSidecar.process.output().slice(-3000)}`);
    await capture.stop();
    const wire = readFileSync(pcap);
    assert.equal(wire.indexOf('MESHPIPE-PLAINTEXT-MARKER'), -1, 'no plaintext header or body between the pods');
    assert.ok(wire.indexOf(Buffer.from([0x17, 0x03, 0x03])) >= 0, `TLS application data records on the wire (${wire.length} bytes captured)`);

    const c = await clientSidecar.snapshot();
    const requests = c.http.filter((h) => h.direction === 'outbound' && h.targetPort === 8082);
    assert.deepEqual(requests.map((h) => [h.tls, h.serverId, h.requests, h.responses.map((x) => [x.statusCode, x.count])]),
      [['true', SERVER_ID, 2, [[200, 2]]]], JSON.stringify(requests));
    // The client connection and the upstream connection share the series (the endpoint is the destination itself).
    const tcp = c.tcp.filter((s) => s.direction === 'outbound' && s.targetPort === 8082);
    assert.deepEqual(tcp.map((s) => [s.tls, s.serverId, s.srcOpenTotal, s.dstOpenTotal]), [['true', SERVER_ID, 1, 1]], JSON.stringify(tcp));
    assert.equal(c.mesh.handshakeMs[1]!.count - before, 1, 'one mesh handshake for both requests (a pooled connection)');
    // The server sidecar serves the HTTP inside the tunnel as HTTP (the header says HTTP/1): its requests carry
    // tls="true" and the client's identity; the one tunnel connection is the client side of the mesh series, and
    // the pooled plaintext connection to the app (shared by every client of the port) is the plaintext series'.
    const s = await waitFor(async () => {
      const snap = await serverSidecar.snapshot();
      return snap.http.some((h) => h.direction === 'inbound' && h.targetPort === 8082 && h.responses.some((x) => x.count === 2)) ? snap : null;
    }, 'the inbound sidecar counted both responses', 10_000);
    const inHttp = s.http.filter((h) => h.direction === 'inbound' && h.targetPort === 8082);
    assert.deepEqual(inHttp.map((h) => [h.tls, h.clientId, h.requests, h.responses.map((x) => [x.statusCode, x.count])]),
      [['true', CLIENT_ID, 2, [[200, 2]]]], JSON.stringify(inHttp));
    const in8082 = s.tcp.filter((x) => x.direction === 'inbound' && x.targetPort === 8082);
    assert.deepEqual(in8082.filter((x) => x.tls === 'true').map((x) => [x.clientId, x.srcOpenTotal]), [[CLIENT_ID, 1]], JSON.stringify(in8082));
    assert.deepEqual(in8082.filter((x) => x.tls !== 'true').map((x) => [x.tls, x.noTlsReason, x.dstOpenTotal]), [['no_identity', 'no_tls_from_remote', 1]], JSON.stringify(in8082));
    const cm = await pair.client.exec('curl', ['-sS', 'http://127.0.0.1:4191/metrics']);
    assert.match(cm.stdout, new RegExp(`^request_total\\{[^}]*direction="outbound"[^}]*target_port="8082"[^}]*tls="true"[^}]*server_id="${SERVER_ID.replaceAll('.', '\\.')}"[^}]*\\} 2$`, 'm'));
    const sm = await pair.server.exec('curl', ['-sS', 'http://127.0.0.1:4191/metrics']);
    const client = CLIENT_ID.replaceAll('.', '\\.');
    assert.match(sm.stdout, new RegExp(`^request_total\\{[^}]*direction="inbound"[^}]*target_port="8082"[^}]*tls="true"[^}]*client_id="${client}"[^}]*\\} 2$`, 'm'));
    assert.match(sm.stdout, new RegExp(`^response_total\\{[^}]*direction="inbound"[^}]*target_port="8082"[^}]*tls="true"[^}]*client_id="${client}"[^}]*status_code="200"[^}]*\\} 2$`, 'm'));
    assert.match(sm.stdout, new RegExp(`^response_latency_ms_count\\{[^}]*direction="inbound"[^}]*target_port="8082"[^}]*tls="true"[^}]*client_id="${client}"[^}]*\\} 2$`, 'm'));
  });

  test('HTTP inside the tunnel: a large streamed POST body arrives intact, a refused app port is a 502 made by the inbound sidecar (l5d-proxy-error) and counted there, an Upgrade still becomes a byte tunnel', async (t) => {
    if (!(await requireNetns(t))) return;
    const inbound = async (port: number) => (await serverSidecar.snapshot()).http.filter((h) => h.direction === 'inbound' && h.targetPort === port);
    const count = (series: EngineSnapshot['http'], status: number) =>
      series.reduce((n, h) => n + h.responses.filter((x) => x.statusCode === status).reduce((m, x) => m + x.count, 0), 0);
    // 24 MiB streamed from a file (curl -T sends it as it reads it); the app hashes what it received.
    const size = 24 * 1024 * 1024;
    const body = randomBytes(size);
    writeFileSync(join(dir, 'body.bin'), body, { mode: 0o644 });
    const ok200 = count(await inbound(8082), 200);
    const post = await pair.client.exec('curl', ['-sS', '--http1.1', '-X', 'POST', '-T', join(dir, 'body.bin'), `http://${ip}:8082/sha`], { ...APP, timeoutMs: 60_000 });
    assert.equal(post.stdout, `${createHash('sha256').update(body).digest('hex')} ${size}\n`, `${post.stderr}\n${serverSidecar.process.output().slice(-3000)}`);
    await waitFor(async () => count(await inbound(8082), 200) === ok200 + 1, 'the inbound sidecar counted the POST', 10_000);

    // Nothing listens on 8083 (a port the pod exposes): the inbound sidecar answers 502 and says why to the meshed
    // peer; the client sidecar passes the response on.
    const refused = await pair.client.exec('curl', ['-sS', '--http1.1', '-o', '/dev/null', '-D', '-', `http://${ip}:8083/refused`], { ...APP, timeoutMs: 20_000 });
    assert.match(refused.stdout, /^HTTP\/1\.1 502 /, refused.stdout + refused.stderr);
    assert.match(refused.stdout, new RegExp(`^l5d-proxy-error: connection to ${ip.replaceAll('.', '\\.')}:8083 failed`, 'mi'), refused.stdout);
    const s = await waitFor(async () => {
      const snap = await serverSidecar.snapshot();
      return count(snap.http.filter((h) => h.direction === 'inbound' && h.targetPort === 8083), 502) === 1 ? snap : null;
    }, 'the inbound sidecar counted the 502', 10_000);
    const in8083 = s.http.filter((h) => h.direction === 'inbound' && h.targetPort === 8083);
    assert.deepEqual(in8083.map((h) => [h.tls, h.clientId, h.requests, h.responses.map((x) => [x.statusCode, x.error])]),
      [['true', CLIENT_ID, 1, [[502, 'bad_gateway']]]], JSON.stringify(in8083));
    assert.equal(s.httpErrors.find((e) => e.direction === 'inbound' && e.error === 'bad_gateway')?.count, 1, JSON.stringify(s.httpErrors));

    // An HTTP/1.1 Upgrade through both sidecars: 101, then every byte echoed.
    const up = await pair.client.exec(process.execPath, ['-e', UPGRADER, ip, '8082', String(1024 * 1024)], { ...APP, timeoutMs: 30_000 });
    assert.match(up.stdout.trim(), /^SENT (\w+) GOT \1 1048576$/, up.stdout + up.stderr);
    assert.equal(count(await inbound(8082), 101), 1, JSON.stringify(await inbound(8082)));
  });

  test('HTTP/2 and CONNECT through the tunnel: h2load streams multiplexed over one mTLS connection per client connection, a streamed h2 upload intact, CONNECT to a forward proxy in the server pod carries every byte', async (t) => {
    if (!(await requireNetns(t))) return;
    const handshakes = async (sc: Sidecar) => (await sc.snapshot()).mesh.handshakeMs.reduce((n, h) => n + h.count, 0);
    const [clientBefore, serverBefore] = [await handshakes(clientSidecar), await handshakes(serverSidecar)];
    // 400 requests on 2 client connections, 50 concurrent streams each (prior knowledge: HTTP/2 without TLS from the app).
    const load = await pair.client.exec('h2load', ['-n', '400', '-c', '2', '-m', '50', `http://${ip}:8084/load`], { ...APP, timeoutMs: 60_000 });
    assert.match(load.stdout, /requests: 400 total, 400 started, 400 done, 400 succeeded, 0 failed, 0 errored/, load.stdout + load.stderr);
    assert.match(load.stdout, /status codes: 400 2xx/, load.stdout);
    // A 6 MiB upload streamed over HTTP/2; the app hashes what it received.
    const size = 6 * 1024 * 1024;
    const body = randomBytes(size);
    writeFileSync(join(dir, 'h2body.bin'), body, { mode: 0o644 });
    const post = await pair.client.exec('curl', ['-sS', '--http2-prior-knowledge', '-T', join(dir, 'h2body.bin'), `http://${ip}:8084/sha`], { ...APP, timeoutMs: 60_000 });
    assert.equal(post.stdout, `${createHash('sha256').update(body).digest('hex')} ${size}\n`, post.stderr);
    const out = (await clientSidecar.snapshot()).http.filter((h) => h.direction === 'outbound' && h.targetPort === 8084);
    assert.deepEqual(out.map((h) => [h.tls, h.serverId, h.requests, h.responses.map((x) => [x.statusCode, x.count])]),
      [['true', SERVER_ID, 401, [[200, 401]]]], JSON.stringify(out));
    const s = await waitFor(async () => {
      const snap = await serverSidecar.snapshot();
      return snap.http.some((h) => h.direction === 'inbound' && h.targetPort === 8084 && h.responses.some((x) => x.count === 401)) ? snap : null;
    }, 'the inbound sidecar counted every HTTP/2 response', 10_000);
    const inbound = s.http.filter((h) => h.direction === 'inbound' && h.targetPort === 8084);
    assert.deepEqual(inbound.map((h) => [h.tls, h.clientId, h.requests]), [['true', CLIENT_ID, 401]], JSON.stringify(inbound));
    // 3 client connections and 401 requests: one mesh connection per client connection (an HTTP/2 upstream
    // connection serves one client connection, whose streams it multiplexes), not one per request.
    assert.equal((await handshakes(clientSidecar)) - clientBefore, 3, 'mesh handshakes for the HTTP/2 traffic');
    assert.equal((await handshakes(serverSidecar)) - serverBefore, 3);

    // CONNECT from the client pod to tinyproxy in the server pod, and from there to the echo server on its
    // loopback: the client sidecar answers nothing itself, the 200 comes from tinyproxy through both sidecars.
    const tunnel = await pair.client.exec(process.execPath, ['-e', CONNECTER, ip, '8085', '127.0.0.1:8080', String(2 * 1024 * 1024)], { ...APP, timeoutMs: 30_000 });
    assert.match(tunnel.stdout.trim(), /^SENT (\w+) GOT \1 2097152$/, tunnel.stdout + tunnel.stderr);
    const connects = (await clientSidecar.snapshot()).http.filter((h) => h.direction === 'outbound' && h.targetPort === 8085);
    assert.deepEqual(connects.map((h) => [h.tls, h.serverId, h.requests, h.responses.map((x) => [x.statusCode, x.count])]),
      [['true', SERVER_ID, 1, [[200, 1]]]], JSON.stringify(connects));
    const sc = await waitFor(async () => {
      const snap = await serverSidecar.snapshot();
      return snap.http.some((h) => h.direction === 'inbound' && h.targetPort === 8085 && h.responses.some((x) => x.statusCode === 200)) ? snap : null;
    }, 'the inbound sidecar counted the CONNECT', 10_000);
    const inConnect = sc.http.filter((h) => h.direction === 'inbound' && h.targetPort === 8085);
    assert.deepEqual(inConnect.map((h) => [h.tls, h.clientId, h.requests]), [['true', CLIENT_ID, 1]], JSON.stringify(inConnect));
  });

  test('authorization: a Server admits only what its AuthorizationPolicy allows, counted with Linkerd labels', async (t) => {
    if (!(await requireNetns(t))) return;
    const allowed = await send(pair.client, ip, 7070, 1000);
    assert.match(allowed, /^SENT (\w+) GOT \1 1000$/, allowed);
    const denied = await send(pair.client, ip, 7071, 1000);
    assert.doesNotMatch(denied, /GOT \w+ 1000/, `the sink must refuse ${CLIENT_ID}: ${denied}`);
    const s = await serverSidecar.snapshot();
    assert.equal(authz(s, true, 'echo'), 1, JSON.stringify(s.mesh.authz));
    assert.equal(authz(s, false, 'sink'), 1, JSON.stringify(s.mesh.authz));
    const m = await pair.server.exec('curl', ['-sS', 'http://127.0.0.1:4191/metrics']);
    assert.match(m.stdout, new RegExp(`^inbound_tcp_authz_allow_total\\{target_port="7070",srv_group="policy.linkerd.io",srv_kind="server",srv_name="echo",tls="true",client_id="${CLIENT_ID.replaceAll('.', '\\.')}",authz_kind="authorizationpolicy",authz_name="echo-clients"\\} 1$`, 'm'));
    assert.match(m.stdout, /^inbound_tcp_authz_deny_total\{target_port="7071",[^}]*srv_name="sink",tls="true",client_id="[^"]+"\} 1$/m);
  });

  test('an opaque port of a meshed destination is reached through the tunnel (detection skipped on both ends), never SNI to the port', async (t) => {
    if (!(await requireNetns(t))) return;
    // 7070 is opaque (its Server's proxyProtocol): the client's bytes are not read before the tunnel opens.
    const held = pair.client.spawn(process.execPath, ['-e', SENDER, ip, '7070', '2048', 'hold'], APP);
    await held.waitFor(/HALF/, 20_000);
    const out = (await connections(pair.client)).filter((c) => c.direction === 'outbound' && c.target?.endsWith(':7070'));
    assert.deepEqual(out.map((c) => [c.tls, c.tunnel, c.peerId, c.protocol]), [['true', true, SERVER_ID, 'opaque']], JSON.stringify(out));
    const inb = (await connections(pair.server)).filter((c) => c.direction === 'inbound' && c.target?.endsWith(':7070'));
    assert.deepEqual(inb.map((c) => [c.tls, c.tunnel, c.peerId]), [['true', true, CLIENT_ID]], JSON.stringify(inb));
    held.child.stdin?.end('go\n');
    await held.waitFor(/SENT (\w+) GOT \1 2048/);
  });

  test('server speaks first through the mesh: a greeting through the tunnel is answered within the grace period and learned; a slow HTTP client teaches nothing', async (t) => {
    if (!(await requireNetns(t))) return;
    // 8081's app writes a line to every connection and closes: the client
    // says nothing, so after the grace period its connection goes through the
    // tunnel as bytes, and the greeting that comes back first is the evidence.
    for (let i = 0; i < 2; i++) {
      const line = await tcpRequest(pair.client, ip, 8081, APP);
      assert.match(line, new RegExp(`^responder local=${ip.replaceAll('.', '\\.')}:8081 `), line);
    }
    const c = await clientSidecar.snapshot();
    assert.equal(detectResults(c, 'outbound', 8081)['server_first'], 2, JSON.stringify(c.detect));
    const learned = c.serverFirst.targets.find((x) => x.addr === `${ip}:8081`);
    assert.ok(learned, `learned from the greeting through the tunnel: ${JSON.stringify(c.serverFirst)}`);
    assert.equal(learned.hits, 1, 'the second connection was a cache hit: no wait');
    const tunnelled = c.tcp.filter((s) => s.direction === 'outbound' && s.targetPort === 8081);
    assert.deepEqual(tunnelled.map((s) => [s.tls, s.serverId]), [['true', SERVER_ID]], JSON.stringify(tunnelled));

    // A keep-alive client that connects ahead of its request (a pool) and
    // speaks only after the grace period: its request still works (as bytes
    // through the tunnel), and the HTTP app is not learned as server-first,
    // so the next client is detected as HTTP again.
    const r = await pair.client.exec(process.execPath, ['-e', SLOW_HTTP, ip, '8082', '400'], { ...APP, timeoutMs: 20_000 });
    assert.match(r.stdout, /^HTTP\/1\.1 200 [\s\S]*hello slow 0\n$/, r.stdout + r.stderr);
    const http1Before = detectResults(await clientSidecar.snapshot(), 'outbound', 8082)['http/1'] ?? 0;
    const curl = await pair.client.exec('curl', ['-sS', '--http1.1', '-H', 'x-marker: fast', `http://${ip}:8082/`], { ...APP, timeoutMs: 20_000 });
    assert.equal(curl.stdout, 'hello fast 0\n', curl.stderr);
    const after = await clientSidecar.snapshot();
    assert.equal(after.serverFirst.targets.find((x) => x.addr === `${ip}:8082`), undefined, JSON.stringify(after.serverFirst));
    assert.equal(detectResults(after, 'outbound', 8082)['http/1'], http1Before + 1, JSON.stringify(after.detect));
  });

  test('the tunnel refuses, by reason: plaintext, no client certificate, an untrusted CA, an expired client certificate, a wrong ALPN', async (t) => {
    if (!(await requireNetns(t))) return;
    const plain = await pair.client.exec('bash', ['-c', `exec 3<>/dev/tcp/${ip}/4143; printf 'GET / HTTP/1.1\\r\\n\\r\\n' >&3; cat <&3`], RAW);
    assert.equal(plain.stdout, '', 'nothing comes back to plaintext');
    await sClient(['-alpn', ALPN]);
    await sClient(['-alpn', ALPN, me('impostor')]);
    await sClient(['-alpn', ALPN, me('expired-client')]);
    await sClient(['-alpn', 'h2', me('client')]);
    const s = await serverSidecar.snapshot();
    const count = (r: string) => handshakeErrors(s, 'inbound', r);
    assert.deepEqual(
      { not_tls: count('not_tls'), no_client_cert: count('no_client_cert'), untrusted: count('untrusted'), expired: count('expired'), alpn: count('alpn') },
      { not_tls: 1, no_client_cert: 1, untrusted: 1, expired: 1, alpn: 1 },
      JSON.stringify(s.mesh.handshakeErrors),
    );
  });

  test('the tunnel refuses bad headers and ports: truncated, oversized, a port the workload does not expose, a port policy denies', async (t) => {
    if (!(await requireNetns(t))) return;
    // -quiet also waits for the server to close after stdin ends (-ign_eof).
    const valid = ['-quiet', '-alpn', ALPN, me('client')];
    // Interop fixture: port 8080 opaque is the preface then 00 00 00 03 08 90 3F.
    assert.deepEqual(header(8080).subarray(PREFACE.length), Buffer.from([0, 0, 0, 3, 0x08, 0x90, 0x3f]));
    const ok = await sClient(valid, header(8081));
    assert.match(ok.stdout, new RegExp(`responder local=${ip.replaceAll('.', '\\.')}:8081 remote=`), `a well-formed header reaches the app on the pod IP: ${ok.stdout.slice(-500)} ${ok.stderr.slice(-1500)} ${JSON.stringify((await serverSidecar.snapshot()).mesh)}`);
    await sClient(['-quiet', '-no_ign_eof', '-alpn', ALPN, me('client')], Buffer.concat([PREFACE, Buffer.from([0, 0, 0, 9, 0x08])]));
    await sClient(valid, Buffer.concat([PREFACE, Buffer.from([0, 0x10, 0, 0])]));
    await sClient(valid, header(9999));
    await sClient(valid, header(7071));
    const s = await serverSidecar.snapshot();
    assert.deepEqual(
      { truncated: tunnelErrors(s, 'truncated'), oversized: tunnelErrors(s, 'oversized'), not_exposed: tunnelErrors(s, 'not_exposed') },
      { truncated: 1, oversized: 1, not_exposed: 1 },
      JSON.stringify(s.mesh.tunnelErrors),
    );
    assert.equal(authz(s, false, 'sink'), 2, 'the header naming the denied port is refused by policy');
  });

  test('origination refuses the wrong server identity and an expired server certificate, and resets the client', async (t) => {
    if (!(await requireNetns(t))) return;
    assert.match(await send(pair.client, wrongIp, 8080, 100), /^ERROR ECONNRESET$/);
    assert.match(await send(pair.client, expiredIp, 8080, 100), /^ERROR ECONNRESET$/);
    const c = await clientSidecar.snapshot();
    assert.equal(handshakeErrors(c, 'outbound', 'identity_mismatch'), 1, JSON.stringify(c.mesh.handshakeErrors));
    assert.equal(handshakeErrors(c, 'outbound', 'expired'), 1, JSON.stringify(c.mesh.handshakeErrors));
  });

  test('rotation: new certificates under a running pair; new connections show the new serials, a transfer in flight finishes', async (t) => {
    if (!(await requireNetns(t))) return;
    const size = 4 * 1024 * 1024;
    const inflight: PodProcess = pair.client.spawn(process.execPath, ['-e', SENDER, ip, '8080', String(size), 'hold'], APP);
    await inflight.waitFor(/HALF/, 20_000);
    const serialOf = (snap: EngineSnapshot) => snap.mesh.identity!.serial;
    const [oldClient, oldServer] = [serialOf(await clientSidecar.snapshot()), serialOf(await serverSidecar.snapshot())];
    const before = (await connections(pair.client)).find((c) => c.direction === 'outbound' && c.target?.endsWith(':8080'));
    assert.deepEqual([before?.localSerial, before?.peerSerial], [oldClient, oldServer], JSON.stringify(before));

    // As a CSI driver does: written aside, then renamed into place.
    for (const [name, sub] of [[CLIENT_ID, 'client'], [SERVER_ID, 'server']] as const) {
      await issue(name, `${sub}-next`);
      handOver(`${sub}-next`);
      for (const f of ['tls.key', 'tls.crt']) renameSync(join(dir, `${sub}-next`, f), join(dir, sub, f));
    }
    const newClient = (await run('openssl', ['x509', '-in', join(dir, 'client', 'tls.crt'), '-noout', '-serial'])).stdout.trim().replace('serial=', '').toLowerCase();
    const newServer = (await run('openssl', ['x509', '-in', join(dir, 'server', 'tls.crt'), '-noout', '-serial'])).stdout.trim().replace('serial=', '').toLowerCase();
    await clientSidecar.process.waitFor(new RegExp(`"serial":"0*${newClient.replace(/^0+/, '')}"[^\\n]*"msg":"mesh identity installed"`), 15_000);
    await serverSidecar.process.waitFor(new RegExp(`"serial":"0*${newServer.replace(/^0+/, '')}"[^\\n]*"msg":"mesh identity installed"`), 15_000);

    // A new connection uses the new certificates on both ends.
    const holder = pair.client.spawn(process.execPath, ['-e', SENDER, ip, '8080', '2048', 'hold'], APP);
    await holder.waitFor(/HALF/);
    const now = (await connections(pair.client)).filter((c) => c.direction === 'outbound' && c.target?.endsWith(':8080'));
    assert.equal(now.length, 2, JSON.stringify(now));
    const fresh = now.find((c) => c.localSerial !== oldClient)!;
    assert.deepEqual([fresh.localSerial, fresh.peerSerial], [serialOf(await clientSidecar.snapshot()), serialOf(await serverSidecar.snapshot())]);
    assert.notEqual(fresh.peerSerial, oldServer);
    holder.child.stdin?.end('go\n');
    // The transfer that began before the rotation finishes intact.
    inflight.child.stdin?.end('go\n');
    const done = await inflight.waitFor(/SENT (\w+) GOT (\w+) (\d+)/, 30_000);
    assert.equal(done[2], done[1]);
    assert.equal(Number(done[3]), size);
    await holder.waitFor(/SENT (\w+) GOT \1 2048/);
  });
});

async function connections(pod: Pod): Promise<ConnectionInfo[]> {
  const r = await pod.exec('curl', ['-sS', '--max-time', '5', 'http://127.0.0.1:4191/connections']);
  assert.equal(r.code, 0, r.stderr);
  const parsed = JSON.parse(r.stdout) as ConnectionInfo[] | { connections: ConnectionInfo[] };
  return Array.isArray(parsed) ? parsed : parsed.connections;
}
