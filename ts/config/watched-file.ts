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
 * <(generate)`): `readPipeOnce` reads it then, bounded, and it is not read
 * again.
 */
import { constants, createReadStream, type Stats } from 'node:fs';
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

/** True when `path` (followed) is a FIFO: a pipe given at start, e.g. `<(generate)`. */
export async function isPipe(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFIFO();
  } catch {
    return false;
  }
}

/**
 * Reads a pipe given at start to its end (its writer's close), at most
 * `maxBytes`, as UTF-8 text. This waits for the writer, as any reader of a
 * pipe does: only for a pipe the user passed, never for a file swapped in
 * later (those go through `readWatchedFile`).
 */
export async function readPipeOnce(path: string, maxBytes: number): Promise<string> {
  const chunks: Buffer[] = [];
  let total = 0;
  const stream = createReadStream(path, { highWaterMark: 64 * 1024 });
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      total += chunk.length;
      if (total > maxBytes) throw new WatchedFileError('ERR_FILE_TOO_LARGE', `more than the ${maxBytes} bytes allowed`);
      chunks.push(chunk);
    }
  } finally {
    stream.destroy();
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** `readWatchedFile` as UTF-8 text. */
export async function readWatchedText(path: string, maxBytes: number): Promise<string> {
  return (await readWatchedFile(path, maxBytes)).toString('utf8');
}
