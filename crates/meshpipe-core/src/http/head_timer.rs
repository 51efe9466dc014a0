//! The HTTP/1 request-head timer: a client gets `header_timeout` to send a
//! whole request head, counted from the head's first byte (from the start
//! of the connection, for its first request), and no time limit between
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
//! Pipelined requests: a head that hyper already buffered behind the
//! previous request is parsed without a read; one that arrived only in part
//! and then stalls is an idle connection until its next byte, so the idle
//! timeout bounds it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Where an HTTP/1 connection is between its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
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
#[derive(Debug)]
pub struct HeadClock {
    phase: AtomicU8,
    /// Parts of the current exchange not yet done with (request body,
    /// response body).
    parts: AtomicU8,
}

impl Default for HeadClock {
    /// A new connection waits for its first head.
    fn default() -> Self {
        HeadClock { phase: AtomicU8::new(Phase::Head as u8), parts: AtomicU8::new(0) }
    }
}

impl HeadClock {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Acquire) {
            0 => Phase::Head,
            1 => Phase::Busy,
            2 => Phase::Idle,
            _ => Phase::Tunnel,
        }
    }

    /// A complete head arrived: the exchange's two parts are outstanding
    /// until each [`Part`] is dropped.
    pub fn busy(self: &Arc<Self>) -> (Part, Part) {
        self.parts.store(2, Release);
        self.set(Phase::Busy);
        (Part(Some(self.clone())), Part(Some(self.clone())))
    }

    /// The connection became a tunnel: no more heads.
    pub fn tunnel(&self) {
        self.phase.store(Phase::Tunnel as u8, Release);
    }

    /// A byte arrived while idle: a head begins.
    fn head_begins(&self) {
        // Only from idle: a tunnel or a busy exchange stays as it is.
        let _ = self.phase.compare_exchange(Phase::Idle as u8, Phase::Head as u8, AcqRel, Acquire);
    }

    fn set(&self, phase: Phase) {
        // A tunnel is final.
        let _ = self.phase.fetch_update(AcqRel, Acquire, |p| (p != Phase::Tunnel as u8).then_some(phase as u8));
    }

    fn release(&self) {
        if self.parts.fetch_sub(1, AcqRel) == 1 {
            let _ = self.phase.compare_exchange(Phase::Busy as u8, Phase::Idle as u8, AcqRel, Acquire);
        }
    }
}

/// One outstanding part of an exchange; dropping it marks the part done.
#[derive(Debug)]
pub struct Part(Option<Arc<HeadClock>>);

impl Part {
    /// A part of no timed connection (HTTP/2).
    pub fn none() -> Part {
        Part(None)
    }

    /// Done early (a body that is empty from the start).
    pub fn done(&mut self) {
        if let Some(c) = self.0.take() {
            c.release();
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        self.done();
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
        if matches!(r, Poll::Ready(None)) || (matches!(r, Poll::Ready(Some(Ok(_)))) && this.inner.is_end_stream()) {
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

impl HeadTimeout {
    /// Whether `e` (an error hyper returned) is this timer's.
    pub fn is(e: &hyper::Error) -> bool {
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<io::Error>() {
                if io.get_ref().is_some_and(|inner| inner.is::<HeadTimeout>()) {
                    return true;
                }
            }
            source = s.source();
        }
        false
    }
}

/// The timer half, owned by the client stream.
pub struct HeadTimer {
    clock: Arc<HeadClock>,
    timeout: Duration,
    /// Allocated the first time a head spans two reads, then reset.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The current head's deadline is set.
    armed: bool,
}

impl HeadTimer {
    pub fn new(clock: Arc<HeadClock>, timeout: Duration) -> HeadTimer {
        HeadTimer { clock, timeout, sleep: None, armed: false }
    }

    /// Watches one read of the client stream: `read` is its result, `n` the
    /// bytes it gave. Returns the result to hand hyper.
    pub fn watch(&mut self, cx: &mut Context<'_>, read: Poll<io::Result<()>>, n: usize) -> Poll<io::Result<()>> {
        match self.clock.phase() {
            Phase::Idle if n > 0 => {
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
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, HeadTimeout(self.timeout)))),
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
}
