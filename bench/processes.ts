/**
 * Process plumbing for the benchmark: spawning peers and proxies with a raised
 * fd limit, stopping exactly the processes we started (by PID, never by name),
 * waiting for a port to be in LISTEN state, picking free ports, and reading a
 * process's resident memory, CPU time and open-fd count from /proc.
 *
 * Readiness is checked in /proc/net/tcp{,6} rather than by connecting: a probe
 * connection through a proxy would reach the target (an iperf3 server counts
 * it as a failed test, a sink would hold it) and skew what we measure.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, readFileSync, readdirSync, type WriteStream } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** A child process we own, with its output captured to a log file. */
export interface Tracked {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  readonly logPath: string;
  /** Resolves with the exit code (or signal name) when the process ends. */
  readonly exited: Promise<number | string>;
  /** True once the process has ended. */
  hasExited(): boolean;
}

/** Every process started through `spawnTracked`, so a crash or Ctrl-C still cleans up. */
const live = new Set<Tracked>();

/**
 * Starts `command args` under `bash -c 'ulimit -n <hard max>; exec ...'` so
 * the process (same PID, thanks to exec) can hold tens of thousands of
 * sockets. Output goes to `<logDir>/<name>.log`.
 */
export function spawnTracked(name: string, command: string, args: readonly string[], logDir: string,
  options: { cwd?: string; env?: NodeJS.ProcessEnv; stdin?: 'pipe' | 'ignore' } = {}): Tracked {
  const logPath = join(logDir, `${name}.log`);
  const log: WriteStream = createWriteStream(logPath, { flags: 'a' });
  const script = 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"';
  const child = spawn('bash', ['-c', script, 'bash', command, ...args], {
    cwd: options.cwd,
    env: options.env ?? process.env,
    stdio: [options.stdin ?? 'ignore', 'pipe', 'pipe'],
  });
  if (child.pid === undefined) throw new Error(`could not start ${name} (${command}): spawn failed`);
  child.stdout?.pipe(log, { end: false });
  child.stderr?.pipe(log, { end: false });
  let done = false;
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => {
      done = true;
      resolve(code ?? signal ?? 'unknown');
    });
  });
  const tracked: Tracked = { name, pid: child.pid, child, logPath, exited, hasExited: () => done };
  live.add(tracked);
  // `exited` never rejects (resolved on 'exit').
  void exited.then(() => {
    live.delete(tracked);
    setTimeout(() => log.end(), 50);
  });
  return tracked;
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
export async function stopTracked(t: Tracked, graceMs = 3000): Promise<void> {
  if (t.hasExited()) return;
  try {
    process.kill(t.pid, 'SIGTERM');
  } catch {
    return;
  }
  const timer = setTimeout(() => {
    try {
      process.kill(t.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }, graceMs);
  await t.exited;
  clearTimeout(timer);
}

/** Stops every process still running (used on errors and signals). */
export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((t) => stopTracked(t, 1000)));
}

/** The last `lines` lines of a tracked process's log, for error messages. */
export function logTail(t: Tracked, lines = 15): string {
  try {
    return readFileSync(t.logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no output)';
  }
}

/** An unused TCP port on 127.0.0.1 (bound, read, released). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('could not pick a free port'))));
    });
  });
}

/**
 * `count` distinct unused TCP ports on 127.0.0.1: all are held bound until
 * the last is picked (ports picked one at a time with `freePort` may repeat,
 * since the kernel can hand a just-released port out again).
 */
export async function freePorts(count: number): Promise<number[]> {
  const servers: ReturnType<typeof createServer>[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i++) {
      const server = createServer();
      servers.push(server);
      ports.push(
        await new Promise<number>((resolve, reject) => {
          server.once('error', reject);
          server.listen(0, '127.0.0.1', () => {
            const address = server.address();
            if (typeof address === 'object' && address !== null) resolve(address.port);
            else reject(new Error('could not pick a free port'));
          });
        }),
      );
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => (s.listening ? s.close(() => resolve()) : resolve()))));
  }
}

/** True when some socket on this host is in LISTEN state on `port`. */
export function isListening(port: number): boolean {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      // cols[1] = local "ADDR:PORT", cols[3] = state; 0A = TCP_LISTEN.
      if (cols[3] === '0A' && cols[1]?.endsWith(`:${hexPort}`)) return true;
    }
  }
  return false;
}

/**
 * Waits until every port listens, failing early (with the log tail) if the
 * process exits first.
 */
export async function waitListening(t: Tracked, ports: readonly number[], timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (t.hasExited()) {
      throw new Error(`${t.name} exited before listening on ${ports.join(', ')}:\n${logTail(t)}`);
    }
    if (ports.every(isListening)) return;
    await sleep(50);
  }
  throw new Error(`${t.name} did not listen on ${ports.join(', ')} within ${timeoutMs} ms:\n${logTail(t)}`);
}

/** Direct children of `pid` (nginx workers under their master). */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Field 4 (ppid) follows the parenthesised command name, which may contain spaces.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(rest[1]) === pid) out.push(Number(entry));
    } catch {
      /* process vanished while we looked */
    }
  }
  return out;
}

/** `pid` and its direct children. */
export function processTree(pid: number): number[] {
  return [pid, ...childPids(pid)];
}

/** VmRSS in KiB, summed over `pid` and its children. */
export function rssKiB(pid: number): number {
  let total = 0;
  for (const p of processTree(pid)) {
    const status = readFileSync(`/proc/${p}/status`, 'utf8');
    const match = /^VmRSS:\s+(\d+) kB/m.exec(status);
    total += match ? Number(match[1]) : 0;
  }
  return total;
}

/** Open file descriptors of `pid` and its children. */
export function fdCount(pid: number): number {
  return processTree(pid).reduce((sum, p) => {
    try {
      return sum + readdirSync(`/proc/${p}/fd`).length;
    } catch {
      return sum;
    }
  }, 0);
}

const CLOCK_TICKS = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const n = Number(r.stdout.trim());
  return Number.isFinite(n) && n > 0 ? n : 100;
})();

/** User + system CPU seconds consumed so far by `pid` and its children (all threads). */
export function cpuSeconds(pid: number): number {
  let ticks = 0;
  for (const p of processTree(pid)) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // After the name: state(0) ppid(1) ... utime(11) stime(12).
      ticks += Number(rest[11]) + Number(rest[12]);
    } catch {
      /* gone */
    }
  }
  return ticks / CLOCK_TICKS;
}

/**
 * Runs a command to completion without blocking the event loop (load
 * generators run while we sample /proc); resolves with stdout, rejects with
 * the exit status and the tail of stderr.
 */
export async function runAsync(command: string, args: readonly string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (e) => reject(new Error(`${command}: ${e.message}`)));
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${command} ${args.join(' ')} exited ${code ?? signal}:\n${(err || out).trim().slice(-2000)}`));
    });
  });
}

/** The absolute path of `command` on PATH, or null. */
export function which(command: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir !== '' && existsSync(join(dir, command))) return join(dir, command);
  }
  for (const dir of ['/usr/sbin', '/sbin']) if (existsSync(join(dir, command))) return join(dir, command);
  return null;
}

/**
 * Makes sure `check()` holds, installing the Debian `packages` with apt-get
 * when it does not (the issue allows the benchmark to install its peers).
 * Without root or apt-get it fails with a message saying what to install.
 */
export function ensureInstalled(what: string, check: () => boolean, packages: readonly string[]): void {
  if (check()) return;
  const hint = `apt-get install -y ${packages.join(' ')}`;
  if (process.getuid?.() !== 0 || which('apt-get') === null) {
    throw new Error(`${what} is missing and cannot be installed automatically (needs root and apt-get): run \`${hint}\``);
  }
  console.error(`[bench] ${what} is missing: running ${hint}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  let r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...packages], { stdio: 'inherit', env });
  if (r.status !== 0) {
    spawnSync('apt-get', ['update'], { stdio: 'inherit', env });
    r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...packages], { stdio: 'inherit', env });
  }
  if (r.status !== 0 || !check()) throw new Error(`${what} is still missing after \`${hint}\``);
}
