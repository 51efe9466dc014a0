//! Zero-copy forwarding with `splice(2)`: socket → pipe → socket.
//!
//! The kernel moves page references from the source socket's receive queue
//! into a pipe and from the pipe into the destination socket's send queue; the
//! bytes never cross into user space.
//!
//! Pipes come from a small per-thread pool (each engine worker is one
//! thread, so the pool needs no lock). A direction takes a pipe when its
//! source has data and gives it back, empty, as soon as the source runs dry.
//! So an idle connection holds no pipe at all (its cost is its two sockets),
//! and short connections reuse pipes instead of paying `pipe2`, `fcntl` and
//! two `close`s each. A pipe is only ever pooled empty; one that may still
//! hold bytes (after an error) is closed instead. The pool is small (16 pipes
//! per thread) and emptied whenever the process runs out of descriptors. Pipes are enlarged with
//! `F_SETPIPE_SZ` so one pair of syscalls moves up to the whole pipe; when
//! the kernel refuses (a non-root user over `pipe-user-pages-soft`) the
//! default size is used. A new pipe must fit in the engine's descriptor
//! budget (pooled ones already do); when it does not, the direction carries
//! on with the buffered copy, exactly as on `EMFILE`.
//!
//! The pipe is only filled when it is empty, so an `EAGAIN` from the
//! socket → pipe splice always means "the socket has nothing to read", and one
//! from pipe → socket always means "the socket's send buffer is full": each
//! maps cleanly onto tokio's readiness for that socket.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::buffered::cross_urgent_mark;
use super::{Counters, DirError};
use crate::limits::{Budget, FDS_PER_PIPE};
use crate::sys;

/// Why splicing stopped without reaching end of stream.
pub(super) enum SpliceFailure {
    /// Splicing cannot go on (the sockets do not support it, or no pipe can be
    /// had for lack of descriptors) with the pipe empty: the caller carries on
    /// with a buffered copy. Carries the bytes already moved.
    Unsupported(u64),
    Dir(DirError),
}

/// A non-blocking pipe used as the splice intermediary. Its two descriptors
/// are counted in the engine's descriptor budget until it closes.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    budget: Arc<Budget>,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.budget.give(FDS_PER_PIPE);
    }
}

/// Empty pipes kept per thread for reuse; beyond this many they are closed.
/// Small on purpose: pooled pipes hold two descriptors each.
const POOL_MAX: usize = 16;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Pipe>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A pooled pipe of at least the requested size, or a new one if the
/// descriptor budget has room for it (`EMFILE` when it has not).
fn take_pipe(size: usize, budget: &Arc<Budget>) -> io::Result<Pipe> {
    let pooled = POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let i = pool.iter().rposition(|pipe| pipe.capacity >= size.min(65536))?;
        Some(pool.swap_remove(i))
    });
    match pooled {
        Some(p) => Ok(p),
        None if budget.try_take(FDS_PER_PIPE) => Pipe::new(size, budget.clone()),
        None => Err(io::Error::from_raw_os_error(libc::EMFILE)),
    }
}

/// Closes every pipe pooled on this thread: called when the process runs
/// out of descriptors, so idle pipes never starve new connections.
pub(crate) fn release_pool() {
    POOL.with(|p| p.borrow_mut().clear());
}

/// Returns an *empty* pipe to this thread's pool.
fn give_back(pipe: Pipe) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(pipe);
        }
    });
}

impl Pipe {
    /// A new pipe; `budget` already counts its descriptors (given back on
    /// drop, or here if the pipe cannot be made).
    fn new(size: usize, budget: Arc<Budget>) -> io::Result<Pipe> {
        let (read, write) = match sys::pipe() {
            Ok(ends) => ends,
            Err(e) => {
                budget.give(FDS_PER_PIPE);
                return Err(e);
            }
        };
        // Best effort: a smaller pipe only costs more syscalls.
        let capacity = sys::set_pipe_size(write.as_fd(), size).unwrap_or(65536);
        Ok(Pipe { read, write, capacity, budget })
    }
}

/// Splices `src` into `dst` until `src` reports end of stream.
pub(super) async fn copy(
    src: &TcpStream,
    dst: &TcpStream,
    counters: &Counters<'_>,
    pipe_size: usize,
    buffer_size: usize,
) -> Result<u64, SpliceFailure> {
    // Held only while bytes are in flight; empty pipes go back to the pool.
    let mut pipe: Option<Pipe> = None;
    let mut total = 0u64;
    loop {
        src.readable().await.map_err(|e| SpliceFailure::Dir(DirError::Read(e)))?;
        let p = match pipe.take() {
            Some(p) => p,
            None => match take_pipe(pipe_size, counters.fds) {
                Ok(p) => p,
                // Out of descriptors: give the pool's back and carry this
                // direction on with the buffered copy (no descriptors needed)
                // rather than failing a connection that is already open.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    release_pool();
                    return Err(SpliceFailure::Unsupported(total));
                }
                Err(e) => return Err(SpliceFailure::Dir(DirError::Read(e))),
            },
        };
        // Splice stops at a TCP urgent mark and never crosses it (it reports
        // EAGAIN, or 0 once a FIN is queued behind): checked only on those
        // two results, and crossed with one buffered step.
        let fd = src.as_fd();
        let mut at_mark = false;
        let read = src.try_io(Interest::READABLE, || match sys::splice(fd, p.write.as_fd(), p.capacity) {
            Ok(0) if sys::at_urgent_mark(fd) => {
                at_mark = true;
                Ok(0)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && sys::at_urgent_mark(fd) => {
                at_mark = true;
                Ok(0)
            }
            other => other,
        });
        if at_mark {
            // The pipe is still empty; the readiness was left set, so the
            // loop reads on at once after the mark.
            pipe = Some(p);
            total += cross_urgent_mark(src, dst, counters, buffer_size).await.map_err(SpliceFailure::Dir)?;
            continue;
        }
        let filled = match read {
            Ok(0) => {
                give_back(p);
                return Ok(total);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The source ran dry: the pipe is empty, let others use it.
                give_back(p);
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && total == 0 => {
                give_back(p);
                return Err(SpliceFailure::Unsupported(total));
            }
            // The pipe may hold part of a failed transfer: close it, never pool it.
            Err(e) => return Err(SpliceFailure::Dir(DirError::Read(e))),
        };
        let mut left = filled;
        while left > 0 {
            dst.writable().await.map_err(|e| SpliceFailure::Dir(DirError::Write(e)))?;
            match dst.try_io(Interest::WRITABLE, || sys::splice(p.read.as_fd(), dst.as_fd(), left)) {
                Ok(n) => {
                    left -= n;
                    total += n as u64;
                    counters.add(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(SpliceFailure::Dir(DirError::Write(e))),
            }
        }
        // Keep the (empty) pipe for the next read: a busy stream reads again
        // at once, and gives the pipe back when its source runs dry.
        pipe = Some(p);
    }
}
