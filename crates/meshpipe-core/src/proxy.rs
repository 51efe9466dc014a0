//! The per-connection pipeline: target → policy → detect → connect → forward.
//!
//! `serve` owns one accepted connection from start to end. Each stage is a
//! plain function so later stages slot in without touching the accept loop:
//! mesh mTLS will wrap the upstream connect, and a connection detection found
//! to be HTTP/1 or HTTP/2 branches to the HTTP stage (`proxy/http.rs`) after
//! detection, where every other outcome is connected and forwarded as TCP.
//!
//! Accounting is done with drop guards, so a connection cut at the drain
//! deadline (its task is simply dropped) still closes its gauges and records
//! its duration.

mod connect;
mod http;
mod sniff;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::{debug, Instrument};

use crate::config::DetectConfig;
use crate::conn::{ConnRegistry, ConnState};
use crate::copy::{self, CopyConfig, Counters};
use crate::drain::Drain;
use crate::listener::ListenerCtx;
use crate::metrics::{errno_index, Metrics, Peer, SeriesKey, TcpSeries};
use crate::policy::Policy;
use crate::server_first::ServerFirstCache;
use crate::socket;
use crate::target;
use crate::vocab::{DetectResult, TlsStatus};

pub(crate) use connect::connect;
pub use sniff::{Sniffed, Upstream};

/// Engine-wide state every connection task shares.
pub struct Context {
    pub policy: Policy,
    pub metrics: Metrics,
    pub conns: ConnRegistry,
    pub server_first: ServerFirstCache,
    pub detect: DetectConfig,
    pub connect_timeout: Duration,
    pub copy: CopyConfig,
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
    let span = tracing::debug_span!("conn", id = Empty, listener = %l.name, peer = %peer, target = Empty);
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

    // 1. Target.
    let target = match target::resolve(&l.target, l.direction, &ctx.inbound, &client) {
        Ok(t) => t,
        Err(e) => {
            debug!(error = %e, "refused");
            ctx.metrics.accept_error(l.direction, e.accept_error());
            match e {
                target::TargetError::Loop(_) => ctx.metrics.errors.loop_refused.fetch_add(1, Relaxed),
                target::TargetError::OriginalDst(_) => ctx.metrics.errors.original_dst_failed.fetch_add(1, Relaxed),
                _ => 0,
            };
            socket::set_reset_on_close(&client);
            return;
        }
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

    // 2. Policy: the listener's explicit mode wins over the table.
    let (mode, detect_timeout) = match l.mode {
        Some(mode) => (mode, None),
        None => {
            let p = ctx.policy.load().lookup(l.direction, target);
            (p.mode, p.detect_timeout)
        }
    };
    let timeout = ctx.detect.timeout_for(l.direction, target.port(), detect_timeout);
    debug!(mode = mode.as_str(), detect_timeout_ms = timeout.as_millis() as u64, "policy");

    // 3. Detect.
    let sniffed = sniff::sniff(ctx, &client, l.direction, target, mode, timeout).await;
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

    // From here the connection is counted as an open TCP connection.
    let tls = TlsStatus::detected(l.direction, sniffed.sni.as_ref());
    let series = ctx.metrics.series(&SeriesKey { direction: l.direction, target, tls: tls.clone() });
    series.opened(Peer::Src);
    open.series = Some(series.clone());
    let mut src = SideGuard { series: series.clone(), peer: Peer::Src, errno: 0 };

    // HTTP is served request by request (its upstream connections pooled).
    if let Some(protocol) = http::protocol_of(ctx, sniffed.result) {
        let c = http::HttpConn { info: &reg.info, direction: l.direction, target, tls, series: series.clone() };
        http::serve(ctx, c, client, sniffed, protocol).await;
        return;
    }

    // 4. Connect (unless the server-first race already did).
    info.set_state(ConnState::Connecting);
    let server = match sniffed.upstream {
        Upstream::Open(s) => Ok(s),
        Upstream::Failed(e) => Err(e),
        Upstream::None => connect(target.0, ctx.connect_timeout).await,
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

    // 5. Forward: replay what detection read, in order, then splice. The
    // idle sweep may shut both sockets down (declared after them: withdrawn
    // before they close).
    let _sweepable = ctx.idle_timeout.map(|_| info.forwarding(&client, &server));
    info.set_state(ConnState::Forwarding);
    let spliced = &ctx.metrics.copy.spliced_directions;
    let fds = &ctx.limits.fds;
    let up = Counters { conn: &info.bytes_in, series: &series.bytes_client_to_server, spliced, fds };
    let down = Counters { conn: &info.bytes_out, series: &series.bytes_server_to_client, spliced, fds };
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
    let forwarded = copy::forward(&client, &server, up, down, ctx.copy).await;
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
