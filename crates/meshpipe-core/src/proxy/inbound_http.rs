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
//!   (`server_first.rs`) is forwarded at once, and for a client that says
//!   nothing within the server-first grace period after its handshake the
//!   app is dialled and raced, as on plaintext (`sniff.rs`): an app that
//!   speaks first is forwarded to at once, on that connection, and
//!   learned; otherwise the client's bytes still decide, however late
//!   within the timeout (an HTTP/2 server's SETTINGS, sent before it reads
//!   anything, is not speaking first). The inbound detection slot the
//!   ClientHello peek took (`proxy/sniff.rs`) is held through the handshake
//!   and this detection, at most one detect timeout from accept in all, so
//!   a client stalling at either counts against the bound.
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
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::http::{self, HttpConn};
use super::server_spoke::{server_spoke, Spoke};
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
    upstream: Option<TcpStream>,
) {
    let Some(protocol) = protocol.filter(|_| ctx.http.config.enabled) else {
        return forward_tls(ctx, info, open, target, tls, &mut stream, buffered, upstream).await;
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

/// What detection on the decrypted stream found: the session protocol
/// (`None`: forward as bytes), every byte it read (replayed first), and the
/// app connection the server-first race opened, if it did (forwarded to
/// when the stream is forwarded as bytes, closed when it is HTTP).
pub(super) struct Detection {
    pub protocol: Option<SessionProtocol>,
    pub buffered: Vec<u8>,
    pub upstream: Option<TcpStream>,
}

impl Detection {
    fn bytes() -> Detection {
        Detection { protocol: None, buffered: Vec::new(), upstream: None }
    }
}

/// Detects HTTP on the decrypted side of SNI-terminated mesh TLS to
/// `target`, under the port's `mode` and within `timeout`.
pub(super) async fn detect<S: AsyncRead + Unpin>(
    ctx: &Context,
    stream: &mut S,
    target: TargetAddr,
    mode: PortMode,
    timeout: Duration,
    slot: Option<DetectSlot<'_>>,
) -> io::Result<Detection> {
    // The app's own TLS inside mesh TLS, or no HTTP layer: nothing to learn.
    if mode == PortMode::Tls || !ctx.http.config.enabled {
        return Ok(Detection::bytes());
    }
    // Only an undeclared port may be server-first (a declared HTTP port is
    // client-first): a learned target's client is waiting for the server.
    let grace = if mode == PortMode::Detect { ctx.detect.server_first_grace } else { None };
    if grace.is_some() && ctx.server_first.is_server_first(target) {
        debug!("learned server-first target: forwarded as bytes without detection");
        return Ok(Detection::bytes());
    }
    // The detection slot the ClientHello peek took, held through the
    // handshake and until this detection ends (detecting connections hold
    // a buffer and a timer, and their number is bounded per direction
    // whether the bytes came in plaintext or in mesh TLS). Without one the
    // stream is forwarded as bytes at once.
    let Some(_slot) = slot else {
        debug!("no inbound detection slot: forwarded as bytes");
        return Ok(Detection::bytes());
    };
    let now = Instant::now();
    let deadline = now + timeout;
    let grace_at = grace.map(|g| (now + g).min(deadline));
    let mut reading = Reading::new(mode);
    let (detected, upstream) = match classify(stream, &mut reading, deadline, grace_at).await? {
        Classified::Decided(d) => (d, None),
        Classified::Silent => race(ctx, stream, &mut reading, target, deadline).await?,
    };
    let protocol = match detected {
        Some(Detected::Http1) => Some(SessionProtocol::Http1),
        Some(Detected::Http2) => Some(SessionProtocol::Http2),
        _ => None,
    };
    debug!(protocol = ?protocol, bytes = reading.buf.len(), raced = upstream.is_some(), "detected inside mesh TLS");
    // HTTP goes through the HTTP layer's own connections: a connection the
    // race opened is closed.
    let upstream = if protocol.is_some() { None } else { upstream };
    Ok(Detection { protocol, buffered: reading.buf, upstream })
}

/// The server-first race inside mesh TLS, as on plaintext (`sniff.rs`): a
/// client silent past the grace period may be waiting for a server that
/// speaks first, so the app is dialled, and whichever speaks first
/// decides. The client's bytes go on through detection (so a slow client
/// is still served as HTTP); an app that speaks first (`server_spoke.rs`:
/// not an HTTP/2 preface nor an HTTP/1 response) gets the stream at once,
/// on this connection, and the target is learned. An app that closes, or
/// answers as a client-first server does, leaves the decision to the
/// client's bytes.
async fn race<S: AsyncRead + Unpin>(
    ctx: &Context,
    stream: &mut S,
    reading: &mut Reading,
    target: TargetAddr,
    deadline: Instant,
) -> io::Result<(Option<Detected>, Option<TcpStream>)> {
    if Instant::now() >= deadline {
        // No time left to race in (the handshake took the detect timeout):
        // forwarded as bytes, dialled once by the forwarding.
        return Ok((None, None));
    }
    debug!("silent past the server-first grace period: dialling the app");
    let upstream = match tokio::time::timeout_at(deadline, crate::proxy::connect(target.0, ctx.connect_timeout)).await {
        Ok(Ok(s)) => s,
        // The dial failed (forwarding dials again and reports it) or took
        // the whole detect timeout: the client's bytes alone decide.
        Ok(Err(_)) | Err(_) => return Ok((classify(stream, reading, deadline, None).await?.verdict(), None)),
    };
    enum First {
        Client(io::Result<Classified>),
        Server(Spoke),
    }
    let first = tokio::select! {
        biased;
        c = classify(stream, reading, deadline, None) => First::Client(c),
        r = upstream.readable() => First::Server(if r.is_ok() { server_spoke(&upstream, deadline).await } else { Spoke::Closed }),
    };
    match first {
        First::Client(c) => Ok((c?.verdict(), Some(upstream))),
        First::Server(Spoke::First) => {
            debug!("the app spoke first: forwarded as bytes");
            // Learned only from a client that had sent nothing at all.
            if reading.buf.is_empty() && ctx.server_first.learn(target) {
                ctx.events.push(crate::EngineEvent::ServerFirstLearned { target: target.to_string() });
            }
            Ok((None, Some(upstream)))
        }
        // The app closed, failed, or answered as a client-first server does
        // (an HTTP/2 preface, an HTTP/1 408: `server_spoke.rs`): its
        // connection is closed and the client's bytes decide (forwarding
        // dials again if they are not HTTP, and counts a failure).
        First::Server(spoke) => {
            debug!(?spoke, "the app did not speak first: the client's bytes decide");
            drop(upstream);
            Ok((classify(stream, reading, deadline, None).await?.verdict(), None))
        }
    }
}

/// A detection in progress: the classifier and every byte read so far.
/// Kept outside the reads, so a read abandoned for the race loses nothing.
struct Reading {
    classifier: Classifier,
    buf: Vec<u8>,
}

impl Reading {
    fn new(mode: PortMode) -> Reading {
        Reading { classifier: Classifier::new(mode.expect()), buf: Vec::new() }
    }
}

/// What the decrypted stream's first bytes said.
#[derive(Debug, PartialEq)]
enum Classified {
    /// The classifier's verdict (`None`: the stream ended or the deadline
    /// passed undecided).
    Decided(Option<Detected>),
    /// Not a byte by the grace period.
    Silent,
}

impl Classified {
    fn verdict(self) -> Option<Detected> {
        match self {
            Classified::Decided(d) => d,
            Classified::Silent => None,
        }
    }
}

/// Reads into `reading` until the classifier decides, the stream ends or
/// `deadline` passes, never more than the detect buffer cap plus one read;
/// with a `grace_at`, gives up then if nothing has come. Cancel-safe: every
/// byte read is in `reading.buf`.
async fn classify<S: AsyncRead + Unpin>(
    stream: &mut S,
    reading: &mut Reading,
    deadline: Instant,
    grace_at: Option<Instant>,
) -> io::Result<Classified> {
    let buf = &mut reading.buf;
    loop {
        // Each read is at most one chunk: the buffer ends below the cap
        // plus one chunk (the classifier always decides at the cap).
        buf.reserve(READ_CHUNK);
        let mut limited = (&mut *stream).take(READ_CHUNK as u64);
        let until = match grace_at {
            Some(at) if buf.is_empty() => at,
            _ => deadline,
        };
        let read = tokio::time::timeout_at(until, limited.read_buf(buf)).await;
        match read {
            Err(_) if buf.is_empty() && grace_at.is_some() => return Ok(Classified::Silent),
            // The deadline on a declared HTTP/1 port with a request line
            // so far: still HTTP/1, served (and its head timed) by the
            // HTTP layer, not bytes past the `l5d-client-id` rewrite.
            Err(_) if reading.classifier.declared_request_pending() => {
                return Ok(Classified::Decided(Some(crate::detect::Detected::Http1)))
            }
            Err(_) | Ok(Ok(0)) => return Ok(Classified::Decided(None)),
            Ok(Ok(_)) => {
                if let Verdict::Decided(d) = reading.classifier.update(buf) {
                    return Ok(Classified::Decided(Some(d)));
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
        let mut reading = Reading::new(mode);
        let r = if close {
            drop(a);
            classify(&mut b, &mut reading, Instant::now() + Duration::from_secs(5), None).await.unwrap()
        } else {
            let r = classify(&mut b, &mut reading, Instant::now() + Duration::from_millis(50), None).await.unwrap();
            drop(a);
            r
        };
        match r {
            Classified::Decided(d) => (d, reading.buf),
            Classified::Silent => panic!("no grace was given"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_past_the_grace_is_told_apart_from_a_slow_request() {
        let grace = |now: Instant| Some(now + Duration::from_millis(100));
        let (_a, mut b) = tokio::io::duplex(1024);
        let now = Instant::now();
        let mut reading = Reading::new(PortMode::Detect);
        let r = classify(&mut b, &mut reading, now + Duration::from_secs(10), grace(now)).await.unwrap();
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
        let now = Instant::now();
        let mut reading = Reading::new(PortMode::Detect);
        let r = classify(&mut b, &mut reading, now + Duration::from_secs(10), grace(now)).await.unwrap();
        assert_eq!(r, Classified::Decided(Some(Detected::Http1)));
        assert_eq!(reading.buf, b"GET / HTTP/1.1\r\n");
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
