/**
 * The sidecar lifecycle shared by `meshpipe proxy` and `meshpipe run`:
 * admin server, start-up, readiness, engine event logging and the shutdown
 * sequence.
 *
 * Start-up: the admin server binds first (so /ready can answer 503 while the
 * listeners bind), then every listener binds with the policy already in the
 * engine config; only then is the sidecar ready (/ready 200). If anything
 * fails to bind, everything already bound is closed again and the error
 * (naming the address) propagates: the caller exits non-zero and, for
 * `meshpipe run`, never starts the app.
 *
 * Shutdown (SIGTERM, SIGINT or POST /shutdown), in this order:
 * 1. /ready turns 503 at once, so the kubelet and load balancers stop sending
 *    new work while the listeners still accept what is already on the way.
 * 2. After `inboundStopDelay` (default 0) the inbound listeners stop
 *    accepting; their open connections keep flowing.
 * 3. Outbound listeners keep accepting while a wrapped app still runs (an app
 *    finishing its work must still reach its dependencies); `drain()` waits
 *    for the promise the caller passes (the app's exit).
 * 4. `close(drainTimeout)` stops every listener, lets open connections finish
 *    until the deadline and then cuts the rest (half-closed ones too), so the
 *    process never outlives the deadline. The admin server closes last.
 * A second SIGTERM/SIGINT exits at once (handled by the callers' signal code).
 * An uncaught exception starts the same sequence and the process exits 1
 * afterwards (ts/sidecar/guard.ts).
 *
 * Logs: one line per notable event (listener bound, policy loaded, proxy
 * ready, server-first target learned with the annotation that would make it
 * permanent, shutdown requested, inbound stopped, drain started/finished);
 * nothing per connection at info level.
 */
import { BlockList, isIP } from 'node:net';
import { constants as osConstants } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { AdminServer, effectiveLogFormat, LOG_MESSAGES, Metrics, type Logger, type NotReadyReason } from '../observe/index.js';
import { formatDuration, type ForwardSpec, type ProxyConfig } from '../config/index.js';
import { Counter } from 'prom-client';
import { MeshpipeError } from '../errors.js';
import { guardSidecar, uncaughtErrors } from './guard.js';
import { initStateMismatches, readInitState } from '../init/index.js';
import { Proxy, resolvePodIps, setEngineLog, type PodIps, type BoundListener, type CloseSummary, type EngineSnapshot } from '../engine/index.js';
import { createSidecarPolicy, type SidecarPolicy } from '../policy/index.js';
import { SidecarMesh } from './mesh.js';
import { ForwardNames } from './names.js';
import { NotableFailures, NOTABLE_POLL_MS } from './notable.js';

/** Log messages added by the lifecycle (the others are in ts/observe/logger.ts). */
export const LIFECYCLE_MESSAGES = {
  adminListening: 'admin server listening',
  shutdownRequested: 'shutdown requested',
  inboundStopped: 'inbound listeners stopped accepting',
  waitingForApp: 'waiting for the app to exit before draining',
  inboundGuard: 'inbound connections accepted to the pod IPs only',
  inboundNotPodIp: 'the inbound listener is bound to an address that is not one of the pod IPs',
} as const;

/** True when `ip` is one of `ips` (IPv6 in any of its written forms). */
function isOneOf(ip: string, ips: readonly string[]): boolean {
  const list = new BlockList();
  for (const a of ips) list.addAddress(a, isIP(a) === 6 ? 'ipv6' : 'ipv4');
  return list.check(ip, isIP(ip) === 6 ? 'ipv6' : 'ipv4');
}

/**
 * Refuses to start when the proxy disagrees with what `meshpipe init`
 * recorded (admin port not exempted, other listener ports, another uid).
 * @throws MeshpipeError ERR_INVALID_CONFIG listing every mismatch.
 */
export function checkInitState(config: ProxyConfig, path: string): void {
  const problems = initStateMismatches(readInitState(path), {
    uid: process.getuid?.(),
    gid: process.getgid?.(),
    adminPort: config.admin?.port,
    inboundPort: config.inbound?.port,
    outboundPort: config.outbound?.port,
  });
  if (problems.length > 0) {
    throw new MeshpipeError('ERR_INVALID_CONFIG', `the proxy does not match the iptables rules recorded in ${path}: ${problems.join('; ')}`, { key: 'initState' });
  }
}

/** How often engine events are turned into log lines. */
export const EVENT_POLL_MS = 500;

export type SidecarState = 'new' | 'starting' | 'ready' | 'draining' | 'closed';

export interface SidecarOptions {
  /** The port policy (default: from `config`: its policy sources, or the flags alone). */
  readonly policy?: SidecarPolicy;
}

/**
 * The engine's trace filter: `--engine-log` when given, else one that follows
 * `--log-level` (debug and trace show every connection's stages; the engine
 * has nothing to say at info and above).
 */
export function engineLogFilter(config: Pick<ProxyConfig, 'engineLog' | 'logLevel'>): string {
  if (config.engineLog !== undefined) return config.engineLog;
  return config.logLevel === 'debug' || config.logLevel === 'trace' ? `info,meshpipe_core=${config.logLevel}` : 'warn';
}

export function portOf(addr: string): number {
  return Number(addr.slice(addr.lastIndexOf(':') + 1));
}

export class Sidecar {
  readonly config: ProxyConfig;
  readonly logger: Logger;
  readonly proxy: Proxy;
  readonly metrics: Metrics;
  readonly admin: AdminServer | null;
  #state: SidecarState = 'new';
  #events: NodeJS.Timeout | undefined;
  #notableTimer: NodeJS.Timeout | undefined;
  readonly #notable: NotableFailures;
  #shutdownReason: string | undefined;
  #requested!: (reason: string) => void;
  /** Resolves with the reason when shutdown is first requested. */
  readonly shutdownRequested: Promise<string>;
  #draining: Promise<CloseSummary> | undefined;
  #adminStarted: Promise<void> | undefined;
  #starting: Promise<unknown> | undefined;
  #inboundStopped: Promise<void> = Promise.resolve();
  readonly #policy: SidecarPolicy;
  /** `--forward` targets that are host names (./names.ts). */
  readonly #names: ForwardNames;
  #podIps: PodIps | undefined;
  #unguard: () => void;
  readonly #mesh: SidecarMesh;

  constructor(config: ProxyConfig, logger: Logger, options: SidecarOptions = {}) {
    this.config = config;
    this.logger = logger;
    this.#policy = options.policy ?? createSidecarPolicy(config, logger);
    this.shutdownRequested = new Promise((resolve) => (this.#requested = resolve));
    // keepAlive: the engine's threads do not keep Node's event loop alive by themselves.
    // The engine's traces go to the same stream as these logs, filtered by
    // --engine-log (or --log-level); a bad filter throws ERR_INVALID_CONFIG.
    setEngineLog(engineLogFilter(config), 'stderr', effectiveLogFormat(config.logFormat));
    const transparentInbound = config.forward.length === 0 && config.inbound !== null;
    if (transparentInbound && config.initState !== undefined) checkInitState(config, config.initState);
    this.#podIps = transparentInbound ? resolvePodIps(config) : undefined;
    this.proxy = Proxy.fromConfig(config, { keepAlive: true, policy: this.#policy.initial, ...(this.#podIps ? { podIps: this.#podIps } : {}) });
    this.#names = new ForwardNames(config, logger);
    // With the admin server off nothing is scraped: no process-metric timers either.
    this.metrics = new Metrics(this.proxy, { defaultMetrics: config.admin !== null });
    this.#mesh = new SidecarMesh(this.proxy, config, logger, this.metrics.registry);
    new Counter({
      name: 'meshpipe_uncaught_errors_total',
      help: 'Errors nobody caught: kind=rejection (logged, the proxy kept serving), kind=exception (the proxy drained and exited 1)',
      labelNames: ['kind'],
      registers: [this.metrics.registry],
      collect() {
        this.reset();
        this.inc({ kind: 'exception' }, uncaughtErrors.exception);
        this.inc({ kind: 'rejection' }, uncaughtErrors.rejection);
      },
    });
    if (!this.#names.empty) {
      const failures = this.#names.failures;
      new Counter({
        name: 'meshpipe_forward_resolve_failures_total',
        help: 'Failed re-resolutions of a --forward target host name, per listener (its last addresses stay in use; a name gone from DNS twice in a row loses them)',
        labelNames: ['listener'],
        registers: [this.metrics.registry],
        collect() {
          this.reset();
          for (const [listener, n] of failures) this.inc({ listener }, n);
        },
      });
    }
    this.#notable = new NotableFailures(logger, config);
    this.#unguard = guardSidecar({
      logger,
      requestShutdown: (reason) => this.requestShutdown(reason),
      drainBudgetMs: config.drainTimeoutMs + config.inboundStopDelayMs,
    });
    this.admin =
      config.admin === null
        ? null
        : new AdminServer({
            host: config.admin.host,
            port: config.admin.port,
            metrics: this.metrics,
            notReady: () => this.notReady(),
            readyDetails: () => [...this.#mesh.readyDetails(), ...(this.#policy.readyDetails?.() ?? [])],
            connections: (limit) => this.proxy.connections(limit),
            snapshot: () => this.#snapshotOrUndefined() ?? {},
            policy: () => this.#policy.view(this.#snapshotOrUndefined()),
            shutdown: config.adminShutdown ? () => this.requestShutdown('admin /shutdown') : null,
            logFilter: (filter) => setEngineLog(filter, 'stderr', effectiveLogFormat(config.logFormat)),
            exposeDebug: config.adminExposeDebug,
            logger,
          });
  }

  get state(): SidecarState {
    return this.#state;
  }

  /** Null when ready; otherwise why not (for /ready). */
  notReady(): NotReadyReason {
    if (this.#state === 'ready') return this.#policy.notInForce() === null ? null : 'no valid policy';
    return this.#state === 'new' || this.#state === 'starting' ? 'starting' : 'draining';
  }

  /**
   * Binds the admin server (if configured) without the listeners: /ready
   * answers 503 "starting" until `start()` finishes. Idempotent; `start()`
   * calls it.
   */
  startAdmin(): Promise<void> {
    this.#state = this.#state === 'new' ? 'starting' : this.#state;
    this.#adminStarted ??= (async () => {
      if (this.admin === null) return;
      const address = await this.admin.start();
      this.logger.info({ address, shutdownEndpoint: this.config.adminShutdown }, LIFECYCLE_MESSAGES.adminListening);
    })();
    return this.#adminStarted;
  }

  /** Binds the admin server, then every listener; logs each; ready afterwards. */
  async start(): Promise<readonly BoundListener[]> {
    this.#state = this.#state === 'new' ? 'starting' : this.#state;
    try {
      // Host names first: one that does not resolve is a config error (exit 2) before anything binds.
      await this.#names.start(this.proxy);
      await this.startAdmin();
      // Policy sources load before any listener binds: the first connection
      // already sees the workload's policy, never the flags-only one.
      // The identity is in the engine before anything listens, like the
      // policy (whose table carries the authorization and meshed destinations).
      await this.#mesh.start();
      await this.#policy.start(this.proxy);
      this.#starting = this.proxy.start();
      const bound = (await this.#starting) as readonly BoundListener[];
      this.#logBound(bound);
      this.#logInboundGuard(bound);
      // A shutdown requested while binding wins: never report ready afterwards.
      if (this.#shutdownReason === undefined) this.#state = 'ready';
      this.logger.info({ listeners: bound.length, admin: this.admin?.address ?? 'off' }, LOG_MESSAGES.proxyReady);
      this.#events = setInterval(() => this.logEvents(), EVENT_POLL_MS).unref();
      this.#notableTimer = setInterval(() => this.checkFailures(), NOTABLE_POLL_MS).unref();
      return bound;
    } catch (err) {
      this.#state = 'closed';
      this.#names.close();
      await this.#policy.close();
      await this.#mesh.close();
      await this.admin?.close();
      if (this.proxy.state === 'running') await this.proxy.close({ drainMs: 0 });
      throw err;
    }
  }

  /**
   * Step 1 of the shutdown: /ready turns 503 at once, and step 2 is scheduled:
   * the inbound listeners stop accepting after `inboundStopDelay`.
   * Idempotent; the first reason wins.
   */
  requestShutdown(reason: string): void {
    if (this.#shutdownReason !== undefined) return;
    this.#shutdownReason = reason;
    if (this.#state === 'ready' || this.#state === 'starting') this.#state = 'draining';
    const drain = formatDuration(this.config.drainTimeoutMs);
    // A person who pressed Ctrl-C wants to know what happens now, and how to make it quicker.
    const again = reason === 'SIGINT' ? 'a second Ctrl-C' : reason === 'SIGTERM' ? 'a second SIGTERM' : 'SIGINT or SIGTERM';
    this.logger.info(
      {
        reason,
        inboundStopDelayMs: this.config.inboundStopDelayMs,
        drainTimeoutMs: this.config.drainTimeoutMs,
        hint: `draining: open connections get up to ${drain} (--drain-timeout) to finish; ${again} exits at once`,
      },
      LIFECYCLE_MESSAGES.shutdownRequested,
    );
    this.#inboundStopped = this.#stopInbound();
    this.#requested(reason);
  }

  async #stopInbound(): Promise<void> {
    if (this.config.inboundStopDelayMs > 0) await sleep(this.config.inboundStopDelayMs);
    // A start-up still in progress finishes first (its listeners must stop too).
    await this.#starting?.catch(() => undefined);
    if (this.proxy.state !== 'running') return;
    const inbound = this.proxy.listeners.filter((l) => l.direction === 'inbound').map((l) => l.name);
    if (inbound.length === 0) return;
    try {
      this.proxy.stopAccepting(inbound);
      this.logger.info({ listeners: inbound }, LIFECYCLE_MESSAGES.inboundStopped);
    } catch (err) {
      this.logger.warn({ err, listeners: inbound }, 'stopping the inbound listeners failed');
    }
  }

  /**
   * Steps 3-4 of the shutdown. `appExited`, when given, is awaited before the
   * final drain, so outbound listeners keep accepting while the app runs;
   * without it the inbound stop delay is awaited instead. Idempotent: later
   * calls return the first call's result.
   */
  drain(appExited?: Promise<unknown>): Promise<CloseSummary> {
    this.#draining ??= this.#drain(appExited);
    return this.#draining;
  }

  async #drain(appExited: Promise<unknown> | undefined): Promise<CloseSummary> {
    this.requestShutdown('drain');
    if (appExited !== undefined) {
      // An app that exits before the inbound delay ends the wait: close() stops every listener.
      await appExited;
    } else {
      await this.#inboundStopped;
    }
    clearInterval(this.#events);
    clearInterval(this.#notableTimer);
    const started = Date.now();
    const open = this.#openConnections();
    // close() refuses new connections before it returns; log afterwards, so
    // "drain started" is only ever seen once the ports are closed.
    const closing = this.proxy.state === 'new' || this.proxy.state === 'failed' ? Promise.resolve({ drained: 0, cut: 0 }) : this.proxy.close({ drainMs: this.config.drainTimeoutMs });
    this.logger.info({ drainTimeoutMs: this.config.drainTimeoutMs, open }, LOG_MESSAGES.drainStarted);
    const summary = await closing;
    this.logEvents();
    this.logger.info({ ...summary, elapsedMs: Date.now() - started }, LOG_MESSAGES.drainFinished);
    this.#state = 'closed';
    this.#names.close();
    await this.#policy.close();
    await this.#mesh.close();
    await this.admin?.close();
    this.#unguard();
    return summary;
  }

  /** Logs the notable failures the engine counted since the last look (./notable.ts). */
  checkFailures(): void {
    let counts;
    try {
      counts = this.proxy.failureCounts();
    } catch {
      return;
    }
    this.#notable.check(counts, () => this.#snapshotOrUndefined());
  }

  /**
   * Logs engine events. A learned server-first target gets one hint naming
   * the annotation that makes the decision permanent (the engine reports
   * each target once).
   */
  logEvents(): void {
    let events;
    try {
      events = this.proxy.takeEvents();
    } catch (err) {
      this.logger.warn({ err }, 'reading engine events failed');
      return;
    }
    for (const event of events) {
      if (event.kind !== 'serverFirstLearned') continue;
      const port = portOf(event.target);
      this.logger.info(
        {
          target: event.target,
          port,
          hint: `the server at ${event.target} speaks first; to skip detection for it permanently, annotate the destination workload or Service with config.linkerd.io/opaque-ports: "${port}" (or run meshpipe with --opaque-ports ${port})`,
        },
        LOG_MESSAGES.serverFirstLearned,
      );
    }
  }

  #logBound(bound: readonly BoundListener[]): void {
    for (const listener of bound) {
      const spec = this.config.forward.find((f) => f.name === listener.name);
      this.logger.info(
        {
          listener: listener.name,
          address: listener.bind,
          port: portOf(listener.bind),
          requested: spec?.bind.addr,
          target: spec?.target.addr,
          ...this.#modeOf(spec, listener.direction),
          direction: listener.direction,
        },
        LOG_MESSAGES.listenerBound,
      );
    }
  }

  /**
   * The mode a listener's connections get, for its `listener bound` line: a
   * forward's own `mode=`, else for a forward to a fixed address the engine's
   * answer from the policy now in force (`policy` says where it comes from;
   * a policy change can change it later, and /policy shows it), else `policy`
   * (decided per connection: the sidecar listeners, a target host name).
   */
  #modeOf(spec: ForwardSpec | undefined, direction: BoundListener['direction']): { mode: string; policy?: string } {
    if (spec?.mode != null) return { mode: spec.mode };
    if (spec?.target.kind !== 'ip') return { mode: 'policy' };
    try {
      const decision = this.proxy.explainPolicy(direction, spec.target.host, spec.target.port);
      // The engine names an unmatched port's source `default`; say it as explain does.
      return { mode: decision.mode, policy: decision.source === 'default' ? `${decision.mode}: nothing configured for it` : decision.source };
    } catch {
      return { mode: 'policy' };
    }
  }

  /** One line saying which inbound connections are accepted and where they go. */
  #logInboundGuard(bound: readonly BoundListener[]): void {
    const guard = this.proxy.config.inbound;
    if (this.#podIps === undefined || guard === undefined) return;
    this.#notable.setPodIps(guard.podIps, this.#podIps.source);
    const fields = { podIps: guard.podIps, podIpsFrom: this.#podIps.source, proxyPorts: guard.proxyPorts, inboundHost: this.config.inboundHost ?? 'original' };
    // `--inbound 127.0.0.1:4143` (or any one address that is not a pod IP): the engine refuses
    // every connection whose destination is not a pod IP, so nothing could ever get through
    // it: mesh peers dial the tunnel at a pod IP, and iptables redirects to the interface's own
    // address. Said at start, where the one counter would otherwise be all there is to see.
    const bind = this.config.inbound;
    if (bind !== null && !isOneOf(bind.host, ['0.0.0.0', '::']) && !isOneOf(bind.host, guard.podIps)) {
      // The bound address: port 0 in the config becomes the port the kernel chose.
      const at = bound.find((l) => l.name === 'inbound')?.bind ?? bind.addr;
      const port = at.slice(at.lastIndexOf(':') + 1);
      // What the refusal is counted as: with an identity, a connection dialled to the inbound
      // port itself is the tunnel and fails the pod-IP check; without one it was not
      // redirected, so it has no original destination to go to.
      const counted = this.#mesh.identityState() !== undefined ? 'not_pod_ip' : 'no_original_dst';
      this.logger.warn({
        inbound: at, podIps: guard.podIps, podIpsFrom: this.#podIps.source,
        hint: `every connection to ${at} is refused and counted (inbound_tcp_accept_errors_total{error="${counted}"}): mesh peers dial the tunnel at a pod IP, and redirected connections arrive at the interface's own address; listen on every address (0.0.0.0:${port}, as the default 0.0.0.0:4143 does) or on a pod IP, or name the pod IPs with --inbound-ips (loopback is never one)`,
      }, LIFECYCLE_MESSAGES.inboundNotPodIp);
    }
    if (this.config.inboundHost === null) {
      this.logger.info(fields, LIFECYCLE_MESSAGES.inboundGuard);
    } else {
      this.logger.warn(
        { ...fields, risk: `inbound connections reach the app at ${this.config.inboundHost}: app ports bound to loopback only are reachable from the network, and the app sees every connection as coming from ${this.config.inboundHost}` },
        LIFECYCLE_MESSAGES.inboundGuard,
      );
    }
  }

  #snapshotOrUndefined(): EngineSnapshot | undefined {
    try {
      return this.proxy.snapshot();
    } catch {
      return undefined;
    }
  }

  /** Connections open now (undefined before start or after close). */
  openConnections(): number | undefined {
    return this.#snapshotOrUndefined()?.listeners.reduce((sum, l) => sum + l.open, 0);
  }

  #openConnections(): number | undefined {
    return this.openConnections();
  }
}

// ---------------------------------------------------------------------------
// Signals and the `meshpipe proxy` flow.

export const STOP_SIGNALS = ['SIGTERM', 'SIGINT'] as const;
export type StopSignal = (typeof STOP_SIGNALS)[number];

/** Exit code of a forced exit on a second signal: 128 + signal number (130 SIGINT, 143 SIGTERM). */
export function forcedExitCode(signal: NodeJS.Signals): number {
  return 128 + (osConstants.signals[signal] ?? 0);
}

export interface SignalHandlers {
  /** The first SIGTERM/SIGINT. */
  onStop(signal: StopSignal): void;
  /** Every signal received (also the first), e.g. to forward it to a wrapped app. */
  onSignal?(signal: NodeJS.Signals): void;
  /** A second SIGTERM/SIGINT; the default exits the process at once with 128 + N. */
  onForced?(signal: StopSignal): void;
  /** Extra signals to catch and pass to `onSignal` only (e.g. SIGHUP for `meshpipe run`). */
  readonly extra?: readonly NodeJS.Signals[];
  /** The connections a forced exit cuts, for its log line. */
  openConnections?(): number | undefined;
}

/** Installs the handlers; returns a function that removes them. */
export function handleSignals(logger: Logger, handlers: SignalHandlers): () => void {
  let first: StopSignal | undefined;
  const onForced = (signal: StopSignal): void => {
    if (handlers.onForced) handlers.onForced(signal);
    else process.exit(forcedExitCode(signal));
  };
  const stop = (signal: StopSignal) => {
    handlers.onSignal?.(signal);
    if (first === undefined) {
      first = signal;
      handlers.onStop(signal);
      return;
    }
    // Say what the exit costs: the connections still open are cut.
    const cut = handlers.openConnections?.();
    logger.warn({ signal, firstSignal: first, exitCode: forcedExitCode(signal), ...(cut !== undefined ? { cut } : {}) }, LOG_MESSAGES.forcedExit);
    onForced(signal);
  };
  const other = (signal: NodeJS.Signals) => handlers.onSignal?.(signal);
  for (const s of STOP_SIGNALS) process.on(s, stop);
  for (const s of handlers.extra ?? []) process.on(s, other);
  return () => {
    for (const s of STOP_SIGNALS) process.off(s, stop);
    for (const s of handlers.extra ?? []) process.off(s, other);
  };
}

/**
 * `meshpipe proxy`: start the sidecar, run until SIGTERM/SIGINT or POST
 * /shutdown, then run the shutdown sequence. Resolves with the exit code (0);
 * rejects with the start-up error (nothing is left bound).
 */
export async function runProxyLifecycle(config: ProxyConfig, logger: Logger, options: SidecarOptions = {}): Promise<number> {
  const sidecar = new Sidecar(config, logger, options);
  // Installed before binding: a signal during start-up still drains.
  const remove = handleSignals(logger, { onStop: (signal) => sidecar.requestShutdown(signal), openConnections: () => sidecar.openConnections() });
  try {
    await sidecar.start();
    await sidecar.shutdownRequested;
    await sidecar.drain();
    // After an uncaught exception the proxy drained; 1 tells the orchestrator to restart it.
    return uncaughtErrors.exception > 0 ? 1 : 0;
  } finally {
    remove();
  }
}
