/**
 * The identity check at start: when a mesh identity is configured, it is
 * loaded and checked before anything binds, so bad identity files exit 2
 * (`ERR_IDENTITY`) naming the file and the reason, and a good one is logged
 * with its name, serial and expiry. The data path does not use it yet.
 */
import type { ProxyConfig } from '../config/index.js';
import type { Logger } from '../observe/index.js';
import { loadIdentity, type LoadedIdentity } from './load.js';

export const IDENTITY_MESSAGES = {
  loaded: 'identity loaded',
} as const;

/** Loads the configured identity (undefined when none is configured). */
export async function checkIdentityAtStart(config: ProxyConfig, logger: Logger): Promise<LoadedIdentity | undefined> {
  if (config.identity === undefined) return undefined;
  const loaded = await loadIdentity(config.identity, config.identityName);
  const { name, serial, notAfterMs } = loaded.info;
  logger.info({ identity: name, serial, notAfter: new Date(notAfterMs).toISOString(), cert: config.identity.cert }, IDENTITY_MESSAGES.loaded);
  return loaded;
}
