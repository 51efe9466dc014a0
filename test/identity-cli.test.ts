/**
 * `meshpipe identity init/issue/check` and the identity check at proxy
 * start, through the real CLI: the files `init` and `issue` write are what
 * openssl and `--identity-dir` accept (modes, SANs, chain), nothing is
 * overwritten without --force, and every kind of bad identity input exits 2
 * naming the file and the reason before anything listens. Certificates the
 * CLI cannot make (expired, not yet valid, from another CA) come from openssl.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, isListening, runCli, startProxy } from './helpers.js';

const WEB = 'web.shop.serviceaccount.identity.linkerd.cluster.local';

function tmp(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-identity-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function openssl(cwd: string, args: string[]): string {
  return execFileSync('openssl', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A CA from `identity init` and a workload identity from `identity issue`. */
async function pki(dir: string, name = WEB): Promise<{ ca: string; id: string }> {
  const ca = join(dir, 'ca');
  const id = join(dir, 'id');
  const init = await runCli(['identity', 'init', '--out', ca]);
  assert.equal(init.code, 0, init.stderr);
  const issue = await runCli(['identity', 'issue', '--name', name, '--ca-dir', ca, '--out', id]);
  assert.equal(issue.code, 0, issue.stderr);
  return { ca, id };
}

test('identity init and issue write a CA and a workload identity that openssl and the proxy accept', async (t) => {
  const dir = tmp(t);
  const ca = join(dir, 'ca');
  const init = await runCli(['identity', 'init', '--out', ca, '--trust-domain', 'example.org', '--anchor-ttl', '3650d', '--issuer-ttl', '365d']);
  assert.equal(init.code, 0, init.stderr);
  assert.match(init.stdout, /trust anchor root\.linkerd\.example\.org/);
  for (const f of ['ca.key', 'issuer.key']) assert.equal(statSync(join(ca, f)).mode & 0o777, 0o600, `${f} is private`);
  assert.equal(statSync(join(ca, 'ca.crt')).mode & 0o777, 0o644);

  const id = join(dir, 'web');
  const issue = await runCli(['identity', 'issue', '--name', 'web.shop.serviceaccount.identity.linkerd.example.org', '--ttl', '2h', '--ca-dir', ca, '--out', id]);
  assert.equal(issue.code, 0, issue.stderr);
  assert.match(issue.stdout, /valid 2h until/);
  // Units combine, as in the proxy's durations.
  const compound = await runCli(['identity', 'issue', '--name', 'web.shop.serviceaccount.identity.linkerd.example.org', '--ttl', '1h30m', '--ca-dir', ca, '--out', join(dir, 'web-90m')]);
  assert.equal(compound.code, 0, compound.stderr);
  assert.match(compound.stdout, /valid 1h30m until/);
  assert.equal(statSync(join(id, 'tls.key')).mode & 0o777, 0o600);
  assert.equal(readFileSync(join(id, 'ca.crt'), 'utf8'), readFileSync(join(ca, 'ca.crt'), 'utf8'), 'the anchor is copied for --identity-dir');

  // openssl: tls.crt holds leaf + issuer and verifies against ca.crt for both TLS roles.
  assert.equal((readFileSync(join(id, 'tls.crt'), 'utf8').match(/BEGIN CERTIFICATE/g) ?? []).length, 2);
  for (const purpose of ['sslserver', 'sslclient']) {
    const out = openssl(id, ['verify', '-purpose', purpose, '-CAfile', 'ca.crt', '-untrusted', join(ca, 'issuer.crt'), 'tls.crt']);
    assert.match(out, /tls\.crt: OK/);
  }
  const text = openssl(id, ['x509', '-in', 'tls.crt', '-noout', '-text']);
  assert.match(text, /DNS:web\.shop\.serviceaccount\.identity\.linkerd\.example\.org/);
  assert.match(text, /TLS Web Server Authentication, TLS Web Client Authentication/);
  assert.match(text, /prime256v1/);

  const check = await runCli(['identity', 'check', '--identity-dir', id, '--json']);
  assert.equal(check.code, 0, check.stderr);
  const info = JSON.parse(check.stdout) as { name: string; chainLength: number; notAfterMs: number; notBeforeMs: number };
  assert.equal(info.name, 'web.shop.serviceaccount.identity.linkerd.example.org');
  assert.equal(info.chainLength, 2);
  const lifetime = info.notAfterMs - info.notBeforeMs;
  assert.ok(lifetime >= 2 * 3_600_000 && lifetime <= 2 * 3_600_000 + 61_000, `2h plus backdating: ${lifetime} ms`);

  // A SPIFFE identity works the same way.
  const spiffe = join(dir, 'spiffe');
  const s = await runCli(['identity', 'issue', '--name', 'spiffe://example.org/ns/shop/sa/cart', '--ca-dir', ca, '--out', spiffe]);
  assert.equal(s.code, 0, s.stderr);
  assert.match(openssl(spiffe, ['x509', '-in', 'tls.crt', '-noout', '-ext', 'subjectAltName']), /URI:spiffe:\/\/example\.org\/ns\/shop\/sa\/cart/);
});

test('identity files are never overwritten without --force, and bad usage exits 2', async (t) => {
  const dir = tmp(t);
  const { ca, id } = await pki(dir);
  const before = readFileSync(join(id, 'tls.key'), 'utf8');
  const again = await runCli(['identity', 'issue', '--name', WEB, '--ca-dir', ca, '--out', id]);
  assert.equal(again.code, 2);
  assert.match(again.stderr, new RegExp(`${join(id, 'tls.crt')} exists: pass --force`));
  assert.equal(readFileSync(join(id, 'tls.key'), 'utf8'), before, 'the key is untouched');
  const forced = await runCli(['identity', 'issue', '--name', WEB, '--ca-dir', ca, '--out', id, '--force']);
  assert.equal(forced.code, 0, forced.stderr);
  assert.notEqual(readFileSync(join(id, 'tls.key'), 'utf8'), before, 'the key was replaced');
  assert.equal(statSync(join(id, 'tls.key')).mode & 0o777, 0o600);

  const cases: [string[], RegExp][] = [
    [['identity', 'issue', '--ca-dir', ca], /needs --name NAME/],
    [['identity', 'issue', '--name', 'Web.shop.example', '--ca-dir', ca, '--out', join(dir, 'x')], /--name "Web.shop.example": .*lowercase/],
    [['identity', 'issue', '--name', WEB, '--ttl', '5x', '--ca-dir', ca, '--out', join(dir, 'x')], /--ttl "5x": expected whole numbers with a unit/],
    [['identity', 'issue', '--name', WEB, '--ttl', '1h30x', '--ca-dir', ca, '--out', join(dir, 'x')], /--ttl "1h30x": expected whole numbers with a unit s, m, h or d/],
    [['identity', 'issue', '--name', WEB, '--ttl', '400d', '--ca-dir', ca, '--out', join(dir, 'x')], /outlive its issuer/],
    [['identity', 'issue', '--name', WEB, '--ca-dir', join(dir, 'nowhere'), '--out', join(dir, 'x')], /nowhere\/issuer\.crt: cannot read the issuer certificate: no such file/],
    [['identity', 'issue', '--name', WEB, '--ca-dir', id, '--out', join(dir, 'x')], /cannot read the issuer/],
    [['identity', 'bogus'], /unknown identity command "bogus"/],
    [['identity', 'check'], /needs --identity-dir DIR/],
  ];
  for (const [args, message] of cases) {
    const r = await runCli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message, args.join(' '));
  }
});

test('the proxy checks its identity at start: bad input exits 2 naming the file and the reason', async (t) => {
  const dir = tmp(t);
  const { ca, id } = await pki(dir);
  const other = join(dir, 'other');
  assert.equal((await runCli(['identity', 'init', '--out', other, '--trust-domain', 'other.example'])).code, 0);

  // Variants of a good identity folder, each broken one way.
  const variant = (name: string, change: (d: string) => void): string => {
    const d = join(dir, name);
    execFileSync('cp', ['-r', id, d]);
    change(d);
    return d;
  };
  const missing = variant('missing', (d) => rmSync(join(d, 'tls.key')));
  const garbage = variant('garbage', (d) => writeFileSync(join(d, 'tls.crt'), 'this is not PEM\n'));
  const mismatch = variant('mismatch', (d) => copyFileSync(join(ca, 'issuer.key'), join(d, 'tls.key')));
  const untrusted = variant('untrusted', (d) => copyFileSync(join(other, 'ca.crt'), join(d, 'ca.crt')));
  // openssl makes what the CLI will not: an expired and a not-yet-valid certificate from the same issuer.
  const expired = variant('expired', (d) => {
    openssl(d, ['req', '-new', '-key', 'tls.key', '-subj', '/CN=web', '-out', 'web.csr']);
    writeFileSync(join(d, 'ext.cnf'), `subjectAltName=DNS:${WEB}\n`);
    openssl(d, ['x509', '-req', '-in', 'web.csr', '-CA', join(ca, 'issuer.crt'), '-CAkey', join(ca, 'issuer.key'), '-CAcreateserial', '-days', '-1', '-extfile', 'ext.cnf', '-out', 'leaf.crt']);
    writeFileSync(join(d, 'tls.crt'), readFileSync(join(d, 'leaf.crt'), 'utf8') + readFileSync(join(ca, 'issuer.crt'), 'utf8'));
  });
  const future = variant('future', (d) => {
    openssl(d, ['req', '-new', '-key', 'tls.key', '-subj', '/CN=web', '-out', 'web.csr']);
    writeFileSync(join(d, 'index.txt'), '');
    writeFileSync(join(d, 'ca.cnf'), [
      '[ca]', 'default_ca=mini', '[mini]', 'database=index.txt', 'new_certs_dir=.', 'serial=serial.txt', 'default_md=sha256',
      'policy=any', 'copy_extensions=none', 'x509_extensions=ext', '[any]', 'commonName=optional', '[ext]', `subjectAltName=DNS:${WEB}`, '',
    ].join('\n'));
    writeFileSync(join(d, 'serial.txt'), '1000\n');
    openssl(d, ['ca', '-batch', '-config', 'ca.cnf', '-cert', join(ca, 'issuer.crt'), '-keyfile', join(ca, 'issuer.key'), '-in', 'web.csr',
      '-startdate', '20991231000000Z', '-enddate', '21000101000000Z', '-out', 'leaf.crt', '-notext']);
    writeFileSync(join(d, 'tls.crt'), readFileSync(join(d, 'leaf.crt'), 'utf8') + readFileSync(join(ca, 'issuer.crt'), 'utf8'));
  });

  const cases: [string[], RegExp][] = [
    [['--identity-dir', missing], new RegExp(`${join(missing, 'tls.key')}: cannot read the private key \\(PEM\\): no such file`)],
    [['--identity-dir', garbage], new RegExp(`${join(garbage, 'tls.crt')}: expected a certificate chain .* no "-----BEGIN CERTIFICATE-----" block found`)],
    [['--identity-dir', mismatch], new RegExp(`${join(mismatch, 'tls.key')}: the private key does not match the certificate in ${join(mismatch, 'tls.crt')}`)],
    [['--identity-dir', untrusted], new RegExp(`${join(untrusted, 'tls.crt')}: the certificate chain is not rooted in the trust anchors of ${join(untrusted, 'ca.crt')}`)],
    [['--identity-dir', expired], new RegExp(`${join(expired, 'tls.crt')}: the certificate .* expired at`)],
    [['--identity-dir', future], new RegExp(`${join(future, 'tls.crt')}: the certificate .* is not valid before 2099-12-31`)],
    [['--identity-dir', id, '--identity-name', 'api.shop.serviceaccount.identity.linkerd.cluster.local'], /does not carry the identity api\.shop/],
    [['--identity-dir', id, '--identity-cert', join(id, 'tls.crt')], /identityDir \(from --identity-dir\) and identityCert \(from --identity-cert\) are both set/],
    [['--identity-cert', join(id, 'tls.crt')], /identityCert set without identityKey and trustAnchors/],
    [['--identity-dir', id, '--identity-template', '{sa}.cluster.local'], /invalid identityTemplate .* needs \{sa\} and \{ns\}/],
    [['--identity-dir', id, '--default-inbound-policy', 'allow'], /invalid defaultInboundPolicy "allow" .* expected one of all-unauthenticated/],
  ];
  const port = await freePort();
  for (const [args, message] of cases) {
    const r = await runCli(['proxy', '--forward', `127.0.0.1:${port}=127.0.0.1:1`, ...args]);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message, args.join(' '));
    assert.match(r.stderr, /\((ERR_IDENTITY|ERR_INVALID_CONFIG)\)\n$/);
    assert.equal(await isListening(port), false, 'nothing listens on bad identity input');
  }

  // The good identity starts the proxy and is logged.
  const ok = await startProxy(['--forward', '127.0.0.1:0=127.0.0.1:1', '--identity-dir', id], { t });
  const line = ok.proc.logs.find((l) => l.msg === 'identity loaded');
  assert.equal(line?.['identity'], WEB);
  assert.match(String(line?.['serial']), /^[0-9a-f]+$/);
});
