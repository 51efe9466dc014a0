//! HTTP-aware proxying: a connection that detection (or its port's declared
//! mode) says is HTTP/1 or HTTP/2 is served as HTTP, and each request is
//! proxied, measured and balanced as a request.
//!
//! The pieces, each in its own file under `http/`:
//! - `io.rs`: the client socket with the bytes detection already read put
//!   back in front (nothing lost), counting bytes like the TCP path does;
//! - `server.rs`: hyper's server connection (HTTP/1 or HTTP/2) and the
//!   per-request proxy logic;
//! - `head_timer.rs`: HTTP/1's request-head timeout, which (unlike
//!   hyper's) leaves idle keep-alive connections alone;
//! - `headers.rs`: hop-by-hop headers (RFC 9110 §7.6.1), authority, upgrades;
//! - `client.rs`: upstream connections, mesh TLS to meshed endpoints and
//!   otherwise opened through a pluggable [`Connector`], kept per worker
//!   thread: an HTTP/1 keep-alive pool and one multiplexed HTTP/2
//!   connection per endpoint, no lock shared between workers;
//! - `endpoints.rs`: the endpoints table (Service address → endpoints),
//!   swapped atomically, updated by deltas onto a base generation;
//! - `balance.rs`: endpoints of a Service (power of two choices over
//!   peak-EWMA latency, failing endpoints taken out and probed back);
//! - `errors.rs`: the responses the proxy makes up (502, 503, 504, 508, and
//!   gRPC trailers-only equivalents), Linkerd's `l5d-proxy-error` semantics;
//! - `body.rs`: the response body that records latency (first body frame),
//!   the gRPC status (trailers or trailers-only) and the response count;
//! - `upgrade.rs`: HTTP/1.1 `Upgrade`, `CONNECT` and HTTP/2 extended CONNECT
//!   (RFC 8441) become byte tunnels once both sides agreed.
//!
//! Everything per request happens on the connection's worker thread; the
//! shared state it touches is atomics (metrics) and an `ArcSwap` (endpoints).

pub mod balance;
pub mod body;
pub mod client;
pub mod endpoints;
pub mod errors;
pub mod framing;
pub mod head_timer;
pub mod headers;
pub mod io;
pub mod server;
pub mod upgrade;

use std::time::Duration;

use crate::addr::PortRange;
use crate::vocab::Direction;

pub use client::{Connector, Endpoint, SessionProtocol, TcpConnector, UpstreamIo};
pub use errors::ProxyError;
pub use server::HttpState;

/// Concurrent streams an HTTP/2 client may open on one connection to the
/// proxy (SETTINGS_MAX_CONCURRENT_STREAMS, RFC 9113 §6.5.2: "no smaller
/// than 100" is recommended; h2load and gRPC clients use up to that).
pub const H2_MAX_STREAMS: u32 = 100;

/// Bytes of one HTTP/2 stream's data queued for its peer beyond what the
/// socket took: a peer that grants a huge window and then stops reading
/// makes the proxy hold at most this per stream. Four frames of the
/// default size keep one stream's bulk transfer at full speed.
pub const H2_SEND_BUFFER: usize = 64 * 1024;

/// HTTP settings, validated (see `config::HttpSpec`).
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Request headers (request line included) larger than this get 431.
    pub max_header_bytes: usize,
    /// An HTTP/1 request head must arrive whole within this of its first
    /// byte (`head_timer.rs`); idle keep-alive time is not counted.
    pub header_timeout: Duration,
    /// Response headers from upstream larger than this are a bad gateway.
    pub max_response_header_bytes: usize,
    /// The response timeout (to response headers) of each port; the first
    /// matching entry wins, then `response_timeout`; `None` waits forever.
    pub port_response_timeouts: Vec<(Option<Direction>, PortRange, Option<Duration>)>,
    pub response_timeout: Option<Duration>,
    /// Idle HTTP/1 upstream connections kept per endpoint and worker.
    pub pool_max_idle: usize,
    /// An idle upstream connection (HTTP/1 or HTTP/2) is closed after this.
    pub pool_idle_timeout: Duration,
    /// Serve clients as HTTP at all (`false`: HTTP is forwarded as TCP).
    pub enabled: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(30),
            max_response_header_bytes: 64 * 1024,
            port_response_timeouts: Vec::new(),
            response_timeout: None,
            pool_max_idle: 128,
            pool_idle_timeout: Duration::from_secs(90),
            enabled: true,
        }
    }
}

impl HttpConfig {
    /// The response timeout for requests to `port` in `direction`.
    pub fn response_timeout_for(&self, direction: Direction, port: u16) -> Option<Duration> {
        self.port_response_timeouts
            .iter()
            .find(|(d, range, _)| d.is_none_or(|d| d == direction) && range.contains(port))
            .map_or(self.response_timeout, |(_, _, t)| *t)
    }
}

/// Why a proxied exchange failed or was refused, as the `error` label of
/// `response_total` and `{direction}_http_errors_total` spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum HttpErrorReason {
    /// The upstream refused or could not be reached, or failed before answering (502).
    BadGateway,
    /// No endpoint could take the request (503).
    Unavailable,
    /// The upstream did not answer within the response timeout (504).
    GatewayTimeout,
    /// The request would reach the proxy itself (508).
    Loop,
    /// The client sent a malformed request (400, by the HTTP server).
    BadRequest,
    /// The client's request headers exceeded `maxHeaderBytes` (431).
    HeadersTooLarge,
    /// The response body failed after the headers were sent (stream reset,
    /// upstream closed mid-body): the client sees the stream end in error.
    ResponseBody,
    /// The client went away (or reset the stream) before the response ended.
    ClientCancel,
    /// A declared HTTP port whose client did not speak HTTP: forwarded as TCP.
    NotHttp,
    /// An HTTP/1 client did not complete a request head within the header
    /// timeout of its first byte (a slowloris): its connection was closed.
    HeaderTimeout,
    /// An HTTP/2 client broke the protocol or its flood limits (rapid
    /// reset, CONTINUATION flood, a flow-control window past 2^31-1, ...):
    /// the proxy sent GOAWAY and closed its connection.
    ProtocolError,
}

impl HttpErrorReason {
    pub const COUNT: usize = 11;
    pub const ALL: [HttpErrorReason; Self::COUNT] = [
        HttpErrorReason::BadGateway,
        HttpErrorReason::Unavailable,
        HttpErrorReason::GatewayTimeout,
        HttpErrorReason::Loop,
        HttpErrorReason::BadRequest,
        HttpErrorReason::HeadersTooLarge,
        HttpErrorReason::ResponseBody,
        HttpErrorReason::ClientCancel,
        HttpErrorReason::NotHttp,
        HttpErrorReason::HeaderTimeout,
        HttpErrorReason::ProtocolError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HttpErrorReason::BadGateway => "bad_gateway",
            HttpErrorReason::Unavailable => "unavailable",
            HttpErrorReason::GatewayTimeout => "gateway_timeout",
            HttpErrorReason::Loop => "loop",
            HttpErrorReason::BadRequest => "bad_request",
            HttpErrorReason::HeadersTooLarge => "headers_too_large",
            HttpErrorReason::ResponseBody => "response_body",
            HttpErrorReason::ClientCancel => "client_cancel",
            HttpErrorReason::NotHttp => "not_http",
            HttpErrorReason::HeaderTimeout => "header_timeout",
            HttpErrorReason::ProtocolError => "protocol_error",
        }
    }

    pub fn from_index(i: usize) -> Option<HttpErrorReason> {
        Self::ALL.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_serialise_as_labelled_and_in_order() {
        for (i, r) in HttpErrorReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(serde_json::to_value(r).unwrap().as_str().unwrap(), r.as_str());
        }
    }

    #[test]
    fn port_timeouts_first_match_wins() {
        let c = HttpConfig {
            response_timeout: Some(Duration::from_secs(9)),
            port_response_timeouts: vec![
                (Some(Direction::Inbound), PortRange::new(80, 80).unwrap(), None),
                (None, PortRange::new(80, 90).unwrap(), Some(Duration::from_secs(1))),
            ],
            ..HttpConfig::default()
        };
        assert_eq!(c.response_timeout_for(Direction::Inbound, 80), None);
        assert_eq!(c.response_timeout_for(Direction::Outbound, 80), Some(Duration::from_secs(1)));
        assert_eq!(c.response_timeout_for(Direction::Outbound, 91), Some(Duration::from_secs(9)));
    }
}
