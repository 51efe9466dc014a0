/**
 * Test harness for end-to-end tests in Linux network namespaces: throwaway
 * "pods" (a namespace each, loopback up), a "client pod" and a "server pod"
 * joined by a veth pair on a private subnet, commands and long-running
 * processes run inside a pod as a chosen uid/gid, tiny Node TCP peers, and a
 * cleanup that always removes what was created (processes first, by PID, then
 * the namespaces), also when a test fails or the process exits early.
 *
 * Names are unique per test process (`mp-c-<pid>-<n>`, `mp-s-<pid>-<n>`) so
 * test files running in parallel never collide. Addresses (10.250.<n>.1/24 and
 * .2, fd00:250:<n>::1/64 and ::2) exist only inside these namespaces: nothing
 * is routed to or from the host's own network.
 *
 * Namespaces need root (CAP_SYS_ADMIN + CAP_NET_ADMIN). Without them the tests
 * skip loudly with the reason; when the CI environment variable is set they
 * fail instead, because CI runs as root and must run them.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import type { TestContext } from 'node:test';

export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface ExecOptions {
  /** Run as this uid (and `gid`, default = uid) with no supplementary groups; default: the caller (root). */
  readonly uid?: number;
  readonly gid?: number;
  readonly input?: string;
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
}

/** A long-running process inside a pod. */
export interface PodProcess {
  readonly pid: number;
  readonly child: ChildProcess;
  /** Everything it wrote so far (stdout and stderr interleaved). */
  output(): string;
  /** Resolves when the output matches `pattern`; rejects on exit or timeout, with the output. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code or signal. */
  stop(graceMs?: number): Promise<number | string>;
}

export interface Pod {
  /** The network namespace name. */
  readonly ns: string;
  /** Its veth address, when part of a pair. */
  readonly addr4: string | undefined;
  readonly addr6: string | undefined;
  exec(cmd: string, args: readonly string[], opts?: ExecOptions): Promise<RunResult>;
  spawn(cmd: string, args: readonly string[], opts?: ExecOptions): PodProcess;
}

export interface PodPair {
  readonly client: Pod;
  readonly server: Pod;
  /** Deletes both namespaces after stopping every process started in them. Safe to call twice. */
  cleanup(): Promise<void>;
}

let counter = 0;
const liveProcesses = new Set<PodProcess>();
const liveNamespaces = new Set<string>();

/** Synchronous last resort: if the test process exits with namespaces left, remove them. */
process.on('exit', () => {
  for (const p of liveProcesses) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  for (const ns of liveNamespaces) spawnSync('ip', ['netns', 'delete', ns], { stdio: 'ignore' });
});

/** Runs a command on the host (no shell), capturing output. */
export function run(cmd: string, args: readonly string[], opts: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, [...args], { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} could not start: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal === 'SIGKILL' ? 137 : 1), stdout, stderr });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

/** Runs a host command that must succeed; the error names the command and its stderr. */
async function must(cmd: string, args: readonly string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** `ip netns exec NS [setpriv ...] cmd args`: the argv that runs `cmd` inside a pod as a given user. */
export function nsArgv(ns: string, cmd: string, args: readonly string[], opts: ExecOptions = {}): string[] {
  const user =
    opts.uid === undefined
      ? []
      : ['setpriv', `--reuid=${opts.uid}`, `--regid=${opts.gid ?? opts.uid}`, '--clear-groups', '--'];
  return ['netns', 'exec', ns, ...user, cmd, ...args];
}

function startProcess(ns: string, cmd: string, args: readonly string[], opts: ExecOptions): PodProcess {
  // ip netns exec and setpriv both exec, so the child's PID is the command's own PID.
  const child = spawn('ip', nsArgv(ns, cmd, args, opts), { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
  if (child.pid === undefined) throw new Error(`could not start ${cmd} in ${ns}`);
  let out = '';
  const waiters = new Set<() => void>();
  const onData = (d: string): void => {
    out += d;
    for (const w of waiters) w();
  };
  child.stdout.setEncoding('utf8').on('data', onData);
  child.stderr.setEncoding('utf8').on('data', onData);
  if (opts.input !== undefined) child.stdin.end(opts.input);
  let exitValue: number | string | undefined;
  const exited = new Promise<number | string>((resolve) => {
    child.once('close', (code, signal) => {
      exitValue = code ?? signal ?? 'unknown';
      liveProcesses.delete(proc);
      for (const w of waiters) w();
      resolve(exitValue);
    });
  });
  const proc: PodProcess = {
    pid: child.pid,
    child,
    output: () => out,
    waitFor(pattern, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const m = pattern.exec(out);
          if (m) {
            done();
            resolve(m);
          } else if (exitValue !== undefined) {
            done();
            reject(new Error(`${cmd} in ${ns} exited (${exitValue}) before printing ${pattern}; output:\n${out}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`${cmd} in ${ns} did not print ${pattern} within ${timeoutMs} ms; output:\n${out}`));
        }, timeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    async stop(graceMs = 2000) {
      if (exitValue !== undefined) return exitValue;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const v = await exited;
      clearTimeout(timer);
      return v;
    },
  };
  liveProcesses.add(proc);
  return proc;
}

function makePod(ns: string, addr4?: string, addr6?: string): Pod {
  return {
    ns,
    addr4,
    addr6,
    exec: (cmd, args, opts = {}) => run('ip', nsArgv(ns, cmd, args, opts), opts),
    spawn: (cmd, args, opts = {}) => startProcess(ns, cmd, args, opts),
  };
}

/** Stops every process started in `namespaces`, then deletes them. */
async function destroy(namespaces: readonly string[]): Promise<void> {
  const procs = [...liveProcesses];
  // A process belongs to a namespace if its argv named it (ip netns exec NS ...).
  await Promise.all(procs.filter((p) => namespaces.includes(p.child.spawnargs[3] ?? '')).map((p) => p.stop(1000)));
  for (const ns of namespaces) {
    if (!liveNamespaces.has(ns)) continue;
    await run('ip', ['netns', 'delete', ns]);
    liveNamespaces.delete(ns);
  }
}

/** Creates one namespace with loopback up. */
export async function createPod(role = 'p'): Promise<Pod & { cleanup(): Promise<void> }> {
  const ns = `mp-${role}-${process.pid}-${++counter}`;
  await must('ip', ['netns', 'add', ns]);
  liveNamespaces.add(ns);
  try {
    await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  } catch (err) {
    await destroy([ns]);
    throw err;
  }
  return { ...makePod(ns), cleanup: () => destroy([ns]) };
}

/**
 * Creates a client pod and a server pod joined by a veth pair (eth0 in each),
 * client = 10.250.n.1 / fd00:250:n::1, server = 10.250.n.2 / fd00:250:n::2.
 */
export async function createPodPair(): Promise<PodPair> {
  const n = (counter % 250) + 1;
  const c = `mp-c-${process.pid}-${++counter}`;
  const s = `mp-s-${process.pid}-${counter}`;
  const all = [c, s];
  try {
    for (const ns of all) {
      await must('ip', ['netns', 'add', ns]);
      liveNamespaces.add(ns);
    }
    // Created directly inside the namespaces: no interface ever appears on the host.
    await must('ip', ['link', 'add', 'name', 'eth0', 'netns', c, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', s]);
    const addrs: [string, string, string][] = [
      [c, `10.250.${n}.1`, `fd00:250:${n}::1`],
      [s, `10.250.${n}.2`, `fd00:250:${n}::2`],
    ];
    for (const [ns, v4, v6] of addrs) {
      await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      await must('ip', ['-n', ns, 'addr', 'add', `${v4}/24`, 'dev', 'eth0']);
      // nodad: the address is usable at once instead of after duplicate detection (~1-2 s).
      await must('ip', ['-n', ns, '-6', 'addr', 'add', `${v6}/64`, 'dev', 'eth0', 'nodad']);
      await must('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    }
  } catch (err) {
    await destroy(all);
    throw err;
  }
  return {
    client: makePod(c, `10.250.${n}.1`, `fd00:250:${n}::1`),
    server: makePod(s, `10.250.${n}.2`, `fd00:250:${n}::2`),
    cleanup: () => destroy(all),
  };
}

let support: Promise<{ ok: true } | { ok: false; reason: string }> | undefined;

/** Whether this process can create network namespaces (probed once by creating and deleting one). */
export function netnsSupport(): Promise<{ ok: true } | { ok: false; reason: string }> {
  support ??= (async () => {
    if (process.getuid?.() !== 0) return { ok: false, reason: `not running as root (uid ${process.getuid?.()})` } as const;
    const probe = `mp-probe-${process.pid}`;
    const r = await run('ip', ['netns', 'add', probe]).catch((e: Error) => ({ code: 127, stdout: '', stderr: e.message }));
    if (r.code !== 0) return { ok: false, reason: `ip netns add failed: ${r.stderr.trim()}` } as const;
    await run('ip', ['netns', 'delete', probe]);
    return { ok: true } as const;
  })();
  return support;
}

/**
 * Gate for a namespace test: true to go on; otherwise skips the test loudly
 * (and returns false), or, when CI is set, throws so the test fails.
 */
export async function requireNetns(t: TestContext): Promise<boolean> {
  const s = await netnsSupport();
  if (s.ok) return true;
  const msg = `network-namespace test skipped: ${s.reason}; run as root to include it`;
  if (process.env['CI']) throw new Error(`${msg}. CI is set, and CI must run these tests: failing instead of skipping`);
  process.stderr.write(`\n*** SKIP ${t.name}: ${msg} ***\n\n`);
  t.skip(msg);
  return false;
}

/**
 * A Node TCP server for tests, as a script: listens on HOST PORT, prints
 * `LISTENING <port>`, and answers every connection with
 * `<tag> local=<addr>:<port> remote=<addr>:<port>\n`, then closes.
 */
export const RESPONDER_SCRIPT = `
const net = require('node:net');
const [host, port, tag] = process.argv.slice(1);
const server = net.createServer((s) => {
  s.on('error', () => {});
  s.end(tag + ' local=' + s.localAddress + ':' + s.localPort + ' remote=' + s.remoteAddress + ':' + s.remotePort + '\\n');
});
server.listen({ host, port: Number(port) }, () => console.log('LISTENING ' + server.address().port));
process.on('SIGTERM', () => process.exit(0));
`;

/** A Node TCP client: connects to HOST PORT, prints what it receives, or `ERROR <code>`. */
export const CLIENT_SCRIPT = `
const net = require('node:net');
const [host, port] = process.argv.slice(1);
let data = '';
const s = net.connect({ host, port: Number(port), timeout: 5000 });
s.setEncoding('utf8');
s.on('data', (d) => (data += d));
s.on('end', () => { process.stdout.write(data); process.exit(0); });
s.on('timeout', () => { console.log('ERROR ETIMEDOUT'); process.exit(1); });
s.on('error', (e) => { console.log('ERROR ' + e.code); process.exit(1); });
`;

/** Starts a responder in `pod` and waits until it listens. */
export async function startResponder(pod: Pod, host: string, port: number, tag: string, opts: ExecOptions = {}): Promise<PodProcess> {
  const p = pod.spawn(process.execPath, ['-e', RESPONDER_SCRIPT, host, String(port), tag], opts);
  await p.waitFor(/LISTENING \d+/);
  return p;
}

/** Connects from `pod` (as `opts.uid`) to host:port and returns the first line received, or `ERROR <code>`. */
export async function tcpRequest(pod: Pod, host: string, port: number, opts: ExecOptions = {}): Promise<string> {
  const r = await pod.exec(process.execPath, ['-e', CLIENT_SCRIPT, host, String(port)], { timeoutMs: 15_000, ...opts });
  return (r.stdout.trim().split('\n')[0] ?? '') || `ERROR exit ${r.code}: ${r.stderr.trim()}`;
}
