/**
 * The app of `meshpipe run`, as a process that cannot outlive meshpipe.
 *
 * - It is spawned by the addon (`spawnApp`), which sets `PR_SET_PDEATHSIG`
 *   (SIGKILL) between fork and exec, something Node's `child_process.spawn`
 *   cannot do: if meshpipe dies, even by SIGKILL, the kernel kills the app.
 *   The signal is tied to the thread that forked, so `start()` must run on
 *   the main thread (it does: JavaScript calls the addon synchronously).
 * - libuv does not know the child, so it is reaped here, on SIGCHLD.
 * - As PID 1 (a container whose entrypoint is `meshpipe run`), the kernel
 *   hands every orphaned process of the container to meshpipe; each SIGCHLD
 *   then reaps every exited child (orphans included) except those libuv owns
 *   (`keep`: none in `meshpipe run`), so no zombie piles up. Without PID 1
 *   only the app's own pid is ever waited for, so no other child's status can
 *   be taken.
 */
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { reapChildren, spawnApp } from '../engine/index.js';
import type { Logger } from '../observe/index.js';

export interface AppExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export const APP_PROCESS_MESSAGES = {
  orphansReaped: 'orphaned processes reaped',
  reapFailed: 'reaping child processes failed',
} as const;

function signalName(n: number): NodeJS.Signals | null {
  const entry = Object.entries(osConstants.signals).find(([, v]) => v === n);
  return (entry?.[0] as NodeJS.Signals | undefined) ?? null;
}

/**
 * Whether `command` could be executed, looked up as execvp(3) does: a name
 * with a `/` as a path, any other name in each folder of `path` (an empty
 * entry is the current folder). `ENOENT` when it is nowhere, `EACCES` when
 * only files that are not executable (or folders) have that name, undefined
 * when an executable file is found, or when there is no PATH to search (the
 * spawn then uses the system's default path and reports for itself).
 * `meshpipe run` asks this before it starts the proxy, so a typo in the
 * command is reported before anything listens.
 */
export function findCommand(command: string, path: string | undefined): 'ENOENT' | 'EACCES' | undefined {
  const candidates = command.includes('/') ? [command] : path === undefined ? [] : path.split(':').map((dir) => join(dir === '' ? '.' : dir, command));
  if (!command.includes('/') && path === undefined) return undefined;
  let denied = false;
  for (const file of candidates) {
    let isFile: boolean;
    try {
      isFile = statSync(file).isFile();
    } catch {
      continue;
    }
    try {
      accessSync(file, fsConstants.X_OK);
      if (isFile) return undefined;
    } catch {
      // exists, not executable
    }
    denied = true;
  }
  return denied ? 'EACCES' : 'ENOENT';
}

export class AppProcess {
  readonly pid: number;
  /** Resolves once the app has exited and was reaped. */
  readonly exited: Promise<AppExit>;
  #resolve!: (exit: AppExit) => void;
  #exit: AppExit | undefined;
  readonly #asInit: boolean;
  readonly #logger: Logger;
  readonly #onChild: () => void;
  /** Orphans reaped so far (PID 1 only). */
  orphansReaped = 0;

  private constructor(pid: number, logger: Logger, asInit: boolean, onChild: () => void) {
    this.pid = pid;
    this.#onChild = onChild;
    this.#logger = logger;
    this.#asInit = asInit;
    this.exited = new Promise((resolve) => (this.#resolve = resolve));
  }

  /**
   * Spawns `command` with stdio inherited and `env` as its whole environment.
   * Returns the errno name (`ENOENT`, `EACCES`, ...) and message when it
   * cannot be started.
   */
  static start(command: string, args: readonly string[], env: NodeJS.ProcessEnv, logger: Logger): AppProcess | { errno: string; message: string } {
    const asInit = process.pid === 1;
    const clean: Record<string, string> = {};
    for (const [k, v] of Object.entries(env)) if (v !== undefined) clean[k] = v;
    // Listen before spawning: a SIGCHLD handler must be installed (an
    // inherited SIG_IGN would make the kernel discard the app's exit status),
    // and the reap() below picks up an exit that happened in between.
    const holder: { app?: AppProcess } = {};
    const onChild = (): void => holder.app?.reap();
    process.on('SIGCHLD', onChild);
    let outcome;
    try {
      outcome = spawnApp({ command, args: [...args], env: clean });
    } catch (err) {
      process.off('SIGCHLD', onChild);
      throw err;
    }
    if (outcome.kind === 'failed') {
      process.off('SIGCHLD', onChild);
      return { errno: outcome.errno, message: outcome.message };
    }
    const app = new AppProcess(outcome.pid, logger, asInit, onChild);
    holder.app = app;
    app.reap();
    return app;
  }

  /** True until the app has exited (and was reaped). */
  get running(): boolean {
    return this.#exit === undefined;
  }

  /** Sends `signal` to the app if it still runs (its pid cannot have been reused: it is not reaped yet). */
  kill(signal: NodeJS.Signals): boolean {
    if (!this.running) return false;
    try {
      process.kill(this.pid, signal);
      return true;
    } catch {
      return false;
    }
  }

  /** Reaps what has exited; resolves `exited` when the app is among it. */
  reap(): void {
    let reaped;
    try {
      reaped = this.#asInit ? reapChildren(undefined, []) : this.running ? reapChildren(this.pid) : [];
    } catch (err) {
      this.#logger.warn({ err }, APP_PROCESS_MESSAGES.reapFailed);
      return;
    }
    let orphans = 0;
    for (const r of reaped) {
      if (r.pid === this.pid) {
        this.#exit = { code: r.code, signal: r.signal === null ? null : signalName(r.signal) };
        this.#resolve(this.#exit);
      } else {
        orphans++;
      }
    }
    if (orphans > 0) {
      this.orphansReaped += orphans;
      this.#logger.debug({ reaped: orphans, total: this.orphansReaped }, APP_PROCESS_MESSAGES.orphansReaped);
    }
  }

  /** Stops listening for SIGCHLD. */
  dispose(): void {
    process.off('SIGCHLD', this.#onChild);
  }
}
