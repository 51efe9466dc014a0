/**
 * Notable failures, logged where operators look, with what to do about them:
 * the engine counts them per connection (and the metrics show them); this
 * watcher reads the counters every couple of seconds (the engine's
 * `failureCounts`, a few words; the whole snapshot only after a connect
 * failed) and logs a warning when one grew, rate-limited per kind (the first at once, then at most once a
 * minute with the count since), so a flood of failing connections cannot
 * fill a disk.
 *
 * - original-destination lookups failing on a transparent listener: the
 *   connection was not redirected by iptables (`meshpipe init` missing, or a
 *   client connecting to 4140/4143 directly);
 * - the upstream of a `--forward` refusing connections (nothing listens at
 *   the target);
 * - connections to a forward whose host name no longer resolves;
 * - forwarding loops the engine refused (a target that is the proxy itself);
 * - inbound connections refused because their original destination is not one
 *   of the pod's IPs (a pod IP missing from --inbound-ips or POD_IPS, a second
 *   address, traffic for another host sent here): the clients only see a reset.
 */
import type { ProxyConfig } from '../config/index.js';
import type { EngineSnapshot, FailureCounts } from '../engine/index.js';
import type { Logger } from '../observe/index.js';
import { RateLimited } from '../observe/rate-limited.js';

export const NOTABLE_MESSAGES = {
  originalDst: 'connections without an original destination were refused',
  refused: 'the forward target refused connections',
  unresolved: 'connections refused: the forward target host name has no address',
  loop: 'connections refused: their target was the proxy itself (a forwarding loop)',
  notPodIp: 'inbound connections refused: their destination is not one of the pod IPs',
} as const;

/** How often the counters are read. */
export const NOTABLE_POLL_MS = 2_000;

export class NotableFailures {
  readonly #logger: Logger;
  readonly #config: ProxyConfig;
  readonly #limit: RateLimited;
  readonly #seen = new Map<string, number>();
  /** The pod IPs the inbound listener accepts, and where they came from (named in the not_pod_ip warning). */
  #podIps: { readonly ips: readonly string[]; readonly from: string } | undefined;

  constructor(logger: Logger, config: ProxyConfig, limit = new RateLimited()) {
    this.#logger = logger;
    this.#config = config;
    this.#limit = limit;
  }

  /** The pod IPs in force (the sidecar layout's inbound listener), for the not_pod_ip warning. */
  setPodIps(ips: readonly string[], from: string): void {
    this.#podIps = { ips, from };
  }

  /** How much `key` grew since the last look (0 the first time a counter is seen at 0). */
  #delta(key: string, value: number): number {
    const before = this.#seen.get(key) ?? 0;
    this.#seen.set(key, value);
    return Math.max(0, value - before);
  }

  #warn(key: string, grew: number, fields: Record<string, unknown>, msg: string): void {
    if (grew === 0) return;
    const n = this.#limit.hit(key, grew);
    if (n !== undefined) this.#logger.warn({ ...fields, count: n }, msg);
  }

  /**
   * Compares the counters with the last ones and logs what grew. `snapshot`
   * (the whole engine snapshot, with every target's series) is only taken
   * when a connect failed since the last look, to see which forward's target
   * refused: the steady state reads a few counters.
   */
  check(s: FailureCounts, snapshot: () => EngineSnapshot | undefined): void {
    this.#warn('originalDst', this.#delta('originalDst', s.errors.originalDstFailed), {
      hint: 'a transparent listener (4140/4143) got a connection iptables did not redirect, so it has no original destination: is `meshpipe init` installed in this network namespace, and does the proxy run as the uid it exempts (--proxy-uid, default 2102)? Clients that connect to the proxy\'s ports directly get a reset.',
    }, NOTABLE_MESSAGES.originalDst);

    this.#warn('loop', this.#delta('loop', s.errors.loopRefused), {
      hint: 'a connection\'s target was one of the proxy\'s own listeners: a --forward that points back at the proxy, or redirected traffic sent to the proxy\'s own ports; counted in meshpipe_loop_refused_total',
    }, NOTABLE_MESSAGES.loop);

    const pods = this.#podIps;
    this.#warn('notPodIp', this.#delta('notPodIp', s.errors.notPodIp), {
      ...(pods !== undefined ? { podIps: pods.ips, podIpsFrom: pods.from } : {}),
      hint: `the inbound listener accepts connections to the pod's own IPs only${pods !== undefined ? ` (${pods.ips.join(', ') || 'none'}, from ${pods.from})` : ''}, so that nothing else reachable from this network namespace is exposed through it; if the pod has an address that is missing, name all of them with --inbound-ips (or POD_IPS, the downward API's status.podIPs); the clients got a reset (inbound_tcp_accept_errors_total{error="not_pod_ip"})`,
    }, NOTABLE_MESSAGES.notPodIp);

    // Forwards to host names with no address.
    for (const n of s.names) {
      this.#warn(`unresolved:${n.listener}`, this.#delta(`unresolved:${n.listener}`, n.noAddress), {
        listener: n.listener, target: `${n.host}:${n.port}`,
        hint: `${n.host} does not resolve any more; each connection to ${n.listener} is reset until it does (meshpipe_forward_unresolved_total)`,
      }, NOTABLE_MESSAGES.unresolved);
    }

    // Forward targets that refuse: connect failures with ECONNREFUSED on the series of a forward's target addresses.
    if (this.#config.forward.length === 0 || this.#delta('connectFailed', s.errors.connectFailed) === 0) return;
    const full = snapshot();
    if (full === undefined) return;
    const refusedAt = new Map<string, number>();
    for (const series of full.tcp) {
      if (series.targetAddr === null) continue;
      const refused = series.closes.filter((c) => c.peer === 'dst' && c.errno === 'ECONNREFUSED').reduce((sum, c) => sum + c.count, 0);
      if (refused > 0) refusedAt.set(series.targetAddr, (refusedAt.get(series.targetAddr) ?? 0) + refused);
    }
    for (const f of this.#config.forward) {
      const addrs = f.target.kind === 'name' ? (s.names.find((n) => n.listener === f.name)?.addresses ?? []) : [f.target.addr];
      const total = addrs.reduce((sum, a) => sum + (refusedAt.get(a) ?? 0), 0);
      const where = f.target.kind === 'name' ? `${f.target.addr} (${addrs.join(', ') || 'no address'})` : f.target.addr;
      // The address the listener is bound to (port 0 in the config becomes the port the kernel chose).
      const bound = full.listeners.find((l) => l.name === f.name)?.bind ?? f.bind.addr;
      this.#warn(`refused:${f.name}`, this.#delta(`refused:${f.name}`, total), {
        listener: f.name, target: f.target.addr,
        hint: `nothing accepts connections at ${where}: is the server running, and listening on that address and port (127.0.0.1 and ::1 are different addresses)? Clients of ${bound} get a reset${this.#config.http ? ' (HTTP clients a 502 Bad Gateway)' : ''}.`,
      }, NOTABLE_MESSAGES.refused);
    }
  }
}
