//! The pipeline's last stages for a connection with TLS on either side:
//! inbound mesh TLS (the tunnel or SNI termination) forwarded to the app in
//! plaintext, and outbound connections to a meshed destination, for which
//! the proxy originates mesh TLS. Both count the connection's TCP series like
//! the plain path in `proxy.rs` and forward through the TLS-generic copy
//! (`copy/stream.rs`) instead of splice, which cannot see into a TLS session.
//!
//! An outbound client that said nothing for the server-first grace period
//! goes through the tunnel as bytes (`sniff.rs`, `Race::Learn`: the race
//! cannot dial a meshed destination in plaintext). Its target is learned as
//! server-first here, on the server's evidence: its first bytes, decrypted,
//! come before any from the client, by the detect deadline, and are not what
//! a client-first server says to a silent client (`server_spoke.rs`). They
//! are passed on to the client first, so nothing is lost.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tracing::debug;

use super::server_spoke::{server_spoke_read, Spoke};
use super::{connect, connect_mesh, finish, outbound_mesh, Context, OpenGuard, SideGuard, Sniffed};
use crate::addr::TargetAddr;
use crate::conn::ConnState;
use crate::copy::stream::Transport;
use crate::copy::{self, Counters};
use crate::metrics::{errno_index, Peer, SeriesKey, TcpSeries};
use crate::socket;
use crate::vocab::{Direction, TlsStatus};

/// Inbound mesh TLS (the tunnel or SNI termination), verified and
/// authorized: dial the app at `target` in plaintext (unless detection's
/// server-first race already did: `upstream`) and forward through the
/// TLS-generic copy.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward_tls<S: Transport>(
    ctx: &Context,
    info: &crate::conn::ConnInfo,
    open: &mut OpenGuard<'_>,
    target: TargetAddr,
    tls: TlsStatus,
    client: &mut S,
    buffered: Vec<u8>,
    upstream: Option<TcpStream>,
) {
    if let TlsStatus::Mesh { peer } = &tls {
        tracing::Span::current().record("client_id", &**peer);
    }
    let series = ctx.metrics.series(&SeriesKey { direction: info.direction, target, tls });
    series.opened(Peer::Src);
    open.series = Some(series.clone());
    let mut src = SideGuard { series: series.clone(), peer: Peer::Src, errno: 0 };
    info.set_state(ConnState::Connecting);
    let dialled = match upstream {
        Some(s) => Ok(s),
        None => connect(target.0, ctx.connect_timeout).await,
    };
    let mut server = match dialled {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "connect failed");
            ctx.metrics.errors.connect_failed.fetch_add(1, Relaxed);
            series.connect_failed(errno_index(Some(&e)));
            socket::set_reset_on_close(client.tcp());
            src.errno = errno_index(Some(&e));
            return;
        }
    };
    series.opened(Peer::Dst);
    debug!("connected");
    let mut dst = SideGuard { series: series.clone(), peer: Peer::Dst, errno: 0 };
    let forwarded = forward_streams(ctx, info, &series, client, &mut server, buffered, Vec::new()).await;
    finish(ctx, info, &series, forwarded, &mut src, &mut dst);
}

/// Outbound to a meshed destination: originate mesh TLS through the peer's
/// tunnel, then forward through the TLS-generic copy.
#[allow(clippy::too_many_arguments)]
pub(super) async fn originate_mesh(
    ctx: &Context,
    info: &crate::conn::ConnInfo,
    open: &mut OpenGuard<'_>,
    mut client: TcpStream,
    target: TargetAddr,
    dest: &crate::destinations::Destination,
    state: &crate::tls::TlsState,
    sniffed: Sniffed<'_>,
) {
    let peer_id: Arc<str> = Arc::from(dest.identity.as_str());
    tracing::Span::current().record("server_id", &*peer_id);
    let series = ctx.metrics.series(&SeriesKey { direction: Direction::Outbound, target, tls: TlsStatus::Mesh { peer: peer_id } });
    series.opened(Peer::Src);
    open.series = Some(series.clone());
    let mut src = SideGuard { series: series.clone(), peer: Peer::Src, errno: 0 };
    info.set_state(ConnState::Connecting);
    let Some(header) = outbound_mesh::header_for(target, sniffed.result) else { return };
    let mut server = match connect_mesh(ctx, state, target, dest, &header).await {
        Ok((stream, connected)) => {
            let _ = info.mesh.set(outbound_mesh::conn_mesh(state, &connected));
            stream
        }
        Err(e) => {
            outbound_mesh::log_failure(&e, dest);
            ctx.metrics.errors.connect_failed.fetch_add(1, Relaxed);
            let errno =
                e.io().map_or(errno_index(Some(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused))), |io| errno_index(Some(io)));
            series.connect_failed(errno);
            socket::set_reset_on_close(&client);
            src.errno = errno;
            return;
        }
    };
    series.opened(Peer::Dst);
    debug!("connected (mesh TLS)");
    let mut dst = SideGuard { series: series.clone(), peer: Peer::Dst, errno: 0 };
    let from_server = match sniffed.learn_by {
        Some(by) => match who_speaks_first(ctx, info, &client, &mut server, target, by).await {
            Ok(first) => first,
            Err(e) => {
                // As the copy ends on a failed side: both sockets reset.
                socket::set_reset_on_close(&client);
                socket::set_reset_on_close(server.tcp());
                finish(ctx, info, &series, Err(copy::CopyError::Server(e)), &mut src, &mut dst);
                return;
            }
        },
        None => Vec::new(),
    };
    let forwarded = forward_streams(ctx, info, &series, &mut client, &mut server, sniffed.buffered, from_server).await;
    finish(ctx, info, &series, forwarded, &mut src, &mut dst);
}

/// For a client silent past the grace period: waits, until `by`, for the
/// first bytes from either side. The server's first (a banner) are the
/// evidence that learns `target` as server-first, unless they are a
/// client-first server's answer to silence; they are returned, to be passed
/// on before anything else. The client's first, its close, or nothing by
/// `by` learn nothing; the client's bytes stay in its socket for the copy.
async fn who_speaks_first(
    ctx: &Context,
    info: &crate::conn::ConnInfo,
    client: &TcpStream,
    server: &mut tokio_rustls::client::TlsStream<TcpStream>,
    target: TargetAddr,
    by: Instant,
) -> std::io::Result<Vec<u8>> {
    if Instant::now() >= by {
        // The dial and the handshake used up the detect timeout: no time
        // left to tell a banner from a split preface.
        return Ok(Vec::new());
    }
    // Detection again, in effect, until one side speaks (or the deadline):
    // the connection holds no buffer meanwhile; the first read allocates
    // a small one, and the copy carries the rest.
    info.set_state(ConnState::Detecting);
    let mut first = Vec::new();
    tokio::select! {
        biased;
        // Readiness only: the client's bytes are the copy's to read.
        _ = client.readable() => return Ok(first),
        // Cancel-safe: bytes decrypted but not yet taken stay in the session.
        r = server.read_buf(&mut first) => {
            if r? == 0 {
                // The server ended its side without a byte: nothing to learn.
                return Ok(first);
            }
        }
        _ = sleep_until(by) => return Ok(first),
    }
    let spoke = server_spoke_read(server, &mut first, by).await?;
    debug!(?spoke, bytes = first.len(), "the server spoke through the tunnel before the client");
    if spoke == Spoke::First && ctx.server_first.learn(target) {
        ctx.events.push(crate::EngineEvent::ServerFirstLearned { target: target.to_string() });
    }
    Ok(first)
}

/// Writes what detection read to the server and what the server sent first
/// (`who_speaks_first`) to the client, then forwards both ways until both
/// end.
async fn forward_streams<A: Transport, B: Transport>(
    ctx: &Context,
    info: &crate::conn::ConnInfo,
    series: &TcpSeries,
    client: &mut A,
    server: &mut B,
    buffered: Vec<u8>,
    from_server: Vec<u8>,
) -> Result<copy::Moved, copy::CopyError> {
    use tokio::io::AsyncWriteExt;
    let _sweepable = ctx.idle_timeout.map(|_| info.forwarding(client.tcp(), server.tcp()));
    info.set_state(ConnState::Forwarding);
    let (shared, fds) = (&ctx.copy, &ctx.limits.fds);
    let up = Counters { conn: &info.bytes_in, series: &series.bytes_client_to_server, shared, fds };
    let down = Counters { conn: &info.bytes_out, series: &series.bytes_server_to_client, shared, fds };
    if !buffered.is_empty() {
        // Into the TLS session (and out with the header queued before it).
        if let Err(e) = server.write_all(&buffered).await {
            socket::set_reset_on_close(client.tcp());
            return Err(copy::CopyError::Server(e));
        }
        up.add(buffered.len());
    }
    drop(buffered);
    if !from_server.is_empty() {
        if let Err(e) = client.write_all(&from_server).await {
            socket::set_reset_on_close(server.tcp());
            return Err(copy::CopyError::Client(e));
        }
        down.add(from_server.len());
    }
    drop(from_server);
    copy::stream::forward(client, server, up, down, ctx.copy.config.buffer_size.max(copy::stream::RECORDS_READ)).await
}
