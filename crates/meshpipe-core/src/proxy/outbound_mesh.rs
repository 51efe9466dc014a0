//! Outbound mesh TLS origination: a connection to a meshed destination goes
//! to the peer proxy's inbound (tunnel) port as mutual TLS 1.3, never in
//! plaintext.
//!
//! [`connect_mesh`] is the building block, and the connector an HTTP client
//! uses too: it dials `target`'s address on the destination's tunnel port
//! (4143 unless the peer's annotations say otherwise), performs the
//! handshake with the peer's identity as SNI, this proxy's certificate as
//! the client certificate and ALPN `transport.l5d.io/v1`, verifies the
//! peer's chain and that its leaf names the expected identity (`tls/verify.rs`),
//! with the transport header naming the original port (and the session
//! protocol, for HTTP) sent right after the client's Finished, in the same
//! write. It returns the TLS stream, ready for the application's bytes.
//! Every failure is counted by direction and reason (`handshake_errors`:
//! handshake, verification such as `untrusted` or `expired`, or
//! `identity_mismatch` when the peer proved another identity).
//!
//! A server that refuses *this* proxy's certificate is seen only on the
//! first read (TLS 1.3: the client's Finished is its last flight), as an
//! error that resets the client; it is counted by the server.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio_rustls::client;
use tracing::debug;

use super::Context;
use crate::addr::TargetAddr;
use crate::destinations::Destination;
use crate::tls::{self, ClientAlpn, Connected, HandshakeError, TlsState};
use crate::transport_header::TransportHeader;
use crate::vocab::Direction;

/// Why mesh origination failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshConnectError {
    #[error("cannot reach the peer's tunnel port {addr}: {source}")]
    Connect { addr: std::net::SocketAddr, source: io::Error },
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

impl MeshConnectError {
    /// The I/O error behind it, if any (for the errno label of a close).
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            MeshConnectError::Connect { source, .. } => Some(source),
            MeshConnectError::Handshake(_) => None,
        }
    }
}

/// Opens mesh TLS to the meshed destination `dest` for a connection to
/// `target`, sends (queues) `header` inside it, and returns the stream. The
/// dial and the handshake are each bounded by the engine's connect timeout.
/// Handshake durations and failures are counted as outbound.
pub async fn connect_mesh(
    ctx: &Context,
    state: &TlsState,
    target: TargetAddr,
    dest: &Destination,
    header: &TransportHeader,
) -> Result<(client::TlsStream<TcpStream>, Connected), MeshConnectError> {
    let addr = std::net::SocketAddr::new(target.ip(), dest.tunnel_port.get());
    let tcp = super::connect(addr, ctx.connect_timeout).await.map_err(|source| MeshConnectError::Connect { addr, source })?;
    let started = Instant::now();
    // The header rides in the client's last handshake flight (after its
    // Finished, encrypted): the peer has it with the handshake.
    let first = header.encode();
    let (stream, connected) =
        match tls::connect_with_first(state, tcp, &dest.identity, ClientAlpn::Tunnel, &first, ctx.connect_timeout).await {
            Ok(ok) => ok,
            Err(e) => {
                ctx.mesh.metrics.handshake_error(Direction::Outbound, e.reason);
                return Err(e.into());
            }
        };
    ctx.mesh.metrics.handshake(Direction::Outbound, started.elapsed());
    Ok((stream, connected))
}

/// The header for a connection to `target` that detection classified.
pub(crate) fn header_for(target: TargetAddr, result: crate::vocab::DetectResult) -> Option<TransportHeader> {
    use crate::transport_header::SessionProtocol;
    use crate::vocab::DetectResult;
    let port = std::num::NonZeroU16::new(target.port())?;
    let protocol = match result {
        DetectResult::Http1 => Some(SessionProtocol::Http1),
        DetectResult::Http2 => Some(SessionProtocol::Http2),
        _ => None,
    };
    Some(TransportHeader { port, name: None, protocol })
}

/// The facts a connection records once origination succeeded.
pub(crate) fn conn_mesh(state: &TlsState, connected: &Connected) -> crate::conn::ConnMesh {
    crate::conn::ConnMesh {
        peer: Arc::from(connected.peer.as_str()),
        local_serial: state.serial().clone(),
        peer_serial: connected.serial.as_deref().map(Arc::from),
        tunnel: connected.tunnel,
    }
}

/// Logs a failed origination at debug level.
pub(crate) fn log_failure(e: &MeshConnectError, dest: &Destination) {
    match e {
        MeshConnectError::Handshake(h) => {
            debug!(reason = h.reason.label(), server_id = %dest.identity, error = %h, "mesh TLS origination failed")
        }
        other => debug!(server_id = %dest.identity, error = %other, "mesh TLS origination failed"),
    }
}
