//! Dialing the target: the pipeline's connect stage.
//!
//! A dial is one non-blocking `connect(2)` with `TCP_NODELAY` set before the
//! SYN leaves, bounded by the engine's connect timeout. Two things make it
//! cheaper than a plain `TcpStream::connect` under connection churn:
//!
//! - **Finished handshakes are not waited for.** To a local target (the app
//!   next to a sidecar, a loopback forward) the kernel completes the
//!   three-way handshake inside the `connect` call itself: it returns
//!   `EINPROGRESS`, yet the socket is already established. A `getpeername`,
//!   which only succeeds on a connected socket, tells so; the connection then
//!   goes on at once, with no timer armed and no wait for a writable event
//!   (the first write goes straight to the socket). Only a handshake still in
//!   flight waits for writability under the timeout, and then reads
//!   `SO_ERROR` for the outcome.
//! - **Running out of descriptors is not the target's fault.** `EMFILE` and
//!   `ENFILE` are local and usually brief (other connections are closing):
//!   the pooled pipes are released and the dial retried with a growing pause
//!   until the connect timeout, instead of resetting a client that is
//!   already accepted.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::copy;
use crate::listener::is_resource_exhaustion;

/// Dials `addr`, giving up after `timeout` (descriptor back-off included).
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        match dial(addr, deadline).await {
            Ok(stream) => return Ok(stream),
            Err(e) if is_resource_exhaustion(&e) => {
                copy::release_pooled_pipes();
                if Instant::now() + pause >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One attempt: socket, `TCP_NODELAY`, connect, and (only when the
/// handshake is still in flight) a bounded wait for its outcome.
async fn dial(addr: SocketAddr, deadline: Instant) -> io::Result<TcpStream> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM.nonblocking(), Some(socket2::Protocol::TCP))?;
    // Set before the SYN, so the established socket needs no second call.
    socket.set_nodelay(true)?;
    let in_flight = match socket.connect(&addr.into()) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => socket.peer_addr().is_err(),
        Err(e) => return Err(e),
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    if in_flight {
        match tokio::time::timeout_at(deadline, stream.writable()).await {
            Ok(ready) => ready?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr} timed out"))),
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn local_dial_is_established_with_nodelay() {
        rt().block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let s = connect(l.local_addr().unwrap(), Duration::from_secs(1)).await.unwrap();
            assert!(s.nodelay().unwrap());
            assert_eq!(s.peer_addr().unwrap(), l.local_addr().unwrap());
            let (mut a, _) = l.accept().await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = s;
            s.write_all(b"hi").await.unwrap();
            let mut buf = [0u8; 2];
            a.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hi");
        });
    }

    #[test]
    fn refused_dial_reports_connection_refused() {
        rt().block_on(async {
            // Bind then drop: the port is (almost certainly) closed now.
            let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let e = connect(addr, Duration::from_secs(1)).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        });
    }

    #[test]
    fn unanswered_dial_times_out() {
        rt().block_on(async {
            // A listener whose backlog is full leaves further SYNs unanswered.
            let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
            l.listen(0).unwrap();
            let addr = l.local_addr().unwrap().as_socket().unwrap();
            let mut fillers = Vec::new();
            let started = std::time::Instant::now();
            let err = loop {
                match connect(addr, Duration::from_millis(200)).await {
                    Ok(s) => fillers.push(s),
                    Err(e) => break e,
                }
                assert!(fillers.len() < 64, "the backlog never filled");
            };
            assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
            assert!(started.elapsed() >= Duration::from_millis(200));
        });
    }
}
