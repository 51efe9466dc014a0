/**
 * Live watch of the Kubernetes objects the policy layer reads (Namespaces,
 * Services, Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
 * CronJobs, `servers.policy.linkerd.io`, and EndpointSlices for HTTP
 * balancing) through @kubernetes/client-node
 * informers (list, then watch from the list's resourceVersion).
 *
 * Config: `--kubeconfig FILE`, else the in-cluster service account when
 * KUBERNETES_SERVICE_HOST is set, else the default kubeconfig. The informer
 * re-watches by itself when the API server ends a watch cleanly and relists
 * on `410 Gone`; on any other error it stops, so this module restarts it with
 * exponential backoff (a dropped connection, an API server restart, a network
 * outage). While the API is unreachable the informers keep their last objects,
 * so the last good policy stays in force; the error is visible in status().
 */

import { EventEmitter } from 'node:events';
import {
  AppsV1Api,
  BatchV1Api,
  CoreV1Api,
  CustomObjectsApi,
  DiscoveryV1Api,
  KubeConfig,
  makeInformer,
  type Informer,
  type KubernetesListObject,
  type KubernetesObject,
  type ObjectCache,
} from '@kubernetes/client-node';
import { MeshpipeError } from '../../errors.js';
import { EMPTY_MANIFESTS, mergeManifests, type ManifestSet } from './manifests.js';
import { normalizeObject, type ObjectProblem, type PolicyObject } from './objects.js';
import { objectProblem } from '../problems.js';

export interface KubeWatchOptions {
  /** Path of a kubeconfig file (`--kubeconfig`). */
  readonly kubeconfig?: string | undefined;
  /** A ready KubeConfig (tests, embedding); wins over `kubeconfig`. */
  readonly kubeConfig?: KubeConfig | undefined;
  /** policy.linkerd.io API version of Servers. Default v1beta3 (Linkerd 2.16+). */
  readonly serverApiVersion?: string | undefined;
  readonly backoffInitialMs?: number | undefined;
  readonly backoffMaxMs?: number | undefined;
  /** Coalesce bursts of events into one `change`. */
  readonly debounceMs?: number | undefined;
  /** start() resolves after this long even if an API call hangs (a black-holed API server). Default 10 s. */
  readonly startTimeoutMs?: number | undefined;
}

export interface KubeWatchStatus {
  /** True once every kind has listed successfully at least once. */
  readonly synced: boolean;
  /** The most recent error of a kind that has not recovered yet. */
  readonly lastError: string | undefined;
  readonly kinds: Readonly<Record<string, { readonly synced: boolean; readonly restarts: number; readonly error: string | undefined }>>;
}

type ListFn = () => Promise<KubernetesListObject<KubernetesObject>>;

interface Kind {
  readonly kind: string;
  readonly path: string;
  readonly list: ListFn;
  informer?: Informer<KubernetesObject> & ObjectCache<KubernetesObject>;
  synced: boolean;
  restarts: number;
  error: string | undefined;
  backoffMs: number;
  timer?: NodeJS.Timeout | undefined;
}

export interface KubeWatchEvents {
  change: [];
  status: [KubeWatchStatus];
}

/** Loads the Kubernetes client configuration as documented above. */
export function loadKubeConfig(kubeconfig: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  try {
    if (kubeconfig !== undefined) kc.loadFromFile(kubeconfig);
    else if (process.env['KUBERNETES_SERVICE_HOST']) kc.loadFromCluster();
    else kc.loadFromDefault();
  } catch (err) {
    throw new MeshpipeError('ERR_INVALID_CONFIG', `--kubeconfig ${kubeconfig ?? '(default)'}: cannot load: ${(err as Error).message}`, { key: 'kubeconfig', cause: err });
  }
  if (!kc.getCurrentCluster()) {
    throw new MeshpipeError('ERR_INVALID_CONFIG',
      '--kube: no Kubernetes cluster is configured: pass --kubeconfig FILE, or run in a pod (KUBERNETES_SERVICE_HOST and a service account)', { key: 'kubeconfig' });
  }
  return kc;
}

function describeError(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown; statusCode?: unknown }).statusCode ?? (err as { code?: unknown }).code;
    return typeof code === 'number' || typeof code === 'string' ? `${err.message} (${code})` : err.message;
  }
  if (typeof err === 'object' && err !== null) return JSON.stringify(err);
  return String(err);
}

/** Informers for every kind the policy layer reads, restarted with backoff. */
export class KubeWatch extends EventEmitter<KubeWatchEvents> {
  private readonly kc: KubeConfig;
  private readonly kinds: Kind[];
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly debounceMs: number;
  private readonly startTimeoutMs: number;
  private debounce: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(options: KubeWatchOptions = {}) {
    super();
    this.kc = options.kubeConfig ?? loadKubeConfig(options.kubeconfig);
    this.backoffInitialMs = options.backoffInitialMs ?? 500;
    this.backoffMaxMs = options.backoffMaxMs ?? 30_000;
    this.debounceMs = options.debounceMs ?? 50;
    this.startTimeoutMs = options.startTimeoutMs ?? 10_000;
    const core = this.kc.makeApiClient(CoreV1Api);
    const apps = this.kc.makeApiClient(AppsV1Api);
    const batch = this.kc.makeApiClient(BatchV1Api);
    const custom = this.kc.makeApiClient(CustomObjectsApi);
    const discovery = this.kc.makeApiClient(DiscoveryV1Api);
    const version = options.serverApiVersion ?? 'v1beta3';
    const k = (kind: string, path: string, list: () => Promise<unknown>): Kind => ({
      kind, path, list: list as ListFn, synced: false, restarts: 0, error: undefined, backoffMs: this.backoffInitialMs,
    });
    this.kinds = [
      k('Namespace', '/api/v1/namespaces', () => core.listNamespace()),
      k('Service', '/api/v1/services', () => core.listServiceForAllNamespaces()),
      k('Pod', '/api/v1/pods', () => core.listPodForAllNamespaces()),
      k('Deployment', '/apis/apps/v1/deployments', () => apps.listDeploymentForAllNamespaces()),
      k('StatefulSet', '/apis/apps/v1/statefulsets', () => apps.listStatefulSetForAllNamespaces()),
      k('DaemonSet', '/apis/apps/v1/daemonsets', () => apps.listDaemonSetForAllNamespaces()),
      k('ReplicaSet', '/apis/apps/v1/replicasets', () => apps.listReplicaSetForAllNamespaces()),
      k('Job', '/apis/batch/v1/jobs', () => batch.listJobForAllNamespaces()),
      k('CronJob', '/apis/batch/v1/cronjobs', () => batch.listCronJobForAllNamespaces()),
      k('Server', `/apis/policy.linkerd.io/${version}/servers`,
        () => custom.listClusterCustomObject({ group: 'policy.linkerd.io', version, plural: 'servers' })),
      k('EndpointSlice', '/apis/discovery.k8s.io/v1/endpointslices', () => discovery.listEndpointSliceForAllNamespaces()),
    ];
  }

  /**
   * Starts every informer. Resolves after each kind's first attempt (listed
   * or failed); failed kinds keep retrying in the background.
   */
  async start(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, this.startTimeoutMs);
      timer.unref();
    });
    // A hung request must not hold up the proxy's start: the informer keeps trying in the background.
    await Promise.race([Promise.all(this.kinds.map((kind) => this.startKind(kind))), deadline]);
    clearTimeout(timer);
  }

  private async startKind(kind: Kind): Promise<void> {
    if (this.closed) return;
    if (!kind.informer) {
      const informer = makeInformer(this.kc, kind.path, kind.list);
      kind.informer = informer;
      const changed = (): void => {
        this.markHealthy(kind);
        this.changed();
      };
      informer.on('add', changed);
      informer.on('update', changed);
      informer.on('delete', changed);
      informer.on('error', (err: unknown) => this.failed(kind, err));
    }
    let failed = false;
    const onError = (): void => {
      failed = true;
    };
    kind.informer.on('error', onError);
    try {
      // Resolves once the list is done and the watch request is answered (or on failure).
      await kind.informer.start();
    } catch (err) {
      failed = true;
      this.failed(kind, err);
    } finally {
      kind.informer.off('error', onError);
    }
    if (!failed && !this.closed) {
      this.markHealthy(kind);
      this.changed(); // an initial empty list is a change too (first sync)
    }
  }

  private markHealthy(kind: Kind): void {
    const wasBad = kind.error !== undefined || !kind.synced;
    kind.synced = true;
    kind.error = undefined;
    kind.backoffMs = this.backoffInitialMs;
    if (wasBad) this.emit('status', this.status());
  }

  private failed(kind: Kind, err: unknown): void {
    if (this.closed) return;
    kind.error = `${kind.kind} watch: ${describeError(err)}`;
    this.emit('status', this.status());
    this.changed(); // the policy source shows the error as a problem
    if (kind.timer) return;
    const delay = kind.backoffMs;
    kind.backoffMs = Math.min(kind.backoffMs * 2, this.backoffMaxMs);
    kind.timer = setTimeout(() => {
      kind.timer = undefined;
      kind.restarts++;
      this.startKind(kind).catch((err: unknown) => this.failed(kind, err));
    }, delay);
    kind.timer.unref();
  }

  private changed(): void {
    if (this.closed) return;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      this.emit('change');
    }, this.debounceMs);
    this.debounce.unref();
  }

  /** Current objects of every kind, normalised. Objects stay while the API is unreachable. */
  snapshot(): ManifestSet {
    const objects: PolicyObject[] = [];
    const problems: ObjectProblem[] = [];
    for (const kind of this.kinds) {
      for (const raw of kind.informer?.list() ?? []) {
        const obj = normalizeObject(raw, problems, 'default', kind.kind);
        if (obj) objects.push(obj);
      }
    }
    if (objects.length === 0 && problems.length === 0) return EMPTY_MANIFESTS;
    return mergeManifests([{
      file: 'kubernetes-api', objects, ignored: 0, parsed: true,
      problems: problems.map((p) => objectProblem(p.object, p.field, p.token, p.reason)),
    }]);
  }

  status(): KubeWatchStatus {
    const kinds: Record<string, { synced: boolean; restarts: number; error: string | undefined }> = {};
    let lastError: string | undefined;
    for (const k of this.kinds) {
      kinds[k.kind] = { synced: k.synced, restarts: k.restarts, error: k.error };
      if (k.error !== undefined) lastError = k.error;
    }
    return { synced: this.kinds.every((k) => k.synced), lastError, kinds };
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.debounce) clearTimeout(this.debounce);
    for (const k of this.kinds) {
      if (k.timer) clearTimeout(k.timer);
      await k.informer?.stop();
    }
  }
}
