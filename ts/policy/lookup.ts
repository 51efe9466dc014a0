/**
 * What a policy table decides (the port's mode, the meshed peer behind an
 * address, who may connect to a port), answered by the engine itself: the table is
 * compiled by the addon (`PolicyLookup`) and each question goes through the
 * engine's own lookup (crates/meshpipe-core/src/policy.rs). `meshpipe
 * explain` and the tests use this, so they can never disagree with what the
 * proxy does (a TypeScript copy of the lookup once did, on IPv4-mapped
 * addresses).
 */
import { PolicyLookup, type DecisionInfo, type MeshPeerSpec, type PolicyDecision, type PortAuthzSpec } from '../engine/index.js';
import type { Direction, PolicyTable } from './model.js';

/** A decision as explain shows it. `index` is the matching rule's index, -1 for a destination or the default. */
export interface LookupResult {
  readonly mode: PolicyDecision['mode'];
  readonly detectTimeoutMs: number | null;
  readonly source: string;
  readonly matched: PolicyDecision['matched'];
  readonly destination: string | null;
  /** Outbound: the meshed peer behind the address (mutual TLS through its tunnel), if any. */
  readonly mesh: MeshPeerSpec | null;
  /** Inbound: who may connect to the port. */
  readonly authz: PortAuthzSpec | null;
}

const compiled = new WeakMap<PolicyTable, PolicyLookup>();

function engineFor(table: PolicyTable): PolicyLookup {
  let lookup = compiled.get(table);
  if (!lookup) {
    lookup = new PolicyLookup(table);
    compiled.set(table, lookup);
  }
  return lookup;
}

/** The engine's decision for `direction` to `address`:`port` under `table` (compiled once per table object). */
export function lookupPolicy(table: PolicyTable, direction: Direction, address: string, port: number): LookupResult {
  const d = engineFor(table).explain(direction, address, port);
  return { mode: d.mode, detectTimeoutMs: d.detectTimeoutMs, source: d.source, matched: d.matched, destination: d.destination, mesh: d.mesh, authz: d.authz };
}

/** The engine's authorization decision under `table` for a client of `port` (`clientIdentity` null: plaintext). */
export function authorizeClient(table: PolicyTable, port: number, clientIdentity: string | null, clientIp: string): DecisionInfo {
  return engineFor(table).authorize(port, clientIdentity, clientIp);
}
