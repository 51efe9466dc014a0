//! The pipeline's HTTP stage: a connection detection (or its port's
//! declared mode) found to be HTTP/1 or HTTP/2 is served as HTTP, request by
//! request (`crate::http`), instead of being connected and forwarded as
//! bytes. Everything detection read is replayed to the HTTP server first.
//! The client stream is a plaintext socket or the decrypted side of inbound
//! mesh TLS (`proxy/inbound_http.rs`).
//!
//! The connection still counts as a TCP connection of its target (the
//! client side: open, bytes, close); its upstream connections are pooled
//! and counted per endpoint as they open and close.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tracing::debug;

use crate::addr::TargetAddr;
use crate::conn::{ConnInfo, ConnState};
use crate::copy::stream::Transport;
use crate::http::head_timer::{HeadClock, HeadTimer};
use crate::http::io::ClientIo;
use crate::http::server::{self, Conn};
use crate::http::SessionProtocol;
use crate::metrics::TcpSeries;
use crate::proxy::Context;
use crate::vocab::{DetectResult, Direction, PortMode, TlsStatus};

/// The session protocol to serve a detection result as, when it is HTTP and
/// the engine proxies HTTP.
pub(super) fn protocol_of(ctx: &Context, result: DetectResult) -> Option<SessionProtocol> {
    if !ctx.http.config.enabled {
        return None;
    }
    match result {
        DetectResult::Http1 => Some(SessionProtocol::Http1),
        DetectResult::Http2 => Some(SessionProtocol::Http2),
        _ => None,
    }
}

/// Counts a declared-HTTP port whose client did not speak HTTP (it is
/// forwarded as the port mode says for such clients: as TCP).
pub(super) fn count_not_http(ctx: &Context, direction: Direction, mode: PortMode, result: DetectResult) {
    let declared = matches!(mode, PortMode::Http1 | PortMode::Http2 | PortMode::Grpc);
    if declared && !matches!(result, DetectResult::Http1 | DetectResult::Http2 | DetectResult::Error) {
        ctx.metrics.http_error(direction, crate::http::HttpErrorReason::NotHttp);
    }
}

/// What the HTTP stage needs of the connection.
pub(super) struct HttpConn<'a> {
    pub info: &'a Arc<ConnInfo>,
    pub direction: Direction,
    pub target: TargetAddr,
    pub tls: TlsStatus,
    pub series: Arc<TcpSeries>,
}

/// Serves the client as HTTP until it closes. `buffered` is what detection
/// read from the client: replayed first.
pub(super) async fn serve<S: Transport + Send + 'static>(
    ctx: &Arc<Context>,
    c: HttpConn<'_>,
    client: S,
    buffered: Vec<u8>,
    protocol: SessionProtocol,
) {
    c.info.set_state(ConnState::Forwarding);
    let mut io = ClientIo::new(client, buffered, c.info.clone(), c.series.clone(), ctx.idle_timeout.is_some());
    // HTTP/1 times request heads itself (HTTP/2 has no heads to trickle:
    // h2's own limits and the idle timeout cover it).
    let head = (protocol == SessionProtocol::Http1).then(|| {
        let clock = Arc::new(HeadClock::default());
        io.set_head_timer(HeadTimer::new(clock.clone(), ctx.http.config.header_timeout));
        clock
    });
    let conn = Arc::new(Conn::new(ctx.clone(), c.info.clone(), c.direction, c.target, c.tls, protocol, head));
    debug!(protocol = ?protocol, "serving HTTP");
    server::serve(conn, io).await;
    if c.info.idle_closed() {
        c.series.idle_timeouts.fetch_add(1, Relaxed);
    }
    debug!(client_to_server = c.info.bytes_in.load(Relaxed), server_to_client = c.info.bytes_out.load(Relaxed), "closed");
    c.info.set_state(ConnState::Closing);
}
