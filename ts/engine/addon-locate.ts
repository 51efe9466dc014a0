/**
 * Finding the native addon for this platform, and saying clearly when there is none.
 *
 * The addon is one `.node` file per platform, named like napi-rs names it:
 * `meshpipe.<platform>-<arch>[-<libc>].node` (`meshpipe.linux-x64-gnu.node`).
 * It comes from one of two places, tried in this order:
 *
 * 1. `native/` in the package root: a build from source (`npm run
 *    build:native` in a checkout). A checkout's own build wins, so a
 *    contributor always runs the Rust code of their tree.
 * 2. the prebuilt platform package `meshpipe-<platform>-<arch>[-<libc>]`
 *    (napi-rs's layout: `npm/<platform>/` in the repository, published
 *    separately and listed as `optionalDependencies` of `meshpipe`; npm
 *    installs only the one whose `os`, `cpu` and `libc` match).
 *
 * When neither is there, the error names the platform, the prebuilt
 * packages that exist, why the matching one may be missing, and how to build
 * from source: never napi's generic "npm has a bug" message. The `install`
 * script (scripts/install.js) and the runtime loader (./native.ts) both use
 * this module, so an install and a run fail with the same words.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { MeshpipeError } from '../errors.js';

/** The package root (it holds package.json): three levels up from dist/ts/engine/. */
export const PACKAGE_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

export type Libc = 'gnu' | 'musl';

/** The platform an addon is built for, and the names napi-rs gives its file and package. */
export interface AddonTarget {
  readonly platform: string;
  readonly arch: string;
  /** Linux only: the C library the running Node is linked against. */
  readonly libc: Libc | undefined;
  /** `linux-x64-gnu`: napi-rs's platform-arch-abi, the directory under npm/. */
  readonly id: string;
  /** `meshpipe.linux-x64-gnu.node`. */
  readonly file: string;
  /** `meshpipe-linux-x64-gnu`. */
  readonly packageName: string;
}

/** Where an addon file was found. */
export interface AddonLocation {
  readonly path: string;
  /** Where it came from, for messages: `built from source` (`native/`) or `the prebuilt package meshpipe-…`. */
  readonly source: string;
}

interface PackageJson {
  name: string;
  version: string;
  optionalDependencies?: Record<string, string>;
}

let manifest: PackageJson | undefined;

function packageJson(): PackageJson {
  manifest ??= JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as PackageJson;
  return manifest;
}

/**
 * The C library of this process: glibc when Node reports the glibc it runs
 * on (`header.glibcVersionRuntime`), musl otherwise (Alpine and other musl
 * systems, where Node itself is a musl build).
 */
export function detectLibc(): Libc {
  // Without network details the report skips reverse DNS lookups of open
  // sockets (Node 20.13+; @types/node 20 does not declare the flag). The
  // setting is process-wide: put back as it was.
  const report: NodeJS.ProcessReport & { excludeNetwork?: boolean } = process.report;
  const before = report.excludeNetwork;
  report.excludeNetwork = true;
  try {
    const header = (report.getReport() as { header?: { glibcVersionRuntime?: string } }).header;
    return header?.glibcVersionRuntime ? 'gnu' : 'musl';
  } finally {
    if (before !== undefined) report.excludeNetwork = before;
  }
}

/** This process's target (arguments for tests and messages about other platforms). */
export function addonTarget(
  platform: string = process.platform,
  arch: string = process.arch,
  libc: Libc | undefined = platform === 'linux' ? detectLibc() : undefined,
): AddonTarget {
  const id = `${platform}-${arch}${libc === undefined ? '' : `-${libc}`}`;
  const name = packageJson().name;
  return { platform, arch, libc, id, file: `${name}.${id}.node`, packageName: `${name}-${id}` };
}

/** The prebuilt platform packages a release publishes: this package's `optionalDependencies` named `meshpipe-*`. */
export function prebuiltPackages(): string[] {
  const { name, optionalDependencies = {} } = packageJson();
  return Object.keys(optionalDependencies).filter((dep) => dep.startsWith(`${name}-`));
}

/** The places looked in, in order: `native/` of the package, then the platform package. */
function candidates(target: AddonTarget): Array<{ path: string | undefined; source: string; shown: string }> {
  const local = join(PACKAGE_ROOT, 'native', target.file);
  let fromPackage: string | undefined;
  try {
    fromPackage = join(dirname(createRequire(join(PACKAGE_ROOT, 'package.json')).resolve(`${target.packageName}/package.json`)), target.file);
  } catch {
    // not installed: reported by the caller
  }
  return [
    { path: local, source: 'built from source', shown: local },
    { path: fromPackage, source: `the prebuilt package ${target.packageName}`, shown: fromPackage ?? `the package ${target.packageName} (not installed)` },
  ];
}

/** The addon file for `target`, or undefined when there is none. */
export function locateAddon(target: AddonTarget = addonTarget()): AddonLocation | undefined {
  const found = candidates(target).find((c) => c.path !== undefined && existsSync(c.path));
  return found ? { path: found.path as string, source: found.source } : undefined;
}

/** The message for "no addon for this platform": what is missing, what exists, how to get one. */
export function missingAddonMessage(target: AddonTarget = addonTarget()): string {
  const { version } = packageJson();
  const packages = prebuiltPackages();
  const libc = target.libc === undefined ? '' : `, ${target.libc === 'gnu' ? 'glibc' : 'musl libc'}`;
  const lines = [
    `no native addon for this platform: ${target.id} (Node.js ${process.version} on ${target.platform} ${target.arch}${libc}).`,
    `Prebuilt packages exist for: ${packages.length > 0 ? packages.join(', ') : '(none listed in package.json)'}.`,
  ];
  if (packages.includes(target.packageName)) {
    lines.push(
      `The one for this platform, ${target.packageName}, is not installed: npm leaves optional dependencies out with --omit=optional ` +
        `(or --no-optional), and a package-lock.json written on another platform can leave it out too. ` +
        `Install it next to meshpipe: npm install ${target.packageName}@${version}`,
    );
  } else {
    lines.push(`None is built for ${target.id}.`);
  }
  lines.push(
    'To build from source (Rust 1.80+ from https://rustup.rs and a C compiler): in a checkout of the meshpipe repository, ' +
      '`npm install` builds the addon with cargo (`npm run build` rebuilds it); then run it there (npx meshpipe) ' +
      'or install the checkout into your project (npm install /path/to/meshpipe).',
    `Looked in: ${candidates(target).map((c) => c.shown).join('; ')}.`,
  );
  return lines.join('\n');
}

/** Loads the addon for this platform; `MeshpipeError` ERR_NATIVE with the whole story when it is missing or fails to load. */
export function loadAddon(target: AddonTarget = addonTarget()): unknown {
  const found = locateAddon(target);
  if (!found) throw new MeshpipeError('ERR_NATIVE', missingAddonMessage(target));
  try {
    return createRequire(import.meta.url)(found.path);
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new MeshpipeError(
      'ERR_NATIVE',
      `the native addon for ${target.id}, ${found.path} (${found.source}), did not load: ${reason}` +
        (/GLIBC_|version .* not found/.test(reason) ? '\nIt was built for a newer glibc than this system has: build from source (see the README, "Install").' : ''),
      { cause: err },
    );
  }
}
