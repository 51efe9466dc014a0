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
//!
//! The table also holds the mesh (spec.rs): [`PolicyTable::route`] gives a
//! new connection its port policy and, outbound, the meshed peer behind its
//! address from the same probe of the exact destinations;
//! [`PolicyTable::authz`] is this workload's inbound authorization.

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
use crate::authz::{AuthzError, AuthzTable, DecisionInfo, PortAuthzSpec};
use crate::destinations::{Destination, DestinationsError, MeshPeerSpec};
use crate::identity::Identity;
pub use crate::vocab::{Direction, PortMode};
pub use spec::{AddressSpec, PolicyDelta, PolicyFrameSpec, PolicySpec, PortSpec, PortTableSpec, RuleSpec};
pub use spec::{AuthzSpec, DestinationSpec};
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
    #[error("policy port table {id}: meshed peer: {reason}")]
    MeshPeer { id: u32, reason: String },
    #[error("policy meshDestinations: {0}")]
    MeshDestination(#[from] DestinationsError),
    #[error("policy authz: {0}")]
    Authz(#[from] AuthzError),
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
    /// Outbound: the meshed peer behind the address (mutual TLS through
    /// its tunnel port, whatever the port's mode), if any.
    pub mesh: Option<MeshPeerSpec>,
    /// Inbound: who may connect to the port, in the order the rules are
    /// tried (the port's Server, or the workload's default policy).
    pub authz: Option<PortAuthzSpec>,
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
        let exact = if direction == Direction::Outbound { self.exact.get(&ip) } else { None };
        self.decide(direction, ip, target.port(), exact)
    }

    /// What a new connection gets: its port policy and, outbound, the
    /// meshed peer behind its address (cloned: the connection keeps it
    /// across awaits, not the table). One probe of the exact destinations
    /// serves both; the static meshed destinations are probed only when
    /// there are any.
    #[inline]
    pub fn route(&self, direction: Direction, target: TargetAddr) -> (PortPolicy, Option<Arc<Destination>>) {
        let ip = normalise(target.ip());
        if direction == Direction::Inbound {
            return (self.decide(direction, ip, target.port(), None), None);
        }
        let exact = self.exact.get(&ip);
        (self.decide(direction, ip, target.port(), exact), self.peer_of(ip, exact).cloned())
    }

    /// The meshed peer behind an outbound address, if any (the connector
    /// for stages outside the pipeline, e.g. HTTP to a meshed pod).
    pub fn mesh_peer(&self, ip: IpAddr) -> Option<Arc<Destination>> {
        let ip = normalise(ip);
        self.peer_of(ip, self.exact.get(&ip)).cloned()
    }

    #[inline]
    fn decide(&self, direction: Direction, ip: IpAddr, port: u16, exact: Option<&exact::Destination>) -> PortPolicy {
        if let Some((_, hit)) = self.frame.rules.lookup(direction, ip, port) {
            return PortPolicy { mode: hit.mode, detect_timeout: hit.detect_timeout };
        }
        if let Some(entry) = exact.and_then(|d| d.table.get(port)) {
            return PortPolicy { mode: entry.mode, detect_timeout: self.destination_timeout(entry.mode) };
        }
        match self.frame.fallback.lookup(direction, ip, port) {
            Some((_, hit)) => PortPolicy { mode: hit.mode, detect_timeout: hit.detect_timeout },
            None => DEFAULT,
        }
    }

    /// A static single address (explicit) wins over the pod's own peer,
    /// which wins over a static network.
    #[inline]
    fn peer_of<'a>(&'a self, ip: IpAddr, exact: Option<&'a exact::Destination>) -> Option<&'a Arc<Destination>> {
        let fixed = if self.frame.mesh.is_empty() { None } else { self.frame.mesh.lookup_entry(ip) };
        if let Some((d, true)) = fixed {
            return Some(d);
        }
        exact.and_then(|d| d.table.mesh.as_ref()).or(fixed.map(|(d, _)| d))
    }

    /// This workload's inbound authorization.
    #[inline]
    pub fn authz(&self) -> &AuthzTable {
        &self.frame.authz
    }

    /// The authorization decision for one client (explain and tests; the
    /// data path uses [`AuthzTable::decide`]).
    pub fn authorize(&self, port: u16, client: Option<&Identity>, client_ip: IpAddr) -> DecisionInfo {
        DecisionInfo::from(self.frame.authz.authorize(port, client, normalise(client_ip)))
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
        let mut decision = self.explain_mode(direction, ip, port);
        match direction {
            Direction::Outbound => {
                let exact = self.exact.get(&ip);
                let name = exact.map_or_else(|| ip.to_string(), |d| d.name.to_string());
                decision.mesh = self.peer_of(ip, exact).map(|p| p.info(&name));
            }
            Direction::Inbound => decision.authz = Some(self.frame.authz.describe(port)),
        }
        decision
    }

    fn explain_mode(&self, direction: Direction, ip: IpAddr, port: u16) -> PolicyDecision {
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        if let Some((index, hit)) = self.frame.rules.lookup(direction, ip, port) {
            return PolicyDecision {
                mode: hit.mode,
                detect_timeout_ms: ms(hit.detect_timeout),
                source: hit.source.to_string(),
                matched: PolicyMatch::Rule,
                index: Some(index),
                destination: None,
                mesh: None,
                authz: None,
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
                        mesh: None,
                        authz: None,
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
                mesh: None,
                authz: None,
            };
        }
        PolicyDecision {
            mode: PortMode::Detect,
            detect_timeout_ms: None,
            source: "default".into(),
            matched: PolicyMatch::Default,
            index: None,
            destination: None,
            mesh: None,
            authz: None,
        }
    }

    /// Exact destination addresses.
    pub fn addresses(&self) -> usize {
        self.exact.len()
    }

    /// Meshed destinations: exact addresses with a peer, and static entries.
    pub fn meshed(&self) -> usize {
        self.exact.meshed() + self.frame.mesh.len()
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
    /// Meshed destinations (pod addresses with a peer, and static entries).
    pub meshed: usize,
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
            meshed: t.meshed(),
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
