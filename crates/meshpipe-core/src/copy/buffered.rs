//! The buffered copy: read into a bounded buffer, write it all out, repeat.
//!
//! The buffer is allocated on the first readable event, not up front, so an
//! idle connection costs no buffer memory.

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{Counters, DirError};

/// Copies until `src` reports end of stream. Returns the bytes moved.
pub(super) async fn copy(src: &TcpStream, dst: &TcpStream, counters: &Counters<'_>, size: usize) -> Result<u64, DirError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut total = 0u64;
    loop {
        src.readable().await.map_err(DirError::Read)?;
        if buf.is_empty() {
            buf = vec![0u8; size.max(1024)];
        }
        let n = match src.try_read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(DirError::Read(e)),
        };
        write_all(dst, &buf[..n]).await?;
        counters.add(n);
        total += n as u64;
    }
}

/// Writes all of `data` to a non-blocking socket.
pub(crate) async fn write_all(dst: &TcpStream, mut data: &[u8]) -> Result<(), DirError> {
    while !data.is_empty() {
        dst.writable().await.map_err(DirError::Write)?;
        match dst.try_io(Interest::WRITABLE, || {
            // MSG_NOSIGNAL: a peer that went away is an EPIPE error here, not a
            // process-wide SIGPIPE.
            socket2::SockRef::from(dst).send_with_flags(data, libc::MSG_NOSIGNAL)
        }) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(DirError::Write(e)),
        }
    }
    Ok(())
}
