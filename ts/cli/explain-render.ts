/**
 * Rendering of effective policies for `meshpipe explain` (text and JSON):
 * each workload's inbound ports with mode and source, its own switches (skip
 * ports, skip subnets, enable-external-profiles, detect timeouts), who may
 * connect to its ports (authorization), every destination's outbound
 * decisions and mesh peer, the cluster defaults, and the problems.
 * The per-workload JSON is `effectiveToJson` of ts/policy/model.ts, the same
 * shape the admin server's /policy serves.
 */

import { formatDuration, formatPortList } from '../config/index.js';
import { describeRef } from '../policy/k8s/index.js';
import { effectiveToJson, type CompileResult, type PolicyProblem, type PortDecision } from '../policy/index.js';
import type { AuthzRuleSpec, MeshPeerSpec, PortAuthzSpec } from '../engine/index.js';

/** Who a rule lets in, in words. */
export function describeRule(r: AuthzRuleSpec): string {
  let who: string;
  if (r.identities.length === 0) who = 'anyone (no mesh TLS needed)';
  else if (r.identities.length === 1 && r.identities[0] === '*') who = 'any meshed client';
  else who = `meshed clients ${r.identities.join(', ')}`;
  const from = r.networks.length === 0
    ? 'from any address'
    : `from ${r.networks.map((n) => (n.except.length > 0 ? `${n.cidr} except ${n.except.join(', ')}` : n.cidr)).join(', ')}`;
  return `${r.kind === 'default' ? 'default policy' : r.kind} ${r.name}: ${who} ${from}`;
}

/** Who may connect to a port: its Server (or the default policy) and the rules in the order they are tried. */
export function authzLines(a: PortAuthzSpec): string[] {
  const head = a.srvKind === 'server' ? `Server ${a.srvName}` : `default policy ${a.srvName}`;
  if (a.rules.length === 0) {
    return [`${head}: nobody${a.srvKind === 'server' ? ' (a Server with no AuthorizationPolicy denies everything)' : ''}`];
  }
  return [`${head}: the first rule a client satisfies lets it in, anyone else is refused`, ...a.rules.map((r) => `  ${describeRule(r)}`)];
}

/** A meshed peer, in words. */
export function meshLine(m: MeshPeerSpec | null | undefined): string {
  return m ? `mutual TLS to ${m.identity} through its tunnel port ${m.tunnelPort} (${m.source})` : 'not meshed: no mesh TLS';
}

function portText(d: PortDecision): string {
  const p = d.ports.from === d.ports.to ? String(d.ports.from) : `${d.ports.from}-${d.ports.to}`;
  return d.name ? `${p} (${d.name})` : p;
}

/** Folds consecutive decisions with the same mode and source into one row (`25,587,3306`). */
function grouped(decisions: readonly PortDecision[]): string[][] {
  const rows: { ports: string[]; mode: string; source: string }[] = [];
  for (const d of decisions) {
    const last = rows[rows.length - 1];
    if (last && last.mode === d.mode && last.source === d.source) last.ports.push(portText(d));
    else rows.push({ ports: [portText(d)], mode: d.mode, source: d.source });
  }
  return rows.map((r) => ['outbound', r.ports.join(','), r.mode, r.source]);
}

function table(rows: readonly (readonly string[])[], indent: string): string[] {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => indent + r.map((c, i) => (i < r.length - 1 ? c.padEnd(widths[i] ?? 0) : c)).join('  ').trimEnd());
}

/** JSON for `explain --json` without --port: per workload and port, mode and source. */
export function renderEffectiveJson(
  workloads: readonly CompileResult[], shared: CompileResult, problems: readonly PolicyProblem[],
): Record<string, unknown> {
  const s = effectiveToJson(shared.effective);
  return {
    workloads: workloads.map((w) => {
      const j = effectiveToJson(w.effective);
      return {
        ...(j['workload'] as object | null ?? { kind: 'Pod', namespace: null, name: null }),
        inbound: (j['inbound'] as { ports: unknown }).ports,
        inboundDetectTimeoutMs: w.effective.inbound.detectTimeout.ms,
        outboundDetectTimeoutMs: w.effective.outbound.detectTimeout.ms,
        skipInboundPorts: j['skipInboundPorts'],
        skipOutboundPorts: j['skipOutboundPorts'],
        skipSubnets: j['skipSubnets'],
        enableExternalProfiles: w.effective.enableExternalProfiles.enabled,
        authorization: w.effective.inbound.authorization,
      };
    }),
    destinations: (s['outbound'] as { destinations: unknown }).destinations,
    clusterDefaults: (s['outbound'] as { clusterDefaults: unknown }).clusterDefaults,
    meshDestinations: shared.effective.outbound.meshDestinations,
    problems: problems.map((p) => ({
      object: p.object ?? null, file: p.file ?? null, line: p.line ?? null, document: p.document ?? null,
      annotation: p.annotation ?? null, token: p.token, reason: p.reason, message: p.message,
    })),
  };
}

/** Text for `explain --manifests ...` without --port. */
export function renderEffective(
  workloads: readonly CompileResult[], shared: CompileResult, problems: readonly PolicyProblem[],
): string {
  const out: string[] = [];
  for (const w of workloads) {
    const e = w.effective;
    out.push(e.workload ? describeRef(e.workload) : 'this pod');
    const rows = e.inbound.ports.map((d) => ['inbound', portText(d), d.mode, d.source]);
    const listed = new Set(e.inbound.ports.map((p) => p.ports.from));
    for (const d of e.inbound.decisions) {
      // A range adds a row only when it covers ports not listed one by one above.
      const covered = [...listed].filter((p) => p >= d.ports.from && p <= d.ports.to).length;
      if (d.ports.from === d.ports.to || covered === d.ports.to - d.ports.from + 1) continue;
      rows.push(['inbound', portText(d), d.mode, d.source]);
    }
    if (rows.length === 0) rows.push(['inbound', '*', 'detect', 'no ports declared and nothing configured']);
    out.push(...table(rows, '  '));
    const extras: string[] = [];
    if (e.skipInboundPorts.length > 0) extras.push(`skip-inbound-ports ${formatPortList(e.skipInboundPorts)}`);
    if (e.skipOutboundPorts.length > 0) extras.push(`skip-outbound-ports ${formatPortList(e.skipOutboundPorts)}`);
    if (e.skipSubnets.length > 0) extras.push(`skip-subnets ${e.skipSubnets.join(',')}`);
    if (e.enableExternalProfiles.enabled) extras.push('enable-external-profiles');
    for (const [dir, t] of [['inbound', e.inbound.detectTimeout], ['outbound', e.outbound.detectTimeout]] as const) {
      if (t.overridden) extras.push(`${dir} detect timeout ${formatDuration(t.ms)} (${t.source})`);
    }
    if (extras.length > 0) out.push(`  caller settings: ${extras.join('; ')}`);
    const authz = e.inbound.authorization;
    out.push('  who may connect:');
    for (const p of authz.ports) out.push(...authzLines(p).map((l, i) => `    ${i === 0 ? `port ${p.port}: ` : ''}${l}`));
    out.push(...authzLines(authz.default).map((l, i) => `    ${i === 0 ? `${authz.ports.length > 0 ? 'other ports' : 'every port'}: ` : ''}${l}`));
    if (authz.exposedPorts !== null) out.push(`    through the tunnel (4143): only ports ${authz.exposedPorts.join(',')}`);
    out.push('');
  }
  const dests = shared.effective.outbound.destinations;
  if (dests.length > 0) {
    out.push('Outbound destinations (what a caller gets)');
    for (const d of dests) {
      const addr = d.addresses.length > 0 ? d.addresses.join(', ') : 'no address known: shown, not enforced';
      out.push(`  ${describeRef(d.object)} (${addr})`);
      out.push(...table(grouped(d.decisions), '    '));
      if (d.mesh) out.push(`    ${meshLine(d.mesh)}`);
    }
    out.push('');
  }
  const fixed = shared.effective.outbound.meshDestinations;
  if (fixed.length > 0) {
    out.push('Static meshed destinations (--destinations)');
    out.push(...table(fixed.map((f) => [f.net, f.identity, String(f.tunnelPort), f.source]), '  '));
    out.push('');
  }
  const defaults = shared.effective.outbound.defaults;
  if (defaults.length > 0) {
    const nets = [...new Set(defaults.map((g) => g.net ?? 'any address'))].join(', ');
    out.push(`Cluster defaults: opaque ${formatPortList(shared.effective.defaultOpaquePorts)} for ${nets}`);
    out.push('');
  }
  if (problems.length > 0) {
    out.push('Problems (valid entries still apply):');
    for (const p of problems) out.push(`  ${p.message}`);
    out.push('');
  }
  return out.join('\n');
}
