/**
 * A meshpipe sidecar inside a test pod (network namespace), for the
 * end-to-end tests: the real `meshpipe proxy` CLI in its sidecar layout (no
 * --forward: outbound listener 127.0.0.1:4140 and inbound listener
 * 0.0.0.0:4143, both resolving the original destination with SO_ORIGINAL_DST;
 * inbound forwards to it when it is one of the pod's IPs, taken from the
 * pod's interfaces), run under the proxy's own uid so
 * `meshpipe init`'s rules leave its connections alone. Its counters are read
 * from the admin server's /snapshot inside the pod.

 */
import { fileURLToPath } from 'node:url';
import type { EngineSnapshot } from '../ts/engine/native.js';
import type { Pod, PodProcess } from './netns.js';

export const OUTBOUND_BIND = '127.0.0.1:4140';
export const INBOUND_BIND = '0.0.0.0:4143';
export const SIDECAR_UID = 2102;

export interface Sidecar {
  readonly process: PodProcess;
  /** The engine's counters right now. */
  snapshot(): Promise<EngineSnapshot>;
  stop(): Promise<number | string>;
}

/** The sidecar's admin address inside its pod (loopback of the pod's namespace). */
export const ADMIN_ADDR = '127.0.0.1:4191';

/**
 * Starts `meshpipe proxy` in its sidecar layout (no --forward) in `pod` as
 * SIDECAR_UID with extra flags, and waits until it logs "proxy ready".
 */
export async function startSidecar(pod: Pod, flags: readonly string[] = []): Promise<Sidecar> {
  const cli = fileURLToPath(new URL('../ts/cli/main.js', import.meta.url));
  const args = [cli, 'proxy', '--inbound', INBOUND_BIND, '--outbound', OUTBOUND_BIND, '--admin', ADMIN_ADDR, '--drain-timeout', '1s', ...flags];
  const proc = pod.spawn(process.execPath, args, { uid: SIDECAR_UID, env: { ...process.env, MESHPIPE_LOG_LEVEL: 'info' } });
  await proc.waitFor(/"msg":"proxy ready"/, 15_000);
  return {
    process: proc,
    async snapshot() {
      // Read through the admin server, as an operator would, from inside the pod.
      const r = await pod.exec('curl', ['-sS', '--max-time', '5', `http://${ADMIN_ADDR}/snapshot`], { timeoutMs: 10_000 });
      if (r.code !== 0) throw new Error(`sidecar in ${pod.ns}: /snapshot failed (${r.code}): ${r.stderr}\n${proc.output()}`);
      return JSON.parse(r.stdout) as EngineSnapshot;
    },
    stop: () => proc.stop(5000),
  };
}

/** Detection results of one direction and port, e.g. `{ 'http/1': 2 }`. */
export function detectResults(snap: EngineSnapshot, direction: 'inbound' | 'outbound', port: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const d of snap.detect) {
    if (d.direction === direction && d.targetPort === port) out[d.result] = (out[d.result] ?? 0) + d.count;
  }
  return out;
}

/** Connections the proxy opened towards `port` (any target address), in one direction. */
export function connectionsTo(snap: EngineSnapshot, direction: 'inbound' | 'outbound', port: number): number {
  return snap.tcp.filter((s) => s.direction === direction && s.targetPort === port).reduce((n, s) => n + s.srcOpenTotal, 0);
}

