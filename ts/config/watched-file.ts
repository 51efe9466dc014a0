/**
 * Reading a file the running proxy reads again and again: the identity's
 * PEM files, the annotations, destinations and endpoints files, manifests,
 * the service account's token.
 *
 * Node reads files on a libuv pool thread, and a read that never returns
 * holds that thread for good. A FIFO swapped in for a certificate does that:
 * `open()` of a FIFO for reading blocks until some process opens it for
 * writing, which may never happen (once the FIFO is renamed over, nothing can
 * find it). The reload waiting for it never ends, every later reload queues
 * behind it, and shutdown waits for it too. A character device (`/dev/zero`)
 * never ends either. So these files are opened without blocking
 * (`O_NONBLOCK`, which changes nothing for a regular file) and must be
 * regular files: a symlink to one is fine (Kubernetes mounts Secrets and
 * ConfigMaps that way), a FIFO, socket, device or folder is refused with an
 * error that says which it is. Their size is bounded, also if the file grows
 * while it is read.
 *
 * Files read once at start by a command (`--config`, a kubeconfig, the input
 * of `meshpipe inject`) are not read here: there a FIFO is a deliberate
 * choice (`<(kubectl get ...)`) and waiting for its writer is expected. The
 * same goes for a policy file given as a pipe at start (`--destinations
 * <(generate)`): the main thread reads it once then (`readPipeOnceSync`,
 * bounded), and the policy worker gets its text and never opens the path
 * (a restarted worker would find the pipe drained; a FIFO swapped in later
 * for a regular file must be refused, not waited on). `O_NONBLOCK` does not
 * help against a stalled network mount, which blocks any reader.
 */
import { closeSync, constants, fstatSync, openSync, readSync, statSync, type Stats } from 'node:fs';
import { open, stat } from 'node:fs/promises';

/** Why a watched file was not read (besides the system's own errors, e.g. `ENOENT`). */
export type WatchedFileErrorCode = 'ERR_NOT_REGULAR_FILE' | 'ERR_FILE_TOO_LARGE';

/** A watched file that is not a regular file, or is larger than allowed. */
export class WatchedFileError extends Error {
  readonly code: WatchedFileErrorCode;
  /** What was found instead of a regular file, e.g. `a FIFO (named pipe)`. */
  readonly found: string | undefined;

  constructor(code: WatchedFileErrorCode, message: string, found?: string) {
    super(message);
    this.name = 'WatchedFileError';
    this.code = code;
    this.found = found;
  }
}

/** What a non-regular file is, in words. */
function kindOf(info: Stats): string {
  if (info.isDirectory()) return 'a folder';
  if (info.isFIFO()) return 'a FIFO (named pipe)';
  if (info.isSocket()) return 'a socket';
  if (info.isCharacterDevice()) return 'a character device';
  if (info.isBlockDevice()) return 'a block device';
  return 'not a regular file';
}

/** The first read's size when the file's size is unknown or zero. */
const FIRST_READ = 16 * 1024;

/**
 * Reads the regular file at `path` (following symlinks), at most `maxBytes`.
 * @throws the system's error from `open` (`ENOENT`, `EACCES`, ...), or a
 *   `WatchedFileError` for a file that is not regular or is too large.
 */
export async function readWatchedFile(path: string, maxBytes: number): Promise<Buffer> {
  const handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const info = await handle.stat();
    if (!info.isFile()) {
      const found = kindOf(info);
      throw new WatchedFileError('ERR_NOT_REGULAR_FILE', `${found}, not a regular file`, found);
    }
    if (info.size > maxBytes) throw new WatchedFileError('ERR_FILE_TOO_LARGE', `${info.size} bytes, more than the ${maxBytes} allowed`);
    // Read to the end, not just `info.size` bytes: the file may be rewritten
    // in place while it is read. One byte more than allowed proves it too large.
    let buf = Buffer.alloc(Math.min(Math.max(info.size + 1, FIRST_READ), maxBytes + 1));
    let filled = 0;
    for (;;) {
      if (filled === buf.length) {
        if (buf.length > maxBytes) throw new WatchedFileError('ERR_FILE_TOO_LARGE', `more than the ${maxBytes} bytes allowed`);
        const bigger = Buffer.alloc(Math.min(buf.length * 2, maxBytes + 1));
        buf.copy(bigger, 0, 0, filled);
        buf = bigger;
      }
      const { bytesRead } = await handle.read(buf, filled, buf.length - filled, filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return buf.subarray(0, filled);
  } finally {
    await handle.close();
  }
}

/**
 * `readWatchedFile`, synchronously, as UTF-8 text: for the main thread at
 * start (`--endpoints FILE` is read and checked before anything listens),
 * with the same refusals and bound.
 * @throws the system's error from `open`, or a `WatchedFileError`
 */
export function readWatchedTextSync(path: string, maxBytes: number): string {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const info = fstatSync(fd);
    if (!info.isFile()) {
      const found = kindOf(info);
      throw new WatchedFileError('ERR_NOT_REGULAR_FILE', `${found}, not a regular file`, found);
    }
    if (info.size > maxBytes) throw new WatchedFileError('ERR_FILE_TOO_LARGE', `${info.size} bytes, more than the ${maxBytes} allowed`);
    const chunks: Buffer[] = [];
    let total = 0;
    const chunk = Buffer.alloc(Math.min(Math.max(info.size + 1, FIRST_READ), maxBytes + 1));
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) break;
      total += n;
      if (total > maxBytes) throw new WatchedFileError('ERR_FILE_TOO_LARGE', `more than the ${maxBytes} bytes allowed`);
      chunks.push(Buffer.from(chunk.subarray(0, n)));
    }
    return Buffer.concat(chunks).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/** True when `path` (followed) is a FIFO: a pipe given at start, e.g. `<(generate)`. */
export async function isPipe(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFIFO();
  } catch {
    return false;
  }
}

/** `isPipe`, synchronously (the sidecar's start, before the policy worker runs). */
export function isPipeSync(path: string): boolean {
  try {
    return statSync(path).isFIFO();
  } catch {
    return false;
  }
}

/** `/dev/fd/N` or `/proc/self/fd/N`: a descriptor this process holds, as `<(generate)` passes. */
const OWN_FD = /^\/(?:dev|proc\/self)\/fd\/(\d+)$/;

/**
 * Whether `path` names a descriptor this process was started with
 * (`/dev/fd/N`, as `<(generate)` passes): its writer exists already. Any
 * other pipe is a named FIFO, whose `open` waits until some process opens
 * it for writing.
 */
export function isOwnDescriptor(path: string): boolean {
  return OWN_FD.test(path);
}

/**
 * Reads a pipe given at start to its end (its writer's close), at most
 * `maxBytes`, as UTF-8 text, blocking the calling thread meanwhile: it is
 * for the start of a process (the main thread, before anything listens) or
 * a one-shot command, never for a path read again later. A pipe passed as
 * `/dev/fd/N` is this process's own descriptor N: it is closed afterwards
 * too, so a writer that had more to say than the bound gets EPIPE instead
 * of waiting forever for a reader that is still open but never reads.
 * @throws the system's error from `open`, or ERR_FILE_TOO_LARGE
 */
export function readPipeOnceSync(path: string, maxBytes: number): string {
  return readPipeOnceBytesSync(path, maxBytes).toString('utf8');
}

/** `readPipeOnceSync`, the bytes as read (for a caller that checks their encoding). */
export function readPipeOnceBytesSync(path: string, maxBytes: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const chunks: Buffer[] = [];
    let total = 0;
    const chunk = Buffer.alloc(64 * 1024);
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) break;
      total += n;
      if (total > maxBytes) throw new WatchedFileError('ERR_FILE_TOO_LARGE', `more than the ${maxBytes} bytes allowed`);
      chunks.push(Buffer.from(chunk.subarray(0, n)));
    }
    return Buffer.concat(chunks);
  } finally {
    closeSync(fd);
    const own = OWN_FD.exec(path);
    if (own && Number(own[1]) > 2) {
      try {
        closeSync(Number(own[1]));
      } catch {
        /* already closed */
      }
    }
  }
}

/**
 * A file a one-shot command reads once (`explain --annotations FILE`): a
 * pipe given at start read to its end, or a regular file; at most
 * `maxBytes` either way, a device or a folder refused with what it is.
 */
export async function readOnceText(path: string, maxBytes: number): Promise<string> {
  return (await isPipe(path)) ? readPipeOnce(path, maxBytes) : readWatchedText(path, maxBytes);
}

/** `readPipeOnceSync` for a one-shot command: the same read, as a promise. */
export async function readPipeOnce(path: string, maxBytes: number): Promise<string> {
  await Promise.resolve();
  return readPipeOnceSync(path, maxBytes);
}

/** `readWatchedFile` as UTF-8 text. */
export async function readWatchedText(path: string, maxBytes: number): Promise<string> {
  return (await readWatchedFile(path, maxBytes)).toString('utf8');
}
