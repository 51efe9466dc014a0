/**
 * `meshpipe explain`: the decision tree of Linkerd's "TCP Proxying and
 * Protocol Detection" page, executable, plus the effective port policy of
 * workloads with the source of every decision.
 *
 *   meshpipe explain --port 3306 [--protocol mysql] [--destination 203.0.113.9]
 *       [--tls] [--manifests PATH]... [--annotations FILE]
 *       [--namespace NS --pod NAME] [--cluster-networks LIST]
 *       [--default-opaque-ports LIST] [--json]
 *
 * With --port (or --protocol) it walks the tree (TLS? default opaque port?
 * destination inside clusterNetworks?) and says what to configure and why;
 * with manifests or annotations it also shows what the compiled policy does
 * for that port today. With manifests and no port it prints every workload's
 * inbound ports and every destination's outbound ports with their sources.
 * `--json` prints the same answers as JSON for scripts. A small table of
 * well-known protocols (ports, who speaks first) backs `--protocol` and the
 * notes.
 */

import { isIP } from 'node:net';
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import {
  compileAllWorkloads,
  compilePolicy,
  DEFAULT_CLUSTER_NETWORKS,
  inNetworks,
  lineProblem,
  lookupPolicy,
  parseCidrListStrict,
  parseDownwardApi,
  type CompileResult,
  type PolicyInputs,
  type PortDecision,
} from '../policy/index.js';
import { MeshpipeError } from '../errors.js';
import { describeRef, EMPTY_MANIFESTS, loadManifests } from '../policy/k8s/index.js';
import { DEFAULT_OPAQUE_PORTS, formatPortList, parsePortListStrict, portInRanges } from '../config/index.js';
import { renderEffective, renderEffectiveJson } from './explain-render.js';

// ---------------------------------------------------------------------------
// Known protocols.
/*
 * A small table of well-known TCP protocols for `meshpipe explain`: their
 * usual ports, whether the server speaks first (so a detecting proxy that
 * waits for the client would stall), and what Linkerd users usually
 * configure for them. Ports in Linkerd's default opaque list (25, 587, 3306,
 * 4444, 5432, 6379, 9300, 11211) need nothing inside the cluster.
 */

export interface KnownProtocol {
  readonly name: string;
  readonly aliases: readonly string[];
  readonly ports: readonly number[];
  readonly serverFirst: boolean;
  /** Wrapped in TLS from the first byte (no configuration needed). */
  readonly tls: boolean;
  readonly note: string;
}

export const KNOWN_PROTOCOLS: readonly KnownProtocol[] = Object.freeze([
  { name: 'smtp', aliases: ['submission'], ports: [25, 587], serverFirst: true, tls: false,
    note: 'the server greets first (220); 25 and 587 are default opaque ports' },
  { name: 'mysql', aliases: ['mariadb'], ports: [3306], serverFirst: true, tls: false,
    note: 'the server sends its handshake first; 3306 is a default opaque port' },
  { name: 'galera', aliases: [], ports: [3306, 4444, 4567, 4568], serverFirst: true, tls: false,
    note: '3306 and 4444 (SST) are default opaque ports; 4567 and 4568 are not: Linkerd\'s chart skips them (ignoreInboundPorts/ignoreOutboundPorts)' },
  { name: 'postgresql', aliases: ['postgres', 'pg'], ports: [5432], serverFirst: false, tls: false,
    note: 'client-first, but its binary startup message is not HTTP; 5432 is a default opaque port' },
  { name: 'redis', aliases: ['valkey'], ports: [6379], serverFirst: false, tls: false,
    note: 'client-first RESP; 6379 is a default opaque port' },
  { name: 'elasticsearch', aliases: ['opensearch'], ports: [9300], serverFirst: false, tls: false,
    note: 'the transport protocol on 9300 is a default opaque port (the HTTP API on 9200 is detected as HTTP)' },
  { name: 'memcache', aliases: ['memcached'], ports: [11211], serverFirst: false, tls: false,
    note: 'client-first text/binary protocol; 11211 is a default opaque port' },
  { name: 'ssh', aliases: [], ports: [22], serverFirst: true, tls: false,
    note: 'both sides send a version banner; the server usually first' },
  { name: 'ftp', aliases: [], ports: [21], serverFirst: true, tls: false, note: 'the server greets first (220)' },
  { name: 'pop3', aliases: [], ports: [110], serverFirst: true, tls: false, note: 'the server greets first (+OK)' },
  { name: 'imap', aliases: [], ports: [143], serverFirst: true, tls: false, note: 'the server greets first (* OK)' },
  { name: 'nats', aliases: [], ports: [4222], serverFirst: true, tls: false, note: 'the server sends INFO first' },
  { name: 'vnc', aliases: ['rfb'], ports: [5900], serverFirst: true, tls: false, note: 'the server sends its RFB version first' },
  { name: 'https', aliases: ['tls'], ports: [443], serverFirst: false, tls: true,
    note: 'TLS from the first byte: detected as TLS and proxied as opaque TCP with its SNI kept' },
  { name: 'http', aliases: ['http1', 'grpc', 'h2c'], ports: [80, 8080], serverFirst: false, tls: false,
    note: 'detected as HTTP/1 or HTTP/2; no configuration needed' },
]);

/** Finds a protocol by name or alias (case-insensitive). */
export function findProtocol(name: string): KnownProtocol | undefined {
  const n = name.trim().toLowerCase();
  return KNOWN_PROTOCOLS.find((p) => p.name === n || p.aliases.includes(n));
}

/** Protocols that commonly use a port. */
export function protocolsOnPort(port: number): KnownProtocol[] {
  return KNOWN_PROTOCOLS.filter((p) => p.ports.includes(port));
}

/** The table as aligned text lines. */
export function formatProtocolTable(): string[] {
  const rows = KNOWN_PROTOCOLS.map((p) => [p.name, p.ports.join(','), p.tls ? 'tls' : p.serverFirst ? 'server' : 'client', p.note]);
  const head = ['protocol', 'ports', 'speaks first', 'note'];
  const widths = [0, 1, 2].map((i) => Math.max(head[i]?.length ?? 0, ...rows.map((r) => r[i]?.length ?? 0)));
  const line = (r: readonly string[]): string => r.map((c, i) => (i < 3 ? c.padEnd(widths[i] ?? 0) : c)).join('  ').trimEnd();
  return [line(head), ...rows.map(line)];
}

// ---------------------------------------------------------------------------

const USAGE = `Usage: meshpipe explain [--port PORT] [--protocol NAME] [--destination IP] [--tls]
                        [--manifests PATH]... [--annotations FILE] [--namespace NS --pod NAME]
                        [--cluster-networks LIST] [--default-opaque-ports LIST] [--json]

Walks the decision tree of Linkerd's TCP proxying and protocol detection page for a port and
says what to configure and why. With --manifests (files or folders, repeatable) and no --port,
prints the effective inbound and outbound policy of every workload port with its source.

  --port PORT                 the TCP port in question
  --protocol NAME             a protocol name (mysql, smtp, redis, ...); implies its ports
  --destination IP            the address the client connects to (decides clusterNetworks)
  --tls                       the protocol is wrapped in TLS from the first byte
  --manifests PATH            Kubernetes manifests (file or folder; repeatable)
  --annotations FILE          the workload's downward-API annotations file
  --namespace NS, --pod NAME  which workload is "this" proxy's
  --cluster-networks LIST     default ${DEFAULT_CLUSTER_NETWORKS}
  --default-opaque-ports LIST default ${DEFAULT_OPAQUE_PORTS}
  --json                      machine-readable output
`;

/** The answer for one port. */
export interface PortExplanation {
  readonly port: number;
  readonly protocol: string | null;
  readonly serverFirst: boolean | null;
  readonly tls: boolean;
  readonly inDefaultOpaquePorts: boolean;
  readonly destination: string | null;
  readonly insideClusterNetworks: boolean | null;
  /** What to configure, per branch of the tree that applies. */
  readonly advice: readonly { readonly when: string; readonly action: string; readonly why: string }[];
  readonly notes: readonly string[];
  /** What the compiled policy does today, when manifests or annotations were given. */
  readonly current: readonly { readonly direction: 'inbound' | 'outbound'; readonly target: string; readonly mode: string; readonly source: string }[];
}

function fail(message: string): never {
  throw new MeshpipeError('ERR_INVALID_ARGUMENT', `explain: ${message}`);
}

function parsePort(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > 65535) fail(`--port "${text}": expected a port number 1-65535`);
  return Number(text);
}

/** Walks the seed page's tree for one port. Pure: no I/O. */
export function explainPort(args: {
  port: number; protocol: KnownProtocol | undefined; tls: boolean; destination: string | undefined;
  clusterNetworks: ReturnType<typeof parseCidrListStrict>; defaultOpaque: ReturnType<typeof parsePortListStrict>;
}): Omit<PortExplanation, 'current'> {
  const { port, protocol, destination } = args;
  const tls = args.tls || protocol?.tls === true;
  const inDefaults = portInRanges(port, args.defaultOpaque);
  const inside = destination === undefined ? null : inNetworks(args.clusterNetworks, destination);
  const list = formatPortList(args.defaultOpaque);
  const advice: { when: string; action: string; why: string }[] = [];
  const notes: string[] = [];
  const dest = destination ?? 'a destination';
  if (tls) {
    advice.push({ when: 'always', action: 'nothing to configure',
      why: `the protocol is wrapped in TLS: meshpipe detects the ClientHello and proxies it as opaque TCP (SNI kept for metrics)` });
  } else if (inDefaults) {
    if (inside !== false) {
      advice.push({ when: 'destination inside clusterNetworks', action: 'nothing to configure',
        why: `${port} is in the default opaque list (${list}); ${destination ?? 'a destination'} inside clusterNetworks gets it on both sides` });
    }
    if (inside !== true) {
      advice.push({ when: 'destination outside clusterNetworks', action: 'set config.linkerd.io/enable-external-profiles: "true" on the caller',
        why: `${port} is in the default opaque list; ${destination === undefined ? dest : `destination ${dest}`} is outside clusterNetworks: set config.linkerd.io/enable-external-profiles on the caller` });
    }
  } else {
    if (inside !== false) {
      advice.push({ when: 'destination inside clusterNetworks', action: `set config.linkerd.io/opaque-ports: "${port}" on the destination (its Service, pod template or namespace)`,
        why: `${port} is not in the default opaque list (${list}); ${destination ?? 'a destination'} inside clusterNetworks: mark it opaque on the destination so both the caller and the destination skip detection` });
    }
    if (inside !== true) {
      advice.push({ when: 'destination outside clusterNetworks', action: `set config.linkerd.io/skip-outbound-ports: "${port}" on the caller`,
        why: `${port} is not in the default opaque list; ${destination === undefined ? dest : `destination ${dest}`} is outside clusterNetworks: skip it on the caller so the connection bypasses the proxy` });
    }
  }
  if (!tls && !inDefaults && protocol?.serverFirst !== false) {
    notes.push(`${protocol?.serverFirst ? `${protocol.name} is server-first. ` : 'If the server speaks first: '}`
      + 'meshpipe\'s server-first fast path means an unconfigured server-first port is not stalled 10 s: only the first connection '
      + 'to a target waits the grace period (100ms by default), later ones skip detection; marking the port opaque is still the precise fix.');
  }
  if (protocol) notes.push(`${protocol.name}: ${protocol.note}`);
  else for (const p of protocolsOnPort(port)) notes.push(`port ${port} is commonly ${p.name}: ${p.note}`);
  return {
    port, protocol: protocol?.name ?? null, serverFirst: protocol ? protocol.serverFirst : null, tls,
    inDefaultOpaquePorts: inDefaults, destination: destination ?? null, insideClusterNetworks: inside, advice, notes,
  };
}

function renderPort(e: PortExplanation, networks: string, list: string): string {
  const out: string[] = [];
  out.push(`Port ${e.port}${e.protocol ? ` (${e.protocol}${e.serverFirst ? ', server speaks first' : ''})` : ''}`);
  out.push(`  1. Is the protocol wrapped in TLS? ${e.tls ? 'yes' : 'no'}`);
  if (!e.tls) {
    out.push(`  2. Is ${e.port} in the default opaque ports (${list})? ${e.inDefaultOpaquePorts ? 'yes' : 'no'}`);
    const q = `  3. Is the destination inside clusterNetworks (${networks})?`;
    out.push(e.destination === null ? `${q} (no --destination: both answers)` : `${q} ${e.destination}: ${e.insideClusterNetworks ? 'yes' : 'no'}`);
  }
  for (const a of e.advice) {
    out.push(`  => ${e.advice.length > 1 ? `${a.when}: ` : ''}${a.action}`);
    out.push(`     why: ${a.why}`);
  }
  for (const n of e.notes) out.push(`  note: ${n}`);
  if (e.current.length > 0) {
    out.push('  current policy:');
    for (const c of e.current) out.push(`    ${c.direction} ${c.target}: ${c.mode} (${c.source})`);
  }
  return `${out.join('\n')}\n`;
}

/**
 * What the compiled policy does for this port today: the engine's own
 * lookup on the compiled table (ts/policy/lookup.ts), not a copy of it.
 */
function currentFor(port: number, destination: string | undefined, result: CompileResult, hasWorkload: boolean): PortExplanation['current'] {
  const table = result.table;
  const out: { direction: 'inbound' | 'outbound'; target: string; mode: string; source: string }[] = [];
  if (hasWorkload) {
    const hit = lookupPolicy(table, 'inbound', '0.0.0.0', port);
    const w = result.effective.workload;
    const fallback = result.effective.inbound.ports.find((p) => p.ports.from === port);
    out.push({ direction: 'inbound', target: `${w ? describeRef(w) : 'this pod'} port ${port}`, mode: hit.mode,
      source: hit.matched !== 'default' ? hit.source : (fallback?.source ?? 'detect: nothing configured') });
  }
  if (destination !== undefined) {
    const hit = lookupPolicy(table, 'outbound', destination, port);
    out.push({ direction: 'outbound', target: `${destination.includes(':') ? `[${destination}]` : destination}:${port}`, mode: hit.mode,
      source: hit.matched !== 'default' ? hit.source : 'detect: nothing configured for this destination' });
  } else {
    for (const d of result.effective.outbound.destinations) {
      const dec = d.decisions.find((x: PortDecision) => port >= x.ports.from && port <= x.ports.to);
      if (dec) out.push({ direction: 'outbound', target: `${describeRef(d.object)}${d.addresses.length > 0 ? ` (${d.addresses.join(', ')})` : ''} port ${port}`, mode: dec.mode, source: dec.source });
    }
  }
  return out;
}

/** `meshpipe explain`. Resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv, strict: true, allowPositionals: false,
      options: {
        port: { type: 'string' }, protocol: { type: 'string' }, destination: { type: 'string' }, tls: { type: 'boolean' },
        manifests: { type: 'string', multiple: true }, annotations: { type: 'string' },
        namespace: { type: 'string' }, pod: { type: 'string' },
        'cluster-networks': { type: 'string' }, 'default-opaque-ports': { type: 'string' },
        json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    fail(`${(err as Error).message}; run meshpipe explain --help`);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\nKnown protocols:\n${formatProtocolTable().map((l) => `  ${l}`).join('\n')}\n`);
    return 0;
  }
  let networks, defaults;
  try {
    networks = parseCidrListStrict(values['cluster-networks'] ?? DEFAULT_CLUSTER_NETWORKS);
  } catch (err) {
    fail(`--cluster-networks: ${(err as Error).message}`);
  }
  try {
    defaults = parsePortListStrict(values['default-opaque-ports'] ?? DEFAULT_OPAQUE_PORTS);
  } catch (err) {
    fail(`--default-opaque-ports: ${(err as Error).message}`);
  }
  // A zone index (fe80::1%eth0) is no destination the engine can match: refused like a bad address.
  if (values.destination !== undefined && (isIP(values.destination) === 0 || values.destination.includes('%'))) {
    fail(`--destination "${values.destination}": expected an IPv4 or IPv6 address`);
  }
  const protocol = values.protocol === undefined ? undefined : findProtocol(values.protocol);
  if (values.protocol !== undefined && !protocol && values.port === undefined) {
    fail(`--protocol "${values.protocol}" is not in the table (run meshpipe explain --help); pass --port as well`);
  }
  const ports = values.port !== undefined ? [parsePort(values.port)] : protocol ? [...protocol.ports] : [];

  // Inputs for the compiled policy (only when the user gave something to compile).
  const manifests = values.manifests && values.manifests.length > 0 ? await loadManifests(values.manifests) : EMPTY_MANIFESTS;
  let annotations: Record<string, string> | undefined;
  const fileProblems = [];
  if (values.annotations !== undefined) {
    let text: string;
    try {
      text = await readFile(values.annotations, 'utf8');
    } catch (err) {
      fail(`--annotations ${values.annotations}: ${(err as Error).message}`);
    }
    const parsed = parseDownwardApi(text);
    annotations = Object.fromEntries(parsed.values);
    for (const e of parsed.errors) fileProblems.push(lineProblem(values.annotations, e.line, e.message, e.key));
  }
  const inputs: PolicyInputs = {
    defaultOpaquePorts: defaults, opaquePorts: [], clusterNetworks: networks.map((n) => n.text),
    inboundDetectTimeoutMs: 10_000, outboundDetectTimeoutMs: 10_000,
    workloadAnnotations: annotations, workloadAnnotationsOrigin: values.annotations,
    manifests, identity: { namespace: values.namespace, pod: values.pod },
  };
  const compiled = values.manifests !== undefined || annotations !== undefined;
  const hasWorkload = annotations !== undefined || values.pod !== undefined;
  // Always compiled: with no inputs it is what a proxy without policy sources does (the flags-only policy).
  const result = compilePolicy(inputs);
  const problems = [...fileProblems, ...result.problems];

  if (ports.length > 0) {
    const answers: PortExplanation[] = ports.map((port) => ({
      ...explainPort({ port, protocol, tls: values.tls === true, destination: values.destination, clusterNetworks: networks, defaultOpaque: defaults }),
      current: currentFor(port, values.destination, result, hasWorkload),
    }));
    if (values.json) {
      process.stdout.write(`${JSON.stringify({ ports: answers, problems: problems.map((p) => p.message) }, null, 2)}\n`);
    } else {
      const nets = networks.map((n) => n.text).join(',');
      process.stdout.write(answers.map((a) => renderPort(a, nets, formatPortList(defaults))).join('\n'));
      if (problems.length > 0) process.stdout.write(`\nproblems:\n${problems.map((p) => `  ${p.message}`).join('\n')}\n`);
    }
    return 0;
  }
  if (!compiled) {
    process.stderr.write(`${USAGE}\nKnown protocols:\n${formatProtocolTable().map((l) => `  ${l}`).join('\n')}\n`);
    return 2;
  }
  // No port: the effective policy of every workload (or of "this pod" from the annotations file).
  const all = annotations !== undefined || values.pod !== undefined
    ? [{ result }]
    : compileAllWorkloads(inputs).map((w) => ({ result: w.result }));
  const shared = result;
  // Each workload's own annotations are read in its own compile: collect those problems too, once each.
  const seen = new Set<string>();
  const allProblems = [...problems, ...all.flatMap((a) => a.result.problems)].filter((p) => !seen.has(p.message) && seen.add(p.message));
  if (values.json) {
    process.stdout.write(`${JSON.stringify(renderEffectiveJson(all.map((a) => a.result), shared, allProblems), null, 2)}\n`);
  } else {
    process.stdout.write(renderEffective(all.map((a) => a.result), shared, allProblems));
  }
  return 0;
}
