/**
 * Workload identity names: the TypeScript check (ts/identity/name.ts, which
 * reports a bad annotation, manifest field or destinations-file line where it
 * was written) and the engine's own parser (crates/meshpipe-core identity.rs,
 * asked through the addon's authorization decision, which parses the client
 * identity) agree on every name here, and an accepted name's TLS server name
 * is one TLS can send: a last label that is a number (decimal or 0x hex, read
 * as part of an IPv4 address) is refused by rustls as a server name, so such
 * a name could be configured but never dialled. The `identity` fuzz target
 * found that case.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { authzDecide } from '../ts/engine/mesh.js';
import { identityProblem } from '../ts/identity/name.js';
import { defaultPolicyRules } from '../ts/policy/authz.js';
import type { AuthzSpec } from '../ts/engine/boundary.js';

const SPEC: AuthzSpec = {
  ports: [],
  default: { port: 0, srvKind: 'default', srvName: 'all-authenticated', rules: defaultPolicyRules('all-authenticated', []) },
  exposedPorts: null,
};

/** The engine's verdict: null when it parses the name, else its message. */
function engineProblem(name: string): string | null {
  try {
    authzDecide(SPEC, 8080, name, '10.0.0.1');
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

test('the TypeScript identity check and the engine agree, and refuse names TLS cannot dial', () => {
  const td63 = 't'.repeat(63);
  const cases: Array<[string, boolean]> = [
    ['web.emojivoto.serviceaccount.identity.linkerd.cluster.local', true],
    ['spiffe://cluster.local/ns/emojivoto/sa/web', true],
    ['spiffe://my_domain.example/ns/a/sa/b.c', true],
    ['web.ns.0xg', true],
    ['web.ns.x0', true],
    ['web.ns.0a1', true],
    [`spiffe://${td63}.local/ns/a/sa/b`, true],
    ['9.aam0.0x', false],
    ['web.ns.0xbeef', false],
    ['web.ns.10', false],
    ['spiffe://cluster.0x1f/ns/a/sa/b', false],
    ['spiffe://cluster.-local/ns/a/sa/b', false],
    ['spiffe://cluster..local/ns/a/sa/b', false],
    [`spiffe://${td63}t.local/ns/a/sa/b`, false],
    [`spiffe://cluster.local/ns/${'n'.repeat(63)}/sa/${['s'.repeat(63), 's'.repeat(63), 's'.repeat(40)].join('.')}`, false],
    ['Web.ns.cluster.local', false],
    // Trust domains rustls takes as they are: '_' at a label's edges, one label, 63-byte labels.
    ['spiffe://_td_.ex_/ns/a/sa/b', true],
    ['spiffe://local/ns/a/sa/b', true],
    ['spiffe://td_1.example/ns/a/sa/b', true],
    [`spiffe://${td63}.${td63}.${td63}/ns/a/sa/b`, true],
    // rustls takes one trailing dot (a fully qualified name); an identity has none.
    ['spiffe://cluster.local./ns/a/sa/b', false],
    ['spiffe://./ns/a/sa/b', false],
    ['spiffe://cluster.0/ns/a/sa/b', false],
  ];
  for (const [name, ok] of cases) {
    const ts = identityProblem(name);
    const engine = engineProblem(name);
    assert.equal(ts === undefined, ok, `TypeScript on ${name}: ${ts ?? 'accepted'}`);
    assert.equal(engine === null, ok, `engine on ${name}: ${engine ?? 'accepted'}`);
  }
  // The reasons say what is wrong.
  assert.match(identityProblem('web.ns.0xbeef') ?? '', /last label is a number/);
  assert.match(engineProblem('web.ns.0xbeef') ?? '', /last label is a number/);
  assert.match(identityProblem(cases[14]![0]) ?? '', /longer than 253 bytes/);
  assert.match(engineProblem(cases[14]![0]) ?? '', /longer than 253 bytes/);
});
