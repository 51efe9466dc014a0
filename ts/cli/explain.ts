/**
 * `meshpipe explain`: the decision tree of Linkerd's "TCP Proxying and
 * Protocol Detection" page, executable, plus the effective port policy of
 * workloads with the source of every decision.
 *
 *   meshpipe explain --port 3306 [--protocol mysql] [--destination 203.0.113.9]
 *       [--tls] [--manifests PATH]... [--annotations FILE]
 *       [--namespace NS --pod NAME] [--cluster-networks LIST]
 *       [--default-opaque-ports LIST] [--destinations FILE]
 *       [--client ID|none --client-ip IP] [--trust-domain D]
 *       [--identity-template T] [--default-inbound-policy P]
 *       [--opaque-ports LIST] [--config FILE] [--json] [--strict]
 *
 * With --port (or --protocol) it walks the tree (TLS? default opaque port?
 * destination inside clusterNetworks?) and, for each case the port meets,
 * says what the compiled policy does and what to configure given that
 * (explain-verdict.ts). With manifests or annotations it also shows what the
 * compiled policy does for that port today: the mode, who may connect to it and why (the
 * workload's authorization; with --client, the decision for that client),
 * and whether the destination is a mesh peer (mutual TLS through its
 * tunnel). Every answer is the engine's own decision on the compiled table
 * (ts/policy/lookup.ts). With manifests and no port it prints every
 * workload's inbound ports and who may connect, and every destination's
 * outbound ports and mesh peer, with their sources.
 * `--json` prints the same answers as JSON for scripts. A small table of
 * well-known protocols (ports, who speaks first) backs `--protocol` and the
 * notes.
 */

import { isIP } from 'node:net';
import { stat } from 'node:fs/promises';
import {
  compileAllWorkloads,
  compilePolicy,
  DEFAULT_CLUSTER_NETWORKS,
  inNetworks,
  lineProblem,
  generalProblem,
  findWorkload,
  authorizeClient,
  lookupPolicy,
  meshSettings,
  parseCidrListStrict,
  parseDestinationsFile,
  parseDownwardApi,
  type Cidr,
  type CompileResult,
  type PolicyInputs,
  type PolicyProblem,
  type PortDecision,
  type WorkloadIdentity,
} from '../policy/index.js';
import { MeshpipeError } from '../errors.js';
import { describeRef, EMPTY_MANIFESTS, loadManifests, type ManifestSet } from '../policy/k8s/index.js';
import { closest, DEFAULT_OPAQUE_PORTS, formatPortList, loadConfig, parsePortListStrict, portInRanges, readOnceText, type PortRange } from '../config/index.js';
import { MAX_ANNOTATIONS_BYTES } from '../policy/downward-api.js';
import { MAX_MANIFEST_BYTES } from '../policy/k8s/manifests.js';
import { opaquePortsOrigin } from '../policy/flags.js';
import { authzLines, meshLine, renderEffective, renderEffectiveJson } from './explain-render.js';
import { verdicts, type ProtocolFacts, type Verdict } from './explain-verdict.js';
import { parseOptions, type OptionSpec } from './args.js';
import { warningLine } from './report.js';
import type { DecisionInfo, MeshPeerSpec, PortAuthzSpec } from '../engine/index.js';
import { DEFAULT_INBOUND_POLICIES, type DefaultInboundPolicy } from '../config/index.js';
import { DEFAULT_IDENTITY_TEMPLATE, identityProblem, templateProblem } from '../identity/name.js';

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

const USAGE = `Usage: meshpipe explain [--port PORT]... [--protocol NAME] [--destination IP] [--tls]
                        [--manifests PATH]... [--annotations FILE] [--namespace NS --pod NAME]
                        [--cluster-networks LIST] [--default-opaque-ports LIST] [--opaque-ports LIST]
                        [--config FILE] [--json] [--strict]

Walks the decision tree of Linkerd's TCP proxying and protocol detection page for a port and
says what to configure and why, from what the compiled policy decides (the same compiler and
the engine's own lookup as the proxy). With --manifests (files or folders, repeatable) and no
--port, prints the effective inbound and outbound policy of every workload port with its source.

  --port PORT                 the TCP port in question (repeatable: each is explained)
  --protocol NAME             a protocol name (mysql, smtp, redis, http, ...); implies its ports
  --destination IP            the address the client connects to (decides clusterNetworks)
  --tls                       the protocol is wrapped in TLS from the first byte
  --manifests PATH            Kubernetes manifests (file or folder; repeatable)
  --annotations FILE          the workload's downward-API annotations file
  --namespace NS, --pod NAME  which workload is "this" proxy's
  --cluster-networks LIST     default ${DEFAULT_CLUSTER_NETWORKS}
  --default-opaque-ports LIST default ${DEFAULT_OPAQUE_PORTS}
  --opaque-ports LIST         the proxy's own --opaque-ports (opaque both ways, any address)
  --config FILE               the proxy's config file: what these flags do not say comes from it and
                              from MESHPIPE_* variables, as for meshpipe proxy
  --destinations FILE         static meshed destinations (ADDRESS|CIDR IDENTITY [TUNNEL-PORT] per line)
  --client ID|none            who connects: a mesh identity, or none (plaintext); needs --client-ip
  --client-ip IP              the client's address (with --client)
  --trust-domain D            default cluster.local
  --identity-template T       default ${DEFAULT_IDENTITY_TEMPLATE}
  --default-inbound-policy P  default all-unauthenticated (${DEFAULT_INBOUND_POLICIES.join(', ')})
  --json                      machine-readable output
  --strict                    exit 1 when the inputs have any problem (a bad annotation value
                              too), for linting manifests in CI

Exit codes: 0 answered; 1 an input could not be used (a file that does not parse), or any
problem with --strict (the answer is printed either way); 2 bad usage or a path that does
not exist.
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
  /** One per case (inbound; each outbound destination), from the compiled policy's decision. */
  readonly verdicts: readonly Verdict[];
  readonly notes: readonly string[];
  /** What the compiled policy does today, when manifests or annotations were given. */
  readonly current: readonly CurrentDecision[];
}

/** What the compiled policy does for a port today (the engine's own decision). */
export interface CurrentDecision {
  readonly direction: 'inbound' | 'outbound';
  readonly target: string;
  readonly mode: string;
  readonly source: string;
  /** Outbound to --destination: its mesh peer (null: not meshed). */
  readonly mesh?: MeshPeerSpec | null;
  /** Inbound: who may connect, and the decision for --client. */
  readonly authz?: PortAuthzSpec;
  readonly client?: DecisionInfo & { readonly identity: string | null; readonly ip: string };
}

function fail(message: string): never {
  throw new MeshpipeError('ERR_INVALID_ARGUMENT', message);
}

function parsePort(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > 65535) fail(`--port "${text}": expected a port number 1-65535`);
  return Number(text);
}

/** The protocol facts for a port: from --protocol, else from the table when the port has one well-known use. */
function protocolFacts(port: number, protocol: KnownProtocol | undefined, tls: boolean): ProtocolFacts {
  const known = protocol ?? (() => {
    const candidates = protocolsOnPort(port);
    return candidates.length === 1 ? candidates[0] : undefined;
  })();
  return {
    name: known?.name ?? null,
    serverFirst: protocol ? protocol.serverFirst : null,
    tls: tls || known?.tls === true,
    http: known?.name === 'http',
  };
}

/** Explains one port: the tree's questions, then one verdict per case, from the compiled policy. */
export function explainPort(args: {
  port: number; protocol: KnownProtocol | undefined; tls: boolean; destination: string | undefined;
  clusterNetworks: readonly Cidr[]; defaultOpaque: readonly PortRange[]; result: CompileResult; hasWorkload: boolean;
}): Omit<PortExplanation, 'current'> {
  const { port, protocol, destination } = args;
  const facts = protocolFacts(port, protocol, args.tls);
  const inDefaults = portInRanges(port, args.defaultOpaque);
  const inside = destination === undefined ? null : inNetworks(args.clusterNetworks, destination);
  const list = verdicts({
    port, protocol: facts, destination, networks: args.clusterNetworks, defaultOpaque: args.defaultOpaque, result: args.result, hasWorkload: args.hasWorkload,
  });
  const notes: string[] = [];
  if (!facts.tls && !facts.http && facts.serverFirst !== false && list.some((v) => v.mode === 'detect')) {
    notes.push(`${facts.serverFirst ? `${facts.name} is server-first. ` : 'If the server speaks first: '}`
      + 'meshpipe\'s server-first fast path means an unconfigured server-first port is not stalled 10 s: only the first connection '
      + 'to a target waits the grace period (100ms by default), later ones skip detection; marking the port opaque is still the precise fix.');
  }
  if (protocol) notes.push(`${protocol.name}: ${protocol.note}`);
  else for (const p of protocolsOnPort(port)) notes.push(`port ${port} is commonly ${p.name}: ${p.note}`);
  return {
    port, protocol: protocol?.name ?? null, serverFirst: protocol ? protocol.serverFirst : null, tls: facts.tls,
    inDefaultOpaquePorts: inDefaults, destination: destination ?? null, insideClusterNetworks: inside, verdicts: list, notes,
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
  for (const v of e.verdicts) {
    out.push(`  => ${v.when}: ${v.action}`);
    out.push(`     policy: ${v.direction} ${v.target}: ${v.mode} (${v.source})`);
    out.push(`     why: ${v.why}`);
  }
  for (const n of e.notes) out.push(`  note: ${n}`);
  if (e.current.length > 0) {
    out.push('  current policy:');
    for (const c of e.current) {
      out.push(`    ${c.direction} ${c.target}: ${c.mode} (${c.source})`);
      if (c.authz) out.push(...authzLines(c.authz).map((l, i) => `      ${i === 0 ? 'who may connect: ' : ''}${l}`));
      if (c.client) {
        const who = `${c.client.identity ?? 'a plaintext client'} from ${c.client.ip}`;
        out.push(c.client.allow
          ? `      ${who}: allowed by ${c.client.authzKind} ${c.client.authzName}`
          : `      ${who}: refused (reset before anything is dialled)`);
      }
      if (c.mesh !== undefined) {
        out.push(`      mesh: ${meshLine(c.mesh)}`);
        if (c.mesh !== null && c.mode === 'opaque') out.push('      (opaque: no detection; the bytes go through the peer\'s tunnel as they are)');
      }
    }
  }
  return `${out.join('\n')}\n`;
}

/**
 * What the compiled policy does for this port today: the engine's own
 * lookup on the compiled table (ts/policy/lookup.ts), not a copy of it.
 */
function currentFor(
  port: number, destination: string | undefined, result: CompileResult, hasWorkload: boolean,
  client: { identity: string | null; ip: string } | undefined,
): PortExplanation['current'] {
  const table = result.table;
  const out: CurrentDecision[] = [];
  if (hasWorkload) {
    const hit = lookupPolicy(table, 'inbound', '0.0.0.0', port);
    const w = result.effective.workload;
    const fallback = result.effective.inbound.ports.find((p) => p.ports.from === port);
    out.push({
      direction: 'inbound', target: `${w ? describeRef(w) : 'this pod'} port ${port}`, mode: hit.mode,
      source: hit.matched !== 'default' ? hit.source : (fallback?.source ?? 'detect: nothing configured'),
      ...(hit.authz ? { authz: hit.authz } : {}),
      ...(client ? { client: { ...authorizeClient(table, port, client.identity, client.ip), ...client } } : {}),
    });
  }
  if (destination !== undefined) {
    const hit = lookupPolicy(table, 'outbound', destination, port);
    out.push({ direction: 'outbound', target: `${destination.includes(':') ? `[${destination}]` : destination}:${port}`, mode: hit.mode,
      source: hit.matched !== 'default' ? hit.source : 'detect: nothing configured for this destination', mesh: hit.mesh });
  } else {
    for (const d of result.effective.outbound.destinations) {
      const dec = d.decisions.find((x: PortDecision) => port >= x.ports.from && port <= x.ports.to);
      if (dec) out.push({ direction: 'outbound', target: `${describeRef(d.object)}${d.addresses.length > 0 ? ` (${d.addresses.join(', ')})` : ''} port ${port}`, mode: dec.mode, source: dec.source });
    }
  }
  return out;
}

/** A problem that means an input could not be used at all (a file that does not parse, is unreadable or too large). */
function isInputProblem(p: PolicyProblem): boolean {
  return p.object === undefined && p.file !== undefined && p.line === undefined;
}

/** Refuses paths that do not exist: a typo in --manifests must not read as "nothing configured". */
async function checkPathsExist(flag: string, paths: readonly string[]): Promise<void> {
  for (const path of paths) {
    try {
      await stat(path);
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file or folder' : (err as Error).message;
      fail(`${flag} ${path}: ${why}`);
    }
  }
}

/** --trust-domain, --identity-template, --default-inbound-policy (checked as the proxy checks them). */
function meshArgs(values: { 'trust-domain'?: string; 'identity-template'?: string; 'default-inbound-policy'?: string }): ReturnType<typeof meshSettings> {
  const policy = (values['default-inbound-policy'] ?? 'all-unauthenticated').trim();
  if (!(DEFAULT_INBOUND_POLICIES as readonly string[]).includes(policy)) {
    fail(`--default-inbound-policy "${policy}": expected one of ${DEFAULT_INBOUND_POLICIES.join(', ')}`);
  }
  const trustDomain = values['trust-domain'] ?? 'cluster.local';
  const identityTemplate = values['identity-template'] ?? DEFAULT_IDENTITY_TEMPLATE;
  const why = templateProblem(identityTemplate, trustDomain);
  if (why !== undefined) fail(`--identity-template "${identityTemplate}": ${why}`);
  return meshSettings({ trustDomain, identityTemplate, defaultInboundPolicy: policy as DefaultInboundPolicy });
}

/** --client ID|none with --client-ip IP: the client whose authorization to show. */
function clientArgs(id: string | undefined, ip: string | undefined): { identity: string | null; ip: string } | undefined {
  if (id === undefined && ip === undefined) return undefined;
  if (id === undefined || ip === undefined) fail('--client and --client-ip go together (--client none for a plaintext client)');
  if (isIP(ip) === 0) fail(`--client-ip "${ip}": expected an IPv4 or IPv6 address`);
  if (id === 'none') return { identity: null, ip };
  const why = identityProblem(id);
  if (why !== undefined) fail(`--client "${id}": ${why}`);
  return { identity: id, ip };
}

const EXPLAIN_OPTIONS = {
  port: { type: 'string', multiple: true, valueName: 'PORT' }, protocol: { type: 'string', valueName: 'NAME' },
  destination: { type: 'string', valueName: 'IP' }, tls: { type: 'boolean' },
  manifests: { type: 'string', multiple: true, valueName: 'PATH' }, annotations: { type: 'string', valueName: 'FILE' },
  namespace: { type: 'string', valueName: 'NS' }, pod: { type: 'string', valueName: 'NAME' },
  'cluster-networks': { type: 'string', valueName: 'LIST' }, 'default-opaque-ports': { type: 'string', valueName: 'LIST' },
  'opaque-ports': { type: 'string', valueName: 'LIST' }, config: { type: 'string', valueName: 'FILE' },
  destinations: { type: 'string', valueName: 'FILE' }, client: { type: 'string', valueName: 'ID|none' }, 'client-ip': { type: 'string', valueName: 'IP' },
  'trust-domain': { type: 'string', valueName: 'D' }, 'identity-template': { type: 'string', valueName: 'T' },
  'default-inbound-policy': { type: 'string', valueName: 'P' },
  json: { type: 'boolean' }, strict: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
} as const;

type ExplainOptions = typeof EXPLAIN_OPTIONS;
/** The parsed flags: a string (string[] when repeatable) or true, by flag name. */
type ExplainValues = {
  -readonly [K in keyof ExplainOptions]?: ExplainOptions[K] extends { type: 'boolean' } ? boolean : ExplainOptions[K] extends { multiple: true } ? string[] : string;
};

/** The table for the shared parser (ts/cli/args.ts), which names a typo's closest flag and a forgotten value. */
const EXPLAIN_SPECS: readonly OptionSpec[] = Object.entries(EXPLAIN_OPTIONS).map(([flag, o]) => ({
  flag, type: o.type, help: '',
  ...('multiple' in o ? { multiple: o.multiple } : {}),
  ...('short' in o ? { short: o.short } : {}),
  ...('valueName' in o ? { valueName: o.valueName } : {}),
}));

/** `meshpipe explain`. Resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  // The same parser as the other commands: a typo gets the flag it was probably meant to be, a
  // forgotten value is named with what it takes (`--port` alone, or `--port --json`).
  const values = parseOptions(argv, EXPLAIN_SPECS, 'meshpipe explain').values as ExplainValues;
  if (values.help) {
    process.stdout.write(`${USAGE}\nKnown protocols:\n${formatProtocolTable().map((l) => `  ${l}`).join('\n')}\n`);
    return 0;
  }
  // What the flags do not say comes from the proxy's own configuration (defaults < --config FILE <
  // MESHPIPE_* env), so explain answers for the proxy that configuration runs.
  const configFile = values.config ?? (process.env['MESHPIPE_CONFIG'] || undefined);
  const base = loadConfig({ ...(configFile !== undefined ? { configFile } : {}), env: process.env });
  let networks, defaults, opaque;
  try {
    networks = parseCidrListStrict(values['cluster-networks'] ?? base.clusterNetworks.join(','));
  } catch (err) {
    fail(`--cluster-networks: ${(err as Error).message}`);
  }
  try {
    defaults = values['default-opaque-ports'] === undefined ? base.defaultOpaquePorts : parsePortListStrict(values['default-opaque-ports']);
  } catch (err) {
    fail(`--default-opaque-ports: ${(err as Error).message}`);
  }
  try {
    opaque = values['opaque-ports'] === undefined ? base.opaquePorts : parsePortListStrict(values['opaque-ports']);
  } catch (err) {
    fail(`--opaque-ports: ${(err as Error).message}`);
  }
  values.manifests ??= base.manifests.length > 0 ? [...base.manifests] : undefined;
  values.annotations ??= base.annotations;
  // Where the pod's name came from, for a message about it: the flag, the config file or the env.
  const podFrom = values.pod !== undefined ? '--pod' : base.pod !== undefined ? 'the config file\'s pod' : 'POD_NAME';
  values.namespace ??= base.namespace ?? (process.env['POD_NAMESPACE'] || undefined);
  values.pod ??= base.pod ?? (process.env['POD_NAME'] || undefined);
  // A zone index (fe80::1%eth0) is no destination the engine can match: refused like a bad address.
  if (values.destination !== undefined && (isIP(values.destination) === 0 || values.destination.includes('%'))) {
    fail(`--destination "${values.destination}": expected an IPv4 or IPv6 address`);
  }
  const protocol = values.protocol === undefined ? undefined : findProtocol(values.protocol);
  if (values.protocol !== undefined && !protocol) {
    const asked = values.protocol.trim().toLowerCase();
    // One edit per three letters, as for flags: `mysq` and `smpt` get one, `foo` none.
    const near = closest(asked, KNOWN_PROTOCOLS.flatMap((p) => [p.name, ...p.aliases]), Math.ceil(asked.length / 3));
    const unknown = `--protocol "${values.protocol}" is not in the table${near !== undefined ? ` (did you mean ${near}?)` : ''}`;
    if (values.port === undefined) fail(`${unknown}: expected a name of meshpipe explain --help's table, or --port as well`);
    // With a port the answer stands on the port alone: say so, rather than drop the name quietly.
    process.stderr.write(warningLine('explain', `${unknown}: the answer is for the port alone (run meshpipe explain --help for the table)`));
  }
  const given = (values.port ?? []).map(parsePort);
  const ports = given.length > 0 ? [...new Set(given)] : protocol ? [...protocol.ports] : [];
  const mesh = meshArgs(values);
  const client = clientArgs(values.client, values['client-ip']);

  // Inputs for the compiled policy (only when the user gave something to compile).
  await checkPathsExist('--manifests', values.manifests ?? []);
  if (values.annotations !== undefined) await checkPathsExist('--annotations', [values.annotations]);
  const manifests = values.manifests && values.manifests.length > 0 ? await loadManifests(values.manifests) : EMPTY_MANIFESTS;
  let annotations: Record<string, string> | undefined;
  const fileProblems = [];
  if (values.annotations !== undefined) {
    let text: string;
    try {
      text = await readOnceText(values.annotations, MAX_ANNOTATIONS_BYTES);
    } catch (err) {
      fail(`--annotations ${values.annotations}: ${(err as Error).message}`);
    }
    const parsed = parseDownwardApi(text);
    annotations = Object.fromEntries(parsed.values);
    for (const e of parsed.errors) fileProblems.push(lineProblem(values.annotations, e.line, e.message, e.key));
  }
  let meshDestinations;
  if (values.destinations !== undefined) {
    let text: string;
    try {
      text = await readOnceText(values.destinations, MAX_MANIFEST_BYTES);
    } catch (err) {
      fail(`--destinations ${values.destinations}: ${(err as Error).message}`);
    }
    const parsed = parseDestinationsFile(values.destinations, text);
    meshDestinations = parsed.entries;
    fileProblems.push(...parsed.problems);
  }
  const inputs: PolicyInputs = {
    defaultOpaquePorts: defaults, opaquePorts: opaque, opaquePortsOrigin: values['opaque-ports'] === undefined ? opaquePortsOrigin(base) : '--opaque-ports flag',
    clusterNetworks: networks.map((n) => n.text),
    inboundDetectTimeoutMs: base.inboundDetectTimeoutMs, outboundDetectTimeoutMs: base.outboundDetectTimeoutMs,
    workloadAnnotations: annotations, workloadAnnotationsOrigin: values.annotations,
    manifests, identity: { namespace: values.namespace, pod: values.pod }, mesh, meshDestinations,
  };
  const compiled = values.manifests !== undefined || annotations !== undefined || meshDestinations !== undefined;
  const hasWorkload = annotations !== undefined || values.pod !== undefined;
  // Always compiled: with no inputs it is what a proxy without policy sources does (the flags-only policy).
  const result = compilePolicy(inputs);
  const problems = [...fileProblems, ...result.problems];
  const unmatched = unmatchedPod(inputs.identity, manifests, podFrom);
  if (unmatched !== undefined) problems.push(unmatched);

  if (ports.length > 0) {
    const answers: PortExplanation[] = ports.map((port) => ({
      ...explainPort({
        port, protocol, tls: values.tls === true, destination: values.destination, clusterNetworks: networks, defaultOpaque: defaults, result, hasWorkload,
      }),
      current: currentFor(port, values.destination, result, hasWorkload || client !== undefined, client),
    }));
    if (values.json) {
      process.stdout.write(`${JSON.stringify({ ports: answers, problems: problems.map((p) => p.message) }, null, 2)}\n`);
    } else {
      const nets = networks.map((n) => n.text).join(',');
      process.stdout.write(answers.map((a) => renderPort(a, nets, formatPortList(defaults))).join('\n'));
      if (problems.length > 0) process.stdout.write(`\nProblems (valid entries still apply):\n${problems.map((p) => `  ${p.message}`).join('\n')}\n`);
    }
    return exitCode(problems, values.strict === true);
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
  return exitCode(allProblems, values.strict === true);
}

/**
 * A --pod (or POD_NAME) that names no workload of the manifests: "this pod" then has no
 * container ports and none of the workload's annotations, and every answer is about a pod
 * that is not in the files: a typo (`--namespace shopp`) must say so, not answer quietly.
 * Without manifests (only --annotations) there is nothing to match against.
 */
function unmatchedPod(identity: WorkloadIdentity, manifests: ManifestSet, podFrom: string): PolicyProblem | undefined {
  if (identity.pod === undefined || manifests.workloads.length === 0) return undefined;
  if (findWorkload(identity, manifests.workloads) !== undefined) return undefined;
  const namespace = identity.namespace ?? 'default';
  const known = manifests.workloads.slice(0, 5).map((w) => describeRef(w)).join(', ');
  const more = manifests.workloads.length > 5 ? ` and ${manifests.workloads.length - 5} more` : '';
  return generalProblem(
    `${podFrom} ${identity.pod} in namespace ${namespace}: no workload in --manifests is this pod (expected a Pod named ${identity.pod}, `
    + `or a Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob in ${namespace} whose name followed by "-" begins it), `
    + `so "this pod" has no container ports and none of a workload's annotations; the manifests have ${known}${more}`,
    identity.pod,
  );
}

/** 1 when an input could not be used, or with --strict when there is any problem; else 0. */
function exitCode(problems: readonly PolicyProblem[], strict: boolean): number {
  if (problems.some(isInputProblem)) {
    process.stderr.write(`meshpipe explain: error: some inputs could not be used (listed under Problems); the answer covers the rest\n`);
    return 1;
  }
  if (strict && problems.length > 0) {
    process.stderr.write(`meshpipe explain: error: ${problems.length} problem${problems.length === 1 ? '' : 's'} in the inputs (--strict)\n`);
    return 1;
  }
  return 0;
}
