/**
 * A small, real HTTP server (node:http on 127.0.0.1, port 0) that speaks the
 * Kubernetes list/watch protocol for the collections the policy layer
 * watches, so ts/policy/k8s/watch.ts can be tested through the real
 * @kubernetes/client-node against something that behaves like an API server:
 *
 * - GET <collection> lists the items with the collection's resourceVersion,
 *   in pages when asked (`limit`, `continue`);
 * - GET <collection>?watch=true&resourceVersion=N streams, chunked, one JSON
 *   line per event (ADDED / MODIFIED / DELETED) newer than N, then live events;
 * - namespaced collections (`/apis/apps/v1/namespaces/NS/deployments`) show
 *   only that namespace's objects;
 * - `fieldSelector=status.phase!=Succeeded,...` (and `=`) filters, on lists
 *   and watches: an object that stops matching is a DELETED event for that
 *   watch, one that starts matching an ADDED one, as the API server does;
 * - `Accept: ...;as=PartialObjectMetadataList` (or `PartialObjectMetadata`
 *   for a watch) answers metadata only;
 * - a resourceVersion older than the compaction point answers 410 Gone (the
 *   client must relist);
 * - `dropWatches()` cuts every open watch connection; `setDown(true)` answers
 *   503 to everything (an unreachable or restarting API server);
 * - `forbid(path)` answers 403 to lists and watches of one collection, with
 *   the Status an API server sends when RBAC does not allow it (`allow(path)`
 *   lifts it), as for a service account without the grant;
 * - `listenUnix(path)` serves the same API on a Unix socket too (a test can
 *   bridge it into a network namespace, where 127.0.0.1 is another host's).
 *
 * Every request is logged so tests can assert relists and re-watches, and
 * `load()` adds many objects at once with no history (a cluster that existed
 * before anyone watched: the benchmark's 50,000 pods).
 */
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

type Obj = { metadata: { name: string; namespace?: string; resourceVersion?: string; [k: string]: unknown }; [k: string]: unknown };

interface Event {
  readonly rv: number;
  readonly path: string;
  readonly type: 'ADDED' | 'MODIFIED' | 'DELETED';
  readonly object: Obj;
  /** The object before this event (for field selectors). */
  readonly previous: Obj | undefined;
}

type Filter = (o: Obj) => boolean;

interface Query {
  readonly path: string;
  readonly namespace: string | undefined;
  readonly filter: Filter;
  readonly metadataOnly: boolean;
}

/** Reads `status.phase!=X` / `status.phase=X` terms (the only field the policy layer selects on). */
function fieldFilter(selector: string | null): Filter {
  if (!selector) return () => true;
  const terms = selector.split(',').map((t) => {
    const m = /^status\.phase(!=|==?)(.*)$/.exec(t.trim());
    if (!m) throw new Error(`unsupported field selector ${t}`);
    return { not: m[1] === '!=', value: m[2] };
  });
  return (o) => {
    const phase = (o['status'] as { phase?: string } | undefined)?.phase ?? '';
    return terms.every((t) => (t.not ? phase !== t.value : phase === t.value));
  };
}

function metadataOnly(o: Obj): Obj {
  return { apiVersion: 'meta.k8s.io/v1', kind: 'PartialObjectMetadata', metadata: o.metadata };
}

/** The collection paths the informers use, and the kind/apiVersion of their items. */
export const COLLECTIONS: Readonly<Record<string, { kind: string; apiVersion: string }>> = {
  '/api/v1/namespaces': { kind: 'Namespace', apiVersion: 'v1' },
  '/api/v1/services': { kind: 'Service', apiVersion: 'v1' },
  '/api/v1/pods': { kind: 'Pod', apiVersion: 'v1' },
  '/apis/apps/v1/deployments': { kind: 'Deployment', apiVersion: 'apps/v1' },
  '/apis/apps/v1/statefulsets': { kind: 'StatefulSet', apiVersion: 'apps/v1' },
  '/apis/apps/v1/daemonsets': { kind: 'DaemonSet', apiVersion: 'apps/v1' },
  '/apis/apps/v1/replicasets': { kind: 'ReplicaSet', apiVersion: 'apps/v1' },
  '/apis/batch/v1/jobs': { kind: 'Job', apiVersion: 'batch/v1' },
  '/apis/batch/v1/cronjobs': { kind: 'CronJob', apiVersion: 'batch/v1' },
  '/apis/policy.linkerd.io/v1beta3/servers': { kind: 'Server', apiVersion: 'policy.linkerd.io/v1beta3' },
  '/apis/discovery.k8s.io/v1/endpointslices': { kind: 'EndpointSlice', apiVersion: 'discovery.k8s.io/v1' },
  '/apis/policy.linkerd.io/v1alpha1/authorizationpolicies': { kind: 'AuthorizationPolicy', apiVersion: 'policy.linkerd.io/v1alpha1' },
  '/apis/policy.linkerd.io/v1alpha1/meshtlsauthentications': { kind: 'MeshTLSAuthentication', apiVersion: 'policy.linkerd.io/v1alpha1' },
  '/apis/policy.linkerd.io/v1alpha1/networkauthentications': { kind: 'NetworkAuthentication', apiVersion: 'policy.linkerd.io/v1alpha1' },
};

export class FakeKubeApi {
  readonly requests: string[] = [];
  private readonly server = http.createServer((req, res) => this.handle(req, res));
  private readonly objects = new Map<string, Map<string, Obj>>();
  private readonly history: Event[] = [];
  private readonly watches = new Set<{ query: Query; res: http.ServerResponse }>();
  private rv = 100;
  private compactedAt = 0;
  private down = false;
  private readonly forbidden = new Set<string>();
  private readonly extra: http.Server[] = [];
  /** Who the 403s name (the API server names the requesting user). */
  user = 'system:serviceaccount:shop:default';
  port = 0;

  async start(): Promise<void> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as AddressInfo).port;
  }

  /** Serves the same API on a Unix socket as well. */
  async listenUnix(path: string): Promise<void> {
    const server = http.createServer((req, res) => this.handle(req, res));
    this.extra.push(server);
    server.listen(path);
    await once(server, 'listening');
  }

  async close(): Promise<void> {
    this.dropWatches();
    for (const server of [this.server, ...this.extra]) {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    }
  }

  /** Lists and watches of `path` (a collection, any namespace) answer 403 Forbidden until allow(path). */
  forbid(path: string): void {
    if (!COLLECTIONS[path]) throw new Error(`unknown collection ${path}`);
    this.forbidden.add(path);
  }

  allow(path: string): void {
    this.forbidden.delete(path);
  }

  /** A kubeconfig (YAML) pointing at this server. */
  kubeconfig(): string {
    return [
      'apiVersion: v1', 'kind: Config',
      `clusters: [{ name: fake, cluster: { server: "http://127.0.0.1:${this.port}", insecure-skip-tls-verify: true } }]`,
      'users: [{ name: tester, user: { token: test-token } }]',
      'contexts: [{ name: fake, context: { cluster: fake, user: tester } }]',
      'current-context: fake', '',
    ].join('\n');
  }

  /** Adds or replaces an object; emits ADDED or MODIFIED. */
  apply(path: string, object: Obj): void {
    const { stored, previous } = this.store(path, object);
    this.publish({ rv: this.rv, path, type: previous ? 'MODIFIED' : 'ADDED', object: stored, previous });
  }

  /** Adds many objects with no events or history, as if they existed before any watch. */
  load(path: string, objects: readonly Obj[]): void {
    for (const o of objects) this.store(path, o);
    this.compact();
  }

  private store(path: string, object: Obj): { stored: Obj; previous: Obj | undefined } {
    const meta = COLLECTIONS[path];
    if (!meta) throw new Error(`unknown collection ${path}`);
    const items = this.objects.get(path) ?? new Map<string, Obj>();
    this.objects.set(path, items);
    const key = `${object.metadata.namespace ?? ''}/${object.metadata.name}`;
    const previous = items.get(key);
    const stored: Obj = { apiVersion: meta.apiVersion, kind: meta.kind, ...object,
      metadata: { ...object.metadata, resourceVersion: String(++this.rv) } };
    items.set(key, stored);
    return { stored, previous };
  }

  /** Objects in a collection. */
  count(path: string): number {
    return this.objects.get(path)?.size ?? 0;
  }

  /** Deletes an object; emits DELETED. */
  remove(path: string, namespace: string | undefined, name: string): void {
    const items = this.objects.get(path);
    const key = `${namespace ?? ''}/${name}`;
    const old = items?.get(key);
    if (!items || !old) throw new Error(`no ${key} in ${path}`);
    items.delete(key);
    const object = { ...old, metadata: { ...old.metadata, resourceVersion: String(++this.rv) } };
    this.publish({ rv: this.rv, path, type: 'DELETED', object, previous: old });
  }

  /** Forgets history: watches from an older resourceVersion get 410 Gone. */
  compact(): void {
    this.compactedAt = this.rv;
    this.history.length = 0;
  }

  /** Cuts every open watch connection (as a restarting API server or a network blip would). */
  dropWatches(): void {
    for (const w of this.watches) w.res.socket?.destroy();
    this.watches.clear();
  }

  setDown(down: boolean): void {
    this.down = down;
  }

  openWatches(): number {
    return this.watches.size;
  }

  private publish(e: Event): void {
    this.history.push(e);
    for (const w of this.watches) this.send(w.query, w.res, e);
  }

  /** Writes an event as one watch sees it (namespace, field selector, metadata only). */
  private send(q: Query, res: http.ServerResponse, e: Event): void {
    if (e.path !== q.path) return;
    if (q.namespace !== undefined && e.object.metadata.namespace !== q.namespace) return;
    const before = e.previous !== undefined && q.filter(e.previous);
    const now = e.type !== 'DELETED' && q.filter(e.object);
    const type = before && now ? 'MODIFIED' : before ? 'DELETED' : now ? 'ADDED' : undefined;
    if (type === undefined) return;
    res.write(`${JSON.stringify({ type, object: q.metadataOnly ? metadataOnly(e.object) : e.object })}\n`);
  }

  /** `/apis/apps/v1/namespaces/NS/deployments` -> the collection and the namespace. */
  private route(pathname: string): { path: string; namespace: string | undefined } | undefined {
    if (COLLECTIONS[pathname]) return { path: pathname, namespace: undefined };
    const m = /^(.*)\/namespaces\/([^/]+)\/([^/]+)$/.exec(pathname);
    if (m && COLLECTIONS[`${m[1]}/${m[3]}`]) return { path: `${m[1]}/${m[3]}`, namespace: decodeURIComponent(m[2] as string) };
    return undefined;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x');
    this.requests.push(`${req.method} ${url.pathname}${url.search}`);
    const json = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (this.down) {
      json(503, { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 503, message: 'apiserver is restarting' });
      return;
    }
    const route = this.route(url.pathname);
    const meta = route ? COLLECTIONS[route.path] : undefined;
    if (!route || !meta || req.method !== 'GET') {
      json(404, { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 404, reason: 'NotFound' });
      return;
    }
    if (this.forbidden.has(route.path)) {
      // The API server's words (k8s.io/apiserver's forbidden message), for the verb asked.
      const m = /^\/apis?\/(?:([^/]+)\/)?v[^/]+\/([^/]+)$/.exec(route.path);
      const [group, resource] = [route.path.startsWith('/apis/') ? m?.[1] ?? '' : '', m?.[2] ?? ''];
      const verb = url.searchParams.get('watch') === null ? 'list' : 'watch';
      const scope = route.namespace === undefined ? 'at the cluster scope' : `in the namespace "${route.namespace}"`;
      json(403, {
        kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 403, reason: 'Forbidden',
        message: `${group === '' ? resource : `${resource}.${group}`} is forbidden: User "${this.user}" cannot ${verb} resource "${resource}" in API group "${group}" ${scope}`,
        details: { group, kind: resource },
      });
      return;
    }
    let filter: Filter;
    try {
      filter = fieldFilter(url.searchParams.get('fieldSelector'));
    } catch (err) {
      json(400, { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 400, message: (err as Error).message });
      return;
    }
    const accept = String(req.headers['accept'] ?? '');
    const query: Query = { path: route.path, namespace: route.namespace, filter, metadataOnly: accept.includes('as=PartialObjectMetadata') };
    const watch = url.searchParams.get('watch');
    if (watch !== 'true' && watch !== '1') {
      let items = [...(this.objects.get(route.path)?.values() ?? [])]
        .filter((o) => (route.namespace === undefined || o.metadata.namespace === route.namespace) && filter(o));
      const limit = Number(url.searchParams.get('limit') ?? '0');
      const offset = Number(url.searchParams.get('continue') ?? '0');
      const more = limit > 0 && offset + limit < items.length;
      if (limit > 0) items = items.slice(offset, offset + limit);
      json(200, {
        kind: query.metadataOnly ? 'PartialObjectMetadataList' : `${meta.kind}List`,
        apiVersion: query.metadataOnly ? 'meta.k8s.io/v1' : meta.apiVersion,
        metadata: { resourceVersion: String(this.rv), ...(more ? { continue: String(offset + limit) } : {}) },
        items: query.metadataOnly ? items.map(metadataOnly) : items,
      });
      return;
    }
    const since = Number(url.searchParams.get('resourceVersion') ?? '0');
    if (since < this.compactedAt) {
      json(410, { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 410, reason: 'Expired', message: `too old resource version: ${since}` });
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    res.flushHeaders();
    for (const e of this.history) if (e.rv > since) this.send(query, res, e);
    const entry = { query, res };
    this.watches.add(entry);
    res.on('close', () => this.watches.delete(entry));
  }
}
