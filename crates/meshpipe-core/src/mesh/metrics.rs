//! The mesh's counters: handshake durations and failures per direction and
//! reason, tunnel refusals by reason, and inbound authorization decisions
//! with Linkerd's labels. Atomics only on the data path; the authorization
//! series live in the same bounded, sharded map as the TCP series (one
//! read-locked shard probe per decision), past the bound folded into one
//! overflow counter per outcome, and evicted when idle.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::authz::DecisionLabels;
use crate::identity::material::IdentityInfo;
use crate::metrics::{HistogramSnapshot, Sharded};
use crate::tls::HandshakeFailure;
use crate::vocab::{Direction, TlsLabel};

/// Handshake duration buckets (ms): a full mutual handshake takes well
/// under a millisecond of CPU, so the buckets start finer than Linkerd's
/// latency buckets.
pub const HANDSHAKE_BUCKETS_MS: [f64; 16] =
    [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];

#[derive(Default)]
struct HandshakeHistogram {
    counts: [AtomicU64; HANDSHAKE_BUCKETS_MS.len() + 1],
    sum_us: AtomicU64,
}

impl HandshakeHistogram {
    fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = HANDSHAKE_BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(HANDSHAKE_BUCKETS_MS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        HistogramSnapshot {
            buckets: HANDSHAKE_BUCKETS_MS.to_vec(),
            count: counts.iter().sum(),
            counts,
            sum: self.sum_us.load(Relaxed) as f64 / 1000.0,
        }
    }
}

/// Why a connection to the tunnel (the inbound port, dialled directly) was
/// refused after its handshake: the transport header's reasons
/// (`HeaderError::reason`), then the port checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum TunnelError {
    Preface = 0,
    Oversized,
    Truncated,
    Malformed,
    Port,
    Timeout,
    Io,
    /// The header names one of the proxy's own ports (admin, inbound, outbound).
    ProxyPort,
    /// The header names a port the workload does not expose.
    NotExposed,
}

impl TunnelError {
    pub const COUNT: usize = 9;
    pub const ALL: [TunnelError; TunnelError::COUNT] = [
        TunnelError::Preface,
        TunnelError::Oversized,
        TunnelError::Truncated,
        TunnelError::Malformed,
        TunnelError::Port,
        TunnelError::Timeout,
        TunnelError::Io,
        TunnelError::ProxyPort,
        TunnelError::NotExposed,
    ];

    /// The reason of a refused header.
    pub fn of_header(e: &crate::transport_header::HeaderError) -> TunnelError {
        use crate::transport_header::HeaderError as H;
        match e {
            H::Preface => TunnelError::Preface,
            H::Oversized { .. } => TunnelError::Oversized,
            H::Truncated { .. } => TunnelError::Truncated,
            H::Malformed(_) | H::Name(_) => TunnelError::Malformed,
            H::Port(_) => TunnelError::Port,
            H::Timeout(_) => TunnelError::Timeout,
            H::Io(_) => TunnelError::Io,
        }
    }
}

/// One authorization series' labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AuthzKey {
    decision: DecisionLabels,
    target_port: u16,
    tls: TlsLabel,
    client_id: Option<Arc<str>>,
}

/// See the module doc.
pub struct MeshMetrics {
    max_series: usize,
    handshakes: [HandshakeHistogram; 2],
    handshake_errors: [[AtomicU64; HandshakeFailure::COUNT]; 2],
    tunnel_errors: [AtomicU64; TunnelError::COUNT],
    authz: Sharded<AuthzKey, AtomicU64>,
    /// Decisions past the series bound: [deny, allow].
    authz_overflow: [AtomicU64; 2],
}

impl MeshMetrics {
    pub fn new(max_series: usize) -> MeshMetrics {
        MeshMetrics {
            max_series,
            handshakes: Default::default(),
            handshake_errors: Default::default(),
            tunnel_errors: Default::default(),
            authz: Sharded::new(),
            authz_overflow: Default::default(),
        }
    }

    pub fn handshake(&self, direction: Direction, took: Duration) {
        self.handshakes[direction.index()].observe(took);
    }

    pub fn handshake_error(&self, direction: Direction, reason: HandshakeFailure) {
        self.handshake_errors[direction.index()][reason as usize].fetch_add(1, Relaxed);
    }

    pub fn tunnel_error(&self, reason: TunnelError) {
        self.tunnel_errors[reason as usize].fetch_add(1, Relaxed);
    }

    /// Counts one inbound authorization decision.
    pub fn authz(&self, decision: &DecisionLabels, target_port: u16, tls: TlsLabel, client_id: Option<&Arc<str>>) {
        let key = AuthzKey { decision: decision.clone(), target_port, tls, client_id: client_id.cloned() };
        let count = |c: &Arc<AtomicU64>| c.fetch_add(1, Relaxed);
        if self.authz.with(&key, self.max_series, count).is_none() {
            self.authz_overflow[usize::from(decision.allow)].fetch_add(1, Relaxed);
        }
    }

    /// Drops authorization series that did not count for `quiet_sweeps` sweeps.
    pub fn sweep(&self, quiet_sweeps: u32) -> usize {
        self.authz.sweep(quiet_sweeps, |c| c.load(Relaxed))
    }

    pub(super) fn snapshot(&self, identity: Option<IdentityInfo>, identity_generation: u64) -> MeshSnapshot {
        let mut handshake_errors = Vec::new();
        for d in Direction::ALL {
            for reason in HandshakeFailure::ALL {
                let count = self.handshake_errors[d.index()][reason as usize].load(Relaxed);
                if count > 0 {
                    handshake_errors.push(HandshakeErrorSnapshot { direction: d, reason: reason.label(), count });
                }
            }
        }
        let tunnel_errors = TunnelError::ALL
            .iter()
            .map(|e| TunnelErrorSnapshot { reason: *e, count: self.tunnel_errors[*e as usize].load(Relaxed) })
            .collect();
        let mut authz = Vec::new();
        self.authz.for_each(|k, c| {
            authz.push(AuthzSnapshot {
                allow: k.decision.allow,
                target_port: Some(k.target_port),
                srv_kind: k.decision.srv_kind.to_string(),
                srv_name: k.decision.srv_name.to_string(),
                authz_kind: k.decision.authz_kind.as_deref().map(str::to_string),
                authz_name: k.decision.authz_name.as_deref().map(str::to_string),
                tls: k.tls,
                client_id: k.client_id.as_deref().map(str::to_string),
                count: c.load(Relaxed),
            })
        });
        for (allow, c) in [(false, &self.authz_overflow[0]), (true, &self.authz_overflow[1])] {
            let count = c.load(Relaxed);
            if count > 0 {
                authz.push(AuthzSnapshot {
                    allow,
                    target_port: None,
                    srv_kind: String::new(),
                    srv_name: String::new(),
                    authz_kind: None,
                    authz_name: None,
                    tls: TlsLabel::NoIdentity,
                    client_id: None,
                    count,
                });
            }
        }
        MeshSnapshot {
            identity,
            identity_generation,
            handshake_ms: Direction::ALL.iter().map(|d| self.handshakes[d.index()].snapshot()).collect(),
            handshake_errors,
            tunnel_errors,
            authz,
        }
    }
}

/// Failed handshakes of one direction for one reason.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct HandshakeErrorSnapshot {
    pub direction: Direction,
    /// `timeout`, `io`, `handshake`, `untrusted`, `expired`, `not_yet_valid`,
    /// `bad_certificate`, `identity_mismatch`, `no_client_cert`,
    /// `no_client_identity`, `alpn`, `peer_rejected`, `not_tls`.
    pub reason: &'static str,
    pub count: u64,
}

/// Tunnel connections refused after the handshake, for one reason.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct TunnelErrorSnapshot {
    pub reason: TunnelError,
    pub count: u64,
}

/// Inbound authorization decisions with one label set.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct AuthzSnapshot {
    pub allow: bool,
    /// `None` on the overflow series.
    pub target_port: Option<u16>,
    pub srv_kind: String,
    pub srv_name: String,
    pub authz_kind: Option<String>,
    pub authz_name: Option<String>,
    pub tls: TlsLabel,
    pub client_id: Option<String>,
    pub count: u64,
}

/// The mesh's state and counters.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct MeshSnapshot {
    /// The identity new connections use (None: no identity installed).
    pub identity: Option<IdentityInfo>,
    /// How many identities were installed (0: none yet).
    pub identity_generation: u64,
    /// Successful handshakes' durations, [inbound, outbound].
    pub handshake_ms: Vec<HistogramSnapshot>,
    pub handshake_errors: Vec<HandshakeErrorSnapshot>,
    /// Every reason, zeros included.
    pub tunnel_errors: Vec<TunnelErrorSnapshot>,
    pub authz: Vec<AuthzSnapshot>,
}
