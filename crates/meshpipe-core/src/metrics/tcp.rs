//! TCP series: the counters behind Linkerd's TCP metrics, per (direction,
//! target, TLS): sides opened and open (`tcp_open_total`,
//! `tcp_open_connections`), bytes each way, closes by `errno`
//! (`tcp_close_total`), the `tcp_connection_duration_ms` histogram and idle
//! timeouts; `ts/observe/metrics.ts` renders them.
//!
//! A connection looks its series up once, when its target and TLS are known,
//! and from then on only does relaxed atomic adds on it. TCP series share
//! their direction's budget with the HTTP series (`metrics/http.rs`); past it,
//! new targets fold into that direction's overflow series.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::Serialize;

use super::{Histogram, HistogramSnapshot, Metrics};
use crate::addr::TargetAddr;
use crate::vocab::{Direction, NoTlsReason, TlsLabel, TlsStatus};

/// Why a connection side closed, as Linkerd's `errno` label spells it.
/// `""` is a clean close.
pub const ERRNO_LABELS: [&str; 9] =
    ["", "ECONNRESET", "ECONNREFUSED", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "ENETUNREACH", "ECONNABORTED", "EOTHER"];

/// Maps an I/O error to an index into `ERRNO_LABELS`.
pub fn errno_index(err: Option<&std::io::Error>) -> usize {
    let Some(err) = err else { return 0 };
    match err.raw_os_error() {
        Some(libc::ECONNRESET) => 1,
        Some(libc::ECONNREFUSED) => 2,
        Some(libc::ETIMEDOUT) => 3,
        Some(libc::EPIPE) => 4,
        Some(libc::EHOSTUNREACH) => 5,
        Some(libc::ENETUNREACH) => 6,
        Some(libc::ECONNABORTED) => 7,
        _ if err.kind() == std::io::ErrorKind::TimedOut => 3,
        _ => 8,
    }
}

/// Which end of the proxy a TCP side is: `Src` is the accepted client
/// connection, `Dst` is the connection the proxy opened to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    Src = 0,
    Dst = 1,
}

/// The label set of one TCP series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub direction: Direction,
    pub target: TargetAddr,
    /// The TLS the proxy saw (the `tls`, `no_tls_reason` and `sni` labels).
    pub tls: TlsStatus,
}

/// Counters of one (direction, target, sni) series.
#[derive(Default)]
pub struct TcpSeries {
    pub open_total: [AtomicU64; 2],
    pub open: [AtomicI64; 2],
    pub bytes_client_to_server: AtomicU64,
    pub bytes_server_to_client: AtomicU64,
    pub closes: [[AtomicU64; ERRNO_LABELS.len()]; 2],
    pub duration: Histogram,
    /// Connections the proxy closed after the idle timeout.
    pub idle_timeouts: AtomicU64,
}

impl TcpSeries {
    pub fn opened(&self, peer: Peer) {
        self.open_total[peer as usize].fetch_add(1, Relaxed);
        self.open[peer as usize].fetch_add(1, Relaxed);
    }
    pub fn closed(&self, peer: Peer, errno: usize) {
        self.open[peer as usize].fetch_sub(1, Relaxed);
        self.closes[peer as usize][errno].fetch_add(1, Relaxed);
    }
    /// A dial to the target that failed: counted as a `dst` side opened and
    /// closed at once with the dial's errno.
    pub fn connect_failed(&self, errno: usize) {
        self.open_total[Peer::Dst as usize].fetch_add(1, Relaxed);
        self.closes[Peer::Dst as usize][errno].fetch_add(1, Relaxed);
    }
}

impl Metrics {
    /// The series for a connection; its direction's overflow series when
    /// that direction's bound is hit.
    pub fn series(&self, key: &SeriesKey) -> Arc<TcpSeries> {
        let d = key.direction.index();
        let room = self.max_targets.saturating_sub(self.http[d].len());
        self.tcp[d].get(key, room).unwrap_or_else(|| self.tcp_overflow[d].clone())
    }

    /// TCP series kept now, per direction (overflow series not counted).
    pub fn tcp_series(&self, direction: Direction) -> usize {
        self.tcp[direction.index()].len()
    }

    pub fn snapshot_tcp(&self) -> Vec<TcpSnapshot> {
        let mut out = Vec::new();
        for map in &self.tcp {
            map.for_each(|k, s| out.push(tcp_snapshot(Some(k), k.direction, s)));
        }
        for dir in [Direction::Inbound, Direction::Outbound] {
            let s = &self.tcp_overflow[dir.index()];
            if s.open_total[0].load(Relaxed) > 0 || s.open_total[1].load(Relaxed) > 0 {
                out.push(tcp_snapshot(None, dir, s));
            }
        }
        out
    }
}

fn tcp_snapshot(key: Option<&SeriesKey>, direction: Direction, s: &TcpSeries) -> TcpSnapshot {
    let mut closes = Vec::new();
    for peer in [Peer::Src, Peer::Dst] {
        for (i, c) in s.closes[peer as usize].iter().enumerate() {
            let count = c.load(Relaxed);
            if count > 0 {
                closes.push(CloseSnapshot { peer, errno: ERRNO_LABELS[i], count });
            }
        }
    }
    // The overflow series mixes targets: it is labelled as plaintext.
    let tls = key.map_or_else(|| TlsStatus::plaintext(direction), |k| k.tls.clone());
    TcpSnapshot {
        direction,
        target_addr: key.map(|k| k.target.to_string()),
        target_ip: key.map(|k| k.target.ip().to_string()),
        target_port: key.map(|k| k.target.port()),
        tls: tls.label(),
        no_tls_reason: tls.no_tls_reason(),
        sni: tls.sni().map(str::to_string),
        client_id: tls.peer_id().filter(|_| direction == Direction::Inbound).map(str::to_string),
        server_id: tls.peer_id().filter(|_| direction == Direction::Outbound).map(str::to_string),
        overflow: key.is_none(),
        src_open_total: s.open_total[0].load(Relaxed),
        src_open: s.open[0].load(Relaxed),
        dst_open_total: s.open_total[1].load(Relaxed),
        dst_open: s.open[1].load(Relaxed),
        bytes_client_to_server: s.bytes_client_to_server.load(Relaxed),
        bytes_server_to_client: s.bytes_server_to_client.load(Relaxed),
        closes,
        duration_ms: s.duration.snapshot(),
        idle_timeouts: s.idle_timeouts.load(Relaxed),
    }
}

/// Closes of one side of a series for one reason.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct CloseSnapshot {
    pub peer: Peer,
    /// `""` for a clean close, else an errno name (`ECONNRESET`, ...).
    pub errno: &'static str,
    pub count: u64,
}

/// One TCP series: a (direction, target, TLS) label set and its counters.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct TcpSnapshot {
    pub direction: Direction,
    /// `None` on the overflow series.
    pub target_addr: Option<String>,
    pub target_ip: Option<String>,
    pub target_port: Option<u16>,
    pub tls: TlsLabel,
    pub no_tls_reason: Option<NoTlsReason>,
    pub sni: Option<String>,
    /// Inbound mesh TLS: the client's verified identity.
    pub client_id: Option<String>,
    /// Outbound mesh TLS: the server's verified identity.
    pub server_id: Option<String>,
    /// The series that collects targets past the cardinality bound.
    pub overflow: bool,
    pub src_open_total: u64,
    pub src_open: i64,
    pub dst_open_total: u64,
    pub dst_open: i64,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    pub closes: Vec<CloseSnapshot>,
    pub duration_ms: HistogramSnapshot,
    /// Connections closed by the proxy after the idle timeout (both sides
    /// got a FIN; their closes count as clean in `closes`).
    pub idle_timeouts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_labels() {
        let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(ERRNO_LABELS[errno_index(Some(&e))], "ECONNREFUSED");
        assert_eq!(ERRNO_LABELS[errno_index(None)], "");
    }
}
