/**
 * Loading this proxy's identity from its three PEM files: the certificate
 * chain, its private key and the trust anchors. The files are read here
 * (bounded: a PEM file larger than 1 MiB is refused before it is read) and
 * checked by the engine (ts/engine/mesh.ts): PEM garbage, a key that does
 * not match the certificate, an expired or not-yet-valid certificate, a
 * chain not rooted in the anchors, no usable identity name. Every failure is
 * a `MeshpipeError` `ERR_IDENTITY` (exit 2 at start) naming the file and the
 * reason.
 */
import { readdir } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { MeshpipeError } from '../errors.js';
import { identityCheck, type IdentityInfo, type LoadSpec } from '../engine/index.js';
import { readWatchedFile, WatchedFileError, type IdentityFiles } from '../config/index.js';

/** No certificate, key or bundle of anchors is anywhere near this big. */
export const MAX_PEM_BYTES = 1024 * 1024;

/** A checked identity and where it came from. */
export interface LoadedIdentity {
  readonly info: IdentityInfo;
  readonly files: IdentityFiles;
  /** ms since the epoch. */
  readonly loadedAtMs: number;
  /** The bytes that were checked, for the engine to install as they are. */
  readonly pem: { readonly cert: Buffer; readonly key: Buffer; readonly anchors: Buffer };
  /** The check's input (file names for messages, `--identity-name`). */
  readonly spec: LoadSpec;
}

/**
 * Why a file of the identity is not there, when its folder says more: the
 * folder does not exist (a typo in --identity-dir), or it is the CA folder
 * `meshpipe identity init` wrote (a first try often points the proxy there)
 * rather than one of `meshpipe identity issue`.
 */
async function missingFileHint(file: string): Promise<string> {
  const dir = dirname(file);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? ` (the folder ${dir} does not exist)` : '';
  }
  if (names.includes('issuer.crt') && names.includes('issuer.key') && !names.includes(basename(file))) {
    return ` (${dir} is a CA folder, written by meshpipe identity init; a proxy's identity folder is written by meshpipe identity issue --name NAME --ca-dir ${dir} --out DIR)`;
  }
  return '';
}

/**
 * Reads one file, bounded, as a regular file (a FIFO swapped in would
 * otherwise hold the reload, and shutdown, until some writer opens it:
 * ts/config/watched-file.ts); errors name the file and what it should hold.
 */
async function readPem(file: string, what: string): Promise<Buffer> {
  try {
    return await readWatchedFile(file, MAX_PEM_BYTES);
  } catch (err) {
    if (err instanceof WatchedFileError) {
      const why = err.code === 'ERR_NOT_REGULAR_FILE' ? `found ${err.found ?? 'not a regular file'}` : `too large (${err.message})`;
      throw new MeshpipeError('ERR_IDENTITY', `${file}: expected ${what} in a regular file, ${why}`, { cause: err });
    }
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? `no such file${await missingFileHint(file)}` : code === 'EACCES' ? 'permission denied' : (err as Error).message;
    throw new MeshpipeError('ERR_IDENTITY', `${file}: cannot read ${what}: ${why}`, { cause: err });
  }
}

/**
 * Reads and checks the identity files.
 * @throws MeshpipeError ERR_IDENTITY naming the file and the reason.
 */
export async function loadIdentity(files: IdentityFiles, name: string | undefined): Promise<LoadedIdentity> {
  // One after the other: with several files missing, the error always names the first.
  const cert = await readPem(files.cert, 'the certificate chain (PEM)');
  const key = await readPem(files.key, 'the private key (PEM)');
  const anchors = await readPem(files.anchors, 'the trust anchors (PEM)');
  const spec: LoadSpec = { certFile: files.cert, keyFile: files.key, anchorsFile: files.anchors, name: name ?? null };
  const info = identityCheck(spec, cert, key, anchors);
  return Object.freeze({ info: Object.freeze(info), files, loadedAtMs: Date.now(), pem: Object.freeze({ cert, key, anchors }), spec });
}
