/**
 * Reading Linkerd's `config.linkerd.io/*` annotations off one object, with
 * every bad entry turned into a PolicyProblem that names the object, the
 * annotation and the bad token, and the valid entries of the same value still
 * applying (Linkerd's pod-annotation behaviour). Port lists go through
 * ts/config/port-list.ts; port names resolve against the object's own port names
 * (container ports for pods and pod templates, Service ports for Services).
 * Also the `policy.linkerd.io` Servers selecting a pod, resolved to one
 * decision per port (the other object-level input of the precedence chain).
 */

import type { ContainerPort, ObjectRef, ServerObject, ServicePort } from './k8s/objects.js';
import { describeRef, selectorMatches } from './k8s/objects.js';
import { isCidrError, parseCidr } from './cidr.js';
import { PROXY_PROTOCOL_MODES, type PortMode } from './model.js';
import { objectProblem, type PolicyProblem } from './problems.js';
import { parsePortList, type ParsedPortList, type PortNameResolver, type PortRange } from '../config/index.js';

/** A port-list annotation as read from one object. */
export interface PortAnnotation {
  /** True when the annotation is set at all (even to an empty or wholly invalid value). */
  readonly present: boolean;
  readonly ranges: readonly PortRange[];
  readonly raw: string;
}

export const ABSENT: PortAnnotation = Object.freeze({ present: false, ranges: [], raw: '' });

/** A resolver over container port names, or undefined when no ports are known. */
export function containerPortResolver(ports: readonly ContainerPort[] | undefined): PortNameResolver | undefined {
  if (ports === undefined) return undefined;
  return (name) => ports.find((p) => p.name === name)?.port;
}

/** A resolver over Service port names. */
export function servicePortResolver(ports: readonly ServicePort[]): PortNameResolver {
  return (name) => ports.find((p) => p.name === name)?.port;
}

// ---------------------------------------------------------------------------
// Parsed values, cached.
/*
 * Thousands of objects carry the same annotation value (every pod of a
 * Deployment, every object inheriting a namespace's value), and one value
 * can be 40 KB. Parsing is a function of the value and, when the value uses
 * port names, of the names it resolves against, so results are cached under
 * that key. The cache is bounded by the number of ranges it holds.
 */

const CACHE_MAX_RANGES = 1 << 20;
const parseCache = new Map<string, ParsedPortList>();
let cachedRanges = 0;

/** The key names resolve against: '' when the value has no names (numbers and ranges only). */
function namesKey(raw: string, named: readonly { name: string | undefined; port: number }[] | undefined): string | undefined {
  if (!/[a-z]/i.test(raw)) return '';
  if (named === undefined) return undefined;
  return named.map((p) => `${p.name ?? ''}=${p.port}`).join(',');
}

/**
 * parsePortList, cached when the result depends only on the value and the
 * named ports (`named` must be what `resolver` resolves against).
 */
export function parsePortListCached(
  raw: string, resolver: PortNameResolver | undefined, named: readonly { name: string | undefined; port: number }[] | undefined,
): ParsedPortList {
  const names = resolver === undefined ? '-' : namesKey(raw, named);
  if (names === undefined) return parsePortList(raw, resolver);
  const key = `${names}\u0000${raw}`;
  const hit = parseCache.get(key);
  if (hit) return hit;
  const parsed = parsePortList(raw, resolver);
  const size = parsed.ranges.length + parsed.errors.length + 1;
  while (cachedRanges + size > CACHE_MAX_RANGES && parseCache.size > 0) {
    const [oldest, value] = parseCache.entries().next().value as [string, ParsedPortList];
    parseCache.delete(oldest);
    cachedRanges -= value.ranges.length + value.errors.length + 1;
  }
  parseCache.set(key, parsed);
  cachedRanges += size;
  return parsed;
}

function knownNames(names: readonly (string | undefined)[], ports: readonly number[]): string {
  const pairs = names.map((n, i) => (n ? `${n}=${ports[i]}` : undefined)).filter((x) => x !== undefined);
  return pairs.length > 0 ? `known names: ${pairs.join(', ')}` : 'no named ports are declared';
}

/**
 * Reads a port-list annotation. `resolver` undefined means names cannot be
 * resolved (no ports known); `portsForHint` lists the names for the message.
 * `resolvingFor` names the object a namespace-level value is being applied to.
 */
export function readPortAnnotation(
  object: ObjectRef,
  annotations: Readonly<Record<string, string>>,
  key: string,
  problems: PolicyProblem[],
  options: {
    resolver?: PortNameResolver | undefined;
    allowNames?: boolean;
    namedPorts?: readonly { name: string | undefined; port: number }[] | undefined;
    resolvingFor?: ObjectRef | undefined;
    origin?: string | undefined;
  } = {},
): PortAnnotation {
  const raw = annotations[key];
  if (raw === undefined) return ABSENT;
  const allowNames = options.allowNames ?? true;
  // With names allowed but none resolvable, still accept the syntax so the problem says "unknown port name".
  const resolver = allowNames ? (options.resolver ?? (() => undefined)) : undefined;
  const parsed = parsePortListCached(raw, resolver, options.resolver === undefined ? [] : options.namedPorts);
  for (const e of parsed.errors) {
    let reason = e.reason;
    if (reason.startsWith('unknown port name')) {
      const named = options.namedPorts;
      const hint = named === undefined
        ? 'no container ports are known for this workload (load its manifest or use port numbers)'
        : knownNames(named.map((p) => p.name), named.map((p) => p.port));
      const target = options.resolvingFor ? ` on ${describeRef(options.resolvingFor)}` : '';
      reason = `${reason}${target}: ${hint}`;
    }
    problems.push(objectProblem(object, key, e.token, reason, options.origin));
  }
  return Object.freeze({ present: true, ranges: parsed.ranges, raw });
}

/** Go's strconv.ParseBool, which Linkerd uses for boolean annotations. */
export function readBoolAnnotation(
  object: ObjectRef,
  annotations: Readonly<Record<string, string>>,
  key: string,
  problems: PolicyProblem[],
  origin?: string,
): { present: boolean; value: boolean } {
  const raw = annotations[key];
  if (raw === undefined) return { present: false, value: false };
  const v = raw.trim();
  if (['1', 't', 'T', 'true', 'TRUE', 'True'].includes(v)) return { present: true, value: true };
  if (['0', 'f', 'F', 'false', 'FALSE', 'False'].includes(v)) return { present: true, value: false };
  problems.push(objectProblem(object, key, raw, 'expected true or false; the setting is ignored', origin));
  return { present: true, value: false };
}

/** Reads `skip-subnets`: comma-separated CIDRs, each bad one reported. Returns canonical CIDR strings. */
export function readSubnetsAnnotation(
  object: ObjectRef,
  annotations: Readonly<Record<string, string>>,
  key: string,
  problems: PolicyProblem[],
  origin?: string,
): string[] {
  const raw = annotations[key];
  if (raw === undefined || raw.trim() === '') return [];
  const out: string[] = [];
  for (const part of raw.split(',')) {
    const token = part.trim();
    if (token === '') {
      problems.push(objectProblem(object, key, part, 'empty entry: expected a CIDR such as 10.0.0.0/8', origin));
      continue;
    }
    const c = parseCidr(token);
    if (isCidrError(c)) problems.push(objectProblem(object, key, token, c.error, origin));
    else if (!out.includes(c.text)) out.push(c.text);
  }
  return out;
}

/** Intersects ranges with a set of single ports (e.g. defaults filtered to container ports). */
export function filterRangesToPorts(ranges: readonly PortRange[], ports: readonly number[]): PortRange[] {
  const kept = [...new Set(ports)].filter((p) => ranges.some((r) => p >= r.from && p <= r.to)).sort((a, b) => a - b);
  return kept.map((p) => ({ from: p, to: p }));
}

/** `ranges` minus `remove`, both sorted and merged. */
export function subtractRanges(ranges: readonly PortRange[], remove: readonly PortRange[]): PortRange[] {
  let out: PortRange[] = [...ranges];
  for (const r of remove) {
    const next: PortRange[] = [];
    for (const a of out) {
      if (r.to < a.from || r.from > a.to) {
        next.push(a);
        continue;
      }
      if (a.from < r.from) next.push({ from: a.from, to: r.from - 1 });
      if (a.to > r.to) next.push({ from: r.to + 1, to: a.to });
    }
    out = next;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Servers.
/*
 * `policy.linkerd.io` Servers: which Servers select a pod, which port each
 * one means (a number, or a container port name resolved against that pod),
 * and which one wins when several select the same port: the oldest
 * (creationTimestamp), then by name, as Linkerd's policy controller does.
 * Servers without a timestamp (typical in manifests) sort after those with
 * one, because an object not yet created is the newest.
 */

/** The winning Server for one port of one pod. */
export interface ServerDecision {
  readonly port: number;
  readonly name: string | undefined;
  readonly mode: PortMode;
  readonly server: ServerObject;
  /** e.g. `opaque: Server db/mysql proxyProtocol=opaque`, plus the losers when there were several. */
  readonly source: string;
}

function serverRef(s: ServerObject): ObjectRef {
  return { kind: 'Server', namespace: s.namespace, name: s.name };
}

/** Oldest first, then by name; unknown timestamps last. */
export function compareServers(a: ServerObject, b: ServerObject): number {
  const ta = a.createdAt ?? Number.POSITIVE_INFINITY;
  const tb = b.createdAt ?? Number.POSITIVE_INFINITY;
  if (ta !== tb) return ta < tb ? -1 : 1;
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/**
 * The Servers selecting a pod (namespace + labels), resolved to one decision
 * per port. `podRef` is used in messages about unresolvable port names.
 */
export function serverDecisions(
  servers: readonly ServerObject[],
  namespace: string,
  labels: Readonly<Record<string, string>>,
  containerPorts: readonly ContainerPort[],
  podRef: ObjectRef,
  problems: PolicyProblem[],
): ServerDecision[] {
  const byPort = new Map<number, { server: ServerObject; mode: PortMode; name: string | undefined }[]>();
  for (const s of servers) {
    if (s.namespace !== namespace) continue;
    const matched = selectorMatches(s, labels);
    if (typeof matched === 'object') {
      problems.push(objectProblem(serverRef(s), 'spec.podSelector.matchExpressions', '', matched.error));
      continue;
    }
    if (!matched) continue;
    const mode = PROXY_PROTOCOL_MODES[s.proxyProtocol];
    if (mode === undefined) {
      problems.push(objectProblem(serverRef(s), 'spec.proxyProtocol', s.proxyProtocol,
        'expected one of unknown, HTTP/1, HTTP/2, gRPC, opaque, TLS; this Server is ignored'));
      continue;
    }
    let port: number;
    let name: string | undefined;
    if (typeof s.port === 'number') {
      port = s.port;
      name = containerPorts.find((p) => p.port === port)?.name;
    } else {
      const found = containerPorts.find((p) => p.name === s.port);
      if (!found) {
        const known = containerPorts.filter((p) => p.name).map((p) => `${p.name}=${p.port}`).join(', ');
        problems.push(objectProblem(serverRef(s), 'spec.port', s.port,
          `unknown port name "${s.port}" on ${describeRef(podRef)}: ${known === '' ? 'no named container ports' : `known names: ${known}`}`));
        continue;
      }
      port = found.port;
      name = found.name;
    }
    const list = byPort.get(port) ?? [];
    list.push({ server: s, mode, name });
    byPort.set(port, list);
  }
  const out: ServerDecision[] = [];
  for (const [port, list] of [...byPort.entries()].sort((a, b) => a[0] - b[0])) {
    list.sort((a, b) => compareServers(a.server, b.server));
    const win = list[0];
    if (!win) continue;
    let source = `${win.mode}: Server ${win.server.namespace}/${win.server.name} proxyProtocol=${win.server.proxyProtocol}`;
    if (list.length > 1) {
      const losers = list.slice(1).map((l) => `${l.server.name} (${l.server.proxyProtocol})`).join(', ');
      source += ` (oldest of ${list.length} Servers selecting port ${port}; also ${losers})`;
    }
    out.push({ port, name: win.name, mode: win.mode, server: win.server, source });
  }
  return out;
}
