/**
 * Config keys of mesh identity and mesh policy: where this proxy's
 * certificate, key and trust anchors are (`--identity-dir DIR` with
 * `tls.crt`, `tls.key` and `ca.crt`, the layout cert-manager and CSI drivers
 * mount, or the three files one by one), `--identity-name` when the
 * certificate alone does not say which name is this proxy's, the trust
 * domain and identity template that turn a pod's service account into its
 * identity, the static `--destinations FILE` of meshed hosts outside
 * Kubernetes, and the cluster-wide default inbound policy.
 *
 * The proxy validates the identity at start (ts/identity/) but its data
 * path does not use any of these yet.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { MeshpipeError } from '../errors.js';
import { DEFAULT_IDENTITY_TEMPLATE, identityProblem, templateProblem } from '../identity/name.js';
import { guard, optionalText } from './schemas.js';

/** Linkerd's default inbound policies (plus `audit`, which allows and labels). */
export const DEFAULT_INBOUND_POLICIES = ['all-unauthenticated', 'all-authenticated', 'cluster-authenticated', 'cluster-unauthenticated', 'deny', 'audit'] as const;
export type DefaultInboundPolicy = (typeof DEFAULT_INBOUND_POLICIES)[number];

/** The three files of an identity, with the config key each came from (for messages). */
export interface IdentityFiles {
  readonly cert: string;
  readonly key: string;
  readonly anchors: string;
}

/** What the identity keys become in the frozen ProxyConfig. */
export interface IdentityConfig {
  /** This proxy's identity files, or undefined when no identity is configured. */
  readonly identity: IdentityFiles | undefined;
  /** `--identity-name`. */
  readonly identityName: string | undefined;
  readonly trustDomain: string;
  readonly identityTemplate: string;
  /** `--destinations FILE`: static meshed destinations. */
  readonly destinations: string | undefined;
  readonly defaultInboundPolicy: DefaultInboundPolicy;
}

const identityName = z.string().transform((v, ctx) =>
  guard(() => {
    const text = v.trim();
    if (text === '') return undefined;
    const why = identityProblem(text);
    if (why !== undefined) throw new Error(`${why}; expected a name like web.ns.serviceaccount.identity.linkerd.cluster.local or spiffe://cluster.local/ns/NS/sa/SA`);
    return text;
  }, ctx),
);

const trustDomain = z.string().transform((v, ctx) =>
  guard(() => {
    const text = v.trim();
    if (identityProblem(`x.${text}`) !== undefined || text.includes('/')) throw new Error('expected a DNS name such as cluster.local');
    return text;
  }, ctx),
);

const policy = z.string().transform((v, ctx) =>
  guard(() => {
    const text = v.trim();
    if (!(DEFAULT_INBOUND_POLICIES as readonly string[]).includes(text)) throw new Error(`expected one of ${DEFAULT_INBOUND_POLICIES.join(', ')}`);
    return text as DefaultInboundPolicy;
  }, ctx),
);

const FILE = 'a file path';

/** The identity keys, merged into the config's field table. */
export const IDENTITY_FIELDS = {
  identityDir: { schema: optionalText, default: '', expected: 'a folder holding tls.crt, tls.key and ca.crt' },
  identityCert: { schema: optionalText, default: '', expected: FILE },
  identityKey: { schema: optionalText, default: '', expected: FILE },
  trustAnchors: { schema: optionalText, default: '', expected: FILE },
  identityName: { schema: identityName, default: '', expected: 'a DNS name or a SPIFFE ID' },
  trustDomain: { schema: trustDomain, default: 'cluster.local', expected: 'a DNS name such as cluster.local' },
  identityTemplate: { schema: optionalText, default: DEFAULT_IDENTITY_TEMPLATE, expected: 'a template with {sa}, {ns} and {trustDomain}' },
  destinations: { schema: optionalText, default: '', expected: FILE },
  defaultInboundPolicy: { schema: policy, default: 'all-unauthenticated', expected: DEFAULT_INBOUND_POLICIES.join(', ') },
} as const;

interface IdentityValues {
  identityDir: string | undefined;
  identityCert: string | undefined;
  identityKey: string | undefined;
  trustAnchors: string | undefined;
  identityName: string | undefined;
  trustDomain: string;
  identityTemplate: string | undefined;
  destinations: string | undefined;
  defaultInboundPolicy: DefaultInboundPolicy;
}

/**
 * Picks the identity keys out of the parsed values and checks the ones that
 * depend on each other. `source(key)` names where a value came from.
 * @throws MeshpipeError ERR_INVALID_CONFIG
 */
export function identityConfig(v: IdentityValues, source: (key: keyof typeof IDENTITY_FIELDS) => string): IdentityConfig {
  const files = { identityCert: v.identityCert, identityKey: v.identityKey, trustAnchors: v.trustAnchors };
  const given = Object.entries(files).filter(([, f]) => f !== undefined).map(([k]) => k as keyof typeof files);
  let identity: IdentityFiles | undefined;
  if (v.identityDir !== undefined) {
    if (given.length > 0) {
      const k = given[0]!;
      throw new MeshpipeError('ERR_INVALID_CONFIG', `identityDir (from ${source('identityDir')}) and ${k} (from ${source(k)}) are both set: give the folder or the three files, not both`, { key: k });
    }
    identity = { cert: join(v.identityDir, 'tls.crt'), key: join(v.identityDir, 'tls.key'), anchors: join(v.identityDir, 'ca.crt') };
  } else if (given.length > 0) {
    const missing = (Object.keys(files) as (keyof typeof files)[]).filter((k) => files[k] === undefined);
    if (missing.length > 0) {
      throw new MeshpipeError('ERR_INVALID_CONFIG', `${given.join(' and ')} set without ${missing.join(' and ')}: a mesh identity needs the certificate, its key and the trust anchors (or identityDir)`, { key: missing[0]! });
    }
    identity = { cert: v.identityCert!, key: v.identityKey!, anchors: v.trustAnchors! };
  }
  if (v.identityName !== undefined && identity === undefined) {
    throw new MeshpipeError('ERR_INVALID_CONFIG', `identityName (from ${source('identityName')}) is set but no identity is configured: give identityDir or the three identity files`, { key: 'identityName' });
  }
  const template = v.identityTemplate ?? IDENTITY_FIELDS.identityTemplate.default;
  const why = templateProblem(template, v.trustDomain);
  if (why !== undefined) {
    throw new MeshpipeError('ERR_INVALID_CONFIG', `invalid identityTemplate "${template}" (from ${source('identityTemplate')}): ${why}`, { key: 'identityTemplate' });
  }
  return {
    identity,
    identityName: v.identityName,
    trustDomain: v.trustDomain,
    identityTemplate: template,
    destinations: v.destinations,
    defaultInboundPolicy: v.defaultInboundPolicy,
  };
}
