/**
 * The process-level guard: what happens to an error nobody caught.
 *
 * Every async path of the proxy handles its own errors (file watches, the
 * Kubernetes watch, timers, the admin server and event polling each log and
 * go on); this guard is the last line for the ones that slip through, so
 * that such a bug never takes the data path down without a drain. The
 * engine forwards bytes on its own threads and does not depend on the
 * JavaScript state an error may have left behind, which decides the policy:
 *
 * - `unhandledRejection`: a promise failed with nobody listening. The
 *   operation it belonged to is over and left nothing half-done on the
 *   stack: logged (`unhandled rejection`, level error, `action: "keep serving"`),
 *   counted, and the proxy keeps serving.
 * - `uncaughtException`: a throw unwound some handler midway, so the control
 *   layer's state may be inconsistent (a watch half-updated, a timer gone):
 *   logged (`uncaught exception`, level fatal, `action: "drain"`), counted,
 *   and the shutdown sequence starts as on SIGTERM (/ready 503, inbound
 *   stop, drain within --drain-timeout). The process then exits 1
 *   (`ERR_INTERNAL`), so the orchestrator restarts it. Should the drain
 *   itself be stuck, the process exits 1 at a hard deadline (drain timeout
 *   plus inbound stop delay plus 10 s). Later uncaught exceptions during the
 *   drain are logged and counted; the drain goes on.
 * - With no proxy running yet (start-up, or a command that is not a proxy),
 *   an uncaught exception is printed on stderr and the process exits 1 at once.
 *
 * `installProcessGuard()` is called once by the CLI entry (ts/cli/main.ts);
 * a running sidecar registers itself with `guardSidecar()`.
 */
import type { Logger } from '../observe/index.js';

export const GUARD_MESSAGES = {
  uncaughtException: 'uncaught exception',
  unhandledRejection: 'unhandled rejection',
} as const;

/** The shutdown reason an uncaught exception gives; the lifecycle then exits 1. */
export const INTERNAL_ERROR_REASON = 'uncaught exception';

/** Extra time, past the drain, before a stuck drain is cut by exiting. */
export const HARD_DEADLINE_EXTRA_MS = 10_000;

/** Errors the guard has seen, by kind (exported as meshpipe_uncaught_errors_total). */
export const uncaughtErrors = { exception: 0, rejection: 0 };

interface Guarded {
  readonly logger: Logger;
  /** Starts the shutdown sequence with this reason (idempotent). */
  requestShutdown(reason: string): void;
  /** How long the drain may take at most, in ms. */
  readonly drainBudgetMs: number;
}

let guarded: Guarded | undefined;
let installed = false;
let deadline: NodeJS.Timeout | undefined;

function errorFields(err: unknown): Record<string, unknown> {
  return err instanceof Error ? { err } : { err: { message: String(err) } };
}

function onException(err: unknown, origin: string): void {
  uncaughtErrors.exception++;
  const target = guarded;
  if (target === undefined) {
    process.stderr.write(`meshpipe: error: internal error (${origin}): ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  }
  // Whatever ends the process from here on (even an event loop that runs dry) reports the failure.
  process.exitCode = 1;
  target.logger.fatal({ ...errorFields(err), origin, action: 'drain', count: uncaughtErrors.exception }, GUARD_MESSAGES.uncaughtException);
  target.requestShutdown(INTERNAL_ERROR_REASON);
  deadline ??= setTimeout(() => {
    target.logger.fatal({ deadlineMs: target.drainBudgetMs + HARD_DEADLINE_EXTRA_MS }, 'drain after an uncaught exception did not finish: exiting');
    process.exit(1);
  }, target.drainBudgetMs + HARD_DEADLINE_EXTRA_MS).unref();
}

function onRejection(reason: unknown): void {
  uncaughtErrors.rejection++;
  const fields = { ...errorFields(reason), action: 'keep serving', count: uncaughtErrors.rejection };
  if (guarded) guarded.logger.error(fields, GUARD_MESSAGES.unhandledRejection);
  else process.stderr.write(`meshpipe: warning: ${GUARD_MESSAGES.unhandledRejection}: ${reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)}\n`);
}

/** Installs the process handlers (once per process). */
export function installProcessGuard(): void {
  if (installed) return;
  installed = true;
  process.on('uncaughtException', onException);
  process.on('unhandledRejection', onRejection);
}

/** Makes `target` the proxy an uncaught exception drains; returns a function that unregisters it. */
export function guardSidecar(target: Guarded): () => void {
  guarded = target;
  return () => {
    if (guarded === target) guarded = undefined;
  };
}
