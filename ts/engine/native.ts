/**
 * The native addon: loading it, and the typed calls across the boundary.
 *
 * The addon (crates/meshpipe-node, built by `napi build` into native/)
 * exports one class, `NativeProxy`, `setEngineLog`, `interfaceAddresses`
 * (the pod IPs when nobody gave them), and for `meshpipe run` `spawnApp` and
 * `reapChildren`. Values cross as JSON
 * text: what goes in is `JSON.stringify` of a type from ./boundary.ts and
 * what comes out is parsed into one. boundary.ts is generated from the Rust
 * types (`npm run gen:types`; `npm test` fails when it is stale), and the
 * raw class's signatures come from napi's generated native/native.d.ts, so
 * nothing here restates a shape by hand. Errors thrown by the addon carry
 * the engine's `ErrorCode` as `code`; every call here maps them to a
 * `MeshpipeError` with that code.
 */

import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { MeshpipeError, fromNative } from '../errors.js';
import type * as Addon from '../../native/native.js';
import type {
  BoundListener,
  CloseSummary,
  ConnSnapshot,
  EngineEvent,
  EngineSpec,
  PolicySpec,
  ReapedChild,
  RuleSpec,
  SpawnOutcome,
  SpawnSpec,
  Snapshot,
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
export type EngineSnapshot = Snapshot;
export type TcpSeriesSnapshot = TcpSnapshot;
export type ConnectionInfo = ConnSnapshot;
export type DetectResultLabel = DetectResult;

/** The engine's log output: a filter (RUST_LOG-style directives) and a stream. */
export type EngineLogStream = 'stdout' | 'stderr';

export interface RawBinding {
  NativeProxy: typeof Addon.NativeProxy;
  setEngineLog: typeof Addon.setEngineLog;
  spawnApp: typeof Addon.spawnApp;
  reapChildren: typeof Addon.reapChildren;
  interfaceAddresses: typeof Addon.interfaceAddresses;
  identityInit: typeof Addon.identityInit;
  identityIssue: typeof Addon.identityIssue;
  identityCheck: typeof Addon.identityCheck;
  authzDecide: typeof Addon.authzDecide;
  destinationsLookup: typeof Addon.destinationsLookup;
}

let binding: RawBinding | undefined;

/** Finds and loads the addon built for this platform. */
export function loadBinding(): RawBinding {
  if (binding) return binding;
  const here = dirname(fileURLToPath(import.meta.url));
  const abi = isMusl() ? 'musl' : 'gnu';
  const file = `meshpipe.${process.platform}-${process.arch}${process.platform === 'linux' ? `-${abi}` : ''}.node`;
  const candidates = [join(here, '..', '..', '..', 'native', file), join(here, '..', '..', 'native', file)];
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new MeshpipeError('ERR_NATIVE', `the native addon ${file} was not found (looked in ${candidates.join(', ')}): run "npm run build:native"`);
  }
  binding = createRequire(import.meta.url)(found) as RawBinding;
  return binding;
}

function isMusl(): boolean {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return !report?.header?.glibcVersionRuntime;
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

  setPolicy(policy: PolicyTable): number {
    return call(() => this.#raw.setPolicy(JSON.stringify(policy)));
  }

  /** Applies an endpoints update (Service address -> endpoints, for HTTP balancing). */
  updateEndpoints(update: EndpointsUpdate): number {
    return call(() => this.#raw.updateEndpoints(JSON.stringify(update)));
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

/**
 * Installs (or re-filters) the engine's log output: pino-shaped JSON lines on
 * `stream`, filtered by RUST_LOG-style `filter` directives. Process-wide.
 */
export function setEngineLog(filter: string, stream: EngineLogStream): void {
  const { setEngineLog: set } = loadBinding();
  call(() => set(filter, stream));
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
