/**
 * `meshpipe proxy`: run the proxy in the foreground until a signal.
 *
 * Order of events, and why:
 * 1. Parse and validate the whole config (defaults < file < env < flags).
 *    Invalid input throws ERR_INVALID_CONFIG / ERR_INVALID_ARGUMENT (exit 2)
 *    before anything is bound, so nothing ever listens on a bad config.
 *    A configured mesh identity (--identity-dir, ...) is loaded and checked
 *    here too: bad identity files exit 2 naming the file and the reason.
 * 2. Install SIGTERM/SIGINT handlers *before* binding, so a signal that
 *    arrives during startup still drains instead of killing the process.
 * 3. Start the engine; log one `listener bound` line per listener (with
 *    the bound address, so port 0 binds are discoverable), then `proxy ready`.
 *    A bind failure (e.g. ERR_ADDR_IN_USE, naming the address) exits 1.
 * 4. On the first SIGTERM/SIGINT or POST /shutdown (admin server, loopback
 *    only): /ready turns 503, inbound listeners stop after inboundStopDelay,
 *    then `drain started`, open connections finish for up to drainTimeout,
 *    the rest are closed, `drain finished`, exit 0 (ts/sidecar/lifecycle.ts).
 * 5. A second SIGTERM/SIGINT during the drain exits at once with the shell
 *    convention 128 + signal number: 130 for SIGINT, 143 for SIGTERM.
 */
import { parseProxyArgv, proxyHelp, wantsHelp } from './args.js';
import type { ProxyConfig } from '../config/index.js';
import { MeshpipeError } from '../errors.js';
import { createLogger, effectiveLogFormat, type Logger } from '../observe/index.js';
import { checkPolicyPathsExist, runProxyLifecycle } from '../sidecar/index.js';
import { checkIdentityAtStart } from '../identity/index.js';
import { checkExemptUid } from '../sidecar/exempt-uid.js';

export { forcedExitCode } from '../sidecar/index.js';

/** Entry point of `meshpipe proxy`; resolves with the process exit code. */
export async function main(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) {
    process.stdout.write(proxyHelp());
    return 0;
  }
  const { config, rest } = parseProxyArgv(argv);
  if (rest.length > 0) {
    throw new MeshpipeError(
      'ERR_INVALID_ARGUMENT',
      `unexpected arguments after --: ${rest.join(' ')} (meshpipe proxy runs no command; use meshpipe run -- COMMAND)`,
    );
  }
  if (config.forward.length === 0 && config.inbound === null && config.outbound === null) {
    throw new MeshpipeError(
      'ERR_INVALID_CONFIG',
      'no listeners configured: expected --forward BIND=TARGET, or the sidecar layout (--inbound and/or --outbound not both off)',
      { key: 'forward' },
    );
  }
  await checkPolicyPathsExist(config);
  // As root after `meshpipe init`, the proxy would forward its own connections to itself.
  await checkExemptUid(config);
  const logger = startLogger(config);
  await checkIdentityAtStart(config, logger);
  return runProxy(config, logger);
}

/**
 * The logger of a proxy config (stderr, `--log-format`), with the warnings
 * found while loading the config already logged.
 */
export function startLogger(config: ProxyConfig): Logger {
  const logger = createLogger(config.logLevel, { format: effectiveLogFormat(config.logFormat) });
  for (const warning of config.warnings) logger.warn(warning);
  return logger;
}

/**
 * Runs a proxy for a validated config until a stop signal or POST /shutdown;
 * returns the exit code. The admin server, readiness, engine event logs and
 * the shutdown sequence live in ts/sidecar/lifecycle.ts (shared with `meshpipe run`).
 */
export function runProxy(config: ProxyConfig, logger: Logger): Promise<number> {
  return runProxyLifecycle(config, logger);
}
