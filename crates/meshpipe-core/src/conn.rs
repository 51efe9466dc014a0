//! The registry of live connections, for debugging (`/connections`) and for
//! the per-connection protocol view.
//!
//! Each connection owns an `Arc<ConnInfo>` whose fields are atomics or
//! set-once cells, so the data path updates them without locks. The registry
//! itself is touched twice per connection (insert on accept, remove on close)
//! under one of 16 shard locks, never per byte. Each thread keeps to its own
//! home shard, so with one worker thread per core those locks are never
//! contended by another worker (only a `/connections` scrape and the idle
//! sweep take them all).
//!
//! Idle timeout: [`ConnRegistry::sweep_idle`] runs every quarter of the idle
//! timeout (at most every minute) and compares each forwarding connection's
//! byte counters with what it saw last time, so the data path pays nothing
//! for it (no timer is reset per read). A connection whose counters did not
//! move for a whole timeout is shut down both ways (`shutdown(2)`, which
//! sends each peer a FIN and wakes the connection's task, which then ends as
//! if both peers had closed). Its descriptors are published for this only
//! while it forwards, under a per-connection lock that is cleared before the
//! sockets close, so the sweep can never shut down a reused descriptor.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
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

/// A connection's mesh TLS: who the peer proved to be, and which
/// certificates each end used (to see a rotation take effect).
#[derive(Clone, Debug)]
pub struct ConnMesh {
    pub peer: Arc<str>,
    /// This proxy's certificate serial for this connection.
    pub local_serial: Arc<str>,
    /// The peer's leaf certificate serial.
    pub peer_serial: Option<Arc<str>>,
    /// True for the tunnel (ALPN `transport.l5d.io/v1` and the header).
    pub tunnel: bool,
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
    /// Mesh TLS facts, once a handshake with a peer proxy succeeded.
    pub mesh: OnceLock<ConnMesh>,
    state: AtomicU8,
    protocol: AtomicU8,
    /// Bytes read from the client (and written to the target).
    pub bytes_in: AtomicU64,
    /// Bytes read from the target (and written to the client).
    pub bytes_out: AtomicU64,
    /// The client and target descriptors while forwarding (see `Forwarding`).
    forwarding: Mutex<Option<[RawFd; 2]>>,
    /// Idle sweep state: the byte total it saw last, and how many sweeps in
    /// a row saw the same total. Only the sweep touches these.
    idle_seen: AtomicU64,
    idle_sweeps: AtomicU32,
    /// Set by the sweep when it closed the connection for being idle.
    idle_closed: AtomicBool,
    /// Woken when the sweep closes the connection, for a task that is not
    /// reading the published socket (an HTTP tunnel whose client already
    /// sent its FIN waits on the upstream only).
    idle_notify: tokio::sync::Notify,
}

impl ConnInfo {
    pub fn set_state(&self, s: ConnState) {
        self.state.store(s as u8, Relaxed);
    }
    pub fn set_protocol(&self, p: Protocol) {
        self.protocol.store(p as u8, Relaxed);
    }
    /// Whether the idle sweep closed this connection.
    pub fn idle_closed(&self) -> bool {
        self.idle_closed.load(Relaxed)
    }

    /// Resolves once the idle sweep has closed this connection.
    pub async fn idle_closed_wait(&self) {
        loop {
            let notified = self.idle_notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close between the check and
            // the wait is not missed.
            notified.as_mut().enable();
            if self.idle_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Publishes the connection's sockets to the idle sweep until the
    /// returned guard is dropped. Declare the guard *after* both sockets, so
    /// it is dropped (and the descriptors withdrawn) before they close.
    pub fn forwarding<'a>(&'a self, client: &impl AsRawFd, server: &impl AsRawFd) -> Forwarding<'a> {
        *self.forwarding.lock().unwrap_or_else(|e| e.into_inner()) = Some([client.as_raw_fd(), server.as_raw_fd()]);
        Forwarding(self)
    }

    /// Publishes one socket (an HTTP client connection, whose upstream
    /// connections are pooled) to the idle sweep until [`ConnInfo::withdraw`].
    /// The caller withdraws it before the socket closes.
    pub fn publish_fd(&self, client: &impl AsRawFd) {
        let fd = client.as_raw_fd();
        *self.forwarding.lock().unwrap_or_else(|e| e.into_inner()) = Some([fd, fd]);
    }

    /// Withdraws what `publish_fd` published.
    pub fn withdraw(&self) {
        *self.forwarding.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// `None` while detection has not decided.
    pub fn protocol(&self) -> Option<Protocol> {
        match self.protocol.load(Relaxed) {
            UNDECIDED => None,
            p => Some(Protocol::from_u8(p)),
        }
    }
    fn snapshot(&self) -> ConnSnapshot {
        let mesh = self.mesh.get();
        let tls = match mesh {
            Some(_) => TlsLabel::True,
            None => TlsStatus::detected(self.direction, self.sni.get()).label(),
        };
        ConnSnapshot {
            id: self.id,
            listener: self.listener.to_string(),
            direction: self.direction,
            peer: self.peer.to_string(),
            target: self.target.get().map(|t| t.to_string()),
            protocol: self.protocol(),
            tls,
            sni: self.sni.get().map(|s| s.to_string()),
            peer_id: mesh.map(|m| m.peer.to_string()),
            local_serial: mesh.map(|m| m.local_serial.to_string()),
            peer_serial: mesh.and_then(|m| m.peer_serial.as_deref().map(str::to_string)),
            tunnel: mesh.is_some_and(|m| m.tunnel),
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
    /// Mesh TLS: the peer's verified identity (the client's inbound, the server's outbound).
    pub peer_id: Option<String>,
    /// Mesh TLS: this proxy's certificate serial for this connection.
    pub local_serial: Option<String>,
    /// Mesh TLS: the peer's certificate serial.
    pub peer_serial: Option<String>,
    /// Carried through the tunnel (`transport.l5d.io/v1`).
    pub tunnel: bool,
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

/// Withdraws a forwarding connection's descriptors from the idle sweep when
/// dropped (see [`ConnInfo::forwarding`]).
pub struct Forwarding<'a>(&'a ConnInfo);

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        *self.0.forwarding.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
            mesh: OnceLock::new(),
            state: AtomicU8::new(ConnState::Detecting as u8),
            protocol: AtomicU8::new(UNDECIDED),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            forwarding: Mutex::new(None),
            idle_seen: AtomicU64::new(0),
            idle_sweeps: AtomicU32::new(0),
            idle_closed: AtomicBool::new(false),
            idle_notify: tokio::sync::Notify::new(),
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

    /// One idle sweep: closes every forwarding connection whose byte
    /// counters have not moved for `quiet_sweeps` sweeps in a row. Returns
    /// how many it closed.
    pub fn sweep_idle(&self, quiet_sweeps: u32) -> usize {
        let mut closed = 0;
        for shard in &self.shards {
            let conns: Vec<Arc<ConnInfo>> = shard.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
            for c in conns {
                let total = c.bytes_in.load(Relaxed) + c.bytes_out.load(Relaxed);
                if ConnState::from_u8(c.state.load(Relaxed)) != ConnState::Forwarding || total != c.idle_seen.load(Relaxed) {
                    c.idle_seen.store(total, Relaxed);
                    c.idle_sweeps.store(0, Relaxed);
                    continue;
                }
                let quiet = c.idle_sweeps.fetch_add(1, Relaxed) + 1;
                if quiet < quiet_sweeps || c.idle_closed.load(Relaxed) {
                    continue;
                }
                let fds = c.forwarding.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(fds) = *fds {
                    c.idle_closed.store(true, Relaxed);
                    for fd in fds {
                        // The descriptors stay open while the lock is held:
                        // the connection withdraws them under it before closing.
                        crate::sys::shutdown_both(fd);
                    }
                    c.idle_notify.notify_waiters();
                    closed += 1;
                }
            }
        }
        closed
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
