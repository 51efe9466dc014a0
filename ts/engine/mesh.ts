/**
 * The addon's mesh identity and policy functions, typed: creating a trust
 * anchor and issuer, issuing a workload certificate, checking identity
 * material (chain, key, anchors, validity, identity name), and the engine's
 * own authorization decision for a table (tests of the authorization
 * compiler; explain asks the compiled policy table, PolicyLookup).
 *
 * Values cross as JSON of the generated boundary types; PEM bytes cross as
 * Buffers. Errors are `MeshpipeError`s: `ERR_IDENTITY` (exit 2) for
 * identity material that cannot be used, naming the file and the reason.
 */
import { call, loadBinding } from './native.js';
import type {
  AuthzSpec,
  DecisionInfo,
  IdentityInfo,
  InitSpec,
  IssueSpec,
  IssuedPem,
  LoadSpec,
  TrustBundle,
} from './boundary.js';

/** A new trust anchor and issuer (ECDSA P-256). */
export function identityInit(spec: InitSpec): TrustBundle {
  const { identityInit: init } = loadBinding();
  return JSON.parse(call(() => init(JSON.stringify(spec)))) as TrustBundle;
}

/** A workload certificate (leaf + issuer chain) and its key, signed by the issuer in `spec`. */
export function identityIssue(spec: IssueSpec): IssuedPem {
  const { identityIssue: issue } = loadBinding();
  return JSON.parse(call(() => issue(JSON.stringify(spec)))) as IssuedPem;
}

/** Checks identity material; throws `ERR_IDENTITY` naming the file and the reason. */
export function identityCheck(spec: LoadSpec, cert: Buffer, key: Buffer, anchors: Buffer): IdentityInfo {
  const { identityCheck: check } = loadBinding();
  return JSON.parse(call(() => check(JSON.stringify(spec), cert, key, anchors))) as IdentityInfo;
}

/** The engine's decision for a connection to `port` from `clientIp` (authenticated as `clientIdentity`, or null). */
export function authzDecide(table: AuthzSpec, port: number, clientIdentity: string | null, clientIp: string): DecisionInfo {
  const { authzDecide: decide } = loadBinding();
  return JSON.parse(call(() => decide(JSON.stringify(table), port, clientIdentity ?? undefined, clientIp))) as DecisionInfo;
}
