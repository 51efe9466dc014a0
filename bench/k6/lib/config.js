// Shared settings of the meshpipe k6 scenarios: the target, the open-loop
// rate, and thresholds taken from the benchmark's targets (README,
// "Benchmarks"): no failed request, and at most 0.3 ms added to the p99 at
// 5,000 requests per second compared with the same path without the sidecar.
//
// Environment (k6 run -e NAME=value):
//   TARGET           where to send (a Service or pod address of the meshed app)
//   RATE             iterations per second (default 5000, the benchmark's open-loop rate)
//   DURATION         how long (default 1m)
//   VUS, MAX_VUS     pre-allocated and maximum virtual users (default 50, 500)
//   BASELINE_P99_MS  the p99 of the same scenario without the sidecar (run it against an
//                    unmeshed copy or a skip port first); the p99 threshold is then
//                    BASELINE_P99_MS + ADDED_P99_MS
//   ADDED_P99_MS     what the sidecar may add to the p99 (default 0.3, the benchmark's target)
//   P99_MS           the p99 threshold when no baseline is given (default 5)

export const env = (name, fallback) => (__ENV[name] !== undefined && __ENV[name] !== '' ? __ENV[name] : fallback);

export function target(fallback) {
  return env('TARGET', fallback);
}

/** The p99 limit in ms: the baseline plus what the sidecar may add, or an absolute bound. */
export function p99Limit() {
  const baseline = env('BASELINE_P99_MS', undefined);
  if (baseline !== undefined) return Number(baseline) + Number(env('ADDED_P99_MS', '0.3'));
  return Number(env('P99_MS', '5'));
}

/** One constant-arrival-rate scenario (open loop: the rate holds even when responses slow down). */
export function scenario(exec) {
  return {
    executor: 'constant-arrival-rate',
    exec,
    rate: Number(env('RATE', '5000')),
    timeUnit: '1s',
    duration: env('DURATION', '1m'),
    preAllocatedVUs: Number(env('VUS', '50')),
    maxVUs: Number(env('MAX_VUS', '500')),
  };
}

/** Thresholds common to every scenario: every check passes, and the generator kept the rate. */
export const commonThresholds = {
  checks: ['rate==1'],
  dropped_iterations: ['count==0'],
};
