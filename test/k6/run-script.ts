/**
 * Runs one k6 script once in Node, the way k6 starts a test, with the stubs
 * of hooks.ts: `node --import register.js run-script.js SCRIPT ENV_JSON`.
 *
 * Sets k6's globals (__ENV, __VU, __ITER, open()), imports the script (its
 * init context: options, proto loading), checks its options (every scenario
 * an executor k6 knows, with its exec function exported), runs setup(), one
 * iteration of every scenario's function, teardown(), then evaluates the
 * thresholds against the samples the stubs recorded. Prints one JSON object
 * on stdout; exits 1 if the script threw.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { stopWorker } from './bridge.js';
import { evaluateThresholds, snapshot, type ThresholdResult } from './metrics.js';

const [script, envJson] = process.argv.slice(2);
if (script === undefined) throw new Error('usage: run-script.js SCRIPT [ENV_JSON]');
const g = globalThis as Record<string, unknown>;
g['__ENV'] = JSON.parse(envJson ?? '{}') as unknown;
g['__VU'] = 1;
g['__ITER'] = 0;
g['__K6_SCRIPT_DIR'] = dirname(resolve(script));
g['open'] = (path: string, mode?: string): string | Buffer => readFileSync(resolve(dirname(script), path), mode === 'b' ? undefined : 'utf8');

const EXECUTORS = ['shared-iterations', 'per-vu-iterations', 'constant-vus', 'ramping-vus', 'constant-arrival-rate', 'ramping-arrival-rate', 'externally-controlled'];

interface Scenario {
  executor: string;
  exec?: string;
  [key: string]: unknown;
}

let error: string | undefined;
let thresholds: ThresholdResult[] = [];
let scenarios: Record<string, Scenario> = {};
try {
  const mod = (await import(pathToFileURL(resolve(script)).href)) as Record<string, unknown> & { options?: { scenarios?: Record<string, Scenario>; thresholds?: Record<string, unknown> } };
  g['__K6_OPTIONS'] = mod.options;
  scenarios = mod.options?.scenarios ?? { default: { executor: 'per-vu-iterations' } };
  for (const [name, s] of Object.entries(scenarios)) {
    if (!EXECUTORS.includes(s.executor)) throw new Error(`scenario ${name}: unknown executor ${s.executor}`);
    if (typeof mod[s.exec ?? 'default'] !== 'function') throw new Error(`scenario ${name}: exec ${s.exec ?? 'default'} is not an exported function`);
  }
  const data = typeof mod['setup'] === 'function' ? (mod['setup'] as () => unknown)() : undefined;
  for (const s of Object.values(scenarios)) (mod[s.exec ?? 'default'] as (d: unknown) => void)(data);
  if (typeof mod['teardown'] === 'function') (mod['teardown'] as (d: unknown) => void)(data);
  thresholds = evaluateThresholds(mod.options?.thresholds ?? {});
} catch (err) {
  error = err instanceof Error ? (err.stack ?? err.message) : String(err);
}
process.stdout.write(`${JSON.stringify({ error, scenarios, thresholds, metrics: snapshot() })}\n`);
await stopWorker();
process.exitCode = error === undefined ? 0 : 1;
