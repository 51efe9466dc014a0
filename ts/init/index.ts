/**
 * ts/init/: the iptables rules of `meshpipe init` (the proxy-init step that
 * redirects a pod's TCP through the sidecar).
 *
 * rules.ts plans them: the exact ordered rules, the `iptables-restore` input,
 * and the comparison with what is installed; it is pure and runs nothing.
 * apply.ts executes the plans (backend detection, privilege checks, one
 * atomic `iptables-restore --noflush` per address family, read-back).
 * state.ts records what was exempted (`--write-state`) for the proxy to check.
 * The command itself (flags, annotations, both families) is ts/cli/init.ts.
 *
 * Other folders import from here.
 */
export {
  DEFAULTS,
  INBOUND_CHAIN,
  OUTPUT_CHAIN,
  cidrFamily,
  planInstall,
  renderInstall,
  type IpFamily,
  type RulePlan,
  type RulePlanOptions,
} from './rules.js';
export {
  applyInstall,
  commandForFamily,
  prepareInstall,
  probeFamily,
  readNatState,
  detectTool,
  restoreShellText,
  uninstallFamily,
  type FamilyResult,
  type PreparedInstall,
} from './apply.js';
export { initStateMismatches, initStateOf, readInitState, writeInitState, type InitState, type ProxyIdentity } from './state.js';
