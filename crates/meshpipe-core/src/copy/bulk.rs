//! The bulk copy: a stream that fills the small buffer is copied through a
//! large buffer (4 MiB by default) lent to its direction while it has bytes
//! in flight.
//!
//! Why copy rather than splice: on a TCP-to-TCP path the cost of a bulk
//! stream is not the copy (memory bandwidth is plentiful) but the number of
//! times the proxy and its peers sleep and wake. A pipe holds at most 1 MiB
//! (`pipe-max-size`) of page references, so each splice round moves at
//! most that, and the kernel builds the outgoing segments from the
//! sender's small page fragments. One `recv` into a 4 MiB buffer drains
//! everything the socket has queued, and one `send` hands the destination
//! socket megabytes at a time, which it sends as full-size segments: fewer
//! system calls, fewer wake-ups on both sides and less CPU per byte than
//! splice, even counting the two copies. Splice stays the fallback (below)
//! and the path of `copy.mode = splice`.
//!
//! Memory is a budget, not a side effect of load:
//! - A direction takes a buffer when its source has data and gives it back
//!   as soon as a read drains the socket and the bytes are written, so an
//!   idle connection, or one between bursts, holds none.
//! - Buffers come from a per-thread cache (no lock; each engine worker is
//!   one thread). A returned buffer stays cached for the next burst; a
//!   worker's housekeeping frees those unused for [`TRIM_AFTER`]. Each
//!   buffer is a mapping of its own (`sys::MappedBuf`), so freeing it gives
//!   the memory back to the kernel at once, which a large block from malloc
//!   does not reliably do.
//! - Every buffer, lent or cached, counts against the engine's budget
//!   (`--bulk-buffers`, a count of buffers). When it is spent the direction
//!   is spliced instead, which costs no user-space memory: so the budget
//!   bounds the memory, never the streams. The refusal is counted.
//! - A refusal marks the budget as wanted: the next buffer given back on
//!   any thread is freed instead of cached, and the next housekeeping pass
//!   frees every buffer cached for it. Otherwise one worker that had a
//!   burst would keep the whole budget in its cache (trimmed only once it
//!   goes unused for a whole period), and every other worker's bulk
//!   streams would be spliced for as long as it keeps using one.
//!
//! A buffer is only ever cached empty: every byte read has been written
//! before it goes back, and a failed write drops the connection (its
//! buffer is returned, the bytes in it are the failure's, as with a pipe).
//! TCP urgent data is handled as in the small buffered copy
//! (`read_draining`).

use std::cell::{Cell, RefCell};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::buffered::{read_draining, write_all};
use super::{Counters, DirError};
use crate::limits::Budget;
use crate::sys;

/// The default size of one bulk buffer.
pub const DEFAULT_SIZE: usize = 4 << 20;

/// How long an unused cached buffer is kept before housekeeping frees it.
pub const TRIM_AFTER: Duration = Duration::from_secs(10);

/// The engine's bulk buffers: their size, the budget every buffer (lent or
/// cached) counts against, and how many directions used one.
pub struct BulkBuffers {
    size: usize,
    pool: Arc<Pool>,
    /// Directions (two per connection) that switched to the bulk copy.
    pub directions: AtomicU64,
}

impl BulkBuffers {
    /// `count` buffers of `size` bytes at most; 0 buffers turns the bulk
    /// copy off (bulk streams are spliced).
    pub fn new(count: usize, size: usize) -> BulkBuffers {
        BulkBuffers {
            size: size.max(64 * 1024),
            pool: Arc::new(Pool { budget: Budget::new(count), wanted: AtomicBool::new(false), no_memory: AtomicU64::new(0) }),
            directions: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.pool.budget.limit() > 0
    }

    /// Bytes per buffer.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Buffers allocated now (lent or cached).
    pub fn held(&self) -> usize {
        self.pool.budget.used()
    }

    /// The most buffers the engine may hold.
    pub fn limit(&self) -> usize {
        self.pool.budget.limit()
    }

    /// Bulk streams that found the budget spent and were spliced instead.
    pub fn refused(&self) -> u64 {
        self.pool.budget.refused() + self.pool.no_memory.load(Relaxed)
    }

    /// A cached buffer of this engine, or a new one if the budget has room.
    fn take(&self) -> Option<Buffer> {
        USED.set(true);
        let cached = CACHE.with(|c| {
            let mut cache = c.borrow_mut();
            let i = cache.iter().rposition(|b| Arc::ptr_eq(&b.pool, &self.pool) && b.data.len() == self.size)?;
            Some(cache.swap_remove(i))
        });
        cached.or_else(|| {
            if !self.pool.budget.try_take_counted(1) {
                // Perhaps cached, unused, on another thread: ask for one back.
                self.pool.wanted.store(true, Relaxed);
                return None;
            }
            match sys::MappedBuf::new(self.size) {
                Ok(data) => Some(Buffer { data, pool: self.pool.clone() }),
                Err(e) => {
                    // Out of memory (or mappings): splice needs none.
                    self.pool.budget.give(1);
                    self.pool.no_memory.fetch_add(1, Relaxed);
                    tracing::debug!(error = %e, "no memory for a bulk buffer");
                    None
                }
            }
        })
    }
}

/// The budget every buffer of one engine counts against.
struct Pool {
    budget: Budget,
    /// A taker was refused since a buffer was last freed for it.
    wanted: AtomicBool,
    /// Takers the budget had room for but the kernel had no memory.
    no_memory: AtomicU64,
}

impl Pool {
    /// Claims the want (if any): the caller frees a buffer for it.
    fn claim_want(&self) -> bool {
        // A plain load first: the flag is rarely set, and a swap on every
        // give-back would bounce its cache line between workers.
        self.wanted.load(Relaxed) && self.wanted.swap(false, Relaxed)
    }
}

/// One lent buffer; its unit of the budget is given back when it is freed.
struct Buffer {
    data: sys::MappedBuf,
    pool: Arc<Pool>,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.pool.budget.give(1);
    }
}

thread_local! {
    /// Empty buffers kept on this thread for the next burst.
    static CACHE: RefCell<Vec<Buffer>> = const { RefCell::new(Vec::new()) };
    /// Whether a buffer was taken on this thread since the last trim.
    static USED: Cell<bool> = const { Cell::new(false) };
}

/// Returns an *empty* buffer to this thread's cache, or frees it if a
/// taker was refused meanwhile (it then gets the unit).
fn give_back(buffer: Buffer) {
    if buffer.pool.claim_want() {
        return;
    }
    CACHE.with(|c| c.borrow_mut().push(buffer));
}

/// Frees this thread's cached buffers if none was taken since the last
/// call, and in any case those of a budget a taker was refused from since.
/// Each worker's housekeeping calls it every [`TRIM_AFTER`], on the
/// worker's own thread, so a burst's buffers outlive it by at most twice
/// that. Returns how many were freed.
pub fn trim_cache() -> usize {
    let used = USED.replace(false);
    CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        let (freed, kept): (Vec<Buffer>, Vec<Buffer>) =
            std::mem::take(&mut *cache).into_iter().partition(|b| !used || b.pool.wanted.load(Relaxed));
        *cache = kept;
        for b in &freed {
            b.pool.wanted.store(false, Relaxed);
        }
        freed.len()
    })
}

/// How the bulk copy ended.
pub(super) enum End {
    /// The source reported end of stream; carries the bytes moved.
    Eof(u64),
    /// The budget was spent when the source had data: the caller splices
    /// the rest. Carries the bytes moved (all written out).
    NoBuffer(u64),
}

/// Copies `src` to `dst` through lent buffers until end of stream, or until
/// no buffer can be had.
pub(super) async fn copy(src: &TcpStream, dst: &TcpStream, counters: &Counters<'_>) -> Result<End, DirError> {
    let buffers = &counters.shared.bulk;
    // Held only while bytes are in flight; an empty buffer goes back to the cache.
    let mut held: Option<Buffer> = None;
    let mut total = 0u64;
    loop {
        src.readable().await.map_err(DirError::Read)?;
        let mut buffer = match held.take().or_else(|| buffers.take()) {
            Some(b) => b,
            None => return Ok(End::NoBuffer(total)),
        };
        let n = match read_draining(src, &mut buffer.data) {
            Ok(0) => {
                give_back(buffer);
                return Ok(End::Eof(total));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Stale readiness: nothing was read, the buffer is empty.
                give_back(buffer);
                continue;
            }
            Err(e) => {
                give_back(buffer);
                return Err(DirError::Read(e));
            }
        };
        // A failed write ends the connection; the buffer's bytes are lost
        // with it, so it is freed rather than cached.
        write_all(dst, &buffer.data[..n]).await?;
        counters.add(n);
        total += n as u64;
        if n < buffer.data.len() {
            // The read drained the socket: let others use the buffer
            // until this source has data again.
            give_back(buffer);
        } else {
            held = Some(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_count_against_the_budget_lent_or_cached() {
        let b = BulkBuffers::new(2, 64 * 1024);
        let one = b.take().expect("first");
        let two = b.take().expect("second");
        assert!(b.take().is_none(), "the budget is two buffers");
        assert_eq!((b.held(), b.refused()), (2, 1));
        give_back(one);
        assert_eq!(b.held(), 1, "given back after a refusal: freed for the refused taker");
        give_back(b.take().expect("a new one"));
        assert_eq!(b.held(), 2, "a cached buffer still counts");
        let again = b.take().expect("the cached one");
        assert_eq!(b.held(), 2);
        drop(again);
        drop(two);
        assert_eq!(b.held(), 0, "freed buffers give their unit back");
    }

    #[test]
    fn a_cached_buffer_serves_only_its_own_engine() {
        let a = BulkBuffers::new(1, 64 * 1024);
        let b = BulkBuffers::new(1, 64 * 1024);
        give_back(a.take().unwrap());
        let from_b = b.take().expect("b's own budget");
        assert_eq!((a.held(), b.held()), (1, 1), "a's cached buffer was not handed to b");
        drop(from_b);
        trim_cache();
        trim_cache();
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn trim_frees_only_a_cache_unused_since_the_last_pass() {
        let b = BulkBuffers::new(4, 64 * 1024);
        give_back(b.take().unwrap());
        assert_eq!(trim_cache(), 0, "taken since the last pass: kept");
        assert_eq!(b.held(), 1);
        assert_eq!(trim_cache(), 1, "unused for a whole pass: freed");
        assert_eq!(b.held(), 0);
    }

    /// The cache is per thread but the budget is the engine's: buffers one
    /// worker cached must not keep another worker's bulk streams spliced
    /// for as long as the first keeps using one of them now and then.
    #[test]
    fn a_refusal_on_another_thread_frees_a_cached_buffer() {
        let b = Arc::new(BulkBuffers::new(2, 64 * 1024));
        // This thread ("worker A") had two bulk streams at once: both buffers cached here.
        let (one, two) = (b.take().unwrap(), b.take().unwrap());
        give_back(one);
        give_back(two);
        let other = {
            let b = b.clone();
            std::thread::spawn(move || b.take().is_some())
        };
        assert!(!other.join().unwrap(), "worker B is refused while A caches the whole budget");
        // A keeps using one buffer now and then (so its trim never finds it unused).
        give_back(b.take().unwrap());
        assert_eq!(b.held(), 1, "the refusal freed the buffer A gave back instead of caching it");
        let other = {
            let b = b.clone();
            std::thread::spawn(move || b.take().is_some())
        };
        assert!(other.join().unwrap(), "worker B's next bulk stream gets a buffer");
        assert_eq!(trim_cache(), 0, "A took one since the last pass: its own cache is kept");
        assert_eq!(trim_cache(), 1);
    }

    #[test]
    fn a_refusal_frees_an_idle_cache_at_the_next_trim() {
        let b = Arc::new(BulkBuffers::new(1, 64 * 1024));
        give_back(b.take().unwrap());
        let other = {
            let b = b.clone();
            std::thread::spawn(move || b.take().is_some())
        };
        assert!(!other.join().unwrap());
        assert_eq!(trim_cache(), 1, "wanted elsewhere: freed although taken since the last pass");
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn zero_buffers_is_off() {
        let b = BulkBuffers::new(0, DEFAULT_SIZE);
        assert!(!b.enabled());
        assert_eq!(b.size(), DEFAULT_SIZE);
    }
}
