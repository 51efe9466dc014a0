/**
 * The proxy's configuration model: one zod schema, four sources, one frozen
 * result.
 *
 * Sources are merged key by key in this order, later ones winning:
 * built-in defaults < config file (YAML or JSON, `--config FILE`) <
 * `MESHPIPE_*` environment variables < command-line flags. Every raw value
 * remembers where it came from, so a bad value is reported with its key, the
 * value as written, what is expected and its source, e.g.
 * `invalid drainTimeout "abc" (from --drain-timeout): expected a duration like 30s, 500ms or 5m`.
 * Unknown keys in a config file are errors (a typo must not be silently
 * ignored); unknown `MESHPIPE_*` variables are warnings naming the closest
 * known one (other tools may share the prefix), and so are options that
 * another one makes pointless (ts/config/combinations.ts; as flags they are
 * errors). The result is parsed once and deeply frozen.
 *
 * Adding a key: add a field to `FIELDS` (schema, default, what is expected)
 * and, for a flag, an entry in ts/cli/args.ts. The env var name is derived
 * (`drainTimeout` -> `MESHPIPE_DRAIN_TIMEOUT`).
 */
import { isPipeSync, readPipeOnceSync, readWatchedTextSync, WatchedFileError } from './watched-file.js';
import { z } from 'zod';
import { parse as parseYaml } from 'yaml';
import { MeshpipeError } from '../errors.js';
import { DEFAULT_OPAQUE_PORTS, type PortRange } from './port-list.js';
import { admin, bool, count, duration, DURATION, engineLogFilter, ENGINE_LOG, forwardList, logFormat, LOG_FORMATS, logLevel, LOG_LEVELS, portDetectTimeouts, portList, PORTS, type LogFormat, type LogLevel, type PortDetectTimeout } from './schemas.js';
import { SIDECAR_FIELDS, type SidecarConfig, sidecarConfig } from './sidecar.js';
import { IDENTITY_FIELDS, type IdentityConfig, identityConfig } from './identity.js';
import { HTTP_FIELDS, type HttpConfig, httpConfig } from './http.js';
import { checkCombinations, closest, unknownEnvWarnings } from './combinations.js';
import { NAMES_FIELDS, type NamesConfig, namesConfig } from './names.js';
import {
  parseBindAddr,
  parseForward,
  parseTargetAddr,
  type ForwardSpec,
  type SocketAddr,
} from './forward.js';

export type { ForwardSpec, SocketAddr, PortMode, Direction, TargetAddress } from './forward.js';

export { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from './schemas.js';

/** The validated, normalised, deeply frozen proxy configuration. */
export interface ProxyConfig extends SidecarConfig, IdentityConfig, NamesConfig, HttpConfig {
  readonly forward: readonly ForwardSpec[];
  readonly drainTimeoutMs: number;
  /** Limit on open proxied connections of each direction; 0 = unlimited (the default of the two below). */
  readonly maxConnections: number;
  /** Open inbound connections; 0 = unlimited. Past it, new ones wait in the kernel backlog. */
  readonly maxInboundConnections: number;
  /** Open outbound connections; 0 = unlimited. */
  readonly maxOutboundConnections: number;
  /** Connections in protocol detection, per direction; past it new ones skip detection (opaque). 0 = unlimited. */
  readonly maxDetectingConnections: number;
  /** File descriptors the engine leaves free for the admin server and Node.js; 0 = no descriptor budget. */
  readonly fdReserve: number;
  /** Bulk copy buffers (4 MiB each) the engine may hold; 0 = bulk streams are spliced. */
  readonly bulkBuffers: number;
  /** A forwarded connection with no byte either way for this long is closed; 0 = never. */
  readonly idleTimeoutMs: number;
  /** Metric series no connection used for this long are dropped; 0 = kept forever. */
  readonly metricsRetainIdleMs: number;
  /** Engine worker threads; 0 = available cores. */
  readonly workers: number;
  readonly logLevel: LogLevel;
  /** `auto` = text when stderr is a terminal, JSON otherwise (ts/observe/log-format.ts). */
  readonly logFormat: LogFormat;
  /**
   * The engine's trace filter (RUST_LOG-style directives, e.g.
   * `info,meshpipe_core[conn{target=10.0.0.5:3306}]=trace`); undefined =
   * derived from `logLevel` (debug/trace show every connection's stages).
   */
  readonly engineLog: string | undefined;
  readonly connectTimeoutMs: number;
  readonly inboundDetectTimeoutMs: number;
  readonly outboundDetectTimeoutMs: number;
  /** How long a silent client may wait before the server-first race starts; 0 = off. */
  readonly serverFirstGraceMs: number;
  readonly opaquePorts: readonly PortRange[];
  readonly defaultOpaquePorts: readonly PortRange[];
  readonly serverFirstCacheSize: number;
  readonly serverFirstTtlMs: number;
  /** Per-port detect timeouts (first match wins over the direction's; a policy rule's own timeout wins over these). */
  readonly portDetectTimeouts: readonly PortDetectTimeout[];
  /** The admin server's address, or null when it is turned off (`off`). */
  readonly admin: SocketAddr | null;
  readonly maxMetricTargets: number;
  /** Whether POST /shutdown on the admin server is enabled (loopback peers only). */
  readonly adminShutdown: boolean;
  /** Serve /connections, /snapshot and /policy to any peer (default: loopback peers only). */
  readonly adminExposeDebug: boolean;
  /** On shutdown, how long inbound listeners keep accepting after /ready turned 503. */
  readonly inboundStopDelayMs: number;
  /** For every key: where its value came from (`default`, a file path, an env var, a flag). */
  readonly sources: Readonly<Record<ConfigKey, string>>;
  /** Things the user should know, found while loading (unknown env vars, ignored options); the CLI logs them. */
  readonly warnings: readonly string[];
}

/** A raw value and a human label for where it came from. */
export interface RawValue {
  readonly value: unknown;
  readonly source: string;
}

/** One source of raw values, keyed by config key (camelCase). */
export type RawLayer = Partial<Record<ConfigKey, RawValue>>;


const CONNECTIONS = 'a whole number 0-10000000 (0 = unlimited)';
const FD_RESERVE = 'a whole number of descriptors 0-1000000 (0 = no descriptor budget)';
const BULK_BUFFERS = 'a whole number of 4 MiB buffers 0-1024 (0 = splice bulk streams)';
const IDLE = 'a duration like 1h or 30m (0 = never)';
const RETAIN = 'a duration like 10m (0 = keep series forever)';

/** Keys without a default of their own, and what they fall back to (for `--help`). */
const FALLBACKS: Partial<Record<string, string>> = {
  inboundDetectTimeout: 'the value of detectTimeout',
  outboundDetectTimeout: 'the value of detectTimeout',
  maxInboundConnections: 'the value of maxConnections',
  maxOutboundConnections: 'the value of maxConnections',
};

/** Every key: its schema, its default (as a user would write it) and what is expected. */
const FIELDS = {
  forward: { schema: forwardList, default: [] as string[], expected: 'BIND=TARGET[,mode=M][,direction=D], e.g. 127.0.0.1:15432=127.0.0.1:5432,mode=opaque' },
  drainTimeout: { schema: duration('a duration like 30s, 500ms or 5m', { min: 0 }), default: '30s', expected: 'a duration like 30s, 500ms or 5m' },
  maxConnections: { schema: count(CONNECTIONS, 0, 10_000_000), default: 0, expected: CONNECTIONS },
  maxInboundConnections: { schema: count(CONNECTIONS, 0, 10_000_000).optional(), default: undefined, expected: CONNECTIONS },
  maxOutboundConnections: { schema: count(CONNECTIONS, 0, 10_000_000).optional(), default: undefined, expected: CONNECTIONS },
  maxDetectingConnections: { schema: count(CONNECTIONS, 0, 10_000_000), default: 1024, expected: CONNECTIONS },
  fdReserve: { schema: count(FD_RESERVE, 0, 1_000_000), default: 128, expected: FD_RESERVE },
  bulkBuffers: { schema: count(BULK_BUFFERS, 0, 1024), default: 4, expected: BULK_BUFFERS },
  idleTimeout: { schema: duration(IDLE, { min: 0 }), default: '1h', expected: IDLE },
  metricsRetainIdle: { schema: duration(RETAIN, { min: 0 }), default: '10m', expected: RETAIN },
  workers: { schema: count('a whole number of threads 0-1024 (0 = one per core)', 0, 1024), default: 0, expected: 'a whole number of threads 0-1024 (0 = one per core)' },
  logLevel: { schema: logLevel, default: 'info', expected: `one of ${LOG_LEVELS.join(', ')}` },
  logFormat: { schema: logFormat, default: 'auto', expected: `one of ${LOG_FORMATS.join(', ')}` },
  engineLog: { schema: engineLogFilter.optional(), default: undefined, expected: ENGINE_LOG },
  connectTimeout: { schema: duration(DURATION, { min: 1 }), default: '10s', expected: DURATION },
  detectTimeout: { schema: duration(DURATION, { min: 1 }), default: '10s', expected: DURATION },
  inboundDetectTimeout: { schema: duration(DURATION, { min: 1 }).optional(), default: undefined, expected: DURATION },
  outboundDetectTimeout: { schema: duration(DURATION, { min: 1 }).optional(), default: undefined, expected: DURATION },
  serverFirstGrace: { schema: duration('a duration like 100ms (0 turns the server-first race off)', { min: 0 }), default: '100ms', expected: 'a duration like 100ms (0 turns the server-first race off)' },
  opaquePorts: { schema: portList, default: '', expected: PORTS },
  defaultOpaquePorts: { schema: portList, default: DEFAULT_OPAQUE_PORTS, expected: PORTS },
  serverFirstCacheSize: { schema: count('a whole number of targets 0-1000000', 0, 1_000_000), default: 4096, expected: 'a whole number of targets 0-1000000' },
  serverFirstTtl: { schema: duration('a duration like 1h or 10m', { min: 1 }), default: '1h', expected: 'a duration like 1h or 10m' },
  portDetectTimeouts: { schema: portDetectTimeouts, default: [] as string[], expected: 'PORTS=DURATION entries, e.g. 8080=2s;outbound:9000-9100=500ms' },
  admin: { schema: admin, default: '127.0.0.1:4191', expected: 'host:port (IPv4 or [IPv6]) or "off"' },
  maxMetricTargets: { schema: count('a whole number of targets 1-1000000', 1, 1_000_000), default: 1000, expected: 'a whole number of targets 1-1000000' },
  adminShutdown: { schema: bool, default: true, expected: 'true or false' },
  adminExposeDebug: { schema: bool, default: false, expected: 'true or false' },
  inboundStopDelay: { schema: duration('a duration like 5s or 0 (stop at once)', { min: 0 }), default: '0s', expected: 'a duration like 5s or 0 (stop at once)' },
  ...SIDECAR_FIELDS,
  ...IDENTITY_FIELDS,
  ...HTTP_FIELDS,
  ...NAMES_FIELDS,
} as const;

export type ConfigKey = keyof typeof FIELDS;
export const CONFIG_KEYS = Object.keys(FIELDS) as ConfigKey[];

/** The schema over the merged raw values. */
export const ProxyConfigSchema = z.strictObject(
  Object.fromEntries(CONFIG_KEYS.map((k) => [k, FIELDS[k].schema])) as { [K in ConfigKey]: (typeof FIELDS)[K]['schema'] },
);

/** The default of each key as a user would write it (for `--help`). */
export function defaultText(key: ConfigKey): string {
  const d = FIELDS[key].default;
  if (d === undefined) return FALLBACKS[key] ?? 'none';
  if (Array.isArray(d)) return d.length === 0 ? 'none' : d.join(' ');
  return d === '' ? 'none' : String(d);
}

/** What a key expects, in words (for error messages and help). */
export function expectedText(key: ConfigKey): string {
  return FIELDS[key].expected;
}

/** `drainTimeout` -> `MESHPIPE_DRAIN_TIMEOUT`. */
export function envVarName(key: ConfigKey): string {
  return `MESHPIPE_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

// ---------------------------------------------------------------------------
// Sources.

/** The largest config file read (a config is a few hundred bytes). */
const MAX_CONFIG_BYTES = 1024 * 1024;

/**
 * Reads a YAML or JSON config file (JSON is YAML) into a layer; unknown keys
 * are errors. A regular file or a pipe given at start (`--config
 * <(generate)`), at most 1 MiB: a device or a folder is refused, naming it.
 */
export function readConfigFile(path: string): RawLayer {
  let text: string;
  try {
    text = isPipeSync(path) ? readPipeOnceSync(path, MAX_CONFIG_BYTES) : readWatchedTextSync(path, MAX_CONFIG_BYTES);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a folder' : err instanceof WatchedFileError && err.found !== undefined ? `it is ${err.found}` : (err as Error).message;
    throw new MeshpipeError('ERR_INVALID_CONFIG', `cannot read config file ${path}: ${why}; expected a YAML or JSON file`, { key: 'config', cause: err });
  }
  let data: unknown;
  try {
    data = parseYaml(text, { prettyErrors: true });
  } catch (err) {
    // One line: the parser's message without its code frame (the line and column say where).
    const why = (err as Error).message.split('\n')[0]!.replace(/:$/, '');
    throw new MeshpipeError('ERR_INVALID_CONFIG', `config file ${path} does not parse as YAML or JSON: ${why}`, {
      key: 'config',
      cause: err,
    });
  }
  if (data === null || data === undefined) return {};
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new MeshpipeError('ERR_INVALID_CONFIG', `config file ${path}: expected a mapping of keys to values at the top level`, {
      key: 'config',
    });
  }
  return objectLayer(data as Record<string, unknown>, `config file ${path}`);
}

/** Turns a plain object (a parsed file, or an object given by a library caller) into a layer. */
export function objectLayer(data: Record<string, unknown>, source: string): RawLayer {
  const layer: RawLayer = {};
  for (const [key, value] of Object.entries(data)) {
    if (!(CONFIG_KEYS as string[]).includes(key)) {
      const hint = closest(key, CONFIG_KEYS);
      // With a likely key, the 60 others are noise on a line meant to be read: the help lists them.
      const expected = hint
        ? 'the keys are the options of meshpipe proxy --help in camelCase (--drain-timeout: drainTimeout)'
        : `expected one of ${CONFIG_KEYS.join(', ')}`;
      throw new MeshpipeError('ERR_INVALID_CONFIG', `unknown key "${key}" in ${source}${hint ? ` (did you mean "${hint}"?)` : ''}: ${expected}`, { key });
    }
    layer[key as ConfigKey] = { value, source: `${source}, key ${key}` };
  }
  return layer;
}

/** Reads the `MESHPIPE_*` variables that name a config key; empty values are ignored. */
export function envLayer(env: NodeJS.ProcessEnv): RawLayer {
  const layer: RawLayer = {};
  for (const key of CONFIG_KEYS) {
    const name = envVarName(key);
    const value = env[name];
    if (value !== undefined && value.trim() !== '') layer[key] = { value, source: name };
  }
  return layer;
}

function defaultsLayer(): RawLayer {
  const layer: RawLayer = {};
  for (const key of CONFIG_KEYS) {
    const d = FIELDS[key].default;
    if (d !== undefined) layer[key] = { value: d, source: 'default' };
  }
  return layer;
}

// ---------------------------------------------------------------------------
// Merge and validate.

const SOURCE_RANK_DEFAULT = 0;

/**
 * Merges layers (lowest precedence first; defaults are added below them),
 * validates the result and returns a deeply frozen config.
 * @throws MeshpipeError ERR_INVALID_CONFIG naming key, value, expectation, source.
 */
export function resolveConfig(layers: readonly RawLayer[], extraWarnings: readonly string[] = []): ProxyConfig {
  const all = [defaultsLayer(), ...layers];
  const merged: Partial<Record<ConfigKey, RawValue & { rank: number }>> = {};
  all.forEach((layer, rank) => {
    for (const key of CONFIG_KEYS) {
      const raw = layer[key];
      if (raw !== undefined) merged[key] = { ...raw, rank };
    }
  });
  const input = Object.fromEntries(Object.entries(merged).map(([k, v]) => [k, v.value]));
  const result = ProxyConfigSchema.safeParse(input);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const key = String(issue.path[0] ?? '') as ConfigKey;
    const raw = merged[key];
    // A bad entry of a list is shown alone (an item of the forward list).
    const item: unknown = issue.code === 'custom' && issue.params?.['item'] !== undefined ? issue.params['item'] : raw?.value;
    const why = issue.code === 'custom' ? issue.message : `expected ${FIELDS[key]?.expected ?? 'a valid value'}`;
    throw new MeshpipeError('ERR_INVALID_CONFIG', `invalid ${key} ${showValue(item)} (from ${raw?.source ?? 'unknown source'}): ${why}`, {
      key,
    });
  }
  const v = result.data;
  // A per-direction detect timeout wins over detectTimeout only when it was
  // given by a source at least as strong: `--detect-timeout` beats a file's
  // inboundDetectTimeout, a flag's `--inbound-detect-timeout` beats both.
  const detectRank = merged.detectTimeout?.rank ?? SOURCE_RANK_DEFAULT;
  const perDirection = (key: 'inboundDetectTimeout' | 'outboundDetectTimeout'): number => {
    const own = v[key];
    return own !== undefined && (merged[key]?.rank ?? -1) >= detectRank ? own : v.detectTimeout;
  };
  // The same for the per-direction connection limits and maxConnections.
  const connectionsRank = merged.maxConnections?.rank ?? SOURCE_RANK_DEFAULT;
  const perDirectionLimit = (key: 'maxInboundConnections' | 'maxOutboundConnections'): number => {
    const own = v[key];
    return own !== undefined && (merged[key]?.rank ?? -1) >= connectionsRank ? own : v.maxConnections;
  };
  const sources = Object.fromEntries(CONFIG_KEYS.map((k) => [k, merged[k]?.source ?? 'default'])) as Record<ConfigKey, string>;
  const config: ProxyConfig = {
    forward: v.forward,
    drainTimeoutMs: v.drainTimeout,
    maxConnections: v.maxConnections,
    maxInboundConnections: perDirectionLimit('maxInboundConnections'),
    maxOutboundConnections: perDirectionLimit('maxOutboundConnections'),
    maxDetectingConnections: v.maxDetectingConnections,
    fdReserve: v.fdReserve,
    bulkBuffers: v.bulkBuffers,
    idleTimeoutMs: v.idleTimeout,
    metricsRetainIdleMs: v.metricsRetainIdle,
    workers: v.workers,
    logLevel: v.logLevel,
    logFormat: v.logFormat,
    engineLog: v.engineLog,
    connectTimeoutMs: v.connectTimeout,
    inboundDetectTimeoutMs: perDirection('inboundDetectTimeout'),
    outboundDetectTimeoutMs: perDirection('outboundDetectTimeout'),
    serverFirstGraceMs: v.serverFirstGrace,
    opaquePorts: v.opaquePorts,
    defaultOpaquePorts: v.defaultOpaquePorts,
    serverFirstCacheSize: v.serverFirstCacheSize,
    serverFirstTtlMs: v.serverFirstTtl,
    portDetectTimeouts: v.portDetectTimeouts,
    admin: v.admin,
    maxMetricTargets: v.maxMetricTargets,
    adminShutdown: v.adminShutdown,
    adminExposeDebug: v.adminExposeDebug,
    inboundStopDelayMs: v.inboundStopDelay,
    ...sidecarConfig(v),
    ...identityConfig(v, (k) => sources[k]),
    ...httpConfig(v),
    ...namesConfig(v),
    sources,
    warnings: [],
  };
  const warnings = [
    ...extraWarnings,
    ...checkCombinations({ ...config, forwardDirections: config.forward.map((f) => f.direction) }),
  ];
  return deepFreeze({ ...config, warnings });
}

/**
 * Loads the config from every source: the file (if given), the environment,
 * then the flag layer built by ts/cli/args.ts.
 */
export function loadConfig(options: { configFile?: string; env?: NodeJS.ProcessEnv; flags?: RawLayer }): ProxyConfig {
  const layers: RawLayer[] = [];
  if (options.configFile !== undefined) layers.push(readConfigFile(options.configFile));
  const env = options.env ?? process.env;
  layers.push(envLayer(env));
  if (options.flags) layers.push(options.flags);
  return resolveConfig(layers, unknownEnvWarnings(env, CONFIG_KEYS.map(envVarName)));
}

/** Re-exported so callers can validate single addresses the same way the config does. */
export { parseBindAddr, parseTargetAddr, parseForward };



function showValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value as object)) deepFreeze(child);
  }
  return value;
}
