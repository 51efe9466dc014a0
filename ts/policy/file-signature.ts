/**
 * A file's change signature: modification time, size and inode. Cheap to
 * take (one stat), and it changes when a file is edited in place, replaced,
 * or swapped through a symlink (the kubelet's `..data` swap of a mounted
 * ConfigMap). The policy sources compare signatures to decide what to read
 * again; the start-up read of `--endpoints FILE` hands its signature to the
 * policy worker, so the worker does not read the same content a second time.
 */
import { statSync, type Stats } from 'node:fs';
import { stat } from 'node:fs/promises';

/** The signature of what `stat` returned. */
export function statsSignature(s: Pick<Stats, 'mtimeMs' | 'size' | 'ino'>): string {
  return `${s.mtimeMs}:${s.size}:${s.ino}`;
}

/** The signature of `file`, or `missing`. */
export async function fileSignature(file: string): Promise<string> {
  try {
    return statsSignature(await stat(file));
  } catch {
    return 'missing';
  }
}

/** `fileSignature`, synchronously (start-up reads only). */
export function fileSignatureSync(file: string): string {
  try {
    return statsSignature(statSync(file));
  } catch {
    return 'missing';
  }
}
