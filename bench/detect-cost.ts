/**
 * Section `detect-cost`: what protocol detection adds to connection setup.
 *
 * Method: N sequential cycles of connect -> send a small HTTP/1.1 request
 * (request line + Host, User-Agent, Accept headers, 80 bytes) -> read the
 * whole response (nginx, 512-byte static file, Content-Length) -> close, timed
 * from the connect call until the last response byte, against nginx directly
 * and through two `meshpipe proxy --forward` listeners in one process to the
 * same nginx, one `mode=opaque` (upstream connect starts at accept) and one
 * `mode=detect` (the proxy reads the request line, classifies it as HTTP/1,
 * then connects upstream and replays it). The difference of the detect and
 * opaque medians is the added cost of detection per connection.
 *
 * The client is a small Node loop in the bench process (one connection at a
 * time, nothing else running in it): its own per-cycle overhead is the same
 * on every path and the median of thousands of cycles is steady. Cycles run in
 * interleaved blocks (every path in turn) so background load hits all alike.
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { SMALL_FILE, percentile, startNginxHttp } from './http-peers.js';
import { meshpipeCommand, startMeshpipe, type MeshpipeForward } from './meshpipe.js';
import { ensurePeers, type Peer } from './peers.js';
import { freePort } from './processes.js';
import { load1, median, type BenchContext, type BenchSection, type Row, type Section, type Subject } from './report.js';

/** Cycles per path (the issue suggests 2000; twice that steadies the detect - opaque difference). */
const CYCLES = 4000;
const WARMUP = 200;
/** Cycles per interleaved block. */
const BLOCK = 200;
const TARGET_ADDED_US = 50;

const REQUEST = Buffer.from(`GET /${SMALL_FILE} HTTP/1.1\r\nHost: bench\r\nUser-Agent: mp\r\nAccept: */*\r\n\r\n`);

interface Path {
  readonly name: string;
  readonly subject: Subject;
  readonly port: number;
  /** Microseconds per cycle, in order. */
  readonly samples: number[];
  /** Median of each block, for the per-run column. */
  readonly blockMedians: number[];
  readonly loads: number[];
  errors: number;
  firstError: string;
}

/** One cycle; resolves with its duration in microseconds (connect call -> last byte). */
export function cycle(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
    let buf: Buffer = Buffer.alloc(0);
    let want = -1;
    let done = false;
    const finish = (err: Error | null): void => {
      if (done) return;
      done = true;
      const us = Number(process.hrtime.bigint() - t0) / 1000;
      s.destroy();
      // Resolve once the socket is closed so the next cycle does not overlap this one's teardown.
      if (err) s.once('close', () => reject(err));
      else s.once('close', () => resolve(us));
    };
    s.setTimeout(5000, () => finish(new Error('no complete response within 5 s')));
    s.once('connect', () => s.write(REQUEST));
    s.on('data', (d: Buffer) => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      if (want < 0) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const m = /\r\ncontent-length:\s*(\d+)/i.exec(buf.subarray(0, end).toString('latin1'));
        if (!m) return finish(new Error(`response without Content-Length: ${buf.subarray(0, 80).toString('latin1')}`));
        want = end + 4 + Number(m[1]);
      }
      if (buf.length >= want) finish(null);
    });
    s.on('end', () => finish(new Error('connection closed before the whole response')));
    s.on('error', (e) => finish(e));
  });
}

function path(name: string, subject: Subject, port: number): Path {
  return { name, subject, port, samples: [], blockMedians: [], loads: [], errors: 0, firstError: '' };
}

async function block(p: Path, n: number, record: boolean): Promise<void> {
  const local: number[] = [];
  for (let i = 0; i < n; i++) {
    try {
      local.push(await cycle(p.port));
    } catch (err) {
      p.errors++;
      if (p.firstError === '') p.firstError = (err as Error).message;
    }
  }
  if (!record) return;
  p.samples.push(...local);
  p.blockMedians.push(median(local));
}

async function run(ctx: BenchContext): Promise<Section> {
  ensurePeers({ nginx: true });
  const notes: string[] = [];
  const errors: string[] = [];
  const peers: Peer[] = [];
  const paths: Path[] = [];
  try {
    const originPort = await freePort();
    peers.push(await startNginxHttp(ctx.dir, originPort));
    const target = `127.0.0.1:${originPort}`;
    paths.push(path('direct', 'direct', originPort));
    if (!ctx.meshpipe.available) {
      notes.push(`meshpipe rows omitted: ${ctx.meshpipe.reason}`);
    } else {
      const forwards: MeshpipeForward[] = [
        { port: await freePort(), target, mode: 'opaque' },
        { port: await freePort(), target, mode: 'detect' },
      ];
      peers.push(await startMeshpipe(forwards, ctx.dir));
      notes.push(`meshpipe: ${meshpipeCommand(forwards)}`);
      paths.push(path('meshpipe (opaque)', 'meshpipe', forwards[0]!.port));
      paths.push(path('meshpipe (detect)', 'meshpipe', forwards[1]!.port));
    }
    for (const p of paths) await block(p, WARMUP, false);
    const blocks = Math.ceil(CYCLES / BLOCK);
    for (let b = 0; b < blocks; b++) {
      if (b % 5 === 0) ctx.log(`detect-cost block ${b + 1}/${blocks} (${BLOCK} cycles per path)`);
      for (const p of paths) {
        p.loads.push(load1());
        await block(p, BLOCK, true);
      }
      await sleep(20);
    }
  } finally {
    for (const p of peers.reverse()) await p.stop();
  }

  const rows: Row[] = [];
  for (const p of paths) {
    if (p.errors > 0) errors.push(`${p.name}: ${p.errors} failed cycle(s): ${p.firstError}`);
    if (p.samples.length === 0) continue;
    const extra = { cycles: p.samples.length, p90Us: percentile(p.samples, 90), minUs: Math.min(...p.samples) };
    // Per-run columns show the block medians (one per interleaved block of BLOCK cycles).
    rows.push({ metric: 'cycle median', subject: p.subject, name: `${p.name} median`, value: median(p.samples), unit: 'us/cycle', runs: p.blockMedians, runLoad1: p.loads, extra });
    rows.push({ metric: 'cycle p99', subject: p.subject, name: `${p.name} p99`, value: percentile(p.samples, 99), unit: 'us/cycle', runs: [] });
  }
  const opaque = paths.find((p) => p.name === 'meshpipe (opaque)');
  const detect = paths.find((p) => p.name === 'meshpipe (detect)');
  const direct = paths[0]!;
  if (opaque && detect && opaque.samples.length > 0 && detect.samples.length > 0) {
    const added = median(detect.samples) - median(opaque.samples);
    // Per-block differences show how steady the difference is.
    const perBlock = detect.blockMedians.map((d, i) => d - (opaque.blockMedians[i] ?? Number.NaN));
    rows.push({
      metric: 'detect added', subject: 'meshpipe', name: 'detect - opaque, median', value: added, unit: 'us/cycle', runs: perBlock,
      targets: [{ atMost: TARGET_ADDED_US }],
      extra: { opaqueMinusDirectUs: median(opaque.samples) - median(direct.samples), detectMinusDirectUs: median(detect.samples) - median(direct.samples) },
    });
  }
  notes.push('opaque connects upstream as soon as it accepts, in parallel with the client\'s first write; detect connects after the request line is classified, so its added cost includes one serial upstream connect on loopback');
  return {
    name: 'detect-cost',
    title: 'detect cost',
    method: `${CYCLES} sequential cycles per path (after ${WARMUP} warm-up), in interleaved blocks of ${BLOCK}: Node client connect -> ${REQUEST.length}-byte HTTP/1.1 GET -> whole 512-byte nginx response -> close, timed connect call to last byte; value = median (p99 in its own row); runs column = block medians`,
    rows,
    notes,
    errors,
  };
}

export const detectCost: BenchSection = {
  name: 'detect-cost',
  description: 'per-connection cost of HTTP detection: connect+request+response+close cycles, detect vs opaque listener vs direct',
  run,
};
