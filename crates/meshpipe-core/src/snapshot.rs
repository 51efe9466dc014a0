//! The engine's snapshot: the serialisable shapes of everything it counts
//! (per listener, copy paths, learned server-first targets, engine-wide
//! errors) and the `Engine` methods that read the live counters into them.
//! They cross into the Node addon as JSON (`ts/engine/boundary.ts`), so their
//! field names and order are part of the boundary.

use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use crate::policy::PolicySnapshot;
use crate::vocab::Direction;
use crate::{http, limits, mesh, metrics, names, server_first, Engine};

impl Engine {
    /// Every counter, read once.
    pub fn snapshot(&self) -> Snapshot {
        let m = &self.ctx.metrics;
        let (detect, detect_duration_ms) = m.snapshot_detect();
        let (http, http_errors) = m.snapshot_http();
        Snapshot {
            uptime_ms: m.uptime().as_millis() as u64,
            policy_generation: self.ctx.policy.load().generation(),
            policy: self.ctx.policy.snapshot(),
            listeners: self
                .listeners()
                .iter()
                .map(|l| ListenerSnapshot {
                    name: l.name.to_string(),
                    bind: l.local.to_string(),
                    direction: l.direction,
                    accepted: l.accepted.load(Relaxed),
                    open: l.open.load(Relaxed),
                    accept_errors: l.accept_errors.load(Relaxed),
                    limit_waits: l.limit_waits.load(Relaxed),
                    accepting: l.accepting(),
                })
                .collect(),
            tcp: m.snapshot_tcp(),
            tcp_series: Direction::ALL.iter().map(|d| m.tcp_series(*d) as u64).collect(),
            http,
            http_series: Direction::ALL.iter().map(|d| m.http_series_count(*d) as u64).collect(),
            http_errors,
            endpoints: self.ctx.http.endpoints.snapshot(),
            evicted_series: m.evicted(),
            detect,
            detect_duration_ms,
            limits: self.ctx.limits.snapshot(),
            server_first: ServerFirstSnapshot { targets: self.ctx.server_first.snapshot() },
            copy: CopySnapshot {
                spliced_directions: self.ctx.copy.spliced_directions.load(Relaxed),
                bulk_directions: self.ctx.copy.bulk.directions.load(Relaxed),
                bulk_buffers: self.ctx.copy.bulk.held(),
                bulk_buffers_limit: self.ctx.copy.bulk.limit(),
                bulk_buffer_bytes: self.ctx.copy.bulk.size(),
                bulk_refused: self.ctx.copy.bulk.refused(),
            },
            accept_errors: m.snapshot_accept_errors(),
            mesh: self.ctx.mesh.snapshot(),
            names: self.names.iter().map(|(l, n)| n.snapshot(l)).collect(),
            errors: ErrorsSnapshot {
                connect_failed: m.errors.connect_failed.load(Relaxed),
                loop_refused: m.errors.loop_refused.load(Relaxed),
                original_dst_failed: m.errors.original_dst_failed.load(Relaxed),
                not_pod_ip: m.errors.not_pod_ip.load(Relaxed),
                events_dropped: self.ctx.events.dropped(),
            },
        }
    }

    /// The failure counters alone (a few words, no per-target series): what
    /// the control layer polls to log notable failures without building a
    /// whole snapshot every time.
    pub fn failure_counts(&self) -> FailureCounts {
        let m = &self.ctx.metrics;
        FailureCounts {
            errors: ErrorsSnapshot {
                connect_failed: m.errors.connect_failed.load(Relaxed),
                loop_refused: m.errors.loop_refused.load(Relaxed),
                original_dst_failed: m.errors.original_dst_failed.load(Relaxed),
                not_pod_ip: m.errors.not_pod_ip.load(Relaxed),
                events_dropped: self.ctx.events.dropped(),
            },
            names: self.names.iter().map(|(l, n)| n.snapshot(l)).collect(),
        }
    }
}

/// One listener's counters.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ListenerSnapshot {
    pub name: String,
    pub bind: String,
    pub direction: Direction,
    pub accepted: u64,
    pub open: u64,
    pub accept_errors: u64,
    pub limit_waits: u64,
    pub accepting: bool,
}

/// The learned server-first targets.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ServerFirstSnapshot {
    pub targets: Vec<server_first::LearnedTarget>,
}

/// Which copy path carried the bytes.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct CopySnapshot {
    /// Directions (two per connection) that switched to `splice(2)`.
    pub spliced_directions: u64,
    /// Directions that switched to the bulk copy (some of them were
    /// spliced later, when the budget was spent); the rest were carried by
    /// the small buffered copy only.
    pub bulk_directions: u64,
    /// Bulk buffers allocated now, lent or cached.
    pub bulk_buffers: usize,
    /// The most bulk buffers the engine may hold (`--bulk-buffers`; 0: off).
    pub bulk_buffers_limit: usize,
    /// Bytes per bulk buffer.
    pub bulk_buffer_bytes: usize,
    /// Bulk streams that found every buffer taken and were spliced instead.
    pub bulk_refused: u64,
}

/// Engine-wide error counters that have no target.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ErrorsSnapshot {
    pub connect_failed: u64,
    pub loop_refused: u64,
    pub original_dst_failed: u64,
    /// Inbound connections refused because their original destination was
    /// not one of the pod's IPs (also in `accept_errors` as `not_pod_ip`).
    pub not_pod_ip: u64,
    /// Engine events dropped because the control layer did not read them.
    pub events_dropped: u64,
}

/// The engine-wide failure counters and the named targets' state: a small
/// subset of [`Snapshot`].
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct FailureCounts {
    pub errors: ErrorsSnapshot,
    pub names: Vec<names::NameSnapshot>,
}

/// Everything the engine counts, for one scrape.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub uptime_ms: u64,
    pub policy_generation: u64,
    /// The policy table's size and update counters (rejections included).
    pub policy: PolicySnapshot,
    pub listeners: Vec<ListenerSnapshot>,
    pub tcp: Vec<metrics::TcpSnapshot>,
    /// TCP series kept per direction (inbound, outbound), overflow not counted.
    pub tcp_series: Vec<u64>,
    /// HTTP series (`request_total`, `response_total`, `response_latency_ms`).
    pub http: Vec<metrics::HttpSnapshot>,
    /// HTTP series kept per direction (inbound, outbound), overflow not counted.
    pub http_series: Vec<u64>,
    /// HTTP errors per direction and reason, zeros included
    /// (`{direction}_http_errors_total{error}`).
    pub http_errors: Vec<metrics::HttpErrorSnapshot>,
    /// The endpoints table in force (HTTP balancing) and its update counters.
    pub endpoints: http::endpoints::EndpointsSnapshot,
    /// Series and detect counters evicted for being idle (`metrics.retainIdleMs`).
    pub evicted_series: u64,
    pub detect: Vec<metrics::DetectSnapshot>,
    pub detect_duration_ms: Vec<metrics::DetectDurationSnapshot>,
    pub limits: limits::LimitsSnapshot,
    pub server_first: ServerFirstSnapshot,
    pub copy: CopySnapshot,
    /// Connections refused by transparent listeners, per direction and reason
    /// (`{direction}_tcp_accept_errors_total{error}`).
    pub accept_errors: Vec<metrics::AcceptErrorSnapshot>,
    /// Identity, handshakes, tunnel refusals, authorization decisions.
    pub mesh: mesh::MeshSnapshot,
    /// Forwards to host names: their addresses and failures (`names.rs`).
    pub names: Vec<names::NameSnapshot>,
    pub errors: ErrorsSnapshot,
}
