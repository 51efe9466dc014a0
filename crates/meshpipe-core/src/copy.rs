//! Bidirectional forwarding between the client and the target.
//!
//! Both directions run concurrently inside the connection's task. Each
//! direction moves bytes until its source reports end of stream, then
//! half-closes its destination (`shutdown(SHUT_WR)`), so protocols that
//! signal "done sending" with a FIN keep working while the other direction
//! goes on. An error on either direction (an RST, a broken pipe) ends both:
//! the surviving socket is closed with an RST so its peer learns the
//! connection failed rather than seeing a clean end.
//!
//! On Linux the bytes move with `splice(2)` through a pipe per direction and
//! never enter user space (`copy/splice.rs`); `copy/buffered.rs` is the
//! portable fallback and the path for streams that must be transformed
//! (TLS, later).

mod buffered;
mod splice;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::net::TcpStream;

use crate::socket;

/// Where one direction's byte counts go: the connection's own counter and
/// its metrics series' counter.
pub struct Counters<'a> {
    pub conn: &'a AtomicU64,
    pub series: &'a AtomicU64,
}

impl Counters<'_> {
    #[inline]
    fn add(&self, n: usize) {
        self.conn.fetch_add(n as u64, Relaxed);
        self.series.fetch_add(n as u64, Relaxed);
    }
}

/// How bytes are moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// Zero-copy through a pipe (Linux).
    Splice,
    /// Through a bounded user-space buffer.
    Buffered,
}

/// Tunables for forwarding.
#[derive(Clone, Copy, Debug)]
pub struct CopyConfig {
    pub mode: CopyMode,
    /// Requested pipe capacity for splice (the kernel may grant less).
    pub pipe_size: usize,
    /// Buffer size for the buffered copy.
    pub buffer_size: usize,
}

impl Default for CopyConfig {
    fn default() -> Self {
        CopyConfig { mode: CopyMode::Splice, pipe_size: 256 * 1024, buffer_size: 16 * 1024 }
    }
}

/// Bytes moved each way by a finished forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub client_to_server: u64,
    pub server_to_client: u64,
}

/// A forwarding failure, with the side that failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("client side: {0}")]
    Client(io::Error),
    #[error("target side: {0}")]
    Server(io::Error),
}

impl CopyError {
    pub fn io(&self) -> &io::Error {
        match self {
            CopyError::Client(e) | CopyError::Server(e) => e,
        }
    }
}

/// The error of one direction, tagged with the socket it came from.
pub(crate) enum DirError {
    Read(io::Error),
    Write(io::Error),
}

/// Forwards both directions until both have ended. Returns the bytes moved,
/// or the first error (after resetting both sockets).
pub async fn forward(
    client: &TcpStream,
    server: &TcpStream,
    up: Counters<'_>,
    down: Counters<'_>,
    config: CopyConfig,
) -> Result<Moved, CopyError> {
    // The direction that ends second skips its half-close: both sockets are
    // closed right after, and close sends the FIN (one syscall per
    // connection saved on short connections).
    let ended = std::sync::atomic::AtomicBool::new(false);
    let c2s = one_way(client, server, &up, config, &ended);
    let s2c = one_way(server, client, &down, config, &ended);
    let result = tokio::try_join!(
        async { c2s.await.map_err(|e| tag(e, true)) },
        async { s2c.await.map_err(|e| tag(e, false)) }
    );
    match result {
        Ok((a, b)) => Ok(Moved { client_to_server: a, server_to_client: b }),
        Err(e) => {
            socket::set_reset_on_close(client);
            socket::set_reset_on_close(server);
            Err(e)
        }
    }
}

/// Maps a direction's error to the side it happened on.
fn tag(e: DirError, client_to_server: bool) -> CopyError {
    match (e, client_to_server) {
        (DirError::Read(e), true) | (DirError::Write(e), false) => CopyError::Client(e),
        (DirError::Read(e), false) | (DirError::Write(e), true) => CopyError::Server(e),
    }
}

/// One direction: copy until EOF, then half-close the destination (unless
/// the other direction has already ended: then the close that follows does it).
async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    counters: &Counters<'_>,
    config: CopyConfig,
    other_ended: &std::sync::atomic::AtomicBool,
) -> Result<u64, DirError> {
    let moved = match config.mode {
        CopyMode::Splice => match splice::copy(src, dst, counters, config.pipe_size).await {
            Err(splice::SpliceFailure::Unsupported(done)) => {
                done + buffered::copy(src, dst, counters, config.buffer_size).await?
            }
            Err(splice::SpliceFailure::Dir(e)) => return Err(e),
            Ok(n) => n,
        },
        CopyMode::Buffered => buffered::copy(src, dst, counters, config.buffer_size).await?,
    };
    if !other_ended.swap(true, Relaxed) {
        // The peer may already be gone (it reset, or closed both ways): a
        // failed shutdown then is not an error of this direction.
        let _ = socket::shutdown_write(dst);
    }
    Ok(moved)
}

/// Closes this thread's pooled (empty) splice pipes, giving their
/// descriptors back; the listener and the connect path call it on
/// `EMFILE`/`ENFILE`.
pub fn release_pooled_pipes() {
    splice::release_pool();
}

/// Writes all of `data` to `dst` (used to replay bytes read during detection).
pub async fn write_all(dst: &TcpStream, data: &[u8]) -> io::Result<()> {
    buffered::write_all(dst, data).await.map_err(|e| match e {
        DirError::Read(e) | DirError::Write(e) => e,
    })
}
