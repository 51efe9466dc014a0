//! Named targets: a forward whose target is a host name (`db.internal:5432`,
//! a Kubernetes Service name) rather than an address.
//!
//! The engine does no name resolution: the control layer resolves the name
//! (A and AAAA, off the data path), hands the engine the addresses before
//! the listener binds, and pushes a new set whenever the name's records
//! change ([`NamedTarget::set_addrs`], an `ArcSwap`: new connections see it,
//! open ones are untouched). Per connection the engine only picks an
//! address: round robin over the set, so new connections spread over every
//! address, skipping for a while an address that refused a connection
//! (passive health, as nginx's `max_fails`/`fail_timeout`), unless every
//! address is marked. The connect stage (`proxy/dial.rs`) tries the other
//! addresses when the picked one fails.
//!
//! A name that stopped resolving leaves an empty set: each new connection is
//! then refused (reset) and counted (`no_address`, and the accept error
//! `unresolved`), never sent to a stale guess.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::addr::TargetAddr;

/// How long an address that failed a connection is skipped by the round robin.
pub const DOWN_FOR: Duration = Duration::from_secs(10);

/// Errors in a named target's addresses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NamesError {
    #[error("address {0:?} of a named target: expected an IPv4 or IPv6 address")]
    Address(String),
    #[error("no listener {0:?} with a named target (a --forward whose target is a host name)")]
    NoSuchListener(String),
}

/// New addresses for a named target: what `setTargetAddrs` takes.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetAddrsSpec {
    /// The listener whose target is the name.
    pub listener: String,
    /// The name's addresses (IPs, no port), in the order to try them; empty
    /// when the name no longer resolves.
    pub addrs: Vec<String>,
}

/// A named target's state, for the snapshot.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct NameSnapshot {
    pub listener: String,
    pub host: String,
    pub port: u16,
    /// The current addresses (`ip:port`).
    pub addresses: Vec<String>,
    /// Addresses marked as failing (skipped by the round robin for now).
    pub down: Vec<String>,
    /// Connections refused because the name had no address.
    pub no_address: u64,
    /// Connections that reached the target on another address than the one first tried.
    pub failovers: u64,
    /// Connection attempts to one address that failed.
    pub dial_failures: u64,
    /// Address sets received after the first.
    pub updates: u64,
}

/// Parses the addresses of a named target.
pub fn parse_addrs(addrs: &[String]) -> Result<Vec<IpAddr>, NamesError> {
    addrs.iter().map(|a| a.trim().parse::<IpAddr>().map_err(|_| NamesError::Address(a.clone()))).collect()
}

struct Entry {
    addr: SocketAddr,
    /// Milliseconds since the target's creation until which this address is
    /// skipped; 0 = healthy.
    down_until_ms: AtomicU64,
}

/// One immutable address set.
pub struct AddrSet {
    entries: Box<[Entry]>,
}

impl AddrSet {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A host name and port, with the addresses the control layer resolved.
pub struct NamedTarget {
    pub host: Box<str>,
    pub port: u16,
    set: ArcSwap<AddrSet>,
    next: AtomicUsize,
    started: Instant,
    pub no_address: AtomicU64,
    pub failovers: AtomicU64,
    pub dial_failures: AtomicU64,
    pub updates: AtomicU64,
}

impl std::fmt::Debug for NamedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} ({} addresses)", self.host, self.port, self.set.load().len())
    }
}

impl NamedTarget {
    pub fn new(host: &str, port: u16, addrs: &[IpAddr]) -> NamedTarget {
        NamedTarget {
            host: host.into(),
            port,
            set: ArcSwap::from_pointee(AddrSet { entries: addrs.iter().map(|ip| fresh(SocketAddr::new(*ip, port))).collect() }),
            next: AtomicUsize::new(0),
            started: Instant::now(),
            no_address: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            dial_failures: AtomicU64::new(0),
            updates: AtomicU64::new(0),
        }
    }

    /// Replaces the address set; an address still present keeps its mark.
    pub fn set_addrs(&self, addrs: &[IpAddr]) {
        let old = self.set.load();
        let entries = addrs
            .iter()
            .map(|ip| {
                let addr = SocketAddr::new(*ip, self.port);
                let mark = old.entries.iter().find(|e| e.addr == addr).map_or(0, |e| e.down_until_ms.load(Relaxed));
                Entry { addr, down_until_ms: AtomicU64::new(mark) }
            })
            .collect();
        self.set.store(Arc::new(AddrSet { entries }));
        self.updates.fetch_add(1, Relaxed);
    }

    /// The current addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.set.load().entries.iter().map(|e| e.addr).collect()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn is_down(&self, e: &Entry, now: &mut Option<u64>) -> bool {
        let until = e.down_until_ms.load(Relaxed);
        // The clock is read only when some address is marked.
        until != 0 && until > *now.get_or_insert_with(|| self.now_ms())
    }

    /// The address for a new connection: the next in turn that is not marked
    /// down (any, when all are), or `None` when the name has no address.
    pub fn pick(&self) -> Option<TargetAddr> {
        let set = self.set.load();
        let n = set.entries.len();
        if n == 0 {
            self.no_address.fetch_add(1, Relaxed);
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        let mut now = None;
        let healthy = (0..n).map(|i| &set.entries[(start + i) % n]).find(|e| !self.is_down(e, &mut now));
        Some(TargetAddr(healthy.unwrap_or(&set.entries[start % n]).addr))
    }

    /// The addresses to try after `first` failed: the healthy ones in turn,
    /// then those marked down (a marked address may be back).
    pub fn alternatives(&self, first: SocketAddr) -> Vec<SocketAddr> {
        let set = self.set.load();
        let at = set.entries.iter().position(|e| e.addr == first).unwrap_or(0);
        let n = set.entries.len();
        let rotated = (1..n).map(|i| &set.entries[(at + i) % n]).filter(|e| e.addr != first);
        let mut now = None;
        let (down, up): (Vec<&Entry>, Vec<&Entry>) = rotated.partition(|e| self.is_down(e, &mut now));
        up.into_iter().chain(down).map(|e| e.addr).collect()
    }

    /// Marks `addr` as failing for [`DOWN_FOR`].
    pub fn mark_down(&self, addr: SocketAddr) {
        self.dial_failures.fetch_add(1, Relaxed);
        let until = self.now_ms() + DOWN_FOR.as_millis() as u64;
        if let Some(e) = self.set.load().entries.iter().find(|e| e.addr == addr) {
            e.down_until_ms.store(until.max(1), Relaxed);
        }
    }

    /// Clears the mark of an address that accepted a connection.
    pub fn mark_up(&self, addr: SocketAddr) {
        if let Some(e) = self.set.load().entries.iter().find(|e| e.addr == addr) {
            if e.down_until_ms.load(Relaxed) != 0 {
                e.down_until_ms.store(0, Relaxed);
            }
        }
    }

    pub fn snapshot(&self, listener: &str) -> NameSnapshot {
        let set = self.set.load();
        let mut now = None;
        NameSnapshot {
            listener: listener.to_string(),
            host: self.host.to_string(),
            port: self.port,
            addresses: set.entries.iter().map(|e| e.addr.to_string()).collect(),
            down: set.entries.iter().filter(|e| self.is_down(e, &mut now)).map(|e| e.addr.to_string()).collect(),
            no_address: self.no_address.load(Relaxed),
            failovers: self.failovers.load(Relaxed),
            dial_failures: self.dial_failures.load(Relaxed),
            updates: self.updates.load(Relaxed),
        }
    }
}

fn fresh(addr: SocketAddr) -> Entry {
    Entry { addr, down_until_ms: AtomicU64::new(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn round_robin_spreads_and_skips_marked_addresses() {
        let t = NamedTarget::new("db", 5432, &ips(&["10.0.0.1", "10.0.0.2", "::1"]));
        let picks: Vec<String> = (0..6).map(|_| t.pick().unwrap().to_string()).collect();
        assert_eq!(picks, ["10.0.0.1:5432", "10.0.0.2:5432", "[::1]:5432", "10.0.0.1:5432", "10.0.0.2:5432", "[::1]:5432"]);
        t.mark_down("10.0.0.2:5432".parse().unwrap());
        let picks: Vec<String> = (0..4).map(|_| t.pick().unwrap().to_string()).collect();
        assert!(!picks.contains(&"10.0.0.2:5432".to_string()), "{picks:?}");
        assert_eq!(t.snapshot("l").down, ["10.0.0.2:5432"]);
        // The alternatives put the marked address last.
        assert_eq!(t.alternatives("10.0.0.1:5432".parse().unwrap()), ["[::1]:5432".parse().unwrap(), "10.0.0.2:5432".parse().unwrap()]);
        t.mark_up("10.0.0.2:5432".parse().unwrap());
        assert!(t.snapshot("l").down.is_empty());
    }

    #[test]
    fn all_marked_still_picks_and_empty_counts() {
        let t = NamedTarget::new("db", 80, &ips(&["10.0.0.1"]));
        t.mark_down("10.0.0.1:80".parse().unwrap());
        assert_eq!(t.pick().unwrap().to_string(), "10.0.0.1:80", "a marked address is better than none");
        t.set_addrs(&[]);
        assert_eq!(t.pick(), None);
        assert_eq!(t.snapshot("l").no_address, 1);
        t.set_addrs(&ips(&["10.0.0.3"]));
        assert_eq!(t.pick().unwrap().to_string(), "10.0.0.3:80");
        assert_eq!(t.snapshot("l").updates, 2);
    }

    #[test]
    fn bad_addresses_are_named() {
        assert_eq!(parse_addrs(&["10.0.0.1".into(), "db".into()]), Err(NamesError::Address("db".into())));
    }
}
