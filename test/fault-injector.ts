/**
 * Test only, never part of meshpipe: preloaded into a `meshpipe` child with
 * NODE_OPTIONS=--import=<this file> by test/guard.test.ts. On SIGUSR2 it
 * makes the error the guard must handle: FAULT_KIND=exception throws from
 * the signal handler (an uncaught exception), FAULT_KIND=rejection rejects a
 * promise nobody listens to (an unhandled rejection). It prints
 * `FAULT INJECTED <kind>` on stderr first, so the test knows it happened.
 */
const kind = process.env['FAULT_KIND'] ?? 'exception';

process.on('SIGUSR2', () => {
  process.stderr.write(`FAULT INJECTED ${kind}\n`);
  if (kind === 'rejection') {
    void Promise.reject(new Error('injected rejection'));
    return;
  }
  throw new Error('injected exception');
});
