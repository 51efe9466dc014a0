/**
 * IdentityReloader: keeps this proxy's identity current while the files
 * change under it. cert-manager and CSI drivers rotate certificates by
 * writing a new timestamped folder and swapping a `..data` symlink, so the
 * folders of the three files are watched (fs.watch) and, because watchers
 * miss events on some filesystems and across symlink swaps, their
 * mtime/size/inode (through the symlinks) are also polled; bursts are
 * debounced, so a half-written rotation is read once it settles.
 *
 * A reload that fails (a file missing or garbled mid-rotation, a key that
 * does not match yet, an expired certificate) keeps the last good identity:
 * it is counted, logged by the caller (`reloadFailed`) and shown in
 * `state()` until a later reload succeeds. `expiring` fires once per
 * certificate when 80% of its lifetime has passed (Linkerd renews at 70%,
 * so a certificate still in use at 80% means rotation is stuck).
 * `state()` is what /ready details and the expiry metrics read.
 */
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { MeshpipeError, fromNative } from '../errors.js';
import type { IdentityFiles } from '../config/index.js';
import { loadIdentity, type LoadedIdentity } from './load.js';

/** The fraction of a certificate's lifetime after which `expiring` fires. */
export const RENEW_WARNING_FRACTION = 0.8;

/** What /ready details and metrics show about the identity. */
export interface IdentityState {
  readonly name: string;
  readonly serial: string;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
  /** ms until expiry (negative once expired). */
  readonly expiresInMs: number;
  /** 0 at not-before, 1 at not-after. */
  readonly lifetimeUsed: number;
  /** At least 80% of the lifetime has passed. */
  readonly renewOverdue: boolean;
  readonly expired: boolean;
  readonly loadedAtMs: number;
  /** Successful reloads after the first load. */
  readonly reloads: number;
  /** Failed reloads (the last good identity stayed). */
  readonly failures: number;
  /** The last failure, until a reload succeeds. */
  readonly lastError: { readonly message: string; readonly atMs: number } | null;
}

export interface IdentityReloaderEvents {
  reloaded: [IdentityState];
  reloadFailed: [MeshpipeError];
  expiring: [IdentityState];
}

export interface IdentityReloaderOptions {
  readonly files: IdentityFiles;
  readonly name?: string | undefined;
  readonly pollIntervalMs?: number | undefined;
  readonly debounceMs?: number | undefined;
  /** The clock (tests). */
  readonly now?: (() => number) | undefined;
}

export class IdentityReloader extends EventEmitter<IdentityReloaderEvents> {
  private readonly opts: IdentityReloaderOptions;
  private current: LoadedIdentity | undefined;
  private reloads = 0;
  private failures = 0;
  private lastError: { message: string; atMs: number } | null = null;
  private warnedSerial = '';
  private signature = '';
  private watchers: FSWatcher[] = [];
  private poll: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private closed = false;

  constructor(options: IdentityReloaderOptions) {
    super();
    this.opts = options;
  }

  /**
   * Loads the identity (throws `ERR_IDENTITY` on bad input: nothing to keep
   * yet) and starts watching.
   */
  async start(): Promise<IdentityState> {
    this.current = await loadIdentity(this.opts.files, this.opts.name);
    this.signature = await this.computeSignature();
    for (const dir of new Set(this.paths().map((f) => dirname(f)))) this.watchDir(dir);
    this.poll = setInterval(() => void this.tick(), this.opts.pollIntervalMs ?? 1000);
    this.poll.unref();
    const s = this.state();
    this.checkExpiry(s);
    return s;
  }

  /** The identity in force. */
  identity(): LoadedIdentity {
    if (!this.current) throw new MeshpipeError('ERR_NOT_STARTED', 'the identity is not loaded yet: call start() first');
    return this.current;
  }

  state(): IdentityState {
    const { info, loadedAtMs } = this.identity();
    const now = (this.opts.now ?? Date.now)();
    const lifetime = Math.max(1, info.notAfterMs - info.notBeforeMs);
    const lifetimeUsed = (now - info.notBeforeMs) / lifetime;
    return Object.freeze({
      name: info.name,
      serial: info.serial,
      notBeforeMs: info.notBeforeMs,
      notAfterMs: info.notAfterMs,
      expiresInMs: info.notAfterMs - now,
      lifetimeUsed,
      renewOverdue: lifetimeUsed >= RENEW_WARNING_FRACTION,
      expired: now > info.notAfterMs,
      loadedAtMs,
      reloads: this.reloads,
      failures: this.failures,
      lastError: this.lastError,
    });
  }

  /** Re-reads the files now (serialised; concurrent calls coalesce). */
  reload(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.reloadOnce();
      } while (this.again && !this.closed);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.poll) clearInterval(this.poll);
    if (this.debounce) clearTimeout(this.debounce);
    for (const w of this.watchers) w.close();
    this.watchers = [];
    await this.running;
  }

  private async reloadOnce(): Promise<void> {
    let next: LoadedIdentity;
    try {
      next = await loadIdentity(this.opts.files, this.opts.name);
    } catch (err) {
      const e = err instanceof MeshpipeError ? err : fromNative(err);
      this.failures++;
      this.lastError = { message: e.message, atMs: Date.now() };
      this.emit('reloadFailed', e);
      return;
    }
    const changed = next.info.serial !== this.current?.info.serial || next.info.name !== this.current.info.name;
    this.current = next;
    this.lastError = null;
    if (changed) {
      this.reloads++;
      const s = this.state();
      this.emit('reloaded', s);
      this.checkExpiry(s);
    }
  }

  private checkExpiry(s: IdentityState): void {
    if (s.renewOverdue && this.warnedSerial !== s.serial) {
      this.warnedSerial = s.serial;
      this.emit('expiring', s);
    }
  }

  private async tick(): Promise<void> {
    if (this.closed || !this.current) return;
    this.checkExpiry(this.state());
    const sig = await this.computeSignature();
    if (sig !== this.signature) {
      this.signature = sig;
      this.schedule();
    }
  }

  private schedule(): void {
    if (this.closed) return;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      void this.reload();
    }, this.opts.debounceMs ?? 200);
    this.debounce.unref();
  }

  private watchDir(dir: string): void {
    const names = new Set(this.paths().filter((f) => dirname(f) === dir).map((f) => basename(f)));
    try {
      const w = watch(dir, { persistent: false }, (_event, name) => {
        // `..data` and the timestamped folders are the kubelet's atomic swap.
        if (name === null || names.has(name) || name.startsWith('..')) {
          // The signature is refreshed so the poll does not schedule the same change again.
          void this.computeSignature().then((sig) => {
            this.signature = sig;
          });
          this.schedule();
        }
      });
      w.on('error', () => undefined); // the stat poll still covers this folder
      this.watchers.push(w);
    } catch {
      // A folder that cannot be watched is covered by the poll.
    }
  }

  private paths(): string[] {
    const { cert, key, anchors } = this.opts.files;
    return [cert, key, anchors];
  }

  /** mtime/size/inode of each file through its symlinks: cheap, and catches symlink swaps. */
  private async computeSignature(): Promise<string> {
    const parts = await Promise.all(
      this.paths().map(async (f) => {
        try {
          const s = await stat(f);
          return `${f}:${s.mtimeMs}:${s.size}:${s.ino}`;
        } catch {
          return `${f}:missing`;
        }
      }),
    );
    return parts.join('|');
  }
}
