/**
 * The inbound authorization compiler: Linkerd's policy resources and
 * default policies -> the engine's per-port authorization table
 * (`AuthzSpec`, part of the policy table's frame (frame.ts), decided in
 * Rust by crates/meshpipe-core/src/authz.rs).
 *
 * For this workload:
 * - A port selected by a Server (the oldest, then by name, as for the port
 *   policy) allows exactly what the AuthorizationPolicies targeting that
 *   Server (or the whole namespace) authorize, and denies everything else; a
 *   Server with no AuthorizationPolicy denies everything.
 * - Every other port gets the default policy: the workload's
 *   `config.linkerd.io/default-inbound-policy` annotation, else its
 *   namespace's, else the cluster-wide `--default-inbound-policy`
 *   (Linkerd's default `all-unauthenticated`).
 *
 * An AuthorizationPolicy holds when all its required authentications hold:
 * a MeshTLSAuthentication (client identities, exact, `*` or `*.suffix`; or
 * ServiceAccounts and Namespaces turned into identities with the identity
 * template), a NetworkAuthentication (client networks, with excepts), or a
 * ServiceAccount. A policy whose references are missing, or that combines
 * authentications the engine cannot express (two identity sets with
 * wildcards, two network sets), authorizes nothing and is reported: a
 * mistake in policy never widens access. The same goes for an unknown
 * default policy name: `deny`, reported.
 */
import type { AuthzRuleSpec, AuthzSpec, PortAuthzSpec } from '../engine/index.js';
import { DEFAULT_INBOUND_POLICIES, type DefaultInboundPolicy } from '../config/index.js';
import { namespacePattern, renderIdentity } from '../identity/name.js';
import { serverDecisions } from './annotations.js';
import type { AuthorizationPolicyObject, AuthzObject, MeshTlsAuthenticationObject, NetworkAuthenticationObject } from './k8s/authz-objects.js';
import type { ObjectRef, ServerObject, WorkloadObject } from './k8s/objects.js';
import { objectProblem, type PolicyProblem } from './problems.js';
import { PROXY_PROTOCOL_MODES } from './model.js';

export const DEFAULT_INBOUND_POLICY_ANNOTATION = 'config.linkerd.io/default-inbound-policy';

export interface AuthzInputs {
  /** This proxy's workload (its labels and container ports select Servers). */
  readonly workload: WorkloadObject | undefined;
  /** The object problems about this workload are attributed to. */
  readonly ref: ObjectRef;
  readonly namespace: string;
  readonly workloadAnnotations: Readonly<Record<string, string>>;
  readonly namespaceAnnotations: Readonly<Record<string, string>>;
  readonly servers: readonly ServerObject[];
  readonly objects: readonly AuthzObject[];
  readonly clusterNetworks: readonly string[];
  readonly defaultPolicy: DefaultInboundPolicy;
  readonly trustDomain: string;
  readonly identityTemplate: string;
}

export interface AuthzResult {
  readonly spec: AuthzSpec;
  readonly problems: readonly PolicyProblem[];
}

/** The rules of a default policy. */
export function defaultPolicyRules(policy: DefaultInboundPolicy, clusterNetworks: readonly string[]): AuthzRuleSpec[] {
  const cluster = clusterNetworks.map((cidr) => ({ cidr, except: [] }));
  const rule = (networks: AuthzRuleSpec['networks'], identities: string[]): AuthzRuleSpec[] => [{ kind: 'default', name: policy, networks, identities }];
  switch (policy) {
    case 'all-unauthenticated':
    case 'audit':
      return rule([], []);
    case 'all-authenticated':
      return rule([], ['*']);
    case 'cluster-authenticated':
      return rule(cluster, ['*']);
    case 'cluster-unauthenticated':
      return rule(cluster, []);
    case 'deny':
      return [];
  }
}

/** The default policy for this workload, and where it came from. */
function effectiveDefault(inputs: AuthzInputs, problems: PolicyProblem[]): DefaultInboundPolicy {
  const annotated: [Readonly<Record<string, string>>, ObjectRef][] = [
    [inputs.workloadAnnotations, inputs.ref],
    [inputs.namespaceAnnotations, { kind: 'Namespace', namespace: '', name: inputs.namespace }],
  ];
  for (const [annotations, ref] of annotated) {
    const value = annotations[DEFAULT_INBOUND_POLICY_ANNOTATION];
    if (value === undefined) continue;
    const text = value.trim();
    if ((DEFAULT_INBOUND_POLICIES as readonly string[]).includes(text)) return text as DefaultInboundPolicy;
    problems.push(objectProblem(ref, DEFAULT_INBOUND_POLICY_ANNOTATION, value, `expected one of ${DEFAULT_INBOUND_POLICIES.join(', ')}; using deny until it is fixed`));
    return 'deny';
  }
  return inputs.defaultPolicy;
}

function ref(o: AuthzObject): ObjectRef {
  return { kind: o.kind, namespace: o.namespace, name: o.name };
}

/** One AuthorizationPolicy as a rule, or undefined (with a problem) when it authorizes nothing. */
function policyRule(p: AuthorizationPolicyObject, inputs: AuthzInputs, problems: PolicyProblem[]): AuthzRuleSpec | undefined {
  const fail = (field: string, token: string, reason: string): undefined => {
    problems.push(objectProblem(ref(p), field, token, `${reason}; the policy authorizes nothing`));
    return undefined;
  };
  const identitySets: string[][] = [];
  const networkSets: NetworkAuthenticationObject['networks'][] = [];
  for (const r of p.required) {
    const token = `${r.kind} ${r.namespace}/${r.name}`;
    if (r.kind === 'ServiceAccount') {
      identitySets.push([renderIdentity(inputs.identityTemplate, r.name, r.namespace, inputs.trustDomain)]);
      continue;
    }
    const target = inputs.objects.find((o) => o.kind === r.kind && o.namespace === r.namespace && o.name === r.name);
    if (!target) return fail('spec.requiredAuthenticationRefs', token, `no ${r.kind} ${r.namespace}/${r.name}`);
    if (target.kind === 'NetworkAuthentication') {
      if (target.networks.length === 0) return fail('spec.requiredAuthenticationRefs', token, 'it has no usable networks');
      networkSets.push(target.networks);
      continue;
    }
    const ids = meshTlsIdentities(target as MeshTlsAuthenticationObject, inputs, problems);
    if (ids.length === 0) return fail('spec.requiredAuthenticationRefs', token, 'it has no usable identities');
    identitySets.push(ids);
  }
  if (networkSets.length > 1) return fail('spec.requiredAuthenticationRefs', '', 'several NetworkAuthentications must all hold, which is not supported yet');
  let identities: string[] = [];
  if (identitySets.length === 1) identities = identitySets[0]!;
  else if (identitySets.length > 1) {
    // All must hold: the intersection, which is expressible only for exact names.
    if (identitySets.some((s) => s.some((i) => i.startsWith('*')))) {
      return fail('spec.requiredAuthenticationRefs', '', 'several identity authentications with wildcards must all hold, which is not supported yet');
    }
    identities = identitySets.reduce((a, b) => a.filter((i) => b.includes(i)));
    if (identities.length === 0) return fail('spec.requiredAuthenticationRefs', '', 'its identity authentications have no identity in common');
  }
  const networks = (networkSets[0] ?? []).map((n) => ({ cidr: n.cidr, except: [...n.except] }));
  return { kind: 'authorizationpolicy', name: p.name, networks, identities };
}

function meshTlsIdentities(m: MeshTlsAuthenticationObject, inputs: AuthzInputs, problems: PolicyProblem[]): string[] {
  const out = [...m.identities];
  for (const r of m.identityRefs) {
    if (r.kind === 'ServiceAccount') {
      out.push(renderIdentity(inputs.identityTemplate, r.name, r.namespace, inputs.trustDomain));
      continue;
    }
    const pattern = namespacePattern(inputs.identityTemplate, r.namespace, inputs.trustDomain);
    if (pattern === undefined) {
      problems.push(objectProblem(ref(m), 'spec.identityRefs', `Namespace ${r.namespace}`,
        `the identity template ${inputs.identityTemplate} cannot express "every service account of a namespace" as a suffix; this entry is ignored`));
    } else out.push(pattern);
  }
  return [...new Set(out)];
}

/** Compiles this workload's authorization table. Never throws. */
export function compileAuthz(inputs: AuthzInputs): AuthzResult {
  const problems: PolicyProblem[] = [];
  const policy = effectiveDefault(inputs, problems);
  const def: PortAuthzSpec = { port: 0, srvKind: 'default', srvName: policy, rules: defaultPolicyRules(policy, inputs.clusterNetworks) };
  const ports: PortAuthzSpec[] = [];
  if (inputs.workload) {
    // A Server with an unknown proxyProtocol is ignored by the port policy (and
    // reported there), but it still selects its port for authorization:
    // ignoring it here would hand the port to the default policy, widening access.
    const servers = inputs.servers.map((s) => (PROXY_PROTOCOL_MODES[s.proxyProtocol] === undefined ? { ...s, proxyProtocol: 'unknown' } : s));
    const decisions = serverDecisions(servers, inputs.namespace, inputs.workload.labels, inputs.workload.containerPorts, inputs.ref, problems);
    const policies = inputs.objects
      .filter((o): o is AuthorizationPolicyObject => o.kind === 'AuthorizationPolicy' && o.namespace === inputs.namespace)
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const cache = new Map<string, AuthzRuleSpec | undefined>();
    for (const d of decisions) {
      const rules: AuthzRuleSpec[] = [];
      for (const p of policies) {
        if (p.target.kind === 'Server' && p.target.name !== d.server.name) continue;
        if (!cache.has(p.name)) cache.set(p.name, policyRule(p, inputs, problems));
        const rule = cache.get(p.name);
        if (rule) rules.push(rule);
      }
      ports.push({ port: d.port, srvKind: 'server', srvName: d.server.name, rules });
    }
  }
  return { spec: { ports, default: def, exposedPorts: null }, problems };
}
