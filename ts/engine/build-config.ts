/**
 * Turns a validated `ProxyConfig` into the engine's `EngineConfig` JSON (the
 * contract in ARCHITECTURE.md).
 *
 * Pure: same input, same output, no I/O. The port policy is the policy
 * layer's (ts/policy/): the caller passes the table, and without one it is
 * the flags-only table, the one compiler with empty inputs.
 */
import { hasIpv6Loopback, type ProxyConfig } from '../config/index.js';
import { MeshpipeError } from '../errors.js';
// The file itself: ts/policy/index.ts reaches the sidecar wiring, which imports this folder.
import { flagsPolicy } from '../policy/flags.js';
import { checkForwardsAvoidAdmin, proxyPorts, resolvePodIps, type PodIps } from './inbound.js';
import type { EngineConfig, ListenerSpec, PolicyTable } from './native.js';

/**
 * Builds the engine config; `policy` defaults to the flags-only policy. The
 * sidecar layout gets the inbound guard (pod IPs and the proxy's own ports,
 * ./inbound.ts); a `--forward` to the admin server is refused.
 * @throws MeshpipeError ERR_INVALID_CONFIG
 */
export function buildEngineConfig(config: ProxyConfig, policy: PolicyTable = flagsPolicy(config).table, podIps: PodIps = resolvePodIps(config)): EngineConfig {
  checkForwardsAvoidAdmin(config);
  const sidecar = config.forward.length === 0;
  if (sidecar && config.inbound !== null && podIps.ips.length === 0) {
    throw new MeshpipeError(
      'ERR_INVALID_CONFIG',
      "the inbound listener needs the pod's IPs and none were found: give --inbound-ips (or POD_IPS from the downward API's status.podIPs); the interfaces have no address besides loopback",
      { key: 'inboundIps' },
    );
  }
  return {
    ...(sidecar && config.inbound !== null ? { inbound: { podIps: [...podIps.ips], proxyPorts: proxyPorts(config) } } : {}),
    workers: config.workers,
    limits: {
      inboundConnections: config.maxInboundConnections,
      outboundConnections: config.maxOutboundConnections,
      detectingConnections: config.maxDetectingConnections,
      fdReserve: config.fdReserve,
      bulkBuffers: config.bulkBuffers,
    },
    connectTimeoutMs: config.connectTimeoutMs,
    idleTimeoutMs: config.idleTimeoutMs,
    http: {
      enabled: config.http,
      maxHeaderBytes: config.httpMaxHeaderBytes,
      headerTimeoutMs: config.httpHeaderTimeoutMs,
      responseTimeoutMs: config.httpResponseTimeoutMs,
      portResponseTimeouts: config.httpPortResponseTimeouts.map((t) => ({
        direction: t.direction ?? null,
        ports: [t.ports[0], t.ports[1]] as [number, number],
        timeoutMs: t.timeoutMs,
      })),
      poolMaxIdle: 128,
      poolIdleTimeoutMs: 90_000,
    },
    listeners:
      config.forward.length > 0
        ? config.forward.map((f) => ({
            name: f.name,
            bind: f.bind.addr,
            // A host name's addresses are pushed before the listeners bind (./names.ts).
            target: f.target.kind === 'name' ? { kind: 'named', host: f.target.host, port: f.target.port, addrs: [] } : { kind: 'fixed', addr: f.target.addr },
            mode: f.mode,
            direction: f.direction,
          }))
        : sidecarListeners(config),
    detect: {
      inboundTimeoutMs: config.inboundDetectTimeoutMs,
      outboundTimeoutMs: config.outboundDetectTimeoutMs,
      serverFirstGraceMs: config.serverFirstGraceMs,
      serverFirstCapacity: config.serverFirstCacheSize,
      serverFirstTtlMs: config.serverFirstTtlMs,
      portTimeouts: config.portDetectTimeouts.map((t) => ({ direction: t.direction, ports: [t.from, t.to] as const, timeoutMs: t.timeoutMs })),
    },
    metrics: { maxTargets: config.maxMetricTargets, retainIdleMs: config.metricsRetainIdleMs },
    policy,
  };
}

/**
 * The transparent listeners of the sidecar layout (no --forward): inbound and
 * outbound, each recovering the original destination, and their IPv6 twins
 * when IPv6 is on (`meshpipe init` redirects IPv6 too, so IPv6 traffic must
 * find a listener). Inbound connections go to their original destination
 * (the engine refuses any that is not one of the pod's IPs); only the opt-in
 * `inboundHost` (e.g. 127.0.0.1, `::1` on the IPv6 twin) replaces the address.
 */
export function sidecarListeners(config: ProxyConfig): ListenerSpec[] {
  const ipv6 = config.ipv6 === 'auto' ? hasIpv6Loopback() : config.ipv6;
  const host = config.inboundHost;
  const v6Host = host === null ? null : host.includes(':') ? host : host === '127.0.0.1' ? '::1' : null;
  const v4Host = host !== null && !host.includes(':') ? host : null;
  const out: ListenerSpec[] = [];
  if (config.inbound) {
    out.push({ name: 'inbound', bind: config.inbound.addr, target: { kind: 'originalDst', inboundHost: v4Host }, mode: null, direction: 'inbound' });
    if (ipv6 && !config.inbound.addr.startsWith('[')) {
      out.push({
        name: 'inbound-ipv6',
        bind: `[::]:${config.inbound.port}`,
        target: { kind: 'originalDst', inboundHost: v6Host },
        mode: null,
        direction: 'inbound',
      });
    }
  }
  if (config.outbound) {
    out.push({ name: 'outbound', bind: config.outbound.addr, target: { kind: 'originalDst', inboundHost: null }, mode: null, direction: 'outbound' });
    if (ipv6 && !config.outbound.addr.startsWith('[')) {
      out.push({
        name: 'outbound-ipv6',
        bind: `[::1]:${config.outbound.port}`,
        target: { kind: 'originalDst', inboundHost: null },
        mode: null,
        direction: 'outbound',
      });
    }
  }
  return out;
}
