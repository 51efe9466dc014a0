//! The endpoints table: Service address (cluster IP and port) → the
//! addresses of its ready endpoints, for per-request balancing (balance.rs).
//!
//! Discovery (the Kubernetes EndpointSlice watch, manifests, or a static
//! file; compiled by the TypeScript policy worker) hands the engine the whole
//! table once and then changes ([`EndpointsUpdate`]): only the Services that
//! changed. The table is immutable and swapped whole through an `ArcSwap`, so
//! a request's lookup is one lock-free load and one hash probe; an update
//! builds the next table sharing every untouched entry (`Arc`). A request in
//! flight keeps the endpoint and the connection it has: updates never cut it.
//!
//! Updates follow the port policy's rules (policy.rs): a change applies only
//! to the generation it names as its `base` (otherwise the worker and the
//! engine are out of step and the worker must send the whole table), any bad
//! entry refuses the whole update, the table in force stays, and a refusal is
//! counted and kept visible in [`EndpointsSnapshot`] until an update is
//! accepted again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use serde::{Deserialize, Serialize};

use crate::policy::PolicyRejection;

/// Why an endpoints update was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointsError {
    #[error("endpoints of {service:?} ({source_name}): {reason}")]
    Entry { service: String, source_name: String, reason: String },
    #[error("endpoints update applies to generation {base}, but the engine has generation {current}: send the whole table")]
    Base { base: u64, current: u64 },
}

/// One Service's endpoints as the TypeScript layer sends them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEndpointsSpec {
    /// The Service address: `ip:port` (cluster IP and Service port).
    pub service: String,
    /// Ready endpoint addresses (`ip:port`, the target port).
    pub endpoints: Vec<String>,
    /// Where it came from (`Service ns/name`, `FILE:line`).
    pub source: String,
}

/// A change to the endpoints table: with `replace`, the table becomes
/// exactly `upsert` (whatever the engine had); otherwise it applies to
/// generation `base` only: `upsert` entries replace or add Services,
/// `remove` drops Services, the rest is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointsUpdate {
    pub generation: u64,
    /// The generation a change applies to (ignored with `replace`).
    #[serde(default)]
    pub base: u64,
    #[serde(default)]
    pub replace: bool,
    #[serde(default)]
    pub upsert: Vec<ServiceEndpointsSpec>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// One Service's endpoints, compiled.
#[derive(Debug, PartialEq, Eq)]
pub struct ServiceEndpoints {
    pub endpoints: Vec<SocketAddr>,
    pub source: Arc<str>,
}

/// The compiled, immutable endpoints table.
#[derive(Debug, Default)]
pub struct EndpointsTable {
    generation: u64,
    services: HashMap<SocketAddr, Arc<ServiceEndpoints>>,
}

fn parse_addr(s: &str) -> Option<SocketAddr> {
    SocketAddr::from_str(s.trim()).ok().map(|a| SocketAddr::new(crate::addr::normalise(a.ip()), a.port()))
}

impl EndpointsTable {
    /// The next table: `self` with `update` applied. Any bad entry, or a
    /// change meant for another generation, refuses the whole update (the
    /// table in force stays).
    pub fn apply(&self, update: &EndpointsUpdate) -> Result<EndpointsTable, EndpointsError> {
        if !update.replace && update.base != self.generation {
            return Err(EndpointsError::Base { base: update.base, current: self.generation });
        }
        let mut services = if update.replace { HashMap::with_capacity(update.upsert.len()) } else { self.services.clone() };
        for s in &update.remove {
            let bad = |reason: &str| EndpointsError::Entry { service: s.clone(), source_name: "remove".into(), reason: reason.into() };
            services.remove(&parse_addr(s).ok_or_else(|| bad("expected ip:port"))?);
        }
        for e in &update.upsert {
            let bad = |reason: String| EndpointsError::Entry { service: e.service.clone(), source_name: e.source.clone(), reason };
            let service = parse_addr(&e.service).ok_or_else(|| bad("the service address must be ip:port".into()))?;
            let mut endpoints = Vec::with_capacity(e.endpoints.len());
            for a in &e.endpoints {
                let addr = parse_addr(a).ok_or_else(|| bad(format!("endpoint {a:?}: expected ip:port")))?;
                if addr.port() == 0 {
                    return Err(bad(format!("endpoint {a:?}: port 0")));
                }
                if !endpoints.contains(&addr) {
                    endpoints.push(addr);
                }
            }
            services.insert(service, Arc::new(ServiceEndpoints { endpoints, source: Arc::from(e.source.as_str()) }));
        }
        Ok(EndpointsTable { generation: update.generation, services })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The request path: one hash probe (none when the table is empty).
    #[inline]
    pub fn get(&self, service: SocketAddr) -> Option<&Arc<ServiceEndpoints>> {
        if self.services.is_empty() {
            return None;
        }
        self.services.get(&SocketAddr::new(crate::addr::normalise(service.ip()), service.port()))
    }
}

/// The endpoints table's state and update counters (part of the engine snapshot).
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct EndpointsSnapshot {
    pub generation: u64,
    /// Services in the table.
    pub services: usize,
    pub updates_applied: u64,
    pub updates_rejected: u64,
    /// The last rejected update, until an update is accepted again.
    pub last_rejection: Option<PolicyRejection>,
}

/// The engine's endpoints: the table requests read and its update counters.
#[derive(Debug, Default)]
pub struct Endpoints {
    current: ArcSwap<EndpointsTable>,
    /// Serialises updates (the control path), so two never build on the same table.
    write: Mutex<()>,
    applied: AtomicU64,
    rejected: AtomicU64,
    last_rejection: Mutex<Option<PolicyRejection>>,
}

impl Endpoints {
    /// The table in force (the request path: one atomic load).
    #[inline]
    pub fn load(&self) -> Guard<Arc<EndpointsTable>> {
        self.current.load()
    }

    /// Applies an update atomically, or counts and records its refusal.
    /// Returns the new generation.
    pub fn update(&self, update: &EndpointsUpdate) -> Result<u64, EndpointsError> {
        let result = {
            let _write = self.write.lock().unwrap_or_else(|e| e.into_inner());
            self.current.load().apply(update).map(|next| {
                let generation = next.generation();
                self.current.store(Arc::new(next));
                generation
            })
        };
        let mut last = self.last_rejection.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(_) => {
                self.applied.fetch_add(1, Relaxed);
                *last = None;
            }
            Err(e) => {
                self.rejected.fetch_add(1, Relaxed);
                *last = Some(PolicyRejection { generation: update.generation, message: e.to_string() });
            }
        }
        result
    }

    /// Records an update that never reached the table (e.g. it did not parse).
    pub fn reject(&self, generation: u64, message: String) {
        self.rejected.fetch_add(1, Relaxed);
        *self.last_rejection.lock().unwrap_or_else(|e| e.into_inner()) = Some(PolicyRejection { generation, message });
    }

    pub fn snapshot(&self) -> EndpointsSnapshot {
        let t = self.load();
        EndpointsSnapshot {
            generation: t.generation(),
            services: t.len(),
            updates_applied: self.applied.load(Relaxed),
            updates_rejected: self.rejected.load(Relaxed),
            last_rejection: self.last_rejection.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(service: &str, eps: &[&str]) -> ServiceEndpointsSpec {
        ServiceEndpointsSpec { service: service.into(), endpoints: eps.iter().map(|s| s.to_string()).collect(), source: "test".into() }
    }

    #[test]
    fn updates_are_incremental_and_validated() {
        let t = EndpointsTable::default();
        let t = t
            .apply(&EndpointsUpdate {
                generation: 1,
                replace: true,
                upsert: vec![spec("10.96.0.1:80", &["10.0.0.1:8080", "10.0.0.2:8080"]), spec("10.96.0.2:80", &["10.0.0.3:80"])],
                ..Default::default()
            })
            .unwrap();
        let kept = t.get("10.96.0.2:80".parse().unwrap()).unwrap().clone();
        let t2 = t
            .apply(&EndpointsUpdate {
                generation: 2,
                base: 1,
                upsert: vec![spec("10.96.0.1:80", &["10.0.0.9:8080"])],
                ..Default::default()
            })
            .unwrap();
        assert!(Arc::ptr_eq(&kept, t2.get("10.96.0.2:80".parse().unwrap()).unwrap()), "untouched entries are shared");
        assert_eq!(t2.get("10.96.0.1:80".parse().unwrap()).unwrap().endpoints, vec!["10.0.0.9:8080".parse().unwrap()]);
        let t3 = t2.apply(&EndpointsUpdate { generation: 3, base: 2, remove: vec!["10.96.0.1:80".into()], ..Default::default() }).unwrap();
        assert_eq!((t3.len(), t3.generation()), (1, 3));
        let err = t3
            .apply(&EndpointsUpdate { generation: 4, base: 3, upsert: vec![spec("10.96.0.1:80", &["nope"])], ..Default::default() })
            .unwrap_err();
        assert!(err.to_string().contains("\"nope\""), "{err}");
        // IPv4-mapped IPv6 finds the IPv4 entry.
        assert!(t3.get("[::ffff:10.96.0.2]:80".parse().unwrap()).is_some());
    }

    #[test]
    fn a_change_for_another_generation_is_refused_and_a_whole_table_is_not() {
        let e = Endpoints::default();
        let whole = |generation| EndpointsUpdate {
            generation,
            replace: true,
            upsert: vec![spec("10.96.0.1:80", &["10.0.0.1:80"])],
            ..Default::default()
        };
        assert_eq!(e.update(&whole(5)), Ok(5));
        let stale = EndpointsUpdate { generation: 4, base: 3, remove: vec!["10.96.0.1:80".into()], ..Default::default() };
        assert_eq!(e.update(&stale), Err(EndpointsError::Base { base: 3, current: 5 }));
        let s = e.snapshot();
        assert_eq!((s.generation, s.services, s.updates_applied, s.updates_rejected), (5, 1, 1, 1));
        assert!(s.last_rejection.as_ref().unwrap().message.contains("send the whole table"), "{:?}", s.last_rejection);
        // A whole table applies whatever the engine had, and clears the rejection.
        assert_eq!(e.update(&whole(2)), Ok(2));
        assert!(e.snapshot().last_rejection.is_none());
        e.reject(7, "endpoints update: not JSON".into());
        assert_eq!(e.snapshot().updates_rejected, 2);
    }
}
