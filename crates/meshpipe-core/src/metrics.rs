//! Counters and histograms, kept as atomics so the data path never takes a
//! lock or calls into JavaScript.
//!
//! A connection finds its per-target series once, when its target and
//! protocol are known (one read lock on one of 16 shards, uncontended in
//! practice; a write lock only the first time a target is seen), and from
//! then on only does relaxed `fetch_add`s. Series are bounded: past
//! `max_targets` distinct targets, new ones fold into a per-direction overflow
//! series, so a scan of many destinations cannot grow memory or the scrape
//! without limit. A scrape reads everything in one `snapshot()` call.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::addr::TargetAddr;
use crate::target::AcceptError;
use crate::vocab::{DetectResult, Direction, NoTlsReason, TlsLabel, TlsStatus};

const SHARDS: usize = 16;

/// Linkerd's latency buckets (ms), used for connection and detect durations.
pub const DURATION_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0,
    10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

/// A fixed-bucket histogram of milliseconds. `counts[i]` is the number of
/// observations `<= DURATION_BUCKETS_MS[i]` and above the previous bound;
/// the last slot is `+Inf`. Cumulative sums are computed at scrape time.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 26],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = DURATION_BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(DURATION_BUCKETS_MS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        HistogramSnapshot {
            buckets: DURATION_BUCKETS_MS.to_vec(),
            count: counts.iter().sum(),
            counts,
            sum: self.sum_us.load(Relaxed) as f64 / 1000.0,
        }
    }
}

/// A histogram as the engine counts it (per-bucket, not cumulative).
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct HistogramSnapshot {
    pub buckets: Vec<f64>,
    /// Per-bucket (not cumulative) counts; one more entry than `buckets` (+Inf).
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

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

type DetectCounters = [AtomicU64; DetectResult::COUNT];

/// A bounded, sharded map from a key to a shared counter block.
struct Sharded<K, V> {
    shards: [RwLock<HashMap<K, Arc<V>>>; SHARDS],
    len: AtomicUsize,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq + Clone, V: Default> Sharded<K, V> {
    fn new() -> Self {
        Sharded { shards: std::array::from_fn(|_| RwLock::new(HashMap::new())), len: AtomicUsize::new(0), hasher: Default::default() }
    }

    /// Finds or creates the entry for `key`; `None` when the map is full.
    fn get(&self, key: &K, max: usize) -> Option<Arc<V>> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        if let Some(v) = shard.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Some(v.clone());
        }
        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = map.get(key) {
            return Some(v.clone());
        }
        if self.len.load(Relaxed) >= max {
            return None;
        }
        self.len.fetch_add(1, Relaxed);
        let v = Arc::new(V::default());
        map.insert(key.clone(), v.clone());
        Some(v)
    }

    fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for shard in &self.shards {
            for (k, v) in shard.read().unwrap_or_else(|e| e.into_inner()).iter() {
                f(k, v);
            }
        }
    }
}

/// Engine-wide copy-path counters.
#[derive(Default)]
pub struct CopyCounters {
    /// Directions (two per connection) that switched to splice.
    pub spliced_directions: AtomicU64,
}

/// Engine-wide error counters that have no target.
#[derive(Default)]
pub struct ErrorCounters {
    pub connect_failed: AtomicU64,
    pub loop_refused: AtomicU64,
    pub original_dst_failed: AtomicU64,
}

/// All metrics of one engine.
pub struct Metrics {
    started: Instant,
    max_targets: usize,
    tcp: Sharded<SeriesKey, TcpSeries>,
    tcp_overflow: [Arc<TcpSeries>; 2],
    detect: Sharded<(Direction, u16), DetectCounters>,
    detect_overflow: [Arc<DetectCounters>; 2],
    detect_duration: [Histogram; 2],
    pub errors: ErrorCounters,
    pub copy: CopyCounters,
    /// Refusals by the target stage, per direction and reason.
    accept_errors: [[AtomicU64; AcceptError::COUNT]; 2],
}

impl Metrics {
    pub fn new(max_targets: usize) -> Self {
        Metrics {
            started: Instant::now(),
            max_targets,
            tcp: Sharded::new(),
            tcp_overflow: Default::default(),
            detect: Sharded::new(),
            detect_overflow: Default::default(),
            detect_duration: Default::default(),
            errors: Default::default(),
            copy: Default::default(),
            accept_errors: Default::default(),
        }
    }

    /// Counts a connection the target stage refused.
    pub fn accept_error(&self, direction: Direction, error: AcceptError) {
        self.accept_errors[direction.index()][error as usize].fetch_add(1, Relaxed);
    }

    /// Every (direction, reason) counter, zeros included, so a rate can be
    /// taken before the first refusal.
    pub fn snapshot_accept_errors(&self) -> Vec<AcceptErrorSnapshot> {
        let mut out = Vec::with_capacity(2 * AcceptError::COUNT);
        for direction in Direction::ALL {
            for error in AcceptError::ALL {
                out.push(AcceptErrorSnapshot {
                    direction,
                    error,
                    count: self.accept_errors[direction.index()][error as usize].load(Relaxed),
                });
            }
        }
        out
    }

    /// The series for a connection; the overflow series when the bound is hit.
    pub fn series(&self, key: &SeriesKey) -> Arc<TcpSeries> {
        self.tcp.get(key, self.max_targets).unwrap_or_else(|| self.tcp_overflow[key.direction.index()].clone())
    }

    pub fn detected(&self, direction: Direction, port: u16, result: DetectResult, took: Duration) {
        let counters =
            self.detect.get(&(direction, port), self.max_targets).unwrap_or_else(|| self.detect_overflow[direction.index()].clone());
        counters[result as usize].fetch_add(1, Relaxed);
        self.detect_duration[direction.index()].observe(took);
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn snapshot_tcp(&self) -> Vec<TcpSnapshot> {
        let mut out = Vec::new();
        self.tcp.for_each(|k, s| out.push(tcp_snapshot(Some(k), k.direction, s)));
        for dir in [Direction::Inbound, Direction::Outbound] {
            let s = &self.tcp_overflow[dir.index()];
            if s.open_total[0].load(Relaxed) > 0 || s.open_total[1].load(Relaxed) > 0 {
                out.push(tcp_snapshot(None, dir, s));
            }
        }
        out
    }

    pub fn snapshot_detect(&self) -> (Vec<DetectSnapshot>, Vec<DetectDurationSnapshot>) {
        let mut out = Vec::new();
        let mut push = |direction: Direction, port: Option<u16>, counters: &DetectCounters| {
            for (result, c) in DetectResult::ALL.iter().zip(counters) {
                let count = c.load(Relaxed);
                if count > 0 {
                    out.push(DetectSnapshot { direction, target_port: port, result: *result, count });
                }
            }
        };
        self.detect.for_each(|(d, p), c| push(*d, Some(*p), c));
        for dir in [Direction::Inbound, Direction::Outbound] {
            push(dir, None, &self.detect_overflow[dir.index()]);
        }
        let durations = Direction::ALL
            .iter()
            .map(|d| DetectDurationSnapshot { direction: *d, histogram: self.detect_duration[d.index()].snapshot() })
            .collect();
        (out, durations)
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
        overflow: key.is_none(),
        src_open_total: s.open_total[0].load(Relaxed),
        src_open: s.open[0].load(Relaxed),
        dst_open_total: s.open_total[1].load(Relaxed),
        dst_open: s.open[1].load(Relaxed),
        bytes_client_to_server: s.bytes_client_to_server.load(Relaxed),
        bytes_server_to_client: s.bytes_server_to_client.load(Relaxed),
        closes,
        duration_ms: s.duration.snapshot(),
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
}

/// Connections refused by a transparent listener for one reason.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct AcceptErrorSnapshot {
    pub direction: Direction,
    pub error: AcceptError,
    pub count: u64,
}

/// Detection outcomes for one (direction, target port).
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct DetectSnapshot {
    pub direction: Direction,
    /// `None` is the overflow series.
    pub target_port: Option<u16>,
    pub result: DetectResult,
    pub count: u64,
}

/// The detection duration histogram of one direction.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct DetectDurationSnapshot {
    pub direction: Direction,
    #[serde(flatten)]
    #[cfg_attr(feature = "ts", ts(flatten))]
    pub histogram: HistogramSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> SeriesKey {
        SeriesKey {
            direction: Direction::Outbound,
            target: format!("127.0.0.1:{port}").parse().unwrap(),
            tls: TlsStatus::plaintext(Direction::Outbound),
        }
    }

    #[test]
    fn series_are_bounded_with_overflow() {
        let m = Metrics::new(2);
        m.series(&key(1)).opened(Peer::Src);
        m.series(&key(2)).opened(Peer::Src);
        m.series(&key(3)).opened(Peer::Src);
        m.series(&key(4)).opened(Peer::Src);
        m.series(&key(1)).opened(Peer::Src);
        let snap = m.snapshot_tcp();
        assert_eq!(snap.len(), 3, "two targets plus the overflow series");
        let overflow = snap.iter().find(|s| s.overflow).unwrap();
        assert_eq!(overflow.src_open_total, 2);
        let one = snap.iter().find(|s| s.target_port == Some(1)).unwrap();
        assert_eq!(one.src_open_total, 2);
    }

    #[test]
    fn histogram_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(100));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[5], 1, "7 ms lands in the <=10 ms bucket");
        assert_eq!(s.counts[25], 1, "+Inf");
        assert!((s.sum - 100_007.5).abs() < 0.01);
    }

    #[test]
    fn errno_labels() {
        let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(ERRNO_LABELS[errno_index(Some(&e))], "ECONNREFUSED");
        assert_eq!(ERRNO_LABELS[errno_index(None)], "");
    }
}
