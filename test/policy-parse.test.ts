/**
 * Parsing tests for the policy inputs: the downward-API file format (Go
 * escapes, malformed lines with line numbers, valid lines still applying),
 * manifest loading (multi-document files, folders, List wrappers, unknown
 * kinds counted, YAML that does not parse named by file and document), and
 * every bad annotation token of issue 4, each reported with the object, the
 * annotation and the token while the valid entries of the same list apply.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatDownwardApi, parseDownwardApi, quoteGo, unquoteGo } from '../ts/policy/downward-api.js';
import { loadManifests, parseManifestText } from '../ts/policy/k8s/manifests.js';
import { cidrContains, hostCidr, isCidrError, parseCidr } from '../ts/policy/cidr.js';
import { compileFixtures, fixture } from './policy-helpers.js';

test('downward API: plain values, sorted keys, and Go escapes', () => {
  const text = [
    'app.kubernetes.io/name="mysql"',
    'config.linkerd.io/opaque-ports="3306,mysql"',
    'desc="quote \\" backslash \\\\ newline \\n tab \\t"',
    'hex="\\x41\\x42"',
    'utf8-bytes="\\xc3\\xa9t\\xc3\\xa9"',
    'unicode="\\u00e9\\U0001F600"',
    'octal="\\101\\102"',
    'bell="\\a\\b\\f\\r\\v"',
    'empty=""',
    '',
  ].join('\n');
  const r = parseDownwardApi(text);
  assert.deepEqual(r.errors, []);
  assert.equal(r.values.get('config.linkerd.io/opaque-ports'), '3306,mysql');
  assert.equal(r.values.get('desc'), 'quote " backslash \\ newline \n tab \t');
  assert.equal(r.values.get('hex'), 'AB');
  assert.equal(r.values.get('utf8-bytes'), 'été');
  assert.equal(r.values.get('unicode'), 'é😀');
  assert.equal(r.values.get('octal'), 'AB');
  assert.equal(r.values.get('bell'), '\x07\b\f\r\v');
  assert.equal(r.values.get('empty'), '');
  assert.equal(r.values.size, 9);
});

test('downward API: quoteGo and parse round-trip, and the kubelet layout (sorted keys)', () => {
  const values = new Map([['z', 'a"b\\c\nd\te\u0001'], ['a.b/c', 'plain'], ['m', 'ünï😀']]);
  const text = formatDownwardApi(values);
  assert.equal(text.split('\n')[0], 'a.b/c="plain"');
  const back = parseDownwardApi(text);
  assert.deepEqual(back.errors, []);
  assert.deepEqual(new Map([...back.values].sort()), new Map([...values].sort()));
  assert.equal(quoteGo('x"y'), '"x\\"y"');
});

test('downward API: each malformed line is reported with its number and problem; valid lines apply', () => {
  const text = [
    'good="1"',
    'no-equals-sign',
    'unquoted=3306',
    'unterminated="abc',
    'badescape="\\q"',
    'shorthex="\\x4"',
    'surrogate="\\ud800"',
    'escapedquote="abc\\"',
    'inner="a"b"',
    '="novalue"',
    'bad key="x"',
    'good2="2"',
    'good="3"',
  ].join('\n');
  const r = parseDownwardApi(text);
  assert.equal(r.values.get('good'), '3', 'a duplicate key: the later line wins, visibly');
  assert.equal(r.values.get('good2'), '2');
  assert.equal(r.values.size, 2);
  const byLine = new Map(r.errors.map((e) => [e.line, e.message]));
  assert.match(byLine.get(2) ?? '', /^line 2: expected key="value" but found no "="/);
  assert.match(byLine.get(3) ?? '', /^line 3: value of unquoted is not quoted/);
  assert.match(byLine.get(4) ?? '', /^line 4: value of unterminated has no closing quote/);
  assert.match(byLine.get(5) ?? '', /^line 5: value of badescape: unknown escape \\q/);
  assert.match(byLine.get(6) ?? '', /^line 6: value of shorthex: bad escape \\x4"?: expected 2 hex digits/);
  assert.match(byLine.get(7) ?? '', /not a valid Unicode code point/);
  assert.match(byLine.get(8) ?? '', /the last quote is escaped/);
  assert.match(byLine.get(9) ?? '', /unescaped " at column 2/);
  assert.match(byLine.get(10) ?? '', /empty key/);
  assert.match(byLine.get(11) ?? '', /invalid key "bad key"/);
  assert.match(byLine.get(13) ?? '', /duplicate key good \(first on line 1\)/);
  assert.equal(r.errors.find((e) => e.line === 3)?.key, 'unquoted', 'the key is known so callers can keep its last good value');
  assert.ok('error' in unquoteGo('\\'));
});

test('manifests: a folder is walked recursively; a broken document is named by file and index; others still load', async () => {
  const m = await loadManifests([fixture('broken-folder')]);
  const names = m.namespaces.map((n) => n.name).sort();
  assert.deepEqual(names, ['fine', 'from-json', 'ok-after', 'ok-before']);
  assert.equal(m.ignored, 1, 'the Secret inside the List is ignored and counted; README.txt is not read');
  assert.equal(m.problems.length, 1);
  const p = m.problems[0];
  assert.ok(p);
  assert.equal(p.document, 1);
  assert.ok(p.file?.endsWith('broken-folder/nested/broken.yaml'));
  assert.match(p.message, /broken\.yaml document 1: YAML does not parse \(line \d+, column \d+\)/);
});

test('manifests: kinds, pod templates, Service ports and Server fields are read', async () => {
  const m = await loadManifests([fixture('basic.yaml'), fixture('servers.yaml'), fixture('namespace-inherit.yaml')]);
  assert.equal(m.ignored, 1, 'the ConfigMap');
  const svc = m.services.find((s) => s.name === 'mysql');
  assert.deepEqual(svc?.ports.map((p) => [p.name, p.port, p.targetPort, p.appProtocol]), [['mysql', 3306, 'mysql', undefined], ['http', 80, 8080, 'http']]);
  assert.deepEqual(svc?.clusterIPs, ['10.96.0.10']);
  const cron = m.workloads.find((w) => w.kind === 'CronJob');
  assert.equal(cron?.annotations['config.linkerd.io/skip-outbound-ports'], '25,587');
  assert.deepEqual(cron?.containerPorts.map((p) => p.port), [8125]);
  const pod = m.workloads.find((w) => w.kind === 'Pod');
  assert.deepEqual(pod?.podIPs, ['10.244.1.5']);
  const server = m.servers.find((s) => s.name === 'api-http');
  assert.equal(server?.port, 'http');
  assert.equal(server?.createdAt, Date.parse('2024-01-01T00:00:00Z'));
  assert.equal(m.servers.find((s) => s.name === 'b-admin')?.matchExpressions[0]?.operator, 'In');
});

test('manifests: text that is not YAML at all, and a file that does not exist', async () => {
  const r = parseManifestText('x.yaml', 'kind: [\n');
  assert.equal(r.parsed, false);
  assert.match(r.problems[0]?.message ?? '', /^x\.yaml document 0: YAML does not parse/);
  const m = await loadManifests(['/nonexistent/meshpipe-manifests']);
  assert.match(m.problems[0]?.message ?? '', /\/nonexistent\/meshpipe-manifests: cannot read manifests: ENOENT/);
});

test('every bad token is reported with object, annotation and token; valid entries still apply', async () => {
  const c = await compileFixtures(['bad.yaml'], 'bad/app-1');
  const messages = c.result.problems.map((p) => p.message);
  const expect = (object: string, annotation: string, token: string, reason: RegExp): void => {
    const hit = c.result.problems.find((p) =>
      p.object !== undefined && `${p.object.kind} ${p.object.namespace ? `${p.object.namespace}/` : ''}${p.object.name}` === object
      && p.annotation === annotation && p.token === token);
    assert.ok(hit, `expected a problem for ${object} ${annotation} "${token}" in:\n${messages.join('\n')}`);
    assert.match(hit.reason, reason);
    assert.ok(hit.message.includes(object) && hit.message.includes(annotation) && hit.message.includes(`"${token}"`), hit.message);
  };
  const OP = 'config.linkerd.io/opaque-ports';
  expect('Deployment bad/app', OP, '7000-6000', /6000 is lower than 7000/);
  expect('Deployment bad/app', OP, '0', /out of range/);
  expect('Deployment bad/app', OP, '70000', /out of range/);
  expect('Deployment bad/app', OP, '', /empty entry/);
  expect('Deployment bad/app', OP, 'x', /unknown port name "x".*known names: http=80/);
  expect('Deployment bad/app', 'config.linkerd.io/skip-inbound-ports', 'abc', /expected a port 1-65535 or a range/);
  expect('Deployment bad/app', 'config.linkerd.io/skip-subnets', '10.0.0.0/33', /prefix length "33" is invalid/);
  expect('Deployment bad/app', 'config.linkerd.io/skip-subnets', 'nonsense', /not an IPv4 or IPv6 address/);
  expect('Deployment bad/app', 'config.linkerd.io/enable-external-profiles', 'yes', /expected true or false/);
  expect('Service bad/svc', OP, 'nope', /unknown port name "nope".*web=80/);
  expect('Namespace bad', OP, '1-2-3', /invalid range/);
  expect('Server bad/weird', 'spec.proxyProtocol', 'SMTP', /expected one of unknown, HTTP\/1/);
  // Valid entries of the same lists still apply, and nothing is widened.
  assert.equal(c.lookup('inbound', '10.0.0.1', 80).mode, 'opaque');
  assert.equal(c.lookup('inbound', '10.0.0.1', 3306).mode, 'opaque');
  for (const port of [6000, 6500, 7000, 65535]) assert.equal(c.lookup('inbound', '10.0.0.1', port).mode, 'detect', `port ${port}`);
  assert.equal(c.lookup('inbound', '10.0.0.1', 4190).source.startsWith('skip:'), true);
  assert.deepEqual(c.result.effective.skipSubnets, ['192.168.0.0/16']);
  assert.equal(c.result.effective.enableExternalProfiles.enabled, false);
  assert.equal(c.lookup('outbound', '10.96.9.9', 80).mode, 'opaque', 'the Service keeps its valid entry 80');
});

test('CIDRs: canonical form, containment, host networks, errors', () => {
  const c = parseCidr('10.1.2.3/8');
  assert.ok(!isCidrError(c));
  assert.equal(c.text, '10.0.0.0/8');
  assert.ok(cidrContains(c, '10.255.0.1'));
  assert.ok(cidrContains(c, '::ffff:10.0.0.1'), 'IPv4-mapped IPv6');
  assert.ok(!cidrContains(c, '11.0.0.1'));
  const v6 = parseCidr('FD00:0:0::1/8');
  assert.ok(!isCidrError(v6));
  assert.equal(v6.text, 'fd00::/8');
  assert.ok(cidrContains(v6, 'fd12:3456::1'));
  assert.equal(hostCidr('2001:db8:0:0:1:0:0:1')?.text, '2001:db8::1:0:0:1/128');
  assert.equal(hostCidr('192.0.2.1')?.text, '192.0.2.1/32');
  assert.ok(isCidrError(parseCidr('10.0.0.0/33')));
  assert.ok(isCidrError(parseCidr('300.0.0.0/8')));
  // An IPv4-mapped address takes /96 to /128 (an IPv4 network); shorter, it would hold no
  // IPv4 address at all, not even its own: refused with the forms that work.
  const mapped = parseCidr('::ffff:10.0.0.0/104');
  assert.ok(!isCidrError(mapped) && mapped.text === '10.0.0.0/8');
  for (const short of ['::ffff:10.0.0.0/8', '::ffff:0.0.0.0/0', '::ffff:0:0/80']) {
    const err = parseCidr(short);
    assert.ok(isCidrError(err), short);
    assert.match(err.error, /IPv4-mapped .* shorter than \/96.*10\.0\.0\.0\/8.*::ffff:10\.0\.0\.0\/104/, short);
  }
  assert.ok(!isCidrError(parseCidr('::/0')), 'not a mapped address');
});
