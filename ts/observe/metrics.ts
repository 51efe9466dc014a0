/**
 * Prometheus metrics: the engine's counters in Linkerd's names and labels, so
 * dashboards and queries written for linkerd2-proxy keep working, plus
 * meshpipe's own (`meshpipe_*`) and prom-client's default process metrics.
 *
 * No JavaScript runs per connection: the engine counts in Rust (sharded
 * atomics) and every scrape reads all of it with ONE `snapshot()` call. The
 * engine metrics are custom prom-client metric objects (they implement the
 * `get()` contract prom-client's Registry renders); their values come from a
 * shared `EngineCollector` that takes the snapshot once per scrape and builds
 * every metric's values from it. prom-client's own Counter/Histogram cannot be
 * set from outside (a counter only increments; a histogram only observes), so
 * the histograms here render their `_bucket{le}` (cumulative), `_sum` and
 * `_count` lines themselves from the engine's per-bucket counts.
 *
 * Linkerd-compatible names (labels: direction, peer, target_addr, target_ip,
 * target_port, tls, no_tls_reason, sni; a null label value is rendered as ""
 * consistently, which Prometheus treats as an absent label):
 *   tcp_open_total, tcp_open_connections, tcp_read_bytes_total,
 *   tcp_write_bytes_total, tcp_close_total (+ errno), tcp_connection_duration_ms
 *   (peer="src": the connection's whole life),
 *   inbound_tcp_detect_http_results_total / outbound_tcp_detect_http_results_total
 *   (result, target_port).
 * Bytes follow Linkerd's point of view: for peer="src" (the client side) the
 * proxy *reads* what the client sends (client-to-server) and *writes* what the
 * server answers; for peer="dst" (the server side) it reads server-to-client
 * and writes client-to-server.
 *
 * HTTP, Linkerd's names (labels: direction, authority, the target labels and
 * the TLS labels): `request_total`, `response_total` (+ status_code,
 * classification = success|failure, grpc_status, error) and
 * `response_latency_ms` (request received to first response body frame).
 * The gRPC status label is `grpc_status`, as linkerd2-proxy's code emits it
 * and dashboards query it (Linkerd's docs say `grpc_status_code`). Plus
 * `{direction}_http_errors_total{error}` for failures by reason.
 *
 * Cardinality is bounded by the engine: past `metrics.maxTargets` distinct
 * targets of one direction (config `maxMetricTargets`), that direction's new
 * targets are folded into its overflow series, rendered with
 * target_addr="overflow" and empty target_ip/target_port; series no
 * connection used for `metricsRetainIdle` are evicted. A scrape therefore
 * never grows without bound.
 */
import { collectDefaultMetrics, Registry, type Metric } from 'prom-client';
import type { EngineSnapshot, HistogramSnapshot, HttpSnapshot, TcpSeriesSnapshot } from '../engine/index.js';

/** Event-loop lag sampling period (ms) for prom-client's default metrics. */
export const EVENT_LOOP_SAMPLE_MS = 200;

/** Anything that can give an engine snapshot (`Proxy` or `NativeProxy`). */
export interface SnapshotSource {
  snapshot(): EngineSnapshot;
}

/** The HTTP metrics, in Linkerd's names (dashboards query exactly these). */
export const HTTP_METRICS = ['request_total', 'response_total', 'response_latency_ms'] as const;

/** The `target_addr` label of the series that collects targets past the cardinality bound. */
export const OVERFLOW_TARGET = 'overflow';

type Labels = Record<string, string>;
type MetricKind = 'counter' | 'gauge' | 'histogram';

/** One sample in the shape prom-client's Registry renders (`sharedLabels` are cached by identity there). */
interface Sample {
  value: number;
  labels: Labels;
  metricName: string;
  sharedLabels: Labels;
}

/** A label set shared by many samples, as an object (for prom-client) and as escaped text (for the fast path). */
interface Shared {
  readonly labels: Labels;
  /** `a="x",b="y"`, escaped; '' for no labels. */
  readonly text: string;
}

/** Escapes a label value for the text format (backslash, newline, double quote). */
function escapeLabel(value: string): string {
  return /[\\\n"]/.test(value) ? value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"') : value;
}

function shared(labels: Labels): Shared {
  const frozen = Object.freeze({ ...labels });
  return { labels: frozen, text: Object.entries(frozen).map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',') };
}

const NONE: Shared = shared({});

/** Formats a sample value exactly like prom-client (`+Inf`, `-Inf`, `Nan`). */
function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'Nan';
  if (!Number.isFinite(value)) return value < 0 ? '-Inf' : '+Inf';
  return `${value}`;
}

/**
 * Where a family's samples go. Every family is written once, against this
 * interface; the text sink is the scrape's fast path, the sample sink feeds
 * prom-client's own `get()`/`getMetricsAsJSON()`. `key`/`val` is the one
 * per-sample label (`errno`, `le`, `result`...), in front of the shared ones.
 */
interface Sink {
  add(metricName: string, value: number, labels: Shared, key?: string, val?: string): void;
}

class TextSink implements Sink {
  readonly lines: string[] = [];
  add(metricName: string, value: number, labels: Shared, key?: string, val?: string): void {
    const own = key === undefined ? '' : `${key}="${escapeLabel(val!)}"`;
    const inner = own === '' ? labels.text : labels.text === '' ? own : `${own},${labels.text}`;
    this.lines.push(inner === '' ? `${metricName} ${formatValue(value)}` : `${metricName}{${inner}} ${formatValue(value)}`);
  }
}

class SampleSink implements Sink {
  readonly samples: Sample[] = [];
  add(metricName: string, value: number, labels: Shared, key?: string, val?: string): void {
    this.samples.push({ metricName, value, labels: key === undefined ? {} : { [key]: val! }, sharedLabels: labels.labels });
  }
}

/** Bucket bounds as `le` values (`5`, `0.5`, `+Inf`), cached: the same bounds repeat in every series. */
const LE_TEXT = new Map<number, string>();
function le(bound: number): string {
  let text = LE_TEXT.get(bound);
  if (text === undefined) {
    text = Number.isFinite(bound) ? formatValue(bound) : '+Inf';
    LE_TEXT.set(bound, text);
  }
  return text;
}

/** `_bucket` (cumulative), `_sum` and `_count` samples for one engine histogram. */
function emitHistogram(out: Sink, name: string, h: HistogramSnapshot, labels: Shared): void {
  let cumulative = 0;
  const bucket = `${name}_bucket`;
  for (let i = 0; i < h.buckets.length; i++) {
    cumulative += h.counts[i] ?? 0;
    out.add(bucket, cumulative, labels, 'le', le(h.buckets[i]!));
  }
  // The engine's last count is the +Inf bucket; +Inf always equals _count.
  out.add(bucket, h.count, labels, 'le', '+Inf');
  out.add(`${name}_sum`, h.sum, labels);
  out.add(`${name}_count`, h.count, labels);
}

/** The label sets of one TCP series, per peer. */
interface SeriesLabels {
  readonly src: Shared;
  readonly dst: Shared;
}

function seriesKey(s: TcpSeriesSnapshot): string {
  return `${s.direction}|${s.overflow ? '\u0000overflow' : (s.targetAddr ?? '')}|${s.tls}|${s.noTlsReason ?? ''}|${s.sni ?? ''}|${s.clientId ?? ''}|${s.serverId ?? ''}`;
}

function seriesLabels(s: TcpSeriesSnapshot): SeriesLabels {
  const base = {
    direction: s.direction,
    target_addr: s.overflow ? OVERFLOW_TARGET : (s.targetAddr ?? ''),
    target_ip: s.overflow ? '' : (s.targetIp ?? ''),
    target_port: s.overflow || s.targetPort === null ? '' : String(s.targetPort),
    tls: s.tls,
    no_tls_reason: s.noTlsReason ?? '',
    sni: s.sni ?? '',
    // Mesh TLS: the verified peer (Linkerd's client_id inbound, server_id outbound).
    ...(s.clientId !== null ? { client_id: s.clientId } : {}),
    ...(s.serverId !== null ? { server_id: s.serverId } : {}),
  };
  return { src: shared({ ...base, peer: 'src' }), dst: shared({ ...base, peer: 'dst' }) };
}

/** One scrape's input: the snapshot and the label sets of its TCP series (aligned with `snapshot.tcp`). */
interface Scrape {
  readonly snapshot: EngineSnapshot | undefined;
  readonly series: readonly SeriesLabels[];
  readonly snapshotErrors: number;
}

interface FamilySpec {
  readonly name: string;
  readonly help: string;
  readonly type: MetricKind;
  emit(s: EngineSnapshot, series: readonly SeriesLabels[], out: Sink): void;
}

/** Emits one sample per TCP series and peer. */
function perPeer(name: string, src: (t: TcpSeriesSnapshot) => number, dst: (t: TcpSeriesSnapshot) => number) {
  return (s: EngineSnapshot, series: readonly SeriesLabels[], out: Sink) => {
    s.tcp.forEach((t, i) => {
      out.add(name, src(t), series[i]!.src);
      out.add(name, dst(t), series[i]!.dst);
    });
  };
}

function perListener(name: string, value: (l: EngineSnapshot['listeners'][number]) => number) {
  return (s: EngineSnapshot, _series: readonly SeriesLabels[], out: Sink) => {
    for (const l of s.listeners) out.add(name, value(l), shared({ listener: l.name, bind: l.bind, direction: l.direction }));
  };
}

function single(name: string, value: (s: EngineSnapshot) => number) {
  return (s: EngineSnapshot, _series: readonly SeriesLabels[], out: Sink) => out.add(name, value(s), NONE);
}

type DirectionLimit = EngineSnapshot['limits']['connections'][number];

/** One sample per direction of a bound (connections or detecting); a null value (no limit) renders no sample. */
function perDirection(name: string, list: (s: EngineSnapshot) => readonly DirectionLimit[], value: (d: DirectionLimit) => number | null) {
  return (s: EngineSnapshot, _series: readonly SeriesLabels[], out: Sink) => {
    for (const d of list(s)) {
      const v = value(d);
      if (v !== null) out.add(name, v, shared({ direction: d.direction }));
    }
  };
}

/** Detection slot refusals: `full` per limited direction, `host_share` inbound (rendered at zero too). */
function detectingRefused(s: EngineSnapshot, _series: readonly SeriesLabels[], out: Sink): void {
  for (const d of s.limits.detecting) {
    if (d.limit !== null) out.add('meshpipe_detecting_refused_total', d.refused, shared({ direction: d.direction }), 'reason', 'full');
  }
  const share = s.limits.detectingShare;
  if (share !== null) out.add('meshpipe_detecting_refused_total', share.refused, shared({ direction: 'inbound' }), 'reason', 'host_share');
}

function detectResults(direction: 'inbound' | 'outbound', name: string) {
  return (s: EngineSnapshot, _series: readonly SeriesLabels[], out: Sink) => {
    for (const d of s.detect) {
      if (d.direction === direction) out.add(name, d.count, shared({ target_port: d.targetPort === null ? '' : String(d.targetPort) }), 'result', d.result);
    }
  };
}

/** One sample per forward whose target is a host name, labelled by listener. */
function perName(name: string, value: (n: EngineSnapshot['names'][number]) => number) {
  return (s: EngineSnapshot, _series: readonly SeriesLabels[], out: Sink) => {
    for (const n of s.names) out.add(name, value(n), NONE, 'listener', n.listener);
  };
}

/** Linkerd's `{direction}_tcp_accept_errors_total{error}`; the reasons that cannot happen in a direction are left out. */
function acceptErrors(direction: 'inbound' | 'outbound', name: string) {
  return (s: EngineSnapshot, _series: readonly SeriesLabels[], out: Sink) => {
    for (const e of s.acceptErrors) {
      if (e.direction !== direction) continue;
      if (direction === 'outbound' && (e.error === 'not_pod_ip' || e.error === 'proxy_port')) continue;
      out.add(name, e.count, NONE, 'error', e.error);
    }
  };
}

/** The labels of one HTTP series: direction, authority, target and TLS. */
function httpLabels(h: HttpSnapshot): Labels {
  return {
    direction: h.direction,
    authority: h.authority ?? '',
    target_addr: h.overflow ? OVERFLOW_TARGET : (h.targetAddr ?? ''),
    target_ip: h.overflow ? '' : (h.targetIp ?? ''),
    target_port: h.overflow || h.targetPort === null ? '' : String(h.targetPort),
    tls: h.tls,
    no_tls_reason: h.noTlsReason ?? '',
    sni: h.sni ?? '',
    ...(h.clientId !== null ? { client_id: h.clientId } : {}),
    ...(h.serverId !== null ? { server_id: h.serverId } : {}),
  };
}

/** `response_total`: one sample per (series, status, gRPC status, error). */
function responses(s: EngineSnapshot, _series: readonly SeriesLabels[], out: Sink): void {
  for (const h of s.http) {
    const base = httpLabels(h);
    for (const r of h.responses) {
      out.add('response_total', r.count, shared({
        ...base,
        status_code: r.statusCode === null ? '' : String(r.statusCode),
        classification: r.classification,
        grpc_status: r.grpcStatus === null ? '' : String(r.grpcStatus),
        error: r.error ?? '',
      }));
    }
  }
}

/** `{direction}_http_errors_total{error}`, zeros included (a rate works before the first error). */
function httpErrors(direction: 'inbound' | 'outbound', name: string) {
  return (s: EngineSnapshot, _series: readonly SeriesLabels[], out: Sink) => {
    for (const e of s.httpErrors) if (e.direction === direction) out.add(name, e.count, NONE, 'error', e.error);
  };
}

/** Linkerd's `inbound_tcp_authz_{allow,deny}_total` (authz_* labels on allow only). */
function authzDecisions(allow: boolean, name: string) {
  return (s: EngineSnapshot, _series: readonly SeriesLabels[], out: Sink) => {
    for (const a of s.mesh.authz) {
      if (a.allow !== allow) continue;
      const labels: Labels = {
        target_port: a.targetPort === null ? '' : String(a.targetPort),
        srv_group: a.targetPort === null ? '' : a.srvKind === 'server' ? 'policy.linkerd.io' : '',
        srv_kind: a.srvKind,
        srv_name: a.targetPort === null ? OVERFLOW_TARGET : a.srvName,
        tls: a.tls,
        client_id: a.clientId ?? '',
      };
      if (allow) {
        labels['authz_kind'] = a.authzKind ?? '';
        labels['authz_name'] = a.authzName ?? '';
      }
      out.add(name, a.count, shared(labels));
    }
  };
}

/** Every engine family, in /metrics order. Non-Linkerd metrics carry the `meshpipe_` prefix. */
const FAMILIES: readonly FamilySpec[] = [
  { name: 'tcp_open_total', type: 'counter', help: 'Total count of opened TCP connections (peer=src: accepted from the client; peer=dst: connected to the target)',
    emit: perPeer('tcp_open_total', (t) => t.srcOpenTotal, (t) => t.dstOpenTotal) },
  { name: 'tcp_open_connections', type: 'gauge', help: 'Number of currently open TCP connections',
    emit: perPeer('tcp_open_connections', (t) => t.srcOpen, (t) => t.dstOpen) },
  // Linkerd's point of view: from the client (src) the proxy reads what goes to the server.
  { name: 'tcp_read_bytes_total', type: 'counter', help: 'Total count of bytes read from peers',
    emit: perPeer('tcp_read_bytes_total', (t) => t.bytesClientToServer, (t) => t.bytesServerToClient) },
  { name: 'tcp_write_bytes_total', type: 'counter', help: 'Total count of bytes written to peers',
    emit: perPeer('tcp_write_bytes_total', (t) => t.bytesServerToClient, (t) => t.bytesClientToServer) },
  { name: 'tcp_close_total', type: 'counter', help: 'Total count of closed TCP connections, by errno ("" for a clean close)',
    emit: (s, series, out) => s.tcp.forEach((t, i) => {
      for (const c of t.closes) out.add('tcp_close_total', c.count, c.peer === 'src' ? series[i]!.src : series[i]!.dst, 'errno', c.errno);
    }) },
  { name: 'tcp_connection_duration_ms', type: 'histogram', help: 'Duration of closed TCP connections (peer=src: the whole connection), in milliseconds',
    emit: (s, series, out) => s.tcp.forEach((t, i) => emitHistogram(out, 'tcp_connection_duration_ms', t.durationMs, series[i]!.src)) },
  { name: 'meshpipe_tcp_idle_timeouts_total', type: 'counter', help: 'Connections the proxy closed (both sides, with a FIN) after the idle timeout without a byte in either direction',
    // Like tcp_close_total's errno values, only series that have some: an idle close is rare, 1,000 zero lines are not.
    emit: (s, series, out) => s.tcp.forEach((t, i) => {
      if (t.idleTimeouts > 0) out.add('meshpipe_tcp_idle_timeouts_total', t.idleTimeouts, series[i]!.src);
    }) },
  { name: 'inbound_tcp_detect_http_results_total', type: 'counter', help: 'Inbound protocol detection results',
    emit: detectResults('inbound', 'inbound_tcp_detect_http_results_total') },
  { name: 'outbound_tcp_detect_http_results_total', type: 'counter', help: 'Outbound protocol detection results',
    emit: detectResults('outbound', 'outbound_tcp_detect_http_results_total') },
  { name: 'meshpipe_detect_duration_ms', type: 'histogram', help: 'Time from accept to the protocol detection decision, in milliseconds',
    emit: (s, _series, out) => {
      for (const h of s.detectDurationMs) emitHistogram(out, 'meshpipe_detect_duration_ms', h, shared({ direction: h.direction }));
    } },
  { name: 'request_total', type: 'counter', help: 'Total count of HTTP requests',
    emit: (s, _series, out) => { for (const h of s.http) out.add('request_total', h.requests, shared(httpLabels(h))); } },
  { name: 'response_total', type: 'counter', help: 'Total count of HTTP responses (classification: failure = 5xx, a failing gRPC status, or an error)',
    emit: responses },
  { name: 'response_latency_ms', type: 'histogram', help: 'Elapsed times between a request\'s receipt and its first response body frame, in milliseconds',
    emit: (s, _series, out) => { for (const h of s.http) emitHistogram(out, 'response_latency_ms', h.latencyMs, shared(httpLabels(h))); } },
  { name: 'inbound_http_errors_total', type: 'counter', help: 'Inbound HTTP failures by reason (bad_gateway, unavailable, gateway_timeout, loop, bad_request, headers_too_large, response_body, client_cancel, not_http, header_timeout, protocol_error)',
    emit: httpErrors('inbound', 'inbound_http_errors_total') },
  { name: 'outbound_http_errors_total', type: 'counter', help: 'Outbound HTTP failures by reason (see inbound_http_errors_total)',
    emit: httpErrors('outbound', 'outbound_http_errors_total') },
  { name: 'meshpipe_http_series', type: 'gauge', help: 'HTTP label series the engine keeps (authorities share the per-direction budget with TCP series)',
    emit: single('meshpipe_http_series', (s) => s.http.length) },
  { name: 'meshpipe_endpoints_generation', type: 'gauge', help: 'Generation of the endpoints table (Service address to endpoints) used for HTTP balancing',
    emit: single('meshpipe_endpoints_generation', (s) => s.endpoints.generation) },
  { name: 'meshpipe_endpoints_services', type: 'gauge', help: 'Services (cluster IP and port) in the endpoints table used for HTTP balancing',
    emit: single('meshpipe_endpoints_services', (s) => s.endpoints.services) },
  { name: 'meshpipe_endpoints_updates_total', type: 'counter',
    help: 'Endpoints tables and changes the engine applied (result="applied") or refused (result="rejected": nothing changed, the last good table stayed in force)',
    emit: (s, _series, out) => {
      out.add('meshpipe_endpoints_updates_total', s.endpoints.updatesApplied, NONE, 'result', 'applied');
      out.add('meshpipe_endpoints_updates_total', s.endpoints.updatesRejected, NONE, 'result', 'rejected');
    } },
  { name: 'meshpipe_server_first_targets', type: 'gauge', help: 'Targets currently learned to speak first (detection is skipped for them until they expire)',
    emit: single('meshpipe_server_first_targets', (s) => s.serverFirst.targets.length) },
  { name: 'meshpipe_listener_accepted_total', type: 'counter', help: 'Connections accepted by a listener',
    emit: perListener('meshpipe_listener_accepted_total', (l) => l.accepted) },
  { name: 'meshpipe_listener_open_connections', type: 'gauge', help: 'Connections of a listener that are still open',
    emit: perListener('meshpipe_listener_open_connections', (l) => l.open) },
  { name: 'meshpipe_listener_accept_errors_total', type: 'counter', help: 'accept() errors of a listener (e.g. EMFILE, followed by a back-off)',
    emit: perListener('meshpipe_listener_accept_errors_total', (l) => l.acceptErrors) },
  { name: 'meshpipe_listener_limit_waits_total', type: 'counter', help: 'Times a listener waited before accepting: its direction\'s connection limit or the descriptor budget was full (the connection waited in the kernel backlog)',
    emit: perListener('meshpipe_listener_limit_waits_total', (l) => l.limitWaits) },
  { name: 'meshpipe_listener_accepting', type: 'gauge', help: '1 while a listener accepts new connections, 0 once it stopped (drain)',
    emit: perListener('meshpipe_listener_accepting', (l) => (l.accepting ? 1 : 0)) },
  { name: 'inbound_tcp_accept_errors_total', type: 'counter',
    help: "Inbound connections refused before forwarding: not_pod_ip (original destination not one of the pod's IPs), proxy_port (one of the proxy's own ports), loop, no_original_dst, unresolved (a --forward host name with no address)",
    emit: acceptErrors('inbound', 'inbound_tcp_accept_errors_total') },
  { name: 'outbound_tcp_accept_errors_total', type: 'counter', help: 'Outbound connections refused before forwarding: loop, no_original_dst, unresolved (a --forward host name with no address)',
    emit: acceptErrors('outbound', 'outbound_tcp_accept_errors_total') },
  { name: 'meshpipe_forward_addresses', type: 'gauge', help: 'Addresses a --forward target host name resolves to now (0: it no longer resolves)',
    emit: perName('meshpipe_forward_addresses', (n) => n.addresses.length) },
  { name: 'meshpipe_forward_unresolved_total', type: 'counter', help: 'Connections to a --forward whose target host name had no address (reset)',
    emit: perName('meshpipe_forward_unresolved_total', (n) => n.noAddress) },
  { name: 'meshpipe_forward_failovers_total', type: 'counter', help: 'Connections to a --forward target host name that connected through another address than the one first tried',
    emit: perName('meshpipe_forward_failovers_total', (n) => n.failovers) },
  { name: 'meshpipe_forward_dial_failures_total', type: 'counter', help: 'Connection attempts to one address of a --forward target host name that failed (the address is skipped for 10 s)',
    emit: perName('meshpipe_forward_dial_failures_total', (n) => n.dialFailures) },
  { name: 'meshpipe_connect_failures_total', type: 'counter', help: 'Failed connects to targets (the client connection was closed)',
    emit: single('meshpipe_connect_failures_total', (s) => s.errors.connectFailed) },
  { name: 'meshpipe_loop_refused_total', type: 'counter', help: 'Connections refused because their target was one of the proxy\'s own listeners (a forwarding loop)',
    emit: single('meshpipe_loop_refused_total', (s) => s.errors.loopRefused) },
  { name: 'meshpipe_original_dst_failures_total', type: 'counter', help: 'Connections whose original destination could not be read',
    emit: single('meshpipe_original_dst_failures_total', (s) => s.errors.originalDstFailed) },
  { name: 'meshpipe_policy_generation', type: 'gauge', help: 'Generation of the port policy the engine uses for new connections',
    emit: single('meshpipe_policy_generation', (s) => s.policyGeneration) },
  { name: 'meshpipe_policy_updates_total', type: 'counter',
    help: 'Policy tables and deltas the engine applied (result="applied") or refused (result="rejected": nothing changed, the last good policy stayed in force)',
    emit: (s, _series, out) => {
      out.add('meshpipe_policy_updates_total', s.policy.updatesApplied, NONE, 'result', 'applied');
      out.add('meshpipe_policy_updates_total', s.policy.updatesRejected, NONE, 'result', 'rejected');
    } },
  { name: 'meshpipe_policy_destinations', type: 'gauge', help: 'Exact destination addresses (pod IPs, Service clusterIPs) in the policy table',
    emit: single('meshpipe_policy_destinations', (s) => s.policy.addresses) },
  { name: 'meshpipe_tcp_series', type: 'gauge', help: 'TCP label series the engine keeps (bounded by maxMetricTargets per direction, plus overflow)',
    emit: single('meshpipe_tcp_series', (s) => s.tcp.length) },
  { name: 'meshpipe_tcp_series_evicted_total', type: 'counter', help: 'TCP series and detect counters dropped after metricsRetainIdle without use',
    emit: single('meshpipe_tcp_series_evicted_total', (s) => s.evictedSeries) },
  { name: 'meshpipe_connection_limit', type: 'gauge', help: 'Limit on open connections of a direction (only directions with a limit)',
    emit: perDirection('meshpipe_connection_limit', (s) => s.limits.connections, (d) => d.limit) },
  { name: 'meshpipe_connection_limit_waits_total', type: 'counter', help: 'Times a listener of the direction found its connection limit full (the connection waited in the kernel backlog)',
    emit: perDirection('meshpipe_connection_limit_waits_total', (s) => s.limits.connections, (d) => d.refused) },
  { name: 'meshpipe_detecting_connections', type: 'gauge', help: 'Connections of the direction in protocol detection now',
    emit: perDirection('meshpipe_detecting_connections', (s) => s.limits.detecting, (d) => d.used) },
  { name: 'meshpipe_detecting_connections_limit', type: 'gauge', help: 'Limit on connections of the direction waiting in protocol detection; past it new ones are classified on the bytes already sent, else forwarded undetected (result over_limit)',
    emit: perDirection('meshpipe_detecting_connections_limit', (s) => s.limits.detecting, (d) => d.limit) },
  { name: 'meshpipe_detecting_refused_total', type: 'counter', help: 'New connections given no detection slot, classified on the bytes already sent (result over_limit if undecided), by reason: full (every slot of the direction taken), host_share (inbound: the client\'s host, or its IPv6 /64, held its whole share while slots may have been free)',
    emit: detectingRefused },
  { name: 'meshpipe_detecting_share_limit', type: 'gauge', help: 'Inbound detection slots one client may hold at once, by scope: host (an IPv4 or IPv6 address), ipv6_prefix64 (all addresses of one IPv6 /64); absent when detection is unlimited',
    emit: (s, _series, out) => {
      const share = s.limits.detectingShare;
      if (share === null) return;
      out.add('meshpipe_detecting_share_limit', share.host, NONE, 'scope', 'host');
      out.add('meshpipe_detecting_share_limit', share.prefix64, NONE, 'scope', 'ipv6_prefix64');
    } },
  { name: 'meshpipe_fd_budget', type: 'gauge', help: 'File descriptors the engine may hold: the descriptor limit minus those open at start minus the reserve (absent without a budget)',
    emit: (s, _series, out) => { if (s.limits.fds.budget !== null) out.add('meshpipe_fd_budget', s.limits.fds.budget, NONE); } },
  { name: 'meshpipe_fd_budget_used', type: 'gauge', help: 'File descriptors the engine holds, two per connection and per splice pipe',
    emit: single('meshpipe_fd_budget_used', (s) => s.limits.fds.used) },
  { name: 'meshpipe_fd_reserve', type: 'gauge', help: 'File descriptors the engine leaves free for the admin server and Node.js',
    emit: single('meshpipe_fd_reserve', (s) => s.limits.fds.reserve) },
  { name: 'meshpipe_fd_budget_waits_total', type: 'counter', help: 'Times a listener waited for descriptors of the budget (the connection waited in the kernel backlog)',
    emit: single('meshpipe_fd_budget_waits_total', (s) => s.limits.fds.waits) },
  { name: 'meshpipe_copy_switched_total', type: 'counter', help: 'Connection directions that carried a bulk stream (a read filled the 16 KiB buffer) and left the small buffered copy, by the path they took: bulk (a lent 4 MiB buffer) or splice (zero-copy; when no bulk buffer was left, or --bulk-buffers 0)',
    emit: (s, _series, out) => {
      out.add('meshpipe_copy_switched_total', s.copy.bulkDirections, NONE, 'to', 'bulk');
      out.add('meshpipe_copy_switched_total', s.copy.splicedDirections, NONE, 'to', 'splice');
    } },
  { name: 'meshpipe_copy_bulk_buffers', type: 'gauge', help: 'Bulk copy buffers allocated now, lent to a stream or cached for the next burst (cached ones unused for 10 s are freed)',
    emit: single('meshpipe_copy_bulk_buffers', (s) => s.copy.bulkBuffers) },
  { name: 'meshpipe_copy_bulk_buffers_limit', type: 'gauge', help: 'The most bulk copy buffers the engine may hold (--bulk-buffers; 0: bulk streams are spliced)',
    emit: single('meshpipe_copy_bulk_buffers_limit', (s) => s.copy.bulkBuffersLimit) },
  { name: 'meshpipe_copy_bulk_buffer_bytes', type: 'gauge', help: 'Bytes per bulk copy buffer',
    emit: single('meshpipe_copy_bulk_buffer_bytes', (s) => s.copy.bulkBufferBytes) },
  { name: 'meshpipe_copy_bulk_refused_total', type: 'counter', help: 'Bulk streams that found every bulk copy buffer taken and were spliced instead',
    emit: single('meshpipe_copy_bulk_refused_total', (s) => s.copy.bulkRefused) },
  { name: 'inbound_tcp_authz_allow_total', type: 'counter', help: 'Inbound connections allowed by the authorization policy (srv_*: the Server or default policy of the port; authz_*: the rule that allowed)',
    emit: authzDecisions(true, 'inbound_tcp_authz_allow_total') },
  { name: 'inbound_tcp_authz_deny_total', type: 'counter', help: 'Inbound connections refused by the authorization policy',
    emit: authzDecisions(false, 'inbound_tcp_authz_deny_total') },
  { name: 'meshpipe_tls_handshake_duration_ms', type: 'histogram', help: 'Successful mesh TLS handshakes (inbound: accepted, outbound: originated, dial excluded), in milliseconds',
    emit: (s, _series, out) => s.mesh.handshakeMs.forEach((h, i) => emitHistogram(out, 'meshpipe_tls_handshake_duration_ms', h, shared({ direction: i === 0 ? 'inbound' : 'outbound' }))) },
  { name: 'meshpipe_tls_handshake_errors_total', type: 'counter', help: 'Failed mesh TLS handshakes by direction and reason (handshake, verification, identity_mismatch, no_client_cert, alpn, not_tls, ...)',
    emit: (s, _series, out) => {
      for (const e of s.mesh.handshakeErrors) out.add('meshpipe_tls_handshake_errors_total', e.count, shared({ direction: e.direction }), 'reason', e.reason);
    } },
  { name: 'meshpipe_inbound_tunnel_errors_total', type: 'counter', help: 'Tunnel (direct inbound) connections refused after the handshake: a bad transport header (preface, oversized, truncated, malformed, port, timeout, io) or a port the tunnel may not reach (proxy_port, not_exposed)',
    emit: (s, _series, out) => {
      for (const e of s.mesh.tunnelErrors) out.add('meshpipe_inbound_tunnel_errors_total', e.count, NONE, 'reason', e.reason);
    } },
  { name: 'meshpipe_meshed_destinations', type: 'gauge', help: 'Meshed destinations (pod addresses and --destinations entries) the engine holds',
    emit: single('meshpipe_meshed_destinations', (s) => s.policy.meshed) },
];

/** Scrapes whose engine snapshot failed; rendered even when the snapshot is missing. */
const SNAPSHOT_ERRORS = { name: 'meshpipe_snapshot_errors_total', help: 'Scrapes whose engine snapshot failed (their engine metrics were empty)', type: 'counter' as const };

/**
 * A family as a prom-client metric object: the part of the `Metric` contract
 * the Registry uses (`name`, `help`, `type`, `aggregator`, `get()`, `reset()`).
 */
class EngineMetric {
  readonly aggregator = 'sum';
  readonly name: string;
  readonly help: string;
  readonly type: MetricKind;

  constructor(
    readonly spec: FamilySpec | null,
    private readonly collector: EngineCollector,
  ) {
    this.name = spec?.name ?? SNAPSHOT_ERRORS.name;
    this.help = spec?.help ?? SNAPSHOT_ERRORS.help;
    this.type = spec?.type ?? SNAPSHOT_ERRORS.type;
  }

  get(): Promise<{ name: string; help: string; type: MetricKind; aggregator: string; values: Sample[] }> {
    const sink = new SampleSink();
    this.emit(this.collector.current(), sink);
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: sink.samples });
  }

  /** The family in text format (HELP, TYPE, samples), as prom-client would render it. */
  text(scrape: Scrape): string {
    const sink = new TextSink();
    this.emit(scrape, sink);
    const head = `# HELP ${this.name} ${this.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}\n# TYPE ${this.name} ${this.type}`;
    return sink.lines.length === 0 ? head : `${head}\n${sink.lines.join('\n')}`;
  }

  emit(scrape: Scrape, sink: Sink): void {
    if (this.spec === null) sink.add(this.name, scrape.snapshotErrors, NONE);
    else if (scrape.snapshot !== undefined) this.spec.emit(scrape.snapshot, scrape.series, sink);
  }

  reset(): void {
    // Engine counters live in Rust; there is nothing to reset here.
  }
}

/**
 * Takes one engine snapshot per scrape. A scrape is explicit
 * (`Metrics.render()` takes the snapshot and hands it to every family) or
 * implicit: prom-client's Registry calls every metric's `get()` synchronously
 * in one pass, so a snapshot cached until the next microtask is shared by all
 * of them and never reused by a later scrape.
 */
class EngineCollector {
  #cached: Scrape | undefined;
  #labels = new Map<string, SeriesLabels>();
  snapshotErrors = 0;
  lastError: unknown;

  constructor(private readonly source: SnapshotSource) {}

  /** A fresh scrape (one `snapshot()` call). */
  take(): Scrape {
    let snapshot: EngineSnapshot | undefined;
    try {
      snapshot = this.source.snapshot();
    } catch (err) {
      this.snapshotErrors++;
      this.lastError = err;
    }
    const labels = new Map<string, SeriesLabels>();
    const series: SeriesLabels[] = [];
    for (const t of snapshot?.tcp ?? []) {
      const key = seriesKey(t);
      const l = labels.get(key) ?? this.#labels.get(key) ?? seriesLabels(t);
      labels.set(key, l);
      series.push(l);
    }
    // Only series that still exist keep their cached labels (bounded by the engine's bound).
    this.#labels = labels;
    return { snapshot, series, snapshotErrors: this.snapshotErrors };
  }

  /** The scrape of the current synchronous pass (prom-client's `get()` path). */
  current(): Scrape {
    if (this.#cached === undefined) {
      this.#cached = this.take();
      queueMicrotask(() => (this.#cached = undefined));
    }
    return this.#cached;
  }
}

export interface MetricsOptions {
  /** Register prom-client's default process metrics (CPU, RSS, fds, event-loop lag). Default true. */
  readonly defaultMetrics?: boolean;
}

/** A registry with every meshpipe metric, fed by one snapshot per scrape. */
export class Metrics {
  readonly registry = new Registry();
  readonly #collector: EngineCollector;
  readonly #engine = new Map<string, EngineMetric>();

  constructor(source: SnapshotSource, options: MetricsOptions = {}) {
    this.#collector = new EngineCollector(source);
    for (const spec of [...FAMILIES, null]) {
      const metric = new EngineMetric(spec, this.#collector);
      this.#engine.set(metric.name, metric);
      this.registry.registerMetric(metric as unknown as Metric);
    }
    // Event-loop lag is sampled every EVENT_LOOP_SAMPLE_MS, not prom-client's
    // default 10 ms: an idle sidecar should not wake 100 times a second.
    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  }

  /** The content type of `render()`'s text. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /**
   * Renders the Prometheus text format from exactly one engine snapshot: the
   * engine families through the fast text path (per-series label text is
   * cached between scrapes), everything else (process metrics) through
   * prom-client. The result equals `registry.metrics()`.
   */
  async render(): Promise<string> {
    const scrape = this.#collector.take();
    const parts: string[] = [];
    for (const metric of this.registry.getMetricsAsArray()) {
      const engine = this.#engine.get(metric.name);
      parts.push(engine !== undefined && (engine as unknown) === metric ? engine.text(scrape) : await this.registry.getSingleMetricAsString(metric.name));
    }
    return `${parts.join('\n\n')}\n`;
  }

  /** How many scrapes failed to read the engine (their engine metrics were empty), and the last error. */
  get snapshotErrors(): { count: number; last: unknown } {
    return { count: this.#collector.snapshotErrors, last: this.#collector.lastError };
  }
}
