/**
 * IP networks (CIDRs) for the policy layer: parsing with clear errors,
 * normalisation (host bits cleared, so `10.1.2.3/8` becomes `10.0.0.0/8`),
 * containment checks, and the exact-address form (`/32`, `/128`) used for
 * per-destination policy rules.
 *
 * The engine parses the same strings again in Rust (`addr.rs`); doing it here
 * too lets the policy layer reject a bad `skip-subnets` entry or
 * `--cluster-networks` value with the object and token that carried it, long
 * before a table reaches the engine (where one bad rule rejects the table).
 * Both follow the same rules, and test/policy-cidr-differential.test.ts
 * checks them against each other (fast-check, through the addon): an
 * IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, RFC 4291 section 2.5.5.2) is
 * its IPv4 address, and a mapped network of /96 or longer is the IPv4
 * network `a.b.c.d/(N-96)`; a shorter one stays IPv6 and holds no IPv4
 * address.
 */

import { isIP } from 'node:net';

/** A parsed network: address family, network address as a bigint, prefix length. */
export interface Cidr {
  readonly family: 4 | 6;
  readonly bits: bigint;
  readonly prefix: number;
  /** Canonical text form, e.g. `10.0.0.0/8`, `fd00::/8`. */
  readonly text: string;
}

/** Linkerd's default clusterNetworks. */
export const DEFAULT_CLUSTER_NETWORKS = '10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8';

function v4ToBigInt(ip: string): bigint {
  let out = 0n;
  for (const part of ip.split('.')) out = (out << 8n) | BigInt(Number(part));
  return out;
}

function v6ToBigInt(ip: string): bigint {
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two hextets first.
  let text = ip.toLowerCase();
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4 && v4[1] !== undefined) {
    const n = v4ToBigInt(v4[1]);
    text = `${text.slice(0, v4.index)}${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const headParts = head === '' ? [] : head.split(':');
  const tailParts = tail === undefined || tail === '' ? [] : tail.split(':');
  const missing = 8 - headParts.length - tailParts.length;
  const parts = [...headParts, ...Array<string>(tail === undefined ? 0 : missing).fill('0'), ...tailParts];
  let out = 0n;
  for (const p of parts) out = (out << 16n) | BigInt(parseInt(p, 16));
  return out;
}

function bigIntToV4(n: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => String((n >> s) & 0xffn)).join('.');
}

function bigIntToV6(n: bigint): string {
  const parts: number[] = [];
  for (let i = 7; i >= 0; i--) parts.push(Number((n >> BigInt(i * 16)) & 0xffffn));
  // Compress the longest run of zero hextets (RFC 5952), if at least two long.
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (parts[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && parts[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = parts.map((p) => p.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/** Parses an IP address into family and bits, or returns undefined. */
export function parseIp(ip: string): { family: 4 | 6; bits: bigint } | undefined {
  // A zone index (`fe80::1%eth0`) names an interface, not a network: the engine refuses it too.
  if (ip.includes('%')) return undefined;
  const family = isIP(ip.trim());
  if (family === 4) return { family: 4, bits: v4ToBigInt(ip.trim()) };
  if (family === 6) return { family: 6, bits: v6ToBigInt(ip.trim()) };
  return undefined;
}

function mask(family: 4 | 6, prefix: number): bigint {
  const width = family === 4 ? 32 : 128;
  const all = (1n << BigInt(width)) - 1n;
  return prefix === 0 ? 0n : (all >> BigInt(width - prefix)) << BigInt(width - prefix) & all;
}

/** True for `::ffff:0:0/96` addresses (IPv4-mapped IPv6). */
function isMapped(family: 4 | 6, bits: bigint): boolean {
  return family === 6 && bits >> 32n === 0xffffn;
}

function make(family: 4 | 6, bits: bigint, prefix: number): Cidr {
  if (isMapped(family, bits) && prefix >= 96) return make(4, bits & 0xffffffffn, prefix - 96);
  const net = bits & mask(family, prefix);
  const text = `${family === 4 ? bigIntToV4(net) : bigIntToV6(net)}/${prefix}`;
  return { family, bits: net, prefix, text };
}

/**
 * Parses `addr/prefix` (or a bare address, meaning a single host).
 * @returns the network, or an error reason naming what is expected.
 */
export function parseCidr(input: string): Cidr | { error: string } {
  const text = input.trim();
  const slash = text.indexOf('/');
  const addr = slash < 0 ? text : text.slice(0, slash);
  const ip = parseIp(addr);
  if (!ip) return { error: `"${addr}" is not an IPv4 or IPv6 address; expected a CIDR such as 10.0.0.0/8 or fd00::/8` };
  const width = ip.family === 4 ? 32 : 128;
  let prefix = width;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p) || Number(p) > width) {
      return { error: `prefix length "${p}" is invalid; expected 0-${width}` };
    }
    prefix = Number(p);
  }
  // Shorter than /96, a mapped address would make an IPv6 network that holds no IPv4
  // address, not even its own (mapped addresses are matched as IPv4): almost surely an
  // IPv4 prefix length after a mapped address. Refused, as the engine refuses it.
  if (isMapped(ip.family, ip.bits) && prefix < 96) {
    return { error: `"${text}" is an IPv4-mapped address with a prefix shorter than /96, which holds no IPv4 address (meshpipe matches mapped addresses as IPv4); expected the IPv4 network, e.g. 10.0.0.0/8, or a mapped one of /96 to /128, e.g. ::ffff:10.0.0.0/104` };
  }
  return make(ip.family, ip.bits, prefix);
}

/** True when `value` is a parse error rather than a network. */
export function isCidrError(value: Cidr | { error: string }): value is { error: string } {
  return 'error' in value;
}

/** Parses a comma-separated CIDR list; every bad entry is reported with its token. */
export function parseCidrList(input: string): { cidrs: Cidr[]; errors: { token: string; reason: string }[] } {
  const cidrs: Cidr[] = [];
  const errors: { token: string; reason: string }[] = [];
  if (input.trim() === '') return { cidrs, errors };
  for (const raw of input.split(',')) {
    const token = raw.trim();
    if (token === '') {
      errors.push({ token: raw, reason: 'empty entry: expected a CIDR such as 10.0.0.0/8' });
      continue;
    }
    const c = parseCidr(token);
    if (isCidrError(c)) errors.push({ token, reason: c.error });
    else cidrs.push(c);
  }
  return { cidrs, errors };
}

/**
 * Parses a CIDR list where any error is fatal (CLI flags).
 * @throws Error naming every bad token.
 */
export function parseCidrListStrict(input: string): Cidr[] {
  const { cidrs, errors } = parseCidrList(input);
  if (errors.length > 0) throw new Error(errors.map((e) => `"${e.token}": ${e.reason}`).join('; '));
  return cidrs;
}

/** True if the address lies in the network (an IPv4-mapped IPv6 address counts as IPv4). */
export function cidrContains(cidr: Cidr, address: string): boolean {
  let ip = parseIp(address);
  if (!ip) return false;
  if (isMapped(ip.family, ip.bits)) ip = { family: 4, bits: ip.bits & 0xffffffffn };
  if (ip.family !== cidr.family) return false;
  return (ip.bits & mask(cidr.family, cidr.prefix)) === cidr.bits;
}

/** True if the address lies in any of the networks. */
export function inNetworks(networks: readonly Cidr[], address: string): boolean {
  return networks.some((n) => cidrContains(n, address));
}

/** The exact-host network for an address (`/32` or `/128`; a mapped address is its IPv4 form), or undefined if it is not an IP. */
export function hostCidr(address: string): Cidr | undefined {
  const ip = parseIp(address);
  if (!ip) return undefined;
  return make(ip.family, ip.bits, ip.family === 4 ? 32 : 128);
}

/** An address in the form the engine keys destinations by (`::ffff:10.0.0.1` -> `10.0.0.1`), or undefined if it is not an IP. */
export function canonicalAddress(address: string): string | undefined {
  const host = hostCidr(address);
  return host === undefined ? undefined : host.text.slice(0, host.text.lastIndexOf('/'));
}

/** An address inside a network (its `n`-th host, the first by default; the last one if the network is smaller), e.g. to ask what the policy does for "any destination in it". */
export function addressIn(cidr: Cidr, n = 1): string {
  const width = cidr.family === 4 ? 32 : 128;
  const size = 1n << BigInt(width - cidr.prefix);
  const offset = BigInt(n) < size ? BigInt(n) : size - 1n;
  const bits = cidr.bits + offset;
  return cidr.family === 4 ? bigIntToV4(bits) : bigIntToV6(bits);
}
