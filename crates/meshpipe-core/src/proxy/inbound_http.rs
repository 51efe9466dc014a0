//! Inbound mesh TLS that carries HTTP is served as HTTP, as Linkerd's
//! inbound proxy serves it: per request, toward the app in plaintext, with
//! the HTTP series labelled `tls="true"` and the client's verified identity
//! (`client_id`), and errors answered as HTTP with `l5d-proxy-error` (the
//! client is a meshed peer: `http/errors.rs`).
//!
//! Which connections are HTTP:
//! - **The tunnel**: the transport header's session protocol decides
//!   (HTTP/1 or HTTP/2; the client proxy knows what it sends). A header
//!   without one is opaque: the stream is forwarded as bytes.
//! - **SNI termination** on a redirected app port: the decrypted bytes go
//!   through the same classifier as plaintext detection (`detect.rs`),
//!   bounded by the detect buffer cap and the port's detect timeout; the
//!   port's mode says what it may conclude (`http1`, `http2`/`grpc`: only
//!   that; `detect`: either; `tls`: nothing, the bytes are the app's own
//!   TLS and are forwarded). Whatever detection read is replayed first
//!   (nothing lost). A server-first protocol on a port not marked opaque
//!   does not stall here, where Linkerd waits out the detect timeout: on a
//!   `detect` port a target already learned as server-first
//!   (`server_first.rs`) is forwarded at once, and a client that says
//!   nothing within the server-first grace period after its handshake is
//!   waiting for the server: it is forwarded as bytes then. Its silence
//!   alone teaches the cache nothing: the cache is shared by every client
//!   of the target, and only the server speaking first (the plaintext
//!   race) is evidence enough to stop detecting for all of them. The
//!   inbound detection slot the
//!   ClientHello peek took (`proxy/sniff.rs`) is held through the handshake
//!   and this detection, so a client stalling at either counts against the
//!   bound.
//!
//! Authorization happened before (`proxy/inbound_mesh.rs`). The requests'
//! upstream connections to the app are the HTTP client's pooled plaintext
//! connections, shared by every client of that port on the worker, so they
//! are counted under the target's plaintext series, not under one client's
//! identity.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

use super::http::{self, HttpConn};
use super::{forward_tls, Context, OpenGuard, SideGuard};
use crate::addr::TargetAddr;
use crate::conn::ConnInfo;
use crate::copy::stream::Transport;
use crate::detect::{Classifier, Detected, Verdict};
use crate::http::SessionProtocol;
use crate::limits::DetectSlot;
use crate::metrics::{Peer, SeriesKey};
use crate::transport_header;
use crate::vocab::{Direction, PortMode, Protocol, TlsStatus};

/// Most bytes asked of the TLS stream per read while detecting (a TLS
/// record is at most 16 KiB; the classifier decides long before).
const READ_CHUNK: usize = 4096;

/// The HTTP session a tunnel header names.
pub(super) fn from_header(p: Option<transport_header::SessionProtocol>) -> Option<SessionProtocol> {
    p.map(|p| match p {
        transport_header::SessionProtocol::Http1 => SessionProtocol::Http1,
        transport_header::SessionProtocol::Http2 => SessionProtocol::Http2,
    })
}

/// Serves a verified, authorized inbound mesh TLS stream to `target`: as
/// HTTP when `protocol` says so (and the HTTP layer is on), otherwise
/// forwarded as bytes. `buffered` is what detection read from the
/// decrypted stream, replayed first either way.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve<S: Transport + Send + 'static>(
    ctx: &Arc<Context>,
    info: &Arc<ConnInfo>,
    open: &mut OpenGuard<'_>,
    target: TargetAddr,
    tls: TlsStatus,
    mut stream: S,
    protocol: Option<SessionProtocol>,
    buffered: Vec<u8>,
) {
    let Some(protocol) = protocol.filter(|_| ctx.http.config.enabled) else {
        return forward_tls(ctx, info, open, target, tls, &mut stream, buffered).await;
    };
    if let TlsStatus::Mesh { peer } = &tls {
        tracing::Span::current().record("client_id", &**peer);
    }
    info.set_protocol(match protocol {
        SessionProtocol::Http1 => Protocol::Http1,
        SessionProtocol::Http2 => Protocol::Http2,
    });
    // The client side, counted as the TCP path counts it (open, bytes, close).
    let series = ctx.metrics.series(&SeriesKey { direction: Direction::Inbound, target, tls: tls.clone() });
    series.opened(Peer::Src);
    open.series = Some(series.clone());
    let _src = SideGuard { series: series.clone(), peer: Peer::Src, errno: 0 };
    let c = HttpConn { info, direction: Direction::Inbound, target, tls, series };
    http::serve(ctx, c, stream, buffered, protocol).await;
}

/// Detects HTTP on the decrypted side of SNI-terminated mesh TLS to
/// `target`, under the port's `mode` and within `timeout`. Returns the
/// session protocol (`None`: forward as bytes) and the bytes read.
pub(super) async fn detect<S: AsyncRead + Unpin>(
    ctx: &Context,
    stream: &mut S,
    target: TargetAddr,
    mode: PortMode,
    timeout: Duration,
    slot: Option<DetectSlot<'_>>,
) -> io::Result<(Option<SessionProtocol>, Vec<u8>)> {
    // The app's own TLS inside mesh TLS, or no HTTP layer: nothing to learn.
    if mode == PortMode::Tls || !ctx.http.config.enabled {
        return Ok((None, Vec::new()));
    }
    // Only an undeclared port may be server-first (a declared HTTP port is
    // client-first): a learned target's client is waiting for the server.
    let grace = if mode == PortMode::Detect { ctx.detect.server_first_grace } else { None };
    if grace.is_some() && ctx.server_first.is_server_first(target) {
        debug!("learned server-first target: forwarded as bytes without detection");
        return Ok((None, Vec::new()));
    }
    // The detection slot the ClientHello peek took, held through the
    // handshake and until this detection ends (detecting connections hold
    // a buffer and a timer, and their number is bounded per direction
    // whether the bytes came in plaintext or in mesh TLS). Without one the
    // stream is forwarded as bytes at once.
    let Some(_slot) = slot else {
        debug!("no inbound detection slot: forwarded as bytes");
        return Ok((None, Vec::new()));
    };
    let (detected, buffered) = match classify(stream, mode, timeout, grace).await? {
        Classified::Silent => {
            debug!("silent past the server-first grace period: forwarded as bytes");
            return Ok((None, Vec::new()));
        }
        Classified::Read(d, buffered) => (d, buffered),
    };
    let protocol = match detected {
        Some(Detected::Http1) => Some(SessionProtocol::Http1),
        Some(Detected::Http2) => Some(SessionProtocol::Http2),
        _ => None,
    };
    debug!(protocol = ?protocol, bytes = buffered.len(), "detected inside mesh TLS");
    Ok((protocol, buffered))
}

/// What the decrypted stream's first bytes said.
#[derive(Debug, PartialEq)]
enum Classified {
    /// The classifier's verdict (`None`: the stream ended or `timeout`
    /// passed undecided) and every byte read.
    Read(Option<Detected>, Vec<u8>),
    /// Not a byte within the grace period.
    Silent,
}

/// Reads until the classifier decides, the stream ends or `timeout`
/// passes, never more than the detect buffer cap plus one read; with a
/// `grace`, gives up at once when nothing came within it.
async fn classify<S: AsyncRead + Unpin>(
    stream: &mut S,
    mode: PortMode,
    timeout: Duration,
    grace: Option<Duration>,
) -> io::Result<Classified> {
    let now = tokio::time::Instant::now();
    let deadline = now + timeout;
    let grace_at = grace.map(|g| (now + g).min(deadline));
    let mut classifier = Classifier::new(mode.expect());
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Each read is at most one chunk: the buffer ends below the cap
        // plus one chunk (the classifier always decides at the cap).
        buf.reserve(READ_CHUNK);
        let mut limited = (&mut *stream).take(READ_CHUNK as u64);
        let until = match grace_at {
            Some(at) if buf.is_empty() => at,
            _ => deadline,
        };
        let read = tokio::time::timeout_at(until, limited.read_buf(&mut buf)).await;
        match read {
            Err(_) if buf.is_empty() && grace_at.is_some() => return Ok(Classified::Silent),
            Err(_) | Ok(Ok(0)) => return Ok(Classified::Read(None, buf)),
            Ok(Ok(_)) => {
                if let Verdict::Decided(d) = classifier.update(&buf) {
                    return Ok(Classified::Read(Some(d), buf));
                }
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::DETECT_BUFFER_CAP;
    use tokio::io::AsyncWriteExt;

    async fn run(mode: PortMode, chunks: &[&[u8]], close: bool) -> (Option<Detected>, Vec<u8>) {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        for c in chunks {
            a.write_all(c).await.unwrap();
        }
        let r = if close {
            drop(a);
            classify(&mut b, mode, Duration::from_secs(5), None).await.unwrap()
        } else {
            let r = classify(&mut b, mode, Duration::from_millis(50), None).await.unwrap();
            drop(a);
            r
        };
        match r {
            Classified::Read(d, buf) => (d, buf),
            Classified::Silent => panic!("no grace was given"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_past_the_grace_is_told_apart_from_a_slow_request() {
        let grace = Some(Duration::from_millis(100));
        let (_a, mut b) = tokio::io::duplex(1024);
        let r = classify(&mut b, PortMode::Detect, Duration::from_secs(10), grace).await.unwrap();
        assert_eq!(r, Classified::Silent, "nothing within the grace period");
        // A first byte within the grace: the rest may take the whole timeout.
        let (mut a, mut b) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.write_all(b"GET / HT").await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            a.write_all(b"TP/1.1\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let r = classify(&mut b, PortMode::Detect, Duration::from_secs(10), grace).await.unwrap();
        assert_eq!(r, Classified::Read(Some(Detected::Http1), b"GET / HTTP/1.1\r\n".to_vec()));
    }

    #[tokio::test]
    async fn http_is_found_and_every_byte_kept() {
        let req: &[u8] = b"POST /x HTTP/1.1\r\nHost: a\r\ncontent-length: 3\r\n\r\nabc";
        let (d, buf) = run(PortMode::Detect, &[req], false).await;
        assert_eq!(d, Some(Detected::Http1));
        assert_eq!(buf, req);
        let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let (d, buf) = run(PortMode::Grpc, &[preface], false).await;
        assert_eq!(d, Some(Detected::Http2));
        assert_eq!(buf, preface);
    }

    #[tokio::test]
    async fn silence_and_closing_early_are_forwarded_as_bytes() {
        // A partial request line, then nothing: the timeout decides, the bytes stay.
        let (d, buf) = run(PortMode::Detect, &[b"GET /"], false).await;
        assert_eq!((d, buf.as_slice()), (None, &b"GET /"[..]));
        let (d, buf) = run(PortMode::Detect, &[b"GE"], true).await;
        assert_eq!((d, buf.as_slice()), (None, &b"GE"[..]));
        let (d, _) = run(PortMode::Http1, &[b"\x00\x01binary protocol"], false).await;
        assert_eq!(d, Some(Detected::NotHttp));
    }

    #[tokio::test]
    async fn a_flood_is_capped() {
        let junk = vec![b'a'; 3 * DETECT_BUFFER_CAP];
        let (d, buf) = run(PortMode::Detect, &[&junk], false).await;
        assert_eq!(d, Some(Detected::NotHttp));
        assert!(buf.len() <= DETECT_BUFFER_CAP + READ_CHUNK, "{} bytes held", buf.len());
        assert_eq!(buf, junk[..buf.len()]);
    }
}
