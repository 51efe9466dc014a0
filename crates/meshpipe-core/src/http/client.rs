//! Upstream HTTP connections: opened through a pluggable [`Connector`] and
//! reused per worker thread.
//!
//! A connection lives its whole life on one worker's single-threaded
//! runtime, and so do the upstream connections its requests use: each
//! worker keeps its own pools in a thread-local, so checking a connection
//! out or in touches no lock and no memory another worker writes (hyper-util's
//! pooled client shares one pool behind a mutex; with one runtime per core
//! that lock would be taken by every request of every worker).
//!
//! - HTTP/1: a keep-alive pool per endpoint, most recently used first (the
//!   warmest socket), at most `pool_max_idle` idle connections. A connection
//!   is checked back in when its response body ended cleanly and its
//!   request was written whole (an upstream may answer before the body
//!   arrived: a connection still carrying a body its client may never
//!   finish is never lent to another request); a stale one (closed by the
//!   server while idle) is noticed before the request is written and the
//!   request goes to the next (hyper hands an unsent request back), so a
//!   server's idle close never costs a request.
//! - HTTP/2: one multiplexed connection per client connection and endpoint,
//!   opened lazily by the first request while the others wait for it (no
//!   dial storm), closed when the client connection ends; hyper and h2
//!   enforce the server's stream limit and flow control. Not shared between
//!   client connections: a stream's unread response data holds window of
//!   the upstream connection it came on, so a client that stops reading (a
//!   zero window, on purpose or not) would exhaust a shared connection's
//!   window, or the server's memory for that session, and stall every other
//!   client of the endpoint. Per client connection it stalls only itself,
//!   and what it can make the proxy hold is bounded by that connection's
//!   window.
//! - Upgrades and CONNECT get a connection of their own (`dial_upgrade`),
//!   never pooled.
//!
//! Idle connections are closed after `pool_idle_timeout` by a sweeper task
//! per worker, and all of them when the engine drains.
//!
//! An endpoint that is a meshed destination (`Endpoint::mesh`, looked up
//! per request in the policy table's meshed peers) is reached through mesh
//! TLS, as opaque TCP to it is: the peer proxy's tunnel port, this proxy's
//! certificate, the peer's identity verified, and Linkerd's transport header
//! naming the endpoint's port and the session protocol
//! (`proxy::connect_mesh`). Every other endpoint goes through the
//! [`Connector`] (plain TCP by default). A pooled connection remembers the
//! identity it verified and is reused only for requests to that same peer,
//! so a destination that becomes meshed (or another pod's identity at a
//! reused address) never rides an older connection.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OnceCell;
// The runtime's clock, as the sweeper's timer: idle ages and reuse windows
// are measured on the clock that wakes the sweep (and that a paused test
// runtime advances).
use tokio::time::Instant;
use tracing::debug;

use crate::addr::TargetAddr;
use crate::destinations::Destination;
use crate::http::errors::ProxyError;
use crate::http::io::CountedIo;
use crate::identity::Identity;
use crate::metrics::SeriesKey;
use crate::proxy::Context;
use crate::tls::TlsState;
use crate::transport_header::TransportHeader;
use crate::vocab::{Direction, TlsStatus};

/// Which HTTP version a connection to an endpoint speaks (Linkerd's
/// transport header calls it the session protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionProtocol {
    Http1,
    Http2,
}

/// Where one request's connection goes.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The address dialled.
    pub addr: SocketAddr,
    pub protocol: SessionProtocol,
    /// The connection's original destination (a Service address when
    /// balanced).
    pub logical: TargetAddr,
    /// The client connection the request came on (its registry id): an
    /// HTTP/2 upstream connection serves one client connection only.
    pub client: u64,
    pub direction: Direction,
    /// Mesh TLS to a meshed endpoint; `None`: the connector (plain TCP).
    pub mesh: Option<MeshRoute>,
}

/// Mesh TLS to a meshed endpoint: this proxy's identity (the one in force
/// when the request arrived) and the peer the endpoint must prove it is.
#[derive(Clone)]
pub struct MeshRoute {
    pub state: Arc<TlsState>,
    pub dest: Arc<Destination>,
}

impl std::fmt::Debug for MeshRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRoute").field("server_id", &self.dest.identity.as_str()).field("tunnel_port", &self.dest.tunnel_port).finish()
    }
}

impl MeshRoute {
    /// The route to `addr` when it is a meshed destination and this proxy
    /// has an identity (outbound only): one probe of the policy table.
    pub fn to(ctx: &Context, direction: Direction, addr: SocketAddr) -> Option<MeshRoute> {
        if direction != Direction::Outbound {
            return None;
        }
        let state = ctx.mesh.tls()?;
        let dest = ctx.policy.load().mesh_peer(addr.ip())?;
        Some(MeshRoute { state, dest })
    }
}

/// The TLS status of a plaintext upstream connection, labelled as the TCP
/// path labels one (proxy.rs): outbound to loopback says so.
fn plaintext_status(ep: &Endpoint) -> TlsStatus {
    if ep.direction == Direction::Outbound && ep.addr.ip().is_loopback() {
        TlsStatus::NoIdentity(crate::vocab::NoTlsReason::Loopback)
    } else {
        TlsStatus::plaintext(ep.direction)
    }
}

/// The peer a pooled connection verified (`None`: not mesh TLS).
fn peer_of(ep: &Endpoint) -> Option<&Identity> {
    ep.mesh.as_ref().map(|m| &m.dest.identity)
}

/// A byte stream to an endpoint.
pub trait UpstreamStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> UpstreamStream for T {}

/// What a connector returns.
pub type UpstreamIo = Box<dyn UpstreamStream>;
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<UpstreamIo>> + Send>>;

/// Opens plaintext connections to endpoints (plain TCP by default; tests
/// and embedders may plug in another transport). Meshed endpoints do not go
/// through it: the client opens mesh TLS to them itself.
pub trait Connector: Send + Sync + 'static {
    fn connect(&self, endpoint: &Endpoint) -> ConnectFuture;
}

/// Plain TCP with the engine's connect timeout (`proxy/connect.rs`).
pub struct TcpConnector {
    pub timeout: Duration,
}

impl Connector for TcpConnector {
    fn connect(&self, endpoint: &Endpoint) -> ConnectFuture {
        let (addr, timeout) = (endpoint.addr, self.timeout);
        Box::pin(async move { Ok(Box::new(crate::proxy::connect(addr, timeout).await?) as UpstreamIo) })
    }
}

/// A request body as the upstream connections send it: the client's,
/// marking its part of the exchange done when sent (`head_timer.rs`).
pub type RequestBody = crate::http::head_timer::Tracked<Incoming>;

/// A request that could not be sent, or failed.
pub enum SendError {
    /// Nothing was written: the request can go to another endpoint.
    NotSent(Box<Request<RequestBody>>, ProxyError),
    /// The request was (at least partly) sent.
    Failed(ProxyError),
}

type H1 = http1::SendRequest<RequestBody>;

/// An HTTP/2 connection's place in the pools: one per engine, client
/// connection and endpoint.
#[derive(Clone, Copy)]
struct H2Key {
    engine: u64,
    client: u64,
    addr: SocketAddr,
}
type H2 = http2::SendRequest<RequestBody>;

struct IdleH1 {
    tx: H1,
    since: Instant,
    /// Reused only before this: the upstream's own idle timeout, less a
    /// margin (`reuse_window`).
    until: Option<Instant>,
    /// The identity the connection's peer proved (mesh TLS).
    peer: Option<Identity>,
}

struct H2Slot {
    conn: Arc<OnceCell<H2>>,
    used: Instant,
    peer: Option<Identity>,
}

/// One worker's connections, for every engine on the thread (keyed by the
/// engine's id, so two engines in one process never share a connection).
#[derive(Default)]
struct Pools {
    h1: HashMap<(u64, SocketAddr), Vec<IdleH1>>,
    /// By engine and client connection, then endpoint.
    h2: HashMap<(u64, u64), HashMap<SocketAddr, H2Slot>>,
    /// Engines whose sweeper runs on this thread.
    swept: HashSet<u64>,
}

thread_local! {
    static POOLS: RefCell<Pools> = RefCell::default();
}

/// An HTTP/1 connection lent to one exchange; checked back in by the
/// response body when it ended cleanly (`body.rs`).
pub struct Lease {
    key: (u64, SocketAddr),
    tx: H1,
    max_idle: usize,
    peer: Option<Identity>,
    /// How long the upstream keeps the connection idle (`Keep-Alive:
    /// timeout=N` on its last response).
    upstream_idle: Option<Duration>,
}

impl Lease {
    pub fn release(self, clean: bool) {
        // Not ready: the request is still being written (the upstream
        // answered before the whole body arrived, RFC 9110 §15.5.14 allows
        // it). Pooled, the next request, any client's, would wait for a
        // body its client may never finish; dropped, the connection
        // finishes this exchange and closes.
        if !clean || self.tx.is_closed() || !self.tx.is_ready() {
            return;
        }
        let Lease { key, tx, max_idle, peer, upstream_idle } = self;
        let since = Instant::now();
        let window = upstream_idle.map(reuse_window);
        if window == Some(Duration::ZERO) {
            return;
        }
        let _ = POOLS.try_with(|p| {
            let mut p = p.borrow_mut();
            let idle = p.h1.entry(key).or_default();
            if idle.len() < max_idle {
                idle.push(IdleH1 { tx, since, until: window.map(|w| since + w), peer });
            }
        });
    }
}

/// How long a connection whose upstream closes it after `upstream_idle` is
/// reused: a second less (as undici does), or half of a shorter one. A
/// request sent just as the upstream closes the connection would fail
/// after it was written, with no safe retry for a non-idempotent one; a
/// reuse the upstream's clock has not run out on never races its close.
fn reuse_window(upstream_idle: Duration) -> Duration {
    const MARGIN: Duration = Duration::from_secs(1);
    if upstream_idle >= 2 * MARGIN {
        upstream_idle - MARGIN
    } else {
        upstream_idle / 2
    }
}

/// The upstream side of the HTTP proxy.
pub struct Client {
    engine: u64,
    connector: Arc<dyn Connector>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    max_idle: usize,
    idle_timeout: Duration,
    drain: crate::drain::Drain,
    /// The endpoints table, for the sweeper to forget balancer state of
    /// Services that left it.
    endpoints: Arc<super::endpoints::Endpoints>,
}

impl Client {
    /// `engine` keys this engine's state in the per-worker thread-locals.
    pub fn new(
        config: &super::HttpConfig,
        connector: Arc<dyn Connector>,
        drain: crate::drain::Drain,
        engine: u64,
        endpoints: Arc<super::endpoints::Endpoints>,
    ) -> Client {
        let mut h1 = http1::Builder::new();
        h1.max_buf_size(config.max_response_header_bytes.max(8192)).max_headers(1000);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // Fixed receive windows (no BDP pings per DATA frame): 256 KiB per
        // stream and 1 MiB per connection bound what one upstream connection
        // can make the proxy hold for clients that read slowly.
        h2.max_header_list_size(config.max_response_header_bytes as u32)
            .initial_stream_window_size(256 * 1024)
            .initial_connection_window_size(1024 * 1024);
        Client { engine, connector, h1, h2, max_idle: config.pool_max_idle, idle_timeout: config.pool_idle_timeout, drain, endpoints }
    }

    /// Opens a counted connection to `ep`: mesh TLS to a meshed endpoint,
    /// otherwise through the connector.
    async fn dial(&self, ctx: &Context, ep: &Endpoint) -> Result<CountedIo<UpstreamIo>, ProxyError> {
        let (io, tls) = match &ep.mesh {
            Some(route) => {
                let port = std::num::NonZeroU16::new(ep.addr.port())
                    .ok_or(ProxyError::Connect { addr: ep.addr, source: io::Error::new(io::ErrorKind::InvalidInput, "port 0") })?;
                let protocol = Some(match ep.protocol {
                    SessionProtocol::Http1 => crate::transport_header::SessionProtocol::Http1,
                    SessionProtocol::Http2 => crate::transport_header::SessionProtocol::Http2,
                });
                let header = TransportHeader { port, name: None, protocol };
                let (stream, _) =
                    crate::proxy::connect_mesh(ctx, &route.state, TargetAddr(ep.addr), &route.dest, &header).await.map_err(|e| {
                        crate::proxy::outbound_mesh::log_failure(&e, &route.dest);
                        ProxyError::Mesh { addr: ep.addr, source: e }
                    })?;
                (Box::new(stream) as UpstreamIo, TlsStatus::Mesh { peer: Arc::from(route.dest.identity.as_str()) })
            }
            None => {
                let io = self.connector.connect(ep).await.map_err(|source| ProxyError::Connect { addr: ep.addr, source })?;
                (io, plaintext_status(ep))
            }
        };
        let series = ctx.metrics.series(&SeriesKey { direction: ep.direction, target: TargetAddr(ep.addr), tls });
        Ok(CountedIo::new(io, series))
    }

    async fn dial_h1(&self, ctx: &Context, ep: &Endpoint, upgrades: bool) -> Result<H1, ProxyError> {
        let io = TokioIo::new(self.dial(ctx, ep).await?);
        let (tx, conn) = self.h1.handshake(io).await.map_err(|source| ProxyError::Upstream { addr: ep.addr, source })?;
        let addr = ep.addr;
        if upgrades {
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    debug!(upstream = %addr, error = %e, "upstream HTTP/1 connection ended with an error");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(upstream = %addr, error = %e, "upstream HTTP/1 connection ended with an error");
                }
            });
        }
        Ok(tx)
    }

    async fn dial_h2(&self, ctx: &Context, ep: &Endpoint) -> Result<H2, ProxyError> {
        let io = TokioIo::new(self.dial(ctx, ep).await?);
        let (tx, conn) = self.h2.handshake(io).await.map_err(|source| ProxyError::Upstream { addr: ep.addr, source })?;
        let addr = ep.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(upstream = %addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// Sends `req` to `ep` over a pooled (HTTP/1) or shared (HTTP/2) connection.
    pub async fn send(
        &self,
        ctx: &Context,
        ep: &Endpoint,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        self.ensure_sweeper();
        match ep.protocol {
            SessionProtocol::Http1 => self.send_h1(ctx, ep, req).await.map(|(r, l)| (r, Some(l))),
            SessionProtocol::Http2 => self.send_h2(ctx, ep, req).await.map(|r| (r, None)),
        }
    }

    async fn send_h1(&self, ctx: &Context, ep: &Endpoint, mut req: Request<RequestBody>) -> Result<(Response<Incoming>, Lease), SendError> {
        let key = (self.engine, ep.addr);
        let lease = |tx, resp: &Response<Incoming>| Lease {
            key,
            tx,
            max_idle: self.max_idle,
            peer: peer_of(ep).cloned(),
            upstream_idle: crate::http::headers::keep_alive_timeout(resp.headers()),
        };
        // Idle connections first, newest first; each is tried at most once.
        while let Some(mut tx) = self.checkout_h1(key, peer_of(ep)) {
            if !tx.is_ready() && tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let lease = lease(tx, &resp);
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(SendError::Failed(ProxyError::upstream(ep.addr, e.into_error()))),
                },
            }
        }
        let mut tx = match self.dial_h1(ctx, ep, false).await {
            Ok(tx) => tx,
            Err(e) => return Err(SendError::NotSent(Box::new(req), e)),
        };
        match tx.try_send_request(req).await {
            Ok(resp) => {
                let lease = lease(tx, &resp);
                Ok((resp, lease))
            }
            Err(mut e) => {
                let unsent = e.take_message();
                let source = ProxyError::upstream(ep.addr, e.into_error());
                match unsent {
                    Some(r) => Err(SendError::NotSent(Box::new(r), source)),
                    None => Err(SendError::Failed(source)),
                }
            }
        }
    }

    /// The newest usable idle connection to `key` whose peer is `peer`;
    /// closed or expired ones met on the way are dropped, those of another
    /// peer are left in place.
    fn checkout_h1(&self, key: (u64, SocketAddr), peer: Option<&Identity>) -> Option<H1> {
        POOLS.with(|p| {
            let mut p = p.borrow_mut();
            let idle = p.h1.get_mut(&key)?;
            while let Some(i) = idle.iter().rposition(|c| c.peer.as_ref() == peer) {
                let c = idle.remove(i);
                if !c.tx.is_closed() && c.since.elapsed() < self.idle_timeout && c.until.is_none_or(|u| Instant::now() < u) {
                    return Some(c.tx);
                }
            }
            None
        })
    }

    async fn send_h2(&self, ctx: &Context, ep: &Endpoint, mut req: Request<RequestBody>) -> Result<Response<Incoming>, SendError> {
        let key = H2Key { engine: self.engine, client: ep.client, addr: ep.addr };
        // A second try only when the shared connection turned out closed
        // before the request was written.
        for _ in 0..2 {
            let cell = self.h2_slot(key, peer_of(ep));
            let tx = match cell.get_or_try_init(|| self.dial_h2(ctx, ep)).await {
                Ok(tx) => tx.clone(),
                Err(e) => {
                    self.forget_h2(key, &cell);
                    return Err(SendError::NotSent(Box::new(req), e));
                }
            };
            let mut tx = tx;
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(r) => {
                        self.forget_h2(key, &cell);
                        req = r;
                    }
                    None => return Err(SendError::Failed(ProxyError::upstream(ep.addr, e.into_error()))),
                },
            }
        }
        Err(SendError::NotSent(
            Box::new(req),
            ProxyError::Connect { addr: ep.addr, source: io::Error::new(io::ErrorKind::ConnectionReset, "HTTP/2 connection closed") },
        ))
    }

    /// The client connection's HTTP/2 connection to `key` with `peer` (a
    /// fresh, empty slot when there is none, it closed, or it is to another
    /// peer: requests already on that one finish there).
    fn h2_slot(&self, key: H2Key, peer: Option<&Identity>) -> Arc<OnceCell<H2>> {
        POOLS.with(|p| {
            let mut p = p.borrow_mut();
            let slot = p.h2.entry((key.engine, key.client)).or_default().entry(key.addr).or_insert_with(|| H2Slot {
                conn: Arc::new(OnceCell::new()),
                used: Instant::now(),
                peer: peer.cloned(),
            });
            if slot.conn.get().is_some_and(|c| c.is_closed()) || slot.peer.as_ref() != peer {
                slot.conn = Arc::new(OnceCell::new());
                slot.peer = peer.cloned();
            }
            slot.used = Instant::now();
            slot.conn.clone()
        })
    }

    fn forget_h2(&self, key: H2Key, cell: &Arc<OnceCell<H2>>) {
        POOLS.with(|p| {
            let mut p = p.borrow_mut();
            if let Some(slots) = p.h2.get_mut(&(key.engine, key.client)) {
                if slots.get(&key.addr).is_some_and(|s| Arc::ptr_eq(&s.conn, cell)) {
                    slots.remove(&key.addr);
                }
            }
        });
    }

    /// Lets go of the HTTP/2 connections of client connection `client`
    /// (it ended): each closes once its last stream ended. Called on the
    /// worker that served it; elsewhere the sweeper closes them when idle.
    pub fn forget_client(&self, client: u64) {
        let _ = POOLS.try_with(|p| p.borrow_mut().h2.remove(&(self.engine, client)));
    }

    /// A connection of its own for an upgrade or CONNECT: sends `req` and
    /// returns the response; the connection is never pooled.
    pub async fn send_upgrade(&self, ctx: &Context, ep: &Endpoint, req: Request<RequestBody>) -> Result<Response<Incoming>, SendError> {
        if ep.protocol == SessionProtocol::Http2 {
            // HTTP/2 CONNECT (RFC 8441 too) is one stream of the shared connection.
            self.ensure_sweeper();
            return self.send_h2(ctx, ep, req).await;
        }
        let mut tx = match self.dial_h1(ctx, ep, true).await {
            Ok(tx) => tx,
            Err(e) => return Err(SendError::NotSent(Box::new(req), e)),
        };
        tx.try_send_request(req).await.map_err(|e| SendError::Failed(ProxyError::upstream(ep.addr, e.into_error())))
    }

    /// Starts this worker's sweeper for this engine, once.
    fn ensure_sweeper(&self) {
        let first = POOLS.with(|p| p.borrow_mut().swept.insert(self.engine));
        if first {
            tokio::spawn(sweep(self.engine, self.idle_timeout, self.drain.clone(), self.endpoints.clone()));
        }
    }
}

/// Closes this worker's idle connections of `engine` past `idle_timeout`;
/// once the engine drains, every idle connection at each pass; at the drain
/// deadline everything, and ends. Also forgets the balancer state of
/// Services that left the endpoints table, so it stays bounded by the table.
async fn sweep(engine: u64, idle_timeout: Duration, drain: crate::drain::Drain, endpoints: Arc<super::endpoints::Endpoints>) {
    let period = (idle_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = drain.cut.cancelled() => break,
        }
        let max_age = if drain.stop_accepting.is_cancelled() { Duration::ZERO } else { idle_timeout };
        POOLS.with(|p| {
            let mut p = p.borrow_mut();
            for ((e, _), idle) in p.h1.iter_mut() {
                if *e == engine {
                    idle.retain(|c| !c.tx.is_closed() && c.since.elapsed() < max_age && c.until.is_none_or(|u| Instant::now() < u));
                }
            }
            p.h1.retain(|_, idle| !idle.is_empty());
            for ((e, _), slots) in p.h2.iter_mut() {
                if *e == engine {
                    slots.retain(|_, s| s.used.elapsed() < max_age && !s.conn.get().is_some_and(|c| c.is_closed()));
                }
            }
            p.h2.retain(|_, slots| !slots.is_empty());
        });
        super::balance::retain(engine, &endpoints.load());
    }
    let _ = POOLS.try_with(|p| {
        let mut p = p.borrow_mut();
        p.h1.retain(|(e, _), _| *e != engine);
        p.h2.retain(|(e, _), _| *e != engine);
        p.swept.remove(&engine);
    });
    super::balance::retain(engine, &super::endpoints::EndpointsTable::default());
}

/// Idle HTTP/1 connections and HTTP/2 connections this worker keeps (tests).
pub fn pooled_on_this_thread() -> (usize, usize) {
    POOLS.with(|p| {
        let p = p.borrow();
        (p.h1.values().map(Vec::len).sum(), p.h2.values().map(HashMap::len).sum())
    })
}
