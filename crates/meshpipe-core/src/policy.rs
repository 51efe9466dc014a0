//! The port policy: which mode (detect, opaque, a declared protocol) and
//! which detect timeout a new connection gets, at any cluster size.
//!
//! The TypeScript policy layer does the hard work (annotations, Kubernetes
//! objects, Linkerd's precedence rules) and hands the engine a table in three
//! parts (spec.rs): ordered `rules`, exact destinations (`addresses`, each
//! pointing at a shared port table), and ordered `fallbackRules`. A lookup is
//! the first match in that order, and no match means `detect` (Linkerd's
//! `unknown`). Its cost does not grow with the number of pods: the rules are
//! compiled into range maps (rules.rs, ranges.rs), the destinations are a
//! hash map by address (exact.rs) whose port tables are binary-searched
//! ranges (ports.rs).
//!
//! Connections read an immutable [`PolicyTable`] snapshot from an `ArcSwap`
//! (no lock). Updates, whole tables or deltas of a few addresses, are applied
//! to the master copy (store.rs) under a mutex on the control path and
//! swapped in atomically: new connections see the new table, connections in
//! flight keep theirs. A rejected update changes nothing, is counted, and its
//! error stays visible in [`PolicySnapshot`] until an update is accepted.

mod exact;
mod ports;
mod ranges;
mod rules;
pub mod spec;
mod store;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use serde::Serialize;

use crate::addr::{normalise, AddrError, TargetAddr};
pub use crate::vocab::{Direction, PortMode};
pub use spec::{AddressSpec, PolicyDelta, PolicyFrameSpec, PolicySpec, PortSpec, PortTableSpec, RuleSpec};
pub use store::PolicyStore;

/// Errors in a policy table or delta handed to the engine. Each names the
/// entry and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {list}[{index}] ({source_name}): {error}")]
    Rule { list: &'static str, index: usize, source_name: String, error: AddrError },
    #[error("policy port table {id}, entry {entry}: {error}")]
    PortTable { id: u32, entry: usize, error: AddrError },
    #[error("policy port table {id}, entry {entry}: source {index} does not exist (the table has {len} sources)")]
    SourceIndex { id: u32, entry: usize, index: u32, len: usize },
    #[error("policy port table {id} is defined twice: a table id is used once until it is dropped")]
    DuplicateTable { id: u32 },
    #[error("policy address {address}: port table {id} is not defined")]
    UnknownTable { address: String, id: u32 },
    #[error("policy address {address:?} is not an IP address: expected e.g. 10.244.1.5 or fd00::5, without a prefix length")]
    Address { address: String },
    #[error("policy delta removes address {address}, which is not in the table")]
    NotInTable { address: String },
    #[error("policy delta drops port table {id}, which is not defined")]
    DropUnknown { id: u32 },
    #[error("policy delta applies to generation {base}, but the engine has generation {current}: send the whole table")]
    Base { base: u64, current: u64 },
}

/// What one new connection gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    pub mode: PortMode,
    /// `None` keeps the direction's default detect timeout.
    pub detect_timeout: Option<Duration>,
}

const DEFAULT: PortPolicy = PortPolicy { mode: PortMode::Detect, detect_timeout: None };

/// Which part of the table decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub enum PolicyMatch {
    Rule,
    Destination,
    FallbackRule,
    Default,
}

/// A decision with its reason (for `meshpipe explain` and debugging; never
/// computed on the connection path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PolicyDecision {
    pub mode: PortMode,
    pub detect_timeout_ms: Option<u64>,
    /// Why, e.g. `opaque: Server shop/db proxyProtocol=opaque`; `default` when nothing matched.
    pub source: String,
    pub matched: PolicyMatch,
    /// The rule's index in `rules` or `fallbackRules`.
    pub index: Option<u32>,
    /// The exact destination's name (e.g. `Pod shop/web-1`).
    pub destination: Option<String>,
}

/// A compiled, immutable policy table.
#[derive(Debug)]
pub struct PolicyTable {
    generation: u64,
    frame: Arc<store::Frame>,
    exact: exact::ExactMap,
    tables: usize,
    sources: usize,
}

impl Default for PolicyTable {
    fn default() -> Self {
        PolicyStore::default().table()
    }
}

impl PolicyTable {
    /// Validates and compiles a whole table (tests and tools; the engine
    /// keeps a [`PolicyStore`] so it can apply deltas).
    pub fn compile(spec: &PolicySpec) -> Result<PolicyTable, PolicyError> {
        Ok(PolicyStore::compile(spec)?.table())
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The decision for a connection in `direction` to `target`. The
    /// connection path: no allocation, no lock, cost independent of the
    /// number of destinations.
    #[inline]
    pub fn lookup(&self, direction: Direction, target: TargetAddr) -> PortPolicy {
        let ip = normalise(target.ip());
        let port = target.port();
        if let Some((_, hit)) = self.frame.rules.lookup(direction, ip, port) {
            return PortPolicy { mode: hit.mode, detect_timeout: hit.detect_timeout };
        }
        if direction == Direction::Outbound {
            if let Some(entry) = self.exact.get(&ip).and_then(|d| d.table.get(port)) {
                return PortPolicy { mode: entry.mode, detect_timeout: self.destination_timeout(entry.mode) };
            }
        }
        match self.frame.fallback.lookup(direction, ip, port) {
            Some((_, hit)) => PortPolicy { mode: hit.mode, detect_timeout: hit.detect_timeout },
            None => DEFAULT,
        }
    }

    fn destination_timeout(&self, mode: PortMode) -> Option<Duration> {
        // Only opaque never reads the client first; a declared protocol is still validated.
        if mode == PortMode::Opaque {
            None
        } else {
            self.frame.destination_timeout
        }
    }

    /// The same decision as [`lookup`](Self::lookup), with its source.
    pub fn explain(&self, direction: Direction, ip: IpAddr, port: u16) -> PolicyDecision {
        let ip = normalise(ip);
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        if let Some((index, hit)) = self.frame.rules.lookup(direction, ip, port) {
            return PolicyDecision {
                mode: hit.mode,
                detect_timeout_ms: ms(hit.detect_timeout),
                source: hit.source.to_string(),
                matched: PolicyMatch::Rule,
                index: Some(index),
                destination: None,
            };
        }
        if direction == Direction::Outbound {
            if let Some(d) = self.exact.get(&ip) {
                if let Some(entry) = d.table.get(port) {
                    return PolicyDecision {
                        mode: entry.mode,
                        detect_timeout_ms: ms(self.destination_timeout(entry.mode)),
                        source: d.table.source(entry).replace("{destination}", &d.name),
                        matched: PolicyMatch::Destination,
                        index: None,
                        destination: Some(d.name.to_string()),
                    };
                }
            }
        }
        if let Some((index, hit)) = self.frame.fallback.lookup(direction, ip, port) {
            return PolicyDecision {
                mode: hit.mode,
                detect_timeout_ms: ms(hit.detect_timeout),
                source: hit.source.to_string(),
                matched: PolicyMatch::FallbackRule,
                index: Some(index),
                destination: None,
            };
        }
        PolicyDecision {
            mode: PortMode::Detect,
            detect_timeout_ms: None,
            source: "default".into(),
            matched: PolicyMatch::Default,
            index: None,
            destination: None,
        }
    }

    /// Exact destination addresses.
    pub fn addresses(&self) -> usize {
        self.exact.len()
    }
}

/// The last rejected update.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PolicyRejection {
    pub generation: u64,
    pub message: String,
}

/// The policy's state and update counters (part of the engine snapshot).
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PolicySnapshot {
    pub generation: u64,
    pub rules: usize,
    pub fallback_rules: usize,
    pub addresses: usize,
    pub tables: usize,
    /// Distinct source strings held.
    pub sources: usize,
    pub updates_applied: u64,
    pub updates_rejected: u64,
    /// The last rejected update, until an update is accepted again.
    pub last_rejection: Option<PolicyRejection>,
}

/// The engine's policy: the snapshot connections read and the master copy
/// updates are applied to.
#[derive(Debug)]
pub struct Policy {
    current: ArcSwap<PolicyTable>,
    store: Mutex<PolicyStore>,
    applied: AtomicU64,
    rejected: AtomicU64,
    last_rejection: Mutex<Option<PolicyRejection>>,
}

impl Policy {
    pub fn new(store: PolicyStore) -> Policy {
        Policy {
            current: ArcSwap::from_pointee(store.table()),
            store: Mutex::new(store),
            applied: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            last_rejection: Mutex::new(None),
        }
    }

    /// The current table (the connection path: one atomic load).
    #[inline]
    pub fn load(&self) -> Guard<Arc<PolicyTable>> {
        self.current.load()
    }

    /// The current table as an owned `Arc` (to keep it beyond a short read).
    pub fn load_full(&self) -> Arc<PolicyTable> {
        self.current.load_full()
    }

    fn lock_store(&self) -> std::sync::MutexGuard<'_, PolicyStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outcome(&self, generation: u64, result: Result<u64, PolicyError>) -> Result<u64, PolicyError> {
        let mut last = self.last_rejection.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(_) => {
                self.applied.fetch_add(1, Relaxed);
                *last = None;
            }
            Err(e) => {
                self.rejected.fetch_add(1, Relaxed);
                *last = Some(PolicyRejection { generation, message: e.to_string() });
            }
        }
        result
    }

    /// Replaces the whole table. Returns its generation.
    pub fn replace(&self, spec: &PolicySpec) -> Result<u64, PolicyError> {
        let result = PolicyStore::compile(spec).map(|store| {
            let mut guard = self.lock_store();
            *guard = store;
            self.current.store(Arc::new(guard.table()));
            guard.generation()
        });
        self.outcome(spec.generation, result)
    }

    /// Applies a delta to the current table, all or nothing. Returns the new generation.
    pub fn update(&self, delta: &PolicyDelta) -> Result<u64, PolicyError> {
        let result = {
            let mut guard = self.lock_store();
            guard.apply(delta).map(|()| {
                self.current.store(Arc::new(guard.table()));
                guard.generation()
            })
        };
        self.outcome(delta.generation, result)
    }

    /// Records an update that never reached the store (e.g. it did not parse).
    pub fn reject(&self, generation: u64, message: String) {
        self.rejected.fetch_add(1, Relaxed);
        *self.last_rejection.lock().unwrap_or_else(|e| e.into_inner()) = Some(PolicyRejection { generation, message });
    }

    pub fn snapshot(&self) -> PolicySnapshot {
        let t = self.load();
        PolicySnapshot {
            generation: t.generation,
            rules: t.frame.rules.len(),
            fallback_rules: t.frame.fallback.len(),
            addresses: t.exact.len(),
            tables: t.tables,
            sources: t.sources,
            updates_applied: self.applied.load(Relaxed),
            updates_rejected: self.rejected.load(Relaxed),
            last_rejection: self.last_rejection.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

#[cfg(test)]
mod tests;
