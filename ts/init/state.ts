/**
 * What `meshpipe init` exempted, recorded for the proxy to check.
 *
 * The iptables rules and the proxy are configured separately (an init
 * container and a sidecar), and nothing stops them from disagreeing: a proxy
 * whose admin port is not the one init exempted has its probes and scrapes
 * redirected into its own inbound listener; a proxy running under another
 * uid than the exempted one has its own connections redirected back to
 * itself. `meshpipe init --write-state FILE` writes the options it installed
 * (JSON, replaced atomically); `meshpipe proxy --init-state FILE` (a volume
 * both containers mount) reads them at start-up and refuses to start on a
 * mismatch, naming both values.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { MeshpipeError } from '../errors.js';
import { CONTROL_PORT, type RulePlanOptions } from './rules.js';

/** The recorded options (version 1). */
export interface InitState {
  readonly version: 1;
  readonly proxyUid: number;
  readonly proxyGid: number | null;
  readonly inboundPort: number;
  readonly outboundPort: number;
  /** Ports incoming TCP reaches directly, never redirected: 4190, the admin port, the skip-inbound ports. */
  readonly exemptInboundPorts: readonly (readonly [number, number])[];
}

/** The state of an installed plan. */
export function initStateOf(opts: Omit<RulePlanOptions, 'family'>): InitState {
  return {
    version: 1,
    proxyUid: opts.proxyUid,
    proxyGid: opts.proxyGid,
    inboundPort: opts.inboundPort,
    outboundPort: opts.outboundPort,
    exemptInboundPorts: [[CONTROL_PORT, CONTROL_PORT], [opts.adminPort, opts.adminPort], ...opts.skipInboundPorts.map((r) => [r.from, r.to] as const)],
  };
}

/** Writes `state` to `path` atomically (a temporary file renamed over it). */
export function writeInitState(path: string, state: InitState): void {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o644 });
    renameSync(tmp, path);
  } catch (err) {
    throw new MeshpipeError('ERR_INIT_STATE', `cannot write the init state to ${path}: ${(err as Error).message}`, { key: 'write-state', cause: err });
  }
}

function isPort(v: unknown): v is number {
  return Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 65535;
}

/** Reads and validates a state file. @throws MeshpipeError ERR_INVALID_CONFIG naming the file. */
export function readInitState(path: string): InitState {
  const bad = (why: string, cause?: unknown) =>
    new MeshpipeError('ERR_INVALID_CONFIG', `init state ${path}: ${why} (written by meshpipe init --write-state)`, { key: 'initState', cause });
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw bad((err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file; did meshpipe init run with --write-state?' : (err as Error).message, err);
  }
  const s = data as Partial<InitState> | null;
  if (s === null || typeof s !== 'object' || s.version !== 1) throw bad('expected a JSON object with "version": 1');
  if (!Number.isInteger(s.proxyUid) || !isPort(s.inboundPort) || !isPort(s.outboundPort)) throw bad('proxyUid, inboundPort and outboundPort must be numbers');
  if (!Array.isArray(s.exemptInboundPorts) || !s.exemptInboundPorts.every((r) => Array.isArray(r) && isPort(r[0]) && isPort(r[1]))) {
    throw bad('exemptInboundPorts must be a list of [from, to] port ranges');
  }
  return s as InitState;
}

/** What the running proxy is, for the comparison. */
export interface ProxyIdentity {
  readonly uid: number | undefined;
  readonly gid: number | undefined;
  readonly adminPort: number | undefined;
  readonly inboundPort: number | undefined;
  readonly outboundPort: number | undefined;
}

/** Every way the proxy disagrees with the rules `state` records (empty when none). */
export function initStateMismatches(state: InitState, proxy: ProxyIdentity): string[] {
  const out: string[] = [];
  const exempt = (port: number) => state.exemptInboundPorts.some(([from, to]) => port >= from && port <= to);
  const ranges = state.exemptInboundPorts.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(',');
  if (proxy.adminPort !== undefined && !exempt(proxy.adminPort)) {
    out.push(
      `the admin port ${proxy.adminPort} is not exempted from inbound redirection (meshpipe init exempts ${ranges}): probes and scrapes would be redirected to the inbound listener and refused; use --admin with one of those ports or run meshpipe init --admin-port ${proxy.adminPort}`,
    );
  }
  if (proxy.inboundPort !== undefined && proxy.inboundPort !== state.inboundPort) {
    out.push(`the inbound listener is on port ${proxy.inboundPort} but meshpipe init redirects incoming TCP to ${state.inboundPort}`);
  }
  if (proxy.outboundPort !== undefined && proxy.outboundPort !== state.outboundPort) {
    out.push(`the outbound listener is on port ${proxy.outboundPort} but meshpipe init redirects outgoing TCP to ${state.outboundPort}`);
  }
  const gidExempt = state.proxyGid !== null && proxy.gid === state.proxyGid;
  if (proxy.uid !== undefined && proxy.uid !== state.proxyUid && !gidExempt) {
    out.push(
      `this proxy runs as uid ${proxy.uid} but meshpipe init exempts uid ${state.proxyUid}${state.proxyGid !== null ? ` (and gid ${state.proxyGid})` : ''}: its own outbound connections would be redirected back into it; run the proxy as uid ${state.proxyUid}`,
    );
  }
  return out;
}
