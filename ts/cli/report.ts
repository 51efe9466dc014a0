/**
 * How every command reports a failure or a warning on stderr, in one shape:
 *
 *   meshpipe proxy: error: invalid drainTimeout "10" (from --drain-timeout): ... (ERR_INVALID_CONFIG)
 *   meshpipe init: warning: ...
 *
 * The command names itself (so a script that runs several knows which one
 * failed), `error:`/`warning:` says how bad it is, and the stable code at the
 * end is what scripts match (ts/errors.ts). Logs of a running proxy are
 * another channel (ts/observe/logger.ts).
 */
import { MeshpipeError } from '../errors.js';

/** `meshpipe` or `meshpipe <command>`. */
export function commandName(command: string | undefined): string {
  return command === undefined ? 'meshpipe' : `meshpipe ${command}`;
}

/** The line for an error that ends the command (with a newline). */
export function errorLine(command: string | undefined, err: unknown): string {
  const who = commandName(command);
  if (err instanceof MeshpipeError) return `${who}: error: ${err.message} (${err.code})\n`;
  return `${who}: error: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`;
}

/** The line for a warning (with a newline). */
export function warningLine(command: string | undefined, message: string): string {
  return `${commandName(command)}: warning: ${message}\n`;
}
