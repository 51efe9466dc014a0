/**
 * A small, real HTTP server (node:http on 127.0.0.1, port 0) that speaks the
 * Kubernetes list/watch protocol for the collections the policy layer
 * watches, so ts/policy/k8s/watch.ts can be tested through the real
 * @kubernetes/client-node against something that behaves like an API server:
 *
 * - GET <collection> lists the items with the collection's resourceVersion;
 * - GET <collection>?watch=true&resourceVersion=N streams, chunked, one JSON
 *   line per event (ADDED / MODIFIED / DELETED) newer than N, then live events;
 * - a resourceVersion older than the compaction point answers 410 Gone (the
 *   informer must relist);
 * - `dropWatches()` cuts every open watch connection; `setDown(true)` answers
 *   503 to everything (an unreachable or restarting API server).
 *
 * Every request is logged so tests can assert relists and re-watches.
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
};

export class FakeKubeApi {
  readonly requests: string[] = [];
  private readonly server = http.createServer((req, res) => this.handle(req, res));
  private readonly objects = new Map<string, Map<string, Obj>>();
  private readonly history: Event[] = [];
  private readonly watches = new Set<{ path: string; res: http.ServerResponse }>();
  private rv = 100;
  private compactedAt = 0;
  private down = false;
  port = 0;

  async start(): Promise<void> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    this.dropWatches();
    this.server.closeAllConnections();
    this.server.close();
    await once(this.server, 'close');
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
    const meta = COLLECTIONS[path];
    if (!meta) throw new Error(`unknown collection ${path}`);
    const items = this.objects.get(path) ?? new Map<string, Obj>();
    this.objects.set(path, items);
    const key = `${object.metadata.namespace ?? ''}/${object.metadata.name}`;
    const type = items.has(key) ? 'MODIFIED' : 'ADDED';
    const stored: Obj = { apiVersion: meta.apiVersion, kind: meta.kind, ...object,
      metadata: { ...object.metadata, resourceVersion: String(++this.rv) } };
    items.set(key, stored);
    this.publish({ rv: this.rv, path, type, object: stored });
  }

  /** Deletes an object; emits DELETED. */
  remove(path: string, namespace: string | undefined, name: string): void {
    const items = this.objects.get(path);
    const key = `${namespace ?? ''}/${name}`;
    const old = items?.get(key);
    if (!items || !old) throw new Error(`no ${key} in ${path}`);
    items.delete(key);
    const object = { ...old, metadata: { ...old.metadata, resourceVersion: String(++this.rv) } };
    this.publish({ rv: this.rv, path, type: 'DELETED', object });
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
    for (const w of this.watches) if (w.path === e.path) w.res.write(`${JSON.stringify({ type: e.type, object: e.object })}\n`);
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
    const meta = COLLECTIONS[url.pathname];
    if (!meta || req.method !== 'GET') {
      json(404, { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 404, reason: 'NotFound' });
      return;
    }
    const items = [...(this.objects.get(url.pathname)?.values() ?? [])];
    const watch = url.searchParams.get('watch');
    if (watch !== 'true' && watch !== '1') {
      json(200, { kind: `${meta.kind}List`, apiVersion: meta.apiVersion, metadata: { resourceVersion: String(this.rv) }, items });
      return;
    }
    const since = Number(url.searchParams.get('resourceVersion') ?? '0');
    if (since < this.compactedAt) {
      json(410, { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 410, reason: 'Expired', message: `too old resource version: ${since}` });
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    res.flushHeaders();
    for (const e of this.history) {
      if (e.path === url.pathname && e.rv > since) res.write(`${JSON.stringify({ type: e.type, object: e.object })}\n`);
    }
    const entry = { path: url.pathname, res };
    this.watches.add(entry);
    res.on('close', () => this.watches.delete(entry));
  }
}
