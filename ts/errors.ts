/**
 * Errors with stable codes.
 *
 * Every error meshpipe reports to a user or a caller carries a `code` that
 * scripts can match on (it never changes between releases) and a message that
 * names what was wrong and what was expected. The native addon throws errors
 * whose `code` is the engine's `ErrorCode` (ts/engine/boundary.ts, generated
 * from Rust); `fromNative` turns those into `MeshpipeError`s.
 */
import type { ErrorCode as EngineErrorCode } from './engine/boundary.js';

/** The stable error codes, and the process exit code each one maps to. */
export const ERROR_CODES = {
  ERR_INVALID_CONFIG: 2,
  ERR_INVALID_ARGUMENT: 2,
  ERR_ADDR_IN_USE: 1,
  ERR_ADDR_NOT_AVAILABLE: 1,
  ERR_PERMISSION: 1,
  ERR_BIND: 1,
  ERR_NATIVE: 1,
  ERR_POLICY: 1,
  ERR_IPTABLES: 1,
  ERR_STARTUP: 1,
  ERR_NOT_STARTED: 1,
  ERR_ALREADY_STARTED: 1,
  ERR_CLOSED: 1,
  ERR_INIT_STATE: 1,
  /** An error nobody caught (see ts/cli/guard.ts): the proxy drained and exited. */
  ERR_INTERNAL: 1,
  ERR_IDENTITY: 2,
  /** `meshpipe run`'s command is nowhere (the shell's 127). */
  ERR_COMMAND_NOT_FOUND: 127,
  /** `meshpipe run`'s command is there but cannot be executed (the shell's 126). */
  ERR_COMMAND_NOT_EXECUTABLE: 126,
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

// Every code the engine can throw has an exit code here (a compile error otherwise).
const ENGINE_CODES_COVERED: Record<EngineErrorCode, number> = ERROR_CODES;
void ENGINE_CODES_COVERED;

export class MeshpipeError extends Error {
  /** A stable identifier, e.g. `ERR_ADDR_IN_USE`. */
  readonly code: ErrorCode;
  /** For config errors: the dotted key that was wrong (e.g. `drainTimeout`). */
  readonly key: string | undefined;

  constructor(code: ErrorCode, message: string, options?: { key?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'MeshpipeError';
    this.code = code;
    this.key = options?.key;
  }

  /** The process exit code for this error (2 = bad input, 1 = runtime failure). */
  get exitCode(): number {
    return ERROR_CODES[this.code];
  }
}

function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_CODES, code);
}

/** Maps an error thrown by the addon (its `code` is an engine `ErrorCode`) to a `MeshpipeError`. */
export function fromNative(err: unknown): MeshpipeError {
  if (err instanceof MeshpipeError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const code = (err as { code?: unknown } | null)?.code;
  return new MeshpipeError(isErrorCode(code) ? code : 'ERR_NATIVE', message, { cause: err });
}
