/**
 * Rate limiting for log lines about things that can happen many times a
 * second (connections refused, lookups failing): the first occurrence of a
 * kind is logged at once, later ones at most once per interval, each line
 * saying how many happened since the last one. A flood costs a counter
 * increment, never a disk full of identical lines; the metrics keep the
 * exact counts.
 */

/** Per key: when a line was last written, and how many occurrences it has not reported yet. */
interface State {
  last: number;
  pending: number;
}

export class RateLimited {
  readonly #states = new Map<string, State>();

  constructor(
    readonly intervalMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Records `count` occurrences of `key`. Returns how many occurrences the
   * line to write now should report (this call's and those held back since
   * the last line), or `undefined` when nothing should be written yet.
   */
  hit(key: string, count = 1): number | undefined {
    const now = this.now();
    const state = this.#states.get(key);
    if (state === undefined) {
      this.#states.set(key, { last: now, pending: 0 });
      return count;
    }
    state.pending += count;
    if (now - state.last < this.intervalMs) return undefined;
    const n = state.pending;
    state.last = now;
    state.pending = 0;
    return n;
  }

  /** Forgets a key (the condition cleared: its next occurrence is logged at once). */
  reset(key: string): void {
    this.#states.delete(key);
  }
}
