/**
 * The policy worker: runs in a worker thread (node:worker_threads), so that
 * reading files, parsing YAML, watching the Kubernetes API and compiling
 * never hold up the proxy's event loop (its admin server answers /live while
 * a 5 MB manifest is reloaded or 50,000 pods are listed).
 *
 * It hosts a PolicySource and posts to the main thread (worker-client.ts):
 *   { type: 'table', generation, bytes }    a whole table, UTF-8 JSON of a PolicySpec
 *   { type: 'delta', generation, base, bytes, changed, frame }
 *                                           a change, UTF-8 JSON of a PolicyDelta
 *   { type: 'endpoints', generation, base, bytes, services, upserted, removed }
 *                                           the endpoints table (HTTP balancing): whole
 *                                           (base null) or a change onto `base`,
 *                                           UTF-8 JSON of an EndpointsUpdate
 *   { type: 'problems', generation, problems, total, sources }
 *                                           the first problems, their count, and
 *                                           the sources' own (the Kubernetes API failing)
 *   { type: 'endpointsFile', services, signature }
 *                                           `--endpoints FILE` changed and its
 *                                           entries apply: the owner keeps them
 *                                           for a restarted worker
 *   { type: 'reloadFailed', message }
 *   { type: 'view', id, view }              the answer to a view request
 *   { type: 'startFailed', code, message }
 * The bytes are a transferred ArrayBuffer: the main thread hands them to the
 * addon as they are, without copying or parsing them in JavaScript. The
 * whole endpoints table is posted before the first policy table, so both are
 * in the engine before the listeners bind. The main thread sends
 * { type: 'resync' } (send the whole table again: the engine refused a
 * delta), { type: 'resyncEndpoints' } (the same for the endpoints table),
 * { type: 'view', id } and { type: 'close' }.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { createPolicySource, type PolicySource, type PolicySourceOptions, type PolicyUpdate } from './source.js';
import { policyView, VIEW_LIMIT } from './view.js';
import type { EndpointsUpdate, ServiceEndpointsSpec } from '../engine/index.js';

/** Messages from the worker. */
export type WorkerMessage =
  | { readonly type: 'table'; readonly generation: number; readonly bytes: Uint8Array; readonly stats: ReturnType<PolicySource['stats']> }
  | { readonly type: 'delta'; readonly generation: number; readonly base: number; readonly bytes: Uint8Array; readonly changed: readonly string[]; readonly frame: boolean }
  | {
    readonly type: 'endpoints'; readonly generation: number; readonly base: number | null; readonly bytes: Uint8Array;
    readonly services: number; readonly upserted: number; readonly removed: number;
  }
  | { readonly type: 'problems'; readonly generation: number; readonly problems: readonly string[]; readonly total: number; readonly sources: readonly string[] }
  | { readonly type: 'endpointsFile'; readonly services: readonly ServiceEndpointsSpec[]; readonly signature: string }
  | { readonly type: 'reloadFailed'; readonly message: string }
  | { readonly type: 'view'; readonly id: number; readonly view: unknown }
  | { readonly type: 'startFailed'; readonly code: string | undefined; readonly message: string };

/** Messages to the worker. */
export type WorkerRequest =
  | { readonly type: 'resync' }
  | { readonly type: 'resyncEndpoints' }
  | { readonly type: 'view'; readonly id: number; readonly limit?: number }
  | { readonly type: 'close' };

/** Problems sent with each change of them (the view has them all). */
const PROBLEMS_SENT = 50;

const encoder = new TextEncoder();

function run(port: NonNullable<typeof parentPort>, options: PolicySourceOptions): void {
  const source = createPolicySource(options);
  const post = (m: WorkerMessage, transfer: ArrayBuffer[] = []): void => port.postMessage(m, transfer);
  const table = (): void => {
    const bytes = encoder.encode(JSON.stringify(source.table()));
    post({ type: 'table', generation: source.current()?.generation ?? 0, bytes, stats: source.stats() }, [bytes.buffer]);
  };
  const endpoints = (u: EndpointsUpdate | undefined, services: number): void => {
    if (u === undefined) return;
    const bytes = encoder.encode(JSON.stringify(u));
    post({ type: 'endpoints', generation: u.generation, base: u.replace ? null : u.base, bytes, services, upserted: u.upsert.length, removed: u.remove.length },
      [bytes.buffer]);
  };
  const endpointsTable = (): void => {
    const whole = source.endpointsTable();
    endpoints(whole, whole?.upsert.length ?? 0);
  };
  let problemsSent: readonly unknown[] | undefined;
  const problems = (u: PolicyUpdate): void => {
    if (u.problems === problemsSent) return;
    problemsSent = u.problems;
    post({
      type: 'problems', generation: u.generation, problems: u.problems.slice(0, PROBLEMS_SENT).map((p) => p.message), total: u.problems.length,
      sources: source.sourceProblems().slice(0, PROBLEMS_SENT).map((p) => p.message),
    });
  };
  source.on('policy', (u) => {
    if (u.kind === 'delta' && u.change) {
      const bytes = encoder.encode(JSON.stringify(u.change));
      post({ type: 'delta', generation: u.generation, base: u.change.base, bytes, changed: u.changed, frame: u.change.frame !== null },
        [bytes.buffer]);
    }
    problems(u);
  });
  source.on('endpoints', (u) => endpoints(u, source.endpointsSize()));
  source.on('endpointsFile', (services, signature) => post({ type: 'endpointsFile', services, signature }));
  source.on('reloadFailed', (err) => post({ type: 'reloadFailed', message: err instanceof Error ? err.message : String(err) }));
  port.on('message', (m: WorkerRequest) => {
    try {
      if (m.type === 'resync') table();
      else if (m.type === 'resyncEndpoints') endpointsTable();
      else if (m.type === 'view') {
        const limit = m.limit ?? VIEW_LIMIT;
        post({ type: 'view', id: m.id, view: policyView(source.effective(limit), source.frame(), source.current()?.problems ?? [], source.stats()) });
      } else if (m.type === 'close') {
        void source.close().finally(() => port.close());
      }
    } catch (err) {
      post({ type: 'reloadFailed', message: err instanceof Error ? err.message : String(err) });
    }
  });
  source.start().then(
    (first) => {
      endpointsTable();
      table();
      problems(first);
    },
    (err: unknown) => {
      post({ type: 'startFailed', code: (err as { code?: string }).code, message: err instanceof Error ? err.message : String(err) });
    },
  );
}

if (parentPort) run(parentPort, (workerData as { options: PolicySourceOptions }).options);
