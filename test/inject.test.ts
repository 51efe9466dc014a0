/**
 * `meshpipe inject` and `meshpipe uninject` through the real CLI: golden
 * files for every injectable kind (and a JSON List from stdin), validation of
 * every object written against the Kubernetes OpenAPI schemas
 * (test/k8s-schema.ts), other documents byte for byte, idempotence, uninject
 * restoring the original, namespace inheritance and precedence of the
 * enable/disable annotations, invalid annotations reported with object and key
 * (that object unchanged, exit 2), re-injection after an annotation change,
 * --dry-run, and the JSONPatch the webhook would send giving the same pod.
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
      'meshpipe inject: Deployment shop/web: injected (injected by default)',
      'meshpipe inject: StatefulSet shop/cache: injected (injected by default)',
      "meshpipe inject: warning: DaemonSet shop/node-agent: not injected (the pod uses the host's network (hostNetwork: true): meshpipe init would rewrite the node's iptables)",
      'meshpipe inject: ReplicaSet shop/legacy: not injected (meshpipe.io/inject=disabled on ReplicaSet shop/legacy)',
      'meshpipe inject: Job shop/report: injected (injected by default)',
      'meshpipe inject: CronJob shop/nightly: injected (injected by default)',
      'meshpipe inject: Pod other/debug: injected (injected by default)',
    ]);
  });

  test('what is added: init with NET_ADMIN/NET_RAW only, native sidecar proxy as uid 2102 with probes, podinfo, POD_IPS, resources, drain', async () => {
    const all = docs((await ok(['inject', join(FIXTURES, 'workloads.yaml')])).stdout);
    const web = template(find(all, 'Deployment', 'web'));
    const spec = web['spec'] as JsonObject;
    assert.deepEqual(names(spec['initContainers']), ['meshpipe-init', 'meshpipe-proxy', 'migrate'], 'init first, then the native sidecar, then the app\'s init containers');
    assert.deepEqual(names(spec['containers']), ['app']);
    assert.deepEqual(names(spec['volumes']), ['meshpipe-podinfo', 'meshpipe-xtables-lock']);

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
      '--annotations', '/var/run/meshpipe/podinfo/annotations', '--drain-timeout', '20s', // the pod's grace period
    ]);
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
    assert.match(r.stderr, /Pod n\/linkerd-on: injected \(linkerd\.io\/inject=enabled on Pod n\/linkerd-on\)/);
    assert.match(r.stderr, /Pod n\/both: not injected \(meshpipe\.io\/inject=disabled on Pod n\/both\)/);
    const r2 = await ok(['inject', '-'], ns('meshpipe.io/inject: enabled, linkerd.io/inject: disabled') + pod('p', ''));
    assert.match(r2.stderr, /Pod n\/p: injected \(meshpipe\.io\/inject=enabled on Namespace n\)/);
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
    assert.deepEqual(names(spec['volumes']), ['meshpipe-podinfo', 'meshpipe-xtables-lock']);
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
