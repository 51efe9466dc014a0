/**
 * A separate client process that probes an admin server's /live the way a
 * kubelet does (a new connection per probe), back to back with a 10 ms
 * pause, and measures how long each answer takes. Used to check that the
 * proxy's event loop keeps answering while it reloads a large manifest.
 *
 *   node dist/test/live-prober.js HOST:PORT
 * prints `{"event":"ready"}` after the first answer, and on a line `stop` on
 * stdin the summary `{"event":"done","count":N,"maxMs":..,"p99Ms":..,"over100":..}`.
 * A probe that fails counts as a failure (`failures`), with its error.
 */
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

const target = process.argv[2] ?? '';
const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];

function probe(): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path: '/live', agent: false, timeout: 30_000 }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve(performance.now() - started) : reject(new Error(`status ${res.statusCode}`))));
    });
    req.on('timeout', () => req.destroy(new Error('no answer in 30 s')));
    req.on('error', reject);
  });
}

let stopping = false;
process.stdin.setEncoding('utf8').on('data', (chunk: string) => {
  if (chunk.includes('stop')) stopping = true;
});

const samples: number[] = [];
const failures: string[] = [];
let ready = false;
while (!stopping) {
  try {
    samples.push(await probe());
  } catch (err) {
    failures.push((err as Error).message);
  }
  if (!ready && samples.length > 0) {
    ready = true;
    process.stdout.write(`${JSON.stringify({ event: 'ready' })}\n`);
  }
  await sleep(10);
}
const sorted = [...samples].sort((a, b) => a - b);
const round = (n: number): number => Math.round(n * 10) / 10;
process.stdout.write(`${JSON.stringify({
  event: 'done',
  count: samples.length,
  maxMs: round(sorted[sorted.length - 1] ?? 0),
  p99Ms: round(sorted[Math.floor(sorted.length * 0.99)] ?? 0),
  medianMs: round(sorted[Math.floor(sorted.length / 2)] ?? 0),
  over100: samples.filter((s) => s > 100).length,
  failures,
})}\n`);
