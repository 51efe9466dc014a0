/**
 * meshpipe's library API: embed the proxy in a Node.js program.
 *
 *   import { loadConfig, Proxy } from 'meshpipe';
 *   const config = loadConfig({ flags: objectLayer({ forward: ['127.0.0.1:0=127.0.0.1:5432'] }, 'app') });
 *   const proxy = Proxy.fromConfig(config);
 *   const bound = await proxy.start();
 *   ...
 *   await proxy.close({ drainMs: 5_000 });
 *
 * Everything exported here is stable API; other modules are internal (the
 * folders' index.ts files are the entries the folders use among themselves,
 * not API).
 */
export { Proxy, MeshpipeProxy, type ProxyState, type ProxyOptions } from './engine/index.js';
export {
  loadConfig,
  resolveConfig,
  readConfigFile,
  envLayer,
  objectLayer,
  envVarName,
  CONFIG_KEYS,
  type ProxyConfig,
  type ConfigKey,
  type RawLayer,
  type ForwardSpec,
  type SocketAddr,
  type PortMode,
  type Direction,
} from './config/index.js';
export { buildEngineConfig, PolicyLookup } from './engine/index.js';
export { flagsPolicy, compilePolicy, PolicyCompiler } from './policy/index.js';
export { parseProxyArgv, PROXY_OPTIONS } from './cli/index.js';
export { MeshpipeError, fromNative, ERROR_CODES, type ErrorCode } from './errors.js';
export { parseDuration, formatDuration } from './config/index.js';
export { parsePortList, parsePortListStrict, DEFAULT_OPAQUE_PORTS, type PortRange } from './config/index.js';
export type {
  EngineConfig,
  PolicyTable,
  EngineSnapshot,
  BoundListener,
  ConnectionInfo,
  CloseSummary,
} from './engine/index.js';
