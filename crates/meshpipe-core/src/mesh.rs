//! The engine's mesh state: this proxy's identity (the mesh TLS configs
//! built from it) and the mesh counters. Every connection reads the identity
//! lock-free (`ArcSwap`); [`Mesh::set_identity`] installs or replaces it at
//! run time: connections that start afterwards use the new certificate, open
//! ones keep the one they began with (they hold their own `Arc<TlsState>`).
//!
//! Which destinations are meshed and who may connect inbound are part of the
//! policy table (policy.rs: a port table's meshed peer, the frame's
//! authorization and static destinations), so they follow the policy's one
//! update path (whole tables, then deltas).
//!
//! Without an identity the proxy originates and terminates no mesh TLS:
//! meshed destinations get plaintext (`no_tls_reason="disabled"`) and a
//! direct connection to the inbound port is refused as before.

mod metrics;

pub use metrics::{AuthzSnapshot, HandshakeErrorSnapshot, MeshMetrics, MeshSnapshot, TunnelError, TunnelErrorSnapshot};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

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
    pub metrics: MeshMetrics,
}

impl Mesh {
    pub fn new(max_series: usize) -> Mesh {
        Mesh { tls: ArcSwapOption::empty(), generation: AtomicU64::new(0), metrics: MeshMetrics::new(max_series) }
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

    /// Everything the mesh counts, for one scrape.
    pub fn snapshot(&self) -> MeshSnapshot {
        let tls = self.tls();
        self.metrics.snapshot(tls.as_ref().map(|t| t.info().clone()), tls.as_ref().map_or(0, |t| t.generation()))
    }
}
