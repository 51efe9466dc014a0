/**
 * The proxy's structured logger: pino, one JSON object per line.
 *
 * Where logs go (a deliberate split): structured logs (listener bound, drain
 * started/finished, policy events) are JSON lines on **stdout**, so a log
 * collector or a test can parse every line; fatal CLI errors that end the
 * process (bad flags, invalid config, address in use) are plain text on
 * **stderr** as `meshpipe: <message> (<CODE>)`, for the human at the terminal.
 *
 * Writes are synchronous: meshpipe logs a handful of lines per lifecycle
 * event and nothing per connection at info level, and synchronous writes
 * guarantee that the last lines (drain finished) reach the pipe before exit.
 */
import { pino, destination as pinoDestination, stdTimeFunctions, type Logger, type DestinationStream } from 'pino';
import type { LogLevel } from '../config/index.js';

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

/**
 * Creates the logger.
 * @param level from the config (`silent` disables logging).
 * @param destination defaults to stdout (fd 1), synchronous.
 */
export function createLogger(level: LogLevel, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid, name: 'meshpipe' },
      timestamp: stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pinoDestination({ dest: 1, sync: true }),
  );
}
