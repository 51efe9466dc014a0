//! What is not request/response becomes a byte tunnel once both sides
//! agreed: an HTTP/1.1 `Upgrade` (WebSocket) after the upstream's 101, a
//! `CONNECT` (HTTP/1.0, HTTP/1.1, HTTP/2, and RFC 8441 extended CONNECT
//! for WebSockets over HTTP/2) after its 2xx.
//!
//! The request travels upstream like any other (its authority unchanged, so
//! a forward proxy behind meshpipe sees the `CONNECT host:port` it expects),
//! on a connection of its own for HTTP/1. When the upstream agrees, hyper
//! hands over both connections (the client's after it has written the
//! response to it) with whatever bytes it had already read past the
//! handshake, so nothing is lost; then bytes are copied both ways until both
//! sides closed, half-closes carried over. Linkerd does the same (both
//! upgrade futures joined, then a copy). A tunnel is a tracked task of the
//! engine: the drain waits for it and its deadline cuts it.
//!
//! A tunnel is still the client's connection: it is also tracked by the
//! connection (`Conn::tunnels`), whose task waits for it before it ends. So
//! the connection keeps its slot of the direction's limit and its
//! descriptors, stays in the live registry and under the idle timeout (the
//! client socket stays published to the sweep) for as long as the tunnel
//! lives; otherwise every accepted connection could become a tunnel that no
//! limit, view or timeout sees. The idle sweep shuts the client socket down
//! and wakes the tunnel, which then ends both ways (its sockets closed), as
//! a forwarded TCP connection ends: also a tunnel whose client already sent
//! its FIN (RFC 9110 §9.3.6 lets the other direction go on) and whose
//! upstream never closes, which reads nothing from the client any more.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::conn::ConnInfo;
use crate::drain::Drain;

/// Whether a response completes the handshake of a tunnel request.
pub fn agreed(tunnel: super::headers::Tunnel, status: http::StatusCode) -> bool {
    match tunnel {
        super::headers::Tunnel::Upgrade => status == http::StatusCode::SWITCHING_PROTOCOLS,
        super::headers::Tunnel::Connect => status.is_success(),
        super::headers::Tunnel::None => false,
    }
}

/// Spawns the tunnel between the client's and the upstream's upgraded
/// connections, tracked by the drain and by the client's connection
/// (`tunnels`: the connection's task waits for it).
pub fn spawn(client: OnUpgrade, upstream: OnUpgrade, drain: &Drain, tunnels: &TaskTracker, info: Arc<ConnInfo>) {
    let cut = drain.cut.clone();
    drain.tasks.spawn(tunnels.track_future(async move {
        let idle = info.clone();
        tokio::select! {
            r = run(client, upstream, info) => match r {
                Ok((up, down)) => debug!(client_to_server = up, server_to_client = down, "tunnel closed"),
                Err(e) => debug!(error = %e, "tunnel ended with an error"),
            },
            _ = idle.idle_closed_wait() => debug!("tunnel closed by the idle timeout"),
            _ = cut.cancelled() => debug!("tunnel cut at the drain deadline"),
        }
    }));
}

async fn run(client: OnUpgrade, upstream: OnUpgrade, info: Arc<ConnInfo>) -> Result<(u64, u64), TunnelError> {
    let (client, upstream) =
        tokio::try_join!(async { client.await.map_err(TunnelError::Client) }, async { upstream.await.map_err(TunnelError::Upstream) })?;
    let mut client = ClientSide { io: TokioIo::new(client), info };
    let mut upstream = TokioIo::new(upstream);
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await.map_err(TunnelError::Copy)
}

/// The client side of a tunnel: its end of stream after the idle sweep
/// shut the socket down is an error, which ends the copy both ways.
struct ClientSide<T> {
    io: T,
    info: Arc<ConnInfo>,
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientSide<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 && self.info.idle_closed() => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "closed by the idle timeout")))
            }
            r => r,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientSide<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Why a tunnel ended badly.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("the client side never upgraded: {0}")]
    Client(hyper::Error),
    #[error("the upstream side never upgraded: {0}")]
    Upstream(hyper::Error),
    #[error("copying: {0}")]
    Copy(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::Tunnel;
    use http::StatusCode;

    #[test]
    fn handshakes_that_open_a_tunnel() {
        assert!(agreed(Tunnel::Upgrade, StatusCode::SWITCHING_PROTOCOLS));
        assert!(!agreed(Tunnel::Upgrade, StatusCode::OK), "a 200 to an upgrade is a plain response");
        assert!(agreed(Tunnel::Connect, StatusCode::OK));
        assert!(!agreed(Tunnel::Connect, StatusCode::PROXY_AUTHENTICATION_REQUIRED));
        assert!(!agreed(Tunnel::None, StatusCode::SWITCHING_PROTOCOLS));
    }
}
