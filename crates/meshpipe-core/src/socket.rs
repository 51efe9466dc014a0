//! Socket-level operations the standard library does not offer: the original
//! destination of a redirected connection, resetting a connection, half-close,
//! and the process's file descriptor limit and usage.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use tokio::net::TcpStream;

use crate::sys;

/// The destination a connection had before iptables REDIRECTed it here.
/// For a connection that was not redirected this is the socket's own local
/// address, which is how loop protection recognises it.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    sys::original_dst(stream.as_fd(), local.is_ipv4())
}

/// Makes the next close send an RST instead of a FIN (SO_LINGER with a zero
/// timeout), so an error on one side is propagated to the other as an error,
/// not as a clean end of stream.
pub fn set_reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// Half-close: no more writes on this socket; reads go on.
pub fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: a proxy holds two
/// sockets per connection (plus pipes while bytes are in flight), and the
/// default soft limit of 1024 would cap it at a few hundred connections. The
/// hard limit is the operator's decision and is never raised, even as root.
pub fn raise_fd_limit() -> io::Result<u64> {
    let (soft, hard) = sys::fd_limit()?;
    if soft < hard {
        sys::set_fd_soft_limit(hard)?;
    }
    Ok(hard.max(soft))
}

/// The process's soft `RLIMIT_NOFILE` and how many descriptors are open now
/// (counted in `/proc/self/fd`, once at start: not for the data path).
pub fn fd_usage() -> io::Result<(u64, usize)> {
    let (soft, _) = sys::fd_limit()?;
    // The directory's own descriptor is listed too.
    let open = std::fs::read_dir("/proc/self/fd")?.count().saturating_sub(1);
    Ok((soft, open))
}
