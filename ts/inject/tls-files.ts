/**
 * The webhook's certificate and key, read from files (a cert-manager or
 * kubelet-mounted Secret: `tls.crt`, `tls.key`) and reloaded when they
 * change.
 *
 * A Secret volume is updated by swapping a symlink in its directory, so the
 * directories of both files are watched (fs.watch), and polled every
 * `pollMs` as well, for volume types where no event arrives. A change is
 * applied only when the new pair loads (the certificate parses and matches
 * the key): a rotation observed half-way (new certificate, old key) keeps
 * the current pair serving and retries on the next event or poll. New TLS
 * connections get the new pair; open ones keep theirs.
 */
import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createSecureContext } from 'node:tls';
import { MeshpipeError } from '../errors.js';

export interface TlsPair {
  readonly cert: Buffer;
  readonly key: Buffer;
}

export interface TlsFilesEvents {
  /** A new pair was loaded. */
  reloaded(pair: TlsPair): void;
  /** The files changed but the new pair could not be loaded; the old one stays. */
  failed(message: string): void;
}

/**
 * Reads and checks a pair.
 * @throws MeshpipeError ERR_INVALID_CONFIG naming the file and the problem
 */
export async function loadTlsPair(certFile: string, keyFile: string): Promise<TlsPair> {
  const read = async (file: string, flag: string): Promise<Buffer> => {
    try {
      return await readFile(file);
    } catch (err) {
      throw new MeshpipeError('ERR_INVALID_CONFIG', `--${flag} ${file}: cannot read: ${(err as Error).message}`, { key: flag });
    }
  };
  const pair = { cert: await read(certFile, 'tls-cert'), key: await read(keyFile, 'tls-key') };
  try {
    createSecureContext(pair);
  } catch (err) {
    throw new MeshpipeError('ERR_INVALID_CONFIG', `--tls-cert ${certFile} / --tls-key ${keyFile}: not a usable certificate and key: ${(err as Error).message}`, { key: 'tls-cert' });
  }
  return pair;
}

function digest(pair: TlsPair): string {
  return createHash('sha256').update(pair.cert).update('\0').update(pair.key).digest('hex');
}

export class TlsFiles {
  private readonly watchers: FSWatcher[] = [];
  private poll: NodeJS.Timeout | undefined;
  private pending: NodeJS.Timeout | undefined;
  private current = '';
  private lastFailure = '';
  private reloading = false;
  private closed = false;

  constructor(
    readonly certFile: string,
    readonly keyFile: string,
    private readonly events: TlsFilesEvents,
    private readonly pollMs = 10_000,
  ) {}

  /** Loads the pair (throws when it is unusable), then watches for changes. */
  async start(): Promise<TlsPair> {
    const pair = await loadTlsPair(this.certFile, this.keyFile);
    this.current = digest(pair);
    for (const dir of new Set([dirname(this.certFile), dirname(this.keyFile)])) {
      try {
        const w = watch(dir, { persistent: false }, () => this.schedule());
        w.on('error', () => undefined); // the directory went away: polling still covers it
        this.watchers.push(w);
      } catch {
        // Not watchable (e.g. some network filesystems): polling covers it.
      }
    }
    this.poll = setInterval(() => this.schedule(), this.pollMs);
    this.poll.unref();
    return pair;
  }

  /** Coalesces a burst of events (a Secret update touches several entries) into one reload. */
  private schedule(): void {
    if (this.closed || this.pending !== undefined) return;
    this.pending = setTimeout(() => {
      this.pending = undefined;
      void this.reload();
    }, 50);
    this.pending.unref();
  }

  private async reload(): Promise<void> {
    if (this.reloading || this.closed) return;
    this.reloading = true;
    try {
      const pair = await loadTlsPair(this.certFile, this.keyFile);
      const d = digest(pair);
      if (d !== this.current) {
        this.current = d;
        this.lastFailure = '';
        this.events.reloaded(pair);
      }
    } catch (err) {
      const message = (err as Error).message;
      // Reported once per distinct problem, not on every poll.
      if (message !== this.lastFailure) {
        this.lastFailure = message;
        this.events.failed(message);
      }
    } finally {
      this.reloading = false;
    }
  }

  close(): void {
    this.closed = true;
    for (const w of this.watchers) w.close();
    clearInterval(this.poll);
    clearTimeout(this.pending);
  }
}
