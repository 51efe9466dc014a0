//! The pipeline's last stages for a connection with TLS on either side:
//! inbound mesh TLS (the tunnel or SNI termination) forwarded to the app in
//! plaintext, and outbound connections to a meshed destination, for which
//! the proxy originates mesh TLS. Both count the connection's TCP series like
//! the plain path in `proxy.rs` and forward through the TLS-generic copy
//! (`copy/stream.rs`) instead of splice, which cannot see into a TLS session.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::debug;

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
    let forwarded = forward_streams(ctx, info, &series, client, &mut server, buffered).await;
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
    let forwarded = forward_streams(ctx, info, &series, &mut client, &mut server, sniffed.buffered).await;
    finish(ctx, info, &series, forwarded, &mut src, &mut dst);
}

/// Writes what detection read, then forwards both ways until both end.
async fn forward_streams<A: Transport, B: Transport>(
    ctx: &Context,
    info: &crate::conn::ConnInfo,
    series: &TcpSeries,
    client: &mut A,
    server: &mut B,
    buffered: Vec<u8>,
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
    copy::stream::forward(client, server, up, down, ctx.copy.config.buffer_size.max(copy::stream::RECORDS_READ)).await
}
