/**
 * Runs iptables for `meshpipe init`: finds the binary and its backend, checks
 * privileges before touching anything, reads the nat table, and installs,
 * rebuilds or removes meshpipe's chains in one `iptables-restore --noflush`
 * transaction per address family.
 *
 * The planning (which rules, in which order, how to compare) is pure and lives
 * in ts/init/rules.ts; this module only executes. Both iptables backends
 * are supported: `iptables` (whatever the distribution's alternative points
 * to, usually nf_tables), `iptables-nft` and `iptables-legacy`; the IPv6 tool
 * is derived from the IPv4 one (`iptables-legacy` -> `ip6tables-legacy`) so a
 * backend override applies to both families. iptables-restore commits a file
 * all or nothing (checked for both backends), so a failure leaves the previous
 * rules in place, and every install is read back and compared with the plan.
 */

import { spawn } from 'node:child_process';
import { basename, dirname, join } from 'node:path';
import { MeshpipeError } from '../errors.js';
import {
  compareWithPlan,
  parseNatRules,
  renderInstall,
  renderUninstall,
  type InstallStatus,
  type IpFamily,
  type NatState,
  type RulePlan,
} from './rules.js';

/** Seconds to wait for the xtables lock (legacy backend; nft ignores it). */
const LOCK_WAIT_SECONDS = '5';
const RUN_TIMEOUT_MS = 30_000;

export interface IptablesTool {
  readonly family: IpFamily;
  /** The command for rules, e.g. `ip6tables-legacy`. */
  readonly cmd: string;
  /** The matching restore command, e.g. `ip6tables-legacy-restore`. */
  readonly restoreCmd: string;
  /** `nf_tables`, `legacy`, or `unknown` (very old iptables prints no backend). */
  readonly backend: 'nf_tables' | 'legacy' | 'unknown';
  /** The first line of `--version`, e.g. `iptables v1.8.9 (nf_tables)`. */
  readonly version: string;
}

interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

const PACKAGE_HINT =
  'install the package that provides it (Debian/Ubuntu: apt-get install iptables, which ships iptables, ip6tables, ' +
  'iptables-restore, iptables-nft and iptables-legacy; Alpine: apk add iptables ip6tables; Fedora/RHEL: dnf install iptables-nft)';

/** Runs a command without a shell; ENOENT becomes ERR_IPTABLES naming the package. */
function run(cmd: string, args: readonly string[], input?: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, [...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    // Our own timer rather than spawn's `timeout`: that one is never cleared when
    // the spawn itself fails (ENOENT), which would hold the process open.
    const timer = setTimeout(() => child.kill('SIGKILL'), RUN_TIMEOUT_MS);
    timer.unref();
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (err.code === 'ENOENT') {
        const where = cmd.includes('/') ? '' : ' on PATH';
        reject(new MeshpipeError('ERR_IPTABLES', `${cmd} was not found${where}: ${PACKAGE_HINT}`, { cause: err }));
      } else {
        reject(new MeshpipeError('ERR_IPTABLES', `could not run ${cmd}: ${err.message}`, { cause: err }));
      }
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (signal === 'SIGKILL' && code === null) {
        resolve({ code: 137, stdout, stderr: `${stderr}\n${cmd} did not finish within ${RUN_TIMEOUT_MS / 1000} s (xtables lock held?)` });
      } else {
        resolve({ code: code ?? 1, stdout, stderr });
      }
    });
    child.stdin.on('error', () => undefined); // the child may exit before reading; its status says why
    child.stdin.end(input ?? '');
  });
}

/** The IPv6 counterpart of an IPv4 iptables command (`/sbin/iptables-legacy` -> `/sbin/ip6tables-legacy`). */
export function commandForFamily(base: string, family: IpFamily): string {
  const name = basename(base);
  if (!name.startsWith('iptables')) {
    throw new MeshpipeError(
      'ERR_INVALID_ARGUMENT',
      `--iptables-cmd "${base}" is not an iptables command: expected iptables, iptables-nft, iptables-legacy or a path to one`,
      { key: 'iptablesCmd' },
    );
  }
  if (family === 'ipv4') return base;
  const v6 = `ip6tables${name.slice('iptables'.length)}`;
  return base.includes('/') ? join(dirname(base), v6) : v6;
}

/** Parses the backend out of `iptables --version` output. */
export function parseBackend(versionOutput: string): IptablesTool['backend'] {
  if (/\(nf_tables\)/.test(versionOutput)) return 'nf_tables';
  if (/\(legacy\)/.test(versionOutput)) return 'legacy';
  return 'unknown';
}

/** Finds the iptables (or ip6tables) command for a family and its backend. */
export async function detectTool(family: IpFamily, base = 'iptables'): Promise<IptablesTool> {
  const cmd = commandForFamily(base, family);
  const version = await run(cmd, ['--version']);
  if (version.code !== 0) {
    throw new MeshpipeError('ERR_IPTABLES', `${cmd} --version failed (exit ${version.code}): ${version.stderr.trim()}`);
  }
  const first = (version.stdout.trim().split('\n')[0] ?? '').trim();
  return { family, cmd, restoreCmd: `${cmd}-restore`, backend: parseBackend(first), version: first };
}

/** Turns a failed iptables run into a clear error: missing capability, missing nat support, or the raw message. */
function iptablesFailure(tool: IptablesTool, what: string, res: RunResult): MeshpipeError {
  const msg = res.stderr.trim() || res.stdout.trim();
  if (/permission denied|you must be root|operation not permitted/i.test(msg)) {
    return new MeshpipeError(
      'ERR_IPTABLES',
      `${tool.cmd} ${what} was refused (${msg.split('\n')[0]}): meshpipe init needs CAP_NET_ADMIN in the pod's ` +
        `network namespace, and CAP_NET_RAW too with the legacy backend (run it as root, or add the NET_ADMIN and ` +
        `NET_RAW capabilities to the init container, as Linkerd's proxy-init does)`,
    );
  }
  if (/table does not exist|can't initialize|no chain\/target\/match by that name|protocol not supported/i.test(msg)) {
    return new MeshpipeError(
      'ERR_IPTABLES',
      `${tool.cmd} ${what} failed: the ${tool.family} nat table is not available with the ${tool.backend} backend ` +
        `(${msg.split('\n')[0]}); the kernel needs ${tool.backend === 'legacy' ? (tool.family === 'ipv4' ? 'iptable_nat' : 'ip6table_nat') : 'nf_tables and nft_nat'} ` +
        `(try --iptables-cmd ${tool.backend === 'legacy' ? 'iptables-nft' : 'iptables-legacy'})`,
    );
  }
  return new MeshpipeError('ERR_IPTABLES', `${tool.cmd} ${what} failed (exit ${res.code}): ${msg}`);
}

/** Reads the nat table (`-S`). Doubles as the privilege check: it needs CAP_NET_ADMIN. */
export async function readNatState(tool: IptablesTool): Promise<{ text: string; state: NatState }> {
  const res = await run(tool.cmd, ['-w', LOCK_WAIT_SECONDS, '-t', 'nat', '-S']);
  if (res.code !== 0) throw iptablesFailure(tool, '-t nat -S', res);
  return { text: res.stdout, state: parseNatRules(res.stdout) };
}

/** Applies a restore file with --noflush: all of it or (on error) none of it. */
export async function applyRestore(tool: IptablesTool, input: string): Promise<void> {
  const res = await run(tool.restoreCmd, ['--noflush', '-w', LOCK_WAIT_SECONDS], input);
  if (res.code !== 0) {
    const err = iptablesFailure({ ...tool, cmd: tool.restoreCmd }, '--noflush', res);
    throw new MeshpipeError('ERR_IPTABLES', `${err.message}; nothing was changed (iptables-restore commits all or nothing)`, {
      cause: err,
    });
  }
}

/** The shell form of a restore run, as --dry-run prints it. */
export function restoreShellText(tool: IptablesTool, input: string): string {
  return `${tool.restoreCmd} --noflush -w ${LOCK_WAIT_SECONDS} <<'EOF'\n${input}EOF\n`;
}

export type FamilyAction = 'installed' | 'rebuilt' | 'unchanged' | 'removed' | 'absent';

export interface FamilyResult {
  readonly family: IpFamily;
  readonly tool: IptablesTool;
  readonly action: FamilyAction;
  /** Why a rebuild was needed. */
  readonly reasons: readonly string[];
  /** The restore input applied (or, in a dry run, that would be applied); null when nothing to do. */
  readonly restore: string | null;
  readonly dryRun: boolean;
}

/** A family that passed every check and is ready to be changed. */
export interface PreparedInstall {
  readonly tool: IptablesTool;
  readonly plan: RulePlan;
  readonly state: NatState;
  readonly status: InstallStatus;
}

/** Detects, checks privileges and compares, changing nothing. */
export async function prepareInstall(plan: RulePlan, base: string): Promise<PreparedInstall> {
  const tool = await detectTool(plan.family, base);
  const { state } = await readNatState(tool);
  return { tool, plan, state, status: compareWithPlan(plan, state) };
}

/** Installs (or rebuilds) one prepared family, then reads it back to prove the rules are the planned ones. */
export async function applyInstall(p: PreparedInstall, dryRun: boolean): Promise<FamilyResult> {
  const base = { family: p.plan.family, tool: p.tool, dryRun };
  if (p.status.kind === 'current') return { ...base, action: 'unchanged', reasons: [], restore: null };
  const restore = renderInstall(p.plan, p.state);
  const action: FamilyAction = p.status.kind === 'absent' ? 'installed' : 'rebuilt';
  const reasons = p.status.kind === 'differs' ? p.status.reasons : [];
  if (dryRun) return { ...base, action, reasons, restore };
  await applyRestore(p.tool, restore);
  const after = compareWithPlan(p.plan, (await readNatState(p.tool)).state);
  if (after.kind !== 'current') {
    const why = after.kind === 'differs' ? after.reasons.join('; ') : 'the chains are missing';
    throw new MeshpipeError('ERR_IPTABLES', `${p.tool.cmd}: the installed rules do not read back as planned: ${why}`);
  }
  return { ...base, action, reasons, restore };
}

/** Removes meshpipe's jumps and chains for one family (only those), or reports there were none. */
export async function uninstallFamily(tool: IptablesTool, dryRun: boolean): Promise<FamilyResult> {
  const { state } = await readNatState(tool);
  const restore = renderUninstall(state);
  const base = { family: tool.family, tool, dryRun, reasons: [] as string[] };
  if (restore === null) return { ...base, action: 'absent', restore: null };
  if (!dryRun) await applyRestore(tool, restore);
  return { ...base, action: 'removed', restore };
}

/**
 * Probes whether a family can be used at all (binary present, nat table
 * readable). Returns the reason when it cannot, for "auto" IPv6.
 */
export async function probeFamily(family: IpFamily, base: string): Promise<{ tool: IptablesTool } | { reason: string }> {
  try {
    const tool = await detectTool(family, base);
    await readNatState(tool);
    return { tool };
  } catch (err) {
    return { reason: err instanceof Error ? err.message : String(err) };
  }
}
