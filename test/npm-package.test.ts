/**
 * The npm packages as a user gets them (issue 14): `meshpipe` and its
 * prebuilt platform package `meshpipe-linux-x64-gnu`, packed with `npm pack`
 * from this tree and installed into an empty project with no Rust toolchain
 * on PATH.
 *
 * - The platform package is made the way a release makes it: the addon built
 *   from this tree (native/, `npm run build:native`) goes into
 *   npm/linux-x64-gnu/ through `napi artifacts` (in a scratch copy, with a
 *   config naming this one target), then `npm pack`.
 * - Contents: the main tarball holds the compiled JavaScript, its types and
 *   the install script, and no crates/, tests, fixtures, source maps or addon
 *   binary; the platform tarball holds its package.json, README and the
 *   stripped `.node` (no .symtab, no debug sections).
 * - The install runs with a PATH of only node, npm, npx and sh (cargo, rustc
 *   and rustup checked unreachable); then `npx meshpipe --version`,
 *   `meshpipe explain --port 3306` and a real forward through the installed
 *   CLI with SHA-256 on both ends. The only `.node` in the installed tree is
 *   the platform package's, so that is what ran.
 * - The Dockerfile's install (global, --omit=dev, --ignore-scripts) works
 *   from the same tarballs; with the platform package removed, the installed
 *   CLI fails with the clear message (platform, packages, how to build from
 *   source), and so does an install that leaves the platform package out.
 * - The install script never runs cargo when a prebuilt addon matches: a
 *   `cargo` on PATH that records being run is not run. An install for
 *   another platform (`npm install --cpu=arm64`, for an image) checks that
 *   platform's package without loading it.
 *
 * Dependencies are installed with --prefer-offline: from npm's cache when it
 * has them (it does after `npm install` in this checkout on a machine whose
 * cache holds the registry metadata), from the npm registry otherwise; the
 * platform packages for other targets are looked up and, unpublished or
 * unreachable, skipped as optional.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { accessSync, constants, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { CliProcess, collect, connect, HOST, MiB, startEchoServer, withTimeout, writeRandom } from './helpers.js';
import { ROOT } from './helpers.js';

const PLATFORM = 'linux-x64-gnu';
const PLATFORM_PACKAGE = `meshpipe-${PLATFORM}`;
const ADDON = `meshpipe.${PLATFORM}.node`;
/** A platform this machine is not: `npm install --cpu=arm64` installs its package. */
const FOREIGN = 'linux-arm64-gnu';
const ALL_PACKAGES = ['meshpipe-linux-x64-gnu', 'meshpipe-linux-arm64-gnu', 'meshpipe-linux-x64-musl', 'meshpipe-linux-arm64-musl'];
/** napi-rs's generated loader's last words; meshpipe's message must never be only that. */
const NAPI_GENERIC = /npm has a bug related to optional dependencies/;
const INSTALL_TIMEOUT_MS = 300_000;
/** An explain that needs the addon: with a destination it runs the engine's policy lookup. */
const EXPLAIN_WITH_ADDON = ['explain', '--port', '3306', '--destination', '203.0.113.9'];

interface PackResult {
  filename: string;
  size: number;
  unpackedSize: number;
  files: Array<{ path: string; size: number }>;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

const rootPackage = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  version: string;
  optionalDependencies?: Record<string, string>;
};
const VERSION = rootPackage.version;

/** Runs a command to completion in `cwd` with exactly `env` (no shell). */
function exec(cmd: string, args: readonly string[], cwd: string, env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, [...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} could not start: ${err.message}`));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function must(r: Run, what: string): string {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** The full path of `cmd` on this test's PATH. */
function which(cmd: string): string {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (dir === '') continue;
    try {
      accessSync(join(dir, cmd), constants.X_OK);
      return join(dir, cmd);
    } catch {
      // not in this directory
    }
  }
  throw new Error(`${cmd} is not on PATH`);
}

/** This process's environment minus npm's script variables (npm_*: an outer `npm test` must not configure the inner npm) and MESHPIPE_*. */
function cleanEnv(path: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k) && !k.startsWith('MESHPIPE_')) env[k] = v;
  return { ...env, PATH: path, MESHPIPE_ADMIN: 'off' };
}

/** Every `.node` file under `dir` (relative paths). */
function nodeFiles(dir: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(dir, rel), { withFileTypes: true })) {
    const p = rel === '' ? e.name : `${rel}/${e.name}`;
    if (e.isDirectory()) out.push(...nodeFiles(dir, p));
    else if (e.name.endsWith('.node')) out.push(p);
  }
  return out;
}

async function sectionNames(file: string): Promise<string[]> {
  const out = must(await exec('readelf', ['--wide', '--section-headers', file], ROOT, process.env), `readelf ${file}`);
  return [...out.matchAll(/^\s*\[\s*\d+\]\s+(\S+)/gm)].map((m) => m[1] as string);
}

const kib = (n: number): string => `${(n / 1024).toFixed(0)} KiB`;

describe('npm packages: prebuilt platform package, install without Rust', () => {
  const work = mkdtempSync(join(tmpdir(), 'meshpipe-npm-'));
  /** node, npm, npx and sh, and nothing else: the PATH of a user without Rust. */
  const bin = join(work, 'bin');
  const npmCache = process.env['npm_config_cache'];
  let env: NodeJS.ProcessEnv;
  let main: PackResult;
  let platform: PackResult;
  let foreign: PackResult;
  let project: string;

  before(async () => {
    // The PATH: symlinks to the real programs (npm's are scripts run by node).
    mkdirSync(bin);
    symlinkSync(process.execPath, join(bin, 'node'));
    for (const cmd of ['npm', 'npx', 'sh']) symlinkSync(realpathSync(which(cmd)), join(bin, cmd));
    env = cleanEnv(bin);
    // npm's cache: the one this run uses (the outer npm's, when run by `npm test`).
    if (npmCache) env['npm_config_cache'] = npmCache;
    const host = cleanEnv(process.env['PATH'] ?? '');

    // The platform package, as a release makes it: napi artifacts, then npm pack.
    const stage = join(work, 'stage');
    mkdirSync(join(stage, 'artifacts'), { recursive: true });
    copyFileSync(join(ROOT, 'package.json'), join(stage, 'package.json'));
    cpSync(join(ROOT, 'npm', PLATFORM), join(stage, 'npm', PLATFORM), { recursive: true });
    rmSync(join(stage, 'npm', PLATFORM, ADDON), { force: true });
    copyFileSync(join(ROOT, 'native', ADDON), join(stage, 'artifacts', ADDON));
    writeFileSync(join(stage, 'napi.json'), JSON.stringify({ binaryName: 'meshpipe', targets: ['x86_64-unknown-linux-gnu'] }));
    const napi = join(ROOT, 'node_modules', '.bin', 'napi');
    must(await exec(napi, ['artifacts', '--cwd', stage, '-c', 'napi.json', '--output-dir', 'artifacts', '--npm-dir', 'npm'], stage, host), 'napi artifacts');

    const pack = async (dir: string): Promise<PackResult> => {
      // --ignore-scripts: no prepack tsc here, `npm test` compiled dist/ just before the node tests.
      const out = must(await exec(which('npm'), ['pack', '--json', '--ignore-scripts', '--pack-destination', work], dir, host), `npm pack in ${dir}`);
      const [result] = JSON.parse(out) as PackResult[];
      assert.ok(result, `npm pack in ${dir} reported a tarball`);
      return result;
    };
    main = await pack(ROOT);
    platform = await pack(join(stage, 'npm', PLATFORM));
    // Another platform's package, for an install with --cpu: its .node is not even an ELF file, so loading it would fail.
    const foreignDir = join(work, 'foreign', FOREIGN);
    mkdirSync(foreignDir, { recursive: true });
    copyFileSync(join(ROOT, 'npm', FOREIGN, 'package.json'), join(foreignDir, 'package.json'));
    writeFileSync(join(foreignDir, `meshpipe.${FOREIGN}.node`), 'not an addon: an install for another platform must not load it\n');
    foreign = await pack(foreignDir);

    project = join(work, 'project');
    mkdirSync(project);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
  });

  after(() => rmSync(work, { recursive: true, force: true }));

  test('tarball contents: JavaScript, types and the install script; no crates/, tests, fixtures, maps or binaries; the .node stripped', async (t) => {
    assert.equal(main.filename, `meshpipe-${VERSION}.tgz`);
    assert.equal(platform.filename, `${PLATFORM_PACKAGE}-${VERSION}.tgz`);
    const paths = main.files.map((f) => f.path);
    for (const required of ['package.json', 'README.md', 'scripts/install.js', 'dist/ts/cli/main.js', 'dist/ts/index.js', 'dist/ts/index.d.ts', 'dist/ts/engine/addon-locate.js', 'native/native.d.ts']) {
      assert.ok(paths.includes(required), `${required} is in ${main.filename}`);
    }
    const unwanted = paths.filter((p) => /^(crates|test|bench|fuzz|target|dist\/test|dist\/bench|npm|deploy|docs|\.ci)\//.test(p) || /fixtures|\.map$|\.node$|\.tgz$|\.rs$/.test(p));
    assert.deepEqual(unwanted, [], `${main.filename} carries no sources, tests, fixtures, source maps or binaries`);
    assert.ok(paths.every((p) => p === 'package.json' || p === 'README.md' || p === 'scripts/install.js' || p === 'native/native.d.ts' || p.startsWith('dist/ts/')), `only dist/ts, the install script and metadata: ${paths.join(', ')}`);

    assert.deepEqual(platform.files.map((f) => f.path).sort(), ['README.md', ADDON, 'package.json']);
    const staged = join(work, 'stage', 'npm', PLATFORM, ADDON);
    const sections = await sectionNames(staged);
    assert.ok(sections.includes('.dynsym') && sections.includes('.text'), `readelf saw the ELF sections of ${ADDON}: ${sections.join(' ')}`);
    assert.deepEqual(sections.filter((s) => s === '.symtab' || s.startsWith('.debug')), [], `${ADDON} is stripped`);

    t.diagnostic(`${main.filename}: ${kib(main.size)} packed, ${kib(main.unpackedSize)} unpacked, ${main.files.length} files`);
    t.diagnostic(`${platform.filename}: ${kib(platform.size)} packed, ${kib(platform.unpackedSize)} unpacked`);
  });

  test('the platform packages agree with the main package: names, version, os/cpu/libc, one optionalDependency each', () => {
    const dirs = readdirSync(join(ROOT, 'npm')).sort();
    assert.deepEqual(dirs, ['linux-arm64-gnu', 'linux-arm64-musl', 'linux-x64-gnu', 'linux-x64-musl']);
    assert.deepEqual(Object.keys(rootPackage.optionalDependencies ?? {}).sort(), [...ALL_PACKAGES].sort());
    for (const dir of dirs) {
      const [os, cpu, libc] = dir.split('-') as [string, string, string];
      const pkg = JSON.parse(readFileSync(join(ROOT, 'npm', dir, 'package.json'), 'utf8')) as Record<string, unknown>;
      assert.equal(pkg['name'], `meshpipe-${dir}`);
      assert.equal(pkg['version'], VERSION, `${dir}: the same version as meshpipe`);
      assert.equal(rootPackage.optionalDependencies?.[`meshpipe-${dir}`], VERSION, `meshpipe pins meshpipe-${dir} to its own version`);
      assert.deepEqual([pkg['os'], pkg['cpu'], pkg['libc']], [[os], [cpu], [libc === 'gnu' ? 'glibc' : 'musl']], `${dir}: npm installs it only where it runs`);
      assert.equal(pkg['main'], `meshpipe.${dir}.node`);
      assert.deepEqual(pkg['files'], [`meshpipe.${dir}.node`]);
    }
  });

  test('installed from the tarballs with no Rust on PATH: npx meshpipe --version, explain, a forward with SHA-256', { timeout: INSTALL_TIMEOUT_MS + 120_000 }, async (t) => {
    const probe = await exec('sh', ['-c', 'command -v cargo rustc rustup; echo "path=$PATH"'], project, env);
    assert.equal(probe.stdout, `path=${bin}\n`, 'cargo, rustc and rustup are not on the install PATH');

    const install = await exec(
      'npm',
      ['install', '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts', join(work, main.filename), join(work, platform.filename)],
      project,
      env,
      INSTALL_TIMEOUT_MS,
    );
    const output = `${install.stdout}\n${install.stderr}`;
    assert.equal(install.code, 0, `npm install failed:\n${output}`);
    const installed = join(project, 'node_modules');
    assert.ok(
      output.includes(`meshpipe: native addon for ${PLATFORM}: ${join(installed, PLATFORM_PACKAGE, ADDON)} (the prebuilt package ${PLATFORM_PACKAGE})\n`),
      `the install script chose the prebuilt package:\n${output}`,
    );
    assert.deepEqual(nodeFiles(installed), [`${PLATFORM_PACKAGE}/${ADDON}`], 'the only addon installed is the platform package\'s (nothing was built)');
    assert.ok(!existsSync(join(installed, 'meshpipe', 'crates')) && !existsSync(join(installed, 'meshpipe', 'target')));
    const installedSections = await sectionNames(join(installed, PLATFORM_PACKAGE, ADDON));
    assert.ok(!installedSections.includes('.symtab'), 'the installed addon is the stripped one');

    const version = await exec('npx', ['--offline', 'meshpipe', '--version'], project, env);
    assert.equal(must(version, 'npx meshpipe --version').trim(), VERSION);

    const meshpipe = join(installed, '.bin', 'meshpipe');
    const explain = must(await exec(meshpipe, ['explain', '--port', '3306'], project, env), 'meshpipe explain --port 3306');
    assert.match(explain, /^Port 3306\n/, explain);
    assert.match(explain, /Is 3306 in the default opaque ports .*\? yes/, explain);
    // With a destination, explain asks the engine's own lookup (the addon) what it does today.
    const lookup = must(await exec(meshpipe, [...EXPLAIN_WITH_ADDON], project, env), 'meshpipe explain --destination');
    assert.match(lookup, /current policy:\n\s+outbound 203\.0\.113\.9:3306: \w+/, lookup);

    const echo = await startEchoServer(t);
    const proxy = new CliProcess(['proxy', '--forward', `${HOST}:0=${HOST}:${echo.port}`], { script: join(installed, '.bin', 'meshpipe'), env: { PATH: bin } });
    t.after(() => proxy.kill());
    await proxy.waitForLog((l) => l.msg === 'proxy ready', '"proxy ready"', 20_000);
    const port = Number(proxy.logs.find((l) => l.msg === 'listener bound')?.port);
    const client = await connect(port);
    const echoed = collect(client);
    const sent = await writeRandom(client, 8 * MiB);
    client.end();
    const got = await withTimeout(echoed, 30_000, 'the echo through the installed proxy');
    assert.equal(got.bytes, 8 * MiB);
    assert.equal(got.sha256, sent, 'SHA-256 of the echo equals what was sent');
    assert.equal(got.ended, true);
    proxy.signal('SIGTERM');
    assert.equal((await withTimeout(proxy.exited, 20_000, 'the installed proxy to exit on SIGTERM')).code, 0);

    // The install script with a `cargo` on PATH that records being run: a matching prebuilt means it is never run.
    const trap = join(work, 'trap');
    mkdirSync(trap);
    writeFileSync(join(trap, 'cargo'), `#!/bin/sh\necho "$@" >> ${join(work, 'cargo-was-run')}\nexit 1\n`, { mode: 0o755 });
    const again = await exec(process.execPath, [join(installed, 'meshpipe', 'scripts', 'install.js')], join(installed, 'meshpipe'), cleanEnv(`${bin}${delimiter}${trap}`));
    assert.match(must(again, 'the install script with cargo on PATH'), new RegExp(`\\(the prebuilt package ${PLATFORM_PACKAGE}\\)\n$`));
    assert.ok(!existsSync(join(work, 'cargo-was-run')), 'cargo was not run');
  });

  test('the Dockerfile\'s install (global, --omit=dev, --ignore-scripts) runs; without the platform package the CLI says what is missing', { timeout: INSTALL_TIMEOUT_MS + 60_000 }, async () => {
    const prefix = join(work, 'global');
    const install = await exec(
      'npm',
      ['install', '--global', '--omit=dev', '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund', '--prefix', prefix, join(work, main.filename), join(work, platform.filename)],
      work,
      env,
      INSTALL_TIMEOUT_MS,
    );
    must(install, 'npm install --global');
    const meshpipe = join(prefix, 'bin', 'meshpipe');
    assert.equal(must(await exec(meshpipe, ['--version'], work, env), 'meshpipe --version').trim(), VERSION);
    assert.match(must(await exec(meshpipe, [...EXPLAIN_WITH_ADDON], work, env), 'meshpipe explain (loads the addon)'), /current policy:/);

    // The same install with the platform package gone: the loader's message.
    const lib = join(prefix, 'lib', 'node_modules');
    assert.deepEqual(nodeFiles(lib), [`${PLATFORM_PACKAGE}/${ADDON}`]);
    renameSync(join(lib, PLATFORM_PACKAGE), join(work, 'moved-away'));
    const broken = await exec(meshpipe, [...EXPLAIN_WITH_ADDON], work, env);
    assert.equal(broken.code, 1, `exit 1 without the addon:\n${broken.stdout}${broken.stderr}`);
    assertClearMessage(broken.stderr);
    assert.match(broken.stderr, /\(ERR_NATIVE\)\n$/);
  });

  test('an install for another platform (npm --os/--cpu/--libc) checks that platform\'s package and does not load it', { timeout: INSTALL_TIMEOUT_MS + 60_000 }, async () => {
    // The arm64 package as an optional dependency, the way meshpipe's own optionalDependencies bring it
    // (npm applies --os/--cpu/--libc to optional packages only; a direct one for another CPU is EBADPLATFORM).
    const cross = join(work, 'cross');
    mkdirSync(cross);
    writeFileSync(join(cross, 'package.json'), JSON.stringify({
      name: 'image-build', version: '1.0.0', private: true,
      dependencies: { meshpipe: `file:${join(work, main.filename)}` },
      optionalDependencies: { [`meshpipe-${FOREIGN}`]: `file:${join(work, foreign.filename)}` },
    }));
    const install = await exec(
      'npm',
      ['install', '--os=linux', '--cpu=arm64', '--libc=glibc', '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts'],
      cross,
      env,
      INSTALL_TIMEOUT_MS,
    );
    const output = `${install.stdout}\n${install.stderr}`;
    assert.equal(install.code, 0, `npm install --cpu=arm64 failed:\n${output}`);
    const file = join(cross, 'node_modules', `meshpipe-${FOREIGN}`, `meshpipe.${FOREIGN}.node`);
    assert.ok(output.includes(`meshpipe: native addon for ${FOREIGN}: ${file} (the prebuilt package meshpipe-${FOREIGN}; installed for another platform, not loaded here)\n`), output);

    // The same install without the arm64 package: the message names the platform npm installed for.
    const crossBare = join(work, 'cross-bare');
    mkdirSync(crossBare);
    writeFileSync(join(crossBare, 'package.json'), JSON.stringify({ name: 'image-build', version: '1.0.0', private: true }));
    const bare = await exec(
      'npm',
      ['install', '--os=linux', '--cpu=arm64', '--libc=glibc', '--omit=optional', '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts', join(work, main.filename)],
      crossBare,
      env,
      INSTALL_TIMEOUT_MS,
    );
    const bareOutput = `${bare.stdout}\n${bare.stderr}`;
    assert.notEqual(bare.code, 0, bareOutput);
    assert.match(bareOutput, new RegExp(`no native addon for this platform: ${FOREIGN} `), bareOutput);
    assert.match(bareOutput, new RegExp(`npm installed for ${FOREIGN} \\(--os/--cpu/--libc\\), not for the machine running this install`), bareOutput);
  });

  test('an install that leaves the platform package out fails with the clear message, not napi\'s generic one', { timeout: INSTALL_TIMEOUT_MS + 60_000 }, async () => {
    const bare = join(work, 'bare');
    mkdirSync(bare);
    writeFileSync(join(bare, 'package.json'), JSON.stringify({ name: 'bare', version: '1.0.0', private: true }));
    const install = await exec(
      'npm',
      ['install', '--omit=optional', '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts', join(work, main.filename)],
      bare,
      env,
      INSTALL_TIMEOUT_MS,
    );
    const output = `${install.stdout}\n${install.stderr}`;
    assert.notEqual(install.code, 0, `the install fails without an addon:\n${output}`);
    assertClearMessage(output);
  });
});

/** The message names the platform, every prebuilt package, the fix for a left-out optional dependency, and how to build from source. */
function assertClearMessage(text: string): void {
  assert.match(text, new RegExp(`no native addon for this platform: ${PLATFORM} \\(Node\\.js v\\d+`), text);
  assert.match(text, new RegExp(`Prebuilt packages exist for: ${ALL_PACKAGES.join(', ')}\\.`), text);
  assert.match(text, new RegExp(`npm install ${PLATFORM_PACKAGE}@${VERSION.replace(/\./g, '\\.')}`), text);
  assert.match(text, /To build from source \(Rust .*rustup\.rs.*`npm install` builds the addon with cargo/, text);
  assert.doesNotMatch(text, NAPI_GENERIC);
}
