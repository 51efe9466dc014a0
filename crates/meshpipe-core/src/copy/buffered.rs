//! The buffered copy: read into a buffer, write it straight out, repeat.
//!
//! Small messages (requests, responses, protocol chatter) are cheaper to copy
//! than to splice: one `read` and one `write` of a few hundred bytes cost less
//! kernel work than moving page references through a pipe, and a read that
//! returns less than asked for proves the socket drained, so no extra call is
//! spent to learn `EAGAIN` (the same rule tokio's own `poll_read` applies on
//! epoll). The adaptive mode therefore starts every direction here and hands
//! it to the bulk copy (or splice) once a read fills the whole buffer, i.e.
//! once the direction carries a bulk stream.
//!
//! TCP urgent data (RFC 9293 §3.8.5; telnet, FTP `ABOR` and some database
//! cancels use it) is the one case where a short read does *not* mean the
//! socket drained: Linux stops a read at the urgent mark. So a short read is
//! checked against the mark (`SIOCATMARK`, a lock-free ioctl); at the mark the
//! urgent byte is fetched with `MSG_OOB` and forwarded in band, in its place,
//! and reading goes on past it. Splice cannot cross a mark at all, so the
//! splice path hands that step to [`cross_urgent_mark`]. One case is still
//! lossy: an urgent pointer announced before its byte arrives (the sender's
//! window was closed) lets a later plain read step over that byte.
//!
//! The buffer is one per worker thread, not one per connection: a read and
//! its write happen without an `await` in between, so no other connection can
//! observe it. Only when the destination cannot take everything at once is
//! the rest copied into a per-connection vector, which lives until it is
//! written. An idle connection owns no buffer at all.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{Counters, DirError};
use crate::sys;

thread_local! {
    /// This worker's read buffer (grown to the configured size on first use).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How a buffered phase ended.
pub(super) enum Phase {
    /// The source reported end of stream; carries the bytes moved.
    Eof(u64),
    /// A read filled the whole buffer: a bulk stream, better moved in
    /// larger steps.
    /// Carries the bytes moved so far (all written out).
    Bulk(u64),
}

/// One read-and-forward step.
enum Step {
    /// Nothing to read after all (readiness was stale).
    Idle,
    Eof,
    /// `n` bytes were read; `rest` holds those the destination did not take yet.
    Moved {
        n: usize,
        rest: Option<Vec<u8>>,
    },
}

/// Copies until `src` reports end of stream, or (with `until_bulk`) until a
/// read fills the whole `size`-byte buffer. Every byte read has been written
/// to `dst` when this returns.
pub(super) async fn copy(
    src: &TcpStream,
    dst: &TcpStream,
    counters: &Counters<'_>,
    size: usize,
    until_bulk: bool,
) -> Result<Phase, DirError> {
    let size = size.max(1024);
    let mut total = 0u64;
    loop {
        src.readable().await.map_err(DirError::Read)?;
        match step(src, dst, size)? {
            Step::Idle => continue,
            Step::Eof => return Ok(Phase::Eof(total)),
            Step::Moved { n, rest } => {
                finish(dst, counters, n, rest).await?;
                total += n as u64;
                if until_bulk && n == size {
                    return Ok(Phase::Bulk(total));
                }
            }
        }
    }
}

/// Reads once into the thread's buffer and writes what it got at once.
/// Synchronous on purpose: the shared buffer is never held across an `await`.
fn step(src: &TcpStream, dst: &TcpStream, size: usize) -> Result<Step, DirError> {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < size {
            buf.resize(size, 0);
        }
        let buf = &mut buf[..size];
        let n = match read_draining(src, buf) {
            Ok(0) => return Ok(Step::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Idle),
            Err(e) => return Err(DirError::Read(e)),
        };
        // One direct attempt: the destination almost always has room. Its
        // readiness in tokio is not consulted (it may not have been reported
        // yet for a fresh socket); an EAGAIN here just sends the rest through
        // `write_all`, which waits for the socket properly.
        let sent = match send(dst, &buf[..n]) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(DirError::Write(e)),
        };
        let rest = (sent < n).then(|| buf[sent..n].to_vec());
        Ok(Step::Moved { n, rest })
    })
}

/// One `recv` through tokio's readiness. A short read (fewer bytes than the
/// buffer holds) clears the read readiness like `EAGAIN` would: on Linux a
/// stream socket's `recv` only stops short when its receive queue is empty
/// or at an urgent mark, and epoll reports any later arrival (or FIN) as a
/// new edge. Tokio's readiness ticks make the clear a no-op if an event came
/// in meanwhile. At an urgent mark the readiness is kept and the urgent byte
/// is appended to what was read.
pub(super) fn read_draining(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let len = buf.len();
    let fd = src.as_fd();
    let mut short = None;
    let result = src.try_io(Interest::READABLE, || {
        let n = sys::recv(fd, buf, 0)?;
        if n > 0 && n < len {
            if sys::at_urgent_mark(fd) {
                return Ok(n + sys::recv_urgent(fd).map(|b| buf[n] = b).map_or(0, |_| 1));
            }
            short = Some(n);
            // Reported as WouldBlock only so tokio clears the readiness.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (result, short) {
        (_, Some(n)) => Ok(n),
        (result, None) => result,
    }
}

/// Moves a direction past an urgent mark that splice stopped at: the urgent
/// byte, then one plain read (the kernel steps over the mark and re-enables
/// splice once a read has passed it), both written to `dst` in order.
pub(super) async fn cross_urgent_mark(src: &TcpStream, dst: &TcpStream, counters: &Counters<'_>, size: usize) -> Result<u64, DirError> {
    let mut moved = 0u64;
    if let Some(b) = sys::recv_urgent(src.as_fd()) {
        Box::pin(write_all(dst, &[b])).await?;
        counters.add(1);
        moved += 1;
    }
    if let Step::Moved { n, rest } = step(src, dst, size.max(1024))? {
        finish(dst, counters, n, rest).await?;
        moved += n as u64;
    }
    Ok(moved)
}

/// Completes a step: writes the rest the destination did not take at once
/// (rare, the destination is slow: kept out of line so every connection's
/// task stays small), then counts the step's bytes as moved.
async fn finish(dst: &TcpStream, counters: &Counters<'_>, n: usize, rest: Option<Vec<u8>>) -> Result<(), DirError> {
    if let Some(rest) = rest {
        Box::pin(write_all(dst, &rest)).await?;
    }
    counters.add(n);
    Ok(())
}

/// One non-blocking `send`. MSG_NOSIGNAL: a peer that went away is an EPIPE
/// error here, not a process-wide SIGPIPE.
fn send(dst: &TcpStream, data: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(dst).send_with_flags(data, libc::MSG_NOSIGNAL)
}

/// Writes all of `data` to a non-blocking socket. The first attempt goes
/// straight to the socket (a freshly dialled one has room, but tokio has not
/// seen it writable yet); only what does not fit waits for writability.
pub(crate) async fn write_all(dst: &TcpStream, mut data: &[u8]) -> Result<(), DirError> {
    match send(dst, data) {
        Ok(n) => data = &data[n..],
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(DirError::Write(e)),
    }
    while !data.is_empty() {
        dst.writable().await.map_err(DirError::Write)?;
        match dst.try_io(Interest::WRITABLE, || send(dst, data)) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(DirError::Write(e)),
        }
    }
    Ok(())
}
