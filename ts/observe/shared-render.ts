/**
 * One render shared by every request that arrives while it waits to start:
 * /metrics scrapes that come together (a flood of them, from any pod that
 * reaches the admin port) cost one engine snapshot and one text rendering,
 * not one each, so the main thread stays free for /live, /ready and the
 * policy between renders.
 *
 * A render starts on the event loop's next check phase (`setImmediate`)
 * after the first request that asked for it, and after the previous render
 * finished; every request that arrives before it starts joins it. So each
 * answer is rendered after its request arrived (a scrape never sees
 * counters older than itself), at most one render runs and one waits, and
 * a failed render fails only the requests that shared it.
 */

export class SharedRender {
  readonly #render: () => Promise<string>;
  /** The render requests join: not started yet. */
  #queued: Promise<Buffer> | undefined;
  /** The render in progress (its snapshot already taken: too old to join). */
  #running: Promise<Buffer> | undefined;

  constructor(render: () => Promise<string>) {
    this.#render = render;
  }

  /** The bytes of a render that starts after this call. */
  next(): Promise<Buffer> {
    if (this.#queued !== undefined) return this.#queued;
    const previous = this.#running;
    // The promise refers to itself once started (as the running render).
    const self: { promise?: Promise<Buffer> } = {};
    self.promise = (async () => {
      if (previous !== undefined) await previous.catch(() => undefined);
      await new Promise<void>((resolve) => setImmediate(resolve));
      this.#queued = undefined;
      this.#running = self.promise;
      try {
        return Buffer.from(await this.#render());
      } finally {
        if (this.#running === self.promise) this.#running = undefined;
      }
    })();
    this.#queued = self.promise;
    return self.promise;
  }
}
