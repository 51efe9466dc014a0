/**
 * The native addon: loading it, and the typed shapes that cross the boundary.
 *
 * The addon (crates/meshpipe-node, built by `napi build` into native/) exports
 * one class, `NativeProxy`. Its methods take and return plain JSON-shaped
 * objects; the interfaces below give them types and mirror ARCHITECTURE.md.
 * Errors thrown or rejected by the addon read `CODE: message`; every method
 * here is wrapped so callers receive a `MeshpipeError` with that stable code.
 */

import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { MeshpipeError, fromNative } from '../errors.js';

export type PortMode = 'detect' | 'opaque' | 'http1' | 'http2' | 'grpc' | 'tls';
export type Direction = 'inbound' | 'outbound';

export interface PolicyRule {
  readonly direction: Direction;
  /** CIDR, or null for any address. */
  readonly net: string | null;
  /** Inclusive port range. */
  readonly ports: readonly [number, number];
  readonly mode: PortMode;
  readonly detectTimeoutMs: number | null;
  /** Why this rule exists, e.g. "default opaque ports". */
  readonly source: string;
}

export interface PolicyTable {
  readonly generation: number;
  /** Ordered: the first matching rule wins; no match means detect. */
  readonly rules: readonly PolicyRule[];
}

export type TargetSpec =
  | { readonly kind: 'fixed'; readonly addr: string }
  | { readonly kind: 'originalDst'; readonly inboundHost: string | null };

export interface ListenerSpec {
  readonly name: string;
  readonly bind: string;
  readonly target: TargetSpec;
  readonly mode: PortMode | null;
  readonly direction: Direction;
}

export interface EngineConfig {
  readonly workers: number;
  readonly maxConnections: number;
  readonly connectTimeoutMs: number;
  readonly listeners: readonly ListenerSpec[];
  readonly detect: {
    readonly inboundTimeoutMs: number;
    readonly outboundTimeoutMs: number;
    readonly serverFirstGraceMs: number;
    readonly serverFirstCapacity: number;
    readonly serverFirstTtlMs: number;
    /** Per-port timeouts: first match wins over the direction's; a policy rule's own timeout wins over these. */
    readonly portTimeouts?: readonly { readonly direction: Direction | null; readonly ports: readonly [number, number]; readonly timeoutMs: number }[];
  };
  readonly metrics: { readonly maxTargets: number };
  readonly policy: PolicyTable;
}

export interface BoundListener {
  readonly name: string;
  /** The bound address, with the real port when 0 was asked for. */
  readonly bind: string;
  readonly direction: Direction;
}

export interface CloseSummary {
  readonly drained: number;
  readonly cut: number;
}

export interface HistogramSnapshot {
  readonly buckets: number[];
  /** Per-bucket counts (not cumulative); the last entry is +Inf. */
  readonly counts: number[];
  readonly sum: number;
  readonly count: number;
}

export interface TcpSeriesSnapshot {
  readonly direction: Direction;
  readonly targetAddr: string | null;
  readonly targetIp: string | null;
  readonly targetPort: number | null;
  readonly tls: string;
  readonly noTlsReason: string | null;
  readonly sni: string | null;
  /** The series that collects targets past the cardinality bound. */
  readonly overflow: boolean;
  readonly srcOpenTotal: number;
  readonly srcOpen: number;
  readonly dstOpenTotal: number;
  readonly dstOpen: number;
  readonly bytesClientToServer: number;
  readonly bytesServerToClient: number;
  readonly closes: { readonly peer: 'src' | 'dst'; readonly errno: string; readonly count: number }[];
  readonly durationMs: HistogramSnapshot;
}

export type DetectResultLabel =
  | 'http/1' | 'http/2' | 'tls' | 'opaque_port' | 'not_http' | 'server_first' | 'read_timeout' | 'client_closed' | 'error';

export interface EngineSnapshot {
  readonly uptimeMs: number;
  readonly policyGeneration: number;
  readonly listeners: {
    readonly name: string; readonly bind: string; readonly direction: Direction;
    readonly accepted: number; readonly open: number; readonly acceptErrors: number;
    readonly limitWaits: number; readonly accepting: boolean;
  }[];
  readonly tcp: TcpSeriesSnapshot[];
  readonly detect: { readonly direction: Direction; readonly targetPort: number | null; readonly result: DetectResultLabel; readonly count: number }[];
  readonly detectDurationMs: (HistogramSnapshot & { readonly direction: Direction })[];
  readonly serverFirst: { readonly targets: { readonly addr: string; readonly ageMs: number; readonly hits: number }[] };
  readonly errors: { readonly connectFailed: number; readonly loopRefused: number; readonly originalDstFailed: number };
}

export interface ConnectionInfo {
  readonly id: number;
  readonly listener: string;
  readonly direction: Direction;
  readonly peer: string;
  readonly target: string | null;
  readonly protocol: 'detecting' | 'http/1' | 'http/2' | 'tls' | 'opaque';
  readonly tls: string;
  readonly sni: string | null;
  readonly state: 'detecting' | 'connecting' | 'forwarding' | 'closing';
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly ageMs: number;
}

export interface EngineEvent {
  readonly kind: 'serverFirstLearned';
  readonly target: string;
}

/** The raw class exported by the addon. */
interface RawNativeProxy {
  start(): Promise<BoundListener[]>;
  stopAccepting(names: string[]): string[];
  close(drainMs: number): Promise<CloseSummary>;
  setPolicy(policy: PolicyTable): number;
  snapshot(): EngineSnapshot;
  connections(limit: number): ConnectionInfo[];
  takeEvents(): EngineEvent[];
}

interface RawBinding {
  NativeProxy: new (config: EngineConfig) => RawNativeProxy;
}

let binding: RawBinding | undefined;

/** Finds and loads the addon built for this platform. */
function loadBinding(): RawBinding {
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

/** The engine, with errors mapped to `MeshpipeError`s. */
export class NativeProxy {
  readonly #raw: RawNativeProxy;

  constructor(config: EngineConfig) {
    const { NativeProxy: Raw } = loadBinding();
    try {
      this.#raw = new Raw(config);
    } catch (err) {
      throw fromNative(err);
    }
  }

  async start(): Promise<BoundListener[]> {
    try {
      return await this.#raw.start();
    } catch (err) {
      throw fromNative(err);
    }
  }

  stopAccepting(names: string[]): string[] {
    return call(() => this.#raw.stopAccepting(names));
  }

  async close(drainMs: number): Promise<CloseSummary> {
    try {
      return await this.#raw.close(Math.max(0, Math.min(Math.round(drainMs), 0xffffffff)));
    } catch (err) {
      throw fromNative(err);
    }
  }

  setPolicy(policy: PolicyTable): number {
    return call(() => this.#raw.setPolicy(policy));
  }

  snapshot(): EngineSnapshot {
    return call(() => this.#raw.snapshot());
  }

  connections(limit: number): ConnectionInfo[] {
    return call(() => this.#raw.connections(limit));
  }

  takeEvents(): EngineEvent[] {
    return call(() => this.#raw.takeEvents());
  }
}

function call<T>(f: () => T): T {
  try {
    return f();
  } catch (err) {
    throw fromNative(err);
  }
}
