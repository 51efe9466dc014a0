/**
 * `meshpipe run [proxy options] [--ready-timeout 30s] -- COMMAND [ARGS...]`:
 * the proxy as a sidecar *around* an application in the same container or
 * process tree, for apps and Jobs that must not start before the proxy and
 * must end it when they finish.
 *
 * 0. A COMMAND that is not an executable file (looked up in PATH as execvp
 *    does) exits 127 (not found) or 126 before anything starts.
 * 1. Start the proxy (admin server, every listener, the policy) and wait until
 *    it is ready, at most --ready-timeout. If it cannot start (bad config,
 *    address in use, timeout), the app is NOT started and meshpipe exits
 *    non-zero with the reason on stderr.
 * 2. Spawn the app with stdio inherited (same terminal, same pipes).
 * 3. SIGTERM, SIGINT and SIGHUP received by meshpipe are forwarded to the app
 *    (SIGINT only when stdin is not a terminal: at a terminal, Ctrl-C already
 *    reaches the app, which shares meshpipe's foreground process group).
 *    The first SIGTERM/SIGINT (or POST /shutdown, which sends the app SIGTERM)
 *    also starts the shutdown sequence of ts/sidecar/lifecycle.ts: /ready turns 503,
 *    inbound listeners stop after --inbound-stop-delay, outbound listeners keep
 *    accepting while the app still runs. A second SIGTERM/SIGINT is forwarded
 *    too; then the app is killed (SIGKILL), and once it is gone meshpipe exits
 *    with 128 + N: meshpipe never exits with its app still running.
 * 5. The app cannot outlive meshpipe: it is started with a parent-death
 *    signal (SIGKILL), so if meshpipe is killed, even by SIGKILL, so is the
 *    app. As PID 1 of a container, meshpipe also reaps the orphaned processes
 *    the kernel hands it, so no zombie piles up (ts/cli/app-process.ts).
 * 4. When the app exits, for whatever reason (a Job finishing, a crash, a
 *    signal), the proxy drains for up to --drain-timeout and meshpipe exits
 *    with the app's exit code; an app killed by signal N gives 128 + N, like a
 *    shell. A command that cannot be spawned all the same (removed in between)
 *    gives 127 (not found) or 126 after the drain.
 */
import { constants as osConstants } from 'node:os';
import { formatOptionsHelp, parseProxyArgv, PROXY_OPTIONS, wantsHelp, type OptionSpec } from './args.js';
import { DurationError, parseDuration } from '../config/index.js';
import { ERROR_CODES, MeshpipeError } from '../errors.js';
import { checkPolicyPathsExist, forcedExitCode, handleSignals, LIFECYCLE_MESSAGES, Sidecar, STOP_SIGNALS, uncaughtErrors } from '../sidecar/index.js';
import { AppProcess, findCommand } from './app-process.js';
import type { Logger } from '../observe/index.js';
import { checkIdentityAtStart } from '../identity/index.js';
import { startLogger } from './proxy.js';

/** Default bound on the wait for the proxy to become ready. */
export const DEFAULT_READY_TIMEOUT_MS = 30_000;

export const RUN_OPTIONS: readonly OptionSpec[] = [
  { flag: 'ready-timeout', type: 'string', valueName: 'DURATION', help: 'give up (and never start the command) if the proxy is not ready within this long', defaultText: '30s' },
];

export const RUN_MESSAGES = {
  appStarted: 'app started',
  appExited: 'app exited',
  appSpawnFailed: 'app could not be started',
  signalForwarded: 'signal forwarded to the app',
  appKilled: 'second stop signal: killing the app before exiting',
} as const;

export function runHelp(): string {
  return [
    'Usage: meshpipe run --forward BIND=TARGET [--forward ...] [proxy options] [--ready-timeout DURATION] -- COMMAND [ARGS...]',
    '',
    'Starts the proxy (its --forward listeners; the sidecar layout is for `meshpipe proxy`), waits until it',
    'is ready, then runs COMMAND with stdio inherited.',
    'SIGTERM, SIGINT and SIGHUP are forwarded to COMMAND. When COMMAND exits, the proxy',
    'drains for up to --drain-timeout and meshpipe exits with COMMAND\'s exit code',
    '(128 + N if it was killed by signal N). If the proxy cannot start, COMMAND is not run.',
    '',
    'Options:',
    formatOptionsHelp([...PROXY_OPTIONS, ...RUN_OPTIONS]),
    '',
  ].join('\n');
}

/** The exit code a shell would report for a child's exit. */
export function exitCodeOf(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  if (signal !== null) return 128 + (osConstants.signals[signal] ?? 0);
  return 1;
}

function parseReadyTimeout(value: string | boolean | string[] | undefined): number {
  if (value === undefined) return DEFAULT_READY_TIMEOUT_MS;
  let ms: number;
  try {
    ms = parseDuration(String(value));
  } catch (err) {
    const hint = err instanceof DurationError ? `; ${err.hint}` : '';
    throw new MeshpipeError('ERR_INVALID_ARGUMENT', `invalid --ready-timeout "${String(value)}": expected a positive duration like 30s, 500ms or 2m${hint}`, { key: 'readyTimeout' });
  }
  if (ms < 1) throw new MeshpipeError('ERR_INVALID_ARGUMENT', `invalid --ready-timeout "${String(value)}": expected a positive duration like 30s, 500ms or 2m`, { key: 'readyTimeout' });
  return ms;
}

/** Entry point of `meshpipe run`; resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) {
    process.stdout.write(runHelp());
    return 0;
  }
  const { config, rest, extra } = parseProxyArgv(argv, { extraOptions: RUN_OPTIONS, command: 'meshpipe run' });
  const readyTimeoutMs = parseReadyTimeout(extra['ready-timeout']);
  const [command, ...args] = rest;
  if (command === undefined) {
    throw new MeshpipeError('ERR_INVALID_ARGUMENT', 'no command to run: expected meshpipe run [options] -- COMMAND [ARGS...]');
  }
  if (config.forward.length === 0) {
    throw new MeshpipeError('ERR_INVALID_CONFIG', 'no listeners configured: expected at least one --forward BIND=TARGET (or "forward" in the config file, or MESHPIPE_FORWARD)', { key: 'forward' });
  }
  // A command that cannot run is reported before the proxy starts: nothing listens, one line.
  // An empty name is no command (a path search would find the folders themselves).
  const missing = command === '' ? 'ENOENT' : findCommand(command, process.env['PATH']);
  if (missing !== undefined) {
    const why = command === ''
      ? 'the command name is empty: expected meshpipe run [options] -- COMMAND [ARGS...]'
      : missing === 'ENOENT'
        ? `command not found${command.includes('/') ? ' (no such file)' : ' (not in any folder of PATH)'}`
        : 'permission denied (not an executable file)';
    const code = missing === 'ENOENT' ? 'ERR_COMMAND_NOT_FOUND' : 'ERR_COMMAND_NOT_EXECUTABLE';
    process.stderr.write(`meshpipe run: error: cannot run ${command === '' ? '""' : command}: ${why}; the proxy was not started (${code})\n`);
    return ERROR_CODES[code];
  }
  await checkPolicyPathsExist(config);
  const logger = startLogger(config);
  await checkIdentityAtStart(config, logger);
  return runApp(new Sidecar(config, logger), logger, command, args, readyTimeoutMs);
}

/** How long a forced exit waits for the SIGKILLed app to be reaped. */
const FORCED_KILL_WAIT_MS = 5_000;

/** Starts the sidecar, then the app; returns the app's exit code after the drain. */
export async function runApp(sidecar: Sidecar, logger: Logger, command: string, args: readonly string[], readyTimeoutMs: number): Promise<number> {
  let app: AppProcess | undefined;
  let stoppedBy: NodeJS.Signals | undefined;
  const interactive = process.stdin.isTTY === true;
  const remove = handleSignals(logger, {
    extra: ['SIGHUP'],
    openConnections: () => sidecar.openConnections(),
    onSignal: (signal) => {
      if (app === undefined || !app.running) return;
      // Ctrl-C at a terminal already sent SIGINT to the whole foreground process group, app
      // included; forwarding it again would look like a second Ctrl-C (force quit) to many apps.
      if (signal === 'SIGINT' && interactive) return;
      logger.info({ signal, appPid: app.pid }, RUN_MESSAGES.signalForwarded);
      app.kill(signal);
    },
    onStop: (signal) => {
      stoppedBy = signal;
      sidecar.requestShutdown(signal);
    },
    // A second signal: the app got it too (onSignal), but it may ignore it.
    // Kill it and wait until it is gone, so meshpipe never exits with the app
    // still running, then leave with 128 + N.
    onForced: (signal) => {
      const code = forcedExitCode(signal);
      if (app === undefined || !app.running) process.exit(code);
      logger.warn({ appPid: app.pid, signal: 'SIGKILL' }, RUN_MESSAGES.appKilled);
      app.kill('SIGKILL');
      const bound = new Promise((resolve) => setTimeout(resolve, FORCED_KILL_WAIT_MS).unref());
      void Promise.race([app.exited, bound]).then(() => process.exit(code));
    },
  });
  try {
    await startWithin(sidecar, readyTimeoutMs);
    if (stoppedBy !== undefined) {
      // Stopped while starting: the app never runs.
      await sidecar.drain();
      return forcedExitCode(stoppedBy);
    }

    const started = AppProcess.start(command, args, process.env, logger);
    if (!(started instanceof AppProcess)) {
      const code = started.errno === 'ENOENT' ? 127 : 126;
      logger.error({ command, err: started.message, exitCode: code }, RUN_MESSAGES.appSpawnFailed);
      process.stderr.write(`meshpipe run: error: cannot run ${command}: ${started.errno === 'ENOENT' ? 'command not found' : started.message}\n`);
      sidecar.requestShutdown('app could not be started');
      await sidecar.drain();
      return code;
    }
    app = started;
    const running = started;
    logger.info({ appPid: running.pid, command, argc: args.length, pid1: process.pid === 1 }, RUN_MESSAGES.appStarted);
    const exited = running.exited.then(({ code, signal }) => {
      const exitCode = exitCodeOf(code, signal);
      logger.info({ appPid: running.pid, code, signal, exitCode }, RUN_MESSAGES.appExited);
      return exitCode;
    });

    // A shutdown not caused by a signal (POST /shutdown, an internal error)
    // asks the app to stop too; signals were already forwarded by onSignal.
    sidecar.shutdownRequested
      .then((reason) => {
        if (!running.running) return;
        if (!(STOP_SIGNALS as readonly string[]).includes(reason)) running.kill('SIGTERM');
        logger.info({ reason, appPid: running.pid }, LIFECYCLE_MESSAGES.waitingForApp);
      })
      .catch((err: unknown) => logger.error({ err, appPid: running.pid }, 'stopping the app on shutdown failed'));
    const exitCode = await exited;
    sidecar.requestShutdown('app exited');
    await sidecar.drain(exited);
    // After an uncaught exception the proxy drained: 1, whatever the app said (ts/sidecar/guard.ts).
    return uncaughtErrors.exception > 0 ? 1 : exitCode;
  } finally {
    remove();
    // As PID 1, orphans may still exit while meshpipe drains: keep reaping until here.
    app?.dispose();
  }
}

/** Starts the sidecar; if it is not ready in time, closes what was bound and throws. */
async function startWithin(sidecar: Sidecar, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new MeshpipeError('ERR_STARTUP', `the proxy was not ready within ${timeoutMs}ms (--ready-timeout); the command was not started`)),
      timeoutMs,
    );
  });
  const starting = sidecar.start();
  try {
    await Promise.race([starting, timeout]);
  } catch (err) {
    // On a timeout the start may still complete later: close whatever it bound.
    // (A start that fails after the timeout is already reported by the timeout.)
    starting
      .then(() => sidecar.drain(), () => undefined)
      .catch((e: unknown) => sidecar.logger.warn({ err: e }, 'closing what a late start-up bound failed'));
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
