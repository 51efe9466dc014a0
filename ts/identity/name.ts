/**
 * Workload identity names, checked the way the engine checks them
 * (crates/meshpipe-core/src/identity.rs): a DNS name (RFC 1123 labels,
 * lowercase, at least two labels, no wildcard, no trailing dot), Linkerd's
 * form being `<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>`,
 * or a SPIFFE ID `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`. The policy layer
 * checks names here so that a bad annotation, manifest field or
 * destinations-file line is reported where it was written; the engine
 * checks every name again.
 *
 * Also the identity template: how a pod's service account and namespace
 * become its identity under a trust domain.
 */

/** Linkerd's default: `{sa}.{ns}.serviceaccount.identity.linkerd.{trustDomain}`. */
export const DEFAULT_IDENTITY_TEMPLATE = '{sa}.{ns}.serviceaccount.identity.linkerd.{trustDomain}';

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function dnsReason(name: string): string | undefined {
  if (name === '') return 'it is empty';
  if (name.length > 253) return 'a DNS name is at most 253 bytes';
  if (name.endsWith('.')) return 'it ends with a dot';
  if (name.includes('*')) return 'wildcards are not identities';
  if (!name.includes('.')) return 'a single label is not a workload identity';
  for (const label of name.split('.')) {
    if (!LABEL.test(label)) return `the label "${label}" is not 1-63 lowercase letters, digits and inner hyphens`;
  }
  if (/^\d+$/.test(name.split('.').pop() ?? '')) return 'it looks like an IP address, not a name';
  return undefined;
}

/**
 * Whether a name's last label is a number (WHATWG URL's "ends in a number": decimal
 * digits, or 0x and hex digits, as inet_aton reads them). TLS (rustls) refuses such a
 * server name, so an identity with one could never be dialled.
 */
function endsInANumber(name: string): boolean {
  const last = name.split('.').pop() ?? '';
  return /^\d+$/.test(last) || /^0[xX][0-9a-fA-F]*$/.test(last);
}

/** A SPIFFE ID's TLS server name label (rustls: letters, digits, '_' and inner hyphens). */
const SNI_LABEL = /^[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?$/;

/**
 * Why a SPIFFE ID's server name `<sa>.<ns>.serviceaccount.identity.spiffe.<td>` (the SNI
 * it is dialled by, RFC 6066 §3: a host name) cannot be sent, or undefined.
 */
function spiffeServerNameReason(sa: string, ns: string, trustDomain: string): string | undefined {
  const name = `${sa}.${ns}.serviceaccount.identity.spiffe.${trustDomain}`;
  if (name.length > 253) return 'its TLS server name <sa>.<ns>.serviceaccount.identity.spiffe.<trust-domain> would be longer than 253 bytes';
  if (endsInANumber(name)) return "the trust domain's last label is a number, so its TLS server name would read as an IP address";
  if (!trustDomain.split('.').every((l) => SNI_LABEL.test(l))) {
    return 'its TLS server name <sa>.<ns>.serviceaccount.identity.spiffe.<trust-domain> is not a host name: a trust domain label is empty, longer than 63 bytes, or starts or ends with a hyphen';
  }
  return undefined;
}

/** Why `text` is not an identity, or undefined when it is one. */
export function identityProblem(text: string): string | undefined {
  if (text.startsWith('spiffe://')) {
    const m = /^spiffe:\/\/([a-z0-9._-]{1,255})\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(text);
    if (!m) return 'a SPIFFE ID must be spiffe://TRUST-DOMAIN/ns/NS/sa/SA (lowercase trust domain, no port)';
    const [, , ns = '', sa = ''] = m;
    if (!LABEL.test(ns)) return `the namespace "${ns}" is not a Kubernetes namespace name`;
    if (sa.length > 253 || !sa.split('.').every((l) => LABEL.test(l))) return `the service account "${sa}" is not a Kubernetes name`;
    return undefined;
  }
  if (text.includes('://')) return 'only spiffe:// URIs are identities';
  return dnsReason(text);
}

/**
 * Why `text` is not an identity this proxy can dial (a meshed destination, a pod's identity
 * from the template, a certificate being issued), or undefined. On top of `identityProblem`,
 * its TLS server name must be one TLS sends (RFC 6066 §3: a host name; the engine's
 * `Identity::check_dialable`). A client's identity is only matched, never dialled, so
 * `identityProblem` is the check for those.
 */
export function dialableIdentityProblem(text: string): string | undefined {
  const why = identityProblem(text);
  if (why !== undefined) return why;
  const spiffe = /^spiffe:\/\/([^/]+)\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(text);
  if (spiffe) return spiffeServerNameReason(spiffe[3] ?? '', spiffe[2] ?? '', spiffe[1] ?? '');
  if (endsInANumber(text)) return 'its last label is a number (decimal, or hex as 0x...), which reads as an IPv4 address: TLS cannot send it as a server name, so it cannot be dialled';
  return undefined;
}

/** Why a MeshTLSAuthentication identity pattern (exact, `*` or `*.suffix`) is bad, or undefined. */
export function identityPatternProblem(pattern: string): string | undefined {
  if (pattern === '*') return undefined;
  if (pattern.startsWith('*.')) {
    const why = dnsReason(`x.${pattern.slice(2)}`);
    return why === undefined ? undefined : `the suffix after "*." is not a DNS name: ${why}`;
  }
  return identityProblem(pattern);
}

/** Why an identity template is bad, or undefined. */
export function templateProblem(template: string, trustDomain: string): string | undefined {
  if (!template.includes('{sa}') || !template.includes('{ns}')) return 'the template needs {sa} and {ns}';
  const unknown = /\{(?!sa\}|ns\}|trustDomain\})[^}]*\}/.exec(template);
  if (unknown) return `unknown placeholder ${unknown[0]}: expected {sa}, {ns} and {trustDomain}`;
  const sample = renderIdentity(template, 'sa', 'ns', trustDomain);
  // Pods' identities are dialled by the proxies that reach them.
  const why = dialableIdentityProblem(sample);
  return why === undefined ? undefined : `it gives "${sample}", which is not an identity: ${why}`;
}

/** A pod's identity from its service account and namespace. */
export function renderIdentity(template: string, serviceAccount: string, namespace: string, trustDomain: string): string {
  return template.replaceAll('{sa}', serviceAccount).replaceAll('{ns}', namespace).replaceAll('{trustDomain}', trustDomain);
}

/**
 * The identity pattern that covers every service account of a namespace
 * (`*.<ns>.serviceaccount...` for a template that starts with `{sa}.`), or
 * undefined when the template cannot express it as a suffix (SPIFFE IDs).
 */
export function namespacePattern(template: string, namespace: string, trustDomain: string): string | undefined {
  if (!template.startsWith('{sa}.') || template.slice(5).includes('{sa}')) return undefined;
  return `*.${renderIdentity(template.slice(5), '', namespace, trustDomain)}`;
}
