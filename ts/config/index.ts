/**
 * ts/config/: the proxy's configuration, parsed and validated once.
 *
 * config.ts is the model (defaults < config file < `MESHPIPE_*` env < flags,
 * one frozen `ProxyConfig`); schemas.ts, forward.ts, sidecar.ts and identity.ts
 * define its fields; durations.ts and port-list.ts are the value parsers the config
 * shares with the policy layer and `meshpipe init`; watched-file.ts reads the
 * files a running proxy reads again (identity, policy files, the token) as
 * regular files only, bounded.
 *
 * Other folders import from here. The files of this folder import each other
 * directly, and schemas.ts and sidecar.ts take the CIDR parser from
 * ts/policy/cidr.ts itself rather than the policy entry (the policy layer reads
 * the config, so going through its entry would be an import cycle).
 */
export {
  loadConfig,
  resolveConfig,
  readConfigFile,
  envLayer,
  objectLayer,
  envVarName,
  defaultText,
  CONFIG_KEYS,
  type ProxyConfig,
  type ConfigKey,
  type RawLayer,
  type ForwardSpec,
  type TargetAddress,
  type SocketAddr,
  type PortMode,
  type Direction,
  type LogLevel,
} from './config.js';
export { closest } from './combinations.js';
export { hasPolicySources } from './sidecar.js';
export { hasIpv6Loopback } from './schemas.js';
export { NO_TTL_INTERVAL_MS, type NamesConfig } from './names.js';
export { parseBindAddr } from './forward.js';
export { LOG_FORMATS, LOG_LEVELS, type LogFormat } from './config.js';
export { DEFAULT_INBOUND_POLICIES, type DefaultInboundPolicy, type IdentityConfig, type IdentityFiles } from './identity.js';
export { DurationError, DURATION_UNITS, parseDuration, formatDuration } from './durations.js';
export { isOwnDescriptor, isPipe, isPipeSync, readOnceText, readPipeOnce, readPipeOnceBytesSync, readPipeOnceSync, readWatchedFile, readWatchedText, readWatchedTextSync, WatchedFileError, type WatchedFileErrorCode } from './watched-file.js';
export {
  parsePortList,
  parsePortListStrict,
  formatPortList,
  mergeRanges,
  portInRanges,
  DEFAULT_OPAQUE_PORTS,
  type PortRange,
  type PortNameResolver,
  type ParsedPortList,
} from './port-list.js';
