/**
 * The /policy document's policy part, computed where the compiler lives (the
 * worker thread, or the main thread for the flags-only proxy): this
 * workload's effective policy with sources, the engine table's ordered rules,
 * a bounded list of destinations and problems with their totals, and sizes.
 * A cluster has tens of thousands of destinations: the document shows the
 * first ones in precedence order and says how many there are
 * (`meshpipe explain` shows any one of them in full).
 */
import { effectiveToJson, type EffectivePolicy, type PolicyRule, type PolicyTable } from './model.js';
import type { PolicyProblem } from './problems.js';

/** An engine rule as /policy shows it: its ports as written (`25`, `4000-4100`), not the engine's `[25, 25]`. */
export type RuleView = Omit<PolicyRule, 'ports'> & { readonly ports: string };

function ruleView(rule: PolicyRule): RuleView {
  const [from, to] = rule.ports;
  return { ...rule, ports: from === to ? String(from) : `${from}-${to}` };
}

/** Destinations and problems shown at most. */
export const VIEW_LIMIT = 100;

export interface PolicyViewPart {
  readonly effective: Record<string, unknown>;
  readonly destinations: { readonly total: number; readonly shown: number };
  readonly rules: readonly RuleView[];
  readonly fallbackRules: readonly RuleView[];
  readonly problems: readonly string[];
  readonly problemsTotal: number;
  readonly stats: { readonly objects: number; readonly addresses: number; readonly tables: number };
}

export function policyView(
  compiled: { effective: EffectivePolicy; destinations: number },
  frame: Pick<PolicyTable, 'rules' | 'fallbackRules'>,
  problems: readonly PolicyProblem[],
  stats: PolicyViewPart['stats'],
): PolicyViewPart {
  return {
    effective: effectiveToJson(compiled.effective),
    destinations: { total: compiled.destinations, shown: compiled.effective.outbound.destinations.length },
    rules: frame.rules.map(ruleView),
    fallbackRules: frame.fallbackRules.map(ruleView),
    problems: problems.slice(0, VIEW_LIMIT).map((p) => p.message),
    problemsTotal: problems.length,
    stats,
  };
}
