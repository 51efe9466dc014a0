/**
 * The main thread's side of the endpoints table (HTTP balancing): hands the
 * policy worker's whole tables and changes (UTF-8 JSON of EndpointsUpdate,
 * untouched) to the engine, in step with its generation.
 *
 * The rules are the port policy's (sidecar.ts): a change applies only onto
 * the generation the engine has from us, so one that does not fit, or that
 * the engine refuses, is answered with a request for the whole table; a
 * refused whole table is asked for again with backoff (1 s doubling to
 * 10 s). Every refusal is logged at error level and counted by the engine
 * (`meshpipe_endpoints_updates_total{result="rejected"}`); the table in force
 * stays. Requests in flight keep their endpoint whatever happens here.
 */
import type { Logger } from '../observe/index.js';

/** What the feed needs from the engine. */
export interface EndpointsEngine {
  /** An EndpointsUpdate (UTF-8 JSON). Returns the engine's endpoints generation. */
  updateEndpoints(bytes: Uint8Array): number;
}

export const ENDPOINTS_MESSAGES = {
  updated: 'endpoints updated',
  rejected: 'endpoints rejected by the engine; the last good table stays in force',
} as const;

/** One endpoints message from the policy worker. */
export interface EndpointsMessage {
  readonly generation: number;
  /** null: a whole table. */
  readonly base: number | null;
  readonly bytes: Uint8Array;
  readonly services: number;
  readonly upserted: number;
  readonly removed: number;
}

const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 10_000;

export class EndpointsFeed {
  readonly #logger: Logger;
  readonly #resync: () => void;
  /** The endpoints generation the engine has from us (0: none yet). */
  #generation = 0;
  #awaitingWhole = true;
  #resyncRequested = false;
  #retry: NodeJS.Timeout | undefined;
  #retryMs = RETRY_FIRST_MS;

  /** `resync` asks the worker for the whole table. */
  constructor(logger: Logger, resync: () => void) {
    this.#logger = logger;
    this.#resync = resync;
  }

  get generation(): number {
    return this.#generation;
  }

  /** Applies one message from the worker. */
  apply(engine: EndpointsEngine, m: EndpointsMessage): void {
    const fields = { generation: m.generation, services: m.services, upserted: m.upserted, removed: m.removed };
    if (m.base === null) {
      this.#resyncRequested = false;
      try {
        engine.updateEndpoints(m.bytes);
      } catch (err) {
        this.#logger.error({ ...fields, engineGeneration: this.#generation, err }, ENDPOINTS_MESSAGES.rejected);
        this.#retryLater();
        return;
      }
      this.#generation = m.generation;
      this.#awaitingWhole = false;
      this.#retryMs = RETRY_FIRST_MS;
      this.#logger.info(fields, ENDPOINTS_MESSAGES.updated);
      return;
    }
    if (this.#awaitingWhole || m.base !== this.#generation) {
      if (m.generation > this.#generation) this.#askWhole();
      return;
    }
    try {
      engine.updateEndpoints(m.bytes);
    } catch (err) {
      this.#logger.error({ ...fields, engineGeneration: this.#generation, err }, ENDPOINTS_MESSAGES.rejected);
      this.#askWhole();
      return;
    }
    this.#generation = m.generation;
    // One Service of thousands scaling is routine.
    this.#logger.debug(fields, ENDPOINTS_MESSAGES.updated);
  }

  #askWhole(): void {
    this.#awaitingWhole = true;
    if (this.#resyncRequested) return;
    this.#resyncRequested = true;
    this.#resync();
  }

  #retryLater(): void {
    this.#awaitingWhole = true;
    if (this.#retry) return;
    const delay = this.#retryMs;
    this.#retryMs = Math.min(this.#retryMs * 2, RETRY_MAX_MS);
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      if (this.#awaitingWhole) this.#askWhole();
    }, delay);
    this.#retry.unref();
  }

  close(): void {
    if (this.#retry) clearTimeout(this.#retry);
  }
}
