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
//! By default (`CopyMode::Adaptive`) each direction starts with a plain
//! read/write through its worker's small buffer (`copy/buffered.rs`), which
//! is the cheapest way to move the small messages most connections carry.
//! The first time a read fills that buffer the direction carries a bulk
//! stream, and it moves to a large buffer lent from the engine's budget
//! (`copy/bulk.rs`: megabytes per system call, fewer wake-ups). When the
//! budget is spent it is spliced instead (`copy/splice.rs`: through a pipe,
//! its bytes never enter user space, and it needs no user memory). The
//! small buffered copy is also the fallback when splice is unavailable.
//! Streams that must be transformed (TLS) go through `copy/stream.rs`.

mod buffered;
pub mod bulk;
mod splice;
pub mod stream;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::net::TcpStream;

use crate::socket;

/// Where one direction's counts go: the connection's own byte counter, its
/// metrics series' byte counter, and the engine's copy state (which path
/// carried each direction, so tests and operators can see it, and the bulk
/// buffers); and the engine's descriptor budget, which every new splice
/// pipe must fit in (`limits.rs`).
pub struct Counters<'a> {
    pub conn: &'a AtomicU64,
    pub series: &'a AtomicU64,
    pub shared: &'a Shared,
    pub fds: &'a std::sync::Arc<crate::limits::Budget>,
}

/// The engine's copy state, shared by every worker: the configuration, the
/// count of directions that switched to splice, and the bulk buffers.
pub struct Shared {
    pub config: CopyConfig,
    /// Directions (two per connection) that switched to splice.
    pub spliced_directions: AtomicU64,
    pub bulk: bulk::BulkBuffers,
}

impl Shared {
    /// `bulk_buffers` buffers of `config.bulk_buffer_size` bytes at most (0: no bulk copy).
    pub fn new(config: CopyConfig, bulk_buffers: usize) -> Shared {
        Shared { config, spliced_directions: AtomicU64::new(0), bulk: bulk::BulkBuffers::new(bulk_buffers, config.bulk_buffer_size) }
    }
}

impl Counters<'_> {
    #[inline]
    pub fn add(&self, n: usize) {
        self.conn.fetch_add(n as u64, Relaxed);
        self.series.fetch_add(n as u64, Relaxed);
    }
}

/// How bytes are moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum CopyMode {
    /// Buffered while messages are small; once a read fills the buffer, a
    /// large lent buffer, or zero-copy splice when none is left (the default).
    Adaptive,
    /// Zero-copy through a pipe from the first byte (Linux).
    Splice,
    /// Through the worker's user-space buffer only.
    Buffered,
}

/// Tunables for forwarding.
#[derive(Clone, Copy, Debug)]
pub struct CopyConfig {
    pub mode: CopyMode,
    /// Requested pipe capacity for splice (the kernel may grant less).
    pub pipe_size: usize,
    /// Buffer size for the buffered copy (one buffer per worker thread), and
    /// in adaptive mode the read size that marks a bulk stream.
    pub buffer_size: usize,
    /// Size of each bulk buffer (adaptive mode; their count is a limit).
    pub bulk_buffer_size: usize,
}

impl Default for CopyConfig {
    fn default() -> Self {
        CopyConfig { mode: CopyMode::Adaptive, pipe_size: 256 * 1024, buffer_size: 16 * 1024, bulk_buffer_size: bulk::DEFAULT_SIZE }
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
    // Built inline (no named locals): a future held in a local *and* moved
    // into the join would be laid out twice in this function's state.
    let result =
        tokio::try_join!(one_way(client, server, &up, config, &ended, true), one_way(server, client, &down, config, &ended, false));
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
    client_to_server: bool,
) -> Result<u64, CopyError> {
    let moved = copy_to_eof(src, dst, counters, config).await.map_err(|e| tag(e, client_to_server))?;
    if !other_ended.swap(true, Relaxed) {
        // The peer may already be gone (it reset, or closed both ways): a
        // failed shutdown then is not an error of this direction.
        let _ = socket::shutdown_write(dst);
    }
    Ok(moved)
}

/// Moves bytes from `src` to `dst` until `src` reports end of stream.
async fn copy_to_eof(src: &TcpStream, dst: &TcpStream, counters: &Counters<'_>, config: CopyConfig) -> Result<u64, DirError> {
    // The splice state machine is boxed: it is only reached by bulk
    // streams, and keeping it out of line keeps every connection's task
    // small (a task's whole future is copied when it is spawned and when it
    // completes, so its size is paid by every short connection).
    let moved = match config.mode {
        CopyMode::Adaptive => match buffered::copy(src, dst, counters, config.buffer_size, true).await? {
            buffered::Phase::Eof(n) => n,
            buffered::Phase::Bulk(n) => n + Box::pin(bulk_or_spliced(src, dst, counters, config)).await?,
        },
        CopyMode::Splice => Box::pin(spliced(src, dst, counters, config)).await?,
        CopyMode::Buffered => buffered_to_eof(src, dst, counters, config).await?,
    };
    Ok(moved)
}

/// A bulk stream: through lent buffers while the budget has one, then
/// spliced (from the start when the bulk copy is off).
async fn bulk_or_spliced(src: &TcpStream, dst: &TcpStream, counters: &Counters<'_>, config: CopyConfig) -> Result<u64, DirError> {
    let bulk = &counters.shared.bulk;
    if !bulk.enabled() {
        return spliced(src, dst, counters, config).await;
    }
    bulk.directions.fetch_add(1, Relaxed);
    tracing::trace!(fd = std::os::fd::AsRawFd::as_raw_fd(src), "switched to the bulk copy");
    match bulk::copy(src, dst, counters).await? {
        bulk::End::Eof(n) => Ok(n),
        bulk::End::NoBuffer(n) => Ok(n + spliced(src, dst, counters, config).await?),
    }
}

/// Splices until end of stream, finishing with the buffered copy if splice
/// turns out to be unavailable.
async fn spliced(src: &TcpStream, dst: &TcpStream, counters: &Counters<'_>, config: CopyConfig) -> Result<u64, DirError> {
    counters.shared.spliced_directions.fetch_add(1, Relaxed);
    tracing::trace!(fd = std::os::fd::AsRawFd::as_raw_fd(src), "switched to splice");
    match splice::copy(src, dst, counters, config.pipe_size, config.buffer_size).await {
        Ok(n) => Ok(n),
        Err(splice::SpliceFailure::Unsupported(done)) => Ok(done + buffered_to_eof(src, dst, counters, config).await?),
        Err(splice::SpliceFailure::Dir(e)) => Err(e),
    }
}

async fn buffered_to_eof(src: &TcpStream, dst: &TcpStream, counters: &Counters<'_>, config: CopyConfig) -> Result<u64, DirError> {
    match buffered::copy(src, dst, counters, config.buffer_size, false).await? {
        buffered::Phase::Eof(n) | buffered::Phase::Bulk(n) => Ok(n),
    }
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
