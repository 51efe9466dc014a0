//! Mesh TLS handshakes with a deadline, and their failures sorted into the
//! reasons operators count: the handshake itself (timeout, I/O, protocol),
//! verification (untrusted chain, expired, not yet valid, bad certificate),
//! an identity other than the expected one, a client without a
//! certificate or without an identity in it, a missing or wrong ALPN, and a
//! peer that refused us (an alert).
//!
//! A TLS 1.3 client finishes its handshake before the server has checked the
//! client's certificate (RFC 8446 §4.4: the client's Certificate and Finished
//! are its last flight), so a server refusing this proxy's certificate is
//! seen by [`connect`]'s caller as an alert on the first read, not here.
//! That last flight can carry the client's first application bytes too
//! ([`connect_with_first`]: the tunnel's transport header), so the server
//! has them with the handshake, in one segment, without another round of
//! writes and wake-ups.
//!
//! The peer's identity and serial come from the certificate facts the
//! verifier kept (`tls/cache.rs`), so a certificate is parsed once.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::cache::{self, Key, Usage};
use super::verify::IdentityMismatch;
use super::{ClientAlpn, TlsState};
use crate::identity::cert::CertFacts;
use crate::identity::Identity;
use crate::transport_header::ALPN;

/// What the server demands of ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlpnRule {
    /// The tunnel: `transport.l5d.io/v1` must be negotiated.
    Tunnel,
    /// SNI-routed mesh TLS to an application port: ALPN is not required.
    Any,
}

/// The countable reason of a failed handshake (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    Timeout,
    Io,
    Handshake,
    Untrusted,
    Expired,
    NotYetValid,
    BadCertificate,
    IdentityMismatch,
    NoClientCert,
    NoClientIdentity,
    Alpn,
    PeerRejected,
    /// The client did not speak TLS at all (plaintext sent to the tunnel).
    NotTls,
}

impl HandshakeFailure {
    pub const COUNT: usize = 13;
    pub const ALL: [HandshakeFailure; HandshakeFailure::COUNT] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Io,
        HandshakeFailure::Handshake,
        HandshakeFailure::Untrusted,
        HandshakeFailure::Expired,
        HandshakeFailure::NotYetValid,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::IdentityMismatch,
        HandshakeFailure::NoClientCert,
        HandshakeFailure::NoClientIdentity,
        HandshakeFailure::Alpn,
        HandshakeFailure::PeerRejected,
        HandshakeFailure::NotTls,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Io => "io",
            HandshakeFailure::Handshake => "handshake",
            HandshakeFailure::Untrusted => "untrusted",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::NotYetValid => "not_yet_valid",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::IdentityMismatch => "identity_mismatch",
            HandshakeFailure::NoClientCert => "no_client_cert",
            HandshakeFailure::NoClientIdentity => "no_client_identity",
            HandshakeFailure::Alpn => "alpn",
            HandshakeFailure::PeerRejected => "peer_rejected",
            HandshakeFailure::NotTls => "not_tls",
        }
    }

    /// True for failures of certificate verification (as opposed to the
    /// transport or the protocol).
    pub fn is_verification(self) -> bool {
        matches!(
            self,
            HandshakeFailure::Untrusted
                | HandshakeFailure::Expired
                | HandshakeFailure::NotYetValid
                | HandshakeFailure::BadCertificate
                | HandshakeFailure::IdentityMismatch
        )
    }
}

/// A failed handshake: the reason and what happened.
#[derive(Debug, thiserror::Error)]
#[error("mesh TLS handshake failed ({}): {detail}", reason.label())]
pub struct HandshakeError {
    pub reason: HandshakeFailure,
    pub detail: String,
}

impl HandshakeError {
    pub(crate) fn new(reason: HandshakeFailure, detail: impl Into<String>) -> HandshakeError {
        HandshakeError { reason, detail: detail.into() }
    }

    /// Sorts an error from tokio-rustls (a rustls error inside an io::Error,
    /// or a plain I/O error).
    pub(crate) fn from_io(e: io::Error) -> HandshakeError {
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
            return HandshakeError::new(HandshakeFailure::Io, e.to_string());
        };
        use rustls::CertificateError as C;
        let reason = match tls {
            rustls::Error::InvalidCertificate(c) => match c {
                C::Expired | C::ExpiredContext { .. } => HandshakeFailure::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => HandshakeFailure::NotYetValid,
                // A chain whose issuer is not an anchor, or that names an
                // anchor (same subject) whose key did not sign it: either
                // way the certificate does not come from this mesh's CA.
                C::UnknownIssuer | C::BadSignature => HandshakeFailure::Untrusted,
                C::Other(other) if other.0.downcast_ref::<IdentityMismatch>().is_some() => HandshakeFailure::IdentityMismatch,
                _ => HandshakeFailure::BadCertificate,
            },
            rustls::Error::NoCertificatesPresented => HandshakeFailure::NoClientCert,
            rustls::Error::NoApplicationProtocol => HandshakeFailure::Alpn,
            rustls::Error::AlertReceived(_) => HandshakeFailure::PeerRejected,
            _ => HandshakeFailure::Handshake,
        };
        let detail = match tls {
            rustls::Error::InvalidCertificate(C::Other(other)) => other.0.to_string(),
            other => other.to_string(),
        };
        HandshakeError::new(reason, detail)
    }
}

/// What a client learned from a successful handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    /// The peer's identity, verified.
    pub peer: Identity,
    /// True when `transport.l5d.io/v1` was negotiated.
    pub tunnel: bool,
    /// The serial of the peer's leaf certificate (lowercase hex).
    pub serial: Option<String>,
}

/// What a server learned from a successful handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The client's identity, from its verified certificate.
    pub client: Identity,
    /// True when `transport.l5d.io/v1` was negotiated.
    pub tunnel: bool,
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The serial of the client's leaf certificate (lowercase hex).
    pub serial: String,
}

/// The facts of a peer's leaf: kept by the verifier of this handshake, or
/// parsed (the cache may have dropped them since).
fn peer_facts(state: &TlsState, usage: Usage, chain: &[rustls::pki_types::CertificateDer<'static>]) -> Option<std::sync::Arc<CertFacts>> {
    let (leaf, rest) = chain.split_first()?;
    cache::facts(&Key::new(state.id, usage, leaf, rest)).or_else(|| CertFacts::parse(leaf).ok().map(std::sync::Arc::new))
}

/// Opens mesh TLS to a peer that must prove `peer`, within `timeout`.
pub async fn connect<IO>(
    state: &TlsState,
    io: IO,
    peer: &Identity,
    alpn: ClientAlpn,
    timeout: Duration,
) -> Result<(client::TlsStream<IO>, Connected), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    connect_with_first(state, io, peer, alpn, &[], timeout).await
}

/// [`connect`], with `first` queued as the first application bytes: they
/// leave encrypted right after the client's Finished, in the same write.
pub async fn connect_with_first<IO>(
    state: &TlsState,
    io: IO,
    peer: &Identity,
    alpn: ClientAlpn,
    first: &[u8],
    timeout: Duration,
) -> Result<(client::TlsStream<IO>, Connected), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let config = state.client_config(peer, alpn);
    let sni = rustls::pki_types::ServerName::try_from(peer.server_name())
        .map_err(|e| HandshakeError::new(HandshakeFailure::Handshake, format!("{peer} has no usable SNI: {e}")))?;
    let mut queued = Ok(());
    let handshake = TlsConnector::from(config).connect_with(sni, io, |conn| {
        if !first.is_empty() {
            // Buffered by rustls until the handshake completes (never sent as 0-RTT data).
            queued = std::io::Write::write_all(&mut conn.writer(), first);
        }
    });
    queued.map_err(|e| HandshakeError::new(HandshakeFailure::Io, format!("cannot queue the first bytes: {e}")))?;
    let stream = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| HandshakeError::new(HandshakeFailure::Timeout, format!("no handshake with {peer} within {timeout:?}")))?
        .map_err(HandshakeError::from_io)?;
    let tunnel = stream.get_ref().1.alpn_protocol() == Some(ALPN);
    if alpn == ClientAlpn::Tunnel && !tunnel {
        return Err(HandshakeError::new(HandshakeFailure::Alpn, format!("{peer} did not negotiate ALPN transport.l5d.io/v1")));
    }
    let serial = stream.get_ref().1.peer_certificates().and_then(|c| peer_facts(state, Usage::Server, c)).map(|f| f.serial.clone());
    tracing::debug!(%peer, tunnel, "mesh TLS established");
    Ok((stream, Connected { peer: peer.clone(), tunnel, serial }))
}

/// Accepts mesh TLS from a client that must present a certificate chaining
/// to the anchors, within `timeout`.
pub async fn accept<IO>(
    state: &TlsState,
    io: IO,
    alpn: AlpnRule,
    timeout: Duration,
) -> Result<(server::TlsStream<IO>, Accepted), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = TlsAcceptor::from(state.server_config()).accept(io);
    let stream = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| HandshakeError::new(HandshakeFailure::Timeout, format!("no handshake within {timeout:?}")))?
        .map_err(HandshakeError::from_io)?;
    let conn = stream.get_ref().1;
    let tunnel = conn.alpn_protocol() == Some(ALPN);
    if alpn == AlpnRule::Tunnel && !tunnel {
        let got = conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
        return Err(HandshakeError::new(
            HandshakeFailure::Alpn,
            format!("the tunnel needs ALPN transport.l5d.io/v1, the client negotiated {}", got.as_deref().unwrap_or("none")),
        ));
    }
    let chain = conn
        .peer_certificates()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| HandshakeError::new(HandshakeFailure::NoClientCert, "no client certificate"))?;
    let facts = peer_facts(state, Usage::Client, chain)
        .ok_or_else(|| HandshakeError::new(HandshakeFailure::BadCertificate, "the client certificate cannot be read"))?;
    let client = facts.primary_identity().cloned().ok_or_else(|| {
        HandshakeError::new(
            HandshakeFailure::NoClientIdentity,
            format!("the client certificate names no single workload identity (SANs: {:?})", facts.sans),
        )
    })?;
    let sni = conn.server_name().map(str::to_string);
    tracing::debug!(%client, tunnel, "mesh TLS accepted");
    Ok((stream, Accepted { client, tunnel, sni, serial: facts.serial.clone() }))
}
