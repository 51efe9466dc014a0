/**
 * `Proxy`: the library API over the native engine's lifecycle, used by the
 * CLI (`meshpipe proxy`, `meshpipe run`) and by tests that embed the proxy.
 *
 *   const proxy = Proxy.fromConfig(config);      // or new Proxy(engineConfig)
 *   const bound = await proxy.start();           // every listener is bound
 *   ...
 *   const summary = await proxy.close({ drainMs: 30_000 });
 *
 * It adds what the raw binding does not: a state machine (start once, close
 * once; a second `close()` returns the first one's promise), errors mapped to
 * `MeshpipeError` (ts/engine/native.ts maps them), and an optional keep-alive handle. The
 * engine runs on its own threads and deliberately does not keep Node's event
 * loop alive; a process whose only job is proxying (the CLI) asks for
 * `keepAlive` so it does not exit while listeners run.
 */
import { fromNative, MeshpipeError } from '../errors.js';
import type { ProxyConfig } from '../config/index.js';
import { buildEngineConfig } from './build-config.js';
import type { PodIps } from './inbound.js';
import type { IdentityInstalled, LoadSpec } from './boundary.js';
import {
  NativeProxy,
  type BoundListener,
  type CloseSummary,
  type ConnectionInfo,
  type EndpointsUpdate,
  type EngineConfig,
  type EngineEvent,
  type EngineSnapshot,
  type FailureCounts,
  type Direction,
  type PolicyChange,
  type PolicyDecision,
  type PolicyTable,
} from './native.js';

export type ProxyState = 'new' | 'starting' | 'running' | 'closing' | 'closed' | 'failed';

export interface ProxyOptions {
  /** Hold a ref'd timer while running so the process stays alive (the CLI does). */
  keepAlive?: boolean;
}

/**
 * A bind failure with what to do: the engine names the address and the
 * listener; the user also needs to know how to find who holds it and what
 * to change.
 */
function withBindHint(err: MeshpipeError): MeshpipeError {
  const port = /address \S+:(\d+) \(listener/.exec(err.message)?.[1];
  if (err.code !== 'ERR_ADDR_IN_USE' || port === undefined) return err;
  return new MeshpipeError(
    err.code,
    `${err.message}: another process listens there (\`ss -ltnp 'sport = :${port}'\` shows which); stop it, or choose another address (a --forward's BIND, --inbound, --outbound)`,
    { cause: err },
  );
}

export class Proxy {
  readonly config: EngineConfig;
  readonly #native: NativeProxy;
  #state: ProxyState = 'new';
  #listeners: readonly BoundListener[] = [];
  #closing: Promise<CloseSummary> | undefined;
  #keepAlive: NodeJS.Timeout | undefined;
  readonly #wantKeepAlive: boolean;

  /**
   * Validates the config in the engine (nothing is bound yet).
   * @throws MeshpipeError ERR_INVALID_CONFIG if the engine refuses the config.
   */
  constructor(config: EngineConfig, options: ProxyOptions = {}) {
    this.config = config;
    this.#wantKeepAlive = options.keepAlive ?? false;
    this.#native = new NativeProxy(config);
  }

  /** A proxy for a validated `ProxyConfig` (listeners and flag policy). */
  static fromConfig(config: ProxyConfig, options: ProxyOptions & { policy?: PolicyTable; podIps?: PodIps } = {}): Proxy {
    return new Proxy(buildEngineConfig(config, options.policy, options.podIps), options);
  }

  get state(): ProxyState {
    return this.#state;
  }

  /** The listeners as bound by `start()` (empty before). */
  get listeners(): readonly BoundListener[] {
    return this.#listeners;
  }

  /**
   * Binds every listener, then starts accepting. Resolves with the bound
   * addresses (ephemeral ports resolved). If any bind fails nothing accepts.
   * @throws MeshpipeError e.g. ERR_ADDR_IN_USE naming the address.
   */
  start(): Promise<readonly BoundListener[]> {
    // Binding is synchronous in the engine; callers get a promise either way
    // (a failure rejects it rather than throwing).
    return new Promise((resolve) => resolve(this.#startNow()));
  }

  #startNow(): readonly BoundListener[] {
    if (this.#state !== 'new') {
      throw new MeshpipeError('ERR_STARTUP', `proxy cannot start: it is ${this.#state} (start() may be called once)`);
    }
    this.#state = 'starting';
    if (this.#wantKeepAlive) this.#keepAlive = setInterval(() => undefined, 1 << 30);
    try {
      this.#listeners = Object.freeze(this.#native.start());
    } catch (err) {
      this.#state = 'failed';
      this.#releaseKeepAlive();
      throw withBindHint(fromNative(err));
    }
    this.#state = 'running';
    return this.#listeners;
  }

  /**
   * Stops the named listeners from accepting; their open connections keep
   * flowing (a sidecar stops inbound before outbound).
   * @throws MeshpipeError ERR_INVALID_ARGUMENT naming unknown listeners; nothing is stopped then.
   */
  stopAccepting(names: readonly string[]): void {
    const known = this.config.listeners.map((l) => l.name);
    const unknown = names.filter((n) => !known.includes(n));
    if (unknown.length > 0) {
      throw new MeshpipeError('ERR_INVALID_ARGUMENT', `unknown listener ${unknown.map((n) => JSON.stringify(n)).join(', ')}: expected one of ${known.join(', ')}`);
    }
    this.#native.stopAccepting([...names]);
  }

  /**
   * Stops accepting everywhere, lets open connections finish for up to
   * `drainMs` (default 30 s), then closes the rest. Idempotent: later calls
   * return the first call's result.
   */
  close(options: { drainMs?: number } = {}): Promise<CloseSummary> {
    if (this.#closing === undefined) {
      const drainMs = options.drainMs ?? 30_000;
      this.#state = 'closing';
      const closing: Promise<CloseSummary> = this.#native.close(drainMs).then(
        (summary: CloseSummary) => {
          this.#state = 'closed';
          this.#releaseKeepAlive();
          return summary;
        },
        (err: unknown) => {
          this.#state = 'failed';
          this.#releaseKeepAlive();
          throw fromNative(err);
        },
      );
      this.#closing = closing;
      return closing;
    }
    return this.#closing;
  }

  /** Swaps in a whole new policy table atomically; only new connections see it. Returns the engine's generation. */
  setPolicy(policy: PolicyTable | Uint8Array): number {
    return this.#native.setPolicy(policy);
  }

  /**
   * Applies an endpoints update: Services (cluster IP and port) and their
   * endpoints for per-request HTTP balancing, before or after `start()`.
   * Requests in flight keep their endpoint. Returns the table's generation.
   * A change applies only onto the generation it names as its `base`.
   * @throws MeshpipeError ERR_POLICY when an entry is invalid or the base is not the engine's generation (the table in force stays)
   */
  updateEndpoints(update: EndpointsUpdate | Uint8Array): number {
    return this.#native.updateEndpoints(update);
  }

  /** Installs or replaces the mesh identity: new connections use it, open ones keep theirs. */
  setIdentity(spec: LoadSpec, pem: { readonly cert: Buffer; readonly key: Buffer; readonly anchors: Buffer }): IdentityInstalled {
    return this.#native.setIdentity(spec, pem);
  }

  /** Applies a delta to the current table (all or nothing; only to its base generation). Returns the new generation. */
  updatePolicy(delta: PolicyChange | Uint8Array): number {
    return this.#native.updatePolicy(delta);
  }

  /** What the current table decides for a connection to `ip`:`port`, with the source. */
  explainPolicy(direction: Direction, ip: string, port: number): PolicyDecision {
    return this.#native.explainPolicy(direction, ip, port);
  }

  /** Replaces the addresses of a listener's target host name (./names.ts); new connections use them. */
  setTargetAddrs(listener: string, addrs: readonly string[]): void {
    this.#native.setTargetAddrs({ listener, addrs: [...addrs] });
  }

  /** The failure counters and named targets alone: cheap enough to poll often. */
  failureCounts(): FailureCounts {
    return this.#native.failureCounts();
  }

  /** Every engine counter, read in one call. */
  snapshot(): EngineSnapshot {
    return this.#native.snapshot();
  }

  /** Up to `limit` live connections (for debugging endpoints). */
  connections(limit = 1000): ConnectionInfo[] {
    return this.#native.connections(limit);
  }

  /** Notable engine events since the last call (e.g. a server-first target learned). */
  takeEvents(): EngineEvent[] {
    return this.#native.takeEvents();
  }

  #releaseKeepAlive(): void {
    if (this.#keepAlive !== undefined) clearInterval(this.#keepAlive);
    this.#keepAlive = undefined;
  }
}

/** Alias for code where `Proxy` would shadow the JavaScript global of that name. */
export { Proxy as MeshpipeProxy };
