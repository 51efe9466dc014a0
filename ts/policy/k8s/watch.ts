/**
 * Live watch of the Kubernetes objects the policy layer reads, holding only
 * what policy needs.
 *
 * One reflector per kind lists (paginated, `limit`/`continue`) and then
 * watches from the list's resourceVersion (with bookmarks, so a quiet kind's
 * resourceVersion stays fresh). Every object is slimmed on receipt to the
 * fields policy reads (objects.ts: names, labels, `config.linkerd.io/*`,
 * `meshpipe.io/*` and `linkerd.io/inject` annotations, ports, IPs,
 * selectors, the service account; authz-objects.ts: targets,
 * authentication references, identities, networks) and handed on as an `upsert` or
 * `delete` event; the reflector itself keeps only each object's key,
 * resourceVersion and slim form (to drop no-op updates: a pod's status
 * changes far more often than its policy). What is watched:
 *   Namespaces   cluster-wide, metadata only (PartialObjectMetadata);
 *   Services     cluster-wide;
 *   Pods         cluster-wide, without finished ones: fieldSelector
 *                status.phase!=Succeeded,status.phase!=Failed (their IPs are
 *                reused; a pod that finishes leaves the watch as a deletion);
 *   Servers      cluster-wide (policy.linkerd.io);
 *   AuthorizationPolicies, MeshTLSAuthentications, NetworkAuthentications
 *                cluster-wide (policy.linkerd.io/v1alpha1; an
 *                AuthorizationPolicy may refer to authentications of other
 *                namespaces);
 *   EndpointSlices cluster-wide (discovery.k8s.io/v1), only when the HTTP
 *                layer balances over them (`endpointSlices`): slimmed to
 *                the owning Service, the ports and the ready addresses;
 *   Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs
 *                only in this proxy's namespace, and only when its pod name
 *                is known: they serve to find this proxy's own workload.
 *
 * A watch that ends cleanly is resumed from the last resourceVersion; a
 * broken one is retried from it with exponential backoff; `410 Gone` (the
 * resourceVersion was compacted) relists, and the relist is diffed against
 * what is known, so only real changes go on. While the API is unreachable
 * nothing is forgotten, so the last good policy stays in force; the error is
 * visible in status(), per kind.
 *
 * What is watched is one table (watched.ts): the reflectors are built from
 * it, and the RBAC the watch needs (list and watch of each collection,
 * deploy/kubernetes/proxy-rbac.yaml) is tested against it. A 403 names the
 * resource the service account may not read and that manifest; the kind
 * keeps retrying with backoff, so granting it later heals without a restart.
 */

import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { KubeApiError, KubeClient } from './client.js';
import { loadCredentials, type ApiCredentials } from './kubeconfig.js';
import { normalizeObject, type ObjectProblem, type PolicyObject } from './objects.js';
import { objectProblem, type PolicyProblem } from '../problems.js';
import { describeResource, PROXY_RBAC_MANIFEST, WATCH_VERBS, watchedKinds, type KindSpec } from './watched.js';

export interface KubeWatchOptions {
  /** Path of a kubeconfig file (`--kubeconfig`). */
  readonly kubeconfig?: string | undefined;
  /** Ready credentials (tests, embedding); win over `kubeconfig`. */
  readonly credentials?: ApiCredentials | undefined;
  /** policy.linkerd.io API version of Servers. Default v1beta3 (Linkerd 2.16+). */
  readonly serverApiVersion?: string | undefined;
  /** The namespace whose workload controllers are watched (this proxy's); undefined: none are. */
  readonly controllersNamespace?: string | undefined;
  /** Watch EndpointSlices too (the endpoints of Services, for HTTP balancing). */
  readonly endpointSlices?: boolean | undefined;
  readonly backoffInitialMs?: number | undefined;
  readonly backoffMaxMs?: number | undefined;
  /** start() resolves after this long even if an API call hangs (a black-holed API server). Default 10 s. */
  readonly startTimeoutMs?: number | undefined;
  /** Items per list page. Default 500. */
  readonly pageSize?: number | undefined;
  /** How long the server keeps one watch open before it is renewed. Default 300 s. */
  readonly watchTimeoutSeconds?: number | undefined;
}

export interface KubeWatchStatus {
  /** True once every kind has listed successfully at least once. */
  readonly synced: boolean;
  /** The most recent error of a kind that has not recovered yet. */
  readonly lastError: string | undefined;
  readonly kinds: Readonly<Record<string, { readonly synced: boolean; readonly restarts: number; readonly error: string | undefined }>>;
}

/** What a watch reports: one object added or changed, or gone. */
export type KubeEvent =
  | { readonly type: 'upsert'; readonly object: PolicyObject; readonly problems: readonly PolicyProblem[] }
  | { readonly type: 'delete'; readonly kind: string; readonly namespace: string; readonly name: string };

export interface KubeWatchEvents {
  event: [KubeEvent];
  status: [KubeWatchStatus];
}

/**
 * What a failed list or watch says: for a 403, which resource the service
 * account may not read and where the grant is, with the API server's own
 * words after it.
 */
export function describeFailure(spec: KindSpec, err: unknown): string {
  if (err instanceof KubeApiError && err.statusCode === 403) {
    const where = spec.namespace === undefined ? 'cluster-wide' : `in namespace ${spec.namespace}`;
    return `forbidden to ${WATCH_VERBS.join(' and ')} ${describeResource(spec)} ${where}: grant ${PROXY_RBAC_MANIFEST} to the proxy's service account (${describeError(err)})`;
  }
  return describeError(err);
}

const NO_PROBLEMS = '[]';
const METADATA_LIST = 'application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json';
const METADATA = 'application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json';

function describeError(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { statusCode?: unknown; code?: unknown }).statusCode ?? (err as { code?: unknown }).code;
    return typeof code === 'number' || typeof code === 'string' ? `${err.message}${err.message.includes(`(${code})`) ? '' : ` (${code})`}` : err.message;
  }
  return String(err);
}

type Raw = { metadata?: { name?: unknown; namespace?: unknown; resourceVersion?: unknown; continue?: unknown }; items?: unknown; type?: unknown; object?: unknown; code?: unknown };

/** One kind: list, watch, relist. */
class Reflector {
  readonly spec: KindSpec;
  synced = false;
  restarts = 0;
  error: string | undefined;
  #known = new Map<string, { rv: string; object: PolicyObject | undefined; problems: string }>();
  #rv: string | undefined;
  #abort = new AbortController();
  #closed = false;
  readonly #owner: KubeWatch;
  readonly #client: KubeClient;

  constructor(owner: KubeWatch, client: KubeClient, spec: KindSpec) {
    this.#owner = owner;
    this.#client = client;
    this.spec = spec;
  }

  /** Lists and watches until closed. `firstAttempt` resolves after the first list succeeded or failed. */
  async run(firstAttempt: () => void, options: Required<Pick<KubeWatchOptions, 'backoffInitialMs' | 'backoffMaxMs' | 'pageSize' | 'watchTimeoutSeconds'>>): Promise<void> {
    let backoff = options.backoffInitialMs;
    let needList = true;
    while (!this.#closed) {
      try {
        if (needList) {
          await this.#list(options.pageSize);
          needList = false;
          this.#healthy();
          firstAttempt();
        }
        await this.#watch(options.watchTimeoutSeconds, () => {
          this.#healthy();
          backoff = options.backoffInitialMs;
        });
      } catch (err) {
        if (this.#closed) return;
        firstAttempt();
        if (err instanceof KubeApiError && err.statusCode === 410) {
          needList = true; // the resourceVersion is gone: relist at once
          continue;
        }
        this.#failed(err);
        try {
          await sleep(backoff, undefined, { signal: this.#abort.signal });
        } catch {
          return;
        }
        backoff = Math.min(backoff * 2, options.backoffMaxMs);
        this.restarts++;
        if (this.#rv === undefined) needList = true;
      }
    }
  }

  close(): void {
    this.#closed = true;
    this.#abort.abort();
  }

  #healthy(): void {
    const wasBad = this.error !== undefined || !this.synced;
    this.synced = true;
    this.error = undefined;
    if (wasBad) this.#owner.statusChanged();
  }

  #failed(err: unknown): void {
    this.error = `${this.spec.kind} watch: ${describeFailure(this.spec, err)}`;
    this.#owner.statusChanged();
  }

  #key(raw: Raw): string {
    const m = raw.metadata ?? {};
    // Kept per object: flat (a string built from parts is several objects in V8 until flattened).
    return JSON.parse(JSON.stringify(`${typeof m.namespace === 'string' ? m.namespace : ''}/${typeof m.name === 'string' ? m.name : ''}`)) as string;
  }

  /** Slims one object and passes it on, unless nothing policy reads changed. */
  #apply(raw: Raw): void {
    const key = this.#key(raw);
    const rv = typeof raw.metadata?.resourceVersion === 'string' ? raw.metadata.resourceVersion : '';
    const prev = this.#known.get(key);
    if (prev && prev.rv === rv && rv !== '') return;
    const found: ObjectProblem[] = [];
    const object = normalizeObject(raw, found, 'default', this.spec.kind);
    const problems = found.length === 0 ? NO_PROBLEMS : JSON.stringify(found);
    this.#known.set(key, { rv, object, problems });
    if (prev && prev.problems === problems && JSON.stringify(prev.object ?? null) === JSON.stringify(object ?? null)) return;
    if (object) {
      this.#owner.emit('event', { type: 'upsert', object, problems: found.map((p) => objectProblem(p.object, p.field, p.token, p.reason)) });
    } else if (prev?.object) {
      this.#deleted(key, prev.object);
    }
  }

  #deleted(key: string, object: PolicyObject): void {
    this.#known.delete(key);
    this.#owner.emit('event', { type: 'delete', kind: object.kind, namespace: object.kind === 'Namespace' ? '' : object.namespace, name: object.name });
  }

  async #list(pageSize: number): Promise<void> {
    const seen = new Set<string>();
    let token: string | undefined;
    let rv: string | undefined;
    do {
      const page = (await this.#client.getJson(this.spec.path, {
        query: { ...this.spec.query, limit: String(pageSize), continue: token },
        accept: this.spec.metadataOnly ? METADATA_LIST : undefined,
        signal: this.#abort.signal,
        idleTimeoutMs: 60_000,
      })) as Raw;
      for (const item of Array.isArray(page.items) ? (page.items as Raw[]) : []) {
        seen.add(this.#key(item));
        this.#apply(item);
      }
      token = typeof page.metadata?.continue === 'string' && page.metadata.continue !== '' ? page.metadata.continue : undefined;
      rv = typeof page.metadata?.resourceVersion === 'string' ? page.metadata.resourceVersion : rv;
    } while (token !== undefined && !this.#closed);
    // Whatever the list no longer has was deleted while nobody watched.
    for (const [key, entry] of [...this.#known]) {
      if (seen.has(key)) continue;
      if (entry.object) this.#deleted(key, entry.object);
      else this.#known.delete(key);
    }
    this.#rv = rv;
  }

  async #watch(timeoutSeconds: number, onOpen: () => void): Promise<void> {
    await this.#client.watch(this.spec.path, {
      query: { ...this.spec.query, watch: '1', resourceVersion: this.#rv, allowWatchBookmarks: 'true', timeoutSeconds: String(timeoutSeconds) },
      accept: this.spec.metadataOnly ? METADATA : undefined,
      signal: this.#abort.signal,
      // The server ends a watch after timeoutSeconds; silence well past that is a dead connection.
      idleTimeoutMs: (timeoutSeconds + 60) * 1000,
      onOpen,
    }, (e) => {
      const event = e as Raw;
      const object = (event.object ?? {}) as Raw;
      if (event.type === 'ERROR') {
        const code = typeof object.code === 'number' ? object.code : 0;
        throw new KubeApiError(code, `watch error ${JSON.stringify(object).slice(0, 200)}`);
      }
      const rv = object.metadata?.resourceVersion;
      if (typeof rv === 'string') this.#rv = rv;
      if (event.type === 'BOOKMARK') return;
      if (event.type === 'DELETED') {
        const key = this.#key(object);
        const prev = this.#known.get(key);
        if (prev?.object) this.#deleted(key, prev.object);
        else this.#known.delete(key);
        return;
      }
      this.#apply(object);
    });
  }
}

/** The watches of every kind policy reads. */
export class KubeWatch extends EventEmitter<KubeWatchEvents> {
  readonly #options: KubeWatchOptions;
  readonly #reflectors: Reflector[];
  #running: Promise<void>[] = [];

  private constructor(credentials: ApiCredentials, options: KubeWatchOptions) {
    super();
    this.#options = options;
    const client = new KubeClient(credentials);
    this.#reflectors = watchedKinds({ ...options, endpointSlices: options.endpointSlices === true }).map((s) => new Reflector(this, client, s));
  }

  /** Loads the credentials (ERR_INVALID_CONFIG naming the kubeconfig when they cannot be). */
  static async create(options: KubeWatchOptions = {}): Promise<KubeWatch> {
    const credentials = options.credentials ?? (await loadCredentials(options.kubeconfig));
    return new KubeWatch(credentials, options);
  }

  /**
   * Starts every reflector. Resolves after each kind's first list attempt
   * (listed or failed), or after startTimeoutMs; failed kinds keep retrying.
   */
  async start(): Promise<void> {
    const o = this.#options;
    const options = {
      backoffInitialMs: o.backoffInitialMs ?? 500,
      backoffMaxMs: o.backoffMaxMs ?? 30_000,
      pageSize: o.pageSize ?? 500,
      watchTimeoutSeconds: o.watchTimeoutSeconds ?? 300,
    };
    const firsts = this.#reflectors.map((r) => new Promise<void>((resolve) => {
      this.#running.push(r.run(resolve, options).catch((err: unknown) => {
        resolve();
        this.emit('status', { ...this.status(), lastError: `${r.spec.kind} watch stopped: ${describeError(err)}` });
      }));
    }));
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, o.startTimeoutMs ?? 10_000);
      timer.unref();
    });
    await Promise.race([Promise.all(firsts), deadline]);
    clearTimeout(timer);
  }

  /** Called by reflectors when their health changes. */
  statusChanged(): void {
    this.emit('status', this.status());
  }

  status(): KubeWatchStatus {
    const kinds: Record<string, { synced: boolean; restarts: number; error: string | undefined }> = {};
    let lastError: string | undefined;
    for (const r of this.#reflectors) {
      kinds[r.spec.kind] = { synced: r.synced, restarts: r.restarts, error: r.error };
      if (r.error !== undefined) lastError = r.error;
    }
    return { synced: this.#reflectors.every((r) => r.synced), lastError, kinds };
  }

  async close(): Promise<void> {
    for (const r of this.#reflectors) r.close();
    await Promise.allSettled(this.#running);
  }
}
