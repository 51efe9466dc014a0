//! Zero-copy forwarding with `splice(2)`: socket → pipe → socket.
//!
//! The kernel moves page references from the source socket's receive queue
//! into a pipe and from the pipe into the destination socket's send queue; the
//! bytes never cross into user space. Each direction owns one pipe, created
//! lazily on the first readable event so an idle connection holds no pipe
//! (two fds and a kernel pipe buffer saved per direction). The pipe is
//! enlarged with `F_SETPIPE_SZ` so one pair of syscalls moves up to the whole
//! pipe; when the kernel refuses (a non-root user over `pipe-user-pages-soft`)
//! the default size is used.
//!
//! The pipe is only filled when it is empty, so an `EAGAIN` from the
//! socket → pipe splice always means "the socket has nothing to read", and one
//! from pipe → socket always means "the socket's send buffer is full": each
//! maps cleanly onto tokio's readiness for that socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{Counters, DirError};

/// Why splicing stopped without reaching end of stream.
pub(super) enum SpliceFailure {
    /// This pair of sockets cannot be spliced (before any byte moved through
    /// the pipe): the caller falls back to a buffered copy. Carries the bytes
    /// already moved (always 0 today).
    Unsupported(u64),
    Dir(DirError),
}

/// A non-blocking pipe used as the splice intermediary.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills both fds on success; we take ownership at once.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let pipe = unsafe { Pipe { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } };
        if size > 0 {
            // Best effort: a smaller pipe only costs more syscalls.
            unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        }
        Ok(pipe)
    }

    fn capacity(&self) -> usize {
        let n = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if n > 0 { n as usize } else { 65536 }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets mean "use and advance the fd's own position", as
    // required for sockets and pipes.
    let n = unsafe {
        libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK)
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Splices `src` into `dst` until `src` reports end of stream.
pub(super) async fn copy(
    src: &TcpStream,
    dst: &TcpStream,
    counters: &Counters<'_>,
    pipe_size: usize,
) -> Result<u64, SpliceFailure> {
    let mut pipe: Option<(Pipe, usize)> = None;
    let mut total = 0u64;
    loop {
        src.readable().await.map_err(|e| SpliceFailure::Dir(DirError::Read(e)))?;
        if pipe.is_none() {
            let p = Pipe::new(pipe_size).map_err(|e| SpliceFailure::Dir(DirError::Read(e)))?;
            let cap = p.capacity();
            pipe = Some((p, cap));
        }
        let (p, cap) = pipe.as_ref().expect("pipe created above");
        let filled = match src.try_io(Interest::READABLE, || splice(src.as_raw_fd(), p.write.as_raw_fd(), *cap)) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && total == 0 => {
                return Err(SpliceFailure::Unsupported(total))
            }
            Err(e) => return Err(SpliceFailure::Dir(DirError::Read(e))),
        };
        let mut left = filled;
        while left > 0 {
            dst.writable().await.map_err(|e| SpliceFailure::Dir(DirError::Write(e)))?;
            match dst.try_io(Interest::WRITABLE, || splice(p.read.as_raw_fd(), dst.as_raw_fd(), left)) {
                Ok(n) => {
                    left -= n;
                    total += n as u64;
                    counters.add(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(SpliceFailure::Dir(DirError::Write(e))),
            }
        }
    }
}
