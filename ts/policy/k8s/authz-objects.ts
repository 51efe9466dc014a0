/**
 * Linkerd's authorization resources (`policy.linkerd.io`), reduced to what
 * TCP authorization needs, and their normaliser (manifests or API objects,
 * like objects.ts):
 *
 * - AuthorizationPolicy: `spec.targetRef` (a Server, or a Namespace for all
 *   its Servers; route targets are HTTP-only and not applied to TCP) and
 *   `spec.requiredAuthenticationRefs` (MeshTLSAuthentication,
 *   NetworkAuthentication or ServiceAccount), every one of which must hold;
 * - MeshTLSAuthentication: `spec.identities` (exact, `*` or `*.suffix`) or
 *   `spec.identityRefs` (ServiceAccounts, or whole Namespaces);
 * - NetworkAuthentication: `spec.networks` of `{cidr, except}`.
 *
 * A malformed field is a problem naming the object and the field; an object
 * whose meaning cannot be known is dropped (its policy then authorizes
 * nothing, so a mistake never widens access).
 */
import { isCidrError, parseCidr } from '../cidr.js';
import { identityPatternProblem } from '../../identity/name.js';
import type { ObjectProblem, ObjectRef } from './objects.js';
import { objectProblem, type PolicyProblem } from '../problems.js';

/** A reference from an AuthorizationPolicy. */
export interface AuthnRef {
  readonly kind: 'MeshTLSAuthentication' | 'NetworkAuthentication' | 'ServiceAccount';
  readonly namespace: string;
  readonly name: string;
}

export interface AuthorizationPolicyObject {
  readonly kind: 'AuthorizationPolicy';
  readonly namespace: string;
  readonly name: string;
  /** The Server it targets, or every Server of its namespace. */
  readonly target: { readonly kind: 'Server'; readonly name: string } | { readonly kind: 'Namespace' };
  readonly required: readonly AuthnRef[];
}

/** An identity reference of a MeshTLSAuthentication. */
export interface IdentityRef {
  readonly kind: 'ServiceAccount' | 'Namespace';
  readonly namespace: string;
  /** The service account (ServiceAccount refs). */
  readonly name: string;
}

export interface MeshTlsAuthenticationObject {
  readonly kind: 'MeshTLSAuthentication';
  readonly namespace: string;
  readonly name: string;
  /** Exact identities, `*` or `*.suffix`. */
  readonly identities: readonly string[];
  readonly identityRefs: readonly IdentityRef[];
}

export interface NetworkAuthenticationObject {
  readonly kind: 'NetworkAuthentication';
  readonly namespace: string;
  readonly name: string;
  readonly networks: readonly { readonly cidr: string; readonly except: readonly string[] }[];
}

export type AuthzObject = AuthorizationPolicyObject | MeshTlsAuthenticationObject | NetworkAuthenticationObject;

export const AUTHZ_KINDS = ['AuthorizationPolicy', 'MeshTLSAuthentication', 'NetworkAuthentication'] as const;

type Raw = Record<string, unknown>;
const rec = (v: unknown): Raw => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Raw) : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** True for the three kinds. */
export function isAuthzKind(kind: string | undefined): kind is AuthzObject['kind'] {
  return (AUTHZ_KINDS as readonly string[]).includes(kind ?? '');
}

/**
 * Normalises one raw object of the three kinds (undefined for other kinds,
 * or when the object cannot be used; problems say why). `kindOverride`: the
 * kind of an item of an API list, which carries none.
 */
export function normalizeAuthzObject(raw: unknown, problems: ObjectProblem[], defaultNamespace = 'default', kindOverride?: string): AuthzObject | undefined {
  const obj = rec(raw);
  const kind = kindOverride ?? str(obj['kind']);
  const apiVersion = str(obj['apiVersion']);
  if (!isAuthzKind(kind) || (kindOverride === undefined && apiVersion !== undefined && !apiVersion.startsWith('policy.linkerd.io/'))) return undefined;
  const metadata = rec(obj['metadata']);
  const name = str(metadata['name']) ?? '';
  const namespace = str(metadata['namespace']) ?? defaultNamespace;
  const ref: ObjectRef = { kind, namespace, name };
  const spec = rec(obj['spec']);
  const problem = (field: string, token: string, reason: string): void => {
    problems.push({ object: ref, field, token, reason });
  };

  if (kind === 'AuthorizationPolicy') {
    const t = rec(spec['targetRef']);
    const tkind = str(t['kind']);
    let target: AuthorizationPolicyObject['target'];
    if (tkind === 'Server' && str(t['name'])) target = { kind: 'Server', name: str(t['name'])! };
    else if (tkind === 'Namespace') {
      if (str(t['name']) !== undefined && t['name'] !== namespace) {
        problem('spec.targetRef.name', String(t['name']), `a Namespace target must be the policy's own namespace "${namespace}"`);
        return undefined;
      }
      target = { kind: 'Namespace' };
    } else {
      const reason = tkind === 'HTTPRoute' || tkind === 'GRPCRoute'
        ? `targets a ${tkind}: route authorization applies to HTTP, not to TCP connections (not applied)`
        : 'expected a targetRef of kind Server (with a name) or Namespace';
      problem('spec.targetRef', tkind ?? '', reason);
      return undefined;
    }
    const required: AuthnRef[] = [];
    for (const r of arr(spec['requiredAuthenticationRefs'])) {
      const rr = rec(r);
      const rkind = str(rr['kind']);
      const rname = str(rr['name']);
      if ((rkind !== 'MeshTLSAuthentication' && rkind !== 'NetworkAuthentication' && rkind !== 'ServiceAccount') || !rname) {
        problem('spec.requiredAuthenticationRefs', `${rkind ?? ''}/${rname ?? ''}`, 'expected a MeshTLSAuthentication, NetworkAuthentication or ServiceAccount with a name; the policy authorizes nothing');
        return undefined;
      }
      required.push(Object.freeze({ kind: rkind, name: rname, namespace: str(rr['namespace']) ?? namespace }));
    }
    return Object.freeze({ kind, namespace, name, target: Object.freeze(target), required: Object.freeze(required) });
  }

  if (kind === 'MeshTLSAuthentication') {
    const identities: string[] = [];
    for (const v of arr(spec['identities'])) {
      const text = typeof v === 'string' ? v : JSON.stringify(v);
      const why = identityPatternProblem(text);
      if (why !== undefined) problem('spec.identities', text, `${why}; this entry is ignored`);
      else identities.push(text);
    }
    const identityRefs: IdentityRef[] = [];
    for (const r of arr(spec['identityRefs'])) {
      const rr = rec(r);
      const rkind = str(rr['kind']);
      if (rkind === 'ServiceAccount' && str(rr['name'])) {
        identityRefs.push(Object.freeze({ kind: rkind, name: str(rr['name'])!, namespace: str(rr['namespace']) ?? namespace }));
      } else if (rkind === 'Namespace' && str(rr['name'])) {
        identityRefs.push(Object.freeze({ kind: rkind, name: '', namespace: str(rr['name'])! }));
      } else {
        problem('spec.identityRefs', `${rkind ?? ''}/${str(rr['name']) ?? ''}`, 'expected a ServiceAccount or Namespace with a name; this entry is ignored');
      }
    }
    if (identities.length === 0 && identityRefs.length === 0) {
      problem('spec.identities', '', 'no usable identities or identityRefs: it authenticates nobody');
    }
    return Object.freeze({ kind, namespace, name, identities: Object.freeze(identities), identityRefs: Object.freeze(identityRefs) });
  }

  // NetworkAuthentication
  const networks: { cidr: string; except: string[] }[] = [];
  for (const n of arr(spec['networks'])) {
    const nr = rec(n);
    const text = str(nr['cidr']) ?? '';
    const cidr = parseCidr(text);
    if (isCidrError(cidr)) {
      problem('spec.networks[].cidr', text, `${cidr.error}; this network is ignored`);
      continue;
    }
    const except: string[] = [];
    let ok = true;
    for (const e of arr(nr['except'])) {
      const etext = typeof e === 'string' ? e : JSON.stringify(e);
      const ex = parseCidr(etext);
      if (isCidrError(ex)) {
        // Dropping an except would widen the network: drop the whole network instead.
        problem('spec.networks[].except', etext, `${ex.error}; the network ${cidr.text} is ignored rather than widened`);
        ok = false;
      } else except.push(ex.text);
    }
    if (ok) networks.push({ cidr: cidr.text, except });
  }
  if (networks.length === 0) problem('spec.networks', '', 'no usable networks: it authenticates nobody');
  return Object.freeze({ kind: 'NetworkAuthentication' as const, namespace, name, networks: Object.freeze(networks.map((n) => Object.freeze({ cidr: n.cidr, except: Object.freeze(n.except) }))) });
}

/**
 * Normalises a list of raw objects (parsed manifest documents or API
 * objects), keeping the three authorization kinds; problems name the
 * object, the field and (when given) the file.
 */
export function normalizeAuthzObjects(items: readonly unknown[], file?: string): { objects: AuthzObject[]; problems: PolicyProblem[] } {
  const objects: AuthzObject[] = [];
  const problems: PolicyProblem[] = [];
  for (const item of items) {
    const found: ObjectProblem[] = [];
    const obj = normalizeAuthzObject(item, found);
    for (const p of found) problems.push(objectProblem(p.object, p.field, p.token, p.reason, file));
    if (obj) objects.push(obj);
  }
  return { objects, problems };
}
