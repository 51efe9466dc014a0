/**
 * Meshed destinations: the outbound addresses that belong to a mesh peer,
 * with the identity the peer must prove and its tunnel port, compiled into
 * the engine's IP-indexed table (`DestinationsSpec`,
 * crates/meshpipe-core/src/destinations.rs).
 *
 * Two sources:
 * - Pods with the sidecar: `meshpipe.io/inject: enabled`,
 *   `linkerd.io/inject: enabled`, or an explicit `meshpipe.io/identity`
 *   annotation. Their identity is that annotation, else the identity
 *   template applied to the pod's service account and namespace under the
 *   trust domain; their tunnel port is `meshpipe.io/inbound-port`, else 4143.
 *   Each pod IP is one entry.
 * - A static `--destinations FILE` for hosts outside Kubernetes: one entry
 *   per line, `ADDRESS|CIDR IDENTITY [TUNNEL-PORT]`, `#` comments. File
 *   entries come first: an explicit entry wins over a pod with the same
 *   address (reported).
 *
 * Bad annotations and lines are problems naming the object or file:line;
 * the entry is left out (that destination then gets plaintext, labelled
 * `no_identity`, never mTLS to a guessed identity).
 */
import type { DestinationSpec, DestinationsSpec } from '../engine/index.js';
import { identityProblem, renderIdentity } from '../identity/name.js';
import { hostCidr, isCidrError, parseCidr } from './cidr.js';
import type { WorkloadObject } from './k8s/objects.js';
import { generalProblem, lineProblem, objectProblem, type PolicyProblem } from './problems.js';

export const MESH_ANNOTATIONS = {
  inject: 'meshpipe.io/inject',
  linkerdInject: 'linkerd.io/inject',
  identity: 'meshpipe.io/identity',
  inboundPort: 'meshpipe.io/inbound-port',
} as const;

/** Linkerd's inbound (and tunnel) port. */
export const DEFAULT_TUNNEL_PORT = 4143;

export interface DestinationsInputs {
  readonly generation: number;
  readonly pods: readonly WorkloadObject[];
  readonly trustDomain: string;
  readonly identityTemplate: string;
  /** Entries from `--destinations FILE` (parseDestinationsFile). */
  readonly fileEntries?: readonly DestinationSpec[] | undefined;
}

export interface DestinationsResult {
  readonly spec: DestinationsSpec;
  readonly problems: readonly PolicyProblem[];
}

function parsePort(text: string): number | undefined {
  const n = /^\d{1,5}$/.test(text.trim()) ? Number(text.trim()) : NaN;
  return Number.isInteger(n) && n >= 1 && n <= 65535 ? n : undefined;
}

/** True for a pod that runs the sidecar. */
export function isMeshed(pod: WorkloadObject): boolean {
  const a = pod.annotations;
  if (a[MESH_ANNOTATIONS.identity] !== undefined) return true;
  return a[MESH_ANNOTATIONS.inject] === 'enabled' || a[MESH_ANNOTATIONS.linkerdInject] === 'enabled';
}

/** The entries of meshed pods. */
function podEntries(inputs: DestinationsInputs, problems: PolicyProblem[]): DestinationSpec[] {
  const out: DestinationSpec[] = [];
  for (const pod of inputs.pods) {
    if (pod.kind !== 'Pod' || !isMeshed(pod) || pod.podIPs.length === 0) continue;
    const ref = { kind: pod.kind, namespace: pod.namespace, name: pod.name };
    const explicit = pod.annotations[MESH_ANNOTATIONS.identity];
    const identity = explicit?.trim() ?? renderIdentity(inputs.identityTemplate, pod.serviceAccount, pod.namespace, inputs.trustDomain);
    const why = identityProblem(identity);
    if (why !== undefined) {
      const field = explicit !== undefined ? MESH_ANNOTATIONS.identity : 'spec.serviceAccountName';
      problems.push(objectProblem(ref, field, identity, `${why}; the pod is not treated as meshed`));
      continue;
    }
    const portText = pod.annotations[MESH_ANNOTATIONS.inboundPort];
    const tunnelPort = portText === undefined ? DEFAULT_TUNNEL_PORT : parsePort(portText);
    if (tunnelPort === undefined) {
      problems.push(objectProblem(ref, MESH_ANNOTATIONS.inboundPort, portText ?? '', 'expected a port 1-65535; the pod is not treated as meshed'));
      continue;
    }
    for (const ip of pod.podIPs) {
      const host = hostCidr(ip);
      if (!host) {
        problems.push(objectProblem(ref, 'status.podIPs', ip, 'not an IP address; this address is left out'));
        continue;
      }
      out.push({ net: host.text, identity, tunnelPort, source: `Pod ${pod.namespace}/${pod.name}` });
    }
  }
  return out;
}

/** Compiles the meshed-destinations table. Never throws. */
export function compileDestinations(inputs: DestinationsInputs): DestinationsResult {
  const problems: PolicyProblem[] = [];
  const entries: DestinationSpec[] = [];
  const seen = new Map<string, DestinationSpec>();
  for (const e of [...(inputs.fileEntries ?? []), ...podEntries(inputs, problems)]) {
    const first = seen.get(e.net);
    if (first) {
      if (first.identity !== e.identity || first.tunnelPort !== e.tunnelPort) {
        problems.push(generalProblem(
          `meshed destination ${e.net}: ${e.source} says ${e.identity} port ${e.tunnelPort}, but ${first.source} (${first.identity} port ${first.tunnelPort}) comes first and is used`,
          e.net,
        ));
      }
      continue;
    }
    seen.set(e.net, e);
    entries.push(e);
  }
  return { spec: { generation: inputs.generation, entries }, problems };
}

/**
 * Parses a `--destinations` file: `ADDRESS|CIDR IDENTITY [TUNNEL-PORT]` per
 * line, blank lines and `#` comments ignored. Bad lines are problems
 * (file:line); the good lines still count.
 */
export function parseDestinationsFile(file: string, text: string): { entries: DestinationSpec[]; problems: PolicyProblem[] } {
  const entries: DestinationSpec[] = [];
  const problems: PolicyProblem[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = i + 1;
    const content = raw.replace(/#.*$/, '').trim();
    if (content === '') return;
    const fields = content.split(/\s+/);
    const bad = (reason: string): void => {
      problems.push(lineProblem(file, line, `line ${line}: "${content}": ${reason}`));
    };
    if (fields.length < 2 || fields.length > 3) return bad('expected ADDRESS|CIDR IDENTITY [TUNNEL-PORT]');
    const [netText = '', identity = '', portText] = fields;
    const net = parseCidr(netText);
    if (isCidrError(net)) return bad(net.error);
    const why = identityProblem(identity);
    if (why !== undefined) return bad(`identity "${identity}": ${why}`);
    const tunnelPort = portText === undefined ? DEFAULT_TUNNEL_PORT : parsePort(portText);
    if (tunnelPort === undefined) return bad(`tunnel port "${portText}": expected 1-65535`);
    entries.push({ net: net.text, identity, tunnelPort, source: `${file}:${line}` });
  });
  return { entries, problems };
}
