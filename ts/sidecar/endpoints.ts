/**
 * Feeds the engine's endpoints table (per-request HTTP balancing): the
 * Services and endpoints the policy sources found (EndpointSlices from
 * manifests or the Kubernetes watch) and the static `--endpoints FILE`,
 * which wins for a Service both name. Only changes are sent (an
 * `EndpointsUpdate` with the Services that were added, changed or removed);
 * the engine swaps its table atomically and requests in flight keep their
 * endpoint.
 *
 * The file is read once at start; a line that does not parse stops the
 * start with an error naming the file and line (exit 2), as every other
 * configuration error does.
 */
import { readFileSync } from 'node:fs';
import type { Proxy, ServiceEndpointsSpec } from '../engine/index.js';
import { MeshpipeError } from '../errors.js';
import type { Logger } from '../observe/index.js';
import { endpointsDelta, parseEndpointsFile, type SentEndpoints } from '../policy/index.js';

/** Reads `--endpoints FILE`. @throws MeshpipeError ERR_INVALID_CONFIG */
export function readEndpointsFile(file: string): ServiceEndpointsSpec[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new MeshpipeError('ERR_INVALID_CONFIG', `--endpoints ${file}: cannot read: ${(err as Error).message}`, { key: 'endpoints', cause: err });
  }
  const { services, problems } = parseEndpointsFile(text, file);
  if (problems.length > 0) {
    throw new MeshpipeError('ERR_INVALID_CONFIG', `--endpoints: ${problems.map((p) => p.message).join('; ')}`, { key: 'endpoints' });
  }
  return services;
}

/** Sends the engine what changed since the last update. */
export class EndpointsFeed {
  readonly #sent: SentEndpoints = new Map();
  #generation = 0;
  #discovered: readonly ServiceEndpointsSpec[] = [];

  constructor(
    private readonly proxy: Pick<Proxy, 'updateEndpoints'>,
    private readonly fromFile: readonly ServiceEndpointsSpec[],
    private readonly logger: Logger,
  ) {}

  /** Applies the discovered Services (plus the file's); logs what changed. */
  update(discovered: readonly ServiceEndpointsSpec[] = this.#discovered): void {
    this.#discovered = discovered;
    const update = endpointsDelta(this.#sent, [...discovered, ...this.fromFile], this.#generation + 1);
    if (update === undefined) return;
    try {
      this.#generation = this.proxy.updateEndpoints(update);
      this.logger.info({ generation: this.#generation, upserted: update.upsert.length, removed: update.remove.length }, 'endpoints updated');
    } catch (err) {
      // The engine keeps the table in force; resend everything next time.
      this.#sent.clear();
      this.logger.error({ err }, 'endpoints rejected by the engine; the last good table stays in force');
    }
  }
}
