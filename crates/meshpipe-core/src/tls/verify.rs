//! The client side's check of a mesh peer: the certificate chain must lead
//! to one of the trust anchors (RFC 5280 §6 path validation, done by
//! webpki for TLS server use), and the leaf must name the identity the
//! client expects among its DNS or URI SANs. The SNI that was sent plays no
//! part: a peer is who its certificate says, not what the client asked for.
//!
//! An identity mismatch is reported as rustls's `NotValidForName` carrying an
//! [`IdentityMismatch`] (the expected identity and the names found), so the
//! handshake helper can count it apart from an untrusted chain.
//!
//! Both the client's check of the server and the server's check of the
//! client ([`CachedClientVerifier`], around webpki's client verifier)
//! remember chains they verified (`tls/cache.rs`); the peer's signature over
//! the handshake is verified every time.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore, SignatureScheme};

use super::cache::{self, Key, Usage};
use crate::identity::cert::CertFacts;
use crate::identity::Identity;

/// The peer proved a valid chain but not the expected identity.
#[derive(Debug, thiserror::Error)]
#[error("the peer's certificate does not name {expected} (its SANs: {found})")]
pub struct IdentityMismatch {
    pub expected: Identity,
    pub found: String,
}

/// Remembers a chain that just verified (parsing its certificates once);
/// returns the leaf's facts. A certificate our parser cannot read is not
/// remembered (the handshake then fails on it anyway).
fn remember(key: Key, end_entity: &[u8], intermediates: &[CertificateDer<'_>]) -> Result<Arc<CertFacts>, Error> {
    let leaf = Arc::new(CertFacts::parse(end_entity).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?);
    let mut inter = Vec::with_capacity(intermediates.len());
    for c in intermediates {
        inter.push(CertFacts::parse(c).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?);
    }
    cache::remember(key, leaf.clone(), &inter);
    Ok(leaf)
}

/// Verifies a mesh peer's certificate for one expected identity.
#[derive(Debug)]
pub(crate) struct PeerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// The verifying [`super::TlsState`]'s id (its anchors): the cache key's.
    state: u64,
    /// None: refuse every peer (the base config's placeholder).
    expected: Option<Identity>,
}

impl PeerVerifier {
    pub(crate) fn new(roots: Arc<RootCertStore>, provider: Arc<CryptoProvider>, state: u64, expected: Option<Identity>) -> PeerVerifier {
        PeerVerifier { roots, provider, state, expected }
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(expected) = &self.expected else {
            return Err(Error::General("mesh TLS client config used without an expected peer identity".into()));
        };
        let key = Key::new(self.state, Usage::Server, end_entity, intermediates);
        let facts = match cache::lookup(&key, now) {
            Some(facts) => facts,
            None => {
                let cert = ParsedCertificate::try_from(end_entity)?;
                verify_server_cert_signed_by_trust_anchor(
                    &cert,
                    &self.roots,
                    intermediates,
                    now,
                    self.provider.signature_verification_algorithms.all,
                )?;
                remember(key, end_entity, intermediates)?
            }
        };
        if facts.names(expected) {
            return Ok(ServerCertVerified::assertion());
        }
        let found = if facts.sans.is_empty() {
            "none".to_string()
        } else {
            facts.sans.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>().join(", ")
        };
        let mismatch = IdentityMismatch { expected: expected.clone(), found };
        Err(Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(mismatch)))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // Unreachable with a TLS 1.3-only config; kept correct regardless.
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The server's check of a client: webpki's client verifier (the chain to
/// the anchors, for client authentication), with verified chains
/// remembered.
#[derive(Debug)]
pub(crate) struct CachedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    state: u64,
}

impl CachedClientVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>, state: u64) -> CachedClientVerifier {
        CachedClientVerifier { inner, state }
    }
}

impl ClientCertVerifier for CachedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let key = Key::new(self.state, Usage::Client, end_entity, intermediates);
        if cache::lookup(&key, now).is_some() {
            return Ok(ClientCertVerified::assertion());
        }
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        remember(key, end_entity, intermediates)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
