/**
 * Starting meshpipe for the benchmark exactly as a user would: the built CLI
 * (`node dist/ts/cli/main.js proxy --forward BIND=TARGET,mode=M ...`) in its own
 * process with the fd limit raised, ready once every listener is in LISTEN
 * state. Also describes which build was measured (git commit, addon mtime) so
 * numbers in bench/results/latest.json can be tied to the code that made them.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Forward, Peer } from './peers.js';
import { spawnTracked, stopTracked, waitListening } from './processes.js';

/** The repository root (this file runs from dist/bench/). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI_PATH = join(REPO_ROOT, 'dist', 'ts', 'cli', 'main.js');
const NATIVE_DIR = join(REPO_ROOT, 'native');

const BASE_FLAGS = ['--log-level', 'warn', '--admin', 'off', '--drain-timeout', '2s'];

/** A meshpipe listener: a proxy forward plus the engine's port mode for it. */
export interface MeshpipeForward extends Forward {
  readonly mode: 'opaque' | 'detect' | 'http1' | 'http2' | 'grpc';
}

export interface MeshpipeBuild {
  readonly available: boolean;
  /** Why meshpipe cannot run (missing CLI or addon), when it cannot. */
  readonly reason: string;
  readonly commit: string;
  /** True when the working tree had uncommitted changes at bench time. */
  readonly dirty: boolean;
  readonly addon: string;
  readonly addonBuiltAt: string;
  readonly version: string;
}

function git(args: string[]): string {
  const r = spawnSync('git', ['-C', REPO_ROOT, ...args], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : '';
}

/** Whether the CLI and the native addon are built, and which build they are. */
export function meshpipeBuild(): MeshpipeBuild {
  const addons = existsSync(NATIVE_DIR) ? readdirSync(NATIVE_DIR).filter((f) => f.endsWith('.node')) : [];
  const addon = addons[0] ?? '';
  const base = {
    commit: git(['rev-parse', '--short', 'HEAD']) || 'unknown',
    dirty: git(['status', '--porcelain', '--untracked-files=no']) !== '',
    addon,
    addonBuiltAt: addon === '' ? '' : statSync(join(NATIVE_DIR, addon)).mtime.toISOString(),
  };
  if (!existsSync(CLI_PATH)) {
    return { ...base, available: false, reason: `${CLI_PATH} is missing (run npm install or npm run build:ts)`, version: '' };
  }
  if (addon === '') {
    return { ...base, available: false, reason: `no native addon in ${NATIVE_DIR} (run npm run build:native)`, version: '' };
  }
  const r = spawnSync(process.execPath, [CLI_PATH, '--version'], { encoding: 'utf8', timeout: 15_000 });
  if (r.status !== 0) {
    const why = `${r.stderr}${r.stdout}`.trim().split('\n').slice(-3).join(' / ');
    return { ...base, available: false, reason: `meshpipe --version failed (exit ${r.status ?? r.signal}): ${why}`, version: '' };
  }
  return { ...base, available: true, reason: '', version: r.stdout.trim() };
}

export interface MeshpipeOptions {
  /** Engine worker threads; omitted = the CLI default (one per core). */
  readonly workers?: number;
  /** Extra CLI flags (e.g. `--max-connections`). */
  readonly extraArgs?: readonly string[];
}

/** Starts `meshpipe proxy` with one `--forward` per entry and waits until all listen. */
export async function startMeshpipe(forwards: readonly MeshpipeForward[], dir: string, options: MeshpipeOptions = {}): Promise<Peer> {
  // No admin server (its fixed default port would collide with other meshpipes on
  // this host) and a short drain so stopping between tests is quick.
  const args = [CLI_PATH, 'proxy', ...BASE_FLAGS];
  for (const f of forwards) args.push('--forward', `127.0.0.1:${f.port}=${f.target},mode=${f.mode}`);
  if (options.workers !== undefined) args.push('--workers', String(options.workers));
  args.push(...(options.extraArgs ?? []));
  const t = spawnTracked('meshpipe', process.execPath, args, dir, { cwd: REPO_ROOT });
  const ports = forwards.map((f) => f.port);
  await waitListening(t, ports);
  return { name: 'meshpipe', pid: t.pid, tracked: t, ports, stop: () => stopTracked(t, 5000) };
}

/** The command line used, for the JSON record. */
export function meshpipeCommand(forwards: readonly MeshpipeForward[]): string {
  return [`node dist/ts/cli/main.js proxy ${BASE_FLAGS.join(' ')}`, ...forwards.map((f) => `--forward 127.0.0.1:${f.port}=${f.target},mode=${f.mode}`)].join(' ');
}
