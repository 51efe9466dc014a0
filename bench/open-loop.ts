/**
 * A fixed-rate (open-loop) HTTP/1.1 load generator, because wrk cannot hold a
 * fixed request rate and wrk2 is not packaged in Debian. It sends GET
 * requests at `rate` per second for `seconds` over a pool of keep-alive
 * connections and records each request's latency; the schedule does not slow
 * down when responses do (requests that find no idle connection queue and
 * their wait counts), which is what makes it open-loop.
 *
 * Two latencies per request: from the moment the request was due by the
 * schedule (wrk2's "corrected" latency, free of coordinated omission) and from
 * the moment it was written to the socket (service time as the client sees
 * it). Node timers fire at best every millisecond, so requests leave in small
 * bursts (5 per tick at 5k req/s) and the schedule-based number carries up to
 * ~1 ms of generator lateness that is the same for every path compared.
 *
 * Raw sockets with a minimal response parser (Content-Length bodies only),
 * not node:http: its per-request overhead would be a large part of what is
 * measured on a 2-core machine.
 */
import net from 'node:net';

export interface OpenLoopOptions {
  readonly port: number;
  readonly path: string;
  /** Requests per second. */
  readonly rate: number;
  readonly seconds: number;
  /** Keep-alive connections in the pool. */
  readonly connections: number;
}

export interface OpenLoopResult {
  /** Latency from the scheduled send time, ms (one per completed request). */
  readonly fromScheduleMs: Float64Array;
  /** Latency from the actual write, ms. */
  readonly fromSendMs: Float64Array;
  readonly sent: number;
  readonly completed: number;
  /** Requests that could not be sent on time because every connection was busy. */
  readonly queued: number;
  readonly errors: number;
  readonly firstError: string;
  /** Completed requests per second over the whole run. */
  readonly achievedRate: number;
}

interface Conn {
  readonly socket: net.Socket;
  busy: boolean;
  buf: Buffer;
  want: number;
  scheduledNs: bigint;
  sentNs: bigint;
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Runs the load; resolves when every request is answered (or has failed) after `seconds`. */
export async function openLoop(o: OpenLoopOptions): Promise<OpenLoopResult> {
  const request = Buffer.from(`GET ${o.path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: mp-open-loop\r\n\r\n`);
  const total = Math.round(o.rate * o.seconds);
  const fromSchedule = new Float64Array(total);
  const fromSend = new Float64Array(total);
  let completed = 0;
  let sent = 0;
  let queued = 0;
  let errors = 0;
  let firstError = '';
  const waiting: bigint[] = [];
  const idle: Conn[] = [];
  const conns: Conn[] = [];
  let finished: (() => void) | null = null;

  const fail = (msg: string): void => {
    errors++;
    if (firstError === '') firstError = msg;
  };
  const send = (c: Conn, scheduledNs: bigint): void => {
    c.busy = true;
    c.scheduledNs = scheduledNs;
    c.sentNs = process.hrtime.bigint();
    c.socket.write(request);
    sent++;
  };
  const settle = (): void => {
    if (completed + errors >= total && finished) finished();
  };
  const release = (c: Conn): void => {
    c.busy = false;
    const next = waiting.shift();
    if (next !== undefined) send(c, next);
    else idle.push(c);
  };

  for (let i = 0; i < o.connections; i++) {
    const socket = await connect(o.port);
    const c: Conn = { socket, busy: false, buf: Buffer.alloc(0), want: -1, scheduledNs: 0n, sentNs: 0n };
    socket.on('data', (d: Buffer) => {
      c.buf = c.buf.length === 0 ? d : Buffer.concat([c.buf, d]);
      if (c.want < 0) {
        const end = c.buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const m = /\r\ncontent-length:\s*(\d+)/i.exec(c.buf.subarray(0, end).toString('latin1'));
        if (!m) {
          fail(`response without Content-Length: ${c.buf.subarray(0, 60).toString('latin1')}`);
          socket.destroy();
          return;
        }
        c.want = end + 4 + Number(m[1]);
      }
      if (c.buf.length < c.want) return;
      const now = process.hrtime.bigint();
      fromSchedule[completed] = Number(now - c.scheduledNs) / 1e6;
      fromSend[completed] = Number(now - c.sentNs) / 1e6;
      completed++;
      c.buf = c.buf.subarray(c.want);
      c.want = -1;
      release(c);
      settle();
    });
    socket.on('error', (e) => fail(e.message));
    socket.on('close', () => {
      // A request in flight on a closed connection is lost; the connection leaves the pool.
      if (c.busy) fail('connection closed with a request in flight');
      c.busy = true;
      const at = idle.indexOf(c);
      if (at >= 0) idle.splice(at, 1);
      settle();
    });
    conns.push(c);
    idle.push(c);
  }

  const startNs = process.hrtime.bigint();
  const intervalNs = BigInt(Math.round(1e9 / o.rate));
  let due = 0;
  const done = new Promise<void>((resolve) => (finished = resolve));
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = process.hrtime.bigint();
      while (due < total && startNs + BigInt(due) * intervalNs <= now) {
        const scheduled = startNs + BigInt(due) * intervalNs;
        const c = idle.pop();
        if (c) send(c, scheduled);
        else {
          waiting.push(scheduled);
          queued++;
        }
        due++;
      }
      if (due < total) setTimeout(tick, 1);
      else resolve();
    };
    tick();
  });
  // Wait for the last answers (bounded: a stuck path must not hang the bench).
  const timeout = new Promise<void>((resolve) => setTimeout(resolve, 10_000).unref());
  settle();
  await Promise.race([done, timeout]);
  const elapsedS = Number(process.hrtime.bigint() - startNs) / 1e9;
  for (const c of conns) c.socket.destroy();
  if (completed + errors < total) fail(`${total - completed - errors} request(s) unanswered 10 s after the schedule ended`);
  return {
    fromScheduleMs: fromSchedule.subarray(0, completed),
    fromSendMs: fromSend.subarray(0, completed),
    sent,
    completed,
    queued,
    errors,
    firstError,
    achievedRate: completed / elapsedS,
  };
}

/** Percentile (0..100) of a sample, nearest-rank, without modifying it. */
export function pct(values: Float64Array, p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}
