//! Counters and histograms, kept as atomics so the data path never takes a
//! lock or calls into JavaScript.
//!
//! A connection finds its per-target series once, when its target and
//! protocol are known (one read lock on one of 16 shards, uncontended in
//! practice; a write lock only the first time a target is seen), and from
//! then on only does relaxed `fetch_add`s. A scrape reads everything in one
//! `snapshot()` call.
//!
//! Series are bounded per direction: past `max_targets` distinct targets of
//! one direction, its new ones fold into that direction's overflow series, so
//! a scan of many destinations (or junk SNIs sent to the inbound port) cannot
//! grow memory or the scrape without limit, nor push the other direction's
//! targets into overflow. Series nobody uses are evicted: [`Metrics::sweep`]
//! (called periodically by the engine) drops a series that no open
//! connection holds and that saw no new connection for the retention period
//! (Linkerd keeps idle series for 10 minutes), freeing its slot; a target
//! that comes back starts a fresh series at zero, which Prometheus reads as a
//! counter reset. HTTP series (`metrics/http.rs`) share each direction's
//! budget with the TCP series (`metrics/tcp.rs`).

mod http;
mod tcp;

pub use http::{Classification, HttpErrorSnapshot, HttpKey, HttpSeries, HttpSnapshot, ResponseKey, ResponseSnapshot};
pub use tcp::{errno_index, CloseSnapshot, Peer, SeriesKey, TcpSeries, TcpSnapshot, ERRNO_LABELS};

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::target::AcceptError;
use crate::vocab::{DetectResult, Direction};

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

type DetectCounters = [AtomicU64; DetectResult::COUNT];

/// One entry of a [`Sharded`] map: the counters, and what the sweep saw.
struct Entry<V> {
    value: Arc<V>,
    /// The activity measure at the last sweep.
    seen: u64,
    /// Consecutive sweeps that found the entry unused and its activity unchanged.
    quiet: u32,
}

/// A bounded, sharded map from a key to a shared counter block.
pub(crate) struct Sharded<K, V> {
    shards: [RwLock<HashMap<K, Entry<V>>>; SHARDS],
    len: AtomicUsize,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq + Clone, V: Default> Sharded<K, V> {
    pub(crate) fn new() -> Self {
        Sharded { shards: std::array::from_fn(|_| RwLock::new(HashMap::new())), len: AtomicUsize::new(0), hasher: Default::default() }
    }

    fn shard(&self, key: &K) -> &RwLock<HashMap<K, Entry<V>>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Finds or creates the entry for `key`; `None` when the map is full.
    fn get(&self, key: &K, max: usize) -> Option<Arc<V>> {
        self.with(key, max, Arc::clone)
    }

    /// Runs `f` on the entry for `key` (created if missing) while the shard
    /// is locked, so a sweep cannot evict it in between; `None` when full.
    pub(crate) fn with<R>(&self, key: &K, max: usize, f: impl FnOnce(&Arc<V>) -> R) -> Option<R> {
        let shard = self.shard(key);
        if let Some(e) = shard.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Some(f(&e.value));
        }
        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get(key) {
            return Some(f(&e.value));
        }
        if self.len.load(Relaxed) >= max {
            return None;
        }
        self.len.fetch_add(1, Relaxed);
        let e = map.entry(key.clone()).or_insert(Entry { value: Arc::new(V::default()), seen: 0, quiet: 0 });
        Some(f(&e.value))
    }

    pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for shard in &self.shards {
            for (k, e) in shard.read().unwrap_or_else(|e| e.into_inner()).iter() {
                f(k, &e.value);
            }
        }
    }

    /// Evicts entries that nobody holds (only the map has a reference) and
    /// whose `activity` did not change for `quiet_sweeps` sweeps in a row.
    /// Returns how many were evicted.
    pub(crate) fn sweep(&self, quiet_sweeps: u32, activity: impl Fn(&V) -> u64) -> usize {
        let mut evicted = 0;
        for shard in &self.shards {
            let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, e| {
                let now = activity(&e.value);
                // Under the write lock nobody can take a new reference.
                if Arc::strong_count(&e.value) > 1 || now != e.seen {
                    (e.seen, e.quiet) = (now, 0);
                    return true;
                }
                e.quiet += 1;
                let keep = e.quiet < quiet_sweeps;
                evicted += usize::from(!keep);
                keep
            });
        }
        self.len.fetch_sub(evicted, Relaxed);
        evicted
    }

    fn len(&self) -> usize {
        self.len.load(Relaxed)
    }
}

/// Engine-wide error counters that have no target.
#[derive(Default)]
pub struct ErrorCounters {
    pub connect_failed: AtomicU64,
    pub loop_refused: AtomicU64,
    pub original_dst_failed: AtomicU64,
    /// Inbound connections whose original destination was not one of the pod's IPs.
    pub not_pod_ip: AtomicU64,
}

/// All metrics of one engine.
pub struct Metrics {
    started: Instant,
    /// Per direction.
    max_targets: usize,
    /// Per direction (index with `Direction::index`).
    tcp: [Sharded<SeriesKey, TcpSeries>; 2],
    tcp_overflow: [Arc<TcpSeries>; 2],
    detect: [Sharded<u16, DetectCounters>; 2],
    detect_overflow: [Arc<DetectCounters>; 2],
    /// Series and detect counters dropped by `sweep`.
    evicted: AtomicU64,
    detect_duration: [Histogram; 2],
    pub errors: ErrorCounters,
    /// Refusals by the target stage, per direction and reason.
    accept_errors: [[AtomicU64; AcceptError::COUNT]; 2],
    /// HTTP series per direction (`metrics/http.rs`), and their overflow.
    http: [Sharded<HttpKey, HttpSeries>; 2],
    http_overflow: [Arc<HttpSeries>; 2],
    http_errors: [[AtomicU64; crate::http::HttpErrorReason::COUNT]; 2],
}

impl Metrics {
    pub fn new(max_targets: usize) -> Self {
        Metrics {
            started: Instant::now(),
            max_targets,
            tcp: [Sharded::new(), Sharded::new()],
            tcp_overflow: Default::default(),
            detect: [Sharded::new(), Sharded::new()],
            detect_overflow: Default::default(),
            evicted: AtomicU64::new(0),
            detect_duration: Default::default(),
            errors: Default::default(),
            accept_errors: Default::default(),
            http: [Sharded::new(), Sharded::new()],
            http_overflow: Default::default(),
            http_errors: Default::default(),
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

    pub fn detected(&self, direction: Direction, port: u16, result: DetectResult, took: Duration) {
        let d = direction.index();
        let count = |c: &Arc<DetectCounters>| c[result as usize].fetch_add(1, Relaxed);
        if self.detect[d].with(&port, self.max_targets, count).is_none() {
            count(&self.detect_overflow[d]);
        }
        self.detect_duration[d].observe(took);
    }

    /// One eviction pass: drops the TCP series no connection holds and that
    /// no connection opened during the last `quiet_sweeps` sweeps, and the
    /// detect counters that did not move for as long. The engine calls it
    /// every retention period / `quiet_sweeps`.
    pub fn sweep(&self, quiet_sweeps: u32) -> usize {
        let mut evicted = 0;
        for d in Direction::ALL {
            evicted += self.tcp[d.index()].sweep(quiet_sweeps, |s| s.open_total[0].load(Relaxed) + s.open_total[1].load(Relaxed));
            evicted += self.detect[d.index()].sweep(quiet_sweeps, |c| c.iter().map(|c| c.load(Relaxed)).sum());
            evicted += self.http[d.index()].sweep(quiet_sweeps, |s| s.requests.load(Relaxed));
        }
        self.evicted.fetch_add(evicted as u64, Relaxed);
        evicted
    }

    /// Series and detect counters evicted so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Relaxed)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
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
        for d in Direction::ALL {
            self.detect[d.index()].for_each(|p, c| push(d, Some(*p), c));
        }
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
    use crate::vocab::TlsStatus;

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
    fn each_direction_has_its_own_budget() {
        let m = Metrics::new(2);
        let inbound = |port: u16| SeriesKey { direction: Direction::Inbound, ..key(port) };
        for port in 1..=50 {
            m.series(&inbound(port)).opened(Peer::Src);
        }
        // Fifty inbound targets fill the inbound budget, not the outbound one.
        m.series(&key(7)).opened(Peer::Src);
        let snap = m.snapshot_tcp();
        let out: Vec<_> = snap.iter().filter(|s| s.direction == Direction::Outbound).collect();
        assert_eq!(out.len(), 1);
        assert!(!out[0].overflow && out[0].target_port == Some(7), "{out:?}");
        let overflow = snap.iter().find(|s| s.overflow).unwrap();
        assert_eq!((overflow.direction, overflow.src_open_total), (Direction::Inbound, 48));
        assert_eq!(m.tcp_series(Direction::Inbound), 2);
    }

    #[test]
    fn sweeps_evict_series_nobody_uses_and_free_their_slot() {
        let m = Metrics::new(2);
        let held = m.series(&key(1));
        held.opened(Peer::Src);
        m.series(&key(2)).opened(Peer::Src);
        m.detected(Direction::Outbound, 2, DetectResult::NotHttp, Duration::ZERO);
        // Two quiet sweeps in a row are needed; the first only records what it saw.
        assert_eq!(m.sweep(2), 0);
        assert_eq!(m.sweep(2), 0);
        assert_eq!(m.sweep(2), 2, "port 2's series and its detect counters");
        let ports: Vec<_> = m.snapshot_tcp().iter().map(|s| s.target_port).collect();
        assert_eq!(ports, vec![Some(1)], "series 1 is held by a connection");
        assert!(m.snapshot_detect().0.is_empty());
        // The freed slot takes a new target instead of overflow.
        m.series(&key(3)).opened(Peer::Src);
        assert!(m.snapshot_tcp().iter().all(|s| !s.overflow));
        // A series that sees a new connection between sweeps starts its quiet count over.
        drop(held);
        assert_eq!(m.sweep(2), 0, "series 1: first quiet sweep");
        m.series(&key(1)).opened(Peer::Src);
        assert_eq!(m.sweep(2), 0, "series 1 was used again");
        assert!(m.snapshot_tcp().iter().any(|s| s.target_port == Some(1)));
        assert_eq!(m.evicted(), 2);
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
}
