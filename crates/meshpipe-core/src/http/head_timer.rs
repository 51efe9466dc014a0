//! The HTTP/1 request-head timer: a client gets `header_timeout` to send a
//! whole request head, counted from the head's first byte (for its first
//! request, from the server's first wait for more: detection, which read
//! the first bytes, has its own timeout), and no time limit between
//! requests.
//!
//! Why not hyper's own `header_read_timeout`: hyper starts that timer
//! whenever it waits for a head, so it also closes a keep-alive connection
//! that is merely idle between requests. Clients keep idle connections far
//! longer than 30 s (Go's transport 90 s, OkHttp 5 min, Apache HttpClient
//! until the server says otherwise), and a client that reuses one just as
//! the proxy closes it loses the request it wrote (RFC 9112 §9.3.1 lets it
//! retry only idempotent ones). Go's `ReadHeaderTimeout`/`IdleTimeout` and
//! Envoy's `request_headers_timeout`/`idle_timeout` keep the two apart; so
//! does meshpipe: an idle keep-alive connection is governed by the engine's
//! idle timeout (`--idle-timeout`, activity-based, as for TCP), and a head
//! that trickles in (slowloris) by this timer.
//!
//! How the phases are known without hyper's help: the connection is
//! [`Phase::Head`] until the service is called with a complete head
//! ([`HeadClock::busy`]), then busy until both the response body and the
//! request body are done with (each holds a [`Part`]), then idle; the first
//! byte read while idle starts the next head. An agreed upgrade or CONNECT
//! turns the connection into a tunnel, which no head timer touches. The
//! timer itself lives in the client stream (`io.rs`), which fails hyper's
//! read with [`HeadTimeout`] when it fires; it reads the clock only when a
//! head spans more than one read.
//!
//! A request body the proxy drops unread (an error response such as a 502,
//! or an upstream that answered early) is drained by hyper with one more
//! read once the exchange may already be idle: that read is the body's
//! rest, not the next head (else an idle keep-alive connection would be
//! timed as a head and closed after the error response). At most one read
//! per exchange is passed over this way; if it also held the start of a
//! pipelined head, that head is timed from its next read.
//!
//! Empty lines: RFC 9112 §2.2 has a server ignore at least one empty line
//! before a request-line (some clients send a CRLF after a POST body), and
//! hyper does; up to [`MAX_BLANK`] CR/LF bytes read while idle are such a
//! line, not the start of a head, so a stray CRLF leaves the connection
//! idle. More begin a head, so a stream of CRLFs is timed like any head.
//!
//! Pipelined requests: a head that hyper already buffered behind the
//! previous request is parsed without a read; one that arrived only in part
//! and then stalls is an idle connection until its next byte, so the idle
//! timeout bounds it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Where an HTTP/1 connection is between its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Phase {
    /// Waiting for (the rest of) a request head: the timer runs.
    Head = 0,
    /// A request is being proxied.
    Busy = 1,
    /// Between requests (keep-alive): no timer.
    Idle = 2,
    /// Upgraded or CONNECT: bytes, not requests.
    Tunnel = 3,
}

/// A connection's phase, shared by its client stream (which reads it) and
/// its requests (which move it).
///
/// One atomic word holds the phase (bits 0-1), the parts of the current
/// exchange not yet done with (bits 2-3), whether its request body was
/// dropped unread (bit 4: hyper drains the rest) and the exchange's number
/// (the rest), so every move is one compare-and-swap and a part of an earlier
/// exchange (a request body the upstream connection still holds after
/// hyper read all of it and went on to the next request) cannot end the
/// current one.
#[derive(Debug)]
pub struct HeadClock {
    state: AtomicU32,
    /// The timer fired: read by the server after the connection ended, so
    /// the close is counted even when hyper drops the read error (its
    /// buffer held no request yet, e.g. a trickle of empty lines).
    fired: AtomicBool,
}

const PHASE: u32 = 0b11;
const PARTS_SHIFT: u32 = 2;
const PARTS: u32 = 0b11 << PARTS_SHIFT;
const DRAIN: u32 = 1 << 4;
const EXCHANGE_SHIFT: u32 = 5;

/// CR/LF bytes after an exchange that are an ignored empty line (one CRLF).
pub const MAX_BLANK: usize = 2;

impl Default for HeadClock {
    /// A new connection waits for its first head.
    fn default() -> Self {
        HeadClock { state: AtomicU32::new(Phase::Head as u32), fired: AtomicBool::new(false) }
    }
}

impl HeadClock {
    /// Whether the head timer ended the connection.
    pub fn fired(&self) -> bool {
        self.fired.load(Acquire)
    }

    pub fn phase(&self) -> Phase {
        self.load().0
    }

    /// The phase and the number of the current (or last) exchange.
    fn load(&self) -> (Phase, u32) {
        let s = self.state.load(Acquire);
        let phase = match s & PHASE {
            0 => Phase::Head,
            1 => Phase::Busy,
            2 => Phase::Idle,
            _ => Phase::Tunnel,
        };
        (phase, s >> EXCHANGE_SHIFT)
    }

    /// A complete head arrived: the exchange's two parts (request body,
    /// response body) are outstanding until each [`Part`] is dropped.
    pub fn busy(self: &Arc<Self>) -> (Part, Part) {
        let mut exchange = 0;
        let _ = self.update(|s| {
            // A tunnel is final.
            if s & PHASE == Phase::Tunnel as u32 {
                return None;
            }
            exchange = (s >> EXCHANGE_SHIFT).wrapping_add(1) & (u32::MAX >> EXCHANGE_SHIFT);
            Some(exchange << EXCHANGE_SHIFT | 2 << PARTS_SHIFT | Phase::Busy as u32)
        });
        (Part(Some((self.clone(), exchange)), true), Part(Some((self.clone(), exchange)), false))
    }

    /// The connection became a tunnel: no more heads.
    pub fn tunnel(&self) {
        let _ = self.update(|s| Some(s & !PHASE | Phase::Tunnel as u32));
    }

    /// A byte arrived while idle: a head begins. (A busy exchange or a
    /// tunnel stays as it is.)
    fn head_begins(&self) {
        let _ = self.update(|s| (s & PHASE == Phase::Idle as u32).then_some(s & !PHASE | Phase::Head as u32));
    }

    /// One part of exchange `exchange` is done; the last one makes the
    /// connection idle. With `drain`, it is a request body dropped before
    /// its end, whose rest hyper reads once more.
    fn release(&self, exchange: u32, drain: bool) {
        let _ = self.update(|s| {
            let parts = (s & PARTS) >> PARTS_SHIFT;
            if s >> EXCHANGE_SHIFT != exchange || parts == 0 {
                return None;
            }
            let left = parts - 1;
            let phase = if left == 0 && s & PHASE == Phase::Busy as u32 { Phase::Idle as u32 } else { s & PHASE };
            let drain = if drain { DRAIN } else { 0 };
            Some(s & !(PHASE | PARTS) | left << PARTS_SHIFT | phase | drain)
        });
    }

    /// Whether this read is hyper draining a request body dropped unread
    /// (the first read with bytes after the drop; consumed).
    fn take_drain(&self) -> bool {
        self.update(|s| (s & DRAIN != 0).then_some(s & !DRAIN)).is_ok()
    }

    fn update(&self, f: impl FnMut(u32) -> Option<u32>) -> Result<u32, u32> {
        self.state.fetch_update(AcqRel, Acquire, f)
    }
}

/// One outstanding part of an exchange (`.1`: the request body); dropping
/// it marks the part done.
#[derive(Debug)]
pub struct Part(Option<(Arc<HeadClock>, u32)>, bool);

impl Part {
    /// A part of no timed connection (HTTP/2).
    pub fn none() -> Part {
        Part(None, false)
    }

    /// The body ended (or is empty from the start).
    pub fn done(&mut self) {
        if let Some((clock, exchange)) = self.0.take() {
            clock.release(exchange, false);
        }
    }
}

impl Drop for Part {
    /// Dropped before its end: a request body hyper drains.
    fn drop(&mut self) {
        if let Some((clock, exchange)) = self.0.take() {
            clock.release(exchange, self.1);
        }
    }
}

/// A body that marks its part of the exchange done when it ends or is
/// dropped (the request body as the upstream client sends it).
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    part: Part,
}

impl<B: Body> Tracked<B> {
    pub fn new(inner: B, mut part: Part) -> Tracked<B> {
        if inner.is_end_stream() {
            part.done();
        }
        Tracked { inner, part }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        // Trailers are the last frame (hyper drops a body after them
        // without polling for its end).
        let last = match &r {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers() || this.inner.is_end_stream(),
            _ => false,
        };
        if last {
            this.part.done();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a client stream fails hyper's read with when a head took too
/// long.
#[derive(Debug, thiserror::Error)]
#[error("no complete request head within {0:?} of its first byte")]
pub struct HeadTimeout(pub Duration);

/// The timer half, owned by the client stream.
pub struct HeadTimer {
    clock: Arc<HeadClock>,
    timeout: Duration,
    /// Allocated the first time a head spans two reads, then reset.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The current head's deadline is set.
    armed: bool,
    /// CR/LF bytes read while idle after exchange `.0` (`MAX_BLANK`).
    blank: (u32, usize),
}

impl HeadTimer {
    pub fn new(clock: Arc<HeadClock>, timeout: Duration) -> HeadTimer {
        HeadTimer { clock, timeout, sleep: None, armed: false, blank: (0, 0) }
    }

    /// Watches one read of the client stream: `read` is its result, `got`
    /// the bytes it gave. Returns the result to hand hyper.
    pub fn watch(&mut self, cx: &mut Context<'_>, read: Poll<io::Result<()>>, got: &[u8]) -> Poll<io::Result<()>> {
        let (phase, exchange) = self.clock.load();
        if !got.is_empty() && self.clock.take_drain() {
            // The rest of a request body the proxy dropped unread.
            return read;
        }
        match phase {
            Phase::Idle if !got.is_empty() => {
                if self.empty_line(exchange, got) {
                    return read;
                }
                self.clock.head_begins();
                self.armed = false;
                read
            }
            Phase::Head if read.is_pending() => {
                if !self.armed {
                    // The head spans reads: its deadline starts now.
                    let deadline = Instant::now() + self.timeout;
                    match &mut self.sleep {
                        Some(s) => s.as_mut().reset(deadline),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    self.armed = true;
                }
                let Some(sleep) = self.sleep.as_mut() else { return read };
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.clock.fired.store(true, Release);
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, HeadTimeout(self.timeout))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            Phase::Head => read,
            _ => {
                // The next head's deadline starts from its own first byte.
                self.armed = false;
                read
            }
        }
    }

    /// Whether `got`, read while idle after exchange `exchange`, is (part
    /// of) the one empty line a client may send before its next head.
    fn empty_line(&mut self, exchange: u32, got: &[u8]) -> bool {
        if !got.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            return false;
        }
        let before = if self.blank.0 == exchange { self.blank.1 } else { 0 };
        self.blank = (exchange, before.saturating_add(got.len()));
        self.blank.1 <= MAX_BLANK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_ends_when_both_parts_are_done() {
        let clock = Arc::new(HeadClock::default());
        assert_eq!(clock.phase(), Phase::Head);
        let (req, resp) = clock.busy();
        assert_eq!(clock.phase(), Phase::Busy);
        drop(resp);
        assert_eq!(clock.phase(), Phase::Busy, "the request body is still going");
        drop(req);
        assert_eq!(clock.phase(), Phase::Idle);
        clock.head_begins();
        assert_eq!(clock.phase(), Phase::Head);
    }

    #[test]
    fn a_part_of_an_earlier_exchange_does_not_end_the_current_one() {
        let clock = Arc::new(HeadClock::default());
        let (old_req, old_resp) = clock.busy();
        drop(old_resp);
        // hyper read the whole body and parsed the next head while the
        // upstream connection still holds the old body.
        let (req, resp) = clock.busy();
        drop(old_req);
        drop(resp);
        assert_eq!(clock.phase(), Phase::Busy, "the current request body is still going");
        drop(req);
        assert_eq!(clock.phase(), Phase::Idle);
    }

    #[test]
    fn a_tunnel_is_final_and_bytes_while_busy_start_no_head() {
        let clock = Arc::new(HeadClock::default());
        let (req, resp) = clock.busy();
        clock.head_begins();
        assert_eq!(clock.phase(), Phase::Busy);
        clock.tunnel();
        drop((req, resp));
        assert_eq!(clock.phase(), Phase::Tunnel);
        let (again, _) = clock.busy();
        drop(again);
        clock.head_begins();
        assert_eq!(clock.phase(), Phase::Tunnel);
    }

    #[test]
    fn an_empty_body_is_done_at_once() {
        let clock = Arc::new(HeadClock::default());
        let (req, resp) = clock.busy();
        let body = Tracked::new(http_body_util::Empty::<Bytes>::new(), req);
        drop(resp);
        assert_eq!(clock.phase(), Phase::Idle);
        drop(body);
        assert_eq!(clock.phase(), Phase::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_spanning_reads_times_out_from_its_first_wait() {
        let clock = Arc::new(HeadClock::default());
        let mut timer = HeadTimer::new(clock.clone(), Duration::from_secs(10));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(timer.watch(&mut cx, Poll::Pending, b"").is_pending());
        tokio::time::advance(Duration::from_secs(9)).await;
        // Progress does not move the deadline (a trickle is still a slow head).
        assert!(matches!(timer.watch(&mut cx, Poll::Ready(Ok(())), b"GET /"), Poll::Ready(Ok(()))));
        assert!(timer.watch(&mut cx, Poll::Pending, b"").is_pending());
        tokio::time::advance(Duration::from_secs(1)).await;
        match timer.watch(&mut cx, Poll::Pending, b"") {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
        // Idle: no timer, however long.
        let (a, b) = clock.busy();
        drop((a, b));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(timer.watch(&mut cx, Poll::Pending, b"").is_pending());
    }

    #[test]
    fn the_read_that_drains_a_dropped_request_body_begins_no_head() {
        let clock = Arc::new(HeadClock::default());
        let mut timer = HeadTimer::new(clock.clone(), Duration::from_secs(10));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ok = || Poll::Ready(Ok(()));
        let (mut req, mut resp) = clock.busy();
        resp.done();
        drop(req);
        assert_eq!(clock.phase(), Phase::Idle);
        let _ = timer.watch(&mut cx, ok(), b"rest of the body");
        assert_eq!(clock.phase(), Phase::Idle, "hyper's drain read");
        let _ = timer.watch(&mut cx, ok(), b"GET /");
        assert_eq!(clock.phase(), Phase::Head, "only one read is passed over");
        // A body that ended, and a response dropped early, drain nothing.
        (req, resp) = clock.busy();
        req.done();
        drop(resp);
        let _ = timer.watch(&mut cx, ok(), b"GET /");
        assert_eq!(clock.phase(), Phase::Head);
        // Nor does a request body of an earlier exchange.
        let (old_req, old_resp) = clock.busy();
        drop(old_resp);
        let (_req, _resp) = clock.busy();
        drop(old_req);
        assert!(!clock.take_drain());
    }

    #[test]
    fn a_request_body_dropped_after_its_trailers_drains_nothing() {
        use http_body_util::BodyExt;
        let clock = Arc::new(HeadClock::default());
        let (req, resp) = clock.busy();
        drop(resp);
        let trailers = async { Some(Ok::<_, std::convert::Infallible>(http::HeaderMap::new())) };
        let inner = http_body_util::Full::new(Bytes::from_static(b"abc")).map_err(|e| match e {}).with_trailers(trailers);
        let mut body = Tracked::new(Box::pin(inner), req);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(Pin::new(&mut body).poll_frame(&mut cx), Poll::Ready(Some(Ok(f))) if f.is_data()));
        assert_eq!(clock.phase(), Phase::Busy);
        assert!(matches!(Pin::new(&mut body).poll_frame(&mut cx), Poll::Ready(Some(Ok(f))) if f.is_trailers()));
        // As hyper's client does: dropped after the trailers, not polled to its end.
        drop(body);
        assert_eq!(clock.phase(), Phase::Idle);
        assert!(!clock.take_drain());
    }

    #[test]
    fn one_empty_line_while_idle_begins_no_head_and_more_do() {
        let clock = Arc::new(HeadClock::default());
        let mut timer = HeadTimer::new(clock.clone(), Duration::from_secs(10));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ok = || Poll::Ready(Ok(()));
        let end = |(mut req, mut resp): (Part, Part)| {
            req.done();
            resp.done();
        };
        end(clock.busy());
        let _ = timer.watch(&mut cx, ok(), b"\r");
        let _ = timer.watch(&mut cx, ok(), b"\n");
        assert_eq!(clock.phase(), Phase::Idle, "one CRLF, even split");
        let _ = timer.watch(&mut cx, ok(), b"\r\n");
        assert_eq!(clock.phase(), Phase::Head, "a second empty line begins a head");
        // Each exchange gets its own allowance.
        end(clock.busy());
        let _ = timer.watch(&mut cx, ok(), b"\r\n");
        assert_eq!(clock.phase(), Phase::Idle);
        let _ = timer.watch(&mut cx, ok(), b"\r\nG");
        assert_eq!(clock.phase(), Phase::Head, "a head after the line");
        end(clock.busy());
        let _ = timer.watch(&mut cx, ok(), b"\nGET");
        assert_eq!(clock.phase(), Phase::Head);
    }
}
