//! Inbound mesh TLS: the tunnel and SNI-routed termination, Linkerd's two
//! decisions on the inbound port.
//!
//! - **The tunnel** ([`tunnel`]): a connection whose original destination
//!   port is the inbound port itself ("direct") must be mesh TLS from a
//!   client with a verified certificate and ALPN `transport.l5d.io/v1`.
//!   Anything else is refused and counted by reason: plaintext or other
//!   non-TLS bytes (`not_tls`, seen from the first byte before any TLS
//!   state is allocated), TLS without a client certificate, failed
//!   verification, a wrong ALPN. Then the transport header is read, bounded
//!   at 64 KiB and under the detect timeout, never past its end (a
//!   truncated, oversized or malformed header, or a port outside 1-65535, is
//!   refused and counted), and the stream is forwarded to the app on the pod
//!   IP at the header's port (as HTTP when the header names a session
//!   protocol, `proxy/inbound_http.rs`). That port passes the same inbound guard as a
//!   redirected connection (never one of the proxy's own ports), must be one
//!   the workload exposes (when its ports are known), and is authorized
//!   with the client's identity like any other connection to it. The
//!   target is never one of the proxy's own listeners either (loop
//!   protection, as on the redirect path, whether or not the config lists
//!   `proxyPorts`): a tunnel to the tunnel would hand the client's bytes to
//!   it again from the pod's own address, nested as deep as the client
//!   likes.
//!
//!   Until the header is read the tunnel is detection by another name: an
//!   unauthenticated client, a buffer (rustls holds up to a whole 16 KiB
//!   record) and a timer. So it holds an inbound detection slot, and one of
//!   its host's share (`limits.rs`), as a plaintext connection in detection
//!   does. Without one, no TLS state is made and nothing is buffered until
//!   the client's whole ClientHello, in its first TLS record, is in the
//!   socket's receive queue (its length is read, not its bytes), within a
//!   short wait (`NO_SLOT_WAIT`): a ClientHello split over late segments
//!   still goes on, and one that stalls past the slots costs only its
//!   socket until then (refused, counted as a handshake timeout). The
//!   same short wait bounds the rest of a slot-less client's handshake and
//!   header, so TLS state made without a slot is held briefly.
//! - **SNI termination** ([`terminate`]): a connection redirected from an
//!   app port whose ClientHello names this proxy's identity is mesh TLS to
//!   this proxy: the handshake is completed over the bytes detection read
//!   (kept in a [`Prefixed`] reader), the client is verified, and the inner
//!   stream is forwarded to the original destination under that port's
//!   authorization. Other SNIs are the client's own TLS and are passed
//!   through by the plain path (`tls="opaque"`).
//!
//! Both count successful handshakes in the inbound handshake histogram and
//! record the client's identity and certificate serials on the connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server;
use tracing::debug;

use super::first_record::{client_hello_whole, FirstRecord, HANDSHAKE_RECORD, MAX_FIRST_RECORD, NO_SLOT_WAIT};
use super::{authorize, Context};
use crate::addr::TargetAddr;
use crate::conn::{ConnInfo, ConnMesh};
use crate::copy::stream::Transport;
use crate::mesh::TunnelError;
use crate::socket;
use crate::tls::{self, Accepted, AlpnRule, HandshakeError, HandshakeFailure, TlsState};
use crate::transport_header;
use crate::vocab::{Direction, TlsStatus};

/// A socket with bytes already read from it (by detection) put back in
/// front. The prefix is freed as soon as it has been consumed.
pub struct Prefixed {
    prefix: Option<(Box<[u8]>, usize)>,
    tcp: TcpStream,
}

impl Prefixed {
    pub fn new(prefix: Vec<u8>, tcp: TcpStream) -> Prefixed {
        let prefix = (!prefix.is_empty()).then(|| (prefix.into_boxed_slice(), 0));
        Prefixed { prefix, tcp }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some((bytes, pos)) = &mut self.prefix {
            let n = (bytes.len() - *pos).min(buf.remaining());
            buf.put_slice(&bytes[*pos..*pos + n]);
            *pos += n;
            if *pos == bytes.len() {
                self.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Transport for server::TlsStream<Prefixed> {
    fn tcp(&self) -> &TcpStream {
        &self.get_ref().0.tcp
    }
}

/// A verified inbound mesh TLS connection, ready to serve or forward.
pub(crate) struct Established<IO> {
    pub stream: server::TlsStream<IO>,
    pub target: TargetAddr,
    pub tls: TlsStatus,
    /// The tunnel header's session protocol (`None`: opaque, or SNI
    /// termination, which detects on the decrypted bytes).
    pub protocol: Option<transport_header::SessionProtocol>,
}

/// The tunnel: handshake, header, guard, exposure and authorization.
/// `orig` is the address the client dialled (a pod IP and the inbound
/// port); `inbound_host` is the listener's opt-in address replacement. Returns the stream and its real target, or None when the
/// connection was refused (already counted and its socket set to reset).
pub(crate) async fn tunnel(
    ctx: &Context,
    client: TcpStream,
    peer: SocketAddr,
    orig: SocketAddr,
    inbound_host: Option<std::net::IpAddr>,
    state: &TlsState,
    info: &ConnInfo,
) -> Option<Established<TcpStream>> {
    // Held until the header is read (dropped when this returns).
    let slot = ctx.limits.detect_slot(Direction::Inbound, peer.ip());
    // Without a slot the whole exchange up to the header (the ClientHello,
    // the handshake, the header in the client's last flight) must be quick:
    // unbounded in number, such clients are bounded in time instead.
    let timeout = ctx.detect.timeout_for(Direction::Inbound, orig.port(), None);
    let timeout = if slot.is_none() { timeout.min(NO_SLOT_WAIT) } else { timeout };
    let deadline = tokio::time::Instant::now() + timeout;
    // Plaintext (or anything but TLS) sent straight to the tunnel is
    // refused before any TLS state exists.
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, client.peek(&mut first)).await {
        Ok(Ok(1..)) if first[0] == HANDSHAKE_RECORD => {}
        Ok(Ok(0)) => {
            debug!("tunnel: the client closed before sending anything");
            return None;
        }
        Ok(Ok(_)) => {
            return refuse_handshake(
                ctx,
                &client,
                HandshakeError::new(HandshakeFailure::NotTls, "the tunnel needs mesh TLS; the client sent plaintext"),
            );
        }
        Ok(Err(e)) => return refuse_handshake(ctx, &client, HandshakeError::new(HandshakeFailure::Io, e.to_string())),
        Err(_) => {
            return refuse_handshake(
                ctx,
                &client,
                HandshakeError::new(HandshakeFailure::Timeout, format!("no ClientHello within {timeout:?}")),
            )
        }
    }
    if slot.is_none() {
        // No slot (a full direction, or the host's share): no TLS state
        // until the whole ClientHello is in the socket, for a short while.
        match client_hello_whole(&client, deadline, MAX_FIRST_RECORD).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return refuse_handshake(
                    ctx,
                    &client,
                    HandshakeError::new(HandshakeFailure::Timeout, format!("no whole ClientHello within {timeout:?} (no detection slot)")),
                )
            }
            Err(FirstRecord::Closed) => {
                debug!("tunnel: the client closed before its ClientHello was whole");
                return None;
            }
            Err(FirstRecord::Malformed(why)) => {
                // As rustls counts a malformed handshake record with a slot.
                return refuse_handshake(ctx, &client, HandshakeError::new(HandshakeFailure::Handshake, why));
            }
            Err(FirstRecord::Io(e)) => return refuse_handshake(ctx, &client, HandshakeError::new(HandshakeFailure::Io, e.to_string())),
        }
    }
    let started = Instant::now();
    let (mut stream, accepted) = match tls::accept(state, client, AlpnRule::Tunnel, deadline - tokio::time::Instant::now()).await {
        Ok(ok) => ok,
        Err(e) => {
            // The socket is gone with the failed handshake; nothing to reset.
            ctx.mesh.metrics.handshake_error(Direction::Inbound, e.reason);
            debug!(reason = e.reason.label(), error = %e, "tunnel: handshake refused");
            return None;
        }
    };
    ctx.mesh.metrics.handshake(Direction::Inbound, started.elapsed());
    record(info, state, &accepted, true);
    tracing::Span::current().record("client_id", accepted.client.as_str());
    let refuse = |stream: &server::TlsStream<TcpStream>, reason: TunnelError, why: &dyn std::fmt::Display| {
        ctx.mesh.metrics.tunnel_error(reason);
        debug!(reason = ?reason, error = %why, "tunnel: refused");
        socket::set_reset_on_close(stream.get_ref().0);
    };
    let header = match transport_header::read_header(&mut stream, deadline - tokio::time::Instant::now()).await {
        Ok(h) => h,
        Err(e) => {
            refuse(&stream, TunnelError::of_header(&e), &e);
            return None;
        }
    };
    let port = header.port.get();
    let dialled = SocketAddr::new(orig.ip(), port);
    // The same guard as a redirected connection: never the proxy's own
    // ports (admin, inbound, outbound).
    if let Err(e) = ctx.inbound.check(dialled) {
        refuse(&stream, TunnelError::ProxyPort, &e);
        return None;
    }
    // One generation of the policy decides both checks.
    let policy = ctx.policy.load();
    if !policy.authz().exposes(port) {
        refuse(&stream, TunnelError::NotExposed, &format_args!("port {port} is not one of the workload's ports"));
        return None;
    }
    let tls = TlsStatus::Mesh { peer: Arc::from(accepted.client.as_str()) };
    if !authorize::inbound(ctx, policy.authz(), port, Some(&accepted.client), peer.ip(), &tls) {
        socket::set_reset_on_close(stream.get_ref().0);
        return None;
    }
    let ip = inbound_host.unwrap_or(orig.ip()).to_canonical();
    let target = TargetAddr(SocketAddr::new(ip, port));
    // Loop protection: never one of the proxy's own listeners, whatever
    // the guard's configured ports say.
    if ctx.own.get().is_some_and(|own| own.is_own(target)) {
        refuse(&stream, TunnelError::ProxyPort, &format_args!("{target} is the proxy's own listener (loop protection)"));
        return None;
    }
    if let Some(p) = header.protocol {
        info.set_protocol(match p {
            transport_header::SessionProtocol::Http1 => crate::vocab::Protocol::Http1,
            transport_header::SessionProtocol::Http2 => crate::vocab::Protocol::Http2,
        });
    }
    debug!(port, protocol = ?header.protocol, "tunnel: header read");
    Some(Established { stream, target, tls, protocol: header.protocol })
}

/// SNI termination of a connection redirected to `target` whose ClientHello
/// (read by detection into `buffered`) named this proxy. None when refused.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn terminate(
    ctx: &Context,
    client: TcpStream,
    buffered: Vec<u8>,
    peer: SocketAddr,
    target: TargetAddr,
    state: &TlsState,
    info: &ConnInfo,
    timeout: std::time::Duration,
) -> Option<Established<Prefixed>> {
    let started = Instant::now();
    let io = Prefixed::new(buffered, client);
    let (stream, accepted) = match tls::accept(state, io, AlpnRule::Any, timeout).await {
        Ok(ok) => ok,
        Err(e) => {
            ctx.mesh.metrics.handshake_error(Direction::Inbound, e.reason);
            debug!(reason = e.reason.label(), error = %e, "mesh TLS termination refused");
            return None;
        }
    };
    ctx.mesh.metrics.handshake(Direction::Inbound, started.elapsed());
    record(info, state, &accepted, false);
    tracing::Span::current().record("client_id", accepted.client.as_str());
    let tls = TlsStatus::Mesh { peer: Arc::from(accepted.client.as_str()) };
    if !authorize::inbound(ctx, ctx.policy.load().authz(), target.port(), Some(&accepted.client), peer.ip(), &tls) {
        socket::set_reset_on_close(stream.tcp());
        return None;
    }
    Some(Established { stream, target, tls, protocol: None })
}

fn record(info: &ConnInfo, state: &TlsState, accepted: &Accepted, tunnel: bool) {
    let _ = info.mesh.set(ConnMesh {
        peer: Arc::from(accepted.client.as_str()),
        local_serial: state.serial().clone(),
        peer_serial: Some(Arc::from(accepted.serial.as_str())),
        tunnel,
    });
}

fn refuse_handshake<T>(ctx: &Context, client: &TcpStream, e: HandshakeError) -> Option<T> {
    ctx.mesh.metrics.handshake_error(Direction::Inbound, e.reason);
    debug!(reason = e.reason.label(), error = %e, "tunnel: refused");
    socket::set_reset_on_close(client);
    None
}
