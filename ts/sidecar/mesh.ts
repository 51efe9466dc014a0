/**
 * The sidecar's mesh wiring: this proxy's identity into the engine and kept
 * current, and the engine's mesh tables (authorization, meshed
 * destinations) pushed as the policy layer recompiles them.
 *
 * Identity: loaded (and checked) at start by the IdentityReloader and
 * installed in the engine before any listener binds; a rotation installs
 * the new certificate for new connections (open ones continue on theirs). A
 * bad reload keeps the last good identity: it is logged, counted
 * (`meshpipe_identity_reload_failures_total`) and shown on /ready. The
 * certificate's expiry is a metric (`identity_cert_expiration_timestamp_seconds`,
 * Linkerd's name) and, past 80% of its lifetime, a warning log.
 *
 * Tables: the authorization table is small (one workload's ports) and
 * replaced whole when it changes; the meshed-destinations table follows the
 * cluster, so only its changes cross into the engine (`updateDestinations`:
 * added, changed and removed entries), which copies only what they touch.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { ProxyConfig } from '../config/index.js';
import type { AuthzSpec, DestinationSpec, DestinationsSpec, Proxy } from '../engine/index.js';
import { IdentityReloader, type IdentityState } from '../identity/index.js';
import type { Logger } from '../observe/index.js';
import { compileAuthz } from '../policy/index.js';

export const MESH_MESSAGES = {
  identityInstalled: 'mesh identity installed',
  identityReloadFailed: 'identity reload failed; the last good identity stays in force',
  identityExpiring: 'identity certificate past 80% of its lifetime: rotation looks stuck',
  tablesRejected: 'mesh table rejected by the engine; the last good table stays in force',
} as const;

/** The destinations the engine holds, as JSON per net, to send only changes. */
class DestinationsPusher {
  #sent = new Map<string, string>();
  #first = true;

  constructor(private readonly proxy: Proxy) {}

  push(spec: DestinationsSpec): void {
    if (this.#first) {
      this.proxy.setDestinations(spec);
      this.#sent = new Map(spec.entries.map((e) => [e.net, JSON.stringify(e)]));
      this.#first = false;
      return;
    }
    const next = new Map<string, string>();
    const upsert: DestinationSpec[] = [];
    for (const e of spec.entries) {
      const json = JSON.stringify(e);
      next.set(e.net, json);
      if (this.#sent.get(e.net) !== json) upsert.push(e);
    }
    const remove = [...this.#sent.keys()].filter((net) => !next.has(net));
    if (upsert.length === 0 && remove.length === 0) return;
    this.proxy.updateDestinations({ generation: spec.generation, upsert, remove });
    this.#sent = next;
  }
}

export class SidecarMesh {
  readonly #proxy: Proxy;
  readonly #config: ProxyConfig;
  readonly #logger: Logger;
  #reloader: IdentityReloader | undefined;
  #authzJson = '';
  readonly #destinations: DestinationsPusher;

  constructor(proxy: Proxy, config: ProxyConfig, logger: Logger, registry: Registry) {
    this.#proxy = proxy;
    this.#config = config;
    this.#logger = logger;
    this.#destinations = new DestinationsPusher(proxy);
    const state = (): IdentityState | undefined => this.identityState();
    new Gauge({
      name: 'identity_cert_expiration_timestamp_seconds',
      help: 'Expiry (not-after) of the identity certificate new connections use, in seconds since the epoch',
      registers: [registry],
      collect() {
        const s = state();
        this.reset();
        if (s) this.set(s.notAfterMs / 1000);
      },
    });
    new Gauge({
      name: 'meshpipe_identity_cert_lifetime_used_ratio',
      help: 'Fraction of the identity certificate\'s lifetime that has passed (a warning is logged at 0.8)',
      registers: [registry],
      collect() {
        const s = state();
        this.reset();
        if (s) this.set(s.lifetimeUsed);
      },
    });
    new Counter({
      name: 'meshpipe_identity_reloads_total',
      help: 'Identity rotations installed after the first load',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(state()?.reloads ?? 0);
      },
    });
    new Counter({
      name: 'meshpipe_identity_reload_failures_total',
      help: 'Identity reloads that failed (the last good identity stayed)',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(state()?.failures ?? 0);
      },
    });
  }

  /**
   * Loads and installs the identity (when one is configured) and starts
   * watching it; pushes the default authorization table when no policy
   * source will send one. Throws ERR_IDENTITY on bad identity files.
   */
  async start(withPolicySource: boolean): Promise<void> {
    const files = this.#config.identity;
    if (files !== undefined) {
      const reloader = new IdentityReloader({ files, name: this.#config.identityName });
      this.#reloader = reloader;
      await reloader.start();
      this.#install();
      reloader.on('reloaded', () => this.#install());
      reloader.on('reloadFailed', (err) => {
        this.#logger.error({ err, failures: reloader.state().failures, serial: reloader.state().serial }, MESH_MESSAGES.identityReloadFailed);
      });
      reloader.on('expiring', (s) => {
        this.#logger.warn({ identity: s.name, serial: s.serial, notAfter: new Date(s.notAfterMs).toISOString(), lifetimeUsed: s.lifetimeUsed }, MESH_MESSAGES.identityExpiring);
      });
      const s = reloader.state();
      if (s.renewOverdue) {
        this.#logger.warn({ identity: s.name, serial: s.serial, notAfter: new Date(s.notAfterMs).toISOString(), lifetimeUsed: s.lifetimeUsed }, MESH_MESSAGES.identityExpiring);
      }
    }
    if (!withPolicySource) {
      // No manifests or watch: the default inbound policy on every port.
      const { spec } = compileAuthz({
        generation: 1, workload: undefined, ref: { kind: 'Pod', namespace: '', name: '' }, namespace: '',
        workloadAnnotations: {}, namespaceAnnotations: {}, servers: [], objects: [],
        clusterNetworks: this.#config.clusterNetworks, defaultPolicy: this.#config.defaultInboundPolicy,
        trustDomain: this.#config.trustDomain, identityTemplate: this.#config.identityTemplate,
      });
      this.setTables(spec, undefined);
    }
  }

  #install(): void {
    const loaded = this.#reloader?.identity();
    if (!loaded) return;
    try {
      const installed = this.#proxy.setIdentity(loaded.spec, loaded.pem);
      const { info } = installed;
      this.#logger.info(
        { identity: info.name, serial: info.serial, notAfter: new Date(info.notAfterMs).toISOString(), generation: installed.generation },
        MESH_MESSAGES.identityInstalled,
      );
    } catch (err) {
      this.#logger.error({ err }, MESH_MESSAGES.identityReloadFailed);
    }
  }

  /** Pushes the tables that changed (a rejected table keeps the engine's last good one). */
  setTables(authz: AuthzSpec | undefined, destinations: DestinationsSpec | undefined): void {
    try {
      if (authz !== undefined) {
        const json = JSON.stringify({ ...authz, generation: 0 });
        if (json !== this.#authzJson) {
          this.#proxy.setAuthz(authz);
          this.#authzJson = json;
        }
      }
      if (destinations !== undefined) this.#destinations.push(destinations);
    } catch (err) {
      this.#logger.error({ err }, MESH_MESSAGES.tablesRejected);
    }
  }

  /** The identity in force, or undefined without one. */
  identityState(): IdentityState | undefined {
    return this.#reloader?.state();
  }

  /** Lines for /ready: the identity and any reload failure. */
  readyDetails(): string[] {
    const s = this.identityState();
    if (!s) return [];
    const lines = [`identity: ${s.name} serial ${s.serial} expires ${new Date(s.notAfterMs).toISOString()}${s.expired ? ' (EXPIRED)' : ''}`];
    if (s.lastError) lines.push(`identity reload failing (${s.failures} failures so far), keeping serial ${s.serial}: ${s.lastError.message}`);
    return lines;
  }

  async close(): Promise<void> {
    await this.#reloader?.close();
  }
}
