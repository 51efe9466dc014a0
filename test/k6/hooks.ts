/**
 * Module resolution hooks (node:module register) for running k6 scripts in
 * Node: `k6`, `k6/http`, `k6/net/grpc`, `k6/ws` and `k6/metrics` resolve to
 * the stubs in ./stubs/; every other import resolves as usual (a script's
 * relative imports such as ./lib/config.js are real files).
 */
const STUBS: Readonly<Record<string, string>> = {
  k6: 'k6.js',
  'k6/http': 'http.js',
  'k6/net/grpc': 'grpc.js',
  'k6/ws': 'ws.js',
  'k6/metrics': 'metrics.js',
};

type Next = (specifier: string, context: unknown) => Promise<{ url: string }>;

export function resolve(specifier: string, context: unknown, next: Next): Promise<{ url: string; shortCircuit?: boolean }> {
  const stub = STUBS[specifier];
  if (stub !== undefined) return Promise.resolve({ url: new URL(`./stubs/${stub}`, import.meta.url).href, shortCircuit: true });
  if (specifier.startsWith('k6/')) return Promise.reject(new Error(`no stub for ${specifier}: the k6 test harness covers ${Object.keys(STUBS).join(', ')}`));
  return next(specifier, context);
}
