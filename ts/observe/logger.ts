/**
 * The proxy's structured logger: pino, one JSON object per line, on
 * **stderr**.
 *
 * Every log line goes to stderr, the operator's channel, so stdout belongs to
 * what a command prints as its result (`meshpipe explain`, `meshpipe inject`)
 * and, under `meshpipe run`, to the app alone: the app's stdout is never
 * interleaved with the proxy's lines. The format is `--log-format`: JSON
 * (pino's shape, for log collectors; the default when stderr is not a
 * terminal, as in a container) or text for a human at a terminal
 * (ts/observe/log-format.ts); the engine's trace lines follow the same
 * format on the same stream. Fatal CLI errors that end the process are
 * printed by the CLI as `meshpipe <command>: error: <message> (<CODE>)`.
 *
 * Writes are synchronous: meshpipe logs a handful of lines per lifecycle
 * event and nothing per connection at info level, and synchronous writes
 * guarantee that the last lines (drain finished) reach the pipe before exit.
 */
import { pino, destination as pinoDestination, stdTimeFunctions, type Logger, type DestinationStream } from 'pino';
import { writeSync } from 'node:fs';
import type { LogLevel } from '../config/index.js';
import { renderTextLine } from './log-format.js';

export type { Logger };

/** Well-known log messages; tests and tools match on these exact strings. */
export const LOG_MESSAGES = {
  listenerBound: 'listener bound',
  proxyReady: 'proxy ready',
  drainStarted: 'drain started',
  drainFinished: 'drain finished',
  forcedExit: 'second signal: exiting now',
  serverFirstLearned: 'server-first target learned',
} as const;

/** Writes each line to a file descriptor, rendered as text. */
function textDestination(fd: number): DestinationStream {
  return {
    write(line: string): void {
      writeAll(fd, renderTextLine(line));
    },
  };
}

function writeAll(fd: number, text: string): void {
  const bytes = Buffer.from(text);
  for (let at = 0; at < bytes.length; ) {
    try {
      at += writeSync(fd, bytes, at);
    } catch (err) {
      // A non-blocking pipe that is full: try again (pino's own sync destination does the same).
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') return;
    }
  }
}

/**
 * Creates the logger.
 * @param level from the config (`silent` disables logging).
 * @param destination a stream of its own (tests); by default stderr (fd 2),
 *   synchronous, as JSON lines or, with `format: 'text'`, rendered for a human.
 */
export function createLogger(level: LogLevel, destination?: DestinationStream | { format: 'json' | 'text' }): Logger {
  const stream =
    destination !== undefined && 'write' in destination
      ? destination
      : destination?.format === 'text'
        ? textDestination(2)
        : pinoDestination({ dest: 2, sync: true });
  return pino(
    {
      level,
      base: { pid: process.pid, name: 'meshpipe' },
      timestamp: stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    stream,
  );
}
