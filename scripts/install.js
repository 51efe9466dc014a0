#!/usr/bin/env node
/**
 * meshpipe's `install` script: make sure this installation has a native addon.
 *
 * - In a source checkout (crates/ is here) with cargo on PATH: build from
 *   source, `npm run build` (the addon with cargo, then the TypeScript). A
 *   checkout's own build is what its tests and its CLI must run.
 * - Otherwise (the published package, which carries no Rust sources, or a
 *   checkout without cargo): find the addon the runtime loader would load
 *   (dist/ts/engine/addon-locate.js: `native/`, then the prebuilt platform
 *   package `meshpipe-<platform>-<arch>-<libc>` that npm installed from
 *   optionalDependencies) and load it once, so a binary this system cannot
 *   run fails here. Cargo is never run on this path. An install for another
 *   platform (`npm install --os --cpu --libc`) checks that platform's file
 *   and does not load it.
 * - No addon: fail with the message that names the platform, the prebuilt
 *   packages that exist and how to build from source.
 *
 * Plain JavaScript, not compiled: in a checkout it runs before `tsc` has
 * produced dist/. Installs with --ignore-scripts skip it; the runtime loader
 * then reports the same problems on first use.
 */
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { URL, fileURLToPath, pathToFileURL } from 'node:url';
import process from 'node:process';

const root = fileURLToPath(new URL('..', import.meta.url));
const checkout = existsSync(join(root, 'crates', 'meshpipe-node', 'Cargo.toml'));
const locator = join(root, 'dist', 'ts', 'engine', 'addon-locate.js');

/** True when an executable `cmd` is on PATH (looked up, not run). */
function onPath(cmd) {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => {
    if (dir === '') return false;
    try {
      accessSync(join(dir, cmd), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** `npm run SCRIPT` in the package root with the npm that runs this script; exits on failure. */
function npmRun(script) {
  const npm = process.env.npm_execpath;
  const [cmd, args] = npm ? [process.execPath, [npm, 'run', script]] : ['npm', ['run', script]];
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

function fail(lines) {
  process.stderr.write(`${lines.map((l) => `meshpipe: ${l}`).join('\n')}\n`);
  process.exit(1);
}

if (checkout && onPath('cargo')) {
  npmRun('build');
  process.exit(0);
}

if (!existsSync(locator)) {
  if (!checkout) fail([`${locator} is missing: this package is incomplete (it must be packed after \`npm run build:ts\`).`]);
  // A checkout without cargo: the TypeScript is still built here (a matching prebuilt package may exist).
  npmRun('build:ts');
}

const { addonTarget, detectLibc, locateAddon, loadAddon, missingAddonMessage } = await import(pathToFileURL(locator).href);

// `npm install --os=linux --cpu=arm64 [--libc=musl]` installs another
// platform's packages (a node_modules for a container image, say): check
// that platform's addon is there, and do not load it here.
const os = process.env.npm_config_os || process.platform;
const cpu = process.env.npm_config_cpu || process.arch;
const libcFlag = process.env.npm_config_libc;
const hostLibc = process.platform === 'linux' ? detectLibc() : undefined;
const libc = os !== 'linux' ? undefined : libcFlag === 'musl' ? 'musl' : libcFlag === 'glibc' ? 'gnu' : (hostLibc ?? 'gnu');
const target = addonTarget(os, cpu, libc);
const foreign = os !== process.platform || cpu !== process.arch || libc !== hostLibc;

const found = locateAddon(target);
if (!found) {
  const why = foreign
    ? [`npm installed for ${target.id} (--os/--cpu/--libc), not for the machine running this install.`]
    : checkout
      ? ['This is a source checkout and cargo is not on PATH: install Rust (https://rustup.rs), then run `npm install` again.']
      : onPath('cargo')
        ? ['cargo is on PATH, but the published package carries no Rust sources to build: build from a checkout as above.']
        : [];
  fail([...missingAddonMessage(target).split('\n'), ...why]);
}
if (foreign) {
  process.stdout.write(`meshpipe: native addon for ${target.id}: ${found.path} (${found.source}; installed for another platform, not loaded here)\n`);
  process.exit(0);
}
try {
  loadAddon(target);
} catch (err) {
  fail(String(err instanceof Error ? err.message : err).split('\n'));
}
process.stdout.write(`meshpipe: native addon for ${target.id}: ${found.path} (${found.source})\n`);
