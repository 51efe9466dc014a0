/**
 * `meshpipe injector`, the admission webhook, as the API server uses it: a
 * real process serving HTTPS with a certificate from a CA made here with
 * openssl, AdmissionReview v1 requests sent with Node's https client trusting
 * that CA, Namespace annotations from a fake API server (test/fake-kube-api.ts)
 * through the real Kubernetes client.
 *
 * Checks: the JSONPatch gives a schema-valid pod equal to what `meshpipe
 * inject` makes; namespace inheritance; pods not enabled, non-pod requests
 * and already injected pods pass unchanged; invalid annotations denied (or
 * allowed with warnings under --failure-mode allow) naming object and key;
 * a pod that turns its service account token off injected without the
 * proxy's API watch, with a warning saying why;
 * malformed requests refused with the status that says why; /ready follows
 * the namespace cache; a rotated certificate is served without a restart and a
 * broken one is not; SIGTERM exits 0.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import type { TLSSocket } from 'node:tls';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { CliProcess, CLI, ROOT } from './helpers.js';
import { FakeKubeApi } from './fake-kube-api.js';
import { run } from './netns.js';
import { schemaProblems } from './k8s-schema.js';
import { applyPatch, type JsonObject, type JsonValue } from '../ts/inject/index.js';

interface Pki {
  readonly dir: string;
  readonly ca: Buffer;
  /** Issues a server certificate for 127.0.0.1 into dir/tls.crt + tls.key (atomically); returns its serial. */
  issue(name: string): Promise<string>;
}

async function openssl(args: string[]): Promise<string> {
  const r = await run('openssl', args);
  assert.equal(r.code, 0, `openssl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function makePki(): Promise<Pki> {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-injector-'));
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'ca.key'),
    '-out', join(dir, 'ca.crt'), '-days', '1', '-subj', '/CN=meshpipe test CA']);
  writeFileSync(join(dir, 'ext'), 'subjectAltName=IP:127.0.0.1,DNS:meshpipe-injector.meshpipe-system.svc\n');
  const ca = (await run('cat', [join(dir, 'ca.crt')])).stdout;
  return {
    dir,
    ca: Buffer.from(ca),
    async issue(name) {
      const key = join(dir, `${name}.key`);
      const crt = join(dir, `${name}.crt`);
      await openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', join(dir, `${name}.csr`), '-subj', '/CN=meshpipe-injector']);
      const serial = `0x${randomBytes(8).toString('hex')}`;
      await openssl(['x509', '-req', '-in', join(dir, `${name}.csr`), '-CA', join(dir, 'ca.crt'), '-CAkey', join(dir, 'ca.key'), '-set_serial', serial,
        '-out', crt, '-days', '1', '-extfile', join(dir, 'ext')]);
      // Replaced by rename, as the kubelet swaps a Secret volume's files.
      renameSync(key, join(dir, 'tls.key.new'));
      renameSync(crt, join(dir, 'tls.crt.new'));
      renameSync(join(dir, 'tls.crt.new'), join(dir, 'tls.crt'));
      renameSync(join(dir, 'tls.key.new'), join(dir, 'tls.key'));
      return serial.slice(2).toUpperCase().replace(/^0+/, '');
    },
  };
}

interface Reply {
  readonly status: number;
  readonly body: string;
  readonly serial: string;
}

function send(port: number, ca: Buffer, opts: { method?: string; path?: string; body?: string | Buffer; type?: string }): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({
      host: '127.0.0.1', port, ca, method: opts.method ?? 'POST', path: opts.path ?? '/inject', agent: false,
      headers: opts.body === undefined ? {} : { 'content-type': opts.type ?? 'application/json' },
    }, (res) => {
      const serial = (res.socket as TLSSocket).getPeerCertificate().serialNumber;
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status: res.statusCode ?? 0, body, serial }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

let uidCounter = 0;

function podReview(pod: JsonObject, namespace: string, extra: JsonObject = {}): JsonObject {
  return {
    apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview',
    request: {
      uid: `uid-${++uidCounter}`, kind: { group: '', version: 'v1', kind: 'Pod' }, resource: { group: '', version: 'v1', resource: 'pods' },
      requestKind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace, object: pod, dryRun: false, ...extra,
    },
  };
}

function pod(name: string, annotations: Record<string, string> = {}, containers: JsonValue = [{ name: 'app', image: 'registry.example/app:1', ports: [{ containerPort: 8080 }] }]): JsonObject {
  return { apiVersion: 'v1', kind: 'Pod', metadata: { generateName: `${name}-`, labels: { app: name }, annotations }, spec: { containers } };
}

interface Answer {
  readonly uid: string;
  readonly allowed: boolean;
  readonly patch?: string;
  readonly patchType?: string;
  readonly warnings?: string[];
  readonly status?: { code: number; message: string };
}

async function review(port: number, ca: Buffer, body: JsonObject): Promise<Answer> {
  const r = await send(port, ca, { body: JSON.stringify(body) });
  assert.equal(r.status, 200, r.body);
  const parsed = JSON.parse(r.body) as { apiVersion: string; kind: string; response: Answer };
  assert.equal(parsed.apiVersion, 'admission.k8s.io/v1');
  assert.equal(parsed.kind, 'AdmissionReview');
  assert.equal(parsed.response.uid, (body['request'] as JsonObject)['uid'], 'the response answers this request');
  return parsed.response;
}

function patched(p: JsonObject, answer: Answer): JsonObject {
  assert.equal(answer.patchType, 'JSONPatch');
  const ops = JSON.parse(Buffer.from(answer.patch as string, 'base64').toString('utf8')) as Parameters<typeof applyPatch>[1];
  return applyPatch(p, ops) as JsonObject;
}

async function startInjector(pki: Pki, args: string[]): Promise<{ proc: CliProcess; port: number }> {
  const proc = new CliProcess(['injector', '--listen', '127.0.0.1:0', '--tls-cert', join(pki.dir, 'tls.crt'), '--tls-key', join(pki.dir, 'tls.key'), ...args]);
  const line = await proc.waitForLog((l) => l.msg === 'injector listening', 'injector listening', 15_000);
  return { proc, port: Number(/:(\d+)$/.exec(String(line['address']))?.[1]) };
}

describe('meshpipe injector (admission webhook over TLS)', { concurrency: false }, () => {
  let pki: Pki;
  let api: FakeKubeApi;
  let injector: { proc: CliProcess; port: number };
  let kubeconfig: string;

  before(async () => {
    pki = await makePki();
    await pki.issue('first');
    api = new FakeKubeApi();
    await api.start();
    api.apply('/api/v1/namespaces', { metadata: { name: 'shop', annotations: { 'meshpipe.io/inject': 'enabled', 'config.linkerd.io/skip-outbound-ports': '3306' } } });
    api.apply('/api/v1/namespaces', { metadata: { name: 'plain' } });
    kubeconfig = join(pki.dir, 'kubeconfig');
    writeFileSync(kubeconfig, api.kubeconfig());
    injector = await startInjector(pki, ['--kubeconfig', kubeconfig]);
    await injector.proc.waitForLog((l) => l.msg === 'namespace annotations synced', 'namespace sync', 15_000);
  });
  after(async () => {
    injector?.proc.kill();
    await api?.close();
    rmSync(pki.dir, { recursive: true, force: true });
  });

  test('a pod in an enabled namespace: JSONPatch to a schema-valid pod, the same as meshpipe inject, namespace settings inherited', async () => {
    const p = pod('web');
    const answer = await review(injector.port, pki.ca, podReview(p, 'shop'));
    assert.equal(answer.allowed, true);
    const out = patched(p, answer);
    assert.deepEqual(schemaProblems(out), []);
    const spec = out['spec'] as { initContainers: JsonObject[] };
    assert.deepEqual(spec.initContainers.map((c) => c['name']), ['meshpipe-init', 'meshpipe-proxy']);
    assert.ok((spec.initContainers[0]?.['command'] as string[]).join(' ').includes('--skip-outbound-ports 3306'), 'inherited from Namespace shop');
    // The proxy's identity: cert-manager's CSI driver volume, mounted for --identity-dir.
    const identity = (out['spec'] as { volumes: JsonObject[] }).volumes.find((v) => v['name'] === 'meshpipe-identity');
    assert.equal((identity?.['csi'] as JsonObject | undefined)?.['driver'], 'csi.cert-manager.io');
    assert.ok((spec.initContainers[1]?.['command'] as string[]).join(' ').includes('--identity-dir /var/run/meshpipe/identity'));
    // The proxy watches the API with the pod's service account, whose token admission mounts (injection leaves it be).
    assert.ok((spec.initContainers[1]?.['command'] as string[]).includes('--kube'));
    assert.equal((out['spec'] as JsonObject)['automountServiceAccountToken'], undefined);
    assert.equal(answer.warnings, undefined);
    // The CLI, given the same pod and namespace, makes the same pod.
    const manifest = `apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations: {meshpipe.io/inject: enabled, config.linkerd.io/skip-outbound-ports: "3306"}\n---\n${JSON.stringify({ ...p, metadata: { ...(p['metadata'] as JsonObject), namespace: 'shop' } })}\n`;
    const cli = await run(process.execPath, [CLI, 'inject', '-'], { input: manifest });
    assert.equal(cli.code, 0, cli.stderr);
    const cliPod = parseAllDocuments(cli.stdout)[1]?.toJS() as JsonObject;
    assert.deepEqual(cliPod['spec'], out['spec']);

    // The pod as created (injected) comes back unchanged, e.g. on a reinvocation.
    const again = await review(injector.port, pki.ca, podReview(out, 'shop'));
    assert.deepEqual([again.allowed, again.patch], [true, undefined]);
  });

  test('not enabled, disabled, not a pod create: allowed without a patch; enabled on the pod alone: injected', async () => {
    for (const [body, why] of [
      [podReview(pod('plain'), 'plain'), 'nothing enabled'],
      [podReview(pod('off', { 'meshpipe.io/inject': 'disabled' }), 'shop'), 'disabled on the pod'],
      [podReview(pod('upd'), 'shop', { operation: 'UPDATE' }), 'an update'],
      [podReview(pod('eph'), 'shop', { subResource: 'ephemeralcontainers' }), 'a subresource'],
      [{ ...podReview(pod('svc'), 'shop'), request: { ...(podReview(pod('svc'), 'shop')['request'] as JsonObject), kind: { group: '', version: 'v1', kind: 'Service' }, resource: { group: '', version: 'v1', resource: 'services' } } }, 'a Service'],
    ] as const) {
      const a = await review(injector.port, pki.ca, body);
      assert.deepEqual([a.allowed, a.patch, a.warnings], [true, undefined, undefined], why);
    }
    const p = pod('opt-in', { 'linkerd.io/inject': 'enabled' });
    const a = await review(injector.port, pki.ca, podReview(p, 'plain'));
    assert.deepEqual(schemaProblems(patched(p, a)), []);
    const hostNet = pod('hostnet', { 'meshpipe.io/inject': 'enabled' });
    (hostNet['spec'] as JsonObject)['hostNetwork'] = true;
    const h = await review(injector.port, pki.ca, podReview(hostNet, 'plain'));
    assert.equal(h.patch, undefined);
    assert.match(h.warnings?.[0] ?? '', /not injected: the pod uses the host's network/);
  });

  test('invalid annotations: denied naming object, key and value (--failure-mode deny); allowed with warnings (allow)', async () => {
    const bad = pod('bad', { 'config.linkerd.io/skip-inbound-ports': '22,ssh' });
    const denied = await review(injector.port, pki.ca, podReview(bad, 'shop'));
    assert.equal(denied.allowed, false);
    assert.equal(denied.status?.code, 400);
    assert.match(denied.status?.message ?? '', /^meshpipe: Pod shop\/bad-\* not injected: Pod shop\/bad-\*: annotation config\.linkerd\.io\/skip-inbound-ports: "22,ssh": entry "ssh"/);
    const badIdentity = await review(injector.port, pki.ca, podReview(pod('badid', { 'config.meshpipe.io/identity-secret': 'Not A Name' }), 'shop'));
    assert.equal(badIdentity.allowed, false);
    assert.match(badIdentity.status?.message ?? '', /Pod shop\/badid-\*: annotation config\.meshpipe\.io\/identity-secret: "Not A Name": expected a Kubernetes object name/);
    // A good Secret name: the patched pod mounts that Secret instead of the CSI volume.
    const withSecret = pod('secret', { 'config.meshpipe.io/identity-secret': 'web-identity' });
    const out = patched(withSecret, await review(injector.port, pki.ca, podReview(withSecret, 'shop')));
    assert.deepEqual(schemaProblems(out), []);
    assert.equal(((out['spec'] as { volumes: JsonObject[] }).volumes.find((v) => v['name'] === 'meshpipe-identity')?.['secret'] as JsonObject)['secretName'], 'web-identity');

    const lenient = await startInjector(pki, ['--kubeconfig', kubeconfig, '--failure-mode', 'allow']);
    try {
      await lenient.proc.waitForLog((l) => l.msg === 'namespace annotations synced', 'namespace sync', 15_000);
      const allowed = await review(lenient.port, pki.ca, podReview(bad, 'shop'));
      assert.equal(allowed.allowed, true);
      assert.equal(allowed.patch, undefined);
      assert.deepEqual(allowed.warnings?.[0], 'meshpipe: Pod shop/bad-* created without the meshpipe proxy');
      assert.match(allowed.warnings?.[1] ?? '', /annotation config\.linkerd\.io\/skip-inbound-ports: "22,ssh"/);
    } finally {
      lenient.proc.kill();
    }
  });

  test('automountServiceAccountToken: false: injected without --kube, allowed with a warning naming the field; logged', async () => {
    const p = pod('notoken');
    (p['spec'] as JsonObject)['automountServiceAccountToken'] = false;
    const answer = await review(injector.port, pki.ca, podReview(p, 'shop'));
    assert.equal(answer.allowed, true);
    const out = patched(p, answer);
    assert.deepEqual(schemaProblems(out), []);
    const proxy = (out['spec'] as { initContainers: JsonObject[] }).initContainers.find((c) => c['name'] === 'meshpipe-proxy');
    assert.ok(proxy);
    assert.ok(!(proxy['command'] as string[]).includes('--kube'), 'no watch without a token');
    assert.equal((out['spec'] as JsonObject)['automountServiceAccountToken'], false, 'the pod\'s choice is kept');
    assert.deepEqual(answer.warnings, [
      'meshpipe: Pod shop/notoken-*: spec.automountServiceAccountToken: "false": no API token for the proxy, so it runs without --kube '
        + '(no outbound mTLS, no other workloads\' policy): set it to true, or annotate config.meshpipe.io/kube-watch: disabled',
    ]);
    const line = await injector.proc.waitForLog((l) => l.msg === 'admission review' && String(l['detail']).startsWith('Pod shop/notoken-*'), 'the review log line');
    assert.match(String(line['detail']), /; warning: Pod shop\/notoken-\*: spec\.automountServiceAccountToken: "false": /);
  });

  test('malformed requests: 405, 415, 400 (not JSON, not v1, no uid), 413 over 8 MiB, 404', async () => {
    const { port } = injector;
    assert.equal((await send(port, pki.ca, { method: 'GET' })).status, 405);
    assert.equal((await send(port, pki.ca, { body: '{}', type: 'text/plain' })).status, 415);
    const notJson = await send(port, pki.ca, { body: '{"apiVersion":' });
    assert.equal(notJson.status, 400);
    assert.match(notJson.body, /not JSON/);
    const v1beta1 = await send(port, pki.ca, { body: JSON.stringify({ ...podReview(pod('x'), 'shop'), apiVersion: 'admission.k8s.io/v1beta1' }) });
    assert.equal(v1beta1.status, 400);
    assert.match(v1beta1.body, /admissionReviewVersions: \["v1"\]/);
    assert.equal((await send(port, pki.ca, { body: JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: {} }) })).status, 400);
    assert.equal((await send(port, pki.ca, { body: Buffer.alloc(9 * 1024 * 1024, 0x20) })).status, 413);
    assert.equal((await send(port, pki.ca, { method: 'GET', path: '/nope' })).status, 404);
    // It still serves after all that.
    assert.equal((await review(port, pki.ca, podReview(pod('after'), 'shop'))).allowed, true);
  });

  test('/ready, /live and /metrics', async () => {
    assert.deepEqual([(await send(injector.port, pki.ca, { method: 'GET', path: '/ready' })).status, (await send(injector.port, pki.ca, { method: 'GET', path: '/live' })).status], [200, 200]);
    const metrics = (await send(injector.port, pki.ca, { method: 'GET', path: '/metrics' })).body;
    assert.match(metrics, /meshpipe_injector_reviews_total\{result="injected"\} [1-9]/);
    assert.match(metrics, /meshpipe_injector_reviews_total\{result="invalid"\} [1-9]/);
    assert.match(metrics, /meshpipe_injector_reviews_total\{result="bad_request"\} [1-9]/);
  });

  test('a rotated certificate is served without a restart; a broken pair is refused and the old one kept', async () => {
    const before = await send(injector.port, pki.ca, { method: 'GET', path: '/live' });
    const serial = await pki.issue('second');
    await injector.proc.waitForLog((l) => l.msg === 'tls certificate reloaded', 'the reload', 15_000);
    const now = await send(injector.port, pki.ca, { method: 'GET', path: '/live' });
    assert.notEqual(now.serial, before.serial);
    assert.equal(now.serial.replace(/^0+/, ''), serial, 'the new certificate is served');

    // A key that does not match the certificate (a rotation caught half-way).
    await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', join(pki.dir, 'other.key')]);
    renameSync(join(pki.dir, 'other.key'), join(pki.dir, 'tls.key'));
    await injector.proc.waitForLog((l) => l.msg === 'tls certificate reload failed; serving the current one', 'the refused reload', 15_000);
    const still = await send(injector.port, pki.ca, { method: 'GET', path: '/live' });
    assert.equal(still.status, 200);
    assert.equal(still.serial, now.serial);
    await pki.issue('third'); // a good pair again, for the tests after this one
    await injector.proc.waitForLog((l) => l.msg === 'tls certificate reloaded' && injector.proc.logs.filter((x) => x.msg === 'tls certificate reloaded').length >= 2, 'the second reload', 15_000);
  });

  test('namespace annotations unknown (API server down): not ready, and reviews follow the failure mode', async () => {
    const down = new FakeKubeApi();
    await down.start();
    down.setDown(true);
    const cfg = join(pki.dir, 'kubeconfig-down');
    writeFileSync(cfg, down.kubeconfig());
    const inj = await startInjector(pki, ['--kubeconfig', cfg]);
    try {
      const ready = await send(inj.port, pki.ca, { method: 'GET', path: '/ready' });
      assert.equal(ready.status, 503);
      assert.match(ready.body, /namespace annotations not synced yet/);
      const a = await review(inj.port, pki.ca, podReview(pod('web', { 'meshpipe.io/inject': 'enabled' }), 'shop'));
      assert.equal(a.allowed, false);
      assert.match(a.status?.message ?? '', /the annotations of its namespace are not known/);
      down.setDown(false);
      await inj.proc.waitForLog((l) => l.msg === 'namespace annotations synced', 'recovery', 30_000);
      assert.equal((await send(inj.port, pki.ca, { method: 'GET', path: '/ready' })).status, 200);
    } finally {
      inj.proc.kill();
      await down.close();
    }
  });

  test('SIGTERM: exits 0', async () => {
    const inj = await startInjector(pki, ['--namespaces', 'off']);
    inj.proc.signal('SIGTERM');
    const exit = await inj.proc.exited;
    assert.equal(exit.code, 0);
    assert.ok(inj.proc.logs.some((l) => l.msg === 'injector stopping'));
  });

  test('bad flags exit 2 naming the flag; an unusable certificate exits 2 naming the file', async () => {
    for (const [args, pattern] of [
      [['--failure-mode', 'maybe'], /--failure-mode "maybe" is invalid: expected deny or allow/],
      [['--namespaces', 'some'], /--namespaces "some" is invalid: expected kube or off/],
      [['--listen', 'nowhere'], /--listen: bind address "nowhere"/],
      [['--identity', 'off'], /--identity "off" is invalid: expected enabled or disabled/],
      [['--identity-issuer-kind', 'issuer'], /--identity-issuer-kind "issuer" is invalid: expected a Kind/],
    ] as const) {
      const r = await run(process.execPath, [CLI, 'injector', ...args]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, pattern);
    }
    const r = await run(process.execPath, [CLI, 'injector', '--namespaces', 'off', '--listen', '127.0.0.1:0', '--tls-cert', join(pki.dir, 'ca.crt'), '--tls-key', join(pki.dir, 'tls.key')]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--tls-cert .*ca\.crt \/ --tls-key .*tls\.key: not a usable certificate and key/);
  });

  test('deploy/kubernetes/injector.yaml: schema-valid, and its command uses only flags meshpipe injector has', async () => {
    const objects = parseAllDocuments(readFileSync(join(ROOT, 'deploy/kubernetes/injector.yaml'), 'utf8')).map((d) => d.toJS() as JsonObject);
    assert.deepEqual(objects.flatMap((o) => schemaProblems(o)), []);
    assert.deepEqual(objects.map((o) => o['kind']), ['Namespace', 'ServiceAccount', 'ClusterRole', 'ClusterRoleBinding', 'Issuer', 'Certificate', 'Deployment', 'Service', 'PodDisruptionBudget', 'MutatingWebhookConfiguration']);
    const mwc = objects.find((o) => o['kind'] === 'MutatingWebhookConfiguration') as { webhooks: JsonObject[] };
    const hook = mwc.webhooks[0] as { admissionReviewVersions: string[]; sideEffects: string; clientConfig: { service: { path: string } }; namespaceSelector: { matchExpressions: { values: string[] }[] } };
    assert.deepEqual([hook.admissionReviewVersions, hook.sideEffects, hook.clientConfig.service.path], [['v1'], 'None', '/inject']);
    assert.ok(hook.namespaceSelector.matchExpressions[0]?.values.includes('meshpipe-system'), 'the injector never waits on itself');
    const deployment = objects.find((o) => o['kind'] === 'Deployment') as unknown as { spec: { template: { spec: { containers: { command: string[] }[] } } } };
    const command = deployment.spec.template.spec.containers[0]?.command ?? [];
    assert.deepEqual(command.slice(0, 2), ['meshpipe', 'injector']);
    const help = await run(process.execPath, [CLI, 'injector', '--help']);
    for (const flag of command.filter((a) => a.startsWith('--'))) assert.ok(help.stdout.includes(`    ${flag} `), `meshpipe injector has no ${flag}`);
  });
});
