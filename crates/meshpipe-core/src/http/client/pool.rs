//! The per-worker pools of upstream connections (`client.rs` uses them).
//!
//! Each worker thread keeps its connections in a thread-local, keyed by the
//! engine (two engines in one process never share a connection): idle
//! HTTP/1 connections per endpoint, newest last, and the HTTP/2 connection
//! of each client connection and endpoint. Checking out, checking in and
//! sweeping touch only the worker's own table, so the request path takes no
//! lock. A sweeper task per worker and engine closes idle connections and
//! forgets the balancer state of Services that left the endpoints table.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use tokio::sync::OnceCell;
// The runtime's clock, as the sweeper's timer: idle ages and reuse windows
// are measured on the clock that wakes the sweep (and that a paused test
// runtime advances).
use tokio::time::Instant;

use super::RequestBody;
use crate::identity::Identity;

pub(super) type H1 = http1::SendRequest<RequestBody>;

/// An HTTP/2 connection's place in the pools: one per engine, client
/// connection and endpoint.
#[derive(Clone, Copy)]
pub(super) struct H2Key {
    pub engine: u64,
    pub client: u64,
    pub addr: SocketAddr,
}
/// A shared HTTP/2 connection: its request handle and what its server's
/// preface said (`peer_settings.rs`).
#[derive(Clone)]
pub(super) struct H2 {
    pub tx: http2::SendRequest<RequestBody>,
    pub settings: Arc<super::peer_settings::PeerSettings>,
}

impl H2 {
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

struct IdleH1 {
    tx: H1,
    since: Instant,
    /// Reused only before this: the upstream's own idle timeout, less a
    /// margin (`reuse_window`).
    until: Option<Instant>,
    /// The identity the connection's peer proved (mesh TLS).
    peer: Option<Identity>,
}

struct H2Slot {
    conn: Arc<OnceCell<H2>>,
    used: Instant,
    peer: Option<Identity>,
}

/// One worker's connections, for every engine on the thread (keyed by the
/// engine's id, so two engines in one process never share a connection).
#[derive(Default)]
struct Pools {
    h1: HashMap<(u64, SocketAddr), Vec<IdleH1>>,
    /// By engine and client connection, then endpoint.
    h2: HashMap<(u64, u64), HashMap<SocketAddr, H2Slot>>,
    /// Engines whose sweeper runs on this thread.
    swept: HashSet<u64>,
}

thread_local! {
    static POOLS: RefCell<Pools> = RefCell::default();
}

/// An HTTP/1 connection lent to one exchange; checked back in by the
/// response body when it ended cleanly (`body.rs`).
pub struct Lease {
    key: (u64, SocketAddr),
    tx: H1,
    max_idle: usize,
    peer: Option<Identity>,
    /// How long the upstream keeps the connection idle (`Keep-Alive:
    /// timeout=N` on its last response).
    upstream_idle: Option<Duration>,
}

impl Lease {
    pub(super) fn new(key: (u64, SocketAddr), tx: H1, max_idle: usize, peer: Option<Identity>, upstream_idle: Option<Duration>) -> Lease {
        Lease { key, tx, max_idle, peer, upstream_idle }
    }

    pub fn release(self, clean: bool) {
        // Not ready: the request is still being written (the upstream
        // answered before the whole body arrived, RFC 9110 §15.5.14 allows
        // it). Pooled, the next request, any client's, would wait for a
        // body its client may never finish; dropped, the connection
        // finishes this exchange and closes.
        if !clean || self.tx.is_closed() || !self.tx.is_ready() {
            return;
        }
        let Lease { key, tx, max_idle, peer, upstream_idle } = self;
        let since = Instant::now();
        let window = upstream_idle.map(reuse_window);
        if window == Some(Duration::ZERO) {
            return;
        }
        let _ = POOLS.try_with(|p| {
            let mut p = p.borrow_mut();
            let idle = p.h1.entry(key).or_default();
            if idle.len() < max_idle {
                idle.push(IdleH1 { tx, since, until: window.map(|w| since + w), peer });
            }
        });
    }
}

/// How long a connection whose upstream closes it after `upstream_idle` is
/// reused: a second less (as undici does), or half of a shorter one. A
/// request sent just as the upstream closes the connection would fail
/// after it was written, with no safe retry for a non-idempotent one; a
/// reuse the upstream's clock has not run out on never races its close.
fn reuse_window(upstream_idle: Duration) -> Duration {
    const MARGIN: Duration = Duration::from_secs(1);
    if upstream_idle >= 2 * MARGIN {
        upstream_idle - MARGIN
    } else {
        upstream_idle / 2
    }
}

/// The newest usable idle connection to `key` whose peer is `peer`;
/// closed or expired ones met on the way are dropped, those of another
/// peer are left in place.
pub(super) fn checkout_h1(key: (u64, SocketAddr), peer: Option<&Identity>, idle_timeout: Duration) -> Option<H1> {
    POOLS.with(|p| {
        let mut p = p.borrow_mut();
        let idle = p.h1.get_mut(&key)?;
        while let Some(i) = idle.iter().rposition(|c| c.peer.as_ref() == peer) {
            let c = idle.remove(i);
            if !c.tx.is_closed() && c.since.elapsed() < idle_timeout && c.until.is_none_or(|u| Instant::now() < u) {
                return Some(c.tx);
            }
        }
        None
    })
}

/// The client connection's HTTP/2 connection to `key` with `peer` (a
/// fresh, empty slot when there is none, it closed, or it is to another
/// peer: requests already on that one finish there).
pub(super) fn h2_slot(key: H2Key, peer: Option<&Identity>) -> Arc<OnceCell<H2>> {
    POOLS.with(|p| {
        let mut p = p.borrow_mut();
        let slot = p.h2.entry((key.engine, key.client)).or_default().entry(key.addr).or_insert_with(|| H2Slot {
            conn: Arc::new(OnceCell::new()),
            used: Instant::now(),
            peer: peer.cloned(),
        });
        if slot.conn.get().is_some_and(|c| c.is_closed()) || slot.peer.as_ref() != peer {
            slot.conn = Arc::new(OnceCell::new());
            slot.peer = peer.cloned();
        }
        slot.used = Instant::now();
        slot.conn.clone()
    })
}

/// Drops `cell` from its slot, if it is still the slot's connection.
pub(super) fn forget_h2(key: H2Key, cell: &Arc<OnceCell<H2>>) {
    POOLS.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(slots) = p.h2.get_mut(&(key.engine, key.client)) {
            if slots.get(&key.addr).is_some_and(|s| Arc::ptr_eq(&s.conn, cell)) {
                slots.remove(&key.addr);
            }
        }
    });
}

/// Lets go of the HTTP/2 connections of client connection `client` of
/// `engine` on this worker.
pub(super) fn forget_client(engine: u64, client: u64) {
    let _ = POOLS.try_with(|p| p.borrow_mut().h2.remove(&(engine, client)));
}

/// Starts this worker's sweeper for `engine`, once.
pub(super) fn ensure_sweeper(
    engine: u64,
    idle_timeout: Duration,
    drain: &crate::drain::Drain,
    endpoints: &Arc<crate::http::endpoints::Endpoints>,
) {
    let first = POOLS.with(|p| p.borrow_mut().swept.insert(engine));
    if first {
        tokio::spawn(sweep(engine, idle_timeout, drain.clone(), endpoints.clone()));
    }
}

/// Closes this worker's idle connections of `engine` past `idle_timeout`;
/// once the engine drains, every idle connection at each pass; at the drain
/// deadline everything, and ends. Also forgets the balancer state of
/// Services that left the endpoints table, so it stays bounded by the table.
async fn sweep(engine: u64, idle_timeout: Duration, drain: crate::drain::Drain, endpoints: Arc<crate::http::endpoints::Endpoints>) {
    let period = (idle_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = drain.cut.cancelled() => break,
        }
        let max_age = if drain.stop_accepting.is_cancelled() { Duration::ZERO } else { idle_timeout };
        POOLS.with(|p| {
            let mut p = p.borrow_mut();
            for ((e, _), idle) in p.h1.iter_mut() {
                if *e == engine {
                    idle.retain(|c| !c.tx.is_closed() && c.since.elapsed() < max_age && c.until.is_none_or(|u| Instant::now() < u));
                }
            }
            p.h1.retain(|_, idle| !idle.is_empty());
            for ((e, _), slots) in p.h2.iter_mut() {
                if *e == engine {
                    slots.retain(|_, s| s.used.elapsed() < max_age && !s.conn.get().is_some_and(|c| c.is_closed()));
                }
            }
            p.h2.retain(|_, slots| !slots.is_empty());
        });
        crate::http::balance::retain(engine, &endpoints.load());
    }
    let _ = POOLS.try_with(|p| {
        let mut p = p.borrow_mut();
        p.h1.retain(|(e, _), _| *e != engine);
        p.h2.retain(|(e, _), _| *e != engine);
        p.swept.remove(&engine);
    });
    crate::http::balance::retain(engine, &crate::http::endpoints::EndpointsTable::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_stops_a_second_before_the_upstream_closes_or_halfway_below_two_seconds() {
        assert_eq!(reuse_window(Duration::from_secs(10)), Duration::from_secs(9));
        assert_eq!(reuse_window(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(reuse_window(Duration::from_secs(1)), Duration::from_millis(500));
        assert_eq!(reuse_window(Duration::ZERO), Duration::ZERO);
    }
}
