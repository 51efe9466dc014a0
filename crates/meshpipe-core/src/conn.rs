//! The registry of live connections, for debugging (`/connections`) and for
//! the per-connection protocol view.
//!
//! Each connection owns an `Arc<ConnInfo>` whose fields are atomics or
//! set-once cells, so the data path updates them without locks. The registry
//! itself is touched twice per connection (insert on accept, remove on close)
//! under one of 16 shard locks, never per byte. Each thread keeps to its own
//! home shard, so with one worker thread per core those locks are never
//! contended by another worker (only a `/connections` scrape takes them all).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde::Serialize;

use crate::addr::TargetAddr;
use crate::policy::Direction;

const SHARDS: usize = 16;

/// What the connection is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    Detecting = 0,
    Connecting,
    Forwarding,
    Closing,
}

const STATE_LABELS: [&str; 4] = ["detecting", "connecting", "forwarding", "closing"];

/// What the connection was found to carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnProtocol {
    Detecting = 0,
    Http1,
    Http2,
    Tls,
    Opaque,
}

const PROTOCOL_LABELS: [&str; 5] = ["detecting", "http/1", "http/2", "tls", "opaque"];

/// Live facts about one connection.
pub struct ConnInfo {
    pub id: u64,
    pub listener: Arc<str>,
    pub direction: Direction,
    pub peer: SocketAddr,
    pub started: Instant,
    pub target: OnceLock<TargetAddr>,
    pub sni: OnceLock<Arc<str>>,
    state: AtomicU8,
    protocol: AtomicU8,
    /// Bytes read from the client (and written to the target).
    pub bytes_in: AtomicU64,
    /// Bytes read from the target (and written to the client).
    pub bytes_out: AtomicU64,
}

impl ConnInfo {
    pub fn set_state(&self, s: ConnState) {
        self.state.store(s as u8, Relaxed);
    }
    pub fn set_protocol(&self, p: ConnProtocol) {
        self.protocol.store(p as u8, Relaxed);
    }
    pub fn protocol(&self) -> &'static str {
        PROTOCOL_LABELS[self.protocol.load(Relaxed) as usize % PROTOCOL_LABELS.len()]
    }
    fn snapshot(&self) -> ConnSnapshot {
        ConnSnapshot {
            id: self.id,
            listener: self.listener.to_string(),
            direction: self.direction.as_str(),
            peer: self.peer.to_string(),
            target: self.target.get().map(|t| t.to_string()),
            protocol: self.protocol(),
            tls: if self.sni.get().is_some() { "opaque" } else { "no_identity" },
            sni: self.sni.get().map(|s| s.to_string()),
            state: STATE_LABELS[self.state.load(Relaxed) as usize % STATE_LABELS.len()],
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            age_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnSnapshot {
    pub id: u64,
    pub listener: String,
    pub direction: &'static str,
    pub peer: String,
    pub target: Option<String>,
    pub protocol: &'static str,
    pub tls: &'static str,
    pub sni: Option<String>,
    pub state: &'static str,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub age_ms: u64,
}

/// All live connections of one engine.
pub struct ConnRegistry {
    next_id: AtomicU64,
    shards: [Mutex<HashMap<u64, Arc<ConnInfo>>>; SHARDS],
}

impl Default for ConnRegistry {
    fn default() -> Self {
        ConnRegistry { next_id: AtomicU64::new(1), shards: std::array::from_fn(|_| Mutex::new(HashMap::new())) }
    }
}

/// Removes the connection from the registry when dropped, whatever path the
/// connection task took to its end (including cancellation at the drain
/// deadline).
pub struct Registered<'a> {
    registry: &'a ConnRegistry,
    shard: usize,
    pub info: Arc<ConnInfo>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.shards[self.shard].lock().unwrap_or_else(|e| e.into_inner()).remove(&self.info.id);
    }
}

/// Hands each thread a home shard, round-robin.
static NEXT_HOME_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static HOME_SHARD: usize = NEXT_HOME_SHARD.fetch_add(1, Relaxed) % SHARDS;
}

impl ConnRegistry {
    pub fn register(&self, listener: Arc<str>, direction: Direction, peer: SocketAddr) -> Registered<'_> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let info = Arc::new(ConnInfo {
            id,
            listener,
            direction,
            peer,
            started: Instant::now(),
            target: OnceLock::new(),
            sni: OnceLock::new(),
            state: AtomicU8::new(ConnState::Detecting as u8),
            protocol: AtomicU8::new(ConnProtocol::Detecting as u8),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        });
        let shard = HOME_SHARD.with(|s| *s);
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner()).insert(id, info.clone());
        Registered { registry: self, shard, info }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` live connections, oldest first.
    pub fn snapshot(&self, limit: usize) -> Vec<ConnSnapshot> {
        let mut all: Vec<Arc<ConnInfo>> = Vec::new();
        for s in &self.shards {
            all.extend(s.lock().unwrap_or_else(|e| e.into_inner()).values().cloned());
        }
        all.sort_by_key(|c| c.id);
        all.iter().take(limit).map(|c| c.snapshot()).collect()
    }
}
