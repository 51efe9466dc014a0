/**
 * Connects the policy layer to a running sidecar: what the engine starts
 * with, how later tables reach it, and the /policy document.
 *
 * Without any policy source the proxy runs on the flags-only policy (the one
 * compiler with empty inputs, flags.ts), compiled here. The table carries
 * the mesh too (this workload's authorization, the meshed destinations), so
 * a `--destinations FILE` is a policy source like the others. With sources, a
 * worker thread (worker.ts) reads and compiles them; its first whole table is
 * put into the engine *before* the listeners bind, so the very first
 * connection already sees the workload's real port policy. Later changes
 * arrive as deltas (the addresses and tables that changed) and are handed to
 * the addon as bytes, untouched; each is applied atomically (new connections
 * only) or refused as a whole.
 *
 * A refused update is loud: logged at error level, counted by the engine
 * (`meshpipe_policy_updates_total{result="rejected"}`), shown on /policy
 * (`engine.lastRejection`) until an update is accepted again, and answered
 * with a request for the whole table (a delta can be refused because the
 * engine and the worker are out of step); a refused whole table is asked for
 * again with backoff (1 s doubling to 10 s), so a passing fault heals by
 * itself and a lasting one stays visible. Until the engine has accepted one
 * table from the sources, the proxy has no valid policy at all and /ready
 * says so. A problem in the inputs is not a refusal: its entries are left out
 * and the problem is logged when the problems change, and listed on /policy.
 *
 * The endpoints table of HTTP balancing travels the same way
 * (endpoints-feed.ts): the worker compiles Services and EndpointSlices and
 * the static `--endpoints FILE` (read here first, at start: a bad line stops
 * the start), before the listeners bind. The worker watches the file: a
 * change replaces its entries, and a changed file with a bad line keeps the
 * last good entries and is listed as a problem. With the HTTP layer off the
 * file is only checked.
 *
 * Nor is a failing source (the Kubernetes API unreachable, or refusing a
 * kind with 403): the last known objects stay in force, the proxy stays
 * ready, and the failure is logged when it changes (naming the kind, the
 * resource and, for a 403, the RBAC manifest to grant) and listed under
 * /ready's 200 until it recovers.
 */
import { statSync } from 'node:fs';
import type { ProxyConfig } from '../config/index.js';
import { hasPolicySources, isOwnDescriptor, isPipeSync, readPipeOnceSync } from '../config/index.js';
import { MeshpipeError } from '../errors.js';
import { MAX_MANIFEST_BYTES } from './k8s/manifests.js';
import { MAX_ANNOTATIONS_BYTES } from './downward-api.js';
import type { Logger } from '../observe/index.js';
import type { EngineSnapshot, ServiceEndpointsSpec } from '../engine/index.js';
import { configInputs, flagsPolicy, meshSettings } from './flags.js';
import { EndpointsFeed, ENDPOINTS_MESSAGES, type EndpointsEngine } from './endpoints-feed.js';
import { readEndpointsFile } from './endpoints-file.js';
import { fileSignatureSync } from './file-signature.js';
import type { PolicyTable } from './model.js';
import { policyView, type PolicyViewPart } from './view.js';
import { PolicyWorker } from './worker-client.js';
import type { WorkerMessage } from './worker.js';

/** What the sidecar policy needs from the engine. */
export interface PolicyEngine extends EndpointsEngine {
  /** A whole table (UTF-8 JSON of a PolicySpec). */
  setPolicy(bytes: Uint8Array): number;
  /** A delta (UTF-8 JSON of a PolicyDelta). */
  updatePolicy(bytes: Uint8Array): number;
}

/** The policy of a running sidecar. */
export interface SidecarPolicy {
  /** The table the engine is created with (the flags-only one). */
  readonly initial: PolicyTable;
  /** Loads the sources (if any) and puts their first table into the engine; call before the listeners bind. */
  start(engine: PolicyEngine): Promise<void>;
  /** Null while a table from the configured sources (or the flags) is in force; otherwise why not. */
  notInForce(): string | null;
  /** Lines for /ready: a failing source (the Kubernetes API), which does not make the proxy unready. */
  readyDetails?(): readonly string[];
  /** The /policy document. */
  view(snapshot: EngineSnapshot | undefined): Promise<unknown>;
  close(): Promise<void>;
}

/** What the `policy loaded` line's counts mean, and where the rules themselves are shown. */
export const POLICY_LOADED_HINTS = {
  flags:
    'rules: this proxy\'s own port decisions (flags); fallbackRules: the defaults (default opaque ports per cluster network); ' +
    '`meshpipe explain --port PORT` or GET /policy on the admin server shows which rule decides a port',
  sources:
    'objects: Kubernetes objects read (pods, Servers, namespaces, authorization resources); addresses: destinations with a port policy of their own; ' +
    'tables: distinct port tables they share; `meshpipe explain --port PORT` or GET /policy on the admin server shows which rule decides a port',
} as const;

export const POLICY_MESSAGES = {
  loaded: 'policy loaded',
  updated: 'policy updated',
  rejected: 'policy rejected by the engine; the last good policy stays in force',
  problems: 'policy problems: invalid entries were ignored, the valid ones apply',
  reloadFailed: 'policy reload failed; the last good policy stays in force',
  workerCrashed: 'the policy worker stopped; the last good policy stays in force until it is back',
  endpointsUpdated: ENDPOINTS_MESSAGES.updated,
  endpointsRejected: ENDPOINTS_MESSAGES.rejected,
  sourceFailing: 'policy source failing; the last known objects stay in force',
  sourceRecovered: 'policy sources answer again',
  endpointsFileApplied: 'endpoints file changed: its entries apply',
  waitingForWriter: 'waiting for a process to open the named pipe for writing; the proxy starts once it has written and closed it',
} as const;

/**
 * The endpoints the sidecar compiles: the file's entries as read at start,
 * the file's signature then, and whether the worker watches it (a regular
 * file); undefined with the HTTP layer off (nothing balances).
 */
type EndpointsInput = { readonly fromFile: readonly ServiceEndpointsSpec[]; readonly signature: string | undefined; readonly watch: boolean } | undefined;

function isRegularFile(file: string): boolean {
  try {
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

function sources(config: ProxyConfig): Record<string, unknown> {
  return {
    annotations: config.annotations ?? null,
    manifests: config.manifests,
    kube: config.kube,
    opaquePorts: config.sources.opaquePorts,
    defaultOpaquePorts: config.sources.defaultOpaquePorts,
    destinations: config.destinations ?? null,
    defaultInboundPolicy: config.defaultInboundPolicy,
  };
}

function document(
  config: ProxyConfig, state: { generation: number; inForce: string | null }, part: PolicyViewPart | { error: string }, snapshot: EngineSnapshot | undefined,
): unknown {
  return {
    generation: state.generation,
    engineGeneration: snapshot?.policyGeneration ?? null,
    inForce: state.inForce === null,
    ...(state.inForce === null ? {} : { notInForce: state.inForce }),
    sources: sources(config),
    ...part,
    engine: snapshot?.policy ?? null,
    endpoints: snapshot?.endpoints ?? null,
    serverFirst: {
      note: 'targets learned to speak first skip detection until they expire; make it permanent with config.linkerd.io/opaque-ports',
      targets: snapshot?.serverFirst.targets ?? [],
    },
  };
}

/** The flags-only policy: compiled once, nothing to watch. */
function flagsOnly(config: ProxyConfig, logger: Logger): SidecarPolicy {
  const compiled = flagsPolicy(config);
  const part = policyView({ effective: compiled.effective, destinations: 0 }, compiled.table, compiled.problems, { objects: 0, addresses: 0, tables: 0 });
  return {
    initial: compiled.table,
    start: () => {
      logger.info({ generation: compiled.table.generation, source: 'flags', rules: compiled.table.rules.length, fallbackRules: compiled.table.fallbackRules.length, hint: POLICY_LOADED_HINTS.flags }, POLICY_MESSAGES.loaded);
      return Promise.resolve();
    },
    notInForce: () => null,
    view: (snapshot) => Promise.resolve(document(config, { generation: compiled.table.generation, inForce: null }, part, snapshot)),
    close: () => Promise.resolve(),
  };
}

/** The policy from the configured sources, compiled in a worker thread. */
class WorkerPolicy implements SidecarPolicy {
  readonly initial: PolicyTable;
  readonly #config: ProxyConfig;
  readonly #logger: Logger;
  readonly #worker: PolicyWorker;
  #engine: PolicyEngine | undefined;
  /** The generation the engine has from us (0: only the flags-only table). */
  #generation = 0;
  #inForce: string | null = 'starting';
  #awaitingWhole = true;
  #resyncRequested = false;
  #retry: NodeJS.Timeout | undefined;
  #retryMs = RETRY_FIRST_MS;
  readonly #endpoints: EndpointsFeed;
  /** The sources' own problems (the Kubernetes API failing), as last reported. */
  #sourceProblems: readonly string[] = [];

  constructor(config: ProxyConfig, logger: Logger, endpoints: EndpointsInput, pipeTexts: Readonly<Record<string, string>>) {
    this.#config = config;
    this.#logger = logger;
    this.initial = flagsPolicy(config).table;
    const inputs = configInputs(config);
    this.#worker = new PolicyWorker({
      annotationsFile: config.annotations,
      manifests: config.manifests,
      kube: config.kube,
      kubeconfig: config.kubeconfig,
      clusterNetworks: inputs.clusterNetworks,
      defaultOpaquePorts: inputs.defaultOpaquePorts,
      opaquePorts: inputs.opaquePorts,
      opaquePortsOrigin: inputs.opaquePortsOrigin,
      inboundDetectTimeoutMs: inputs.inboundDetectTimeoutMs,
      outboundDetectTimeoutMs: inputs.outboundDetectTimeoutMs,
      namespace: inputs.identity.namespace,
      pod: inputs.identity.pod,
      mesh: meshSettings(config),
      destinationsFile: config.destinations,
      pipeTexts,
      // Watched only when it is a regular file: a pipe (`--endpoints <(...)`)
      // can be read once, at start.
      endpointsFile: endpoints?.watch === true ? config.endpoints : undefined,
      endpointsFileSignature: endpoints?.signature,
      endpoints: endpoints === undefined ? undefined : { fromFile: endpoints.fromFile },
    }, () => this.#generation + 1, () => this.#endpoints.generation + 1);
    this.#endpoints = new EndpointsFeed(logger, () => this.#worker.resyncEndpoints());
    this.#worker.on('message', (m) => this.#onMessage(m));
    this.#worker.on('crashed', (err, restartInMs) => this.#logger.error({ err, restartInMs }, POLICY_MESSAGES.workerCrashed));
  }

  async start(engine: PolicyEngine): Promise<void> {
    this.#engine = engine;
    await this.#worker.start(); // the first table was applied by #onMessage before this resolves
  }

  notInForce(): string | null {
    return this.#inForce;
  }

  #onMessage(m: WorkerMessage): void {
    const engine = this.#engine;
    if (!engine) return;
    switch (m.type) {
      case 'table': {
        this.#resyncRequested = false;
        const started = performance.now();
        try {
          engine.setPolicy(m.bytes);
        } catch (err) {
          this.#rejected(m.generation, err);
          if (this.#generation === 0) this.#inForce = `the engine refused the first table (generation ${m.generation}): ${(err as Error).message}`;
          this.#retryLater();
          return;
        }
        this.#generation = m.generation;
        this.#awaitingWhole = false;
        this.#inForce = null;
        this.#retryMs = RETRY_FIRST_MS;
        this.#logger.info({ generation: m.generation, ...m.stats, applyMs: round(performance.now() - started), hint: POLICY_LOADED_HINTS.sources }, POLICY_MESSAGES.loaded);
        return;
      }
      case 'delta': {
        if (this.#awaitingWhole || m.base !== this.#generation) {
          if (m.generation > this.#generation) this.#resync();
          return;
        }
        const started = performance.now();
        try {
          engine.updatePolicy(m.bytes);
        } catch (err) {
          this.#rejected(m.generation, err);
          this.#awaitingWhole = true;
          this.#resync();
          return;
        }
        this.#generation = m.generation;
        const fields = { generation: m.generation, changed: m.changed, bytes: m.bytes.byteLength, applyMs: round(performance.now() - started), at: performance.timeOrigin + performance.now() };
        // A change of this workload's own rules is news; one destination of thousands changing is routine.
        if (m.frame) this.#logger.info(fields, POLICY_MESSAGES.loaded);
        else this.#logger.debug(fields, POLICY_MESSAGES.updated);
        return;
      }
      case 'endpoints':
        this.#endpoints.apply(engine, m);
        return;
      case 'endpointsFile':
        this.#worker.rememberEndpointsFile(m.services, m.signature);
        this.#logger.info({ file: this.#config.endpoints, services: m.services.length }, POLICY_MESSAGES.endpointsFileApplied);
        return;
      case 'problems':
        this.#onSourceProblems(m.sources);
        if (m.total > m.sources.length) this.#logger.warn({ generation: m.generation, problems: m.problems, total: m.total }, POLICY_MESSAGES.problems);
        return;
      case 'reloadFailed':
        this.#logger.error({ err: m.message }, POLICY_MESSAGES.reloadFailed);
        return;
      case 'startFailed': // PolicyWorker.start() rejects with it
      case 'view': // answered through PolicyWorker.view()
        return;
    }
  }

  /** Logs a change of the sources' own problems: each failure once, naming it, and the recovery. */
  #onSourceProblems(sources: readonly string[]): void {
    const before = this.#sourceProblems;
    this.#sourceProblems = sources;
    if (sources.length > 0 && sources.join('\n') !== before.join('\n')) this.#logger.warn({ problems: sources }, POLICY_MESSAGES.sourceFailing);
    else if (sources.length === 0 && before.length > 0) this.#logger.info({ resolved: before }, POLICY_MESSAGES.sourceRecovered);
  }

  readyDetails(): readonly string[] {
    return this.#sourceProblems.map((p) => `policy source: ${p}`);
  }

  #resync(): void {
    this.#awaitingWhole = true;
    if (this.#resyncRequested) return;
    this.#resyncRequested = true;
    this.#worker.resync();
  }

  /** Asks for the whole table again after a backoff (the engine refused the last one). */
  #retryLater(): void {
    if (this.#retry) return;
    const delay = this.#retryMs;
    this.#retryMs = Math.min(this.#retryMs * 2, RETRY_MAX_MS);
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      if (this.#awaitingWhole) this.#resync();
    }, delay);
    this.#retry.unref();
  }

  #rejected(generation: number, err: unknown): void {
    this.#logger.error({ generation, engineGeneration: this.#generation, err }, POLICY_MESSAGES.rejected);
  }

  async view(snapshot: EngineSnapshot | undefined): Promise<unknown> {
    const part = (await this.#worker.view()) as PolicyViewPart | { error: string };
    return document(this.#config, { generation: this.#generation, inForce: this.#inForce }, part, snapshot);
  }

  close(): Promise<void> {
    if (this.#retry) clearTimeout(this.#retry);
    this.#endpoints.close();
    return this.#worker.close();
  }
}

const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 10_000;

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

/**
 * Reads the policy paths given as pipes (`--destinations <(generate)`,
 * `--annotations`, `--manifests`) once, here on the main thread at start,
 * bounded: the policy worker gets their text and never opens them (it reads
 * its files again, and a pipe has nothing more to give; a restarted worker
 * would find it drained).
 * @throws MeshpipeError ERR_INVALID_CONFIG naming the flag and the path
 */
function readStartPipes(config: ProxyConfig, logger: Logger): Record<string, string> {
  const texts: Record<string, string> = Object.create(null) as Record<string, string>;
  const paths: Array<[string, string, string | undefined, number]> = [
    ['annotations', '--annotations', config.annotations, MAX_ANNOTATIONS_BYTES],
    ['destinations', '--destinations', config.destinations, MAX_MANIFEST_BYTES],
    ...config.manifests.map((m): [string, string, string, number] => ['manifests', '--manifests', m, MAX_MANIFEST_BYTES]),
  ];
  for (const [key, flag, path, max] of paths) {
    if (path === undefined || Object.hasOwn(texts, path) || !isPipeSync(path)) continue;
    noteNamedPipe(logger, flag, path);
    try {
      texts[path] = readPipeOnceSync(path, max);
    } catch (err) {
      throw new MeshpipeError('ERR_INVALID_CONFIG', `${flag} ${path}: cannot read the pipe: ${(err as Error).message}`, { key, cause: err });
    }
  }
  return texts;
}

/**
 * Says so when the start is about to wait for a named FIFO's writer (`open`
 * blocks until one comes), so a start that seems stuck names what it waits
 * for. A `<(generate)` descriptor's writer exists already.
 */
function noteNamedPipe(logger: Logger, flag: string, path: string): void {
  if (!isOwnDescriptor(path)) logger.warn({ flag, path }, POLICY_MESSAGES.waitingForWriter);
}

/** The sidecar's policy: flags only, or the configured sources in a worker. */
export function createSidecarPolicy(config: ProxyConfig, logger: Logger): SidecarPolicy {
  // Read (and checked) even with the HTTP layer off: a bad file is a configuration error either way.
  const file = config.endpoints;
  const signature = file === undefined ? undefined : fileSignatureSync(file);
  if (file !== undefined && isPipeSync(file)) noteNamedPipe(logger, '--endpoints', file);
  const fromFile = file === undefined ? [] : readEndpointsFile(file);
  const watch = file !== undefined && isRegularFile(file);
  const endpoints: EndpointsInput = config.http ? { fromFile, signature, watch } : undefined;
  // The endpoints file needs the worker too: it watches the file.
  return hasPolicySources(config) || config.destinations !== undefined || (endpoints !== undefined && config.endpoints !== undefined)
    ? new WorkerPolicy(config, logger, endpoints, readStartPipes(config, logger))
    : flagsOnly(config, logger);
}
