/**
 * Turns a validated `ProxyConfig` into the engine's `EngineConfig` JSON (the
 * contract in ARCHITECTURE.md).
 *
 * Pure: same input, same output, no I/O. The port policy is the policy
 * layer's (ts/policy/): the caller passes the table, and without one it is
 * the flags-only table, the one compiler with empty inputs.
 */
import { networkInterfaces } from 'node:os';
import type { ProxyConfig } from '../config/index.js';
// The file itself: ts/policy/index.ts reaches the sidecar wiring, which imports this folder.
import { flagsPolicy } from '../policy/flags.js';
import type { EngineConfig, ListenerSpec, PolicyTable } from './native.js';

/** Builds the engine config; `policy` defaults to the flags-only policy. */
export function buildEngineConfig(config: ProxyConfig, policy: PolicyTable = flagsPolicy(config).table): EngineConfig {
  return {
    workers: config.workers,
    maxConnections: config.maxConnections,
    connectTimeoutMs: config.connectTimeoutMs,
    listeners:
      config.forward.length > 0
        ? config.forward.map((f) => ({
            name: f.name,
            bind: f.bind.addr,
            target: { kind: 'fixed', addr: f.target.addr },
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
    metrics: { maxTargets: config.maxMetricTargets },
    policy,
  };
}

/** True when this machine has an IPv6 loopback address. */
function hasIpv6Loopback(): boolean {
  return Object.values(networkInterfaces()).some((list) => list?.some((i) => i.family === 'IPv6' && i.address === '::1'));
}

/**
 * The transparent listeners of the sidecar layout (no --forward): inbound and
 * outbound, each recovering the original destination, and their IPv6 twins
 * when IPv6 is on (`meshpipe init` redirects IPv6 too, so IPv6 traffic must
 * find a listener). Inbound connections reach the app on their original port
 * at `inboundHost` (loopback by default, `::1` on the IPv6 twin).
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
