//! Dialing a named target's addresses: the connect stage for a forward whose
//! target is a host name (`names.rs`).
//!
//! The connection was given one address when it was accepted (round robin,
//! so connections spread over the name's addresses); that address is dialled
//! first. If it fails (refused, unreachable, reset), the name's other
//! addresses are tried, healthy ones first. If it is merely slow, the next
//! address is tried alongside it after 250 ms, the "Connection Attempt
//! Delay" of Happy Eyeballs (RFC 8305 section 5), and whichever connects
//! first wins; the others are dropped (closed). An address that fails is
//! marked down for a while (`names::DOWN_FOR`) so the next connections skip
//! it; one that connects is marked up again. The whole stage is bounded by
//! the connect timeout, as a single dial is.
//!
//! A connection that fails over keeps the address it was accepted with for
//! its metrics labels and policy (chosen before detection); the failover is
//! counted per name (`failovers`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::config::Target;
use crate::names::NamedTarget;

use super::connect::connect;

/// RFC 8305 section 5: the recommended Connection Attempt Delay.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

type Attempt = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// The connect stage: a fixed target is one dial; a named target fails over
/// to its other addresses.
pub(crate) async fn connect_target(target: &Target, first: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match target {
        Target::Named(named) => failover(named, first, None, timeout).await,
        _ => connect(first, timeout).await,
    }
}

/// After the server-first race's own dial to `first` failed with `err`: a
/// named target tries its other addresses; anything else fails with `err`.
pub(crate) async fn after_failed_dial(target: &Target, first: SocketAddr, err: io::Error, timeout: Duration) -> io::Result<TcpStream> {
    match target {
        Target::Named(named) => failover(named, first, Some(err), timeout).await,
        _ => Err(err),
    }
}

/// Dials `first` (unless it already failed with `failed`), then the name's
/// other addresses, staggered by the attempt delay; the first to connect wins.
async fn failover(named: &NamedTarget, first: SocketAddr, failed: Option<io::Error>, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let mut queue: Vec<SocketAddr> = named.alternatives(first);
    queue.reverse(); // popped from the end, in order
    let mut inflight: Vec<(SocketAddr, Attempt)> = Vec::with_capacity(2);
    let mut last_err = match failed {
        Some(e) => {
            debug!(address = %first, error = %e, "address failed: trying the name's other addresses");
            named.mark_down(first);
            e
        }
        None => {
            inflight.push((first, attempt(first, deadline)));
            io::Error::new(io::ErrorKind::NotConnected, format!("no address of {}:{} could be dialled", named.host, named.port))
        }
    };
    loop {
        if inflight.is_empty() {
            match queue.pop() {
                Some(next) => inflight.push((next, attempt(next, deadline))),
                None => return Err(last_err),
            }
        }
        // Wait for an attempt to finish, or for the delay before starting the next one.
        let mut stagger = (!queue.is_empty()).then(|| Box::pin(tokio::time::sleep(ATTEMPT_DELAY)));
        let event = std::future::poll_fn(|cx| {
            for (i, (_, a)) in inflight.iter_mut().enumerate() {
                if let Poll::Ready(result) = a.as_mut().poll(cx) {
                    return Poll::Ready(Some((i, result)));
                }
            }
            match stagger.as_mut().map(|s| s.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(None),
                _ => Poll::Pending,
            }
        })
        .await;
        match event {
            Some((i, Ok(stream))) => {
                let (addr, _) = inflight.swap_remove(i);
                named.mark_up(addr);
                if addr != first {
                    named.failovers.fetch_add(1, Relaxed);
                    debug!(address = %addr, first = %first, "connected through another address of the name");
                }
                // The other attempts are dropped here: their sockets close.
                return Ok(stream);
            }
            Some((i, Err(e))) => {
                let (addr, _) = inflight.swap_remove(i);
                debug!(address = %addr, error = %e, "address failed");
                named.mark_down(addr);
                last_err = e;
                // The next address starts at once (RFC 8305: on failure, do not wait for the delay).
                if let Some(next) = queue.pop() {
                    inflight.push((next, attempt(next, deadline)));
                }
            }
            None => {
                if let Some(next) = queue.pop() {
                    inflight.push((next, attempt(next, deadline)));
                }
            }
        }
        if Instant::now() >= deadline && inflight.is_empty() {
            return Err(last_err);
        }
    }
}

fn attempt(addr: SocketAddr, deadline: Instant) -> Attempt {
    Box::pin(async move {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr} timed out")));
        }
        connect(addr, left).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// A port nothing listens on (bound, then released).
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn a_refusing_address_fails_over_to_the_next_and_is_marked_down() {
        rt().block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            // 127.0.0.3 has nothing on that port: refused at once.
            let ips: Vec<IpAddr> = vec!["127.0.0.3".parse().unwrap(), "127.0.0.2".parse().unwrap()];
            let named = std::sync::Arc::new(NamedTarget::new("db", port, &ips));
            let target = Target::Named(named.clone());
            let first = SocketAddr::new(ips[0], port);
            let s = connect_target(&target, first, Duration::from_secs(2)).await.unwrap();
            assert_eq!(s.peer_addr().unwrap(), l.local_addr().unwrap());
            let snap = named.snapshot("l");
            assert_eq!((snap.failovers, snap.dial_failures), (1, 1));
            assert_eq!(snap.down, [first.to_string()]);
        });
    }

    #[test]
    fn every_address_refusing_reports_the_last_error() {
        rt().block_on(async {
            let port = closed_port();
            let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "127.0.0.4".parse().unwrap()];
            let named = std::sync::Arc::new(NamedTarget::new("db", port, &ips));
            let e = connect_target(&Target::Named(named.clone()), SocketAddr::new(ips[0], port), Duration::from_secs(2)).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
            assert_eq!(named.snapshot("l").dial_failures, 2);
        });
    }

    #[test]
    fn a_failed_race_dial_fails_over() {
        rt().block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            let ips: Vec<IpAddr> = vec!["127.0.0.5".parse().unwrap(), "127.0.0.1".parse().unwrap()];
            let named = std::sync::Arc::new(NamedTarget::new("db", port, &ips));
            let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
            let s = after_failed_dial(&Target::Named(named.clone()), SocketAddr::new(ips[0], port), refused, Duration::from_secs(2))
                .await
                .unwrap();
            assert_eq!(s.peer_addr().unwrap().ip(), ips[1]);
            // A fixed target has nothing to fail over to.
            let fixed = Target::Fixed(crate::addr::TargetAddr(SocketAddr::new(ips[0], port)));
            let e = after_failed_dial(
                &fixed,
                SocketAddr::new(ips[0], port),
                io::Error::from(io::ErrorKind::ConnectionRefused),
                Duration::from_secs(1),
            );
            assert_eq!(e.await.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        });
    }
}
