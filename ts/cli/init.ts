/**
 * `meshpipe init`: the proxy-init step. Installs (or with --uninstall removes)
 * the nat-table rules that send the pod's TCP through the sidecar, in the
 * current network namespace, for IPv4 and IPv6.
 *
 * Options come from flags and, with --annotations FILE, from the workload's
 * annotations in a downward-API file (config.linkerd.io/skip-inbound-ports,
 * skip-outbound-ports, skip-subnets). As in Linkerd, an annotation present on
 * the workload replaces the installation default given by the matching flag.
 * Flags are strict (a bad token exits 2 naming it); annotations are lenient
 * the way Linkerd treats them (bad entries are reported on stderr and skipped,
 * the valid ones apply).
 *
 * IPv6: by default both families are installed when ip6tables works (nat table
 * readable); if it does not, IPv6 is skipped with a notice, unless IPv6 was
 * asked for (--ipv6, or an IPv6 skip subnet), which makes it an error.
 * --no-ipv6 installs IPv4 only. Every family is checked (binary, privileges,
 * current rules) before any is changed, and if a later family fails, an
 * earlier one this run installed from scratch is removed again.
 */

import { readFile } from 'node:fs/promises';
import { MeshpipeError } from '../errors.js';
import { formatOptionsHelp, parseOptions, wantsHelp, type OptionSpec } from './args.js';
import { errorLine } from './report.js';
import { parsePortList, parsePortListStrict, type PortRange } from '../config/index.js';
import { parseCidrList, parseDownwardApi, type Cidr } from '../policy/index.js';
import {
  applyInstall,
  cidrFamily,
  commandForFamily,
  DEFAULTS,
  INBOUND_CHAIN,
  OUTPUT_CHAIN,
  planInstall,
  prepareInstall,
  probeFamily,
  renderInstall,
  restoreShellText,
  uninstallFamily,
  initStateOf,
  writeInitState,
  type FamilyResult,
  type IpFamily,
  type PreparedInstall,
  type RulePlan,
  type RulePlanOptions,
} from '../init/index.js';

const COMMAND = 'meshpipe init';

export const ANNOTATION_KEYS = Object.freeze({
  skipInboundPorts: 'config.linkerd.io/skip-inbound-ports',
  skipOutboundPorts: 'config.linkerd.io/skip-outbound-ports',
  skipSubnets: 'config.linkerd.io/skip-subnets',
});

export const INIT_OPTIONS: readonly OptionSpec[] = [
  { flag: 'proxy-uid', type: 'string', valueName: 'UID', help: "the proxy's uid (not 0): its own connections are never redirected", defaultText: String(DEFAULTS.proxyUid) },
  { flag: 'proxy-gid', type: 'string', valueName: 'GID', help: "also exempt connections made by this gid (not 0)", defaultText: '(none)' },
  { flag: 'inbound-port', type: 'string', valueName: 'PORT', help: 'incoming TCP is redirected to this port', defaultText: String(DEFAULTS.inboundPort) },
  { flag: 'outbound-port', type: 'string', valueName: 'PORT', help: 'outgoing TCP is redirected to this port', defaultText: String(DEFAULTS.outboundPort) },
  { flag: 'admin-port', type: 'string', valueName: 'PORT', help: "never redirected inbound (nor is 4190); must be the proxy's --admin port, or probes and scrapes are redirected to its inbound listener and refused", defaultText: String(DEFAULTS.adminPort) },
  { flag: 'skip-inbound-ports', type: 'string', valueName: 'LIST', help: 'incoming TCP to these ports bypasses the proxy, e.g. 22,4567-4568', defaultText: '(none)' },
  { flag: 'skip-outbound-ports', type: 'string', valueName: 'LIST', help: 'outgoing TCP to these ports bypasses the proxy', defaultText: '(none)' },
  { flag: 'skip-subnets', type: 'string', valueName: 'CIDRS', help: 'traffic from (inbound) or to (outbound) these networks bypasses the proxy, e.g. 10.96.0.0/12,fd00::/8', defaultText: '(none)' },
  { flag: 'annotations', type: 'string', valueName: 'FILE', help: `downward-API annotations file; ${Object.values(ANNOTATION_KEYS).join(', ')} replace the matching flags`, defaultText: '(none)' },
  { flag: 'ipv6', type: 'boolean', help: 'require IPv6 rules (ip6tables); an error if they cannot be installed', defaultText: 'auto' },
  { flag: 'no-ipv6', type: 'boolean', help: 'IPv4 rules only', defaultText: '' },
  { flag: 'iptables-cmd', type: 'string', valueName: 'CMD', help: 'iptables binary: iptables, iptables-nft or iptables-legacy (ip6tables is derived)', defaultText: 'iptables' },
  { flag: 'write-state', type: 'string', valueName: 'FILE', help: 'after installing, record the exempted ports and the proxy uid in FILE (JSON) for meshpipe proxy --init-state FILE to check: a proxy whose admin port or uid differ then refuses to start', defaultText: '(none)' },
  { flag: 'dry-run', type: 'boolean', help: 'print the iptables-restore input that would be applied and change nothing', defaultText: '' },
  { flag: 'uninstall', type: 'boolean', help: "remove meshpipe's chains and the jumps to them (nothing else)", defaultText: '' },
  { flag: 'help', short: 'h', type: 'boolean', help: 'show this help and exit', defaultText: '' },
];

export function initHelp(): string {
  return [
    `Usage: ${COMMAND} [options]`,
    '',
    "Installs nat-table rules in the current network namespace so the pod's TCP goes through the",
    `sidecar: chain ${INBOUND_CHAIN} (from PREROUTING) redirects incoming TCP to the inbound port,`,
    `chain ${OUTPUT_CHAIN} (from OUTPUT) redirects outgoing TCP to the outbound port. The proxy's uid,`,
    'loopback output, skip ports and skip subnets are exempt. Needs CAP_NET_ADMIN. Running it again',
    'with the same options changes nothing; with other options it rebuilds the chains atomically.',
    'IPv6 rules are installed too when ip6tables works (see --ipv6, --no-ipv6).',
    '',
    'Options:',
    formatOptionsHelp(INIT_OPTIONS),
    '',
  ].join('\n');
}

/** The rule options (both families) plus how to apply them. */
export interface InitArgs extends Omit<RulePlanOptions, 'family'> {
  readonly ipv6: 'auto' | 'on' | 'off';
  readonly iptablesCmd: string;
  readonly dryRun: boolean;
  readonly uninstall: boolean;
  /** Where to record what was installed (`--write-state`). */
  readonly writeState: string | undefined;
  /** Problems found in annotations (entries skipped), to print as warnings. */
  readonly warnings: readonly string[];
}

function bad(message: string, key: string): MeshpipeError {
  return new MeshpipeError('ERR_INVALID_ARGUMENT', message, { key });
}

function intFlag(values: Readonly<Record<string, string | boolean | string[] | undefined>>, flag: string, fallback: number, max: number): number {
  const raw = values[flag];
  if (raw === undefined) return fallback;
  const text = String(raw).trim();
  const min = flag.endsWith('port') ? 1 : 0;
  if (!/^\d+$/.test(text) || Number(text) > max || Number(text) < min) {
    throw bad(`--${flag} "${String(raw)}" is invalid: expected an integer ${min}-${max}`, flag);
  }
  return Number(text);
}

/**
 * The exempt uid or gid is never 0: the rules let every connection of that id bypass the
 * proxy, and with root that is every process of the pod running as root, the app often
 * included, silently unmeshed. (Injection refuses config.linkerd.io/proxy-uid 0 too.)
 */
function notRoot(flag: string, what: 'uid' | 'gid', id: number): number {
  if (id !== 0) return id;
  const who = what === 'uid' ? 'uid 0 is root, and connections made as root' : 'gid 0 is the root group, and connections made by processes of that group';
  throw bad(`--${flag} "0" is invalid: ${who} (often the app's) would bypass the proxy; expected the proxy's own ${what} 1-4294967294 (the proxy never runs as root)`, flag);
}

function strictPorts(flag: string, text: string): PortRange[] {
  try {
    return [...parsePortListStrict(text)];
  } catch (err) {
    throw bad(`--${flag}: ${(err as Error).message}`, flag);
  }
}

function strictSubnets(text: string): Cidr[] {
  const { cidrs, errors } = parseCidrList(text);
  if (errors.length > 0) throw bad(`--skip-subnets: ${errors.map((e) => `"${e.token}": ${e.reason}`).join('; ')}`, 'skip-subnets');
  return cidrs;
}

/** Parses argv (and the annotations file, if given) into validated, frozen arguments. */
export async function parseInitArgs(argv: readonly string[]): Promise<InitArgs> {
  const { values } = parseOptions(argv, INIT_OPTIONS, COMMAND);
  if (values['ipv6'] && values['no-ipv6']) throw bad('--ipv6 and --no-ipv6 contradict each other: give at most one', 'ipv6');
  const iptablesCmd = String(values['iptables-cmd'] ?? 'iptables');
  // Every bad flag is reported at once, so one run shows all that needs fixing.
  const problems: MeshpipeError[] = [];
  const attempt = <T>(fn: () => T, fallback: T): T => {
    try {
      return fn();
    } catch (e) {
      if (!(e instanceof MeshpipeError)) throw e;
      problems.push(e);
      return fallback;
    }
  };
  let skipInboundPorts = attempt(() => strictPorts('skip-inbound-ports', String(values['skip-inbound-ports'] ?? '')), []);
  let skipOutboundPorts = attempt(() => strictPorts('skip-outbound-ports', String(values['skip-outbound-ports'] ?? '')), []);
  let skipSubnets = attempt(() => strictSubnets(String(values['skip-subnets'] ?? '')), []);
  const proxyUid = attempt(() => notRoot('proxy-uid', 'uid', intFlag(values, 'proxy-uid', DEFAULTS.proxyUid, 4294967294)), 0);
  const proxyGid = values['proxy-gid'] === undefined ? null : attempt(() => notRoot('proxy-gid', 'gid', intFlag(values, 'proxy-gid', 0, 4294967294)), 0);
  const inboundPort = attempt(() => intFlag(values, 'inbound-port', DEFAULTS.inboundPort, 65535), 0);
  const outboundPort = attempt(() => intFlag(values, 'outbound-port', DEFAULTS.outboundPort, 65535), 0);
  const adminPort = attempt(() => intFlag(values, 'admin-port', DEFAULTS.adminPort, 65535), 0);
  attempt(() => commandForFamily(iptablesCmd, 'ipv6'), '');
  const [first] = problems;
  if (first !== undefined && problems.length === 1) throw first;
  if (first !== undefined) {
    throw new MeshpipeError('ERR_INVALID_ARGUMENT', problems.map((p) => p.message).join('\n  '), { key: first.key ?? '' });
  }
  const warnings: string[] = [];

  const file = values['annotations'];
  if (typeof file === 'string') {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw bad(`--annotations ${file}: cannot read the file: ${(err as Error).message}`, 'annotations');
    }
    const parsed = parseDownwardApi(text);
    const wanted = new Set<string>(Object.values(ANNOTATION_KEYS));
    for (const e of parsed.errors) {
      if (e.key === undefined || wanted.has(e.key)) warnings.push(`${file}: ${e.message}`);
    }
    const ports = (key: string): PortRange[] | undefined => {
      const value = parsed.values.get(key);
      if (value === undefined) return undefined;
      const result = parsePortList(value);
      for (const e of result.errors) warnings.push(`annotation ${key}: entry "${e.token}" skipped: ${e.reason}`);
      return [...result.ranges];
    };
    skipInboundPorts = ports(ANNOTATION_KEYS.skipInboundPorts) ?? skipInboundPorts;
    skipOutboundPorts = ports(ANNOTATION_KEYS.skipOutboundPorts) ?? skipOutboundPorts;
    const subnets = parsed.values.get(ANNOTATION_KEYS.skipSubnets);
    if (subnets !== undefined) {
      const result = parseCidrList(subnets);
      for (const e of result.errors) warnings.push(`annotation ${ANNOTATION_KEYS.skipSubnets}: entry "${e.token}" skipped: ${e.reason}`);
      skipSubnets = result.cidrs;
    }
  }

  return Object.freeze({
    proxyUid,
    proxyGid,
    inboundPort,
    outboundPort,
    adminPort,
    skipInboundPorts: Object.freeze(skipInboundPorts),
    skipOutboundPorts: Object.freeze(skipOutboundPorts),
    skipSubnets: Object.freeze(skipSubnets),
    ipv6: values['ipv6'] ? 'on' : values['no-ipv6'] ? 'off' : 'auto',
    iptablesCmd,
    dryRun: values['dry-run'] === true,
    uninstall: values['uninstall'] === true,
    writeState: typeof values['write-state'] === 'string' ? values['write-state'] : undefined,
    warnings: Object.freeze(warnings),
  } as const);
}

function planFor(args: InitArgs, family: IpFamily): RulePlan {
  return planInstall({ ...args, family });
}

/** Which families to act on; the reason is printed when IPv6 is skipped. */
async function chooseFamilies(args: InitArgs, err: (s: string) => void): Promise<IpFamily[]> {
  const families: IpFamily[] = ['ipv4'];
  const v6Subnets = args.skipSubnets.filter((c) => c.family === cidrFamily('ipv6'));
  if (args.ipv6 === 'off') {
    if (v6Subnets.length > 0 && !args.uninstall) {
      err(`warning: --no-ipv6: IPv6 skip subnets ignored: ${v6Subnets.map((c) => c.text).join(',')}`);
    }
    return families;
  }
  const required = args.ipv6 === 'on' || (v6Subnets.length > 0 && !args.uninstall);
  if (required) return [...families, 'ipv6'];
  const probe = await probeFamily('ipv6', args.iptablesCmd);
  if ('tool' in probe) return [...families, 'ipv6'];
  err(`notice: ipv6 skipped (use --ipv6 to require it): ${probe.reason}`);
  return families;
}

function describe(r: FamilyResult, plan?: RulePlan): string {
  const via = `${r.tool.restoreCmd} [${r.tool.version}]`;
  const counts = plan
    ? ` (${INBOUND_CHAIN}: ${plan.rules.filter((x) => x.chain === INBOUND_CHAIN).length} rules, ` +
      `${OUTPUT_CHAIN}: ${plan.rules.filter((x) => x.chain === OUTPUT_CHAIN).length} rules)`
    : '';
  const would = r.dryRun ? 'would be ' : '';
  switch (r.action) {
    case 'unchanged':
      return `${r.family}: rules already installed as planned; nothing changed`;
    case 'installed':
      return `${r.family}: ${would}installed${counts} with ${via}`;
    case 'rebuilt':
      return `${r.family}: ${would}rebuilt${counts} with ${via}, because ${r.reasons.join('; ')}`;
    case 'removed':
      return `${r.family}: meshpipe's chains and jumps ${would}removed with ${via}`;
    case 'absent':
      return `${r.family}: no meshpipe rules installed; nothing to remove`;
  }
}

type Print = (s: string) => void;

async function runUninstall(args: InitArgs, out: Print, err: Print): Promise<number> {
  const results: FamilyResult[] = [];
  const v4 = await probeFamily('ipv4', args.iptablesCmd);
  if (!('tool' in v4)) throw new MeshpipeError('ERR_IPTABLES', v4.reason);
  const families = await chooseFamilies(args, err);
  for (const family of families) {
    const probe = family === 'ipv4' ? v4 : await probeFamily(family, args.iptablesCmd);
    if (!('tool' in probe)) {
      if (args.ipv6 === 'on') throw new MeshpipeError('ERR_IPTABLES', probe.reason);
      err(`notice: ${family} skipped: ${probe.reason}`);
      continue;
    }
    const r = await uninstallFamily(probe.tool, args.dryRun);
    if (args.dryRun && r.restore !== null) out(`# ${family}\n${restoreShellText(r.tool, r.restore)}`);
    results.push(r);
  }
  for (const r of results) (args.dryRun ? err : out)(describe(r));
  return 0;
}

/**
 * A dry run where the current rules cannot be read (no binary, no
 * capability): still show what a fresh install would apply, and say why.
 */
function dryRunWithoutState(args: InitArgs, families: IpFamily[], why: string, out: Print, err: Print): number {
  err(`notice: cannot read the current rules (${why}); showing a fresh install`);
  for (const family of families) {
    const plan = planFor(args, family);
    const cmd = family === 'ipv4' ? args.iptablesCmd : commandForFamily(args.iptablesCmd, 'ipv6');
    out(`# ${family}\n${cmd}-restore --noflush -w 5 <<'EOF'\n${renderInstall(plan, { chains: [], rules: [] })}EOF\n`);
  }
  return 0;
}

async function runInstall(args: InitArgs, out: Print, err: Print): Promise<number> {
  // Plan and check every family first (bad options, missing binary, missing
  // capability, current rules) so that nothing is changed unless all can be.
  // IPv4 is checked before IPv6 is even probed, so its error comes first.
  const v4Plan = planFor(args, 'ipv4');
  const prepared: PreparedInstall[] = [];
  try {
    prepared.push(await prepareInstall(v4Plan, args.iptablesCmd));
  } catch (e) {
    if (args.dryRun && e instanceof MeshpipeError && e.code === 'ERR_IPTABLES') {
      const families: IpFamily[] = args.ipv6 === 'off' ? ['ipv4'] : ['ipv4', 'ipv6'];
      return dryRunWithoutState(args, families, e.message, out, err);
    }
    throw e;
  }
  const families = await chooseFamilies(args, err);
  if (families.includes('ipv6')) prepared.push(await prepareInstall(planFor(args, 'ipv6'), args.iptablesCmd));

  const done: { result: FamilyResult; prepared: PreparedInstall }[] = [];
  for (const p of prepared) {
    try {
      done.push({ result: await applyInstall(p, args.dryRun), prepared: p });
    } catch (e) {
      for (const d of done) {
        if (d.result.action === 'installed' && !d.result.dryRun) {
          await uninstallFamily(d.prepared.tool, false).catch((u: unknown) => err(`rollback of ${d.result.family} failed: ${(u as Error).message}`));
          err(`${d.result.family}: rolled back because ${p.plan.family} failed`);
        }
      }
      throw e;
    }
  }
  for (const { result, prepared: p } of done) {
    if (args.dryRun && result.restore !== null) out(`# ${result.family}\n${restoreShellText(result.tool, result.restore)}`);
    (args.dryRun ? err : out)(describe(result, p.plan));
  }
  if (args.writeState !== undefined && !args.dryRun) {
    writeInitState(args.writeState, initStateOf(args));
    out(`state written to ${args.writeState} (check it with meshpipe proxy --init-state ${args.writeState})`);
  }
  return 0;
}

/** Runs `meshpipe init`; returns the exit code (0 ok, 2 bad input, 1 failure). */
export async function main(argv: string[]): Promise<number> {
  const out: Print = (s) => void process.stdout.write(`${s}\n`);
  const err: Print = (s) => void process.stderr.write(`${COMMAND}: ${s}\n`);
  try {
    if (wantsHelp(argv)) {
      process.stdout.write(initHelp());
      return 0;
    }
    const args = await parseInitArgs(argv);
    for (const w of args.warnings) err(`warning: ${w}`);
    return args.uninstall ? await runUninstall(args, out, err) : await runInstall(args, out, err);
  } catch (e) {
    process.stderr.write(errorLine('init', e));
    return e instanceof MeshpipeError ? e.exitCode : 1;
  }
}
