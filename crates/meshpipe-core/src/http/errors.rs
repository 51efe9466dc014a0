//! Errors are HTTP, not resets: what the proxy answers when it cannot get a
//! response from upstream, following Linkerd's semantics.
//!
//! | failure | HTTP | gRPC (trailers-only) |
//! | --- | --- | --- |
//! | upstream refused, unreachable, or failed before answering | 502 | UNAVAILABLE (14) |
//! | upstream answered 101 to a request that asked for no upgrade | 502 | UNAVAILABLE (14) |
//! | extended CONNECT (RFC 8441) to an HTTP/2 upstream that did not enable it, or whose preface was no SETTINGS frame | 502 | UNAVAILABLE (14) |
//! | no endpoint can take the request | 503 | UNAVAILABLE (14) |
//! | no response headers within the port's response timeout | 504 | DEADLINE_EXCEEDED (4) |
//! | the request would reach the proxy itself | 508 | ABORTED (10) |
//! | an HTTP/1 request with several `Host` fields, or none in HTTP/1.1 | 400 | INTERNAL (13) |
//! | userinfo (`user@`) in the target's authority or `Host` | 400 | INTERNAL (13) |
//! | an HTTP/1 CONNECT with a Content-Length or Transfer-Encoding (closes) | 400 | INTERNAL (13) |
//! | the client's request body was malformed (or cut short) on the way | 400 | INTERNAL (13) / CANCELLED (1) |
//!
//! A gRPC request (`content-type: application/grpc...`) gets HTTP 200 with
//! `grpc-status` and `grpc-message` in the headers and no body (a
//! trailers-only response, as gRPC clients expect; an HTTP error status
//! would be reported by them as a transport problem instead).
//!
//! `l5d-proxy-error: <message>` is added only toward meshed peers (clients
//! that reached this proxy through mesh TLS, i.e. another proxy): an
//! application should not see proxy internals. An error that closes the
//! connection (a loop: the client must not reuse it) also says
//! `l5d-proxy-connection: close` to a meshed peer and `connection: close`
//! to an HTTP/1 client.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

use crate::addr::TargetAddr;
use crate::http::body::ProxyBody;
use crate::http::HttpErrorReason;

/// Why a request got no response from upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("connection to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("mesh TLS to {addr} failed: {source}")]
    Mesh { addr: SocketAddr, source: crate::proxy::outbound_mesh::MeshConnectError },
    #[error("upstream {addr} failed before responding: {source}")]
    Upstream { addr: SocketAddr, source: hyper::Error },
    #[error("no endpoint available for {0}")]
    NoEndpoints(TargetAddr),
    #[error("upstream {addr} did not respond within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("the request would reach the proxy itself ({0})")]
    Loop(SocketAddr),
    #[error("upstream {0} switched protocols (101) though the request asked for no upgrade")]
    UnrequestedSwitch(SocketAddr),
    #[error("upstream {addr} switched protocols (101) to `{upgrade}`, which the request's Upgrade did not offer; expected one of the offered protocols (RFC 9110 §7.8)")]
    UnofferedSwitch { addr: SocketAddr, upgrade: String },
    #[error("upstream {0} answered the tunnel request with {1}, a success that opens no tunnel here; expected 101 to an upgrade, 200 to a CONNECT")]
    UnusableTunnel(SocketAddr, u16),
    #[error("upstream {0} does not accept extended CONNECT: its HTTP/2 preface did not set SETTINGS_ENABLE_CONNECT_PROTOCOL to 1 (RFC 8441 §3), so the request with :protocol was not sent")]
    NoExtendedConnect(SocketAddr),
    #[error("upstream {0} began its HTTP/2 connection with something else than a valid SETTINGS frame (RFC 9113 §3.4), so whether it accepts extended CONNECT (RFC 8441) is unknown; the request with :protocol was not sent")]
    BadPreface(SocketAddr),
    #[error("upstream {0} answered with a transfer coding other than chunked, which the request did not accept (RFC 9112 §6.1)")]
    UnsupportedCoding(SocketAddr),
    #[error("bad request: {0}")]
    BadHost(#[from] crate::http::headers::HostError),
    #[error("bad request: a CONNECT request has no content (RFC 9110 §9.3.6), but this one has a Content-Length or Transfer-Encoding; expected neither (or Content-Length: 0)")]
    ConnectContent,
    /// Reading the client's request body failed while it was sent upstream
    /// (a malformed chunked body, RFC 9112 §7.1, or the client went away):
    /// the client's error, not the upstream's.
    #[error("the request body from the client failed while sent to {addr}: {source}")]
    ClientBody { addr: SocketAddr, source: hyper::Error },
}

impl ProxyError {
    /// An exchange with the upstream that failed: the upstream's failure,
    /// unless it was the client's request body that failed (hyper reports
    /// that as an error of the body it was given, whose cause is the
    /// client connection's own parse or I/O error).
    pub fn upstream(addr: SocketAddr, source: hyper::Error) -> ProxyError {
        let client_body = source.is_user() && std::error::Error::source(&source).is_some_and(|c| c.is::<hyper::Error>());
        if client_body {
            ProxyError::ClientBody { addr, source }
        } else {
            ProxyError::Upstream { addr, source }
        }
    }

    pub fn reason(&self) -> HttpErrorReason {
        match self {
            ProxyError::Connect { .. }
            | ProxyError::Mesh { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UnrequestedSwitch(_)
            | ProxyError::UnofferedSwitch { .. }
            | ProxyError::UnusableTunnel(..)
            | ProxyError::NoExtendedConnect(_)
            | ProxyError::BadPreface(_)
            | ProxyError::UnsupportedCoding(_) => HttpErrorReason::BadGateway,
            ProxyError::NoEndpoints(_) => HttpErrorReason::Unavailable,
            ProxyError::Timeout { .. } => HttpErrorReason::GatewayTimeout,
            ProxyError::Loop(_) => HttpErrorReason::Loop,
            ProxyError::BadHost(_) | ProxyError::ConnectContent => HttpErrorReason::BadRequest,
            ProxyError::ClientBody { source, .. } => {
                // hyper's body decoder says InvalidInput/InvalidData for a
                // malformed body, UnexpectedEof (or another I/O error) when
                // the client went away.
                let io = std::error::Error::source(source)
                    .and_then(std::error::Error::source)
                    .and_then(|c| c.downcast_ref::<std::io::Error>())
                    .map(std::io::Error::kind);
                if matches!(io, Some(std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData)) {
                    HttpErrorReason::BadRequest
                } else {
                    HttpErrorReason::ClientCancel
                }
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.reason() {
            HttpErrorReason::BadRequest | HttpErrorReason::ClientCancel => StatusCode::BAD_REQUEST,
            HttpErrorReason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            HttpErrorReason::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            HttpErrorReason::Loop => StatusCode::LOOP_DETECTED,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The gRPC status code Linkerd answers with.
    pub fn grpc_status(&self) -> u8 {
        match self.reason() {
            HttpErrorReason::GatewayTimeout => 4,
            HttpErrorReason::Loop => 10,
            HttpErrorReason::BadRequest => 13,
            HttpErrorReason::ClientCancel => 1,
            _ => 14,
        }
    }

    /// Whether the client connection must not be reused after this error.
    pub fn closes_connection(&self) -> bool {
        // After a CONNECT with content, the client and the proxy may
        // disagree on where the next request starts.
        matches!(self, ProxyError::Loop(_) | ProxyError::ConnectContent)
    }
}

/// How the client is reached, for shaping an error response.
#[derive(Clone, Copy, Debug)]
pub struct Audience {
    /// The request was gRPC.
    pub grpc: bool,
    /// The client is another meshed proxy (mesh TLS).
    pub meshed: bool,
    /// The client speaks HTTP/1 (`connection: close` means something).
    pub http1: bool,
    /// An inbound client mesh TLS did not identify (anyone who can reach
    /// the pod): the proxy's own failures are answered without their
    /// detail (addresses, errno, timeouts of the workload), as Linkerd gives
    /// the detail to meshed peers only. The client's own errors (a 400)
    /// keep theirs.
    pub remote: bool,
}

/// The response for `err` (a short text body, or a trailers-only gRPC response).
pub fn response(err: &ProxyError, to: Audience) -> Response<ProxyBody> {
    let client_error = err.status().is_client_error();
    let message = if to.remote && !client_error {
        let status = err.status();
        format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("proxy error"))
    } else {
        err.to_string()
    };
    let mut resp = if to.grpc {
        let mut r = Response::new(ProxyBody::Empty);
        let h = r.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(u16::from(err.grpc_status())));
        if let Ok(v) = HeaderValue::from_str(&grpc_message(&message)) {
            h.insert("grpc-message", v);
        }
        r
    } else {
        let mut r = Response::new(ProxyBody::Full(Some(bytes::Bytes::from(format!("{message}\n")))));
        *r.status_mut() = err.status();
        r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        r
    };
    let h = resp.headers_mut();
    if to.meshed {
        if let Ok(v) = HeaderValue::from_str(&header_safe(&message)) {
            h.insert("l5d-proxy-error", v);
        }
        if err.closes_connection() {
            h.insert("l5d-proxy-connection", HeaderValue::from_static("close"));
        }
    }
    if to.http1 && err.closes_connection() {
        h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// gRPC's `grpc-message` encoding: percent-encoding of every byte outside
/// printable ASCII and of `%` itself (gRPC over HTTP/2 spec).
fn grpc_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A header value from a message: visible ASCII and spaces only.
fn header_safe(s: &str) -> String {
    s.chars().map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> ProxyError {
        ProxyError::Connect { addr: "127.0.0.1:1".parse().unwrap(), source: std::io::Error::from_raw_os_error(libc::ECONNREFUSED) }
    }

    #[test]
    fn statuses_and_grpc_codes() {
        let cases: [(ProxyError, u16, u8); 4] = [
            (refused(), 502, 14),
            (ProxyError::NoEndpoints("10.0.0.1:80".parse().unwrap()), 503, 14),
            (ProxyError::Timeout { addr: "127.0.0.1:1".parse().unwrap(), timeout: Duration::from_secs(1) }, 504, 4),
            (ProxyError::Loop("127.0.0.1:4140".parse().unwrap()), 508, 10),
        ];
        for (e, status, grpc) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(e.grpc_status(), grpc, "{e}");
        }
    }

    #[test]
    fn proxy_error_header_only_toward_meshed_peers() {
        let plain = response(&refused(), Audience { grpc: false, meshed: false, http1: true, remote: false });
        assert_eq!(plain.status(), 502);
        assert!(plain.headers().get("l5d-proxy-error").is_none());
        let meshed = response(&refused(), Audience { grpc: false, meshed: true, http1: true, remote: false });
        assert!(meshed.headers()["l5d-proxy-error"].to_str().unwrap().contains("127.0.0.1:1"));
        assert!(meshed.headers().get("l5d-proxy-connection").is_none(), "a 502 keeps the connection");
        let looped = response(
            &ProxyError::Loop("127.0.0.1:4140".parse().unwrap()),
            Audience { grpc: false, meshed: true, http1: true, remote: false },
        );
        assert_eq!(looped.status(), 508);
        assert_eq!(looped.headers()["l5d-proxy-connection"], "close");
        assert_eq!(looped.headers()["connection"], "close");
    }

    #[test]
    fn an_unidentified_inbound_client_gets_no_detail() {
        let remote = Audience { grpc: false, meshed: false, http1: true, remote: true };
        let r = response(&refused(), remote);
        assert_eq!(r.status(), 502);
        match r.body() {
            ProxyBody::Full(Some(b)) => assert_eq!(&b[..], b"502 Bad Gateway\n"),
            _ => panic!("a text body"),
        }
        let g = response(&refused(), Audience { grpc: true, ..remote });
        assert_eq!(g.headers()["grpc-message"], "502 Bad Gateway");
        // The client's own mistake is still explained.
        let bad = response(&ProxyError::ConnectContent, remote);
        match bad.body() {
            ProxyBody::Full(Some(b)) => assert!(String::from_utf8_lossy(b).contains("RFC 9110 §9.3.6")),
            _ => panic!("a text body"),
        }
    }

    #[test]
    fn grpc_errors_are_trailers_only() {
        let r = response(&refused(), Audience { grpc: true, meshed: false, http1: false, remote: false });
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert!(r.headers()["grpc-message"].to_str().unwrap().starts_with("connection to 127.0.0.1:1 failed"));
        assert!(matches!(r.body(), ProxyBody::Empty));
        assert_eq!(grpc_message("50% done\n"), "50%25 done%0A");
    }
}
