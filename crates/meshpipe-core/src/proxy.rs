//! The per-connection pipeline: target → policy → detect → TLS decision
//! and authorization → connect → forward.
//!
//! `serve` owns one accepted connection from start to end. Each stage is a
//! plain function in its own file, so stages slot in without touching the
//! accept loop: `proxy/inbound_mesh.rs` (the 4143 tunnel and SNI-routed mesh
//! TLS termination), `proxy/authorize.rs` (inbound authorization),
//! `proxy/outbound_mesh.rs` (mesh TLS origination to meshed destinations,
//! also the connector HTTP proxying uses). Plain TCP keeps the splice path
//! (`copy.rs`); a connection with TLS on either side is forwarded by the
//! TLS-generic copy (`copy/stream.rs`, through `proxy/forward_tls.rs`). A
//! plaintext connection detection found to be HTTP/1 or HTTP/2 branches to
//! the HTTP stage (`proxy/http.rs`) after the TLS decision, outbound to a
//! meshed destination too (its upstream connections then ride mesh TLS,
//! opened by the HTTP client); inbound mesh TLS carrying HTTP (the tunnel
//! header's session protocol, or detection on the decrypted bytes of SNI
//! termination) is served by the same stage over the TLS stream
//! (`proxy/inbound_http.rs`); every other outcome is connected and forwarded
//! as TCP.
//!
//! Accounting is done with drop guards, so a connection cut at the drain
//! deadline (its task is simply dropped) still closes its gauges and records
//! its duration.

mod authorize;
mod connect;
mod dial;
mod first_record;
mod forward_tls;
mod http;
mod inbound_http;
pub mod inbound_mesh;
pub mod outbound_mesh;
mod server_spoke;
mod sniff;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

// tokio's clock (the system's, unless a test pauses it): the detect
// bounds measured from accept follow the same clock as their timers.
use tokio::time::Instant;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::{debug, Instrument};

use crate::config::DetectConfig;
use crate::conn::{ConnRegistry, ConnState};
use crate::copy::{self, Counters};
use crate::drain::Drain;
use crate::listener::ListenerCtx;
use crate::metrics::{errno_index, Metrics, Peer, SeriesKey, TcpSeries};
use crate::policy::Policy;
use crate::server_first::ServerFirstCache;
use crate::socket;
use crate::target;
use crate::vocab::{DetectResult, Direction, NoTlsReason, TlsStatus};

pub(crate) use connect::connect;
use forward_tls::{forward_tls, originate_mesh};
pub use outbound_mesh::connect_mesh;
pub use sniff::{Sniffed, Upstream};

/// Engine-wide state every connection task shares.
pub struct Context {
    pub policy: Policy,
    pub metrics: Metrics,
    pub conns: ConnRegistry,
    pub server_first: ServerFirstCache,
    pub detect: DetectConfig,
    pub connect_timeout: Duration,
    pub copy: copy::Shared,
    pub drain: Drain,
    /// Events for the control layer (e.g. a newly learned server-first target).
    pub events: crate::events::EventQueue,
    /// What transparent inbound listeners accept (pod IPs, the proxy's ports).
    pub inbound: target::InboundGuard,
    /// Connection, detection and descriptor bounds.
    pub limits: crate::limits::Limits,
    /// Forwarded connections idle this long are closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Metric series unused this long are evicted (`None`: never).
    pub metrics_retain_idle: Option<Duration>,
    /// The proxy's own addresses, for loop protection (set once bound).
    pub own: std::sync::OnceLock<crate::loops::OwnAddrs>,
    /// HTTP proxying: settings, upstream client, endpoints (`crate::http`).
    pub http: crate::http::HttpState,
    /// The mesh identity and the mesh counters.
    pub mesh: crate::mesh::Mesh,
}

/// Gives a connection's slots (its direction's and its descriptors) back to
/// the limits when the connection ends, however it ends.
struct Admitted<'a>(&'a Context, crate::vocab::Direction);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.limits.release(self.1);
    }
}

/// Closes one side's gauge and records its close reason when dropped.
struct SideGuard {
    series: Arc<TcpSeries>,
    peer: Peer,
    errno: usize,
}

impl Drop for SideGuard {
    fn drop(&mut self) {
        self.series.closed(self.peer, self.errno);
    }
}

/// Counts the listener's open connections and observes the duration.
struct OpenGuard<'a> {
    l: &'a ListenerCtx,
    started: Instant,
    series: Option<Arc<TcpSeries>>,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.l.open.fetch_sub(1, Relaxed);
        if let Some(s) = &self.series {
            s.duration.observe(self.started.elapsed());
        }
    }
}

/// Serves one accepted connection until it ends or the drain deadline cuts
/// it (`cut` is the accepting worker's child of the drain's cut signal). The
/// accept loop admitted it (`Limits::try_admit`/`admit` for the listener's
/// direction): its slots are given back when it ends.
///
/// The connection's stages are traced in a `conn` span (`id`, `listener`,
/// `peer`, then `target`), silent at the default log filter (see `log.rs`).
pub async fn serve(ctx: Arc<Context>, l: Arc<ListenerCtx>, client: TcpStream, peer: SocketAddr, cut: CancellationToken) {
    let _admitted = Admitted(&ctx, l.direction);
    let span = tracing::debug_span!(
        "conn",
        id = Empty,
        listener = %l.name,
        peer = %peer,
        target = Empty,
        tls = Empty,
        client_id = Empty,
        server_id = Empty
    );
    let cut_short = async {
        tokio::select! {
            _ = pipeline(&ctx, &l, client, peer) => {}
            _ = cut.cancelled() => debug!("cut at the drain deadline"),
        }
    };
    cut_short.instrument(span).await
}

async fn pipeline(ctx: &Arc<Context>, l: &ListenerCtx, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    l.open.fetch_add(1, Relaxed);
    let mut open = OpenGuard { l, started, series: None };
    let reg = ctx.conns.register(l.name.clone(), l.direction, peer);
    let info = &reg.info;
    // TCP_NODELAY is inherited from the listening socket (see `listener`).
    let span = tracing::Span::current();
    span.record("id", info.id);
    debug!(direction = l.direction.as_str(), "accepted");
    // The identity this connection uses from start to end (a reload affects
    // new connections only).
    let mesh_tls = ctx.mesh.tls();

    // 1. Target (or the tunnel: a direct connection to the inbound port).
    let route = match target::resolve(&l.target, l.direction, &ctx.inbound, &client, mesh_tls.is_some()) {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "refused");
            ctx.metrics.accept_error(l.direction, e.accept_error());
            match e {
                target::TargetError::Loop(_) => ctx.metrics.errors.loop_refused.fetch_add(1, Relaxed),
                target::TargetError::OriginalDst(_) => ctx.metrics.errors.original_dst_failed.fetch_add(1, Relaxed),
                target::TargetError::NotPodIp(_) => ctx.metrics.errors.not_pod_ip.fetch_add(1, Relaxed),
                _ => 0,
            };
            socket::set_reset_on_close(&client);
            return;
        }
    };
    let target = match (route, &mesh_tls) {
        (target::Route::Forward(t), _) => t,
        (target::Route::Tunnel(orig), Some(state)) => {
            span.record("tls", "tunnel");
            let inbound_host = match l.target {
                crate::config::Target::OriginalDst { inbound_host } => inbound_host,
                crate::config::Target::Fixed(_) | crate::config::Target::Named(_) => None,
            };
            // Boxed: the TLS state lives on the heap only for connections
            // that take this path; the pipeline future every plain
            // connection holds while idle stays small.
            return Box::pin(async move {
                let Some(est) = inbound_mesh::tunnel(ctx, client, peer, orig, inbound_host, state, info).await else { return };
                ctx.metrics.detected(l.direction, orig.port(), DetectResult::OpaquePort, started.elapsed());
                let _ = info.target.set(est.target);
                span.record("target", tracing::field::display(est.target));
                // The header's session protocol decides: HTTP is served per
                // request, opaque is forwarded as bytes.
                let protocol = inbound_http::from_header(est.protocol);
                inbound_http::serve(ctx, info, &mut open, est.target, est.tls, est.stream, protocol, Vec::new(), None).await
            })
            .await;
        }
        (target::Route::Tunnel(_), None) => return,
    };
    // Loop protection: a target that is one of the proxy's own listeners
    // (through any local address, a wildcard bind or IPv4-mapped IPv6).
    if ctx.own.get().is_some_and(|own| own.is_own(target)) {
        debug!(target = %target, "refused: the target is the proxy's own listener (loop protection)");
        ctx.metrics.errors.loop_refused.fetch_add(1, Relaxed);
        socket::set_reset_on_close(&client);
        return;
    }
    let _ = info.target.set(target);
    span.record("target", tracing::field::display(target));

    // 2. Policy: the port's mode and, outbound, the meshed peer behind the
    // address (one probe of the table); the listener's explicit mode wins.
    let table = ctx.policy.load();
    let (policy, dest) = table.route(l.direction, target);
    // The server-first race dials the target before authorization has
    // decided: inbound, only for a client the port lets in without an
    // identity (one that needs mesh TLS is decided once it has shown it).
    let plaintext_allowed = l.direction == Direction::Outbound || table.authz().allows(target.port(), None, peer.ip());
    drop(table);
    let (mode, detect_timeout) = match l.mode {
        Some(mode) => (mode, None),
        None => (policy.mode, policy.detect_timeout),
    };
    let timeout = ctx.detect.timeout_for(l.direction, target.port(), detect_timeout);
    debug!(
        mode = mode.as_str(),
        detect_timeout_ms = timeout.as_millis() as u64,
        server_id = dest.as_ref().map(|d| d.identity.as_str()),
        "policy"
    );
    let originate = dest.is_some() && mesh_tls.is_some();

    // 3. Detect. The server-first race dials in plaintext: never to a
    // destination that gets mesh TLS.
    let race = match (originate, plaintext_allowed) {
        (true, _) => sniff::Race::Learn,
        (false, true) => sniff::Race::Dial,
        (false, false) => sniff::Race::Off,
    };
    let mesh_name = mesh_tls.as_deref().filter(|_| l.direction == Direction::Inbound).map(|state| state.server_name());
    let mut sniffed = sniff::sniff(ctx, &client, peer.ip(), l.direction, target, mode, timeout, race, mesh_name).await;
    // Detection is over: its slot goes back once the TLS decision below is
    // made, except through an inbound mesh TLS handshake and the detection
    // after it, which keep it (an unauthenticated client stalling there
    // counts against the bound, and a meshed one cannot lose its slot to
    // another connection half-way).
    let terminate = l.direction == Direction::Inbound
        && sniffed.result == DetectResult::Tls
        && mesh_tls.as_ref().is_some_and(|state| sniffed.sni.as_deref() == Some(state.server_name()));
    let slot = sniffed.slot.take().filter(|_| terminate);
    ctx.metrics.detected(l.direction, target.port(), sniffed.result, started.elapsed());
    info.set_protocol(sniffed.result.protocol());
    debug!(result = sniffed.result.as_str(), bytes = sniffed.buffered.len(), sni = sniffed.sni.as_deref(), "detected");
    if let Some(sni) = &sniffed.sni {
        let _ = info.sni.set(sni.clone());
    }
    http::count_not_http(ctx, l.direction, mode, sniffed.result);
    if sniffed.result == DetectResult::Error {
        // The client socket failed before a byte was read: nothing to
        // forward; an upstream opened for the server-first race is dropped
        // (closed) here.
        return;
    }

    // 4. The TLS decision, and inbound authorization.
    let tls = match (l.direction, &dest, &mesh_tls) {
        (Direction::Inbound, _, Some(state)) if terminate => {
            span.record("tls", "terminated");
            // Without a detection slot, the ClientHello's wait and the
            // handshake share one short bound from accept, as in the tunnel.
            let bound = if slot.is_none() { timeout.min(first_record::NO_SLOT_WAIT) } else { timeout };
            let remaining = bound.saturating_sub(started.elapsed());
            let buffered = sniffed.buffered;
            // Boxed, like the tunnel above.
            return Box::pin(async move {
                let Some(mut est) = inbound_mesh::terminate(ctx, client, buffered, peer, target, state, info, remaining).await else {
                    return;
                };
                // Detection again, on the decrypted bytes, within what is
                // left of the port's timeout since accept: the detection
                // slot is held at most one detect timeout in all (the
                // ClientHello, the handshake and this), as a plaintext
                // client's is.
                let left = timeout.saturating_sub(started.elapsed());
                let d = match inbound_http::detect(ctx, &mut est.stream, target, mode, left, slot).await {
                    Ok(d) => d,
                    Err(e) => {
                        debug!(error = %e, "mesh TLS client failed during detection");
                        return;
                    }
                };
                inbound_http::serve(ctx, info, &mut open, target, est.tls, est.stream, d.protocol, d.buffered, d.upstream).await
            })
            .await;
        }
        (Direction::Inbound, _, _) => {
            let tls = TlsStatus::detected(Direction::Inbound, sniffed.sni.as_ref());
            if !authorize::inbound(ctx, ctx.policy.load().authz(), target.port(), None, peer.ip(), &tls) {
                socket::set_reset_on_close(&client);
                return;
            }
            tls
        }
        // HTTP to a meshed destination is proxied request by request; the
        // HTTP client opens mesh TLS to each meshed endpoint (http/client.rs).
        (Direction::Outbound, Some(dest), Some(_)) if http::protocol_of(ctx, sniffed.result).is_some() => {
            span.record("server_id", dest.identity.as_str());
            TlsStatus::Mesh { peer: Arc::from(dest.identity.as_str()) }
        }
        (Direction::Outbound, Some(dest), Some(state)) => {
            span.record("tls", "originated");
            // Boxed, like the tunnel above.
            return Box::pin(originate_mesh(ctx, info, &mut open, client, target, dest, state, sniffed)).await;
        }
        (Direction::Outbound, Some(_), None) => TlsStatus::NoIdentity(NoTlsReason::Disabled),
        (Direction::Outbound, None, _) if sniffed.sni.is_none() && target.ip().is_loopback() => {
            TlsStatus::NoIdentity(NoTlsReason::Loopback)
        }
        (Direction::Outbound, None, _) => TlsStatus::detected(Direction::Outbound, sniffed.sni.as_ref()),
    };
    span.record("tls", tls.label_str());

    // From here the connection is counted as an open TCP connection.
    let series = ctx.metrics.series(&SeriesKey { direction: l.direction, target, tls: tls.clone() });
    series.opened(Peer::Src);
    open.series = Some(series.clone());
    let mut src = SideGuard { series: series.clone(), peer: Peer::Src, errno: 0 };

    // HTTP is served request by request (its upstream connections pooled,
    // mesh TLS to meshed endpoints).
    if let Some(protocol) = http::protocol_of(ctx, sniffed.result) {
        let c = http::HttpConn { info: &reg.info, direction: l.direction, target, tls, series: series.clone() };
        // An upstream the server-first race opened is not used: requests
        // take pooled connections to their endpoints.
        drop(sniffed.upstream);
        // Boxed: hyper's connection state is only allocated for HTTP.
        Box::pin(http::serve(ctx, c, client, sniffed.buffered, protocol)).await;
        return;
    }

    // 5. Connect (unless the server-first race already did).
    info.set_state(ConnState::Connecting);
    let server = match sniffed.upstream {
        Upstream::Open(s) => Ok(s),
        // A named target (`names.rs`) tries its other addresses (`proxy/dial.rs`).
        Upstream::Failed(e) => dial::after_failed_dial(&l.target, target.0, e, ctx.connect_timeout).await,
        Upstream::None => dial::connect_target(&l.target, target.0, ctx.connect_timeout).await,
    };
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "connect failed");
            ctx.metrics.errors.connect_failed.fetch_add(1, Relaxed);
            series.connect_failed(errno_index(Some(&e)));
            // The client learns at once that its target is unreachable.
            socket::set_reset_on_close(&client);
            src.errno = errno_index(Some(&e));
            return;
        }
    };
    series.opened(Peer::Dst);
    debug!("connected");
    let mut dst = SideGuard { series: series.clone(), peer: Peer::Dst, errno: 0 };

    // 6. Forward: replay what detection read, in order, then splice. The
    // idle sweep may shut both sockets down (declared after them: withdrawn
    // before they close).
    let _sweepable = ctx.idle_timeout.map(|_| info.forwarding(&client, &server));
    info.set_state(ConnState::Forwarding);
    let (shared, fds) = (&ctx.copy, &ctx.limits.fds);
    let up = Counters { conn: &info.bytes_in, series: &series.bytes_client_to_server, shared, fds };
    let down = Counters { conn: &info.bytes_out, series: &series.bytes_server_to_client, shared, fds };
    if !sniffed.buffered.is_empty() {
        if let Err(e) = copy::write_all(&server, &sniffed.buffered).await {
            dst.errno = errno_index(Some(&e));
            socket::set_reset_on_close(&client);
            return;
        }
        up.add(sniffed.buffered.len());
    }
    drop(sniffed.buffered);
    if sniffed.client_eof {
        let _ = socket::shutdown_write(&server);
    }
    let forwarded = copy::forward(&client, &server, up, down, ctx.copy.config).await;
    finish(ctx, info, &series, forwarded, &mut src, &mut dst);
}

/// Records how forwarding ended: the idle timeout, and the side whose error
/// ended it (its close reason).
fn finish(
    ctx: &Context,
    info: &crate::conn::ConnInfo,
    series: &TcpSeries,
    forwarded: Result<copy::Moved, copy::CopyError>,
    src: &mut SideGuard,
    dst: &mut SideGuard,
) {
    if info.idle_closed() {
        debug!(idle_timeout_ms = ctx.idle_timeout.unwrap_or_default().as_millis() as u64, "closed by the idle timeout");
        series.idle_timeouts.fetch_add(1, Relaxed);
    }
    match forwarded {
        Ok(_) => debug!(client_to_server = info.bytes_in.load(Relaxed), server_to_client = info.bytes_out.load(Relaxed), "closed"),
        Err(e) => {
            debug!(
                error = %e,
                client_to_server = info.bytes_in.load(Relaxed),
                server_to_client = info.bytes_out.load(Relaxed),
                "closed with an error"
            );
            let errno = errno_index(Some(e.io()));
            match e {
                copy::CopyError::Client(_) => src.errno = errno,
                copy::CopyError::Server(_) => dst.errno = errno,
            }
        }
    }
    info.set_state(ConnState::Closing);
}
