/**
 * Errors with stable codes.
 *
 * Every error meshpipe reports to a user or a caller carries a `code` that
 * scripts can match on (it never changes between releases) and a message that
 * names what was wrong and what was expected. The native addon reports errors
 * as `CODE: message`; `fromNative` turns those into `MeshpipeError`s.
 */

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
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

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

/** Maps an error thrown by the addon (`CODE: message`) to a `MeshpipeError`. */
export function fromNative(err: unknown): MeshpipeError {
  if (err instanceof MeshpipeError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const match = /^(ERR_[A-Z_]+): ([\s\S]*)$/.exec(message);
  if (match && match[1] !== undefined && match[1] in ERROR_CODES) {
    return new MeshpipeError(match[1] as ErrorCode, match[2] ?? '', { cause: err });
  }
  return new MeshpipeError('ERR_NATIVE', message, { cause: err });
}
