//! Listeners and their accept loops.
//!
//! A listener is bound before anything is accepted (so `start()` can report
//! every bound address, or fail as a whole without leaving half the listeners
//! open). The accept loop then:
//! - takes a slot from the engine-wide connection limit *before* accepting, so
//!   at the limit new connections wait in the kernel's backlog instead of
//!   being accepted and dropped;
//! - backs off when the process or system is out of file descriptors
//!   (`EMFILE`, `ENFILE`) or buffers (`ENOBUFS`, `ENOMEM`): accept would fail
//!   again at once, so retrying immediately is a busy loop. The back-off
//!   doubles from 5 ms up to 1 s and resets on the next success;
//! - spawns one tracked task per connection and stops when told to.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::addr::BindAddr;
use crate::config::{ListenerConfig, Target};
use crate::policy::{Direction, PortMode};
use crate::proxy::{self, Context};

/// Errors from binding a listener.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("address {addr} (listener {name:?}) is already in use")]
    AddrInUse { name: String, addr: BindAddr },
    #[error("address {addr} (listener {name:?}) is not available on this machine")]
    AddrNotAvailable { name: String, addr: BindAddr },
    #[error("permission denied binding {addr} (listener {name:?}): ports below 1024 need CAP_NET_BIND_SERVICE")]
    Permission { name: String, addr: BindAddr },
    #[error("cannot bind {addr} (listener {name:?}): {error}")]
    Other { name: String, addr: BindAddr, error: io::Error },
}

/// Per-listener facts shared with its connections.
pub struct ListenerCtx {
    pub name: Arc<str>,
    pub direction: Direction,
    pub target: Target,
    pub mode: Option<PortMode>,
    pub local: SocketAddr,
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    pub accept_errors: AtomicU64,
    pub limit_waits: AtomicU64,
    pub accepting: AtomicBool,
    /// Stops this listener alone (and is a child of the engine-wide signal).
    pub stop: CancellationToken,
    /// A duplicate of the listening socket kept for `stop_now`.
    control: std::net::TcpListener,
}

impl ListenerCtx {
    /// Stops accepting *now*: cancels the accept loops and shuts the listening
    /// socket down, which on Linux takes it out of LISTEN for every duplicate
    /// at once. New connections are refused from this call on, instead of
    /// whenever each worker's loop next runs.
    pub fn stop_now(&self) {
        self.stop.cancel();
        let _ = socket2::SockRef::from(&self.control).shutdown(std::net::Shutdown::Both);
    }
}

/// Binds a listener socket with SO_REUSEADDR (restarts do not wait out
/// TIME_WAIT), IPV6_V6ONLY on IPv6 (so `0.0.0.0:4143` and `[::]:4143` can
/// both be bound) and a deep backlog. The socket is returned as a std
/// listener: each worker runtime registers its own duplicate of it (see
/// `accept_loop`), so every worker accepts from the one kernel queue without a
/// shared lock and without SO_REUSEPORT, which would let a second process
/// silently share the port instead of failing with "address in use".
pub fn bind(config: &ListenerConfig, engine_stop: &CancellationToken) -> Result<(std::net::TcpListener, Arc<ListenerCtx>), ListenError> {
    let addr = config.bind;
    let name = config.name.clone();
    let map = |error: io::Error| match error.kind() {
        io::ErrorKind::AddrInUse => ListenError::AddrInUse { name: name.clone(), addr },
        io::ErrorKind::AddrNotAvailable => ListenError::AddrNotAvailable { name: name.clone(), addr },
        io::ErrorKind::PermissionDenied => ListenError::Permission { name: name.clone(), addr },
        _ => ListenError::Other { name: name.clone(), addr, error },
    };
    let domain = if addr.0.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP)).map_err(map)?;
    socket.set_reuse_address(true).map_err(map)?;
    if addr.0.is_ipv6() {
        socket.set_only_v6(true).map_err(map)?;
    }
    socket.set_nonblocking(true).map_err(map)?;
    socket.set_cloexec(true).map_err(map)?;
    socket.bind(&addr.0.into()).map_err(map)?;
    socket.listen(4096).map_err(map)?;
    let listener: std::net::TcpListener = socket.into();
    let local = listener.local_addr().map_err(map)?;
    let control = listener.try_clone().map_err(map)?;
    let ctx = Arc::new(ListenerCtx {
        name: Arc::from(config.name.as_str()),
        direction: config.direction,
        target: config.target,
        mode: config.mode,
        local,
        accepted: AtomicU64::new(0),
        open: AtomicU64::new(0),
        accept_errors: AtomicU64::new(0),
        limit_waits: AtomicU64::new(0),
        accepting: AtomicBool::new(true),
        stop: engine_stop.child_token(),
        control,
    });
    Ok((listener, ctx))
}

pub(crate) fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Accepts until the listener is stopped, on the runtime it is spawned on
/// (`listener` is this worker's duplicate of the listening socket). When every
/// worker's loop has ended, the last duplicate is dropped, the listening
/// socket closes and new connections are refused.
pub async fn accept_loop(
    ctx: Arc<Context>,
    l: Arc<ListenerCtx>,
    listener: std::net::TcpListener,
    limit: Option<Arc<Semaphore>>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(_) => {
            l.accept_errors.fetch_add(1, Relaxed);
            return;
        }
    };
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = match &limit {
            Some(sem) => {
                let permit = match sem.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        l.limit_waits.fetch_add(1, Relaxed);
                        tokio::select! {
                            p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                            _ = l.stop.cancelled() => break,
                        }
                    }
                };
                Some(permit)
            }
            None => None,
        };
        let accepted = tokio::select! {
            biased;
            _ = l.stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                l.accepted.fetch_add(1, Relaxed);
                let (ctx2, l2) = (ctx.clone(), l.clone());
                ctx.drain.tasks.spawn(async move {
                    let _permit = permit;
                    proxy::serve(ctx2, l2, stream, peer).await;
                });
            }
            Err(e) if is_resource_exhaustion(&e) => {
                l.accept_errors.fetch_add(1, Relaxed);
                drop(permit);
                crate::copy::release_pooled_pipes();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = l.stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(_) if l.stop.is_cancelled() => break,
            Err(_) => {
                // ECONNABORTED and friends: the peer gave up before we
                // accepted. Nothing to back off from.
                l.accept_errors.fetch_add(1, Relaxed);
            }
        }
    }
    l.accepting.store(false, Relaxed);
}
