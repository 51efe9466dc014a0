//! The tunable sections of the engine spec (`detect`, `metrics`, `limits`,
//! `copy`, `inbound`) as they arrive, with their defaults: each section, and
//! each key in it, may be left out and then takes its `Default` here (only a
//! `detect.portTimeouts` entry must be whole). `config.rs` validates them into
//! the engine's config; the `http` section has its own file (`config/http.rs`).

use serde::Deserialize;

use crate::policy::Direction;

/// A detect timeout for a port range (and optionally one direction).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTimeoutSpec {
    #[serde(default)]
    pub direction: Option<Direction>,
    pub ports: (u32, u32),
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DetectSpec {
    pub inbound_timeout_ms: u64,
    pub outbound_timeout_ms: u64,
    pub server_first_grace_ms: u64,
    pub server_first_capacity: usize,
    pub server_first_ttl_ms: u64,
    /// Per-port timeouts; the first matching entry wins over the direction's.
    pub port_timeouts: Vec<PortTimeoutSpec>,
}

impl Default for DetectSpec {
    fn default() -> Self {
        DetectSpec {
            inbound_timeout_ms: 10_000,
            outbound_timeout_ms: 10_000,
            server_first_grace_ms: 100,
            server_first_capacity: 4096,
            server_first_ttl_ms: 3_600_000,
            port_timeouts: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsSpec {
    /// Distinct targets with their own TCP series, per direction; more fold
    /// into that direction's overflow series.
    pub max_targets: usize,
    /// A series no connection has used for this long is dropped (its label
    /// set disappears from the scrape; it starts again at zero if the target
    /// comes back). 0 keeps series forever. Linkerd's default is 10 minutes.
    pub retain_idle_ms: u64,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        MetricsSpec { max_targets: 1000, retain_idle_ms: 600_000 }
    }
}

/// Bounds on what the engine holds (see `limits.rs`).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitsSpec {
    /// Open inbound connections; 0 = unlimited. Past it, new connections
    /// wait in the kernel backlog.
    pub inbound_connections: usize,
    /// Open outbound connections; 0 = unlimited.
    pub outbound_connections: usize,
    /// Connections in protocol detection, per direction; 0 = unlimited. Past
    /// it, new connections are forwarded as opaque TCP without detection.
    pub detecting_connections: usize,
    /// File descriptors kept free for the rest of the process (the admin
    /// server, Node.js); 0 turns the descriptor budget off.
    pub fd_reserve: usize,
    /// Bulk copy buffers the engine may hold at once (`copy/bulk.rs`); 0
    /// turns the bulk copy off (bulk streams are spliced).
    pub bulk_buffers: usize,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        LimitsSpec { inbound_connections: 0, outbound_connections: 0, detecting_connections: 1024, fd_reserve: 128, bulk_buffers: 4 }
    }
}

/// Forwarding tunables (bounded per-connection kernel and user memory).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CopySpec {
    /// Requested splice pipe capacity per direction, bytes (kernel pages,
    /// allocated only while data is in flight).
    pub pipe_size: usize,
    /// Read buffer per worker thread, bytes; in adaptive mode a read that
    /// fills it switches the direction to the bulk copy (or splice).
    pub buffer_size: usize,
    /// Bytes per bulk copy buffer (their count is `limits.bulkBuffers`).
    pub bulk_buffer_size: usize,
    /// `adaptive` (buffered while messages are small, then a bulk buffer
    /// or splice),
    /// `splice` (always) or `buffered` (never splice).
    pub mode: crate::copy::CopyMode,
}

impl Default for CopySpec {
    fn default() -> Self {
        CopySpec {
            pipe_size: 256 * 1024,
            buffer_size: 16 * 1024,
            bulk_buffer_size: crate::copy::bulk::DEFAULT_SIZE,
            mode: crate::copy::CopyMode::Adaptive,
        }
    }
}

/// What transparent inbound listeners accept (see `target.rs`): connections
/// to one of the pod's IPs, on a port that is not one of the proxy's.
#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InboundSpec {
    /// The pod's own IPs (the downward API's `status.podIPs`); a transparent
    /// inbound listener needs at least one.
    pub pod_ips: Vec<String>,
    /// The proxy's own ports (admin, inbound, outbound): inbound connections
    /// to them are refused.
    pub proxy_ports: Vec<u16>,
}
