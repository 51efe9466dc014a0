/**
 * Config keys of the transparent sidecar layout and of the policy sources.
 *
 * With no `--forward`, `meshpipe proxy` runs as a sidecar: an inbound
 * listener (default 0.0.0.0:4143) receives the pod's redirected incoming TCP
 * and forwards it to its original destination when that is one of the pod's
 * IPs (`inboundIps`, env POD_IPS, else the interfaces), an outbound listener
 * (default 127.0.0.1:4140) receives the app's redirected outgoing TCP and
 * connects to the original destination (SO_ORIGINAL_DST). Port policy comes
 * from the workload's annotations, manifests or a live Kubernetes watch
 * (ts/policy/source.ts); without any of them, from the flags alone.
 */
// The file itself, not ts/policy/index.ts: the policy layer reads the config (an import cycle).
import { DEFAULT_CLUSTER_NETWORKS } from '../policy/cidr.js';
import { bindOrOff, bool, cidrList, guard, optionalText, pathList } from './schemas.js';
import { isIP } from 'node:net';
import { z } from 'zod';
import type { SocketAddr } from './forward.js';

/** What the sidecar keys become in the frozen ProxyConfig. */
export interface SidecarConfig {
  /** The transparent inbound listener (when no --forward is given), or null when off. */
  readonly inbound: SocketAddr | null;
  /** The transparent outbound listener (when no --forward is given), or null when off. */
  readonly outbound: SocketAddr | null;
  /**
   * Where inbound connections reach the app: null (the default) forwards to
   * the original destination; an IP (an explicit opt-in, e.g. 127.0.0.1)
   * replaces its address, which exposes loopback-only app ports.
   */
  readonly inboundHost: string | null;
  /** The pod's IPs (inbound connections to other addresses are refused); empty = env POD_IPS, else the interfaces' addresses. */
  readonly inboundIps: readonly string[];
  /** What `meshpipe init --write-state` recorded (exempted ports, proxy uid), checked against this proxy at start-up. */
  readonly initState: string | undefined;
  /** Also listen on IPv6 ([::1] outbound, [::] inbound): `auto` when the machine has IPv6 loopback. */
  readonly ipv6: 'auto' | boolean;
  /** The workload's annotations in the downward-API file format. */
  readonly annotations: string | undefined;
  readonly manifests: readonly string[];
  /** Watch the Kubernetes API for policy objects. */
  readonly kube: boolean;
  readonly kubeconfig: string | undefined;
  readonly clusterNetworks: readonly string[];
  /** This workload's namespace and pod (env POD_NAMESPACE / POD_NAME when unset). */
  readonly namespace: string | undefined;
  readonly pod: string | undefined;
}

const inboundHost = z.string().transform((v, ctx) =>
  guard(() => {
    const text = v.trim();
    if (text === 'original') return null;
    if (/^[0-9.]+$/.test(text) || text.includes(':')) return text.replace(/^\[|\]$/g, '');
    throw new Error('expected an IP address (e.g. 127.0.0.1) or "original" (the connection\'s own destination address)');
  }, ctx),
);

/** A pod IP: a unicast address other pods reach this one at. */
export function parsePodIp(text: string): string {
  const ip = text.trim().replace(/^\[|\]$/g, '');
  const family = isIP(ip);
  if (family === 0) throw new Error(`"${text}" is not an IP address`);
  const v4 = family === 4 ? ip : /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip)?.[1];
  const lower = ip.toLowerCase();
  if ((v4 !== undefined && (v4.startsWith('127.') || v4 === '0.0.0.0')) || lower === '::1' || lower === '::') {
    throw new Error(`${ip} is a loopback or unspecified address, not one of the pod's own addresses (status.podIPs)`);
  }
  return ip;
}

/** A comma-separated list (or array) of pod IPs. */
export const podIpList = z.union([z.string(), z.array(z.string())]).transform((v, ctx) =>
  guard(() => {
    const items = (Array.isArray(v) ? v : v.split(',')).map((s) => s.trim()).filter((s) => s !== '');
    return items.map(parsePodIp);
  }, ctx),
);

const ipv6 = z.union([z.boolean(), z.string()]).transform((v, ctx) =>
  guard(() => {
    if (typeof v === 'string' && v.trim().toLowerCase() === 'auto') return 'auto' as const;
    const text = String(v).trim().toLowerCase();
    if (['true', '1', 'yes', 'on'].includes(text)) return true;
    if (['false', '0', 'no', 'off'].includes(text)) return false;
    throw new Error('expected auto, true or false');
  }, ctx),
);

const ADDR_OR_OFF = 'host:port (IPv4 or [IPv6]) or "off"';

/** The sidecar and policy-source keys, merged into the config's field table. */
export const SIDECAR_FIELDS = {
  inbound: { schema: bindOrOff, default: '0.0.0.0:4143', expected: ADDR_OR_OFF },
  outbound: { schema: bindOrOff, default: '127.0.0.1:4140', expected: ADDR_OR_OFF },
  inboundHost: { schema: inboundHost, default: 'original', expected: 'an IP address or "original"' },
  inboundIps: { schema: podIpList, default: [] as string[], expected: "the pod's IPs, e.g. 10.42.0.7,fd00::7" },
  initState: { schema: optionalText, default: '', expected: 'a file path' },
  ipv6: { schema: ipv6, default: 'auto', expected: 'auto, true or false' },
  annotations: { schema: optionalText, default: '', expected: 'a file path' },
  manifests: { schema: pathList, default: [] as string[], expected: 'file or folder paths' },
  kube: { schema: bool, default: false, expected: 'true or false' },
  kubeconfig: { schema: optionalText, default: '', expected: 'a file path' },
  clusterNetworks: { schema: cidrList, default: DEFAULT_CLUSTER_NETWORKS, expected: 'CIDRs like 10.0.0.0/8,fd00::/8' },
  namespace: { schema: optionalText, default: '', expected: 'a namespace name' },
  pod: { schema: optionalText, default: '', expected: 'a pod name' },
} as const;

type SidecarValues = { [K in keyof typeof SIDECAR_FIELDS]: z.output<(typeof SIDECAR_FIELDS)[K]['schema']> };

/** Picks the sidecar keys out of the parsed values. */
export function sidecarConfig(v: SidecarValues): SidecarConfig {
  return {
    inbound: v.inbound,
    outbound: v.outbound,
    inboundHost: v.inboundHost,
    inboundIps: v.inboundIps,
    initState: v.initState,
    ipv6: v.ipv6,
    annotations: v.annotations,
    manifests: v.manifests,
    kube: v.kube,
    kubeconfig: v.kubeconfig,
    clusterNetworks: v.clusterNetworks,
    namespace: v.namespace,
    pod: v.pod,
  };
}

/** True when a policy source beyond the flags is configured. */
export function hasPolicySources(c: SidecarConfig): boolean {
  return c.annotations !== undefined || c.manifests.length > 0 || c.kube;
}
