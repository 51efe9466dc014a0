//! Learned server-speaks-first targets.
//!
//! When a client stays silent past the grace period and the server sends the
//! first bytes (SMTP banners, MySQL handshakes), detection could never have
//! succeeded: the target speaks first. Remembering that lets every later
//! connection to the same address and port skip detection with no delay,
//! where Linkerd would stall each one for the full detect timeout. The cache
//! is bounded (the oldest entry is evicted) and entries expire, so a port
//! that changes protocol is re-learned. It is consulted once per new
//! connection on a detect-mode port; the lock is never held across I/O.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::addr::TargetAddr;

struct Entry {
    learned: Instant,
    hits: u64,
}

/// A bounded cache of targets known to speak first.
pub struct ServerFirstCache {
    capacity: usize,
    ttl: Duration,
    entries: Mutex<HashMap<TargetAddr, Entry>>,
}

/// A learned server-first target, for `/policy`.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct LearnedTarget {
    pub addr: String,
    pub age_ms: u64,
    pub hits: u64,
}

impl ServerFirstCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        ServerFirstCache { capacity, ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// Records `target` as server-first. Returns true if it is new (the
    /// caller logs a hint once per learned target).
    pub fn learn(&self, target: TargetAddr) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(e) = map.get_mut(&target) {
            let fresh = now.duration_since(e.learned) >= self.ttl;
            e.learned = now;
            return fresh;
        }
        if map.len() >= self.capacity {
            map.retain(|_, e| now.duration_since(e.learned) < self.ttl);
            if map.len() >= self.capacity {
                if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.learned).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(target, Entry { learned: now, hits: 0 });
        true
    }

    /// True if `target` is a known, unexpired server-first target.
    pub fn is_server_first(&self, target: TargetAddr) -> bool {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&target) {
            Some(e) if e.learned.elapsed() < self.ttl => {
                e.hits += 1;
                true
            }
            Some(_) => {
                map.remove(&target);
                false
            }
            None => false,
        }
    }

    pub fn snapshot(&self) -> Vec<LearnedTarget> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<LearnedTarget> = map
            .iter()
            .filter(|(_, e)| e.learned.elapsed() < self.ttl)
            .map(|(k, e)| LearnedTarget { addr: k.to_string(), age_ms: e.learned.elapsed().as_millis() as u64, hits: e.hits })
            .collect();
        v.sort_by(|a, b| a.addr.cmp(&b.addr));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: u16) -> TargetAddr {
        format!("10.0.0.1:{p}").parse().unwrap()
    }

    #[test]
    fn learns_bounded_and_expiring() {
        let c = ServerFirstCache::new(2, Duration::from_secs(60));
        assert!(c.learn(t(1)));
        assert!(!c.learn(t(1)), "already known");
        assert!(c.is_server_first(t(1)));
        c.learn(t(2));
        c.learn(t(3));
        assert_eq!(c.snapshot().len(), 2, "capacity bounds the cache");
        assert!(c.is_server_first(t(3)));
        assert!(!c.is_server_first(t(1)), "the oldest entry was evicted");
        let short = ServerFirstCache::new(2, Duration::from_millis(0));
        short.learn(t(9));
        assert!(!short.is_server_first(t(9)), "expired entries do not count");
    }
}
