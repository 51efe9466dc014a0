/**
 * The main thread's side of the policy worker (worker.ts): starts it, passes
 * its tables and deltas on as they come (bytes, untouched), asks it for the
 * /policy view, and restarts it (with backoff) if it dies, so a crash in
 * parsing or compiling costs the proxy nothing but fresh policy for a while:
 * the engine keeps the last good table.
 *
 * The worker has a heap limit of its own (`maxOldGenerationSizeMb`): input
 * that would need more ends that worker (ERR_WORKER_OUT_OF_MEMORY), never the
 * proxy. Its young generation is kept small: while a large list is parsed
 * V8 grows it to its maximum and keeps it committed afterwards, which would
 * make the worker's resident memory reflect its busiest moment rather than
 * what it holds.
 */
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { MeshpipeError, type ErrorCode } from '../errors.js';
import type { PolicySourceOptions } from './source.js';
import type { ServiceEndpointsSpec } from '../engine/index.js';
import type { WorkerMessage, WorkerRequest } from './worker.js';

/** The worker's heap limit. */
export const WORKER_HEAP_MB = 1024;
/** The worker's young generation (V8's default grows to tens of MB). */
export const WORKER_YOUNG_MB = 4;

export interface PolicyWorkerEvents {
  message: [WorkerMessage];
  /** The worker ended unexpectedly; a new one starts after `restartInMs`. */
  crashed: [err: Error, restartInMs: number];
}

export class PolicyWorker extends EventEmitter<PolicyWorkerEvents> {
  #options: PolicySourceOptions;
  #worker: Worker | undefined;
  #closed = false;
  #backoffMs = 500;
  #restart: NodeJS.Timeout | undefined;
  #nextId = 0;
  readonly #views = new Map<number, (view: unknown) => void>();
  /** The generation a restarted worker starts from (set by the owner: above the engine's). */
  nextGeneration: () => number;
  /** The endpoints generation a restarted worker starts from (above the engine's). */
  nextEndpointsGeneration: () => number;

  constructor(options: PolicySourceOptions, nextGeneration: () => number, nextEndpointsGeneration: () => number = () => 1) {
    super();
    this.#options = options;
    this.nextGeneration = nextGeneration;
    this.nextEndpointsGeneration = nextEndpointsGeneration;
  }

  /**
   * The `--endpoints FILE` entries the worker last applied, and the file's
   * signature then: a restarted worker starts from them, not from the
   * start-up read (the file may be bad or gone by then).
   */
  rememberEndpointsFile(services: readonly ServiceEndpointsSpec[], signature: string): void {
    this.#options = { ...this.#options, endpoints: { fromFile: services }, endpointsFileSignature: signature };
  }

  /** Starts the worker; resolves with its first whole table, rejects when its sources cannot start (e.g. a bad kubeconfig). */
  start(): Promise<Extract<WorkerMessage, { type: 'table' }>> {
    return new Promise((resolve, reject) => {
      let first = true;
      const onMessage = (m: WorkerMessage): void => {
        if (!first) return;
        if (m.type === 'table') {
          first = false;
          resolve(m);
        } else if (m.type === 'startFailed') {
          first = false;
          reject(new MeshpipeError((m.code as ErrorCode | undefined) ?? 'ERR_STARTUP', m.message));
        }
      };
      this.on('message', onMessage);
      this.#spawn(this.#options.firstGeneration ?? 1, this.#options.firstEndpointsGeneration ?? 1, (err) => {
        if (first) {
          first = false;
          reject(new MeshpipeError('ERR_STARTUP', `the policy worker failed: ${err.message}`, { cause: err }));
        }
      });
    });
  }

  #spawn(firstGeneration: number, firstEndpointsGeneration: number, onFailure?: (err: Error) => void): void {
    const worker = new Worker(new URL('./worker.js', import.meta.url), {
      workerData: { options: { ...this.#options, firstGeneration, firstEndpointsGeneration } },
      resourceLimits: { maxOldGenerationSizeMb: WORKER_HEAP_MB, maxYoungGenerationSizeMb: WORKER_YOUNG_MB },
    });
    this.#worker = worker;
    worker.unref();
    worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'view') {
        this.#views.get(m.id)?.(m.view);
        this.#views.delete(m.id);
        return;
      }
      if (m.type === 'table') this.#backoffMs = 500;
      this.emit('message', m);
    });
    let failed: Error | undefined;
    worker.on('error', (err) => {
      failed = err;
    });
    worker.on('exit', (code) => {
      if (this.#worker === worker) this.#worker = undefined;
      for (const done of this.#views.values()) done({ error: 'the policy worker is restarting' });
      this.#views.clear();
      if (this.#closed) return;
      const err = failed ?? new Error(`the policy worker exited with code ${code}`);
      if (onFailure) {
        onFailure(err);
        return;
      }
      const delay = this.#backoffMs;
      this.#backoffMs = Math.min(this.#backoffMs * 2, 30_000);
      this.emit('crashed', err, delay);
      this.#restart = setTimeout(() => {
        this.#restart = undefined;
        if (!this.#closed) this.#spawn(this.nextGeneration(), this.nextEndpointsGeneration());
      }, delay);
      this.#restart.unref();
    });
    // After the first table, a failure is a crash to restart from, not a start-up failure.
    if (onFailure) {
      const clear = (m: WorkerMessage): void => {
        if (m.type === 'table' || m.type === 'startFailed') {
          onFailure = undefined;
          this.off('message', clear);
        }
      };
      this.on('message', clear);
    }
  }

  #post(m: WorkerRequest): void {
    this.#worker?.postMessage(m);
  }

  /** Asks for the whole table again (the engine refused a delta). */
  resync(): void {
    this.#post({ type: 'resync' });
  }

  /** Asks for the whole endpoints table again (the engine refused a change). */
  resyncEndpoints(): void {
    this.#post({ type: 'resyncEndpoints' });
  }

  /** The policy part of /policy, from the worker. */
  view(limit?: number): Promise<unknown> {
    if (!this.#worker) return Promise.resolve({ error: 'the policy worker is restarting' });
    const id = ++this.#nextId;
    return new Promise((resolve) => {
      this.#views.set(id, resolve);
      this.#post({ type: 'view', id, limit });
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#restart) clearTimeout(this.#restart);
    const worker = this.#worker;
    if (!worker) return;
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    // The worker is unref'd (a running proxy's listeners keep the process alive), and so is the
    // timer below: a close with nothing else on the event loop (a start that failed with --admin
    // off, e.g. --kube without credentials) let node exit 0 here, the error never printed.
    worker.ref();
    this.#post({ type: 'close' });
    const timer = setTimeout(() => void worker.terminate(), 2000);
    timer.unref();
    await exited;
    clearTimeout(timer);
  }
}
