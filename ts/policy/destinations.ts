/**
 * The engine's exact destinations, kept in step with the compiled objects:
 * which address points at which port table, which tables exist, and what
 * changed since the last update (the delta sent to the engine).
 *
 * Destinations (a Service's clusterIPs, a Pod's IPs) claim addresses. An
 * address is almost always claimed by one destination; when several claim it
 * (host-network pods share their node's IP), they are checked in key order,
 * which is the old table's order: Services before Pods, each by namespace and
 * name. Port tables are shared by content (every replica of a workload has
 * the same ports and annotations), so a table crosses to the engine once, is
 * referred to by id, and is dropped when no address uses it any more. One
 * changed destination changes only its own addresses.
 *
 * A table also carries the meshed peer of its addresses (a meshed pod's
 * identity and tunnel port, part of its content: replicas share it). An
 * address claimed by several destinations is meshed only when they all
 * agree on the peer; otherwise it is not meshed (plaintext, never mutual
 * TLS to a guessed identity).
 */

import type { AddressSpec, MeshPeerSpec, PortDecision, PortMode } from './model.js';
import { DESTINATION } from './outbound.js';
import { peerKey } from './mesh-destinations.js';

/** A port table as the engine receives it. */
export interface TableSpec {
  readonly id: number;
  readonly ports: [number, number, PortMode, number][];
  readonly sources: string[];
  readonly mesh: MeshPeerSpec | null;
}

/** One destination's claim on its addresses (one object per destination, identified by itself). */
export interface Claim {
  /** Orders claims on a shared address: Services before Pods, then by namespace, name (computed when needed). */
  order(): string;
  /** e.g. `Pod shop/web-1`: replaces `{destination}` in sources. */
  readonly name: string;
  /** Identifies the decisions' (and the peer's) content: equal keys, equal tables. */
  readonly content: string;
  /** The decisions in precedence order, sources possibly with `{destination}`. */
  decisions(): readonly PortDecision[];
  /** The meshed peer behind the addresses, if any. */
  readonly mesh: MeshPeerSpec | undefined;
}

/** What changed since the last `takeChanges()`. */
export interface DestinationChanges {
  readonly tables: TableSpec[];
  readonly dropTables: number[];
  readonly addresses: AddressSpec[];
  readonly removeAddresses: string[];
}

interface Table {
  readonly id: number;
  readonly spec: TableSpec;
  refs: number;
}

function buildTable(id: number, decisions: readonly PortDecision[], mesh: MeshPeerSpec | undefined): TableSpec {
  const sources: string[] = [];
  const index = new Map<string, number>();
  const ports: [number, number, PortMode, number][] = [];
  for (const d of decisions) {
    let i = index.get(d.source);
    if (i === undefined) {
      i = sources.length;
      sources.push(d.source);
      index.set(d.source, i);
    }
    ports.push([d.ports.from, d.ports.to, d.mode, i]);
  }
  return { id, ports, sources, mesh: mesh ?? null };
}

/** The peer of a shared address: the one every claim has, else none. */
function commonPeer(claims: readonly Claim[], names: string): MeshPeerSpec | undefined {
  const first = claims[0]?.mesh;
  if (first === undefined || claims.some((c) => peerKey(c.mesh) !== peerKey(first))) return undefined;
  return first.source.includes(DESTINATION) ? { ...first, source: first.source.replaceAll(DESTINATION, names) } : first;
}

function substitute(decisions: readonly PortDecision[], name: string): PortDecision[] {
  return decisions.map((d) => (d.source.includes(DESTINATION) ? { ...d, source: d.source.replaceAll(DESTINATION, name) } : d));
}

interface Pending {
  tables: TableSpec[];
  dropTables: number[];
  addresses: Map<string, AddressSpec>;
  removeAddresses: Set<string>;
}

function nothingPending(): Pending {
  return { tables: [], dropTables: [], addresses: new Map(), removeAddresses: new Set() };
}

/** Addresses, claims and shared tables, with the pending changes for the engine. */
export class DestinationTable {
  /** Address -> its claim (almost always one), or several in order. */
  readonly #claims = new Map<string, Claim | Claim[]>();
  /** Address -> its table; the name is the claim's (one claim) or the claims' names joined (several). */
  readonly #entries = new Map<string, { table: Table; claim: Claim | undefined; names: string | undefined; content: string }>();
  readonly #tables = new Map<string, Table>();
  #lastId = 0;
  readonly #dirty = new Set<string>();
  #pending: Pending = nothingPending();

  /**
   * Replaces a destination's claim: `previous` claimed `before` (canonical
   * addresses), `next` claims `after` (undefined: the destination is gone
   * or has no decisions).
   */
  update(previous: Claim | undefined, before: readonly string[], next: Claim | undefined, after: readonly string[]): void {
    if (previous) {
      for (const ip of before) {
        const held = this.#claims.get(ip);
        if (held === undefined) continue;
        if (!Array.isArray(held)) {
          if (held === previous) this.#claims.delete(ip);
        } else {
          const kept = held.filter((c) => c !== previous);
          this.#claims.set(ip, kept.length === 1 ? (kept[0] as Claim) : kept);
        }
        this.#dirty.add(ip);
      }
    }
    if (next === undefined) return;
    for (const ip of after) {
      const held = this.#claims.get(ip);
      this.#dirty.add(ip);
      if (held === undefined) {
        this.#claims.set(ip, next);
        continue;
      }
      const list = Array.isArray(held) ? held : [held];
      const order = next.order();
      const at = list.findIndex((c) => c.order() >= order);
      if (at < 0) list.push(next);
      else list.splice(at, 0, next);
      this.#claims.set(ip, list);
    }
  }

  #intern(content: string, decisions: () => readonly PortDecision[], mesh: () => MeshPeerSpec | undefined): Table {
    let table = this.#tables.get(content);
    if (!table) {
      const id = ++this.#lastId;
      table = { id, spec: buildTable(id, decisions(), mesh()), refs: 0 };
      this.#tables.set(content, table);
      this.#pending.tables.push(table.spec);
    }
    table.refs++;
    return table;
  }

  #unref(content: string): void {
    const table = this.#tables.get(content);
    if (!table) return;
    table.refs--;
    if (table.refs <= 0) {
      this.#tables.delete(content);
      this.#pending.dropTables.push(table.id);
    }
  }

  /** Resolves the addresses whose claims changed into engine entries (pending changes). */
  settle(): void {
    for (const ip of this.#dirty) {
      const held = this.#claims.get(ip);
      const claims = held === undefined ? [] : Array.isArray(held) ? held : [held];
      const old = this.#entries.get(ip);
      if (claims.length === 0) {
        if (old) {
          this.#entries.delete(ip);
          this.#unref(old.content);
          this.#pending.addresses.delete(ip);
          this.#pending.removeAddresses.add(ip);
        }
        continue;
      }
      let content: string;
      let names: string | undefined;
      let decisions: () => readonly PortDecision[];
      let mesh: () => MeshPeerSpec | undefined;
      const only = claims.length === 1 ? (claims[0] as Claim) : undefined;
      if (only) {
        content = only.content;
        decisions = () => only.decisions();
        mesh = () => only.mesh;
      } else {
        // Shared address: each claim's decisions in order, its own name already in its sources.
        content = `merged\u0000${claims.map((c) => `${c.name}\u0000${c.content}`).join('\u0000')}`;
        const joined = claims.map((c) => c.name).join(', ');
        names = joined;
        decisions = () => claims.flatMap((c) => substitute(c.decisions(), c.name));
        mesh = () => commonPeer(claims, joined);
      }
      const name = names ?? (only as Claim).name;
      if (old && old.content === content && (old.names ?? old.claim?.name) === name) {
        if (only) old.claim = only; // the same, from a recompiled claim
        continue;
      }
      const table = this.#intern(content, decisions, mesh);
      this.#entries.set(ip, { table, claim: only, names, content });
      if (old) this.#unref(old.content);
      this.#pending.removeAddresses.delete(ip);
      this.#pending.addresses.set(ip, [ip, table.id, name]);
    }
    this.#dirty.clear();
  }

  /** The changes since the last call, and forgets them. */
  takeChanges(): DestinationChanges | undefined {
    const c = this.#pending;
    this.#pending = nothingPending();
    if (c.tables.length === 0 && c.dropTables.length === 0 && c.addresses.size === 0 && c.removeAddresses.size === 0) return undefined;
    return { tables: c.tables, dropTables: c.dropTables, addresses: [...c.addresses.values()], removeAddresses: [...c.removeAddresses] };
  }

  /** Every table and address, for a whole-table load. */
  whole(): { tables: TableSpec[]; addresses: AddressSpec[] } {
    return {
      tables: [...this.#tables.values()].map((t) => t.spec),
      addresses: [...this.#entries].map(([ip, e]) => [ip, e.table.id, e.names ?? e.claim?.name ?? ''] as AddressSpec),
    };
  }

  get addresses(): number {
    return this.#entries.size;
  }

  get tables(): number {
    return this.#tables.size;
  }
}
