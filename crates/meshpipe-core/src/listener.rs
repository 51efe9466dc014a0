//! Listeners: binding them (one socket per worker, see [`bind`]) and their
//! accept loops (`listener/accept.rs`).
//!
//! A listener is bound before anything is accepted (so `start()` can report
//! every bound address, or fail as a whole without leaving half the listeners
//! open), and stopped for every worker at once with [`ListenerCtx::stop_now`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::addr::BindAddr;
use crate::config::{ListenerConfig, Target};
use crate::policy::{Direction, PortMode};

mod accept;

pub use accept::accept_loop;

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
    /// Accept loops (one per worker) not yet ended: counted from bind, so a
    /// listener reads as accepting before its loops first run.
    pub live_shards: AtomicUsize,
    /// Stops this listener alone (and is a child of the engine-wide signal).
    pub stop: CancellationToken,
    /// A duplicate of every worker's listening socket (one per shard), kept so
    /// `stop_now` can take them all out of LISTEN at once.
    control: Vec<std::net::TcpListener>,
}

impl ListenerCtx {
    /// Stops accepting *now*: cancels the accept loops and shuts every
    /// listening socket down, which on Linux takes it out of LISTEN (and out
    /// of its SO_REUSEPORT group) at once. New connections are refused from
    /// this call on, instead of whenever each worker's loop next runs.
    pub fn stop_now(&self) {
        self.stop.cancel();
        for socket in &self.control {
            let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Both);
        }
    }

    /// Whether any worker still accepts on this listener.
    pub fn accepting(&self) -> bool {
        self.live_shards.load(std::sync::atomic::Ordering::Relaxed) > 0 && !self.stop.is_cancelled()
    }

    /// Takes one worker's socket out of its group when that worker stops
    /// accepting on its own, so the kernel stops hashing connections to a
    /// queue nobody reads.
    fn retire_shard(&self, shard: usize) {
        if let Some(socket) = self.control.get(shard) {
            let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Binds a listener as `shards` listening sockets, one per worker runtime,
/// so each worker waits on its own accept queue.
///
/// Why one socket per worker: with a single listening socket registered in
/// every worker's epoll, each new connection wakes *every* worker (tokio
/// cannot ask for `EPOLLEXCLUSIVE`); all but one find nothing to accept. On
/// a 2-core machine under connection churn that doubled the proxy's context
/// switches. With `SO_REUSEPORT` the kernel hashes each new connection to one
/// socket of the group and wakes only its worker.
///
/// `SO_REUSEPORT` alone would let a second process bind the same address and
/// silently take a share of the connections. So the address is first bound by
/// a probe socket *without* `SO_REUSEPORT`: it fails with "address in use" if
/// anything listens there (a reuseport group included, so a second meshpipe
/// fails as it did with a single socket), and for port 0 it picks the port
/// the group then binds (picked again if that port is taken in between).
/// What the probe cannot stop is a process that *later* binds the address
/// with `SO_REUSEPORT` under the same effective UID: Linux lets it join the
/// group. A sidecar runs under its own UID (2102 in the injected layout), so
/// only another process of that UID could; with one shard no group is formed
/// at all.
///
/// Every socket gets SO_REUSEADDR (restarts do not wait out TIME_WAIT),
/// IPV6_V6ONLY on IPv6 (so `0.0.0.0:4143` and `[::]:4143` can both be bound)
/// and a deep backlog.
pub fn bind(
    config: &ListenerConfig,
    engine_stop: &CancellationToken,
    shards: usize,
) -> Result<(Vec<std::net::TcpListener>, Arc<ListenerCtx>), ListenError> {
    let name = config.name.clone();
    let map = |addr: BindAddr| {
        let name = name.clone();
        move |error: io::Error| match error.kind() {
            io::ErrorKind::AddrInUse => ListenError::AddrInUse { name: name.clone(), addr },
            io::ErrorKind::AddrNotAvailable => ListenError::AddrNotAvailable { name: name.clone(), addr },
            io::ErrorKind::PermissionDenied => ListenError::Permission { name: name.clone(), addr },
            _ => ListenError::Other { name: name.clone(), addr, error },
        }
    };
    let shards = shards.max(1);
    // Port 0: the probe's port could be taken (by an outgoing connection
    // from the ephemeral range) before the group binds it; pick again then.
    let attempts = if config.bind.0.port() == 0 && shards > 1 { 4 } else { 1 };
    let mut attempt = 0;
    let sockets = loop {
        attempt += 1;
        match bind_group(config.bind, shards) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < attempts => continue,
            other => break other.map_err(map(config.bind))?,
        }
    };
    let local = sockets[0].local_addr().map_err(map(config.bind))?;
    let control = sockets.iter().map(|s| s.try_clone()).collect::<io::Result<Vec<_>>>().map_err(map(config.bind))?;
    let ctx = Arc::new(ListenerCtx {
        name: Arc::from(config.name.as_str()),
        direction: config.direction,
        target: config.target.clone(),
        mode: config.mode,
        local,
        accepted: AtomicU64::new(0),
        open: AtomicU64::new(0),
        accept_errors: AtomicU64::new(0),
        limit_waits: AtomicU64::new(0),
        live_shards: AtomicUsize::new(sockets.len()),
        stop: engine_stop.child_token(),
        control,
    });
    Ok((sockets, ctx))
}

/// The probe (for a group) and then `shards` listening sockets on one address.
fn bind_group(requested: BindAddr, shards: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut addr = requested.0;
    if shards > 1 {
        let probe = new_socket(addr, false)?;
        probe.bind(&addr.into())?;
        // Port 0: the group binds the port the kernel just picked.
        if let Some(bound) = probe.local_addr()?.as_socket() {
            addr = bound;
        }
    }
    let mut sockets = Vec::with_capacity(shards);
    for _ in 0..shards {
        let socket = new_socket(addr, shards > 1)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        if addr.port() == 0 {
            addr = listener.local_addr()?;
        }
        sockets.push(listener);
    }
    Ok(sockets)
}

/// A non-blocking, close-on-exec TCP socket for `addr`'s family with
/// SO_REUSEADDR, IPV6_V6ONLY for IPv6 and, in a group, SO_REUSEPORT.
/// TCP_NODELAY is set here because Linux copies it to every accepted
/// socket: one `setsockopt` per listener instead of one per connection.
fn new_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<socket2::Socket> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(socket)
}

pub(crate) fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::TargetAddr;
    use std::io::ErrorKind;

    fn config(bind: &str) -> ListenerConfig {
        ListenerConfig {
            name: "test".into(),
            bind: BindAddr(bind.parse().unwrap()),
            target: Target::Fixed(TargetAddr("127.0.0.1:9".parse().unwrap())),
            mode: None,
            direction: Direction::Outbound,
        }
    }

    /// Accepts from whichever socket of the group has a connection queued.
    fn accept_any(sockets: &[std::net::TcpListener]) -> (usize, std::net::TcpStream) {
        for _ in 0..1000 {
            for (i, s) in sockets.iter().enumerate() {
                if let Ok((c, _)) = s.accept() {
                    return (i, c);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("no socket of the group accepted");
    }

    /// Every open connection holds its `proxy::serve` future for its whole
    /// life, idle or not, so its size is part of the per-connection memory
    /// budget (10 KiB per idle plaintext connection, kernel buffers
    /// included). The mesh TLS and HTTP stages are boxed so that only the
    /// connections that take them pay for their state; this fails when a
    /// stage is inlined into the pipeline again.
    #[tokio::test]
    async fn the_per_connection_future_stays_within_its_budget() {
        let spec: crate::EngineSpec = serde_json::from_value(serde_json::json!({
            "listeners": [{ "name": "t", "bind": "127.0.0.1:0", "target": { "kind": "fixed", "addr": "127.0.0.1:9" }, "direction": "outbound" }]
        }))
        .unwrap();
        let engine = crate::Engine::new(spec.validate().unwrap());
        let stop = CancellationToken::new();
        let (_sockets, l) = bind(&config("127.0.0.1:0"), &stop, 1).unwrap();
        let client = tokio::net::TcpStream::connect(l.local).await.unwrap();
        let peer = client.local_addr().unwrap();
        let fut = crate::proxy::serve(engine.context().clone(), l, client, peer, CancellationToken::new());
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 3 * 1024, "the per-connection future is {size} bytes (budget 3 KiB)");
    }

    #[test]
    fn a_group_shares_one_port_and_spreads_connections() {
        let stop = CancellationToken::new();
        let (sockets, ctx) = bind(&config("127.0.0.1:0"), &stop, 2).unwrap();
        assert_eq!(sockets.len(), 2);
        assert_ne!(ctx.local.port(), 0, "port 0 resolves to one concrete port");
        for s in &sockets {
            assert_eq!(s.local_addr().unwrap(), ctx.local);
        }
        let mut seen = [0usize; 2];
        let mut clients = Vec::new();
        for _ in 0..64 {
            clients.push(std::net::TcpStream::connect(ctx.local).unwrap());
            let (i, accepted) = accept_any(&sockets);
            seen[i] += 1;
            // Inherited from the listening socket, not set per connection.
            assert!(socket2::SockRef::from(&accepted).nodelay().unwrap());
        }
        assert!(seen[0] > 0 && seen[1] > 0, "the kernel hashes connections over both sockets: {seen:?}");
    }

    #[test]
    fn a_second_group_on_the_same_address_is_refused() {
        let stop = CancellationToken::new();
        let (_first, ctx) = bind(&config("127.0.0.1:0"), &stop, 2).unwrap();
        let again = config(&ctx.local.to_string());
        for shards in [1, 2] {
            match bind(&again, &stop, shards) {
                Err(ListenError::AddrInUse { .. }) => {}
                other => panic!("{shards} shard(s): expected address in use, got {:?}", other.map(|(_, c)| c.local)),
            }
        }
    }

    #[test]
    fn stop_now_refuses_new_connections_on_every_socket() {
        let stop = CancellationToken::new();
        let (_sockets, ctx) = bind(&config("127.0.0.1:0"), &stop, 2).unwrap();
        ctx.stop_now();
        assert!(ctx.stop.is_cancelled(), "the listener's own signal fires");
        assert!(!stop.is_cancelled(), "stopping one listener leaves the engine-wide signal alone");
        for _ in 0..16 {
            let e = std::net::TcpStream::connect(ctx.local).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        }
    }

    #[test]
    fn one_shard_binds_without_a_group() {
        let stop = CancellationToken::new();
        let (sockets, ctx) = bind(&config("127.0.0.1:0"), &stop, 1).unwrap();
        assert_eq!(sockets.len(), 1);
        assert!(!socket2::SockRef::from(&sockets[0]).reuse_port().unwrap());
        let _c = std::net::TcpStream::connect(ctx.local).unwrap();
        let (_, accepted) = accept_any(&sockets);
        assert!(socket2::SockRef::from(&accepted).nodelay().unwrap());
    }
}
