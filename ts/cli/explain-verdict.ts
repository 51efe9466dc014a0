/**
 * The verdicts of `meshpipe explain --port`: for each case the port can meet
 * (inbound to this workload; outbound to the given destination, to each known
 * destination, to any other one inside and outside clusterNetworks), what the
 * compiled policy decides, asked of the engine's own lookup
 * (ts/policy/lookup.ts), and what to configure given that decision.
 *
 * The advice follows from the decision, never beside it: a port the policy
 * already makes opaque (a default opaque port inside the cluster, an
 * annotation, a Server) needs nothing; a port that is detected needs nothing
 * when its protocol is HTTP or TLS (detection is what serves them: an HTTP
 * port is never advised opaque), and otherwise gets the annotation that makes
 * it opaque where the proxy would read it. So explain can no longer say one
 * thing in its advice and show another in the policy.
 */

import { addressIn, inNetworks, lookupPolicy, type Cidr, type CompileResult, type PortDecision } from '../policy/index.js';
import { describeRef } from '../policy/k8s/index.js';
import { formatPortList, portInRanges, type PortRange } from '../config/index.js';

/** What explain knows of the protocol on the port. */
export interface ProtocolFacts {
  readonly name: string | null;
  /** The server sends first (SMTP, MySQL): detection waits for a client that says nothing. */
  readonly serverFirst: boolean | null;
  /** TLS from the first byte. */
  readonly tls: boolean;
  /** HTTP/1, HTTP/2 or gRPC, client first: what detection is for. */
  readonly http: boolean;
}

/** One case and what to do about it. */
export interface Verdict {
  readonly direction: 'inbound' | 'outbound';
  /** e.g. `destination inside clusterNetworks`, `inbound to Deployment shop/web`, `outbound to 10.0.0.5`. */
  readonly when: string;
  /** What the connection targets, e.g. `Deployment shop/web port 6379` or `10.0.0.5:6379`. */
  readonly target: string;
  /** The address asked of the engine. */
  readonly address: string;
  /** The compiled policy's decision and its source. */
  readonly mode: string;
  readonly source: string;
  readonly action: string;
  readonly why: string;
}

export interface VerdictInputs {
  readonly port: number;
  readonly protocol: ProtocolFacts;
  readonly destination: string | undefined;
  readonly networks: readonly Cidr[];
  readonly defaultOpaque: readonly PortRange[];
  readonly result: CompileResult;
  /** A workload is known (annotations file, --pod): its inbound side is a case too. */
  readonly hasWorkload: boolean;
}

/** Addresses outside any usual cluster network (documentation ranges, RFC 5737), to ask about "any destination outside". */
const OUTSIDE_CANDIDATES = ['203.0.113.1', '198.51.100.1', '192.0.2.1', '2001:db8::1'];

function hostPort(address: string, port: number): string {
  return `${address.includes(':') ? `[${address}]` : address}:${port}`;
}

/** The verdict for one case, from the engine's decision. */
function judge(
  inputs: VerdictInputs,
  c: { direction: 'inbound' | 'outbound'; when: string; target: string; address: string; inside: boolean },
): Verdict {
  const { port, protocol } = inputs;
  const hit = lookupPolicy(inputs.result.table, c.direction, c.address, port);
  // Inbound, the effective policy says why nothing matched (e.g. an annotation that replaced the defaults).
  const inboundWhy = c.direction === 'inbound' ? inputs.result.effective.inbound.ports.find((d) => port >= d.ports.from && port <= d.ports.to)?.source : undefined;
  const source = hit.matched === 'default' ? (inboundWhy ?? 'detect: nothing configured for it') : hit.source;
  const base = { ...c, mode: hit.mode, source };
  if (hit.mode !== 'detect') {
    const httpNote = hit.mode === 'opaque' && protocol.http
      ? `; note: ${protocol.name ?? 'HTTP'} through an opaque port is forwarded as TCP, without HTTP detection: remove it from opaque-ports if you want it detected`
      : '';
    return { ...base, action: 'nothing to configure', why: `the policy already makes it ${hit.mode} (${source})${httpNote}` };
  }
  if (protocol.tls) {
    return { ...base, action: 'nothing to configure', why: 'the protocol is wrapped in TLS: meshpipe detects the ClientHello and proxies it as opaque TCP (SNI kept for metrics)' };
  }
  if (protocol.http) {
    return { ...base, action: 'nothing to configure', why: `${protocol.name ?? 'HTTP'} is detected as HTTP/1 or HTTP/2 (the client speaks first); marking it opaque would turn detection off` };
  }
  const inDefaults = portInRanges(port, inputs.defaultOpaque);
  let action: string;
  let where: string;
  if (c.direction === 'inbound') {
    // The annotation is one list that replaces the defaults: keep what it already holds.
    const listed = inputs.result.effective.inbound.decisions
      .filter((d) => d.mode === 'opaque' && d.source.includes('config.linkerd.io/opaque-ports'))
      .map((d) => d.ports);
    const value = formatPortList([...listed, { from: port, to: port }]);
    action = `set config.linkerd.io/opaque-ports: "${value}" on this workload (its pod template or namespace), or a Server for the port with proxyProtocol: opaque`;
    where = listed.length > 0 ? `this workload receives it, and its opaque-ports annotation (${formatPortList(listed)}) replaces the default list` : 'this workload receives it';
  } else if (c.inside) {
    action = `set config.linkerd.io/opaque-ports: "${port}" on the destination (its Service, pod template or namespace)`;
    where = `${port} is ${inDefaults ? '' : 'not '}in the default opaque list (${formatPortList(inputs.defaultOpaque)}); the destination is inside clusterNetworks: mark it opaque on the destination so both the caller and the destination skip detection`;
  } else if (inDefaults) {
    action = 'set config.linkerd.io/enable-external-profiles: "true" on the caller';
    where = `${port} is in the default opaque list; ${c.when === 'destination outside clusterNetworks' ? 'a destination' : `destination ${c.address}`} is outside clusterNetworks: set config.linkerd.io/enable-external-profiles on the caller`;
  } else {
    action = `set config.linkerd.io/skip-outbound-ports: "${port}" on the caller`;
    where = `${port} is not in the default opaque list; the destination is outside clusterNetworks: skip it on the caller so the connection bypasses the proxy (or run the proxy with --opaque-ports ${port})`;
  }
  const reason = protocol.serverFirst === true
    ? `${protocol.name} is server-first: detection would wait for a client that says nothing`
    : protocol.serverFirst === false
      ? `optional: ${protocol.name}'s first bytes are not HTTP, so detection decides quickly; opaque skips detection altogether`
      : 'if the server speaks first, or the client\'s first bytes may look like HTTP';
  return { ...base, action, why: `${reason}; ${where}` };
}

/** Every case of a port, judged. */
export function verdicts(inputs: VerdictInputs): Verdict[] {
  const { port, result, networks } = inputs;
  const out: Verdict[] = [];
  if (inputs.hasWorkload) {
    const w = result.effective.workload;
    out.push(judge(inputs, { direction: 'inbound', when: `inbound to ${w ? describeRef(w) : 'this pod'}`, target: `${w ? describeRef(w) : 'this pod'} port ${port}`, address: '0.0.0.0', inside: true }));
  }
  if (inputs.destination !== undefined) {
    const d = inputs.destination;
    out.push(judge(inputs, { direction: 'outbound', when: `outbound to ${d}`, target: hostPort(d, port), address: d, inside: inNetworks(networks, d) }));
    return out;
  }
  // Destinations the manifests name that expose the port, then any other destination.
  for (const d of result.effective.outbound.destinations) {
    const covers = d.decisions.some((x: PortDecision) => port >= x.ports.from && port <= x.ports.to);
    const address = d.addresses[0];
    if (!covers || address === undefined) continue;
    out.push(judge(inputs, {
      direction: 'outbound', when: `outbound to ${describeRef(d.object)}`, target: `${describeRef(d.object)} (${d.addresses.join(', ')}) port ${port}`,
      address, inside: inNetworks(networks, address),
    }));
  }
  const inside = networks[0];
  if (inside !== undefined) {
    // An address of the network that is no known destination (whose own policy is shown above).
    const candidates = Array.from({ length: 16 }, (_, i) => addressIn(inside, i + 1));
    const address = candidates.find((a) => lookupPolicy(result.table, 'outbound', a, port).matched !== 'destination') ?? candidates[0]!;
    out.push(judge(inputs, { direction: 'outbound', when: 'destination inside clusterNetworks', target: `any other destination in ${networks.map((n) => n.text).join(',')} port ${port}`, address, inside: true }));
  }
  const outside = OUTSIDE_CANDIDATES.find((a) => !inNetworks(networks, a));
  if (outside !== undefined) {
    out.push(judge(inputs, { direction: 'outbound', when: 'destination outside clusterNetworks', target: `any destination outside clusterNetworks port ${port}`, address: outside, inside: false }));
  }
  return out;
}
