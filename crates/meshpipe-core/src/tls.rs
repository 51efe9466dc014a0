//! Mesh TLS: the rustls configurations two meshpipe proxies use between
//! them, and the handshakes.
//!
//! TLS 1.3 only (RFC 8446; rustls is built without TLS 1.2), with the
//! aws-lc-rs provider, ECDSA/Ed25519/RSA signatures as the provider offers
//! them. Both ends authenticate (mutual TLS):
//!
//! - **Client** ([`TlsState::client_config`]): one config per expected peer
//!   identity. It sends the peer's identity as SNI ([`Identity::server_name`]),
//!   verifies the peer's chain against the trust anchors and then requires the
//!   expected identity among the leaf's DNS or URI SANs (`tls/verify.rs`), and
//!   presents this proxy's certificate. For the tunnel it offers ALPN
//!   `transport.l5d.io/v1`. Session resumption is off, as in Linkerd and
//!   ztunnel: certificates rotate daily and a resumed session would skip
//!   the client-certificate check the server's authorization relies on.
//! - **Server** ([`TlsState::server_config`]): requires a client certificate
//!   chaining to the anchors, presents this proxy's certificate whatever the
//!   SNI (the caller routes on SNI before handing the stream over), offers
//!   ALPN `transport.l5d.io/v1`, issues no session tickets. The client's
//!   identity is read from its verified leaf after the handshake.
//!
//! [`MeshTls`] holds the current [`TlsState`] in an `ArcSwap`: a reload of
//! the certificate swaps in a new state atomically; connections load the
//! state once when they start, so open connections keep the one they began
//! with and no lock is taken per connection. The handshake helpers with
//! timeouts and typed, countable failure reasons are in `tls/handshake.rs`.

mod cache;
mod handshake;
mod verify;

pub use handshake::{accept, connect, connect_with_first, Accepted, AlpnRule, Connected, HandshakeError, HandshakeFailure};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::identity::material::{IdentityInfo, IdentityMaterial};
use crate::identity::Identity;
use crate::transport_header::ALPN;

/// Why TLS configs could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust anchor {index} cannot be used: {reason}")]
    Anchor { index: usize, reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider of the mesh: aws-lc-rs with its default key
/// exchange groups (X25519 first) and cipher suites, TLS 1.3 only, with
/// TLS_AES_128_GCM_SHA256 preferred: where the CPU has AES and SHA
/// instructions (the x86-64 and Arm servers a mesh runs on) it is the
/// cheapest both for the handshake (SHA-256 in hardware where SHA-384 is
/// not) and for the records. AES-256-GCM and ChaCha20-Poly1305 stay
/// offered and accepted (Linkerd's proxy offers ChaCha20-Poly1305 and
/// AES-256-GCM; the client's preference decides, RFC 8446 §4.1.1).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::aws_lc_rs::cipher_suite::{
                TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
            };
            let mut p = rustls::crypto::aws_lc_rs::default_provider();
            p.cipher_suites = vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256];
            Arc::new(p)
        })
        .clone()
}

/// SHA-256 (keys of the verified-chain cache), the provider's own.
fn sha256() -> &'static dyn rustls::crypto::hash::Hash {
    // Evaluated at compile time: the suite is a TLS 1.3 suite.
    const SUITE: &rustls::Tls13CipherSuite = match rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13() {
        Some(s) => s,
        None => panic!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite"),
    };
    SUITE.common.hash_provider
}

/// Whether a client offers the tunnel's ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAlpn {
    /// Offer `transport.l5d.io/v1` (to a peer's tunnel port).
    Tunnel,
    /// Offer nothing (mesh TLS to the original port, SNI-routed by the peer).
    None,
}

/// One identity's TLS configuration: immutable once built.
pub struct TlsState {
    /// Unique per state (its anchors): keys of the verified-chain cache.
    id: u64,
    identity: Identity,
    /// The SNI a peer sends to reach this proxy (`Identity::server_name`).
    server_name: String,
    /// The leaf's serial, shared by every connection's facts.
    serial: Arc<str>,
    info: IdentityInfo,
    not_after: SystemTime,
    generation: u64,
    server: Arc<ServerConfig>,
    /// A client config with no peer verifier yet: `client_config` derives
    /// one per expected identity from it.
    client_base: ClientConfig,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState").field("identity", &self.identity).field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl TlsState {
    /// Builds the configs for `material`.
    pub fn new(material: &IdentityMaterial, generation: u64) -> Result<TlsState, TlsError> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        for (index, der) in material.anchors.iter().enumerate() {
            roots.add(der.clone()).map_err(|e| TlsError::Anchor { index: index + 1, reason: e.to_string() })?;
        }
        let roots = Arc::new(roots);
        let certified = Arc::new(CertifiedKey::new(material.chain.clone(), material.key.clone()));

        static IDS: AtomicU64 = AtomicU64::new(1);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let webpki = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
        let client_verifier = Arc::new(verify::CachedClientVerifier::new(webpki, id));
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified.clone())));
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;

        // The verifier is replaced per peer; this one refuses everything, so
        // the base can never be used by mistake.
        let refuse = Arc::new(verify::PeerVerifier::new(roots.clone(), provider.clone(), id, None));
        let mut client_base = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(refuse)
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        client_base.resumption = Resumption::disabled();

        let info = material.info();
        Ok(TlsState {
            id,
            identity: material.identity.clone(),
            server_name: material.identity.server_name(),
            serial: Arc::from(info.serial.as_str()),
            info,
            not_after: material.leaf.not_after,
            generation,
            server: Arc::new(server),
            client_base,
            roots,
        })
    }

    /// This proxy's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The SNI that routes a connection to this proxy's own TLS.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The serial of this proxy's certificate.
    pub fn serial(&self) -> &Arc<str> {
        &self.serial
    }

    /// Serial, validity and names of the certificate in use (for metrics).
    pub fn info(&self) -> &IdentityInfo {
        &self.info
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Which load this state came from (1 for the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The server config (client certificates required, ALPN offered).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A client config that accepts only a peer proving `peer`.
    pub fn client_config(&self, peer: &Identity, alpn: ClientAlpn) -> Arc<ClientConfig> {
        let mut config = self.client_base.clone();
        config.dangerous().set_certificate_verifier(Arc::new(verify::PeerVerifier::new(
            self.roots.clone(),
            provider(),
            self.id,
            Some(peer.clone()),
        )));
        if alpn == ClientAlpn::Tunnel {
            config.alpn_protocols = vec![ALPN.to_vec()];
        }
        Arc::new(config)
    }
}

/// The current TLS state, swappable while connections run.
pub struct MeshTls {
    current: ArcSwap<TlsState>,
    generation: AtomicU64,
}

impl MeshTls {
    pub fn new(material: &IdentityMaterial) -> Result<MeshTls, TlsError> {
        let state = TlsState::new(material, 1)?;
        Ok(MeshTls { current: ArcSwap::from_pointee(state), generation: AtomicU64::new(1) })
    }

    /// Swaps in a new identity for new connections; returns its generation.
    /// On error the current state stays.
    pub fn reload(&self, material: &IdentityMaterial) -> Result<u64, TlsError> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let state = TlsState::new(material, generation)?;
        self.current.store(Arc::new(state));
        tracing::debug!(generation, identity = %material.identity, "mesh TLS identity swapped");
        Ok(generation)
    }

    /// The state new connections use (lock-free).
    pub fn current(&self) -> Arc<TlsState> {
        self.current.load_full()
    }
}
