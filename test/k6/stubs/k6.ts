/**
 * Stub of the `k6` module for test/k6.test.ts: check() records the `checks`
 * rate metric as k6 does and returns whether every check passed; sleep()
 * blocks; group() runs its function; fail() throws.
 */
import { block } from '../bridge.js';
import { record } from '../metrics.js';

export function check(value: unknown, sets: Record<string, (v: unknown) => unknown>, tags: Record<string, string> = {}): boolean {
  let all = true;
  for (const [name, fn] of Object.entries(sets)) {
    let ok: boolean;
    try {
      ok = Boolean(fn(value));
    } catch {
      ok = false;
    }
    record('checks', 'rate', ok ? 1 : 0, { ...tags, check: name });
    all &&= ok;
  }
  return all;
}

export function sleep(seconds: number): void {
  block(seconds * 1000);
}

export function group<T>(_name: string, fn: () => T): T {
  return fn();
}

export function fail(message = ''): never {
  throw new Error(message);
}

export default { check, sleep, group, fail };
