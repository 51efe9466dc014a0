/**
 * `meshpipe inject [FILE|-]`: adds the meshpipe sidecar to the pods of
 * Kubernetes manifests (multi-document YAML or JSON, from a file or stdin)
 * and writes the result on stdout; `--dry-run` writes a unified diff instead.
 *
 * Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs
 * and the items of a List are injected unless `meshpipe.io/inject` or
 * `linkerd.io/inject` says `disabled` (on the pod template, or on a
 * Namespace object in the same input); every other document is written back
 * byte for byte. Running it again changes nothing. One report line per pod
 * template goes to stderr.
 *
 * Exit codes: 0 done; 2 bad usage, unreadable input or invalid YAML (nothing
 * written), or some object had invalid annotations: those objects are written
 * back unchanged, the others injected, and each problem is named on stderr
 * (object, annotation, value, what is expected).
 *
 * The input/output helpers here are shared with `meshpipe uninject`.
 */
import { createTwoFilesPatch } from 'diff';
import { isPipe, readPipeOnceBytesSync, readWatchedFile, WatchedFileError } from '../config/index.js';
import { MeshpipeError } from '../errors.js';
import { MAX_MANIFEST_BYTES } from '../policy/k8s/manifests.js';
import {
  DEFAULT_IDENTITY,
  KUBE_WATCH_KEY,
  PROXY_RBAC_MANIFEST,
  formatReport,
  goDuration,
  groupProblem,
  injectStream,
  kindProblem,
  namingProblem,
  objectNameProblem,
  parseCertDuration,
  parseRenewBefore,
  parseStream,
  renderStream,
  type IdentityDefaults,
  type InjectOptions,
  type StreamResult,
} from '../inject/index.js';
import { formatOptionsHelp, parseOptions, wantsHelp, type OptionSpec } from './args.js';
import { packageVersion } from './version.js';

const COMMAND = 'meshpipe inject';

/** Options shared by `meshpipe inject` and `meshpipe injector` (what the sidecar looks like). */
export const SIDECAR_OPTIONS: readonly OptionSpec[] = [
  { flag: 'image', type: 'string', valueName: 'IMAGE', help: 'image of the proxy container (the Dockerfile\'s proxy target)', defaultText: 'meshpipe-proxy:VERSION' },
  { flag: 'init-image', type: 'string', valueName: 'IMAGE', help: 'image of the meshpipe-init container (the Dockerfile\'s init target)', defaultText: 'meshpipe-init:VERSION' },
  { flag: 'image-pull-policy', type: 'string', valueName: 'POLICY', help: 'Always, IfNotPresent or Never', defaultText: 'IfNotPresent' },
  { flag: 'sidecar', type: 'string', valueName: 'native|classic', help: 'native: the proxy is an init container with restartPolicy Always (Kubernetes >= 1.29); classic: the first container. A pod\'s config.linkerd.io/proxy-enable-native-sidecar wins', defaultText: 'native' },
  { flag: 'identity', type: 'string', valueName: 'enabled|disabled', help: 'the proxy\'s mesh identity (mTLS) for pods whose annotations do not say: enabled = a certificate from cert-manager\'s CSI driver (csi.cert-manager.io, which must be installed, with the issuer below: pods wait in ContainerCreating until it is), or from the Secret named by config.meshpipe.io/identity-secret; disabled = a plaintext sidecar. A pod\'s (or namespace\'s) config.meshpipe.io/identity wins', defaultText: 'enabled' },
  { flag: 'identity-issuer', type: 'string', valueName: 'NAME', help: 'the cert-manager issuer that signs identities (config.meshpipe.io/identity-issuer wins)', defaultText: DEFAULT_IDENTITY.issuer.name },
  { flag: 'identity-issuer-kind', type: 'string', valueName: 'KIND', help: 'ClusterIssuer, Issuer (in the pod\'s namespace) or an external issuer\'s kind (config.meshpipe.io/identity-issuer-kind wins)', defaultText: DEFAULT_IDENTITY.issuer.kind },
  { flag: 'identity-issuer-group', type: 'string', valueName: 'GROUP', help: 'the issuer\'s API group (config.meshpipe.io/identity-issuer-group wins)', defaultText: DEFAULT_IDENTITY.issuer.group },
  { flag: 'identity-duration', type: 'string', valueName: 'DURATION', help: 'lifetime of identity certificates, at least 1h (config.meshpipe.io/identity-duration wins)', defaultText: goDuration(DEFAULT_IDENTITY.durationMs) },
  { flag: 'identity-renew-before', type: 'string', valueName: 'DURATION', help: 'renew an identity certificate this long before it expires, at least 5m (config.meshpipe.io/identity-renew-before wins)', defaultText: 'a third of the lifetime' },
  { flag: 'trust-domain', type: 'string', valueName: 'DOMAIN', help: 'the mesh trust domain: in each certificate\'s name, and given to the proxy (--trust-domain) for its peers\' names; the same for the whole cluster', defaultText: DEFAULT_IDENTITY.trustDomain },
  { flag: 'identity-template', type: 'string', valueName: 'TEMPLATE', help: 'how a pod\'s service account becomes its identity, e.g. spiffe://{trustDomain}/ns/{ns}/sa/{sa} (a URI SAN); the certificate\'s name and the proxy\'s --identity-template alike', defaultText: DEFAULT_IDENTITY.template },
  { flag: 'kube-watch', type: 'string', valueName: 'enabled|disabled', help: `the proxy watches the Kubernetes API (meshpipe proxy --kube) with the pod's service account, for pods whose annotations do not say: it learns which destinations are meshed (mTLS outbound) and the other workloads' policy; grant ${PROXY_RBAC_MANIFEST} (read-only). disabled = the pod's own annotations only. A pod's (or namespace's) ${KUBE_WATCH_KEY} wins`, defaultText: 'enabled' },
];

const OPTIONS: readonly OptionSpec[] = [
  ...SIDECAR_OPTIONS,
  { flag: 'dry-run', type: 'boolean', help: 'write a unified diff of what would change instead of the manifests', defaultText: '' },
  { flag: 'help', short: 'h', type: 'boolean', help: 'show this help and exit', defaultText: '' },
];

export function injectHelp(): string {
  return [
    `Usage: ${COMMAND} [options] [FILE|-]`,
    '',
    'Reads Kubernetes manifests (multi-document YAML or JSON; stdin when FILE is - or absent) and',
    'writes them with the meshpipe sidecar added to every pod template: the meshpipe-init container',
    '(iptables, NET_ADMIN/NET_RAW only) and the meshpipe-proxy sidecar (uid 2102, probes on :4191).',
    'Kinds: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, and List items; other',
    'documents are written back byte for byte. meshpipe.io/inject or linkerd.io/inject: disabled (pod',
    'template or Namespace) skips a workload; config.linkerd.io/skip-inbound-ports, skip-outbound-ports,',
    'skip-subnets, proxy-uid, proxy-cpu-request (and -limit, memory, ephemeral-storage),',
    'proxy-enable-native-sidecar and config.meshpipe.io/drain-timeout shape the sidecar. The proxy gets',
    'a mesh identity from cert-manager\'s CSI driver (--identity-issuer), or the Secret named by',
    'config.meshpipe.io/identity-secret; config.meshpipe.io/identity: disabled (or --identity disabled)',
    'makes it a plaintext sidecar. The proxy watches the Kubernetes API (--kube) with the pod\'s service',
    `account, which needs ${PROXY_RBAC_MANIFEST}; ${KUBE_WATCH_KEY}: disabled (or --kube-watch disabled)`,
    'turns that off.',
    'Injecting again changes nothing; meshpipe uninject removes it.',
    '',
    'Exit status: 0 done; 2 bad usage or input, or an object with invalid annotations (left',
    'unchanged in the output, each problem named on stderr).',
    '',
    'Options:',
    formatOptionsHelp(OPTIONS),
    '',
  ].join('\n');
}

function bad(message: string, key: string): MeshpipeError {
  return new MeshpipeError('ERR_INVALID_ARGUMENT', message, { key });
}

/** The identity flags, checked as the annotations are. */
function identityDefaults(values: Readonly<Record<string, string | boolean | string[] | undefined>>): IdentityDefaults {
  const text = (flag: string, fallback: string, check: (v: string) => string | undefined): string => {
    const v = values[flag];
    if (v === undefined) return fallback;
    const t = String(v).trim();
    const why = check(t);
    if (why !== undefined) throw bad(`--${flag} "${String(v)}" is invalid: ${why}`, flag);
    return t;
  };
  const mode = text('identity', 'enabled', (v) => (v === 'enabled' || v === 'disabled' ? undefined : 'expected enabled or disabled'));
  const parsed = (flag: string, parse: (v: string) => number): number | undefined => {
    const v = values[flag];
    if (v === undefined) return undefined;
    try {
      return parse(String(v));
    } catch (err) {
      throw bad(`--${flag} "${String(v)}" is invalid: ${(err as Error).message}`, flag);
    }
  };
  const durationMs = parsed('identity-duration', parseCertDuration) ?? DEFAULT_IDENTITY.durationMs;
  const renewBeforeMs = parsed('identity-renew-before', (v) => parseRenewBefore(v, durationMs));
  const trustDomain = text('trust-domain', DEFAULT_IDENTITY.trustDomain, () => undefined);
  const template = text('identity-template', DEFAULT_IDENTITY.template, () => undefined);
  const naming = namingProblem(trustDomain, template);
  if (naming !== undefined) throw bad(`--trust-domain / --identity-template: ${naming}`, values['identity-template'] !== undefined ? 'identity-template' : 'trust-domain');
  return {
    enabled: mode === 'enabled',
    issuer: {
      name: text('identity-issuer', DEFAULT_IDENTITY.issuer.name, objectNameProblem),
      kind: text('identity-issuer-kind', DEFAULT_IDENTITY.issuer.kind, kindProblem),
      group: text('identity-issuer-group', DEFAULT_IDENTITY.issuer.group, groupProblem),
    },
    durationMs,
    renewBeforeMs,
    trustDomain,
    template,
  };
}

/** The sidecar options from parsed flag values. */
export function sidecarOptions(values: Readonly<Record<string, string | boolean | string[] | undefined>>): InjectOptions {
  const version = packageVersion();
  const pull = String(values['image-pull-policy'] ?? 'IfNotPresent');
  if (pull !== 'Always' && pull !== 'IfNotPresent' && pull !== 'Never') {
    throw bad(`--image-pull-policy "${pull}" is invalid: expected Always, IfNotPresent or Never`, 'image-pull-policy');
  }
  const sidecar = String(values['sidecar'] ?? 'native');
  if (sidecar !== 'native' && sidecar !== 'classic') throw bad(`--sidecar "${sidecar}" is invalid: expected native or classic`, 'sidecar');
  const image = (flag: string, fallback: string): string => {
    const v = values[flag];
    if (v === undefined) return fallback;
    const text = String(v).trim();
    if (text === '' || /\s/.test(text)) throw bad(`--${flag} "${String(v)}" is invalid: expected an image reference such as registry.example/meshpipe-proxy:${version}`, flag);
    return text;
  };
  return {
    image: image('image', `meshpipe-proxy:${version}`),
    initImage: image('init-image', `meshpipe-init:${version}`),
    imagePullPolicy: pull,
    sidecar,
    version,
    identity: identityDefaults(values),
    kubeWatch: enabledFlag(values, 'kube-watch'),
  };
}

/** An `enabled|disabled` flag (default enabled). */
function enabledFlag(values: Readonly<Record<string, string | boolean | string[] | undefined>>, flag: string): boolean {
  const v = values[flag];
  if (v === undefined) return true;
  const t = String(v).trim();
  if (t !== 'enabled' && t !== 'disabled') throw bad(`--${flag} "${String(v)}" is invalid: expected enabled or disabled`, flag);
  return t === 'enabled';
}

/**
 * Reads FILE, or stdin for `-` / no argument. No argument at a terminal is a
 * usage error: the command would otherwise wait silently for input the user
 * never meant to type (`-` still reads the terminal, for whoever asks).
 */
export async function readInput(file: string | undefined, command = 'meshpipe inject'): Promise<{ text: string; name: string }> {
  if (file === undefined && process.stdin.isTTY === true) {
    throw bad(`${command} needs manifests: a FILE (${command} deploy.yaml), or piped in (kubectl get deploy web -o yaml | ${command} -); stdin is a terminal`, 'FILE');
  }
  if (file === undefined || file === '-') {
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of process.stdin) {
      total += (chunk as Buffer).length;
      if (total > MAX_INPUT_BYTES) {
        process.stdin.destroy();
        throw bad(`stdin: more than the ${MAX_INPUT_BYTES} bytes of manifests ${command} reads; expected Kubernetes manifests (YAML or JSON)`, 'FILE');
      }
      chunks.push(chunk as Buffer);
    }
    return { text: utf8(Buffer.concat(chunks), 'stdin', command), name: 'stdin' };
  }
  let bytes: Buffer;
  try {
    bytes = (await isPipe(file)) ? readPipeOnceBytesSync(file, MAX_INPUT_BYTES) : await readWatchedFile(file, MAX_INPUT_BYTES);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a folder' : err instanceof WatchedFileError && err.found !== undefined ? `it is ${err.found}` : (err as Error).message;
    throw bad(`cannot read ${file}: ${why}; expected a file of Kubernetes manifests (YAML or JSON), or - for stdin`, 'FILE');
  }
  return { text: utf8(bytes, file, command), name: file };
}

/** The most manifests `inject` reads (as much as a policy manifest file may be). */
const MAX_INPUT_BYTES = MAX_MANIFEST_BYTES;

/**
 * `bytes` as UTF-8 text (YAML's and JSON's encoding): bytes that are not
 * UTF-8 are refused, naming where, rather than written back altered.
 */
function utf8(bytes: Buffer, name: string, command: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    // The first line that does not decode (a newline byte is never part of
    // a multi-byte sequence, so lines decode on their own).
    const strict = new TextDecoder('utf-8', { fatal: true });
    let line = 1;
    for (let start = 0; start <= bytes.length; line++) {
      const nl = bytes.indexOf(0x0a, start);
      const end = nl === -1 ? bytes.length : nl;
      try {
        strict.decode(bytes.subarray(start, end));
      } catch {
        break;
      }
      start = end + 1;
    }
    throw bad(`${name}:${line}: not UTF-8; ${command} reads manifests as UTF-8 text (YAML and JSON are) and writes them back unchanged, so it refuses rather than replace it`, 'FILE');
  }
}

/** Writes the result (or its diff) and the report; returns the exit code. */
export function writeResult(command: string, input: { text: string; name: string }, output: string, result: StreamResult, dryRun: boolean): number {
  if (dryRun) {
    if (output !== input.text) process.stdout.write(createTwoFilesPatch(input.name, `${input.name} (${command})`, input.text, output, '', '', { context: 3 }));
  } else {
    process.stdout.write(output);
  }
  for (const line of result.report) process.stderr.write(`${command}: ${line.warn ? 'warning: ' : ''}${formatReport(line)}\n`);
  if (result.report.length === 0) process.stderr.write(`${command}: no pod templates found in ${input.name}; nothing changed\n`);
  return result.invalid ? 2 : 0;
}

/** Runs `meshpipe inject`; resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) {
    process.stdout.write(injectHelp());
    return 0;
  }
  const { values, positionals } = parseOptions(argv, OPTIONS, COMMAND, 1);
  const opts = sidecarOptions(values);
  const input = await readInput(positionals[0]);
  const stream = parseStream(input.text, input.name);
  const result = injectStream(stream, opts);
  return writeResult(COMMAND, input, renderStream(stream, result.ops), result, values['dry-run'] === true);
}
