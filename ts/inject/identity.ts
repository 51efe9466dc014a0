/**
 * The proxy's mesh identity in an injected pod: where its certificate comes
 * from, read from the pod's (or its namespace's) annotations over the
 * injector's cluster-wide defaults, and the volume, mount and flags that
 * hand it to `meshpipe proxy --identity-dir`.
 *
 * Three sources:
 * - `cert-manager-csi` (the default): an inline CSI volume of cert-manager's
 *   csi-driver (`csi.cert-manager.io`), the way meshes on cert-manager give
 *   each replica its own key: the driver makes an ECDSA P-256 key on the
 *   node, asks the issuer for a certificate naming the pod's service
 *   account identity (the driver expands `${SERVICE_ACCOUNT_NAME}` and
 *   `${POD_NAMESPACE}`), writes `tls.crt`, `tls.key` and `ca.crt`, and
 *   renews them; the proxy re-reads them when they change. The files are
 *   group-owned by the proxy's uid (`fs-group`): without it the driver
 *   writes them readable by root only.
 * - `secret`: a Secret of type kubernetes.io/tls with `ca.crt` (what a
 *   cert-manager Certificate writes), named by an annotation.
 * - `none`: no identity, a plaintext sidecar as before mTLS existed.
 *
 * The name in the certificate is the identity template (`--identity-template`,
 * `--trust-domain`) rendered for the pod, and the proxy gets the same
 * template and trust domain as flags, so the name it proves and the names
 * its peers expect of it agree by construction. Both are cluster-wide
 * (injector flags), never per pod: a pod with another trust domain would be
 * unreachable for every peer.
 */
import { DurationError, parseDuration } from '../config/index.js';
import { DEFAULT_IDENTITY_TEMPLATE, identityProblem, templateProblem } from '../identity/name.js';
import { lookup, problemWith, type AnnotationProblem, type AnnotationSources, type Found } from './annotations.js';
import type { JsonObject } from './kinds.js';

/** Annotations (on the pod, else its namespace) that choose and shape the identity. */
export const IDENTITY_KEYS = Object.freeze({
  /** `enabled` | `disabled`. */
  identity: 'config.meshpipe.io/identity',
  /** A Secret (kubernetes.io/tls with ca.crt) instead of the CSI driver. */
  secret: 'config.meshpipe.io/identity-secret',
  issuer: 'config.meshpipe.io/identity-issuer',
  issuerKind: 'config.meshpipe.io/identity-issuer-kind',
  issuerGroup: 'config.meshpipe.io/identity-issuer-group',
  duration: 'config.meshpipe.io/identity-duration',
  renewBefore: 'config.meshpipe.io/identity-renew-before',
});

/** Where the identity volume is mounted in the proxy container. */
export const IDENTITY_DIR = '/var/run/meshpipe/identity';
export const IDENTITY_VOLUME = 'meshpipe-identity';
export const CSI_DRIVER = 'csi.cert-manager.io';

/** cert-manager refuses certificates shorter than an hour. */
export const MIN_DURATION_MS = 3_600_000;
/** cert-manager's smallest renewBefore. */
export const MIN_RENEW_BEFORE_MS = 5 * 60_000;

export interface IssuerRef {
  readonly name: string;
  readonly kind: string;
  readonly group: string;
}

/** The injector's cluster-wide identity settings (flags of `meshpipe inject` / `meshpipe injector`). */
export interface IdentityDefaults {
  /** `--identity`: identity for pods whose annotations do not say. */
  readonly enabled: boolean;
  readonly issuer: IssuerRef;
  readonly durationMs: number;
  /** undefined = a third of the duration (the CSI driver's own rule). */
  readonly renewBeforeMs: number | undefined;
  readonly trustDomain: string;
  readonly template: string;
}

export const DEFAULT_IDENTITY: IdentityDefaults = Object.freeze({
  enabled: true,
  issuer: Object.freeze({ name: 'meshpipe-identity-issuer', kind: 'ClusterIssuer', group: 'cert-manager.io' }),
  durationMs: 24 * 3_600_000,
  renewBeforeMs: undefined,
  trustDomain: 'cluster.local',
  template: DEFAULT_IDENTITY_TEMPLATE,
});

/** The identity of one pod, as decided from its annotations. */
export type IdentitySettings =
  | { readonly source: 'none' }
  | { readonly source: 'secret'; readonly secretName: string }
  | { readonly source: 'cert-manager-csi'; readonly issuer: IssuerRef; readonly durationMs: number; readonly renewBeforeMs: number };

/** The value of the `meshpipe.io/injected-identity` marker for these settings. */
export function identityMarker(s: IdentitySettings): string {
  return s.source;
}

/** A short description for report lines. */
export function describeIdentity(s: IdentitySettings): string {
  switch (s.source) {
    case 'none': return 'no identity';
    case 'secret': return `identity from Secret ${s.secretName}`;
    case 'cert-manager-csi': return `identity from ${CSI_DRIVER}, ${s.issuer.kind} ${s.issuer.name}`;
  }
}

const SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** Why `text` is not a Kubernetes object name (DNS-1123 subdomain), or undefined. */
export function objectNameProblem(text: string): string | undefined {
  if (text.length > 253 || !SUBDOMAIN.test(text)) return 'expected a Kubernetes object name: lowercase letters, digits, "-" and ".", at most 253 characters';
  return undefined;
}

/** Why `text` is not an issuer kind, or undefined. */
export function kindProblem(text: string): string | undefined {
  if (!/^[A-Z][A-Za-z0-9]{0,62}$/.test(text)) return 'expected a Kind such as ClusterIssuer or Issuer';
  return undefined;
}

/** Why `text` is not an API group, or undefined. */
export function groupProblem(text: string): string | undefined {
  if (text.length > 253 || !SUBDOMAIN.test(text) || !text.includes('.')) return 'expected an API group such as cert-manager.io';
  return undefined;
}

/**
 * parseDuration with the hint in the message. The callers name the flag or
 * annotation and its value, so the parser's own 'invalid duration "x"' is left out.
 */
function duration(text: string): number {
  try {
    return parseDuration(text);
  } catch (err) {
    if (err instanceof DurationError) {
      throw new Error(err.reason === '' ? err.hint : `${err.reason}: ${err.hint}`, { cause: err });
    }
    throw err;
  }
}

/** A certificate lifetime: at least an hour, at most 365 days. */
export function parseCertDuration(text: string): number {
  const ms = duration(text);
  if (ms < MIN_DURATION_MS) throw new Error(`"${text}" is shorter than 1h, the shortest certificate cert-manager issues`);
  return ms;
}

/** How long before expiry to renew: at least 5m, less than the lifetime. */
export function parseRenewBefore(text: string, durationMs: number): number {
  const ms = duration(text);
  if (ms < MIN_RENEW_BEFORE_MS) throw new Error(`"${text}" is shorter than 5m, cert-manager's minimum`);
  if (ms >= durationMs) throw new Error(`"${text}" is not shorter than the certificate's lifetime ${goDuration(durationMs)}: it would renew all the time`);
  return ms;
}

/** Why the trust domain and template cannot make identities, or undefined. */
export function namingProblem(trustDomain: string, template: string): string | undefined {
  if (identityProblem(`x.${trustDomain}`) !== undefined || trustDomain.includes('/')) return `trust domain "${trustDomain}": expected a DNS name such as cluster.local`;
  const why = templateProblem(template, trustDomain);
  return why === undefined ? undefined : `identity template "${template}": ${why}`;
}

/**
 * The identity of one pod from its annotations over the injector's
 * defaults. Precedence, most specific first: the pod's
 * `config.meshpipe.io/identity`, the pod's `identity-secret` (naming a
 * Secret asks for an identity), the namespace's `identity`, the namespace's
 * `identity-secret`, then `--identity`. Problems are appended; a bad value
 * decides nothing (the object is then left unchanged by the caller).
 */
export function readIdentity(src: AnnotationSources, defaults: IdentityDefaults, problems: AnnotationProblem[]): IdentitySettings {
  const problem = (f: Found, key: string, message: string): void => problemWith(src, problems, f, key, message);
  const mode = lookup(src, IDENTITY_KEYS.identity);
  const secret = lookup(src, IDENTITY_KEYS.secret);
  const modeValue = (f: Found): boolean => {
    const v = f.value.trim();
    if (v !== 'enabled' && v !== 'disabled') problem(f, IDENTITY_KEYS.identity, 'expected "enabled" or "disabled"');
    return v !== 'disabled';
  };
  let enabled: boolean;
  if (mode?.where === 'pod') enabled = modeValue(mode);
  else if (secret?.where === 'pod') enabled = true;
  else if (mode !== undefined) enabled = modeValue(mode);
  else enabled = secret !== undefined || defaults.enabled;
  if (!enabled) return { source: 'none' };

  if (secret !== undefined) {
    const name = secret.value.trim();
    const why = objectNameProblem(name);
    if (why !== undefined) problem(secret, IDENTITY_KEYS.secret, `${why} (a Secret of type kubernetes.io/tls with ca.crt)`);
    return { source: 'secret', secretName: name };
  }

  const text = (key: string, fallback: string, check: (v: string) => string | undefined): string => {
    const f = lookup(src, key);
    if (f === undefined) return fallback;
    const v = f.value.trim();
    const why = check(v);
    if (why !== undefined) problem(f, key, why);
    return v;
  };
  const issuer = {
    name: text(IDENTITY_KEYS.issuer, defaults.issuer.name, objectNameProblem),
    kind: text(IDENTITY_KEYS.issuerKind, defaults.issuer.kind, kindProblem),
    group: text(IDENTITY_KEYS.issuerGroup, defaults.issuer.group, groupProblem),
  };
  let durationMs = defaults.durationMs;
  const dur = lookup(src, IDENTITY_KEYS.duration);
  if (dur !== undefined) {
    try {
      durationMs = parseCertDuration(dur.value);
    } catch (err) {
      problem(dur, IDENTITY_KEYS.duration, (err as Error).message);
    }
  }
  let renewBeforeMs = defaults.renewBeforeMs ?? Math.floor(durationMs / 3000) * 1000;
  const renew = lookup(src, IDENTITY_KEYS.renewBefore);
  if (renew !== undefined) {
    try {
      renewBeforeMs = parseRenewBefore(renew.value, durationMs);
    } catch (err) {
      problem(renew, IDENTITY_KEYS.renewBefore, (err as Error).message);
    }
  } else if (renewBeforeMs >= durationMs && dur !== undefined) {
    problem(dur, IDENTITY_KEYS.duration, `not longer than the injector's --identity-renew-before ${goDuration(renewBeforeMs)}: set ${IDENTITY_KEYS.renewBefore} too`);
  }
  return { source: 'cert-manager-csi', issuer, durationMs, renewBeforeMs };
}

/** Milliseconds as Go's time.ParseDuration reads them (no days): `24h`, `1h30m`, `90s`. */
export function goDuration(ms: number): string {
  let rest = ms;
  let out = '';
  for (const [unit, size] of [['h', 3_600_000], ['m', 60_000], ['s', 1_000], ['ms', 1]] as const) {
    if (rest >= size) {
      out += `${Math.floor(rest / size)}${unit}`;
      rest %= size;
    }
  }
  return out === '' ? '0s' : out;
}

/**
 * The certificate's name as the CSI driver expands it: the identity
 * template with the driver's variables for the service account and the
 * namespace, and the trust domain filled in.
 */
export function csiIdentityName(defaults: IdentityDefaults): string {
  return defaults.template
    .replaceAll('{sa}', '${SERVICE_ACCOUNT_NAME}')
    .replaceAll('{ns}', '${POD_NAMESPACE}')
    .replaceAll('{trustDomain}', defaults.trustDomain);
}

/** What the identity adds to the proxy container and the pod. */
export interface IdentityPart {
  readonly volumes: readonly JsonObject[];
  readonly mounts: readonly JsonObject[];
  readonly env: readonly JsonObject[];
  readonly args: readonly string[];
}

function volumeFor(s: Exclude<IdentitySettings, { source: 'none' }>, defaults: IdentityDefaults, proxyUid: number): JsonObject {
  if (s.source === 'secret') {
    // Only the three files the proxy reads: a Secret without ca.crt fails the mount, naming the key.
    return {
      name: IDENTITY_VOLUME,
      secret: { secretName: s.secretName, items: ['tls.crt', 'tls.key', 'ca.crt'].map((f) => ({ key: f, path: f })) },
    };
  }
  const name = csiIdentityName(defaults);
  return {
    name: IDENTITY_VOLUME,
    csi: {
      driver: CSI_DRIVER,
      readOnly: true,
      volumeAttributes: {
        'csi.cert-manager.io/issuer-name': s.issuer.name,
        'csi.cert-manager.io/issuer-kind': s.issuer.kind,
        'csi.cert-manager.io/issuer-group': s.issuer.group,
        // A SPIFFE template is a URI SAN, Linkerd's form a DNS SAN.
        [name.startsWith('spiffe://') ? 'csi.cert-manager.io/uri-sans' : 'csi.cert-manager.io/dns-names']: name,
        'csi.cert-manager.io/key-algorithm': 'ECDSA',
        'csi.cert-manager.io/key-size': '256',
        'csi.cert-manager.io/key-usages': 'digital signature,server auth,client auth',
        'csi.cert-manager.io/duration': goDuration(s.durationMs),
        'csi.cert-manager.io/renew-before': goDuration(s.renewBeforeMs),
        // The driver writes the files 0440 root:root unless given a group: the proxy's.
        'csi.cert-manager.io/fs-group': String(proxyUid),
      },
    },
  };
}

/** The identity's volume, mount and proxy flags (nothing for `none`). */
export function identityPart(s: IdentitySettings, defaults: IdentityDefaults, proxyUid: number): IdentityPart {
  if (s.source === 'none') return { volumes: [], mounts: [], env: [], args: [] };
  return {
    volumes: [volumeFor(s, defaults, proxyUid)],
    mounts: [{ name: IDENTITY_VOLUME, mountPath: IDENTITY_DIR, readOnly: true }],
    env: [],
    args: ['--identity-dir', IDENTITY_DIR, '--trust-domain', defaults.trustDomain, '--identity-template', defaults.template],
  };
}
