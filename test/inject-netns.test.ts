/**
 * The round trip of injection: a Deployment goes through `meshpipe inject`,
 * and the injected pod's containers are run exactly as the manifest says
 * (command, args, env; the image's `meshpipe` replaced by this build's CLI,
 * each volume mount by a directory with the files the kubelet would put
 * there, each container as its securityContext's uid) in a network
 * namespace standing in for the pod: first meshpipe-init, then the
 * meshpipe-proxy sidecar, then the app. The identity volume is what
 * cert-manager's CSI driver would mount: a certificate from `meshpipe
 * identity issue` for the name in the volume's attributes (the driver's
 * variables expanded for the pod's service account and namespace), the
 * files 0440 root:`fs-group` as the driver writes them. The API the proxy's
 * `--kube` watches is test/fake-kube-api.ts, bridged into the pod's network
 * namespace by socat on 127.0.0.1 (the kubelet's KUBERNETES_SERVICE_HOST and
 * service account mount are stood in by KUBECONFIG): it lists a meshed peer
 * pod, which the proxy must know as a mesh destination. A peer pod then
 * talks to the app through the proxy, and the app to the peer, 4 MiB each
 * way with SHA-256 equal; a mesh peer reaches the app through the proxy's
 * mutual-TLS tunnel, verifying that the proxy proves the injected identity;
 * the probes the manifest declares answer from the peer's side (as the
 * kubelet's would, from outside the pod); the skip port from the pod's
 * annotation bypasses the proxy. The proxy's own counters prove which path
 * each connection took. Root only; CI runs it.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { CLI, waitFor } from './helpers.js';
import { createPodPair, requireNetns, run, startResponder, tcpRequest } from './netns.js';
import { connectionsTo } from './netns-sidecar.js';
import { FakeKubeApi } from './fake-kube-api.js';
import type { EngineSnapshot } from '../ts/engine/native.js';
import { BINARY, IDENTITY_DIR, PODINFO_DIR, type JsonObject } from '../ts/inject/index.js';

const DEPLOYMENT = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
      annotations:
        config.linkerd.io/skip-inbound-ports: "9091"
    spec:
      containers:
      - name: app
        image: registry.example/web:1
        ports: [{containerPort: 8080}, {containerPort: 9091}]
`;

const ECHO_SERVER = `
const net = require('node:net');
net.createServer((s) => { s.pipe(s); s.on('error', () => {}); }).listen({ host: '0.0.0.0', port: Number(process.argv[1]) }, () => console.log('LISTENING'));`;
/** Sends FILE, half-closes, prints the SHA-256 and size of what comes back. */
const ECHO_CLIENT = `
const net = require('node:net'); const fs = require('node:fs'); const { createHash } = require('node:crypto');
const [host, port, file] = process.argv.slice(1); const h = createHash('sha256'); let n = 0;
const s = net.connect({ host, port: Number(port) }, () => fs.createReadStream(file).pipe(s));
s.on('data', (d) => { h.update(d); n += d.length; }); s.on('end', () => console.log(h.digest('hex') + ' ' + n)); s.on('error', (e) => console.log('ERROR ' + e.code));`;
/** Reads to EOF, answers the SHA-256 of what it read. */
const SINK = `
const net = require('node:net'); const { createHash } = require('node:crypto');
net.createServer((s) => { const h = createHash('sha256'); s.on('data', (d) => h.update(d)); s.on('end', () => s.end(h.digest('hex'))); s.on('error', () => {}); })
  .listen({ host: '0.0.0.0', port: Number(process.argv[1]) }, () => console.log('LISTENING'));`;
const SEND = `
const net = require('node:net'); const fs = require('node:fs'); const [host, port, file] = process.argv.slice(1); let reply = '';
const s = net.connect({ host, port: Number(port) }, () => fs.createReadStream(file).pipe(s));
s.setEncoding('utf8'); s.on('data', (d) => (reply += d)); s.on('end', () => console.log(reply)); s.on('error', (e) => console.log('ERROR ' + e.code));`;

/** The downward-API annotations file the kubelet would write (sorted `key="value"` lines, Go-quoted). */
function downwardApiFile(annotations: Record<string, string>): string {
  return Object.keys(annotations).sort().map((k) => `${k}=${JSON.stringify(annotations[k])}`).join('\n');
}

interface Container {
  name: string;
  command: string[];
  volumeMounts?: { name: string; mountPath: string }[];
  env?: { name: string; valueFrom?: { fieldRef: { fieldPath: string } }; value?: string }[];
  securityContext: { runAsUser: number; runAsGroup?: number };
  startupProbe?: { httpGet: { path: string; port: number } };
  readinessProbe?: { httpGet: { path: string; port: number } };
  livenessProbe?: { httpGet: { path: string; port: number } };
}

describe('an injected pod, run as its manifest says', () => {
  test('init + proxy + app from the injected YAML: traffic both ways through the proxy, SHA-256 equal; probes answer; skip port bypasses', async (t) => {
    if (!(await requireNetns(t))) return;
    const injected = await run(process.execPath, [CLI, 'inject', '-'], { input: DEPLOYMENT });
    assert.equal(injected.code, 0, injected.stderr);
    const deployment = parseAllDocuments(injected.stdout)[0]?.toJS() as JsonObject;
    const tmpl = (deployment['spec'] as unknown as {
      template: {
        metadata: { annotations: Record<string, string> };
        spec: { serviceAccountName?: string; initContainers: Container[]; containers: Container[]; volumes: { name: string; csi?: { driver: string; volumeAttributes: Record<string, string> } }[] };
      };
    }).template;
    const [init, proxy, ...rest] = tmpl.spec.initContainers;
    assert.ok(init && proxy, 'meshpipe-init and meshpipe-proxy are in initContainers');
    assert.deepEqual([init.name, proxy.name, rest.length], ['meshpipe-init', 'meshpipe-proxy', 0]);

    const dir = mkdtempSync(join(tmpdir(), 'meshpipe-inject-rt-'));
    chmodSync(dir, 0o755);
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const pair = await createPodPair();
    t.after(() => pair.cleanup());
    const { client: peer, server: pod } = pair;

    // What the kubelet provides: the downward-API file and the fieldRef env values.
    const mounts: Record<string, string> = { [PODINFO_DIR]: join(dir, 'podinfo'), [IDENTITY_DIR]: join(dir, 'identity') };
    mkdirSync(join(dir, 'podinfo'));
    writeFileSync(join(dir, 'podinfo', 'annotations'), downwardApiFile(tmpl.metadata.annotations));

    // What cert-manager's CSI driver provides: a certificate for the name it expands from the volume's attributes.
    const csi = tmpl.spec.volumes.find((v) => v.name === 'meshpipe-identity')?.csi;
    assert.equal(csi?.driver, 'csi.cert-manager.io', 'the identity comes from cert-manager\'s CSI driver by default');
    const attrs = csi.volumeAttributes;
    const podIdentity = (attrs['csi.cert-manager.io/dns-names'] ?? '')
      .replaceAll('${SERVICE_ACCOUNT_NAME}', tmpl.spec.serviceAccountName ?? 'default').replaceAll('${POD_NAMESPACE}', 'shop');
    assert.equal(podIdentity, 'default.shop.serviceaccount.identity.linkerd.cluster.local');
    const cli = async (args: string[]): Promise<void> => {
      const r = await run(process.execPath, [CLI, ...args]);
      assert.equal(r.code, 0, `meshpipe ${args.join(' ')}: ${r.stderr}`);
    };
    await cli(['identity', 'init', '--out', join(dir, 'ca')]);
    await cli(['identity', 'issue', '--name', podIdentity, '--ca-dir', join(dir, 'ca'), '--out', join(dir, 'identity')]);
    await cli(['identity', 'issue', '--name', 'peer.shop.serviceaccount.identity.linkerd.cluster.local', '--ca-dir', join(dir, 'ca'), '--out', join(dir, 'peer')]);
    // As the driver leaves them: root-owned, group fs-group, 0440 (0550 for the folder); without the group the proxy could not read them.
    const fsGroup = Number(attrs['csi.cert-manager.io/fs-group']);
    chownSync(join(dir, 'identity'), 0, fsGroup);
    chmodSync(join(dir, 'identity'), 0o550);
    for (const f of readdirSync(join(dir, 'identity'))) {
      chownSync(join(dir, 'identity', f), 0, fsGroup);
      chmodSync(join(dir, 'identity', f), 0o440);
    }

    // The API server, as far as the watch needs one: the namespace and a meshed peer pod (an address no test traffic uses).
    const api = new FakeKubeApi();
    await api.start();
    t.after(() => api.close());
    api.apply('/api/v1/namespaces', { metadata: { name: 'shop' } });
    api.apply('/api/v1/pods', {
      metadata: { name: 'api-5f6d7-xyz12', namespace: 'shop', labels: { app: 'api' }, annotations: { 'meshpipe.io/injected-identity': 'cert-manager-csi' } },
      spec: { serviceAccountName: 'api', containers: [{ name: 'api', image: 'x', ports: [{ containerPort: 8080 }] }] },
      status: { phase: 'Running', podIP: '10.251.0.9', podIPs: [{ ip: '10.251.0.9' }] },
    });
    await api.listenUnix(join(dir, 'kube-api.sock'));
    const bridge = pod.spawn('socat', ['-d', '-d', 'TCP-LISTEN:16443,bind=127.0.0.1,reuseaddr,fork', `UNIX-CONNECT:${join(dir, 'kube-api.sock')}`]);
    await bridge.waitFor(/listening on/, 10_000);
    writeFileSync(join(dir, 'kubeconfig'), api.kubeconfig().replace(`127.0.0.1:${api.port}`, '127.0.0.1:16443'));

    const fields: Record<string, string> = {
      'metadata.namespace': 'shop', 'metadata.name': 'web-7d9f8-abcde', 'status.podIP': pod.addr4 as string,
      'status.podIPs': `${pod.addr4},${pod.addr6}`,
    };
    const argvOf = (c: Container): [string, string[]] => {
      assert.equal(c.command[0], BINARY, `${c.name} runs the image's meshpipe`);
      // The image's binary -> this build's CLI; each mount's path -> the directory written above for it.
      const local = (a: string): string => {
        for (const [path, to] of Object.entries(mounts)) if (a === path || a.startsWith(`${path}/`)) return to + a.slice(path.length);
        return a;
      };
      return [process.execPath, [CLI, ...c.command.slice(1).map(local)]];
    };
    for (const m of proxy.volumeMounts ?? []) assert.ok(mounts[m.mountPath] !== undefined, `the test provides the proxy's mount ${m.name} at ${m.mountPath}`);
    const envOf = (c: Container): NodeJS.ProcessEnv => {
      const env: NodeJS.ProcessEnv = { PATH: process.env['PATH'] };
      for (const e of c.env ?? []) {
        const value = e.value ?? fields[e.valueFrom?.fieldRef.fieldPath ?? ''];
        assert.ok(value !== undefined, `${c.name}: env ${e.name} has a source this test does not provide`);
        env[e.name] = value;
      }
      return env;
    };

    // 1. meshpipe-init, to completion, as its uid (0).
    const [initCmd, initArgs] = argvOf(init);
    const initRun = await pod.exec(initCmd, initArgs, { uid: init.securityContext.runAsUser, env: envOf(init), timeoutMs: 30_000 });
    assert.equal(initRun.code, 0, `meshpipe-init failed:\n${initRun.stdout}\n${initRun.stderr}`);
    assert.match(initRun.stdout, /ipv4: installed/);

    // 2. meshpipe-proxy, as its uid (2102), until its startup probe passes.
    const [proxyCmd, proxyArgs] = argvOf(proxy);
    assert.ok(proxyArgs.includes('--kube'), 'the injected proxy watches the API');
    const sidecar = pod.spawn(proxyCmd, proxyArgs, {
      uid: proxy.securityContext.runAsUser, gid: proxy.securityContext.runAsGroup, env: { ...envOf(proxy), KUBECONFIG: join(dir, 'kubeconfig') },
    });
    await sidecar.waitFor(/"msg":"proxy ready"/, 20_000);
    const ready = await pod.exec('curl', ['-sS', '--max-time', '5', 'http://127.0.0.1:4191/ready']);
    assert.match(ready.stdout, new RegExp(`^ready\\nidentity: ${podIdentity.replaceAll('.', '\\.')} serial [0-9a-f]+ expires \\S+\\n$`), `the proxy runs with the injected identity, no source failing:\n${ready.stdout}\n${sidecar.output()}`);
    // Through the watch it knows the meshed peer pod as a mesh destination, with the identity its service account gives it.
    const policy = JSON.parse((await pod.exec('curl', ['-sS', '--max-time', '5', 'http://127.0.0.1:4191/policy'])).stdout) as {
      effective: { outbound: { destinations: { name: string; addresses: string[]; mesh?: { identity: string; tunnelPort: number } }[] } };
    };
    const peerPod = policy.effective.outbound.destinations.find((d) => d.name === 'api-5f6d7-xyz12');
    assert.deepEqual([peerPod?.addresses, peerPod?.mesh?.identity, peerPod?.mesh?.tunnelPort], [['10.251.0.9'], 'api.shop.serviceaccount.identity.linkerd.cluster.local', 4143],
      `the meshed pod from the API: ${JSON.stringify(policy.effective.outbound.destinations)}`);
    await waitFor(() => api.requests.some((r) => r.startsWith('GET /api/v1/pods?') && r.includes('watch=1')), 'the proxy to watch the pods, not only list them');
    for (const probe of [proxy.startupProbe, proxy.readinessProbe, proxy.livenessProbe]) {
      assert.ok(probe);
      // From outside the pod, as the kubelet probes.
      const r = await peer.exec('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '5', `http://${pod.addr4}:${probe.httpGet.port}${probe.httpGet.path}`]);
      assert.equal(r.stdout, '200', `probe ${probe.httpGet.path}: ${r.stderr}\n${sidecar.output()}`);
    }

    // 3. The app (uid 1000): an echo server on 8080, a plain responder on the skip port 9091.
    await pod.spawn(process.execPath, ['-e', ECHO_SERVER, '8080'], { uid: 1000 }).waitFor(/LISTENING/);
    await startResponder(pod, '0.0.0.0', 9091, 'app9091', { uid: 1000 });
    await peer.spawn(process.execPath, ['-e', SINK, '7071']).waitFor(/LISTENING/);

    const data = randomBytes(4 * 1024 * 1024);
    const file = join(dir, 'data.bin');
    writeFileSync(file, data);
    const sum = createHash('sha256').update(data).digest('hex');

    // Inbound: peer -> pod:8080 (redirected to 4143) -> app, echoed back.
    const echo = await peer.exec(process.execPath, ['-e', ECHO_CLIENT, pod.addr4 as string, '8080', file], { timeoutMs: 60_000 });
    assert.equal(echo.stdout.trim(), `${sum} ${data.length}`, `inbound echo through the proxy: ${echo.stderr}\n${sidecar.output()}`);
    // Outbound: app (uid 1000) -> peer:7071 (redirected to 4140) -> peer.
    const sent = await pod.exec(process.execPath, ['-e', SEND, peer.addr4 as string, '7071', file], { uid: 1000, timeoutMs: 60_000 });
    assert.equal(sent.stdout.trim(), sum, `outbound through the proxy: ${sent.stderr}`);
    // The skip port from the pod's annotation reaches the app directly.
    assert.match(await tcpRequest(peer, pod.addr4 as string, 9091), /^app9091 local=/);

    const snap = await pod.exec('curl', ['-sS', '--max-time', '5', 'http://127.0.0.1:4191/snapshot']);
    assert.equal(snap.code, 0, snap.stderr);
    const s = JSON.parse(snap.stdout) as EngineSnapshot;
    assert.ok(connectionsTo(s, 'inbound', 8080) >= 1, `the echo went through the inbound proxy: ${snap.stdout}`);
    assert.ok(connectionsTo(s, 'outbound', 7071) >= 1, 'the app\'s connection went through the outbound proxy');
    assert.equal(connectionsTo(s, 'inbound', 9091), 0, 'the skip port bypassed the proxy');

    // A mesh peer: mutual TLS to the proxy's tunnel (4143) with a certificate from the same CA, verifying that the
    // proxy proves the pod's identity; the tunnel header names port 9091, and the app answers from the pod IP.
    const header = Buffer.concat([Buffer.from('transport.l5d.io/v1\r\n\r\n'), Buffer.from([0, 0, 0, 3, 0x08, 9091 & 0x7f | 0x80, 9091 >> 7])]);
    const peerCert = join(dir, 'peer');
    const tunnel = await peer.exec('bash', ['-c', `printf '%s' "$1" | base64 -d | openssl s_client -quiet -connect ${pod.addr4}:4143 -tls1_3 -alpn transport.l5d.io/v1 `
      + `-servername ${podIdentity} -verify_hostname ${podIdentity} -verify_return_error -CAfile ${join(peerCert, 'ca.crt')} `
      + `-cert ${join(peerCert, 'tls.crt')} -cert_chain ${join(peerCert, 'tls.crt')} -key ${join(peerCert, 'tls.key')}`, '--', header.toString('base64')], { timeoutMs: 20_000 });
    assert.match(tunnel.stdout, new RegExp(`^app9091 local=${(pod.addr4 as string).replaceAll('.', '\\.')}:9091 `), `through the tunnel: ${tunnel.stdout}\n${tunnel.stderr}\n${sidecar.output()}`);
    const after = JSON.parse((await pod.exec('curl', ['-sS', '--max-time', '5', 'http://127.0.0.1:4191/snapshot'])).stdout) as EngineSnapshot;
    const mesh = after.tcp.filter((x) => x.direction === 'inbound' && x.targetPort === 9091 && x.tls === 'true');
    assert.deepEqual(mesh.map((x) => [x.clientId, x.srcOpenTotal]), [['peer.shop.serviceaccount.identity.linkerd.cluster.local', 1]], 'the tunnel\'s stream is mesh TLS from the verified peer');

    // The proxy drains and exits 0 on SIGTERM, as when the kubelet stops the pod.
    assert.equal(await sidecar.stop(10_000), 0, sidecar.output());
  });
});
