/**
 * Pure planning of meshpipe's nat-table interception rules (`meshpipe init`).
 *
 * Given the options (proxy uid/gid, listener ports, skip ports, skip subnets,
 * address family) this module produces the exact ordered rules meshpipe
 * installs, the equivalent iptables argument vectors, and the
 * `iptables-restore --noflush` input that installs, rebuilds or removes them
 * in one transaction. It also parses `iptables -t nat -S` output and compares
 * it with a plan, so installing is idempotent. Nothing here runs a process;
 * ts/init/apply.ts executes the plans.
 *
 * Layout (after linkerd2-proxy-init, own chain names, every rule commented):
 *   PREROUTING -> MESHPIPE_INBOUND:
 *     RETURN skip-inbound ports; RETURN 4190 and the admin port; RETURN skip
 *     subnets (-s); REDIRECT all other TCP to the inbound port.
 *   OUTPUT -> MESHPIPE_OUTPUT:
 *     RETURN the proxy's uid (and gid); RETURN -o lo; RETURN skip-outbound
 *     ports; RETURN skip subnets (-d); REDIRECT all other TCP to the outbound port.
 *
 * Skip subnets apply both ways: linkerd2-proxy-init only RETURNs them in the
 * inbound chain (`-s`); meshpipe also exempts traffic *to* them (`-d`), so a
 * skipped subnet neither reaches the pod through the proxy nor is reached
 * through it (e.g. a node-local agent or a non-meshed database network).
 *
 * Loopback output (`-o lo`) is never redirected, as in Linkerd. Traffic an app
 * sends to 127.0.0.1 (or to its own pod IP, which also leaves via lo) stays
 * inside the pod: there is no remote identity or policy to apply, sidecar
 * containers that talk over localhost (including server-speaks-first ones like
 * a local MySQL) keep working without a detect stall, and the inbound proxy's
 * own forward to the app (to the pod IP, which is routed over lo) could never
 * loop back into the outbound listener even if it ran under another uid.
 */

import { MeshpipeError } from '../errors.js';
import { mergeRanges, type PortRange } from '../config/index.js';
import { isCidrError, parseCidr, type Cidr } from '../policy/index.js';

export type IpFamily = 'ipv4' | 'ipv6';

/** The policy layer's CIDR family (4 | 6) for an iptables family. */
export function cidrFamily(family: IpFamily): 4 | 6 {
  return family === 'ipv4' ? 4 : 6;
}

/** The canonical text of an address or CIDR as iptables prints it (`10.1.2.3/8` -> `10.0.0.0/8`). */
function canonicalCidrText(text: string): string | undefined {
  const parsed = parseCidr(text);
  return isCidrError(parsed) ? undefined : parsed.text;
}

export const INBOUND_CHAIN = 'MESHPIPE_INBOUND';
export const OUTPUT_CHAIN = 'MESHPIPE_OUTPUT';
export const MESHPIPE_CHAINS: readonly string[] = [INBOUND_CHAIN, OUTPUT_CHAIN];
/** Linkerd's control (tap) port: always excluded from inbound redirection, like the admin port. */
export const CONTROL_PORT = 4190;
/** The xt_multiport limit: 15 "ports" per rule, where a range `a:b` counts as 2. */
export const MULTIPORT_MAX = 15;

export const DEFAULTS = Object.freeze({
  proxyUid: 2102,
  inboundPort: 4143,
  outboundPort: 4140,
  adminPort: 4191,
});

export interface RulePlanOptions {
  readonly proxyUid: number;
  readonly proxyGid: number | null;
  readonly inboundPort: number;
  readonly outboundPort: number;
  readonly adminPort: number;
  readonly skipInboundPorts: readonly PortRange[];
  readonly skipOutboundPorts: readonly PortRange[];
  /** Both families may be given; the plan keeps the ones of its own family. */
  readonly skipSubnets: readonly Cidr[];
  readonly family: IpFamily;
}

/** One rule: appended (`-A chain ...args`) in this order. */
export interface PlannedRule {
  readonly chain: string;
  readonly args: readonly string[];
}

export interface RulePlan {
  readonly family: IpFamily;
  /** Rules of meshpipe's own chains, in order. */
  readonly rules: readonly PlannedRule[];
  /** The jumps into meshpipe's chains from the built-in chains. */
  readonly jumps: readonly PlannedRule[];
  /** The equivalent iptables argument vectors (without the binary), in order. */
  readonly commands: readonly (readonly string[])[];
}

const comment = (name: string): string[] => ['-m', 'comment', '--comment', `meshpipe/${name}`];

function checkPort(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 1 || value > 65535) {
    throw new MeshpipeError('ERR_INVALID_ARGUMENT', `${name} must be a port 1-65535, got ${value}`, { key: name });
  }
}

function checkId(name: string, value: number): void {
  // 4294967295 is (uid_t)-1, "no id", which the kernel never assigns.
  if (!Number.isInteger(value) || value < 0 || value > 4294967294) {
    throw new MeshpipeError('ERR_INVALID_ARGUMENT', `${name} must be an integer 0-4294967294, got ${value}`, { key: name });
  }
}

/** Validates the options; throws ERR_INVALID_ARGUMENT naming the bad one. */
export function validatePlanOptions(opts: RulePlanOptions): void {
  checkId('proxyUid', opts.proxyUid);
  if (opts.proxyGid !== null) checkId('proxyGid', opts.proxyGid);
  checkPort('inboundPort', opts.inboundPort);
  checkPort('outboundPort', opts.outboundPort);
  checkPort('adminPort', opts.adminPort);
  for (const [name, list] of [['skipInboundPorts', opts.skipInboundPorts], ['skipOutboundPorts', opts.skipOutboundPorts]] as const) {
    for (const r of list) {
      checkPort(name, r.from);
      checkPort(name, r.to);
      if (r.to < r.from) throw new MeshpipeError('ERR_INVALID_ARGUMENT', `${name}: range ${r.from}-${r.to} is reversed`, { key: name });
    }
  }
  const named: [string, number][] = [
    ['inboundPort', opts.inboundPort],
    ['outboundPort', opts.outboundPort],
    ['adminPort', opts.adminPort],
  ];
  for (let i = 0; i < named.length; i++) {
    for (let j = i + 1; j < named.length; j++) {
      const a = named[i];
      const b = named[j];
      if (a && b && a[1] === b[1]) {
        throw new MeshpipeError('ERR_INVALID_ARGUMENT', `${a[0]} and ${b[0]} are both ${a[1]}: expected distinct ports`, {
          key: b[0],
        });
      }
    }
  }
}

/**
 * Splits port ranges into multiport values of at most MULTIPORT_MAX slots each,
 * a single port taking one slot and a range `a:b` two, keeping the given order
 * (planInstall passes sorted, merged ranges).
 */
export function multiportBatches(ranges: readonly PortRange[]): string[] {
  const batches: string[] = [];
  let current: string[] = [];
  let used = 0;
  for (const r of ranges) {
    const cost = r.from === r.to ? 1 : 2;
    if (used + cost > MULTIPORT_MAX) {
      batches.push(current.join(','));
      current = [];
      used = 0;
    }
    current.push(r.from === r.to ? String(r.from) : `${r.from}:${r.to}`);
    used += cost;
  }
  if (current.length > 0) batches.push(current.join(','));
  return batches;
}

/** Plans the install for one family. Throws ERR_INVALID_ARGUMENT on bad options. */
export function planInstall(opts: RulePlanOptions): RulePlan {
  validatePlanOptions(opts);
  const subnets = opts.skipSubnets.filter((c) => c.family === cidrFamily(opts.family));
  const rules: PlannedRule[] = [];
  const inbound = (args: string[]): void => void rules.push({ chain: INBOUND_CHAIN, args });
  const output = (args: string[]): void => void rules.push({ chain: OUTPUT_CHAIN, args });

  for (const ports of multiportBatches(mergeRanges(opts.skipInboundPorts))) {
    inbound(['-p', 'tcp', '-m', 'multiport', '--dports', ports, ...comment('skip-inbound-ports'), '-j', 'RETURN']);
  }
  const admin = [...new Set([CONTROL_PORT, opts.adminPort])].sort((a, b) => a - b).join(',');
  inbound(['-p', 'tcp', '-m', 'multiport', '--dports', admin, ...comment('ignore-admin-ports'), '-j', 'RETURN']);
  for (const subnet of subnets) {
    inbound(['-s', subnet.text, ...comment('skip-subnet'), '-j', 'RETURN']);
  }
  inbound(['-p', 'tcp', ...comment('redirect-inbound'), '-j', 'REDIRECT', '--to-ports', String(opts.inboundPort)]);

  output(['-m', 'owner', '--uid-owner', String(opts.proxyUid), ...comment('ignore-proxy-uid'), '-j', 'RETURN']);
  if (opts.proxyGid !== null) {
    output(['-m', 'owner', '--gid-owner', String(opts.proxyGid), ...comment('ignore-proxy-gid'), '-j', 'RETURN']);
  }
  output(['-o', 'lo', ...comment('ignore-loopback'), '-j', 'RETURN']);
  for (const ports of multiportBatches(mergeRanges(opts.skipOutboundPorts))) {
    output(['-p', 'tcp', '-m', 'multiport', '--dports', ports, ...comment('skip-outbound-ports'), '-j', 'RETURN']);
  }
  for (const subnet of subnets) {
    output(['-d', subnet.text, ...comment('skip-subnet'), '-j', 'RETURN']);
  }
  output(['-p', 'tcp', ...comment('redirect-outbound'), '-j', 'REDIRECT', '--to-ports', String(opts.outboundPort)]);

  const jumps: PlannedRule[] = [
    { chain: 'PREROUTING', args: [...comment('prerouting'), '-j', INBOUND_CHAIN] },
    { chain: 'OUTPUT', args: [...comment('output'), '-j', OUTPUT_CHAIN] },
  ];
  const commands: string[][] = [
    ...MESHPIPE_CHAINS.map((c) => ['-t', 'nat', '-N', c]),
    ...rules.map((r) => ['-t', 'nat', '-A', r.chain, ...r.args]),
    ...jumps.map((r) => ['-t', 'nat', '-A', r.chain, ...r.args]),
  ];
  return { family: opts.family, rules, jumps, commands };
}

// ---------------------------------------------------------------------------
// Reading `iptables -t nat -S` and comparing it with a plan.

/** One `-A` line of `iptables -S` output. */
export interface ExistingRule {
  readonly chain: string;
  /** Tokens after `-A CHAIN`, quotes removed. */
  readonly args: readonly string[];
  /** The text after `-A ` exactly as printed (re-usable with `-D`). */
  readonly spec: string;
}

export interface NatState {
  /** User-defined chains (`-N`). */
  readonly chains: readonly string[];
  readonly rules: readonly ExistingRule[];
}

/** Splits a rule line into tokens the way iptables-restore does (double quotes, backslash escapes). */
export function tokenizeRule(line: string): string[] {
  const tokens: string[] = [];
  let current = '';
  let inToken = false;
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i] as string;
    if (quoted) {
      if (ch === '\\' && i + 1 < line.length) current += line[++i];
      else if (ch === '"') quoted = false;
      else current += ch;
    } else if (ch === '"') {
      quoted = true;
      inToken = true;
    } else if (ch === ' ' || ch === '\t') {
      if (inToken) tokens.push(current);
      current = '';
      inToken = false;
    } else {
      current += ch;
      inToken = true;
    }
  }
  if (inToken) tokens.push(current);
  return tokens;
}

/** Parses `iptables -t nat -S` output. */
export function parseNatRules(text: string): NatState {
  const chains: string[] = [];
  const rules: ExistingRule[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('-N ')) chains.push(line.slice(3).trim());
    else if (line.startsWith('-A ')) {
      const tokens = tokenizeRule(line.slice(3));
      const [chain, ...args] = tokens;
      if (chain !== undefined) rules.push({ chain, args, spec: line.slice(3) });
    }
  }
  return { chains, rules };
}

/** Canonicalises address tokens so `10.1.2.3/8` and `10.0.0.0/8` compare equal. */
function normalizeArgs(args: readonly string[]): string {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const tok = args[i] as string;
    const prev = args[i - 1];
    if (prev === '-s' || prev === '-d' || prev === '--source' || prev === '--destination') {
      out.push(canonicalCidrText(tok) ?? tok);
    } else {
      out.push(tok);
    }
  }
  return out.join('\u0000');
}

/** True if an existing rule jumps (or goes) to one of meshpipe's chains. */
export function referencesMeshpipe(rule: ExistingRule): boolean {
  for (let i = 0; i + 1 < rule.args.length; i++) {
    if ((rule.args[i] === '-j' || rule.args[i] === '-g') && MESHPIPE_CHAINS.includes(rule.args[i + 1] as string)) {
      return true;
    }
  }
  return false;
}

export type InstallStatus =
  | { readonly kind: 'absent' }
  | { readonly kind: 'current' }
  | { readonly kind: 'differs'; readonly reasons: readonly string[] };

/** Compares the installed state with a plan. */
export function compareWithPlan(plan: RulePlan, state: NatState): InstallStatus {
  const presentChains = MESHPIPE_CHAINS.filter((c) => state.chains.includes(c));
  const refs = state.rules.filter((r) => !MESHPIPE_CHAINS.includes(r.chain) && referencesMeshpipe(r));
  if (presentChains.length === 0 && refs.length === 0) return { kind: 'absent' };
  const reasons: string[] = [];
  for (const chain of MESHPIPE_CHAINS) {
    if (!state.chains.includes(chain)) {
      reasons.push(`chain ${chain} is missing`);
      continue;
    }
    const want = plan.rules.filter((r) => r.chain === chain).map((r) => normalizeArgs(r.args));
    const have = state.rules.filter((r) => r.chain === chain).map((r) => normalizeArgs(r.args));
    if (want.length !== have.length || want.some((w, i) => w !== have[i])) {
      reasons.push(`chain ${chain} has ${have.length} rule(s) that differ from the ${want.length} planned`);
    }
  }
  const wantJumps = plan.jumps.map((j) => `${j.chain}\u0001${normalizeArgs(j.args)}`);
  const haveJumps = refs.map((r) => `${r.chain}\u0001${normalizeArgs(r.args)}`);
  for (const j of wantJumps) {
    const n = haveJumps.filter((h) => h === j).length;
    if (n !== 1) reasons.push(`jump ${j.split('\u0001')[0]} -> meshpipe is present ${n} time(s), expected once`);
  }
  const extra = haveJumps.filter((h) => !wantJumps.includes(h)).length;
  if (extra > 0) reasons.push(`${extra} other rule(s) jump to meshpipe's chains`);
  return reasons.length === 0 ? { kind: 'current' } : { kind: 'differs', reasons };
}

// ---------------------------------------------------------------------------
// iptables-restore input. With --noflush, only what the file names changes,
// and a file that fails anywhere commits nothing (verified for both the nft and
// the legacy backends of iptables 1.8), so an install is never half-done.

/** Quotes a token for iptables-restore when needed (and comments always, as `-S` prints them). */
function restoreToken(tok: string, isComment: boolean): string {
  if (!isComment && /^[^\s"'\\]+$/.test(tok)) return tok;
  return `"${tok.replace(/(["\\])/g, '\\$1')}"`;
}

export function renderRule(rule: PlannedRule): string {
  const parts = rule.args.map((a, i) => restoreToken(a, rule.args[i - 1] === '--comment'));
  return `-A ${rule.chain} ${parts.join(' ')}`;
}

/**
 * The restore input that installs the plan, replacing any previous meshpipe
 * state: declaring an existing chain under --noflush flushes it, and existing
 * jumps are deleted by their exact printed spec before the new ones are added.
 */
export function renderInstall(plan: RulePlan, state: NatState): string {
  const lines = ['*nat', ...MESHPIPE_CHAINS.map((c) => `:${c} - [0:0]`)];
  for (const r of state.rules) {
    if (!MESHPIPE_CHAINS.includes(r.chain) && referencesMeshpipe(r)) lines.push(`-D ${r.spec}`);
  }
  for (const r of plan.rules) lines.push(renderRule(r));
  for (const j of plan.jumps) lines.push(renderRule(j));
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/**
 * The restore input that removes meshpipe's jumps and chains and nothing else,
 * or null when there is nothing to remove.
 */
export function renderUninstall(state: NatState): string | null {
  const lines = ['*nat'];
  for (const r of state.rules) {
    if (!MESHPIPE_CHAINS.includes(r.chain) && referencesMeshpipe(r)) lines.push(`-D ${r.spec}`);
  }
  for (const c of MESHPIPE_CHAINS) {
    if (state.chains.includes(c)) lines.push(`-F ${c}`, `-X ${c}`);
  }
  if (lines.length === 1) return null;
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** The uninstall as iptables argument vectors (for display and for callers without iptables-restore). */
export function uninstallCommands(state: NatState): string[][] {
  const out: string[][] = [];
  for (const r of state.rules) {
    if (!MESHPIPE_CHAINS.includes(r.chain) && referencesMeshpipe(r)) out.push(['-t', 'nat', '-D', r.chain, ...r.args]);
  }
  for (const c of MESHPIPE_CHAINS) {
    if (state.chains.includes(c)) out.push(['-t', 'nat', '-F', c], ['-t', 'nat', '-X', c]);
  }
  return out;
}
