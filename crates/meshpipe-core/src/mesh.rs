//! The engine's mesh state: this proxy's identity (the mesh TLS configs
//! built from it), the meshed-destinations index, the inbound authorization
//! table and the mesh counters. Every connection reads them lock-free
//! (`ArcSwap`); the control layer replaces them at run time:
//!
//! - [`Mesh::set_identity`] installs or replaces the identity: connections
//!   that start afterwards use the new certificate, open ones keep the one
//!   they began with (they hold their own `Arc<TlsState>`).
//! - [`Mesh::set_destinations`] / [`Mesh::update_destinations`]: the first
//!   table, then incremental changes (`destinations/index.rs`).
//! - [`Mesh::set_authz`]: the workload's authorization table (small: one
//!   workload's ports), replaced whole.
//!
//! Without an identity the proxy originates and terminates no mesh TLS:
//! meshed destinations get plaintext (`no_tls_reason="disabled"`) and a
//! direct connection to the inbound port is refused as before.

mod metrics;

pub use metrics::{AuthzSnapshot, HandshakeErrorSnapshot, MeshMetrics, MeshSnapshot, TunnelError, TunnelErrorSnapshot};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::authz::{AuthzSpec, AuthzTable};
use crate::destinations::{DestinationIndex, DestinationsSpec, DestinationsUpdate};
use crate::identity::material::{IdentityInfo, IdentityMaterial};
use crate::tls::{TlsError, TlsState};

/// What installing an identity did (returned to the control layer).
#[derive(Clone, Debug, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct IdentityInstalled {
    pub generation: u64,
    pub info: IdentityInfo,
}

/// See the module doc.
pub struct Mesh {
    tls: ArcSwapOption<TlsState>,
    generation: AtomicU64,
    pub destinations: DestinationIndex,
    authz: ArcSwap<AuthzTable>,
    pub metrics: MeshMetrics,
}

impl Mesh {
    pub fn new(max_series: usize) -> Mesh {
        Mesh {
            tls: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            destinations: DestinationIndex::default(),
            // Linkerd's cluster default until the control layer sends the
            // workload's table: everything is allowed (`all-unauthenticated`).
            authz: ArcSwap::from_pointee(AuthzTable::allow_all()),
            metrics: MeshMetrics::new(max_series),
        }
    }

    /// The identity's TLS configs new connections use, if any.
    pub fn tls(&self) -> Option<Arc<TlsState>> {
        self.tls.load_full()
    }

    /// Installs (or replaces) this proxy's identity; returns the new
    /// generation. On error the current identity stays.
    pub fn set_identity(&self, material: &IdentityMaterial) -> Result<(u64, IdentityInfo), TlsError> {
        let generation = self.generation.fetch_add(1, Relaxed) + 1;
        let state = TlsState::new(material, generation)?;
        let info = state.info().clone();
        self.tls.store(Some(Arc::new(state)));
        tracing::debug!(generation, identity = %material.identity, serial = %info.serial, "mesh identity installed");
        Ok((generation, info))
    }

    /// The authorization table new connections are decided by.
    pub fn authz(&self) -> arc_swap::Guard<Arc<AuthzTable>> {
        self.authz.load()
    }

    pub fn set_authz(&self, spec: &AuthzSpec) -> Result<u64, crate::authz::AuthzError> {
        let table = AuthzTable::from_spec(spec)?;
        let generation = table.generation();
        self.authz.store(Arc::new(table));
        Ok(generation)
    }

    pub fn set_destinations(&self, spec: &DestinationsSpec) -> Result<u64, crate::destinations::DestinationsError> {
        self.destinations.replace(spec)?;
        Ok(spec.generation)
    }

    pub fn update_destinations(&self, update: &DestinationsUpdate) -> Result<u64, crate::destinations::DestinationsError> {
        self.destinations.update(update)?;
        Ok(update.generation)
    }

    /// Everything the mesh counts, for one scrape.
    pub fn snapshot(&self) -> MeshSnapshot {
        let tls = self.tls();
        self.metrics.snapshot(
            tls.as_ref().map(|t| t.info().clone()),
            tls.as_ref().map_or(0, |t| t.generation()),
            self.destinations.len() as u64,
            self.destinations.generation(),
            self.authz.load().generation(),
        )
    }
}
