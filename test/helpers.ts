/**
 * Shared helpers for the integration tests: run the real `meshpipe` CLI as a
 * child process, learn the ports it bound from its `listener bound` log lines
 * (JSON on stderr),
 * and drive real TCP peers (echo, recording and data-sending servers on port
 * 0), with SHA-256 accounting of every byte and timeouts on every wait so a
 * broken proxy fails a test instead of hanging it.
 *
 * Conventions: everything binds 127.0.0.1 port 0; child processes get the
 * test's environment minus any MESHPIPE_* variables, plus MESHPIPE_ADMIN=off
 * (so parallel proxies never fight over the admin port; pass `--admin` to
 * override); every process and server a helper starts is registered with
 * `cleanup` and stopped by PID at the end of the test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'node:test';

/** The repository root (helpers.js lives in dist/test/). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** The compiled CLI entry point. */
export const CLI = join(ROOT, 'dist/ts/cli/main.js');
export const HOST = '127.0.0.1';
export const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------
// Waiting.

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Rejects with a message naming `what` if `promise` does not settle within `ms`. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms}ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `predicate` until it returns a truthy value; rejects after `timeoutMs`. */
export async function waitFor<T>(predicate: () => T | Promise<T>, what: string, timeoutMs = 5000, intervalMs = 20): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

// ---------------------------------------------------------------------------
// The CLI as a child process.

/** The environment for a child: the test's own minus MESHPIPE_*, plus overrides. */
export function childEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('MESHPIPE_')) env[k] = v;
  return { ...env, MESHPIPE_ADMIN: 'off', ...extra };
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  durationMs: number;
}

/** Runs `meshpipe ARGS` to completion (killed after `timeoutMs`). */
export async function runCli(args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; script?: string } = {}): Promise<CliResult> {
  const proc = new CliProcess(args, opts);
  const exit = await withTimeout(proc.exited, opts.timeoutMs ?? 15_000, `meshpipe ${args.join(' ')} to exit`).catch((err) => {
    proc.kill();
    throw err;
  });
  return { ...exit, stdout: proc.stdout, stderr: proc.stderr, durationMs: Date.now() - proc.startedAt };
}

/** One parsed JSON log line. */
export interface LogLine {
  msg: string;
  level: string;
  [key: string]: unknown;
}

/** A running `meshpipe` process with its output captured and its JSON logs (stderr) parsed. */
export class CliProcess {
  readonly child: ChildProcess;
  readonly startedAt = Date.now();
  readonly logs: LogLine[] = [];
  stdout = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exitedAt: number | undefined;
  #listeners: Array<() => void> = [];

  /**
   * @param opts.script another CLI entry point (default dist/ts/cli/main.js)
   * @param opts.fdLimit run with this RLIMIT_NOFILE (soft and hard, set by bash's
   *   ulimit before exec, so Node cannot raise it again); the PID stays the same.
   */
  constructor(args: string[], opts: { env?: NodeJS.ProcessEnv; script?: string; fdLimit?: number } = {}) {
    const argv = [process.execPath, opts.script ?? CLI, ...args];
    const [command, ...rest] =
      opts.fdLimit === undefined ? argv : ['bash', '-c', `ulimit -n ${opts.fdLimit} && exec "$@"`, 'bash', ...argv];
    this.child = spawn(command!, rest, { env: childEnv(opts.env), stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      this.stdout += chunk;
      this.#notify();
    });
    // Logs are JSON lines on stderr (ts/observe/logger.ts: stderr is not a
    // terminal here, so the format is JSON); anything else there (an error
    // line) is kept in `stderr` only.
    let partial = '';
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      this.stderr += chunk;
      partial += chunk;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        try {
          this.logs.push(JSON.parse(line) as LogLine);
        } catch {
          // not a log line: kept in `stderr` only
        }
      }
      this.#notify();
    });
    this.exited = new Promise((resolve) => {
      // 'close' (not 'exit'): it fires once stdout and stderr are drained too,
      // so the last log lines are in `logs` before anyone looks.
      this.child.on('close', (code, signal) => {
        this.exitedAt = Date.now();
        resolve({ code, signal });
        this.#notify();
      });
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  #notify(): void {
    for (const l of this.#listeners) l();
  }

  /** Resolves with the first log line matching `predicate` (already seen or future). */
  waitForLog(predicate: (line: LogLine) => boolean, what: string, timeoutMs = 10_000): Promise<LogLine> {
    const found = new Promise<LogLine>((resolve, reject) => {
      const check = () => {
        const line = this.logs.find(predicate);
        if (line) {
          this.#listeners = this.#listeners.filter((l) => l !== check);
          resolve(line);
        } else if (!this.running && this.exitedAt !== undefined) {
          this.#listeners = this.#listeners.filter((l) => l !== check);
          reject(new Error(`meshpipe exited (${this.child.exitCode ?? this.child.signalCode}) before logging ${what}; stderr: ${this.stderr}`));
        }
      };
      this.#listeners.push(check);
      check();
    });
    return withTimeout(found, timeoutMs, `log line ${what}; stderr so far: ${this.stderr}`);
  }

  /** Sends a signal by PID (only to this process). */
  signal(signal: NodeJS.Signals): void {
    if (this.running) process.kill(this.pid, signal);
  }

  /** SIGKILLs the process if it still runs. */
  kill(): void {
    this.signal('SIGKILL');
  }
}

export interface RunningProxy {
  proc: CliProcess;
  /** The `listener bound` log lines, in config order. */
  bound: LogLine[];
  /** The bound port of each listener, in config order. */
  ports: number[];
}

/**
 * Starts `meshpipe proxy ARGS` and waits until it logged `proxy ready`;
 * registers a kill with `t` (if given) so the process never outlives the test.
 */
export async function startProxy(
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; t?: TestContext; timeoutMs?: number; fdLimit?: number } = {},
): Promise<RunningProxy> {
  const proc = new CliProcess(['proxy', ...args], opts);
  opts.t?.after(() => proc.kill());
  try {
    await proc.waitForLog((l) => l.msg === 'proxy ready', '"proxy ready"', opts.timeoutMs ?? 10_000);
  } catch (err) {
    proc.kill();
    throw err;
  }
  const bound = proc.logs.filter((l) => l.msg === 'listener bound');
  return { proc, bound, ports: bound.map((l) => Number(l.port)) };
}

/** CPU time (user + system, all threads) a process has used so far, in milliseconds (Linux /proc). */
export function cpuTimeMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may contain spaces) start at ") ".
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15)
  return (ticks * 1000) / CLOCK_TICKS_PER_SECOND;
}

/** USER_HZ: 100 on every Linux architecture Node supports. */
const CLOCK_TICKS_PER_SECOND = 100;

/** A port that was free a moment ago (bound then released); for "nothing listens" checks. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, HOST);
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

/** Resolves true if something accepts TCP connections on the port. */
export async function isListening(port: number, host = HOST): Promise<boolean> {
  try {
    const socket = await connect(port, host, 2000);
    socket.destroy();
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// Sockets and data.

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Connects (with half-open allowed, so a test controls both directions). */
export async function connect(port: number, host = HOST, timeoutMs = 5000): Promise<net.Socket> {
  const socket = net.connect({ port, host, allowHalfOpen: true });
  try {
    await withTimeout(once(socket, 'connect'), timeoutMs, `connect to ${host}:${port}`);
  } catch (err) {
    socket.destroy();
    throw err;
  }
  return socket;
}

/**
 * Writes `total` random bytes in chunks, respecting back-pressure; resolves
 * with their SHA-256 once all are handed to the kernel. Does not end the socket.
 */
export async function writeRandom(socket: net.Socket, total: number, opts: { chunk?: number; delayMs?: number } = {}): Promise<string> {
  const hash = createHash('sha256');
  const chunkSize = opts.chunk ?? 256 * 1024;
  for (let sent = 0; sent < total; ) {
    const chunk = randomBytes(Math.min(chunkSize, total - sent));
    hash.update(chunk);
    sent += chunk.length;
    if (!socket.write(chunk)) await drainOrClose(socket);
    if (socket.destroyed) throw new Error(`socket closed after ${sent} of ${total} bytes`);
    if (opts.delayMs) await sleep(opts.delayMs);
  }
  return hash.digest('hex');
}

/** Waits for 'drain' or 'close', removing both listeners afterwards (no listener build-up). */
function drainOrClose(socket: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.on('drain', done);
    socket.on('close', done);
  });
}

/** What a socket received until its peer ended (or the socket closed). */
export interface Received {
  bytes: number;
  sha256: string;
  /** True if the stream ended with a clean EOF (FIN), false on close/reset. */
  ended: boolean;
  error: string | undefined;
}

/** Hashes everything the socket receives; resolves at EOF or close. */
export function collect(socket: net.Socket): Promise<Received> {
  const hash: Hash = createHash('sha256');
  let bytes = 0;
  let error: string | undefined;
  socket.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
    hash.update(chunk);
  });
  socket.on('error', (err: NodeJS.ErrnoException) => {
    error = err.code ?? err.message;
  });
  return new Promise((resolve) => {
    let done = false;
    const finish = (ended: boolean) => {
      if (done) return;
      done = true;
      resolve({ bytes, sha256: hash.digest('hex'), ended, error });
    };
    socket.on('end', () => finish(true));
    socket.on('close', () => finish(false));
  });
}

/**
 * Resolves when the peer is gone: a FIN ('end', which does not close a
 * half-open socket by itself) or a close/reset. Says which, and the error
 * code if any (e.g. ECONNRESET).
 */
export function closed(socket: net.Socket): Promise<{ how: 'end' | 'close'; error: string | undefined }> {
  if (socket.destroyed) return Promise.resolve({ how: 'close', error: undefined });
  let error: string | undefined;
  socket.on('error', (err: NodeJS.ErrnoException) => {
    error = err.code ?? err.message;
  });
  socket.resume(); // keep reading so 'end' can be seen
  return new Promise((resolve) => {
    socket.once('end', () => resolve({ how: 'end', error }));
    socket.once('close', () => resolve({ how: 'close', error }));
  });
}

// ---------------------------------------------------------------------------
// Servers.

/** One connection accepted by a test server, with everything it received. */
export interface Accepted {
  socket: net.Socket;
  /** The peer address as accepted (kept: a closed socket forgets it). */
  remoteAddress: string | undefined;
  /** Resolves when the peer ends or the connection closes. */
  received: Promise<Received>;
}

export interface TestServer {
  server: net.Server;
  port: number;
  accepted: Accepted[];
  /** Resolves with the `n`-th accepted connection (1-based), waiting if needed. */
  connection(n: number, timeoutMs?: number): Promise<Accepted>;
  close(): Promise<void>;
}

/**
 * A TCP server on 127.0.0.1:0 that records every connection (bytes and
 * SHA-256 received) and runs `onConnection` for each. Half-open is allowed:
 * the handler decides when to end its side.
 */
export async function startServer(
  onConnection: (accepted: Accepted) => void = () => undefined,
  t?: TestContext,
  host: string = HOST,
): Promise<TestServer> {
  const accepted: Accepted[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    const a: Accepted = { socket, remoteAddress: socket.remoteAddress, received: collect(socket) };
    accepted.push(a);
    onConnection(a);
  });
  server.maxConnections = 100_000;
  server.listen({ port: 0, host, backlog: 4096 });
  await once(server, 'listening');
  const result: TestServer = {
    server,
    port: (server.address() as net.AddressInfo).port,
    accepted,
    connection: (n, timeoutMs = 5000) => waitFor(() => accepted[n - 1], `connection #${n} on test server`, timeoutMs),
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
  t?.after(() => result.close());
  return result;
}

/** Echoes every byte back; ends its side when the client ends (half-close echo). */
export function startEchoServer(t?: TestContext, host: string = HOST): Promise<TestServer> {
  return startServer(
    ({ socket }) => {
      socket.pipe(socket);
      socket.on('error', () => undefined);
    },
    t,
    host,
  );
}

/**
 * Sends `bytes` random bytes to each client as soon as it connects (then ends
 * its side once the client ended too), while recording what it receives;
 * `sent` holds the SHA-256 of what was sent, by connection index.
 */
export async function startSourceServer(bytes: number, t?: TestContext): Promise<TestServer & { sent: Promise<string>[] }> {
  const sent: Promise<string>[] = [];
  const server = await startServer(({ socket, received }) => {
    socket.on('error', () => undefined);
    const done = writeRandom(socket, bytes);
    sent.push(done);
    // Both outcomes handled; socket.end() and destroy() do not throw.
    void Promise.all([done, received]).then(() => socket.end(), () => socket.destroy());
  }, t);
  return Object.assign(server, { sent });
}
