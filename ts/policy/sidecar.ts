/**
 * Connects the policy layer (annotations, manifests, the Kubernetes watch) to
 * a running sidecar.
 *
 * Without any policy source the proxy runs on the flag policy
 * (ts/engine/build-config.ts). With one, the source is loaded *before* the
 * listeners bind and its table is handed to the engine first, so the very
 * first connection already sees the workload's real port policy; nothing runs
 * on a wider or narrower policy in between. Later changes are swapped in
 * atomically (new connections only). A reload that fails keeps the last good
 * policy; its problems are logged when they change and stay visible on
 * /policy until fixed.
 */
import { hasPolicySources, type ProxyConfig } from '../config/index.js';
import type { Logger } from '../observe/index.js';
import type { EngineSnapshot, PolicyTable, ServiceEndpointsSpec } from '../engine/index.js';
import { effectiveToJson } from './model.js';
import { createPolicySource, type PolicySource, type PolicyUpdate } from './source.js';

/** A started policy source and what the sidecar needs from it. */
export interface SidecarPolicy {
  /** The first compiled table (to set before the listeners bind). */
  readonly first: PolicyUpdate;
  /** The /policy document: effective policy with sources, problems, rules, learned targets. */
  view(snapshot: EngineSnapshot | undefined): unknown;
  /** Calls `apply` with every later table whose rules changed. */
  onTable(apply: (table: PolicyTable) => void): void;
  /** Calls `apply` with the Services' endpoints of every later update (HTTP balancing). */
  onEndpoints(apply: (endpoints: readonly ServiceEndpointsSpec[]) => void): void;
  close(): Promise<void>;
}

function logProblems(logger: Logger, update: PolicyUpdate): void {
  if (update.problems.length === 0) return;
  logger.warn(
    { generation: update.generation, problems: update.problems.map((p) => p.message) },
    'policy problems: invalid entries were ignored, the valid ones apply',
  );
}

/** Starts the configured policy sources; undefined when there are none. */
export async function startSidecarPolicy(config: ProxyConfig, logger: Logger): Promise<SidecarPolicy | undefined> {
  if (!hasPolicySources(config)) return undefined;
  const source: PolicySource = createPolicySource({
    annotationsFile: config.annotations,
    manifests: config.manifests,
    kube: config.kube,
    kubeconfig: config.kubeconfig,
    clusterNetworks: config.clusterNetworks,
    defaultOpaquePorts: config.defaultOpaquePorts,
    opaquePorts: config.opaquePorts,
    inboundDetectTimeoutMs: config.inboundDetectTimeoutMs,
    outboundDetectTimeoutMs: config.outboundDetectTimeoutMs,
    namespace: config.namespace ?? process.env['POD_NAMESPACE'],
    pod: config.pod ?? process.env['POD_NAME'],
  });
  source.on('reloadFailed', (err) => {
    logger.error({ err }, 'policy reload failed; the last good policy stays in force');
  });
  const first = await source.start();
  logProblems(logger, first);
  let lastProblems = JSON.stringify(first.problems.map((p) => p.message));
  return {
    first,
    view(snapshot) {
      const now = source.current() ?? first;
      return {
        generation: now.generation,
        engineGeneration: snapshot?.policyGeneration ?? null,
        effective: effectiveToJson(now.effective),
        problems: now.problems.map((p) => p.message),
        rules: now.table.rules,
        serverFirst: {
          note: 'targets learned to speak first skip detection until they expire; make it permanent with config.linkerd.io/opaque-ports',
          targets: snapshot?.serverFirst.targets ?? [],
        },
      };
    },
    onTable(apply) {
      let generation = first.table.generation;
      source.on('policy', (update) => {
        const problems = JSON.stringify(update.problems.map((p) => p.message));
        if (problems !== lastProblems) {
          lastProblems = problems;
          logProblems(logger, update);
        }
        if (update.table.generation === generation) return;
        generation = update.table.generation;
        try {
          apply(update.table);
        } catch (err) {
          logger.error({ err, generation }, 'policy rejected by the engine; the last good policy stays in force');
        }
      });
    },
    onEndpoints(apply) {
      source.on('policy', (update) => apply(update.endpoints));
    },
    close: () => source.close(),
  };
}
