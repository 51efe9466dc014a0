//! Upstream HTTP connections: opened through a pluggable [`Connector`] and
//! reused per worker thread.
//!
//! A connection lives its whole life on one worker's single-threaded
//! runtime, and so do the upstream connections its requests use: each
//! worker keeps its own pools in a thread-local, so checking a connection
//! out or in touches no lock and no memory another worker writes (hyper-util's
//! pooled client shares one pool behind a mutex; with one runtime per core
//! that lock would be taken by every request of every worker). The pools
//! and their sweeper are `client/pool.rs`.
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

pub mod peer_settings;
mod pool;
use peer_settings::Preface;
pub use pool::Lease;
use pool::{H2Key, H1, H2};

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
pub type RequestBody = crate::http::head_timer::Tracked<crate::http::body::ScrubTrailers<Incoming>>;

/// A request that could not be sent, or failed.
pub enum SendError {
    /// Nothing was written: the request can go to another endpoint.
    NotSent(Box<Request<RequestBody>>, ProxyError),
    /// The request was (at least partly) sent.
    Failed(ProxyError),
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
        // Response heads up to `max_response_header_bytes` (a larger one is
        // a 502), as the server bounds request heads; up to 1,000 fields
        // (a response may carry many `Set-Cookie`s; hyper's default is 100).
        h1.max_header_size(config.max_response_header_bytes)
            .max_buf_size((config.max_response_header_bytes + 16 * 1024).max(8192))
            .max_headers(1000);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // Fixed receive windows (no BDP pings per DATA frame): 256 KiB per
        // stream and 1 MiB per connection bound what one upstream connection
        // can make the proxy hold for clients that read slowly.
        // Request bodies queued for an upstream that reads slowly are
        // bounded per stream the same way (hyper's default is 1 MB).
        h2.max_header_list_size(config.max_response_header_bytes as u32)
            .initial_stream_window_size(256 * 1024)
            .initial_connection_window_size(1024 * 1024)
            .max_send_buf_size(super::H2_SEND_BUFFER);
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
        let settings = Arc::new(peer_settings::PeerSettings::default());
        let io = TokioIo::new(peer_settings::SettingsWatch::new(self.dial(ctx, ep).await?, settings.clone()));
        let (tx, conn) = self.h2.handshake(io).await.map_err(|source| ProxyError::Upstream { addr: ep.addr, source })?;
        let addr = ep.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(upstream = %addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(H2 { tx, settings })
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
        let lease = |tx, resp: &Response<Incoming>| {
            Lease::new(key, tx, self.max_idle, peer_of(ep).cloned(), crate::http::headers::keep_alive_timeout(resp.headers()))
        };
        // Idle connections first, newest first; each is tried at most once.
        while let Some(mut tx) = pool::checkout_h1(key, peer_of(ep), self.idle_timeout) {
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

    async fn send_h2(&self, ctx: &Context, ep: &Endpoint, mut req: Request<RequestBody>) -> Result<Response<Incoming>, SendError> {
        let key = H2Key { engine: self.engine, client: ep.client, addr: ep.addr };
        // A second try only when the shared connection turned out closed
        // before the request was written.
        for _ in 0..2 {
            let cell = pool::h2_slot(key, peer_of(ep));
            let tx = match cell.get_or_try_init(|| self.dial_h2(ctx, ep)).await {
                Ok(tx) => tx.clone(),
                Err(e) => {
                    pool::forget_h2(key, &cell);
                    return Err(SendError::NotSent(Box::new(req), e));
                }
            };
            // RFC 8441 §3: `:protocol` only once the upstream's SETTINGS
            // enabled extended CONNECT (`peer_settings.rs`).
            if req.extensions().get::<hyper::ext::Protocol>().is_some() {
                match tx.settings.preface().await {
                    Preface::ExtendedConnect => {}
                    Preface::Plain => return Err(SendError::Failed(ProxyError::NoExtendedConnect(ep.addr))),
                    Preface::Invalid => return Err(SendError::Failed(ProxyError::BadPreface(ep.addr))),
                    Preface::Ended => {
                        // Not sent: a fresh connection (or another endpoint) may do.
                        pool::forget_h2(key, &cell);
                        continue;
                    }
                }
            }
            let mut tx = tx.tx;
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(r) => {
                        pool::forget_h2(key, &cell);
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

    /// Lets go of the HTTP/2 connections of client connection `client`
    /// (it ended): each closes once its last stream ended. Called on the
    /// worker that served it; elsewhere the sweeper closes them when idle.
    pub fn forget_client(&self, client: u64) {
        pool::forget_client(self.engine, client);
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
        pool::ensure_sweeper(self.engine, self.idle_timeout, &self.drain, &self.endpoints);
    }
}
