/**
 * Workload identity names: the TypeScript checks (ts/identity/name.ts, which
 * report a bad annotation, manifest field or destinations-file line where it
 * was written) and the engine's own (crates/meshpipe-core identity.rs) agree
 * on every name here, both for an identity at all (`identityProblem`; the
 * engine's `Identity::parse`, asked through the addon's authorization
 * decision, which parses the client identity) and for an identity this proxy
 * dials (`dialableIdentityProblem`; the engine's `Identity::parse_dialable`,
 * asked through `identity issue`). A dialled name's TLS server name must be
 * one TLS can send: a last label that is a number (decimal or 0x hex, read as
 * part of an IPv4 address) or a SPIFFE server name over 253 bytes is refused
 * by rustls, so such a destination could be configured but never reached.
 * The `identity` fuzz target found that case. A client may still carry such a
 * name: nobody dials a client by name.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { authzDecide, identityInit, identityIssue } from '../ts/engine/mesh.js';
import { dialableIdentityProblem, identityProblem } from '../ts/identity/name.js';
import { defaultPolicyRules } from '../ts/policy/authz.js';
import type { AuthzSpec } from '../ts/engine/boundary.js';

const SPEC: AuthzSpec = {
  ports: [],
  default: { port: 0, srvKind: 'default', srvName: 'all-authenticated', rules: defaultPolicyRules('all-authenticated', []) },
  exposedPorts: null,
};

/** The engine's `Identity::parse`: null when it parses the name, else its message. */
function engineProblem(name: string): string | null {
  try {
    authzDecide(SPEC, 8080, name, '10.0.0.1');
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

/** `dial`: an identity a proxy can dial; `match`: an identity only (a client's); `no`: none. */
type Verdict = 'dial' | 'match' | 'no';

test('the TypeScript identity checks and the engine agree; names TLS cannot send are refused where they are dialled', () => {
  const bundle = identityInit({ trustDomain: 'cluster.local', anchorTtlMs: 7_200_000, issuerTtlMs: 7_200_000 });
  const engineDialProblem = (name: string): string | null => {
    try {
      identityIssue({ issuerCertPem: bundle.issuer.certPem, issuerKeyPem: bundle.issuer.keyPem, issuerFile: 'issuer.crt', name, ttlMs: 3_600_000 });
      return null;
    } catch (err) {
      return (err as Error).message;
    }
  };
  const td63 = 't'.repeat(63);
  const longSa = `spiffe://cluster.local/ns/${'n'.repeat(63)}/sa/${['s'.repeat(63), 's'.repeat(63), 's'.repeat(40)].join('.')}`;
  const cases: Array<[string, Verdict]> = [
    ['web.emojivoto.serviceaccount.identity.linkerd.cluster.local', 'dial'],
    ['spiffe://cluster.local/ns/emojivoto/sa/web', 'dial'],
    ['spiffe://my_domain.example/ns/a/sa/b.c', 'dial'],
    ['web.ns.0xg', 'dial'],
    ['web.ns.x0', 'dial'],
    ['web.ns.0a1', 'dial'],
    [`spiffe://${td63}.local/ns/a/sa/b`, 'dial'],
    // Trust domains rustls takes as they are: '_' at a label's edges, one label, 63-byte labels.
    ['spiffe://_td_.ex_/ns/a/sa/b', 'dial'],
    ['spiffe://local/ns/a/sa/b', 'dial'],
    ['spiffe://td_1.example/ns/a/sa/b', 'dial'],
    [`spiffe://${td63}.${td63}.${td63}/ns/a/sa/b`, 'dial'],
    // Identities a client may carry, but no proxy could dial.
    ['9.aam0.0x', 'match'],
    ['web.ns.0xbeef', 'match'],
    ['spiffe://cluster.0x1f/ns/a/sa/b', 'match'],
    ['spiffe://cluster.0/ns/a/sa/b', 'match'],
    ['spiffe://cluster.-local/ns/a/sa/b', 'match'],
    ['spiffe://-td.example/ns/a/sa/b', 'match'],
    ['spiffe://cluster..local/ns/a/sa/b', 'match'],
    ['spiffe://./ns/a/sa/b', 'match'],
    [`spiffe://${td63}t.local/ns/a/sa/b`, 'match'],
    [longSa, 'match'],
    // rustls takes one trailing dot (a fully qualified name); an identity has none.
    ['spiffe://cluster.local./ns/a/sa/b', 'match'],
    // No identity at all.
    ['web.ns.10', 'no'],
    ['Web.ns.cluster.local', 'no'],
    ['web.ns.cluster.local.', 'no'],
  ];
  for (const [name, verdict] of cases) {
    const [ts, engine] = [identityProblem(name), engineProblem(name)];
    assert.equal(ts === undefined, verdict !== 'no', `TypeScript identity on ${name}: ${ts ?? 'accepted'}`);
    assert.equal(engine === null, verdict !== 'no', `engine identity on ${name}: ${engine ?? 'accepted'}`);
    const [tsDial, engineDial] = [dialableIdentityProblem(name), engineDialProblem(name)];
    assert.equal(tsDial === undefined, verdict === 'dial', `TypeScript dialable on ${name}: ${tsDial ?? 'accepted'}`);
    assert.equal(engineDial === null, verdict === 'dial', `engine dialable on ${name}: ${engineDial ?? 'accepted'}`);
  }
  // The reasons say what is wrong.
  for (const why of [dialableIdentityProblem('web.ns.0xbeef'), engineDialProblem('web.ns.0xbeef')]) assert.match(why ?? '', /last label is a number/);
  for (const why of [dialableIdentityProblem(longSa), engineDialProblem(longSa)]) assert.match(why ?? '', /longer than 253 bytes/);
  for (const why of [dialableIdentityProblem('spiffe://-td.example/ns/a/sa/b'), engineDialProblem('spiffe://-td.example/ns/a/sa/b')]) assert.match(why ?? '', /not a host name/);
});
