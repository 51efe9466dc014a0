/**
 * `meshpipe inject` and `meshpipe uninject` through the real CLI: golden
 * files for every injectable kind (and a JSON List from stdin), validation of
 * every object written against the Kubernetes OpenAPI schemas
 * (test/k8s-schema.ts), other documents byte for byte, idempotence, uninject
 * restoring the original, namespace inheritance and precedence of the
 * enable/disable annotations, invalid annotations reported with object and key
 * (that object unchanged, exit 2), re-injection after an annotation change,
 * --dry-run, and the JSONPatch the webhook would send giving the same pod.
 * The proxy's watch of the Kubernetes API: `--kube` by default, turned off by
 * annotation or flag, left out with a warning when the pod turns its service
 * account token off; deploy/kubernetes/proxy-rbac.yaml grants exactly what
 * the watch lists (derived from ts/policy/k8s/watched.ts), read-only.
 *
 * Golden files: UPDATE_GOLDEN=1 rewrites them from the current output (review
 * the diff before committing).
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { CLI, ROOT } from './helpers.js';
import { run } from './netns.js';
import { schemaProblems } from './k8s-schema.js';
import { applyPatch, diff, getPath, parseQuantity, parseStream, pointer, type JsonObject, type JsonValue } from '../ts/inject/index.js';
import { renderIdentity } from '../ts/identity/name.js';
import { PROXY_RBAC_MANIFEST, watchedKinds } from '../ts/policy/index.js';

const FIXTURES = join(ROOT, 'test/fixtures/inject');
const fixture = (name: string): string => readFileSync(join(FIXTURES, name), 'utf8');

function meshpipe(args: string[], input = ''): ReturnType<typeof run> {
  return run(process.execPath, [CLI, ...args], { input, timeoutMs: 30_000 });
}

async function ok(args: string[], input = ''): Promise<{ stdout: string; stderr: string }> {
  const r = await meshpipe(args, input);
  assert.equal(r.code, 0, `meshpipe ${args.join(' ')} exited ${r.code}:\n${r.stderr}`);
  return r;
}

/** The stream's documents as plain JSON (nulls for empty documents dropped). */
function docs(text: string): JsonObject[] {
  return parseAllDocuments(text).map((d) => d.toJS() as JsonObject).filter((d) => d !== null);
}

function golden(name: string, actual: string): void {
  const path = join(FIXTURES, name);
  if (process.env['UPDATE_GOLDEN'] === '1') writeFileSync(path, actual);
  assert.equal(actual, readFileSync(path, 'utf8'), `${name} differs from the golden file (UPDATE_GOLDEN=1 to rewrite it after review)`);
}

function byName(list: JsonValue | undefined, name: string): JsonObject {
  const item = (list as JsonObject[]).find((c) => c['name'] === name);
  assert.ok(item, `no ${name} in ${JSON.stringify(list)}`);
  return item;
}

function names(list: JsonValue | undefined): string[] {
  return ((list ?? []) as JsonObject[]).map((c) => c['name'] as string);
}

function template(doc: JsonObject): JsonObject {
  const path = doc['kind'] === 'Pod' ? [] : doc['kind'] === 'CronJob' ? ['spec', 'jobTemplate', 'spec', 'template'] : ['spec', 'template'];
  return getPath(doc, path) as JsonObject;
}

function find(all: JsonObject[], kind: string, name: string): JsonObject {
  const d = all.find((x) => x['kind'] === kind && (x['metadata'] as JsonObject)['name'] === name);
  assert.ok(d, `${kind} ${name} not in the output`);
  return d;
}

/** The CSI volume's attributes with the injector's defaults and the proxy's default uid. */
const CSI_ATTRIBUTES: Record<string, string> = {
  'csi.cert-manager.io/issuer-name': 'meshpipe-identity-issuer',
  'csi.cert-manager.io/issuer-kind': 'ClusterIssuer',
  'csi.cert-manager.io/issuer-group': 'cert-manager.io',
  'csi.cert-manager.io/dns-names': '${SERVICE_ACCOUNT_NAME}.${POD_NAMESPACE}.serviceaccount.identity.linkerd.cluster.local',
  'csi.cert-manager.io/key-algorithm': 'ECDSA',
  'csi.cert-manager.io/key-size': '256',
  'csi.cert-manager.io/key-usages': 'digital signature,server auth,client auth',
  'csi.cert-manager.io/duration': '24h',
  'csi.cert-manager.io/renew-before': '8h',
  'csi.cert-manager.io/fs-group': '2102',
};

function assertSchemaValid(all: readonly JsonObject[]): void {
  const problems = all.flatMap((d) => schemaProblems(d));
  assert.deepEqual(problems, [], `objects the API server would refuse:\n${problems.join('\n')}`);
}

describe('meshpipe inject', () => {
  test('every kind: golden output, schema-valid, other documents byte for byte, one report line per pod template', async () => {
    const input = fixture('workloads.yaml');
    const { stdout, stderr } = await ok(['inject', join(FIXTURES, 'workloads.yaml')]);
    golden('workloads.injected.yaml', stdout);
    assertSchemaValid(docs(stdout));
    assertSchemaValid(docs(input)); // the fixture itself is valid, so every problem would be ours

    const before = parseStream(input, 'in').documents;
    const after = parseStream(stdout, 'out').documents;
    assert.equal(after.length, before.length);
    const untouched = ['Namespace', 'Service', 'ConfigMap', 'DaemonSet', 'ReplicaSet'];
    for (const [i, d] of before.entries()) {
      const kind = (d.json as JsonObject)['kind'] as string;
      if (untouched.includes(kind)) assert.equal(after[i]?.text, d.text, `${kind} must pass through byte for byte`);
      else assert.notEqual(after[i]?.text, d.text, `${kind} must be injected`);
    }
    // The text between documents (the leading comment, `...`) is kept too.
    assert.ok(stdout.startsWith('# Manifests for the injection tests'));
    assert.match(stdout, /line"\n\.\.\.\n---\n# The shop's front end\.\n/);

    assert.deepEqual(stderr.trim().split('\n'), [
      'meshpipe inject: Deployment shop/web: injected (injected by default; identity from csi.cert-manager.io, ClusterIssuer meshpipe-identity-issuer)',
      'meshpipe inject: StatefulSet shop/cache: injected (injected by default; identity from csi.cert-manager.io, ClusterIssuer meshpipe-identity-issuer)',
      "meshpipe inject: warning: DaemonSet shop/node-agent: not injected (the pod uses the host's network (hostNetwork: true): meshpipe init would rewrite the node's iptables)",
      'meshpipe inject: ReplicaSet shop/legacy: not injected (meshpipe.io/inject=disabled on ReplicaSet shop/legacy)',
      'meshpipe inject: Job shop/report: injected (injected by default; identity from csi.cert-manager.io, ClusterIssuer meshpipe-identity-issuer)',
      'meshpipe inject: CronJob shop/nightly: injected (injected by default; identity from csi.cert-manager.io, ClusterIssuer meshpipe-identity-issuer)',
      'meshpipe inject: Pod other/debug: injected (injected by default; identity from csi.cert-manager.io, ClusterIssuer meshpipe-identity-issuer)',
    ]);
  });

  test('what is added: init with NET_ADMIN/NET_RAW only, native sidecar proxy as uid 2102 with probes, podinfo, POD_IPS, identity, resources, drain', async () => {
    const all = docs((await ok(['inject', join(FIXTURES, 'workloads.yaml')])).stdout);
    const web = template(find(all, 'Deployment', 'web'));
    const spec = web['spec'] as JsonObject;
    assert.deepEqual(names(spec['initContainers']), ['meshpipe-init', 'meshpipe-proxy', 'migrate'], 'init first, then the native sidecar, then the app\'s init containers');
    assert.deepEqual(names(spec['containers']), ['app']);
    assert.deepEqual(names(spec['volumes']), ['meshpipe-podinfo', 'meshpipe-identity', 'meshpipe-xtables-lock']);

    const init = byName(spec['initContainers'], 'meshpipe-init');
    assert.deepEqual(init['command'], [
      'meshpipe', 'init', '--proxy-uid', '2102', '--inbound-port', '4143', '--outbound-port', '4140', '--admin-port', '4191',
      '--skip-inbound-ports', '9090', // the pod's own annotation
      '--skip-outbound-ports', '3306,11211', // inherited from Namespace shop
    ]);
    assert.deepEqual(init['securityContext'], {
      allowPrivilegeEscalation: false, capabilities: { add: ['NET_ADMIN', 'NET_RAW'], drop: ['ALL'] },
      readOnlyRootFilesystem: true, runAsNonRoot: false, runAsUser: 0, seccompProfile: { type: 'RuntimeDefault' },
    });
    assert.equal(init['restartPolicy'], undefined, 'the init container runs once');

    const proxy = byName(spec['initContainers'], 'meshpipe-proxy');
    assert.equal(proxy['restartPolicy'], 'Always', 'native sidecar');
    assert.deepEqual(proxy['command'], [
      'meshpipe', 'proxy', '--inbound', '0.0.0.0:4143', '--outbound', '127.0.0.1:4140', '--admin', '0.0.0.0:4191',
      '--annotations', '/var/run/meshpipe/podinfo/annotations',
      '--kube', // the API watch, with the pod's service account
      '--identity-dir', '/var/run/meshpipe/identity', '--trust-domain', 'cluster.local', '--identity-template', '{sa}.{ns}.serviceaccount.identity.linkerd.{trustDomain}',
      '--drain-timeout', '20s', // the pod's grace period
    ]);
    assert.equal(spec['automountServiceAccountToken'], undefined, 'the service account token (which the watch needs) is left as the pod had it');
    const sc = proxy['securityContext'] as JsonObject;
    assert.equal(sc['runAsUser'], 2102);
    assert.equal(sc['runAsNonRoot'], true);
    assert.equal(sc['allowPrivilegeEscalation'], false);
    assert.deepEqual(sc['capabilities'], { drop: ['ALL'] });
    assert.deepEqual((proxy['ports'] as JsonObject[]).map((p) => p['containerPort']), [4143, 4191]);
    assert.deepEqual(getPath(proxy, ['readinessProbe', 'httpGet']), { path: '/ready', port: 4191 });
    assert.deepEqual(getPath(proxy, ['livenessProbe', 'httpGet']), { path: '/live', port: 4191 });
    assert.deepEqual(getPath(proxy, ['startupProbe', 'httpGet']), { path: '/ready', port: 4191 });
    const env = Object.fromEntries((proxy['env'] as JsonObject[]).map((e): [string, JsonValue | undefined] => [e['name'] as string, getPath(e, ['valueFrom', 'fieldRef', 'fieldPath'])]));
    assert.deepEqual(env, { POD_NAMESPACE: 'metadata.namespace', POD_NAME: 'metadata.name', POD_IP: 'status.podIP', POD_IPS: 'status.podIPs' });
    assert.deepEqual(proxy['resources'], { requests: { cpu: '100m' }, limits: { memory: '128Mi' } });
    assert.deepEqual(init['resources'], proxy['resources']);
    assert.deepEqual(getPath(byName(spec['volumes'], 'meshpipe-podinfo'), ['downwardAPI', 'items', '0', 'fieldRef']), { fieldPath: 'metadata.annotations' });
    // The identity: cert-manager's CSI driver, the Linkerd-form name of the pod's service account, files readable by the proxy's group.
    assert.deepEqual(byName(spec['volumes'], 'meshpipe-identity'), { name: 'meshpipe-identity', csi: { driver: 'csi.cert-manager.io', readOnly: true, volumeAttributes: CSI_ATTRIBUTES } });
    assert.deepEqual(byName(proxy['volumeMounts'], 'meshpipe-identity'), { name: 'meshpipe-identity', mountPath: '/var/run/meshpipe/identity', readOnly: true });
    assert.equal(Number(CSI_ATTRIBUTES['csi.cert-manager.io/fs-group']), sc['runAsGroup'], 'the driver\'s files are group-readable by the proxy');
    assert.equal(getPath(web, ['metadata', 'annotations', 'meshpipe.io/injected-identity']), 'cert-manager-csi');
    assert.equal(getPath(web, ['metadata', 'annotations', 'meshpipe.io/injected']), (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version);
    assert.equal(spec['terminationGracePeriodSeconds'], 20, 'a grace period is kept when no drain timeout asks for more');

    // StatefulSet: classic sidecar (its annotation), drain 60s -> grace raised to 65 s, original recorded.
    const cache = template(find(all, 'StatefulSet', 'cache'));
    const cspec = cache['spec'] as JsonObject;
    assert.deepEqual(names(cspec['containers']), ['meshpipe-proxy', 'redis']);
    assert.deepEqual(names(cspec['initContainers']), ['meshpipe-init']);
    assert.equal(byName(cspec['containers'], 'meshpipe-proxy')['restartPolicy'], undefined);
    assert.equal(cspec['terminationGracePeriodSeconds'], 65);
    assert.equal(getPath(cache, ['metadata', 'annotations', 'meshpipe.io/original-termination-grace-period-seconds']), 'unset');
    assert.ok((byName(cspec['containers'], 'meshpipe-proxy')['command'] as string[]).join(' ').endsWith('--drain-timeout 1m'));

    const job = template(find(all, 'Job', 'report'));
    assert.ok((byName(getPath(job, ['spec', 'initContainers']), 'meshpipe-init')['command'] as string[]).join(' ').includes('--skip-subnets 10.96.0.0/12,fd00:10::/108'));
    const nightly = template(find(all, 'CronJob', 'nightly'));
    assert.deepEqual(names(getPath(nightly, ['spec', 'initContainers'])), ['meshpipe-init', 'meshpipe-proxy']);
    const debug = find(all, 'Pod', 'debug');
    const dproxy = byName(getPath(debug, ['spec', 'initContainers']), 'meshpipe-proxy');
    assert.equal(getPath(dproxy, ['securityContext', 'runAsUser']), 3000, 'config.linkerd.io/proxy-uid');
    assert.ok((byName(getPath(debug, ['spec', 'initContainers']), 'meshpipe-init')['command'] as string[]).join(' ').includes('--proxy-uid 3000'));
    assert.equal(getPath(byName(getPath(debug, ['spec', 'volumes']), 'meshpipe-identity'), ['csi', 'volumeAttributes', 'csi.cert-manager.io/fs-group']), '3000', 'the identity files follow the proxy\'s uid');
    // Namespace shop's skip-outbound-ports does not reach a pod in namespace other.
    assert.ok(!(byName(getPath(debug, ['spec', 'initContainers']), 'meshpipe-init')['command'] as string[]).includes('--skip-outbound-ports'));
  });

  test('injecting twice changes nothing; uninject restores the original', async () => {
    const input = fixture('workloads.yaml');
    const once = (await ok(['inject', '-'], input)).stdout;
    const twice = await ok(['inject', '-'], once);
    assert.equal(twice.stdout, once, 'a second injection must be byte-identical');
    assert.match(twice.stderr, /Deployment shop\/web: unchanged \(already injected as planned\)/);
    assert.doesNotMatch(twice.stderr, /: injected/);

    const restored = (await ok(['uninject', '-'], once)).stdout;
    assert.deepEqual(docs(restored), docs(input), 'uninject gives back the same objects');
    // Text too: the only differences are the blanks before a comment on a line the edit touched.
    const a = input.split('\n');
    const b = restored.split('\n');
    assert.equal(b.length, a.length);
    for (const [i, line] of a.entries()) {
      if (line !== b[i]) assert.equal(line.replace(/\s+#/, ' #'), b[i], `line ${i + 1} changed beyond comment spacing`);
    }
    const again = await ok(['uninject', '-'], restored);
    assert.equal(again.stdout, restored, 'uninjecting an uninjected stream changes nothing');
  });

  test('a JSON List from stdin: golden output, written back as JSON; uninject is exact', async () => {
    const input = fixture('list.json');
    const { stdout } = await ok(['inject', '-'], input);
    golden('list.injected.json', stdout);
    const out = JSON.parse(stdout) as JsonObject;
    assertSchemaValid([out]);
    assert.deepEqual((out['items'] as JsonObject[])[0], (JSON.parse(input) as { items: JsonObject[] }).items[0], 'the Service item is unchanged');
    assert.equal((await ok(['uninject', '-'], stdout)).stdout, input);
    // YAML in flow style that merely starts with `{` stays YAML.
    const flow = '{apiVersion: v1, kind: Pod, metadata: {name: f}, spec: {containers: [{name: app, image: x}]}}\n';
    const flowOut = (await ok(['inject', '-'], flow)).stdout;
    assert.throws(() => JSON.parse(flowOut) as unknown, 'written back as YAML, not JSON');
    assert.deepEqual(names(getPath(docs(flowOut)[0] as JsonObject, ['spec', 'initContainers'])), ['meshpipe-init', 'meshpipe-proxy']);
  });

  test('invalid annotations: each named with object, key and value; that object unchanged; the rest injected; exit 2', async () => {
    const input = fixture('invalid.yaml');
    const r = await meshpipe(['inject', join(FIXTURES, 'invalid.yaml')]);
    assert.equal(r.code, 2, r.stderr);
    for (const line of [
      'warning: Deployment shop/bad-ports: invalid (left unchanged)',
      '  Deployment shop/bad-ports: annotation config.linkerd.io/skip-inbound-ports: "22,http,70000": entry "http": expected a port 1-65535 or a range low-high',
      '  Deployment shop/bad-ports: annotation config.linkerd.io/skip-inbound-ports: "22,http,70000": entry "70000": port 70000 is out of range: expected 1-65535',
      '  Deployment shop/bad-ports: annotation config.linkerd.io/proxy-cpu-request: "2": the request is larger than config.linkerd.io/proxy-cpu-limit "500m": a request must not exceed its limit',
      '  Pod shop/bad-mode: annotation config.linkerd.io/proxy-uid: "2102": annotation values must be strings: quote the value in YAML',
      '  Pod shop/bad-mode: annotation linkerd.io/inject: "ingress": expected "enabled" or "disabled" (Linkerd\'s ingress mode is not supported by meshpipe)',
    ]) {
      assert.ok(r.stderr.includes(line), `missing: ${line}\n${r.stderr}`);
    }
    const before = parseStream(input, 'in').documents;
    const after = parseStream(r.stdout, 'out').documents;
    assert.equal(after[0]?.text, before[0]?.text, 'the invalid Deployment is written back unchanged');
    assert.equal(after[1]?.text, before[1]?.text, 'the invalid Pod is written back unchanged');
    assert.match(r.stderr, /Pod shop\/good: injected/);
    assert.deepEqual(names(getPath(after[2]?.json as JsonValue, ['spec', 'initContainers'])), ['meshpipe-init', 'meshpipe-proxy']);
  });

  test('a container on the proxy\'s ports is refused, naming the container and port', async () => {
    const pod = 'apiVersion: v1\nkind: Pod\nmetadata: {name: clash}\nspec:\n  containers:\n  - name: app\n    image: x\n    ports: [{containerPort: 4143}]\n';
    const r = await meshpipe(['inject', '-'], pod);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /Pod clash: spec\.containers\[app\]\.ports: "4143": port 4143 is the proxy's/);
    assert.equal(r.stdout, pod);
  });

  test('enable/disable precedence: pod meshpipe.io > pod linkerd.io > namespace meshpipe.io > namespace linkerd.io', async () => {
    const ns = (ann: string): string => `apiVersion: v1\nkind: Namespace\nmetadata:\n  name: n\n  annotations: {${ann}}\n`;
    const pod = (name: string, ann: string): string => `---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: ${name}\n  namespace: n\n  annotations: {${ann}}\nspec:\n  containers: [{name: app, image: x}]\n`;
    const input = ns('linkerd.io/inject: disabled') + pod('inherits', '') + pod('linkerd-on', 'linkerd.io/inject: enabled')
      + pod('both', 'linkerd.io/inject: enabled, meshpipe.io/inject: disabled');
    const r = await ok(['inject', '-'], input);
    assert.match(r.stderr, /Pod n\/inherits: not injected \(linkerd\.io\/inject=disabled on Namespace n\)/);
    assert.match(r.stderr, /Pod n\/linkerd-on: injected \(linkerd\.io\/inject=enabled on Pod n\/linkerd-on; identity from /);
    assert.match(r.stderr, /Pod n\/both: not injected \(meshpipe\.io\/inject=disabled on Pod n\/both\)/);
    const r2 = await ok(['inject', '-'], ns('meshpipe.io/inject: enabled, linkerd.io/inject: disabled') + pod('p', ''));
    assert.match(r2.stderr, /Pod n\/p: injected \(meshpipe\.io\/inject=enabled on Namespace n; identity from /);
    // Disabling an injected pod and injecting again removes the sidecar.
    const injected = (await ok(['inject', '-'], pod('x', '').slice(4))).stdout;
    assert.match(injected, /annotations: \{ ?meshpipe\.io\/injected: /);
    const disabled = injected.replace('meshpipe.io/injected:', 'meshpipe.io/inject: disabled, meshpipe.io/injected:');
    const r3 = await ok(['inject', '-'], disabled);
    assert.match(r3.stderr, /Pod n\/x: uninjected \(meshpipe\.io\/inject=disabled on Pod n\/x\)/);
    assert.deepEqual(names(getPath(docs(r3.stdout)[0] as JsonObject, ['spec', 'initContainers'])), []);
    assert.deepEqual(getPath(docs(r3.stdout)[0] as JsonObject, ['metadata', 'annotations']), { 'meshpipe.io/inject': 'disabled' });
  });

  test('an injected workload whose annotations changed is brought up to date, never doubled', async () => {
    const once = (await ok(['inject', join(FIXTURES, 'workloads.yaml')])).stdout;
    const changed = once.replace('config.linkerd.io/skip-inbound-ports: "9090"', 'config.linkerd.io/skip-inbound-ports: "9090,9100"');
    const r = await ok(['inject', '-'], changed);
    assert.match(r.stderr, /Deployment shop\/web: updated/);
    const spec = template(find(docs(r.stdout), 'Deployment', 'web'))['spec'] as JsonObject;
    assert.deepEqual(names(spec['initContainers']), ['meshpipe-init', 'meshpipe-proxy', 'migrate']);
    assert.ok((byName(spec['initContainers'], 'meshpipe-init')['command'] as string[]).join(' ').includes('--skip-inbound-ports 9090,9100'));
    assert.deepEqual(names(spec['volumes']), ['meshpipe-podinfo', 'meshpipe-identity', 'meshpipe-xtables-lock']);
  });

  test('--sidecar classic, and the pod annotation overriding it', async () => {
    const input = 'apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: app, image: x}]\n---\n'
      + 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  annotations: {config.linkerd.io/proxy-enable-native-sidecar: "true"}\nspec:\n  containers: [{name: app, image: x}]\n';
    const all = docs((await ok(['inject', '--sidecar', 'classic', '--image', 'reg.example/mp:1', '--init-image', 'reg.example/mp-init:1', '-'], input)).stdout);
    assert.deepEqual(names(getPath(all[0] as JsonObject, ['spec', 'containers'])), ['meshpipe-proxy', 'app']);
    assert.equal(byName(getPath(all[0] as JsonObject, ['spec', 'containers']), 'meshpipe-proxy')['image'], 'reg.example/mp:1');
    assert.equal(byName(getPath(all[0] as JsonObject, ['spec', 'initContainers']), 'meshpipe-init')['image'], 'reg.example/mp-init:1');
    assert.deepEqual(names(getPath(all[1] as JsonObject, ['spec', 'initContainers'])), ['meshpipe-init', 'meshpipe-proxy']);
    assertSchemaValid(all);
  });

  test('--dry-run writes a unified diff of additions only and changes nothing', async () => {
    const r = await ok(['inject', '--dry-run', join(FIXTURES, 'workloads.yaml')]);
    assert.match(r.stdout, /^={10,}\n--- .*workloads\.yaml\n\+\+\+ .*workloads\.yaml \(meshpipe inject\)\n/);
    assert.match(r.stdout, /^\+ {6}- name: meshpipe-init$/m);
    // The identity volume and the proxy's identity flags are part of it.
    assert.match(r.stdout, /^\+ {6}- name: meshpipe-identity\n\+ {8}csi:\n\+ {10}driver: csi\.cert-manager\.io$/m);
    assert.match(r.stdout, /^\+ {8}- --identity-dir\n\+ {8}- \/var\/run\/meshpipe\/identity$/m);
    const removed = r.stdout.split('\n').filter((l) => l.startsWith('-') && !l.startsWith('---'));
    assert.ok(removed.every((l) => /#/.test(l)), `only comment-spacing lines may be replaced:\n${removed.join('\n')}`);
    const none = await ok(['inject', '--dry-run', '-'], (await ok(['inject', join(FIXTURES, 'workloads.yaml')])).stdout);
    assert.equal(none.stdout, '', 'nothing to change: no diff');
  });

  test('bad usage and bad input exit 2 naming the problem', async () => {
    const cases: [string[], string, RegExp][] = [
      [['inject', '--sidecar', 'sometimes', '-'], '', /--sidecar "sometimes" is invalid: expected native or classic/],
      [['inject', '--image', 'a b', '-'], '', /--image "a b" is invalid/],
      [['inject', '--image-pull-policy', 'Maybe', '-'], '', /expected Always, IfNotPresent or Never/],
      [['inject', '-'], 'kind: Pod\nmetadata: {name: a\n', /stdin:\d+: .*not valid YAML/],
      [['inject', '-'], 'a: 1\na: 2\n', /stdin:\d+: document 1 is not valid YAML: Map keys must be unique/],
      [['inject', '/nonexistent/x.yaml'], '', /cannot read \/nonexistent\/x\.yaml/],
      [['inject', 'a.yaml', 'b.yaml'], '', /unexpected argument "b\.yaml"/],
    ];
    for (const [args, input, pattern] of cases) {
      const r = await meshpipe(args, input);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, pattern);
      assert.equal(r.stdout, '', 'nothing is written on bad input');
    }
    const empty = await ok(['inject', '-'], 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n');
    assert.match(empty.stderr, /no pod templates found in stdin; nothing changed/);
  });

  test('the webhook\'s JSONPatch for a pod gives the same pod as the CLI', async () => {
    const input = fixture('workloads.yaml');
    const out = docs((await ok(['inject', '-'], input)).stdout);
    for (const [i, before] of docs(input).entries()) {
      const after = out[i] as JsonObject;
      const ops = diff(before, after);
      assert.deepEqual(applyPatch(before, ops), after, `${JSON.stringify(before['kind'])}: patch does not reproduce the output`);
      // Additions to existing arrays are inserts, never a rewrite of the app's containers.
      assert.ok(!ops.some((o) => o.op === 'replace' && /containers$/.test(o.path)), JSON.stringify(ops.map((o) => `${o.op} ${o.path}`)));
    }
  });
});

/** A Pod in namespace n (service account api) with these annotations, as a YAML document. */
function idPod(name: string, annotations: string): string {
  const ann = annotations === '' ? '' : `  annotations: {${annotations}}\n`;
  return `---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: ${name}\n  namespace: n\n${ann}spec:\n  serviceAccountName: api\n  containers: [{name: app, image: x}]\n`;
}

function idNamespace(annotations: string): string {
  return `apiVersion: v1\nkind: Namespace\nmetadata:\n  name: n\n  annotations: {${annotations}}\n`;
}

/** What the identity put into a pod (or pod template): its volume, the proxy's mount, the proxy's identity flags, the marker. */
function identityOf(podOrTemplate: JsonObject): { volume: JsonObject | undefined; mount: JsonObject | undefined; flags: string[]; marker: JsonValue | undefined } {
  const spec = podOrTemplate['spec'] as JsonObject;
  const proxy = [...((spec['initContainers'] ?? []) as JsonObject[]), ...((spec['containers'] ?? []) as JsonObject[])].find((c) => c['name'] === 'meshpipe-proxy');
  assert.ok(proxy, 'the pod has the proxy');
  const command = proxy['command'] as string[];
  const flags: string[] = [];
  for (const flag of ['--identity-dir', '--trust-domain', '--identity-template']) {
    const i = command.indexOf(flag);
    if (i >= 0) flags.push(flag, command[i + 1] as string);
  }
  return {
    volume: ((spec['volumes'] ?? []) as JsonObject[]).find((v) => v['name'] === 'meshpipe-identity'),
    mount: ((proxy['volumeMounts'] ?? []) as JsonObject[]).find((m) => m['name'] === 'meshpipe-identity'),
    flags,
    marker: getPath(podOrTemplate, ['metadata', 'annotations', 'meshpipe.io/injected-identity']),
  };
}

function csiAttributes(podOrTemplate: JsonObject): Record<string, string> {
  const volume = identityOf(podOrTemplate).volume;
  assert.ok(volume, 'an identity volume');
  assert.deepEqual([getPath(volume, ['csi', 'driver']), getPath(volume, ['csi', 'readOnly'])], ['csi.cert-manager.io', true]);
  return getPath(volume, ['csi', 'volumeAttributes']) as Record<string, string>;
}

/** The certificate's name as the CSI driver expands it for service account api in namespace n. */
function expandCsiName(name: string): string {
  return name.replaceAll('${SERVICE_ACCOUNT_NAME}', 'api').replaceAll('${POD_NAMESPACE}', 'n');
}

const PROXY_IDENTITY_FLAGS = ['--identity-dir', '/var/run/meshpipe/identity', '--trust-domain', 'cluster.local', '--identity-template', '{sa}.{ns}.serviceaccount.identity.linkerd.{trustDomain}'];

describe('the proxy\'s identity', () => {
  test('cert-manager CSI by default, shaped by namespace and pod annotations; idempotent; uninject removes all of it', async () => {
    const input = idNamespace('config.meshpipe.io/identity-issuer: ns-issuer, config.meshpipe.io/identity-duration: 48h') + idPod('inherits', '')
      + idPod('own', 'config.meshpipe.io/identity-issuer: mesh-ca, config.meshpipe.io/identity-issuer-kind: Issuer, config.meshpipe.io/identity-issuer-group: example.io, '
        + 'config.meshpipe.io/identity-duration: 2h, config.meshpipe.io/identity-renew-before: 30m');
    const r = await ok(['inject', '-'], input);
    assert.match(r.stderr, /Pod n\/inherits: injected \(injected by default; identity from csi\.cert-manager\.io, ClusterIssuer ns-issuer\)/);
    assert.match(r.stderr, /Pod n\/own: injected \(injected by default; identity from csi\.cert-manager\.io, Issuer mesh-ca\)/);
    const all = docs(r.stdout);
    assertSchemaValid(all);
    const [inherits, own] = [find(all, 'Pod', 'inherits'), find(all, 'Pod', 'own')];
    assert.deepEqual(csiAttributes(inherits), {
      ...CSI_ATTRIBUTES, 'csi.cert-manager.io/issuer-name': 'ns-issuer', 'csi.cert-manager.io/duration': '48h', 'csi.cert-manager.io/renew-before': '16h',
    });
    assert.deepEqual(csiAttributes(own), {
      ...CSI_ATTRIBUTES, 'csi.cert-manager.io/issuer-name': 'mesh-ca', 'csi.cert-manager.io/issuer-kind': 'Issuer', 'csi.cert-manager.io/issuer-group': 'example.io',
      'csi.cert-manager.io/duration': '2h', 'csi.cert-manager.io/renew-before': '30m',
    });
    for (const p of [inherits, own]) {
      const id = identityOf(p);
      assert.deepEqual(id.flags, PROXY_IDENTITY_FLAGS);
      assert.deepEqual(id.mount, { name: 'meshpipe-identity', mountPath: '/var/run/meshpipe/identity', readOnly: true });
      assert.equal(id.marker, 'cert-manager-csi');
    }
    // The name the driver will put in the certificate is the identity the proxy's flags derive for this pod.
    assert.equal(expandCsiName(csiAttributes(own)['csi.cert-manager.io/dns-names'] as string), renderIdentity(PROXY_IDENTITY_FLAGS[5] as string, 'api', 'n', 'cluster.local'));

    const twice = await ok(['inject', '-'], r.stdout);
    assert.equal(twice.stdout, r.stdout, 'injecting again changes nothing');
    const restored = await ok(['uninject', '-'], r.stdout);
    assert.deepEqual(docs(restored.stdout), docs(input), 'uninject removes the volume, the mount, the flags and the marker');
    assert.doesNotMatch(restored.stdout, /identity-dir|meshpipe-identity|injected-identity/);
  });

  test('config.meshpipe.io/identity-secret: a Secret volume (tls.crt, tls.key, ca.crt) instead of the CSI driver', async () => {
    const input = idNamespace('config.meshpipe.io/identity: disabled') + idPod('from-secret', 'config.meshpipe.io/identity-secret: api-identity')
      + idPod('inherits-off', '');
    const r = await ok(['inject', '-'], input);
    assert.match(r.stderr, /Pod n\/from-secret: injected \(injected by default; identity from Secret api-identity\)/);
    const all = docs(r.stdout);
    assertSchemaValid(all);
    const id = identityOf(find(all, 'Pod', 'from-secret'));
    assert.deepEqual(id.volume, {
      name: 'meshpipe-identity',
      secret: { secretName: 'api-identity', items: [{ key: 'tls.crt', path: 'tls.crt' }, { key: 'tls.key', path: 'tls.key' }, { key: 'ca.crt', path: 'ca.crt' }] },
    });
    assert.deepEqual(id.flags, PROXY_IDENTITY_FLAGS);
    assert.equal(id.marker, 'secret');
    assert.equal(identityOf(find(all, 'Pod', 'inherits-off')).marker, 'none', 'the namespace\'s disabled applies to pods that say nothing');

    // A namespace-wide Secret, and a pod that opts out of it: the pod's own key wins.
    const r2 = await ok(['inject', '-'], idNamespace('config.meshpipe.io/identity-secret: shared') + idPod('a', '') + idPod('b', 'config.meshpipe.io/identity: disabled'));
    assert.equal(getPath(identityOf(find(docs(r2.stdout), 'Pod', 'a')).volume as JsonObject, ['secret', 'secretName']), 'shared');
    assert.equal(identityOf(find(docs(r2.stdout), 'Pod', 'b')).volume, undefined);

    // Switching an injected pod from the CSI driver to a Secret replaces the volume; it is never doubled.
    const csi = (await ok(['inject', '-'], idPod('switch', 'meshpipe.io/inject: enabled').slice(4))).stdout;
    const switched = await ok(['inject', '-'], csi.replace('meshpipe.io/inject: enabled', 'meshpipe.io/inject: enabled, config.meshpipe.io/identity-secret: switch-identity'));
    assert.match(switched.stderr, /Pod n\/switch: updated/);
    const spec = docs(switched.stdout)[0]?.['spec'] as JsonObject;
    assert.deepEqual(names(spec['volumes']), ['meshpipe-podinfo', 'meshpipe-identity', 'meshpipe-xtables-lock']);
    assert.equal(getPath(byName(spec['volumes'], 'meshpipe-identity'), ['secret', 'secretName']), 'switch-identity');
  });

  test('disabled (pod or namespace annotation, or --identity disabled): a plaintext sidecar, no volume, no flags', async () => {
    const r = await ok(['inject', '-'], idPod('plain', 'config.meshpipe.io/identity: disabled').slice(4));
    assert.match(r.stderr, /Pod n\/plain: injected \(injected by default; no identity\)/);
    const pod = docs(r.stdout)[0] as JsonObject;
    assertSchemaValid([pod]);
    const id = identityOf(pod);
    assert.deepEqual([id.volume, id.mount, id.flags, id.marker], [undefined, undefined, [], 'none']);
    assert.deepEqual(names(getPath(pod, ['spec', 'volumes'])), ['meshpipe-podinfo', 'meshpipe-xtables-lock']);
    assert.deepEqual(docs((await ok(['uninject', '-'], r.stdout)).stdout), docs(idPod('plain', 'config.meshpipe.io/identity: disabled').slice(4)));

    // Cluster-wide off; a pod (or its namespace) can still ask for one.
    const off = await ok(['inject', '--identity', 'disabled', '-'], idPod('a', '') + idPod('b', 'config.meshpipe.io/identity: enabled'));
    const all = docs(off.stdout);
    assert.equal(identityOf(find(all, 'Pod', 'a')).marker, 'none');
    assert.deepEqual(csiAttributes(find(all, 'Pod', 'b')), CSI_ATTRIBUTES);
  });

  test('invalid identity annotations: named with object, key and value; that object unchanged; the others injected; exit 2', async () => {
    const bad: [string, string, string][] = [
      ['mode', 'config.meshpipe.io/identity: "off"', 'annotation config.meshpipe.io/identity: "off": expected "enabled" or "disabled"'],
      ['secret', 'config.meshpipe.io/identity-secret: Web_Identity', 'annotation config.meshpipe.io/identity-secret: "Web_Identity": expected a Kubernetes object name'],
      ['issuer', 'config.meshpipe.io/identity-issuer: "my issuer"', 'annotation config.meshpipe.io/identity-issuer: "my issuer": expected a Kubernetes object name'],
      ['kind', 'config.meshpipe.io/identity-issuer-kind: cluster-issuer', 'annotation config.meshpipe.io/identity-issuer-kind: "cluster-issuer": expected a Kind such as ClusterIssuer or Issuer'],
      ['group', 'config.meshpipe.io/identity-issuer-group: certmanager', 'annotation config.meshpipe.io/identity-issuer-group: "certmanager": expected an API group such as cert-manager.io'],
      ['short', 'config.meshpipe.io/identity-duration: 30m', 'annotation config.meshpipe.io/identity-duration: "30m": "30m" is shorter than 1h'],
      ['unit', 'config.meshpipe.io/identity-duration: "24"', 'annotation config.meshpipe.io/identity-duration: "24": a number without a unit: write the unit'],
      ['renew', 'config.meshpipe.io/identity-duration: 2h, config.meshpipe.io/identity-renew-before: 2h', 'annotation config.meshpipe.io/identity-renew-before: "2h": "2h" is not shorter than the certificate\'s lifetime 2h'],
      ['renew-min', 'config.meshpipe.io/identity-renew-before: 1m', 'annotation config.meshpipe.io/identity-renew-before: "1m": "1m" is shorter than 5m'],
    ];
    const input = bad.map(([name, ann]) => idPod(name, ann)).join('') + idPod('good', '');
    const r = await meshpipe(['inject', '-'], input);
    assert.equal(r.code, 2, r.stderr);
    for (const [name, , message] of bad) {
      assert.ok(r.stderr.includes(`warning: Pod n/${name}: invalid (left unchanged)\n  Pod n/${name}: ${message}`), `missing for ${name}: ${message}\n${r.stderr}`);
    }
    const before = parseStream(input, 'in').documents;
    const after = parseStream(r.stdout, 'out').documents;
    for (const [i] of bad.entries()) assert.equal(after[i]?.text, before[i]?.text, `${bad[i]?.[0]}: written back unchanged`);
    assert.match(r.stderr, /Pod n\/good: injected/);

    // Inherited from the namespace: the Namespace is named, and the pod that inherited it.
    const ns = await meshpipe(['inject', '-'], idNamespace('config.meshpipe.io/identity: sometimes') + idPod('x', ''));
    assert.equal(ns.code, 2);
    assert.match(ns.stderr, /Namespace n: annotation config\.meshpipe\.io\/identity: "sometimes": expected "enabled" or "disabled" \(inherited by Pod n\/x\)/);
  });

  test('--trust-domain and --identity-template: the certificate\'s name and the proxy\'s flags agree; SPIFFE is a URI SAN; bad flags exit 2', async () => {
    for (const [args, sanKey] of [
      [['--trust-domain', 'example.org'], 'csi.cert-manager.io/dns-names'],
      [['--trust-domain', 'example.org', '--identity-template', 'spiffe://{trustDomain}/ns/{ns}/sa/{sa}'], 'csi.cert-manager.io/uri-sans'],
    ] as const) {
      const pod = docs((await ok(['inject', ...args, '--identity-issuer', 'corp-ca', '--identity-issuer-kind', 'Issuer', '--identity-duration', '12h', '--identity-renew-before', '1h', '-'], idPod('p', '').slice(4))).stdout)[0] as JsonObject;
      assertSchemaValid([pod]);
      const attrs = csiAttributes(pod);
      const flags = identityOf(pod).flags;
      const [template, trustDomain] = [flags[flags.indexOf('--identity-template') + 1] as string, flags[flags.indexOf('--trust-domain') + 1] as string];
      assert.equal(trustDomain, 'example.org');
      assert.equal(expandCsiName(attrs[sanKey] as string), renderIdentity(template, 'api', 'n', trustDomain), `${args.join(' ')}: the SAN is the identity the proxy's peers expect`);
      assert.equal(Object.keys(attrs).filter((k) => /sans|dns-names/.test(k)).length, 1, 'one kind of SAN');
      assert.deepEqual([attrs['csi.cert-manager.io/issuer-name'], attrs['csi.cert-manager.io/issuer-kind'], attrs['csi.cert-manager.io/duration'], attrs['csi.cert-manager.io/renew-before']], ['corp-ca', 'Issuer', '12h', '1h']);
    }
    // A pod's lifetime shorter than the cluster-wide renew-before is named, not silently adjusted.
    const short = await meshpipe(['inject', '--identity-renew-before', '3h', '-'], idPod('p', 'config.meshpipe.io/identity-duration: 2h').slice(4));
    assert.equal(short.code, 2);
    assert.match(short.stderr, /Pod n\/p: annotation config\.meshpipe\.io\/identity-duration: "2h": not longer than the injector's --identity-renew-before 3h: set config\.meshpipe\.io\/identity-renew-before too/);

    for (const [args, pattern] of [
      [['--identity', 'maybe'], /--identity "maybe" is invalid: expected enabled or disabled/],
      [['--trust-domain', 'Bad_Domain'], /--trust-domain \/ --identity-template: trust domain "Bad_Domain": expected a DNS name/],
      [['--identity-template', '{sa}.identity.{trustDomain}'], /--trust-domain \/ --identity-template: identity template "\{sa\}\.identity\.\{trustDomain\}": the template needs \{sa\} and \{ns\}/],
      [['--identity-duration', '10m'], /--identity-duration "10m" is invalid: "10m" is shorter than 1h/],
      // The value is named once: not '"x" is invalid: invalid duration "x"'.
      [['--identity-duration', 'invalid'], /--identity-duration "invalid" is invalid: expected a number with a unit \(ms, s, m, h, d\)/],
      // A quote inside the value does not cut the message short.
      [['--identity-duration', '1"h'], /--identity-duration "1"h" is invalid: expected a number with a unit \(ms, s, m, h, d\)/],
      [['--identity-duration', '36'], /--identity-duration "36" is invalid: a number without a unit: write the unit: 36s/],
      [['--identity-renew-before', '24h'], /--identity-renew-before "24h" is invalid: "24h" is not shorter than the certificate's lifetime 24h/],
      [['--identity-issuer-kind', 'issuer'], /--identity-issuer-kind "issuer" is invalid: expected a Kind/],
    ] as const) {
      const r = await meshpipe(['inject', ...args, '-'], idPod('p', '').slice(4));
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, pattern);
      assert.equal(r.stdout, '');
    }
    const help = (await ok(['inject', '--help'])).stdout;
    for (const flag of ['--identity ', '--identity-issuer ', '--identity-issuer-kind ', '--identity-issuer-group ', '--identity-duration ', '--identity-renew-before ', '--trust-domain ', '--identity-template ']) {
      assert.ok(help.includes(flag), `inject --help lists ${flag}`);
    }
  });
});

/** The proxy container of a pod (or pod template). */
function proxyOf(podOrTemplate: JsonObject): JsonObject {
  const spec = podOrTemplate['spec'] as JsonObject;
  const proxy = [...((spec['initContainers'] ?? []) as JsonObject[]), ...((spec['containers'] ?? []) as JsonObject[])].find((c) => c['name'] === 'meshpipe-proxy');
  assert.ok(proxy, 'the pod has the proxy');
  return proxy;
}

function watchesApi(podOrTemplate: JsonObject): boolean {
  return (proxyOf(podOrTemplate)['command'] as string[]).includes('--kube');
}

/** A Pod in namespace n with these annotations and, when given, spec.automountServiceAccountToken. */
function kubePod(name: string, annotations: string, automount?: boolean): string {
  const doc = idPod(name, annotations);
  return automount === undefined ? doc : doc.replace('  serviceAccountName: api\n', `  serviceAccountName: api\n  automountServiceAccountToken: ${automount}\n`);
}

describe('the proxy\'s Kubernetes API watch', () => {
  test('--kube by default; config.meshpipe.io/kube-watch: disabled (pod or namespace) and --kube-watch disabled leave it out; the pod\'s own key wins', async () => {
    const input = idNamespace('config.meshpipe.io/kube-watch: disabled') + kubePod('inherits-off', '') + kubePod('own-on', 'config.meshpipe.io/kube-watch: enabled');
    const r = await ok(['inject', '-'], input);
    const all = docs(r.stdout);
    assertSchemaValid(all);
    assert.equal(watchesApi(find(all, 'Pod', 'inherits-off')), false, 'the namespace\'s disabled applies to a pod that says nothing');
    assert.equal(watchesApi(find(all, 'Pod', 'own-on')), true, 'the pod\'s own enabled wins');
    assert.doesNotMatch(r.stderr, /warning/);
    // Without annotations: on, and nothing else about the pod changes for it (no token setting, no extra volume).
    const plain = docs((await ok(['inject', '-'], kubePod('plain', '').slice(4))).stdout)[0] as JsonObject;
    assert.equal(watchesApi(plain), true);
    assert.equal(getPath(plain, ['spec', 'automountServiceAccountToken']), undefined);
    assert.deepEqual(names(getPath(plain, ['spec', 'volumes'])), ['meshpipe-podinfo', 'meshpipe-identity', 'meshpipe-xtables-lock']);
    // A pod that asks for the token explicitly keeps it, and gets the watch.
    const explicit = docs((await ok(['inject', '-'], kubePod('explicit', '', true).slice(4))).stdout)[0] as JsonObject;
    assert.deepEqual([watchesApi(explicit), getPath(explicit, ['spec', 'automountServiceAccountToken'])], [true, true]);

    // Cluster-wide off; a pod can still ask for it.
    const off = docs((await ok(['inject', '--kube-watch', 'disabled', '-'], kubePod('a', '') + kubePod('b', 'config.meshpipe.io/kube-watch: enabled'))).stdout);
    assert.deepEqual([watchesApi(find(off, 'Pod', 'a')), watchesApi(find(off, 'Pod', 'b'))], [false, true]);

    // Switching it on an injected pod updates the proxy; uninject removes all of it.
    const switched = await ok(['inject', '-'], r.stdout.replace('config.meshpipe.io/kube-watch: disabled', 'config.meshpipe.io/kube-watch: enabled'));
    assert.match(switched.stderr, /Pod n\/inherits-off: updated/);
    assert.equal(watchesApi(find(docs(switched.stdout), 'Pod', 'inherits-off')), true);
    assert.deepEqual(docs((await ok(['uninject', '-'], r.stdout)).stdout), docs(input));
  });

  test('a pod with automountServiceAccountToken: false is injected without --kube, with a warning naming why; an explicit disabled is silent', async () => {
    const input = kubePod('no-token', '', false) + kubePod('no-token-quiet', 'config.meshpipe.io/kube-watch: disabled', false);
    const r = await ok(['inject', '-'], input);
    const all = docs(r.stdout);
    assertSchemaValid(all);
    const noToken = find(all, 'Pod', 'no-token');
    assert.equal(watchesApi(noToken), false, 'a proxy with --kube and no token would not start');
    assert.equal(getPath(noToken, ['spec', 'automountServiceAccountToken']), false, 'the pod\'s choice is kept');
    assert.deepEqual(names(getPath(noToken, ['spec', 'initContainers'])), ['meshpipe-init', 'meshpipe-proxy'], 'still injected: the rest of the sidecar works');
    const lines = r.stderr.trim().split('\n');
    assert.deepEqual(lines.slice(0, 2), [
      'meshpipe inject: warning: Pod n/no-token: injected (injected by default; identity from csi.cert-manager.io, ClusterIssuer meshpipe-identity-issuer)',
      '  Pod n/no-token: spec.automountServiceAccountToken: "false": no API token for the proxy, so it runs without --kube (no outbound mTLS, no other workloads\' policy): '
        + 'set it to true, or annotate config.meshpipe.io/kube-watch: disabled',
    ]);
    assert.match(lines[2] ?? '', /^meshpipe inject: Pod n\/no-token-quiet: injected /);
    assert.equal(lines.length, 3, r.stderr);
    assert.equal(watchesApi(find(all, 'Pod', 'no-token-quiet')), false);
    // Injecting again changes nothing and says so again (the warning is about the pod, not about this run).
    const again = await ok(['inject', '-'], r.stdout);
    assert.equal(again.stdout, r.stdout);
    assert.match(again.stderr, /warning: Pod n\/no-token: unchanged \(already injected as planned\)\n {2}Pod n\/no-token: spec\.automountServiceAccountToken: "false"/);
  });

  test('bad values: the annotation is named with object and value (object unchanged, exit 2); a bad --kube-watch exits 2', async () => {
    const input = kubePod('bad', 'config.meshpipe.io/kube-watch: "yes"') + kubePod('good', '');
    const r = await meshpipe(['inject', '-'], input);
    assert.equal(r.code, 2, r.stderr);
    assert.ok(r.stderr.includes('warning: Pod n/bad: invalid (left unchanged)\n  Pod n/bad: annotation config.meshpipe.io/kube-watch: "yes": expected "enabled" or "disabled"'), r.stderr);
    assert.equal(parseStream(r.stdout, 'out').documents[0]?.text, parseStream(input, 'in').documents[0]?.text);
    assert.match(r.stderr, /Pod n\/good: injected/);
    const flag = await meshpipe(['inject', '--kube-watch', 'on', '-'], kubePod('p', '').slice(4));
    assert.equal(flag.code, 2);
    assert.match(flag.stderr, /--kube-watch "on" is invalid: expected enabled or disabled/);
    assert.equal(flag.stdout, '');
    assert.match((await ok(['inject', '--help'])).stdout, /--kube-watch enabled\|disabled/);
  });
});

describe('the proxy RBAC manifest', () => {
  test(`${PROXY_RBAC_MANIFEST}: schema-valid; read-only (list/watch); exactly the resources the watch lists; bound cluster-wide to every service account`, () => {
    const objects = docs(readFileSync(join(ROOT, PROXY_RBAC_MANIFEST), 'utf8'));
    assertSchemaValid(objects);
    assert.deepEqual(objects.map((o) => o['kind']), ['ClusterRole', 'ClusterRoleBinding']);
    const [role, binding] = objects as [JsonObject, JsonObject];
    const rules = role['rules'] as JsonObject[];
    const granted = new Map<string, Set<string>>();
    for (const rule of rules) {
      assert.deepEqual(Object.keys(rule).sort(), ['apiGroups', 'resources', 'verbs'], `no resourceNames, nonResourceURLs: ${JSON.stringify(rule)}`);
      const verbs = rule['verbs'] as string[];
      assert.ok(verbs.every((v) => ['get', 'list', 'watch'].includes(v)), `read-only verbs only: ${JSON.stringify(rule)}`);
      for (const group of rule['apiGroups'] as string[]) {
        for (const resource of rule['resources'] as string[]) {
          assert.ok(!group.includes('*') && !resource.includes('*'), `no wildcards: ${JSON.stringify(rule)}`);
          assert.ok(!['secrets', 'configmaps'].includes(resource), `nothing the watch does not read: ${resource}`);
          const key = `${resource}.${group}`;
          granted.set(key, new Set([...(granted.get(key) ?? []), ...verbs]));
        }
      }
    }
    // What the watch lists, from the table its reflectors are built from (a proxy that knows its pod: controllers too).
    const watched = watchedKinds({ controllersNamespace: 'any' });
    const needed = new Set(watched.map((k) => `${k.resource}.${k.group}`));
    assert.deepEqual([...granted.keys()].sort(), [...needed].sort(), 'exactly the watched resources');
    for (const k of watched) {
      const verbs = granted.get(`${k.resource}.${k.group}`);
      assert.ok(verbs?.has('list') && verbs.has('watch'), `${k.kind}: list and watch of ${k.resource} in group "${k.group}"`);
    }
    // Cluster-wide lists need a ClusterRoleBinding (a RoleBinding grants one namespace).
    assert.ok(watched.some((k) => k.namespace === undefined));
    assert.deepEqual(binding['roleRef'], { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: getPath(role, ['metadata', 'name']) as string });
    assert.deepEqual(binding['subjects'], [{ kind: 'Group', apiGroup: 'rbac.authorization.k8s.io', name: 'system:serviceaccounts' }]);
  });
});

describe('the identity issuer manifest', () => {
  test('deploy/kubernetes/identity-issuer.yaml: schema-valid, the issuer the injected CSI volumes and deploy/kubernetes/injector.yaml name', () => {
    const issuer = docs(readFileSync(join(ROOT, 'deploy/kubernetes/identity-issuer.yaml'), 'utf8'));
    assertSchemaValid(issuer);
    assert.deepEqual(issuer.map((o) => [o['kind'], getPath(o, ['metadata', 'name'])]), [[CSI_ATTRIBUTES['csi.cert-manager.io/issuer-kind'], CSI_ATTRIBUTES['csi.cert-manager.io/issuer-name']]]);
    assert.equal(getPath(issuer[0] as JsonObject, ['spec', 'ca', 'secretName']), 'meshpipe-identity-issuer');
    const injector = docs(readFileSync(join(ROOT, 'deploy/kubernetes/injector.yaml'), 'utf8')).find((o) => o['kind'] === 'Deployment') as JsonObject;
    const command = getPath(injector, ['spec', 'template', 'spec', 'containers', '0', 'command']) as string[];
    assert.equal(command[command.indexOf('--identity-issuer') + 1], CSI_ATTRIBUTES['csi.cert-manager.io/issuer-name']);
  });
});

describe('injection building blocks', () => {
  test('JSON Pointer escaping (RFC 6901) and quantities', () => {
    assert.equal(pointer(['metadata', 'annotations', 'meshpipe.io/injected', 'a~b']), '/metadata/annotations/meshpipe.io~1injected/a~0b');
    const patched = applyPatch({ metadata: { annotations: {} } }, [{ op: 'add', path: '/metadata/annotations/meshpipe.io~1injected', value: '1' }]);
    assert.deepEqual(patched, { metadata: { annotations: { 'meshpipe.io/injected': '1' } } });
    for (const [q, v] of [['100m', 0.1], ['0.5', 0.5], ['64Mi', 64 * 2 ** 20], ['1G', 1e9], ['1e3', 1000], ['.5', 0.5]] as const) {
      assert.deepEqual(parseQuantity(q), { value: v }, q);
    }
    for (const q of ['', '-1', '1x', '1 Gi', 'Mi', '1.2.3', '1Gi5']) assert.ok('error' in parseQuantity(q), q);
  });

  test('the YAML in the README\'s example is what inject prints', () => {
    // Guards the README snippet against drift from the sidecar builder.
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const block = /<!-- inject-example -->\n```yaml\n([\s\S]*?)```/.exec(readme);
    assert.ok(block, 'README has the inject example block');
    const shown = parseYaml(block[1] as string) as JsonObject;
    const all = docs(fixture('workloads.injected.yaml'));
    const proxy = byName(getPath(template(find(all, 'Deployment', 'web')), ['spec', 'initContainers']), 'meshpipe-proxy');
    assert.deepEqual(shown['command'], proxy['command']);
  });
});
