//! The client side: one accepted connection served as HTTP/1 or HTTP/2 by
//! hyper's connection builders, and each request proxied.
//!
//! Per request: count it (`request_total`) under its authority, strip
//! hop-by-hop headers, pick the endpoint (the original destination, or a
//! balanced endpoint of the Service it addresses), send it through the
//! worker's upstream pool, and hand back the response with its body streamed
//! and measured (`body.rs`). Failures become HTTP responses (`errors.rs`).
//! A request the proxy could not write to an endpoint (refused, pooled
//! connection gone) is sent to another endpoint of the same Service, so a
//! dead backend costs only the requests that were in flight on it.
//!
//! Drain: when the engine stops accepting, each connection is asked to
//! shut down gracefully (HTTP/1: after the exchange in flight; HTTP/2:
//! GOAWAY, the open streams finish), so clients move to another proxy
//! without seeing an error.
//!
//! Errors that end a connection (a proxy loop, or a meshed peer proxy's
//! `l5d-proxy-connection: close` on a response it made up) close the
//! client's connection the same way after that response: `connection:
//! close` on HTTP/1, a graceful GOAWAY on HTTP/2. The peer's
//! `l5d-proxy-connection` never reaches the application; its
//! `l5d-proxy-error` does, as Linkerd's outbound leaves it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::addr::TargetAddr;
use crate::copy::stream::Transport;
use crate::http::body::{Metered, ProxyBody, ScrubTrailers};
use crate::http::client::{Endpoint, MeshRoute, RequestBody, SendError, SessionProtocol};
use crate::http::errors::{self, Audience, ProxyError};
use crate::http::head_timer::{HeadClock, Part, Tracked};
use crate::http::headers::{self, Tunnel};
use crate::http::io::ClientIo;
use crate::http::{balance, framing, upgrade, HttpConfig, HttpErrorReason};
use crate::metrics::{HttpKey, HttpSeries, ResponseKey};
use crate::proxy::Context;
use crate::vocab::{Direction, TlsStatus};

/// Attempts per request on endpoints that refused it before it was written.
const MAX_ATTEMPTS: usize = 4;

/// The engine's HTTP machinery: settings, the server builders (built once),
/// the upstream client and the endpoints table.
pub struct HttpState {
    pub config: HttpConfig,
    pub client: crate::http::client::Client,
    pub endpoints: Arc<super::endpoints::Endpoints>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    engine: u64,
}

impl HttpState {
    pub fn new(config: HttpConfig, connector: Arc<dyn crate::http::Connector>, drain: crate::drain::Drain) -> HttpState {
        let mut h1 = http1::Builder::new();
        // Request heads up to `max_header_bytes` (431 above it, hyper's own
        // answer); clients that half-close after their request still get
        // the response. hyper's header read timeout is off: it would also
        // close idle keep-alive connections; `head_timer.rs` times heads.
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_header_size(config.max_header_bytes)
            .max_buf_size((config.max_header_bytes + 16 * 1024).max(8192))
            .half_close(true)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // What a client that stops reading its socket (a huge window, then
        // silence) can make the proxy hold is at most
        // `H2_MAX_STREAMS` x `H2_SEND_BUFFER` queued for it, plus the
        // upstream connection's 1 MiB window (`client.rs`); hyper's
        // defaults (200 x 400 KiB) let one connection hold 80 MB.
        h2.timer(TokioTimer::new())
            .max_header_list_size(config.max_header_bytes as u32)
            .enable_connect_protocol()
            .max_concurrent_streams(super::H2_MAX_STREAMS)
            .max_send_buf_size(super::H2_SEND_BUFFER);
        // Keys this engine's per-worker pools and balancer state.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let engine = NEXT.fetch_add(1, Relaxed);
        let endpoints: Arc<super::endpoints::Endpoints> = Arc::default();
        let client = crate::http::client::Client::new(&config, connector, drain, engine, endpoints.clone());
        HttpState { config, client, endpoints, h1, h2, engine }
    }
}

/// One client connection's facts, shared by its requests.
pub struct Conn {
    pub ctx: Arc<Context>,
    /// The live registry's entry: its id (unique in the engine) keys the
    /// connection's own HTTP/2 upstream connections (`client.rs`), and the
    /// idle sweep's verdict ends its tunnels (`upgrade.rs`).
    pub info: Arc<crate::conn::ConnInfo>,
    pub direction: Direction,
    /// The original destination.
    pub target: TargetAddr,
    pub tls: TlsStatus,
    pub protocol: SessionProtocol,
    /// The client is a meshed proxy (mesh TLS): proxy errors carry `l5d-proxy-error`.
    pub meshed: bool,
    pub response_timeout: Option<Duration>,
    /// The series of the last authority seen (one lookup per authority
    /// change). Swapped, not locked: HTTP/2 streams of one connection read it
    /// concurrently, and the request path takes no lock.
    series: ArcSwapOption<CachedSeries>,
    /// Cancelled when the connection is to shut down gracefully: a child of
    /// the engine's drain (`stop_accepting`), also cancelled by a response
    /// that ends an HTTP/2 connection (HTTP/1 closes through its
    /// `connection: close` header). The connection's task waits on this one
    /// token only, whose lock no other connection shares.
    close: CancellationToken,
    /// The tunnels of this connection (`upgrade.rs`): `serve` returns only
    /// once they ended, so the connection's slot, descriptors, registry
    /// entry and idle timeout cover them.
    tunnels: TaskTracker,
    /// HTTP/1: the phase the request-head timer reads (`head_timer.rs`).
    head: Option<Arc<HeadClock>>,
}

/// An authority and its series.
type CachedSeries = (Option<Arc<str>>, Arc<HttpSeries>);

impl Conn {
    pub fn new(
        ctx: Arc<Context>,
        info: Arc<crate::conn::ConnInfo>,
        direction: Direction,
        target: TargetAddr,
        tls: TlsStatus,
        protocol: SessionProtocol,
        head: Option<Arc<HeadClock>>,
    ) -> Conn {
        let response_timeout = ctx.http.config.response_timeout_for(direction, target.port());
        // Inbound mesh TLS means the client is another proxy (outbound, the
        // mesh status names the server and the client is the local app).
        let meshed = direction == Direction::Inbound && matches!(tls, TlsStatus::Mesh { .. });
        let close = ctx.drain.stop_accepting.child_token();
        Conn {
            ctx,
            info,
            direction,
            target,
            tls,
            protocol,
            meshed,
            response_timeout,
            series: ArcSwapOption::empty(),
            close,
            tunnels: TaskTracker::new(),
            head,
        }
    }

    /// The series of `authority` (as the request spelled it: labels are
    /// lower-cased, and a change of case alone is the same series).
    fn series(&self, authority: Option<&str>) -> Arc<HttpSeries> {
        if let Some(cached) = self.series.load().as_ref() {
            let same = match (cached.0.as_deref(), authority) {
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                (None, None) => true,
                _ => false,
            };
            if same {
                return cached.1.clone();
            }
        }
        let authority: Option<Arc<str>> = authority.map(|a| Arc::from(a.to_ascii_lowercase()));
        let key = HttpKey { direction: self.direction, authority: authority.clone(), target: self.target, tls: self.tls.clone() };
        let s = self.ctx.metrics.http_series(&key);
        self.series.store(Some(Arc::new((authority, s.clone()))));
        s
    }

    /// Ends the client's connection after the response with `headers`.
    fn close_after(&self, headers: &mut http::HeaderMap) {
        match self.protocol {
            SessionProtocol::Http1 => {
                headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            SessionProtocol::Http2 => self.close.cancel(),
        }
    }
}

/// Serves the connection until the client closes it (or the drain ends it)
/// and every tunnel it opened has ended; a connection-level error hyper
/// reported is counted. The client stream is a plain socket or inbound
/// mesh TLS (`ClientIo<S>`).
pub async fn serve<S: Transport + Send + 'static>(conn: Arc<Conn>, io: ClientIo<S>) {
    let ctx = conn.ctx.clone();
    let direction = conn.direction;
    let protocol = conn.protocol;
    let close = conn.close.clone();
    let this = conn.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let conn = conn.clone();
        // The head is complete (hyper calls this as it parsed it, before it
        // polls the future): the head timer rests until both bodies are
        // done with.
        let (req_part, resp_part) = conn.head.as_ref().map_or_else(|| (Part::none(), Part::none()), |h| h.busy());
        async move {
            let scrub = conn.direction == Direction::Inbound;
            let resp = handle(conn, req.map(|b| Tracked::new(ScrubTrailers::new(b, scrub), req_part))).await?;
            Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, resp_part)))
        }
    });
    let result = match protocol {
        SessionProtocol::Http1 => {
            let c = ctx.http.h1.serve_connection(TokioIo::new(io), svc).with_upgrades();
            tokio::pin!(c);
            tokio::select! {
                r = c.as_mut() => r,
                _ = close.cancelled() => {
                    c.as_mut().graceful_shutdown();
                    c.await
                }
            }
        }
        SessionProtocol::Http2 => {
            let c = ctx.http.h2.serve_connection(TokioIo::new(io), svc);
            tokio::pin!(c);
            tokio::select! {
                r = c.as_mut() => r,
                _ = close.cancelled() => {
                    c.as_mut().graceful_shutdown();
                    c.await
                }
            }
        }
    };
    // The head timer's close (an HTTP/1 client whose request head did not
    // arrive whole in time) is counted whether or not hyper reported it: it
    // drops a read error when its buffer held no request yet.
    let head_timeout = this.head.as_ref().is_some_and(|h| h.fired());
    if head_timeout {
        ctx.metrics.http_error(direction, HttpErrorReason::HeaderTimeout);
    }
    if let Err(e) = result {
        // hyper answered a malformed HTTP/1 request (400) or an oversized
        // head (431) itself before closing; h2 sent GOAWAY to an HTTP/2
        // client that broke the protocol or a flood limit. A client that
        // merely went away is none of these.
        let reason = if head_timeout {
            None
        } else if e.is_parse_too_large() {
            Some(HttpErrorReason::HeadersTooLarge)
        } else if e.is_parse() || e.is_parse_status() {
            Some(HttpErrorReason::BadRequest)
        } else if protocol == SessionProtocol::Http2 && sent_goaway(&e) {
            Some(HttpErrorReason::ProtocolError)
        } else {
            None
        };
        if let Some(r) = reason {
            ctx.metrics.http_error(direction, r);
        }
        debug!(error = %e, "HTTP connection ended with an error");
    }
    // An upgraded HTTP/1 connection ends here with its socket handed to
    // the tunnel; HTTP/2 tunnels are streams of a connection that ended.
    this.tunnels.close();
    this.tunnels.wait().await;
    ctx.http.client.forget_client(this.info.id);
}

/// Whether an HTTP/2 connection ended because h2 itself sent the client a
/// GOAWAY with an error (not the client's GOAWAY, not an I/O error).
fn sent_goaway(e: &hyper::Error) -> bool {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<h2::Error>()).is_some_and(|h| h.is_go_away() && h.is_library())
}

async fn handle(conn: Arc<Conn>, mut req: Request<RequestBody>) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    if conn.protocol == SessionProtocol::Http2 {
        // First, so every use of the head (gRPC or not, the authority)
        // reads the values every hop agrees on.
        headers::trim_field_values(req.headers_mut());
    }
    let series = conn.series(headers::authority_raw(&req));
    series.requests.fetch_add(1, Relaxed);
    let audience = Audience {
        grpc: headers::is_grpc(req.headers()),
        meshed: conn.meshed,
        http1: conn.protocol == SessionProtocol::Http1,
        remote: conn.direction == Direction::Inbound && !conn.meshed,
    };
    let tunnel = headers::tunnel_of(&req);
    if framing::connect_with_content(&req) {
        // hyper takes every CONNECT for an upgrade and hands the connection
        // over as soon as both directions are done, without flushing an
        // answer queued while the request body was still being read: the
        // claimed content is read (and discarded) first, within bounds.
        skip_content(req.into_body()).await;
        return Ok(refuse(&conn, &series, started, audience, ProxyError::ConnectContent));
    }
    let client_upgrade = (tunnel != Tunnel::None).then(|| hyper::upgrade::on(&mut req));
    headers::strip_hop_by_hop(req.headers_mut(), tunnel == Tunnel::Upgrade);
    framing::single_content_length(req.headers_mut());
    if conn.direction == Direction::Inbound {
        let peer = match &conn.tls {
            TlsStatus::Mesh { peer } => Some(&**peer),
            _ => None,
        };
        headers::set_client_id(req.headers_mut(), peer);
    }
    let client_version = req.version();
    let host = if conn.protocol == SessionProtocol::Http1 {
        let host = headers::fix_host(&mut req, conn.target.0);
        // The proxy speaks HTTP/1.1 upstream whatever the client's minor
        // version (RFC 9110 §6.2: a proxy sends its own version); hyper
        // answers an HTTP/1.0 client in kind.
        *req.version_mut() = Version::HTTP_11;
        host
    } else {
        headers::check_h2_host(&req)
    };
    let forwarded = match host {
        Ok(()) => forward(&conn, req, tunnel).await,
        Err(e) => Err(ProxyError::from(e)),
    };
    match forwarded {
        Ok(Forwarded { response: mut resp, lease, via_mesh }) => {
            if conn.protocol == SessionProtocol::Http2 {
                headers::trim_field_values(resp.headers_mut());
            }
            if conn.protocol == SessionProtocol::Http1 {
                // The proxy answers in its own version (RFC 9110 §6.2),
                // whatever the upstream's: passed on, an HTTP/1.0
                // upstream's version would make hyper send a body of
                // unknown length close-delimited and end an HTTP/1.1
                // client's keep-alive connection. An HTTP/1.0 client,
                // which hyper answers in kind, can keep its connection
                // only for a body of known length: for any other, the
                // version hyper decides keep-alive by says HTTP/1.0, so
                // it does not promise `keep-alive` on a body that ends
                // with the connection.
                let known_length = http_body::Body::size_hint(resp.body()).exact().is_some();
                *resp.version_mut() = if client_version == Version::HTTP_10 && !known_length { Version::HTTP_10 } else { Version::HTTP_11 };
            }
            let status = resp.status();
            let agreed = upgrade::agreed(tunnel, status);
            let peer_close = headers::take_peer_close(resp.headers_mut());
            headers::strip_hop_by_hop(resp.headers_mut(), status == StatusCode::SWITCHING_PROTOCOLS && agreed);
            framing::single_content_length(resp.headers_mut());
            if agreed {
                // A 101, or a 2xx to CONNECT, has no content (RFC 9110
                // §8.6, §9.3.6: the client ignores such a Content-Length);
                // hyper refuses to write one, which would lose the response
                // and the tunnel with it.
                resp.headers_mut().remove(http::header::CONTENT_LENGTH);
            }
            if peer_close && via_mesh && !agreed {
                // Only a peer proven by mesh TLS may end the client's
                // connection (and a 101 it agreed to keeps its
                // `connection: upgrade`: the tunnel is the connection now).
                debug!(status = status.as_u16(), "the peer proxy closed its connection: closing the client's");
                conn.close_after(resp.headers_mut());
            }
            if let (true, Some(client_upgrade)) = (agreed, client_upgrade) {
                if let Some(h) = &conn.head {
                    h.tunnel();
                }
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                upgrade::spawn(client_upgrade, upstream_upgrade, &conn.ctx.drain, &conn.tunnels, conn.info.clone());
                series.latency.observe(started.elapsed());
                series.response(ResponseKey { status: status.as_u16(), grpc_status: None, error: None });
                let (parts, _) = resp.into_parts();
                return Ok(Response::from_parts(parts, ProxyBody::Empty));
            }
            let (parts, body) = resp.into_parts();
            let body = Metered::new(body, series, started, status.as_u16(), &parts.headers, lease);
            Ok(Response::from_parts(parts, ProxyBody::Upstream(Box::new(body))))
        }
        Err(e) => Ok(refuse(&conn, &series, started, audience, e)),
    }
}

/// Reads and discards a refused request's content: at most
/// [`SKIP_CONTENT_MAX`] bytes within [`SKIP_CONTENT_TIME`]. Past either,
/// the answer is sent anyway (and may be lost with the connection).
async fn skip_content(body: RequestBody) {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut seen = 0usize;
    let _ = tokio::time::timeout(SKIP_CONTENT_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, bytes::Bytes::len);
            if seen > SKIP_CONTENT_MAX {
                return;
            }
        }
    })
    .await;
}

const SKIP_CONTENT_MAX: usize = 64 * 1024;
const SKIP_CONTENT_TIME: Duration = Duration::from_secs(1);

/// The proxy's own answer to a request it could not get a response for:
/// counted by reason, and closing the connection where the error says so.
fn refuse(conn: &Conn, series: &HttpSeries, started: Instant, audience: Audience, e: ProxyError) -> Response<ProxyBody> {
    debug!(error = %e, "request failed");
    let reason = e.reason();
    conn.ctx.metrics.http_error(conn.direction, reason);
    let resp = errors::response(&e, audience);
    if e.closes_connection() && conn.protocol == SessionProtocol::Http2 {
        conn.close.cancel();
    }
    series.latency.observe(started.elapsed());
    let grpc_status = audience.grpc.then(|| e.grpc_status());
    series.response(ResponseKey { status: resp.status().as_u16(), grpc_status, error: Some(reason) });
    resp
}

/// An upstream's response, the pooled connection it came on, and whether
/// that connection was mesh TLS to a peer proxy.
struct Forwarded {
    response: Response<Incoming>,
    lease: Option<crate::http::client::Lease>,
    via_mesh: bool,
}

/// Sends `req` to the connection's destination, or to an endpoint of the
/// Service it addresses, within the response timeout.
async fn forward(conn: &Conn, req: Request<RequestBody>, tunnel: Tunnel) -> Result<Forwarded, ProxyError> {
    let send = forward_inner(conn, req, tunnel);
    match conn.response_timeout {
        None => send.await,
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::Timeout { addr: conn.target.0, timeout: t }),
        },
    }
}

async fn forward_inner(conn: &Conn, mut req: Request<RequestBody>, tunnel: Tunnel) -> Result<Forwarded, ProxyError> {
    let ctx = &conn.ctx;
    let head = req.method() == http::Method::HEAD;
    let entry = ctx.http.endpoints.load().get(conn.target.0).cloned();
    let offered = if tunnel == Tunnel::Upgrade { headers::offered_upgrades(req.headers()) } else { Vec::new() };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last: Option<ProxyError> = None;
    loop {
        let pick = match &entry {
            None => None,
            Some(e) => match balance::pick(ctx.http.engine, conn.target.0, e, &tried) {
                Some(p) => Some(p),
                None => return Err(last.unwrap_or(ProxyError::NoEndpoints(conn.target))),
            },
        };
        let addr = pick.as_ref().map_or(conn.target.0, |p| p.addr);
        if ctx.own.get().is_some_and(|own| own.is_own(TargetAddr(addr))) {
            return Err(ProxyError::Loop(addr));
        }
        let mesh = MeshRoute::to(ctx, conn.direction, addr);
        let via_mesh = mesh.is_some();
        let ep = Endpoint { addr, protocol: conn.protocol, logical: conn.target, direction: conn.direction, client: conn.info.id, mesh };
        let sent = if tunnel == Tunnel::None {
            ctx.http.client.send(ctx, &ep, req).await
        } else {
            ctx.http.client.send_upgrade(ctx, &ep, req).await.map(|r| (r, None))
        };
        match sent {
            Ok((response, _)) if response.status() == StatusCode::SWITCHING_PROTOCOLS && tunnel != Tunnel::Upgrade => {
                // RFC 9110 §15.2.2: a server switches only to a protocol
                // the request's Upgrade named. Passed on, the client would
                // get a 101 it never asked for and a connection in no
                // protocol; the upstream connection is dropped (its lease
                // with it), never pooled.
                return Err(ProxyError::UnrequestedSwitch(addr));
            }
            Ok((response, _))
                if response.status() == StatusCode::SWITCHING_PROTOCOLS && !headers::switch_was_offered(&offered, response.headers()) =>
            {
                // RFC 9110 §7.8: the same, for a 101 to another protocol
                // than the client offered (or that names none): the client
                // would speak one protocol to a server that speaks another.
                let upgrade = response
                    .headers()
                    .get_all(http::header::UPGRADE)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ProxyError::UnofferedSwitch { addr, upgrade: upgrade.chars().take(64).collect() });
            }
            Ok((response, _))
                if upgrade::agreed(tunnel, response.status()) && response.extensions().get::<hyper::upgrade::OnUpgrade>().is_none() =>
            {
                // A 2xx hyper's client does not take as the start of a
                // tunnel (a 204 to an HTTP/1 CONNECT, anything but 200 in
                // HTTP/2): passed on, the client would take it for one
                // (RFC 9110 §9.3.6) while no upstream tunnel exists.
                return Err(ProxyError::UnusableTunnel(addr, response.status().as_u16()));
            }
            Ok((response, _))
                if !framing::transfer_coding_is_chunked(response.headers())
                    && !framing::bodiless_response(head, tunnel == Tunnel::Connect, response.status()) =>
            {
                // A transfer coding other than chunked (RFC 9112 §6.1) was
                // never asked for (the proxy sends `TE: trailers` at most),
                // and hyper read the body to the connection's close without
                // decoding it: passed on, the client would get coded bytes
                // as the content. The upstream connection is dropped. (A
                // response without content, to HEAD or a 1xx/204/304, may
                // name the coding a GET would get: RFC 9112 §6.1.)
                return Err(ProxyError::UnsupportedCoding(addr));
            }
            Ok((response, lease)) => {
                if let Some(p) = pick {
                    p.success();
                }
                return Ok(Forwarded { response, lease, via_mesh });
            }
            Err(SendError::NotSent(r, e)) => {
                debug!(endpoint = %addr, error = %e, "request not sent");
                let Some(p) = pick else { return Err(e) };
                p.failed();
                tried.push(addr);
                if tried.len() >= MAX_ATTEMPTS {
                    return Err(e);
                }
                req = *r;
                last = Some(e);
            }
            Err(SendError::Failed(e)) => return Err(e),
        }
    }
}
