/**
 * ts/identity/: this proxy's mesh identity. name.ts checks identity names
 * and renders them from service accounts (shared with the policy layer);
 * load.ts reads the certificate, key and trust anchors and has the engine
 * check them; reloader.ts keeps the identity current as the files rotate,
 * keeping the last good one on a bad reload, and exposes its state for
 * /ready details and metrics.
 *
 * Other folders import from here.
 */
export { checkIdentityAtStart, IDENTITY_MESSAGES } from './start.js';
export { loadIdentity, MAX_PEM_BYTES, type LoadedIdentity } from './load.js';
export { IdentityReloader, RENEW_WARNING_FRACTION, type IdentityState, type IdentityReloaderOptions } from './reloader.js';
export {
  dialableIdentityProblem,
  identityProblem,
  identityPatternProblem,
  renderIdentity,
  namespacePattern,
  templateProblem,
  DEFAULT_IDENTITY_TEMPLATE,
} from './name.js';
