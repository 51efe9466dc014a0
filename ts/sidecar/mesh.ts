/**
 * The sidecar's mesh identity: loaded into the engine and kept current.
 * (Which destinations are meshed and who may connect are part of the policy
 * table, ts/policy/sidecar.ts: they follow the policy's updates.)
 *
 * Identity: loaded (and checked) at start by the IdentityReloader and
 * installed in the engine before any listener binds; a rotation installs
 * the new certificate for new connections (open ones continue on theirs). A
 * bad reload keeps the last good identity: it is logged, counted
 * (`meshpipe_identity_reload_failures_total`) and shown on /ready. The
 * certificate's expiry is a metric (`identity_cert_expiration_timestamp_seconds`,
 * Linkerd's name) and, past 80% of its lifetime, a warning log.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { ProxyConfig } from '../config/index.js';
import type { Proxy } from '../engine/index.js';
import { IdentityReloader, type IdentityState } from '../identity/index.js';
import type { Logger } from '../observe/index.js';

export const MESH_MESSAGES = {
  identityInstalled: 'mesh identity installed',
  identityReloadFailed: 'identity reload failed; the last good identity stays in force',
  identityExpiring: 'identity certificate past 80% of its lifetime: rotation looks stuck',
} as const;

export class SidecarMesh {
  readonly #proxy: Proxy;
  readonly #config: ProxyConfig;
  readonly #logger: Logger;
  #reloader: IdentityReloader | undefined;

  constructor(proxy: Proxy, config: ProxyConfig, logger: Logger, registry: Registry) {
    this.#proxy = proxy;
    this.#config = config;
    this.#logger = logger;
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
   * watching it. Throws ERR_IDENTITY on bad identity files.
   */
  async start(): Promise<void> {
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
