/**
 * Namespace annotations for the webhook: a pod inherits `meshpipe.io/inject`
 * (or `linkerd.io/inject`) and the `config.linkerd.io/*` keys from its
 * Namespace, and an AdmissionReview carries only the pod.
 *
 * `KubeNamespaces` keeps every Namespace in memory with an informer (list,
 * then watch; `get/list/watch` on namespaces in RBAC), so a review is answered
 * from memory, never waiting on the API server. Until the first list has
 * arrived the annotations are unknown (the review then follows the failure
 * mode); after that the last known state is used while the watch reconnects
 * with exponential backoff. `NoNamespaces` is for clusters where the
 * injector may not read Namespaces: only pod annotations count.
 */
import { CoreV1Api, makeInformer, type Informer, type KubeConfig, type KubernetesObject, type ListPromise, type ObjectCache, type V1Namespace } from '@kubernetes/client-node';
import type { Annotations } from './annotations.js';

export interface NamespaceSource {
  annotations(name: string): { readonly annotations: Annotations } | { readonly error: string };
  /** True once annotations can be answered. */
  ready(): boolean;
  start(): Promise<void>;
  close(): void;
}

export class NoNamespaces implements NamespaceSource {
  annotations(): { readonly annotations: Annotations } {
    return { annotations: {} };
  }
  ready(): boolean {
    return true;
  }
  start(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {}
}

export interface KubeNamespacesEvents {
  /** The watch failed; it is restarted after `retryMs`. */
  onError(message: string, retryMs: number): void;
  /** The first list arrived (or the watch recovered after an error). */
  onSynced(count: number): void;
}

export class KubeNamespaces implements NamespaceSource {
  private informer: (Informer<KubernetesObject> & ObjectCache<KubernetesObject>) | undefined;
  private synced = false;
  private lastError = 'the first list of Namespaces has not arrived yet';
  private backoffMs: number;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly kc: KubeConfig,
    private readonly events: KubeNamespacesEvents,
    private readonly backoffInitialMs = 500,
    private readonly backoffMaxMs = 30_000,
  ) {
    this.backoffMs = backoffInitialMs;
  }

  annotations(name: string): { readonly annotations: Annotations } | { readonly error: string } {
    if (!this.synced || this.informer === undefined) return { error: this.lastError };
    const ns: V1Namespace | undefined = this.informer.get(name);
    // The API server admits pods only into namespaces that exist, so a miss is
    // the watch lagging behind a namespace created a moment ago: unknown, not
    // "no annotations" (which could silently skip an enabled namespace).
    if (ns === undefined) return { error: `Namespace ${name} is not in the watch cache yet` };
    return { annotations: { ...(ns.metadata?.annotations ?? {}) } };
  }

  ready(): boolean {
    return this.synced;
  }

  /** Starts the informer; resolves after the first attempt (listed or failed; failures retry in the background). */
  async start(): Promise<void> {
    if (this.informer === undefined) {
      const core = this.kc.makeApiClient(CoreV1Api);
      const list = (() => core.listNamespace()) as unknown as ListPromise<KubernetesObject>;
      const informer = makeInformer(this.kc, '/api/v1/namespaces', list);
      this.informer = informer;
      const healthy = (): void => this.healthy();
      informer.on('add', healthy);
      informer.on('update', healthy);
      informer.on('delete', healthy);
      informer.on('error', (err: unknown) => this.failed(err));
    }
    // start() can resolve after a failed list (the error arrives as an event), so watch for one.
    let failed = false;
    const onError = (): void => {
      failed = true;
    };
    this.informer.on('error', onError);
    try {
      await this.informer.start();
    } catch (err) {
      failed = true;
      this.failed(err);
    } finally {
      this.informer.off('error', onError);
    }
    if (!failed) this.healthy();
  }

  private healthy(): void {
    if (this.closed) return;
    const was = this.synced;
    this.synced = true;
    this.backoffMs = this.backoffInitialMs;
    if (!was) this.events.onSynced(this.informer?.list().length ?? 0);
  }

  private failed(err: unknown): void {
    if (this.closed) return;
    this.lastError = err instanceof Error ? err.message : String(err);
    const retry = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, this.backoffMaxMs);
    this.events.onError(this.lastError, retry);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.start(), retry);
    this.timer.unref();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    void this.informer?.stop();
  }
}
