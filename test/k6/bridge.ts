/**
 * Synchronous calls from a k6 script's stubs to the I/O worker
 * (io-worker.ts): k6's APIs block (`http.get` returns the response), Node's
 * do not, so the script's thread posts the request and sleeps on a shared
 * word (Atomics.wait) until the worker has the answer, then takes it off the
 * port with receiveMessageOnPort.
 */
import { MessageChannel, receiveMessageOnPort, Worker } from 'node:worker_threads';

const shared = new Int32Array(new SharedArrayBuffer(4));
const { port1, port2 } = new MessageChannel();
const worker = new Worker(new URL('./io-worker.js', import.meta.url), { workerData: { port: port2, shared }, transferList: [port2] });
worker.unref();
port1.unref();

/** Runs `op` in the I/O worker and returns its result (or throws its error). */
export function call<T>(op: string, args: unknown, timeoutMs = 60_000): T {
  Atomics.store(shared, 0, 0);
  port1.postMessage({ op, args });
  if (Atomics.wait(shared, 0, 0, timeoutMs) === 'timed-out') throw new Error(`k6 stub: ${op} got no answer within ${timeoutMs} ms`);
  const msg = receiveMessageOnPort(port1);
  if (msg === undefined) throw new Error(`k6 stub: ${op}: the worker signalled but sent nothing`);
  const answer = msg.message as { ok: boolean; value?: T; error?: string };
  if (!answer.ok) throw new Error(answer.error);
  return answer.value as T;
}

/** Blocks the script's thread for `ms` (k6's sleep). */
export function block(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export function stopWorker(): Promise<number> {
  return worker.terminate();
}
