//! Bidirectional forwarding between byte streams that are not both plain
//! sockets: a TLS stream and a TCP socket (mesh TLS origination and
//! termination), or two TLS streams. Encrypted records cannot be spliced,
//! so every byte passes through user space here; the plain-TCP path
//! (`copy.rs`, with its splice fast path) is untouched.
//!
//! Memory is the budget that matters for a mesh with many idle connections,
//! so this forwarder owns no buffer while a connection is idle: each read
//! goes into the worker thread's scratch buffer, borrowed only inside one
//! synchronous poll, and is written out in the same poll. Only bytes the
//! destination cannot take at once are copied into a per-direction vector
//! (at most one read's worth), which is freed when written. Both directions
//! are polled by one future that owns both streams, so no lock or split
//! half is needed (tokio's `split` would take a lock per poll).
//!
//! Closing follows TLS 1.3's half-close (RFC 8446 §6.1): a `close_notify`
//! from a TLS source is its end of stream and becomes a FIN on a TCP
//! destination; a FIN from a TCP source becomes `close_notify` (followed by
//! the FIN) on a TLS destination, while the other direction goes on. A TLS
//! source that ends without `close_notify` may have been truncated by an
//! attacker (RFC 8446 §6.1 requires the alert), so that is an error, and an
//! error on either side (including an RST) resets both TCP sockets, so no
//! peer mistakes a failure for a clean end.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{CopyError, Counters, DirError, Moved};
use crate::socket;

/// A stream the forwarder can carry: plain TCP, or TLS over TCP.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// The TCP socket underneath (to reset it when forwarding fails).
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Transport for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl Transport for tokio_rustls::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

thread_local! {
    /// This worker's read buffer for stream forwarding.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The smallest and largest read buffer; 16 KiB is one full TLS record
/// (RFC 8446 §5.1), so a read never splits what one record can carry.
const MIN_BUFFER: usize = 1024;
const MAX_BUFFER: usize = 256 * 1024;

/// The read size the pipeline uses for TLS streams: four full records
/// (RFC 8446 §5.1). Encrypted bytes cannot be spliced, so every byte costs a
/// read and a write in user space; four records per read quarter the system
/// calls of a bulk transfer and let the kernel send larger segments, and the
/// buffer is the worker thread's, so it costs idle connections nothing.
pub const RECORDS_READ: usize = 64 * 1024;

/// One direction's progress.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet accepted by the destination, and how many of
    /// them have been written.
    pending: Option<(Vec<u8>, usize)>,
    /// Bytes the destination has accepted.
    moved: u64,
    /// The source ended; the destination's write side is being closed.
    closing: bool,
    done: bool,
}

/// Forwards both directions between `client` and `server` until both have
/// ended. `up` counts client-to-server bytes, `down` the other way;
/// `buffer_size` is the per-thread read buffer (default 16 KiB). Returns the
/// bytes moved, or the first error after resetting both TCP sockets.
pub async fn forward<A: Transport, B: Transport>(
    client: &mut A,
    server: &mut B,
    up: Counters<'_>,
    down: Counters<'_>,
    buffer_size: usize,
) -> Result<Moved, CopyError> {
    let size = buffer_size.clamp(MIN_BUFFER, MAX_BUFFER);
    let (mut a, mut b) = (Half::default(), Half::default());
    let result = poll_fn(|cx| {
        if !a.done {
            if let Poll::Ready(r) = poll_half(cx, client, server, &mut a, &up, size) {
                r.map_err(|e| tag(e, true))?;
            }
        }
        if !b.done {
            if let Poll::Ready(r) = poll_half(cx, server, client, &mut b, &down, size) {
                r.map_err(|e| tag(e, false))?;
            }
        }
        if a.done && b.done {
            Poll::Ready(Ok(Moved { client_to_server: a.moved, server_to_client: b.moved }))
        } else {
            Poll::Pending
        }
    })
    .await;
    if result.is_err() {
        socket::set_reset_on_close(client.tcp());
        socket::set_reset_on_close(server.tcp());
    }
    result
}

fn tag(e: DirError, client_to_server: bool) -> CopyError {
    match (e, client_to_server) {
        (DirError::Read(e), true) | (DirError::Write(e), false) => CopyError::Client(e),
        (DirError::Read(e), false) | (DirError::Write(e), true) => CopyError::Server(e),
    }
}

/// Drives one direction as far as it can go without waiting. Ready(Ok)
/// once the source ended and the destination's write side is closed.
fn poll_half<S: Transport, D: Transport>(
    cx: &mut Context<'_>,
    src: &mut S,
    dst: &mut D,
    half: &mut Half,
    counters: &Counters<'_>,
    size: usize,
) -> Poll<Result<(), DirError>> {
    loop {
        if half.closing {
            // A destination that is already gone (reset, or closed both
            // ways) cannot take the close: not an error of this direction.
            if let Err(e) = ready!(Pin::new(&mut *dst).poll_shutdown(cx)) {
                tracing::trace!(error = %e, "half-close of the destination failed");
            }
            half.done = true;
            return Poll::Ready(Ok(()));
        }
        if let Some((buf, pos)) = &mut half.pending {
            while *pos < buf.len() {
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &buf[*pos..])).map_err(DirError::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(DirError::Write(io::ErrorKind::WriteZero.into())));
                }
                *pos += n;
            }
            counters.add(buf.len());
            half.moved += buf.len() as u64;
            half.pending = None;
        }
        // A TLS destination may hold encrypted records it could not send
        // yet; they must leave before this direction waits on its source.
        ready!(Pin::new(&mut *dst).poll_flush(cx)).map_err(DirError::Write)?;
        match ready!(read_and_write(cx, src, dst, size))? {
            Step::Eof => half.closing = true,
            Step::Moved { sent, rest } => {
                counters.add(sent);
                half.moved += sent as u64;
                half.pending = rest.map(|r| (r, 0));
            }
        }
    }
}

enum Step {
    Eof,
    /// The destination took `sent` bytes of a read; `rest` holds the bytes
    /// it did not take yet.
    Moved {
        sent: usize,
        rest: Option<Vec<u8>>,
    },
}

/// One read into the thread's buffer and one write attempt of what it got,
/// inside one poll: the buffer is never held across a suspension.
fn read_and_write<S: Transport, D: Transport>(cx: &mut Context<'_>, src: &mut S, dst: &mut D, size: usize) -> Poll<Result<Step, DirError>> {
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        if scratch.len() < size {
            scratch.resize(size, 0);
        }
        let mut rb = ReadBuf::new(&mut scratch[..size]);
        ready!(Pin::new(&mut *src).poll_read(cx, &mut rb)).map_err(DirError::Read)?;
        let n = rb.filled().len();
        if n == 0 {
            return Poll::Ready(Ok(Step::Eof));
        }
        let data = &scratch[..n];
        let sent = match Pin::new(&mut *dst).poll_write(cx, data) {
            Poll::Ready(Ok(k)) => k,
            Poll::Pending => 0,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(DirError::Write(e))),
        };
        // Rare (a slow destination): keep what is left, in order, until the
        // destination takes it.
        let rest = (sent < n).then(|| data[sent..].to_vec());
        Poll::Ready(Ok(Step::Moved { sent, rest }))
    })
}
