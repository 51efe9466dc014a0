/**
 * Meshed destinations: the outbound addresses that belong to a mesh peer,
 * with the identity the peer must prove and its tunnel port. They are part
 * of the engine's policy table (ARCHITECTURE.md), so one lookup per
 * connection answers both the port policy and the mesh question, and the
 * policy's deltas keep both current.
 *
 * Two sources:
 * - Pods with the sidecar (`meshPeerOf`): `meshpipe.io/inject: enabled`,
 *   `linkerd.io/inject: enabled`, an explicit `meshpipe.io/identity`
 *   annotation, or injection's marker `meshpipe.io/injected-identity` naming
 *   where the sidecar's certificate comes from (so pods injected because
 *   their namespace asked count too). A pod whose marker says `none` was
 *   injected without an identity: its proxy cannot terminate mesh TLS, so it
 *   is never meshed, whatever else it says. Their identity is that annotation, else the identity
 *   template applied to the pod's service account and namespace under the
 *   trust domain; their tunnel port is `meshpipe.io/inbound-port`, else
 *   4143. The peer rides on the pod's port table (shared by every replica
 *   of a workload: same service account, same identity), so each pod IP is
 *   meshed with no entry of its own.
 * - A static `--destinations FILE` for hosts outside Kubernetes
 *   (`parseDestinationsFile`): one entry per line,
 *   `ADDRESS|CIDR IDENTITY [TUNNEL-PORT]`, `#` comments. They are part of
 *   the table's frame. A single address listed there wins over a pod with
 *   the same address (the operator said so explicitly); a pod's own peer
 *   wins over a network listed there. `meshpipe explain --destination`
 *   shows which applies, with its source.
 *
 * Bad annotations and lines are problems naming the object or file:line;
 * the entry is left out (that destination then gets plaintext, labelled
 * `no_identity`, never mTLS to a guessed identity).
 */
import type { DestinationSpec, MeshPeerSpec } from '../engine/index.js';
import { dialableIdentityProblem, renderIdentity } from '../identity/name.js';
import { isCidrError, parseCidr } from './cidr.js';
import type { WorkloadObject } from './k8s/objects.js';
import type { MeshSettings } from './model.js';
import { generalProblem, lineProblem, objectProblem, type PolicyProblem } from './problems.js';

export const MESH_ANNOTATIONS = {
  inject: 'meshpipe.io/inject',
  linkerdInject: 'linkerd.io/inject',
  identity: 'meshpipe.io/identity',
  inboundPort: 'meshpipe.io/inbound-port',
  /** Written by injection: `cert-manager-csi`, `secret` or `none` (ts/inject/identity.ts). */
  injectedIdentity: 'meshpipe.io/injected-identity',
} as const;

/** Linkerd's inbound (and tunnel) port. */
export const DEFAULT_TUNNEL_PORT = 4143;

function parsePort(text: string): number | undefined {
  const n = /^\d{1,5}$/.test(text.trim()) ? Number(text.trim()) : NaN;
  return Number.isInteger(n) && n >= 1 && n <= 65535 ? n : undefined;
}

/** True for a pod that runs the sidecar. */
export function isMeshed(pod: WorkloadObject): boolean {
  const a = pod.annotations;
  const injected = a[MESH_ANNOTATIONS.injectedIdentity];
  if (injected === 'none') return false;
  if (a[MESH_ANNOTATIONS.identity] !== undefined || injected !== undefined) return true;
  return a[MESH_ANNOTATIONS.inject] === 'enabled' || a[MESH_ANNOTATIONS.linkerdInject] === 'enabled';
}

/** Peers recur on every replica: one instance each (bounded). */
const peers = new Map<string, MeshPeerSpec>();

/**
 * The mesh peer of a Pod (with `{destination}` in its source for the pod's
 * name), or undefined when it is not meshed or its annotations are wrong
 * (a problem then says why).
 */
export function meshPeerOf(pod: WorkloadObject, settings: MeshSettings, problems: PolicyProblem[]): MeshPeerSpec | undefined {
  if (pod.kind !== 'Pod' || !isMeshed(pod)) return undefined;
  const ref = { kind: pod.kind, namespace: pod.namespace, name: pod.name };
  const explicit = pod.annotations[MESH_ANNOTATIONS.identity];
  const identity = explicit?.trim() ?? renderIdentity(settings.identityTemplate, pod.serviceAccount, pod.namespace, settings.trustDomain);
  const why = dialableIdentityProblem(identity);
  if (why !== undefined) {
    const field = explicit !== undefined ? MESH_ANNOTATIONS.identity : 'spec.serviceAccountName';
    problems.push(objectProblem(ref, field, identity, `${why}; the pod is not treated as meshed`));
    return undefined;
  }
  const portText = pod.annotations[MESH_ANNOTATIONS.inboundPort];
  const tunnelPort = portText === undefined ? DEFAULT_TUNNEL_PORT : parsePort(portText);
  if (tunnelPort === undefined) {
    problems.push(objectProblem(ref, MESH_ANNOTATIONS.inboundPort, portText ?? '', 'expected a port 1-65535; the pod is not treated as meshed'));
    return undefined;
  }
  const injected = pod.annotations[MESH_ANNOTATIONS.injectedIdentity];
  const how = explicit !== undefined
    ? `${MESH_ANNOTATIONS.identity}`
    : injected !== undefined ? `${MESH_ANNOTATIONS.injectedIdentity}=${injected}`
      : pod.annotations[MESH_ANNOTATIONS.inject] === 'enabled' ? `${MESH_ANNOTATIONS.inject}=enabled` : `${MESH_ANNOTATIONS.linkerdInject}=enabled`;
  const source = `meshed: ${how} on {destination}${explicit !== undefined ? '' : ` (service account ${pod.serviceAccount})`}`;
  const key = `${identity}\u0000${tunnelPort}\u0000${source}`;
  let peer = peers.get(key);
  if (!peer) {
    if (peers.size >= 65_536) peers.clear();
    peer = Object.freeze({ identity, tunnelPort, source });
    peers.set(key, peer);
  }
  return peer;
}

/** The key of a peer's content (equal peers, equal keys). */
export function peerKey(peer: MeshPeerSpec | undefined): string {
  return peer === undefined ? '' : `${peer.identity}\u0000${peer.tunnelPort}\u0000${peer.source}`;
}

/**
 * The static entries as the engine takes them: the same network listed
 * twice keeps its first entry (a different second one is reported).
 */
export function staticDestinations(entries: readonly DestinationSpec[]): { entries: DestinationSpec[]; problems: PolicyProblem[] } {
  const problems: PolicyProblem[] = [];
  const out: DestinationSpec[] = [];
  const seen = new Map<string, DestinationSpec>();
  for (const e of entries) {
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
    out.push(e);
  }
  return { entries: out, problems };
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
    const why = dialableIdentityProblem(identity);
    if (why !== undefined) return bad(`identity "${identity}": ${why}`);
    const tunnelPort = portText === undefined ? DEFAULT_TUNNEL_PORT : parsePort(portText);
    if (tunnelPort === undefined) return bad(`tunnel port "${portText}": expected 1-65535`);
    entries.push({ net: net.text, identity, tunnelPort, source: `${file}:${line}` });
  });
  return { entries, problems };
}
