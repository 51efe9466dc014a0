//! The accept loop: one per listener per worker, on that worker's own socket.
//!
//! Each turn of the loop:
//! 1. waits until the socket has a connection queued (epoll readiness);
//! 2. takes what the connection needs from the limits (`limits.rs`): a slot
//!    of its direction's connection limit and two descriptors of the
//!    engine's descriptor budget. Only now, with a connection actually
//!    waiting on *this* socket (checked with `poll` before waiting, as
//!    tokio's readiness can be stale): a loop that held a slot while idle
//!    would starve the other workers, whose sockets receive their own share
//!    of connections (`SO_REUSEPORT` hashes each connection to one socket).
//!    Until it fits, the connection stays in the kernel's backlog, neither
//!    accepted nor dropped, and the descriptors the limit keeps in reserve
//!    stay free for the admin server;
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

use super::{is_resource_exhaustion, ListenerCtx};
use crate::proxy::{self, Context};
use crate::sys;

/// Accepts until the listener is stopped, on the runtime it is spawned on
/// (`listener` is this worker's socket of the group, number `shard`). When
/// the loop ends the socket is shut down, so a worker that stops on its own
/// never leaves a queue behind that the kernel still fills.
pub async fn accept_loop(ctx: Arc<Context>, l: Arc<ListenerCtx>, listener: std::net::TcpListener, shard: usize) {
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
        if !ctx.limits.try_admit(l.direction) {
            // Tokio's readiness is only cleared by EAGAIN, so it may be
            // stale after the last accept: make sure a connection really
            // waits here before waiting for a slot, or an idle worker would
            // take slots its neighbour's connections need.
            if !sys::connection_queued(listener.get_ref().as_fd()) {
                ready.clear_ready();
                continue;
            }
            l.limit_waits.fetch_add(1, Relaxed);
            // This thread's pooled pipes hold descriptors of the budget.
            crate::copy::release_pooled_pipes();
            tokio::select! {
                _ = ctx.limits.admit(l.direction) => {}
                _ = &mut stopped => break,
            }
        }
        // From here the connection's slots are held: `serve` gives them back.
        let accepted = match ready.try_io(|fd| sys::accept(fd.get_ref().as_fd())) {
            Ok(result) => result,
            // Nothing queued after all (another event raced us): wait again.
            Err(_would_block) => {
                ctx.limits.release(l.direction);
                continue;
            }
        };
        drop(ready);
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                l.accepted.fetch_add(1, Relaxed);
                let stream = match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(_) => {
                        ctx.limits.release(l.direction);
                        l.accept_errors.fetch_add(1, Relaxed);
                        continue;
                    }
                };
                ctx.drain.tasks.spawn(proxy::serve(ctx.clone(), l.clone(), stream, peer, cut.clone()));
            }
            Err(e) if is_resource_exhaustion(&e) => {
                ctx.limits.release(l.direction);
                l.accept_errors.fetch_add(1, Relaxed);
                crate::copy::release_pooled_pipes();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut stopped => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(_) if stop.is_cancelled() => {
                ctx.limits.release(l.direction);
                break;
            }
            Err(_) => {
                ctx.limits.release(l.direction);
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
