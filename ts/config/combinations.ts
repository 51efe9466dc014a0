/**
 * Options that would be silently ignored in combination with others, and
 * environment variables with the `MESHPIPE_` prefix that name no option.
 *
 * A value nobody reads is a mistake the user cannot see: `--inbound` next to
 * `--forward` (the sidecar layout's listeners are not started then),
 * `--admin-expose-debug` with the admin server off, `--kubeconfig` without
 * `--kube`, `MESHPIPE_DRAIN_TIMOUT=10s`. Each is reported with what it is
 * ignored for and what to do. An ignored option given as a flag is an error
 * (exit 2: the command line is the user's intent right now); one that comes
 * from the environment or a config file is a warning, since those are often
 * shared between a sidecar and a forwarding proxy on purpose.
 */
import { MeshpipeError } from '../errors.js';

/** What the check needs of the config: values and where each came from. */
export interface CombinationInput {
  readonly forward: readonly unknown[];
  readonly inbound: unknown;
  readonly outbound: unknown;
  readonly admin: unknown;
  readonly adminExposeDebug: boolean;
  readonly adminShutdown: boolean;
  readonly kube: boolean;
  readonly kubeconfig: string | undefined;
  readonly forwardDirections: readonly ('inbound' | 'outbound')[];
  readonly sources: Readonly<Record<string, string>>;
}

/** One ignored option: its key, and why it is ignored. */
interface Ignored {
  readonly key: string;
  readonly why: string;
}

const SIDECAR_ONLY = ['inbound', 'outbound', 'inboundHost', 'inboundIps', 'ipv6', 'initState'] as const;

function ignoredOptions(c: CombinationInput): Ignored[] {
  const set = (key: string): boolean => (c.sources[key] ?? 'default') !== 'default';
  // Where the "off" came from, as the user wrote it: the flag, the variable or the file's key.
  const off = (key: string, flag: string): string => {
    const source = c.sources[key] ?? flag;
    if (source.startsWith('--')) return `${flag} off`;
    if (source.startsWith('MESHPIPE_')) return `${source}=off`;
    return `${key}: off in ${source.replace(/, key \w+$/, '')}`;
  };
  const out: Ignored[] = [];
  if (c.forward.length > 0) {
    for (const key of SIDECAR_ONLY) {
      if (set(key)) out.push({ key, why: `it configures the sidecar layout, which does not run with ${c.sources['forward'] ?? '--forward'} (remove one of them)` });
    }
  } else if (c.inbound === null) {
    for (const key of ['inboundHost', 'inboundIps'] as const) {
      if (set(key)) out.push({ key, why: `the inbound listener is off (${off('inbound', '--inbound')})` });
    }
  }
  if (c.admin === null) {
    if (set('adminExposeDebug') && c.adminExposeDebug) out.push({ key: 'adminExposeDebug', why: `the admin server is off (${off('admin', '--admin')})` });
    if (set('adminShutdown') && !c.adminShutdown) out.push({ key: 'adminShutdown', why: `the admin server is off (${off('admin', '--admin')})` });
  }
  if (set('kubeconfig') && !c.kube) out.push({ key: 'kubeconfig', why: 'it is read only with --kube (add --kube to watch the Kubernetes API)' });
  const hasInbound = c.forward.length > 0 ? c.forwardDirections.includes('inbound') : c.inbound !== null;
  if (set('inboundStopDelay') && !hasInbound) out.push({ key: 'inboundStopDelay', why: 'there is no inbound listener to stop first' });
  return out;
}

/**
 * Checks the combinations: throws for an ignored option given as a flag,
 * returns warnings for the others.
 * @throws MeshpipeError ERR_INVALID_CONFIG (exit 2)
 */
export function checkCombinations(c: CombinationInput): string[] {
  const warnings: string[] = [];
  for (const { key, why } of ignoredOptions(c)) {
    const source = c.sources[key] ?? key;
    const message = `${source} is ignored: ${why}`;
    if (source.startsWith('--')) throw new MeshpipeError('ERR_INVALID_CONFIG', message, { key });
    warnings.push(message);
  }
  return warnings;
}

/** `MESHPIPE_` variables read by meshpipe that are not config keys. */
const OTHER_VARIABLES: ReadonlySet<string> = new Set(['MESHPIPE_CONFIG']);

/**
 * One warning per `MESHPIPE_*` variable that names no option, with the
 * closest known name when one is near (a typo: `MESHPIPE_DRAIN_TIMOUT`).
 */
export function unknownEnvWarnings(env: NodeJS.ProcessEnv, known: readonly string[]): string[] {
  const names = new Set([...known, ...OTHER_VARIABLES]);
  const out: string[] = [];
  for (const name of Object.keys(env).sort()) {
    if (!name.startsWith('MESHPIPE_') || names.has(name)) continue;
    const hint = closest(name, [...names]);
    out.push(`unknown environment variable ${name} is ignored${hint !== undefined ? ` (did you mean ${hint}?)` : ''}; meshpipe proxy --help lists every variable`);
  }
  return out;
}

/** The candidate closest to `name` (edit distance at most `maxDistance`, default 3), for "did you mean". */
export function closest(name: string, candidates: readonly string[], maxDistance = 3): string | undefined {
  let best: string | undefined;
  let bestDistance = maxDistance + 1;
  for (const candidate of candidates) {
    const d = editDistance(name.toLowerCase(), candidate.toLowerCase());
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length]!;
}
