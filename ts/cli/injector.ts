/**
 * `meshpipe injector`: the mutating admission webhook. The API server sends
 * it every pod being created in the namespaces the MutatingWebhookConfiguration
 * selects; pods whose annotations (or whose namespace's) enable injection get
 * the meshpipe sidecar as a JSONPatch, with exactly what `meshpipe inject`
 * would add. deploy/kubernetes/injector.yaml installs it.
 *
 * Runs until SIGTERM/SIGINT: then /ready turns 503, open requests finish,
 * and it exits 0. Logs are JSON lines on stdout, one per injected pod.
 */
import { parseBindAddr, LOG_LEVELS, type LogLevel } from '../config/index.js';
import { MeshpipeError } from '../errors.js';
import { startWebhook } from '../inject/index.js';
// Direct imports, not re-exported by their folders: they load the Kubernetes client.
import { KubeNamespaces, NoNamespaces, type NamespaceSource } from '../inject/namespaces.js';
import { loadKubeConfig } from '../inject/kubeconfig.js';
import { createLogger, effectiveLogFormat } from '../observe/index.js';
import { formatOptionsHelp, parseOptions, wantsHelp, type OptionSpec } from './args.js';
import { SIDECAR_OPTIONS, sidecarOptions } from './inject.js';

const COMMAND = 'meshpipe injector';

const OPTIONS: readonly OptionSpec[] = [
  { flag: 'listen', type: 'string', valueName: 'ADDR', help: 'HTTPS address of the webhook (POST /inject; GET /ready, /live, /metrics)', defaultText: '0.0.0.0:8443' },
  { flag: 'tls-cert', type: 'string', valueName: 'FILE', help: 'certificate (chain) in PEM, reloaded when it changes (a cert-manager Secret\'s tls.crt)', defaultText: '/var/run/meshpipe/tls/tls.crt' },
  { flag: 'tls-key', type: 'string', valueName: 'FILE', help: 'private key in PEM, reloaded with the certificate', defaultText: '/var/run/meshpipe/tls/tls.key' },
  { flag: 'failure-mode', type: 'string', valueName: 'deny|allow', help: 'a pod that cannot be injected as asked (invalid annotations, namespace not known yet): deny refuses it with the reason; allow admits it without the proxy, with a warning', defaultText: 'deny' },
  { flag: 'namespaces', type: 'string', valueName: 'kube|off', help: 'kube: inherit annotations from Namespaces (watched; needs get/list/watch on namespaces); off: pod annotations only', defaultText: 'kube' },
  { flag: 'kubeconfig', type: 'string', valueName: 'FILE', help: 'kubeconfig for --namespaces kube outside a cluster (in a pod: the service account)', defaultText: '(in-cluster)' },
  ...SIDECAR_OPTIONS,
  { flag: 'log-level', type: 'string', valueName: 'LEVEL', help: `${LOG_LEVELS.join('|')}; JSON lines on stdout`, defaultText: 'info' },
  { flag: 'help', short: 'h', type: 'boolean', help: 'show this help and exit', defaultText: '' },
];

export function injectorHelp(): string {
  return [
    `Usage: ${COMMAND} [options]`,
    '',
    'Serves the mutating admission webhook over HTTPS (AdmissionReview v1, JSONPatch answers).',
    'Pods are injected when meshpipe.io/inject or linkerd.io/inject is "enabled" on the pod or',
    'its Namespace (and not "disabled" on the pod), with what meshpipe inject adds, the proxy\'s',
    'mesh identity included (cert-manager\'s CSI driver by default; see --identity), and the',
    'proxy\'s watch of the Kubernetes API (--kube by default; see --kube-watch).',
    'Install, in this order: deploy/kubernetes/identity-issuer.yaml, deploy/kubernetes/proxy-rbac.yaml,',
    'deploy/kubernetes/injector.yaml (README: Kubernetes injection).',
    '',
    'Options:',
    formatOptionsHelp(OPTIONS),
    '',
  ].join('\n');
}

function bad(message: string, key: string): MeshpipeError {
  return new MeshpipeError('ERR_INVALID_ARGUMENT', message, { key });
}

/** Runs the webhook until a stop signal; resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) {
    process.stdout.write(injectorHelp());
    return 0;
  }
  const { values } = parseOptions(argv, OPTIONS, COMMAND);
  const opts = sidecarOptions(values);
  let listen;
  try {
    listen = parseBindAddr(String(values['listen'] ?? '0.0.0.0:8443'));
  } catch (err) {
    throw bad(`--listen: ${(err as Error).message}`, 'listen');
  }
  const failureMode = String(values['failure-mode'] ?? 'deny');
  if (failureMode !== 'deny' && failureMode !== 'allow') throw bad(`--failure-mode "${failureMode}" is invalid: expected deny or allow`, 'failure-mode');
  const nsMode = String(values['namespaces'] ?? 'kube');
  if (nsMode !== 'kube' && nsMode !== 'off') throw bad(`--namespaces "${nsMode}" is invalid: expected kube or off`, 'namespaces');
  const level = String(values['log-level'] ?? 'info');
  if (!(LOG_LEVELS as readonly string[]).includes(level)) throw bad(`--log-level "${level}" is invalid: expected one of ${LOG_LEVELS.join(', ')}`, 'log-level');
  const logger = createLogger(level as LogLevel, { format: effectiveLogFormat('auto') });

  const kubeconfig = typeof values['kubeconfig'] === 'string' ? values['kubeconfig'] : undefined;
  const namespaces: NamespaceSource = nsMode === 'off'
    ? new NoNamespaces()
    : new KubeNamespaces(loadKubeConfig(kubeconfig), {
      onError: (message, retryMs) => logger.warn({ err: message, retryMs }, 'namespace watch failed; retrying'),
      onSynced: (count) => logger.info({ namespaces: count }, 'namespace annotations synced'),
    });

  const stop = new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  const webhook = await startWebhook({
    host: listen.host,
    port: listen.port,
    certFile: String(values['tls-cert'] ?? '/var/run/meshpipe/tls/tls.crt'),
    keyFile: String(values['tls-key'] ?? '/var/run/meshpipe/tls/tls.key'),
    namespaces,
    review: { opts, failureMode },
    logger,
  });
  void namespaces.start();
  const identity = opts.identity.enabled ? `${opts.identity.issuer.kind} ${opts.identity.issuer.name} (${opts.identity.issuer.group}) via csi.cert-manager.io` : 'disabled';
  logger.info({ address: webhook.address, failureMode, namespaces: nsMode, image: opts.image, initImage: opts.initImage, sidecar: opts.sidecar, identity, trustDomain: opts.identity.trustDomain, kubeWatch: opts.kubeWatch ? 'enabled' : 'disabled' }, 'injector listening');
  const signal = await stop;
  logger.info({ signal }, 'injector stopping');
  await webhook.close();
  return 0;
}
