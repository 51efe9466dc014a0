//! The accept loop: one per listener per worker, on that worker's own socket.
//!
//! Each turn of the loop:
//! 1. waits until the socket has a connection queued (epoll readiness);
//! 2. takes a slot from the engine-wide connection limit, if one is set.
//!    Only now, with a connection actually waiting on *this* socket (checked
//!    with `poll` before queueing for a slot, as tokio's readiness can be
//!    stale): a loop that held a slot while idle would starve the other
//!    workers, whose sockets receive their own share of connections
//!    (`SO_REUSEPORT` hashes each connection to one socket). Until a slot
//!    frees, the connection stays in the kernel's backlog, neither accepted
//!    nor dropped;
//! 3. accepts it with `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)` (one call; the
//!    socket inherits `TCP_NODELAY` from the listener) and spawns one tracked
//!    task for it.
//!
//! Running out of file descriptors (`EMFILE`, `ENFILE`) or buffers
//! (`ENOBUFS`, `ENOMEM`) makes accept fail again at once, so retrying
//! immediately would be a busy loop: the loop backs off, doubling from 5 ms up
//! to 1 s, and resets on the next success. Other errors (`ECONNABORTED`: the
//! peer gave up before we accepted) are counted and skipped.
//!
//! The stop signals waited on here (the listener's stop, once per loop) and by
//! every connection task (the drain's cut) are per-worker child tokens, so
//! registering a waiter never touches a lock another worker is using.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{is_resource_exhaustion, ListenerCtx};
use crate::proxy::{self, Context};
use crate::sys;

/// Accepts until the listener is stopped, on the runtime it is spawned on
/// (`listener` is this worker's socket of the group, number `shard`). When
/// the loop ends the socket is shut down, so a worker that stops on its own
/// never leaves a queue behind that the kernel still fills.
pub async fn accept_loop(
    ctx: Arc<Context>,
    l: Arc<ListenerCtx>,
    listener: std::net::TcpListener,
    shard: usize,
    limit: Option<Arc<Semaphore>>,
) {
    // However this task ends (stopped, failed, or dropped with its runtime),
    // its socket leaves the group and it stops counting as accepting.
    let _retire = Retire { l: &l, shard };
    let registered = sys::register_listener(listener);
    let listener = match registered {
        Ok(listener) => listener,
        Err(_) => {
            l.accept_errors.fetch_add(1, Relaxed);
            return;
        }
    };
    let stop = l.stop.child_token();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let cut = ctx.drain.cut.child_token();
    let mut backoff = Duration::from_millis(5);
    loop {
        let mut ready = tokio::select! {
            biased;
            _ = &mut stopped => break,
            r = listener.readable() => match r {
                Ok(guard) => guard,
                Err(_) => {
                    l.accept_errors.fetch_add(1, Relaxed);
                    break;
                }
            },
        };
        let permit = match &limit {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                // Tokio's readiness is only cleared by EAGAIN, so it may be
                // stale after the last accept: make sure a connection really
                // waits here before queueing for a slot, or an idle worker
                // would take slots its neighbour's connections need.
                Err(_) if !sys::connection_queued(listener.get_ref().as_fd()) => {
                    ready.clear_ready();
                    continue;
                }
                Err(_) => match wait_for_slot(&l, sem, stopped.as_mut()).await {
                    Some(permit) => Some(permit),
                    None => break,
                },
            },
            None => None,
        };
        let accepted = match ready.try_io(|fd| sys::accept(fd.get_ref().as_fd())) {
            Ok(result) => result,
            // Nothing queued after all (another event raced us): wait again.
            Err(_would_block) => continue,
        };
        drop(ready);
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                l.accepted.fetch_add(1, Relaxed);
                let stream = match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(_) => {
                        l.accept_errors.fetch_add(1, Relaxed);
                        continue;
                    }
                };
                let (ctx2, l2, cut2) = (ctx.clone(), l.clone(), cut.clone());
                ctx.drain.tasks.spawn(async move {
                    let _permit = permit;
                    proxy::serve(ctx2, l2, stream, peer, cut2).await;
                });
            }
            Err(e) if is_resource_exhaustion(&e) => {
                l.accept_errors.fetch_add(1, Relaxed);
                drop(permit);
                crate::copy::release_pooled_pipes();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut stopped => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(_) if stop.is_cancelled() => break,
            Err(_) => {
                l.accept_errors.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Retires a worker's socket when its accept loop ends, on every path.
struct Retire<'a> {
    l: &'a ListenerCtx,
    shard: usize,
}

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        self.l.retire_shard(self.shard);
        self.l.live_shards.fetch_sub(1, Relaxed);
    }
}

/// Waits for a slot of the connection limit (all are taken). `None` when the
/// listener is stopped meanwhile.
async fn wait_for_slot(
    l: &ListenerCtx,
    sem: &Arc<Semaphore>,
    stopped: std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
) -> Option<OwnedSemaphorePermit> {
    l.limit_waits.fetch_add(1, Relaxed);
    tokio::select! {
        p = sem.clone().acquire_owned() => p.ok(),
        _ = stopped => None,
    }
}
