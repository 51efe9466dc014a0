/**
 * ts/sidecar/: the sidecar lifecycle shared by `meshpipe proxy` and
 * `meshpipe run` (lifecycle.ts): admin server first, the policy loaded before
 * the listeners bind, readiness, engine event logs, and the shutdown sequence
 * (/ready 503, inbound stop, drain, close) with its signal handling.
 *
 * It puts the other folders together: ts/config/ (what to run),
 * ts/engine/ (the proxy), ts/policy/ (the port policy and its updates) and
 * ts/observe/ (metrics, admin server, logs). Other folders import from here.
 */
export {
  Sidecar,
  runProxyLifecycle,
  handleSignals,
  forcedExitCode,
  checkInitState,
  LIFECYCLE_MESSAGES,
  STOP_SIGNALS,
  type SidecarOptions,
  type SignalHandlers,
  type StopSignal,
} from './lifecycle.js';
export { checkPolicyPathsExist } from './policy-paths.js';
export { GUARD_MESSAGES, INTERNAL_ERROR_REASON, installProcessGuard, uncaughtErrors } from './guard.js';
