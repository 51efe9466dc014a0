/**
 * The native addon: loading it, and the typed calls across the boundary.
 *
 * The addon (crates/meshpipe-node, built by `napi build` into native/, or
 * the prebuilt platform package; ./addon-locate.ts finds it) exports
 * `NativeProxy`, `PolicyLookup` (a policy table with the engine's own
 * lookup, no proxy needed), `setEngineLog`, `interfaceAddresses` (the
 * pod IPs when nobody gave them), for `meshpipe run` `spawnApp` and
 * `reapChildren`, and the mesh functions (ts/engine/mesh.ts). Values cross as JSON
 * text: what goes in is `JSON.stringify` of a type from ./boundary.ts and
 * what comes out is parsed into one. boundary.ts is generated from the Rust
 * types (`npm run gen:types`; `npm test` fails when it is stale), and the
 * raw class's signatures come from napi's generated native/native.d.ts, so
 * nothing here restates a shape by hand. Errors thrown by the addon carry
 * the engine's `ErrorCode` as `code`; every call here maps them to a
 * `MeshpipeError` with that code.
 */

import { fromNative } from '../errors.js';
import { loadAddon } from './addon-locate.js';
import type * as Addon from '../../native/native.js';
import type {
  DecisionInfo,
  IdentityInstalled,
  LoadSpec,
  BoundListener,
  CloseSummary,
  ConnSnapshot,
  Direction,
  EngineEvent,
  EngineSpec,
  FailureCounts,
  PolicyDecision,
  PolicyDelta,
  PolicyFrameSpec,
  PolicySpec,
  ReapedChild,
  RuleSpec,
  SpawnOutcome,
  SpawnSpec,
  Snapshot,
  TargetAddrsSpec,
  TcpSnapshot,
  DetectResult,
  EndpointsUpdate,
} from './boundary.js';

export type * from './boundary.js';

/** What goes in is built once and frozen: the input types, read-only all the way down. */
export type DeepReadonly<T> = T extends object ? { readonly [K in keyof T]: DeepReadonly<T[K]> } : T;

// Names the rest of the TypeScript layer uses for the generated types.
export type EngineConfig = DeepReadonly<EngineSpec>;
export type PolicyTable = DeepReadonly<PolicySpec>;
export type PolicyRule = DeepReadonly<RuleSpec>;
/** A change to the engine's current table (applies to generation `base` only). */
export type PolicyChange = DeepReadonly<PolicyDelta>;
export type PolicyFrame = DeepReadonly<PolicyFrameSpec>;
export type EngineSnapshot = Snapshot;
export type TcpSeriesSnapshot = TcpSnapshot;
export type ConnectionInfo = ConnSnapshot;
export type DetectResultLabel = DetectResult;

/** The engine's log output: a filter (RUST_LOG-style directives) and a stream. */
export type EngineLogStream = 'stdout' | 'stderr';

export interface RawBinding {
  NativeProxy: typeof Addon.NativeProxy;
  PolicyLookup: typeof Addon.PolicyLookup;
  setEngineLog: typeof Addon.setEngineLog;
  spawnApp: typeof Addon.spawnApp;
  reapChildren: typeof Addon.reapChildren;
  interfaceAddresses: typeof Addon.interfaceAddresses;
  identityInit: typeof Addon.identityInit;
  identityIssue: typeof Addon.identityIssue;
  identityCheck: typeof Addon.identityCheck;
  authzDecide: typeof Addon.authzDecide;
}

const encoder = new TextEncoder();

/** A table or delta as the addon takes it: UTF-8 JSON bytes (already encoded ones pass through untouched). */
function bytesOf(value: PolicyTable | PolicyChange | EndpointsUpdate | Uint8Array): Uint8Array {
  return value instanceof Uint8Array ? value : encoder.encode(JSON.stringify(value));
}

let binding: RawBinding | undefined;

/** Finds and loads the addon built for this platform (./addon-locate.ts: a build from source, else the platform package). */
export function loadBinding(): RawBinding {
  binding ??= loadAddon() as RawBinding;
  return binding;
}

/** The engine, with its JSON boundary typed and errors mapped to `MeshpipeError`s. */
export class NativeProxy {
  readonly #raw: Addon.NativeProxy;

  /** Validates `config` in the engine and starts its threads (nothing is bound yet). */
  constructor(config: EngineConfig) {
    const { NativeProxy: Raw } = loadBinding();
    this.#raw = call(() => new Raw(JSON.stringify(config)));
  }

  /** Binds every listener (all or nothing) and starts accepting. */
  start(): BoundListener[] {
    return JSON.parse(call(() => this.#raw.start())) as BoundListener[];
  }

  stopAccepting(names: string[]): string[] {
    return call(() => this.#raw.stopAccepting(names));
  }

  async close(drainMs: number): Promise<CloseSummary> {
    const closing = call(() => this.#raw.close(Math.max(0, Math.min(Math.round(drainMs), 0xffffffff))));
    try {
      return JSON.parse(await closing) as CloseSummary;
    } catch (err) {
      throw fromNative(err);
    }
  }

  /** Replaces the whole table (a PolicySpec, or its UTF-8 JSON bytes). */
  setPolicy(policy: PolicyTable | Uint8Array): number {
    return call(() => this.#raw.setPolicy(bytesOf(policy)));
  }

  /** Applies a delta (a PolicyDelta, or its UTF-8 JSON bytes): all or nothing, to its base generation only. */
  updatePolicy(delta: PolicyChange | Uint8Array): number {
    return call(() => this.#raw.updatePolicy(bytesOf(delta)));
  }

  /** What the current table decides for a connection, with the source. */
  explainPolicy(direction: Direction, ip: string, port: number): PolicyDecision {
    return JSON.parse(call(() => this.#raw.explainPolicy(direction, ip, port))) as PolicyDecision;
  }

  /**
   * Applies an endpoints update (an EndpointsUpdate, or its UTF-8 JSON bytes:
   * Service address -> endpoints, for HTTP balancing): a whole table, or a
   * change onto its base generation, all or nothing.
   */
  updateEndpoints(update: EndpointsUpdate | Uint8Array): number {
    return call(() => this.#raw.updateEndpoints(bytesOf(update)));
  }

  /** Installs or replaces the mesh identity (new connections only); throws ERR_IDENTITY. */
  setIdentity(spec: LoadSpec, pem: { readonly cert: Buffer; readonly key: Buffer; readonly anchors: Buffer }): IdentityInstalled {
    return JSON.parse(call(() => this.#raw.setIdentity(JSON.stringify(spec), pem.cert, pem.key, pem.anchors))) as IdentityInstalled;
  }

  /** Replaces the addresses of a listener's named target (a host name re-resolved; ./names.ts). */
  setTargetAddrs(spec: TargetAddrsSpec): void {
    call(() => this.#raw.setTargetAddrs(JSON.stringify(spec)));
  }

  /** The failure counters and named targets alone (cheap: no per-target series). */
  failureCounts(): FailureCounts {
    return JSON.parse(call(() => this.#raw.failureCounts())) as FailureCounts;
  }

  snapshot(): EngineSnapshot {
    return JSON.parse(call(() => this.#raw.snapshot())) as EngineSnapshot;
  }

  connections(limit: number): ConnectionInfo[] {
    return JSON.parse(call(() => this.#raw.connections(limit))) as ConnectionInfo[];
  }

  takeEvents(): EngineEvent[] {
    return JSON.parse(call(() => this.#raw.takeEvents())) as EngineEvent[];
  }
}

/** A compiled policy table with the engine's own lookup: what the engine would decide, no proxy running. */
export class PolicyLookup {
  readonly #raw: Addon.PolicyLookup;

  /** @throws MeshpipeError ERR_POLICY naming the bad entry, as the engine would refuse the table. */
  constructor(table: PolicyTable | Uint8Array) {
    const { PolicyLookup: Raw } = loadBinding();
    this.#raw = call(() => new Raw(bytesOf(table)));
  }

  explain(direction: Direction, ip: string, port: number): PolicyDecision {
    return JSON.parse(call(() => this.#raw.explain(direction, ip, port))) as PolicyDecision;
  }

  /** The table's authorization decision for a client of `port` (`clientIdentity` null: plaintext). */
  authorize(port: number, clientIdentity: string | null, clientIp: string): DecisionInfo {
    return JSON.parse(call(() => this.#raw.authorize(port, clientIdentity ?? undefined, clientIp))) as DecisionInfo;
  }
}

/**
 * Installs (or re-filters) the engine's log output: pino-shaped JSON lines on
 * `stream`, filtered by RUST_LOG-style `filter` directives; `format` `text`
 * renders them for a human as ts/observe/log-format.ts does. Process-wide.
 */
export function setEngineLog(filter: string, stream: EngineLogStream, format?: 'json' | 'text'): void {
  const { setEngineLog: set } = loadBinding();
  call(() => set(filter, stream, format));
}

/**
 * Starts an app that gets SIGKILL if this process dies, even by SIGKILL
 * (`PR_SET_PDEATHSIG`, set between fork and exec, which Node's spawn cannot
 * do). Call it on the main thread. libuv does not know the child: reap it
 * with `reapChildren`.
 */
export function spawnApp(spec: SpawnSpec): SpawnOutcome {
  const { spawnApp: spawn } = loadBinding();
  return JSON.parse(call(() => spawn(JSON.stringify(spec)))) as SpawnOutcome;
}

/**
 * Reaps exited children: only `pid` when given; otherwise every exited child
 * except `keep` (children libuv spawned), which as PID 1 includes orphans.
 */
export function reapChildren(pid: number | undefined, keep: readonly number[] = []): ReapedChild[] {
  const { reapChildren: reap } = loadBinding();
  return JSON.parse(call(() => reap(pid, [...keep]))) as ReapedChild[];
}

/** The addresses of this network namespace's interfaces, loopback left out (also of links not running yet). */
export function interfaceAddresses(): string[] {
  const { interfaceAddresses: list } = loadBinding();
  return call(() => list());
}

/** Runs an addon call, mapping its errors to `MeshpipeError`s. */
export function call<T>(f: () => T): T {
  try {
    return f();
  } catch (err) {
    throw fromNative(err);
  }
}
