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
use crate::vocab::{Direction, Protocol, TlsLabel, TlsStatus};

const SHARDS: usize = 16;

/// What the connection is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum ConnState {
    Detecting = 0,
    Connecting,
    Forwarding,
    Closing,
}

impl ConnState {
    fn from_u8(v: u8) -> ConnState {
        match v {
            0 => ConnState::Detecting,
            1 => ConnState::Connecting,
            2 => ConnState::Forwarding,
            _ => ConnState::Closing,
        }
    }
}

/// `protocol` before detection has decided.
const UNDECIDED: u8 = u8::MAX;

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
    pub fn set_protocol(&self, p: Protocol) {
        self.protocol.store(p as u8, Relaxed);
    }
    /// `None` while detection has not decided.
    pub fn protocol(&self) -> Option<Protocol> {
        match self.protocol.load(Relaxed) {
            UNDECIDED => None,
            p => Some(Protocol::from_u8(p)),
        }
    }
    fn snapshot(&self) -> ConnSnapshot {
        ConnSnapshot {
            id: self.id,
            listener: self.listener.to_string(),
            direction: self.direction,
            peer: self.peer.to_string(),
            target: self.target.get().map(|t| t.to_string()),
            protocol: self.protocol(),
            tls: TlsStatus::detected(self.direction, self.sni.get()).label(),
            sni: self.sni.get().map(|s| s.to_string()),
            state: ConnState::from_u8(self.state.load(Relaxed)),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            age_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

/// One live connection, for `/connections`.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ConnSnapshot {
    pub id: u64,
    pub listener: String,
    pub direction: Direction,
    pub peer: String,
    pub target: Option<String>,
    /// `None` while detection has not decided.
    pub protocol: Option<Protocol>,
    pub tls: TlsLabel,
    pub sni: Option<String>,
    pub state: ConnState,
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
            protocol: AtomicU8::new(UNDECIDED),
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
