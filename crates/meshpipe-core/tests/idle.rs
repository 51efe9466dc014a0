//! The idle timeout for forwarded (opaque TCP) connections, on tokio's
//! paused clock: a connection with no byte in either direction for the idle
//! timeout is closed on both sides (each peer gets a FIN) between 1 and 1.25
//! timeouts after its last byte and counted; a connection that keeps talking
//! is never closed; with the timeout off nothing is.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// An echo server that reports every connection's end of stream on `ended`.
async fn echo_reporting_eof() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = tx.send(());
            });
        }
    });
    (addr, rx)
}

async fn ping(s: &mut TcpStream) {
    s.write_all(b"p").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_on_both_sides_and_a_talking_one_is_not() {
    let (upstream, mut upstream_eof) = echo_reporting_eof().await;
    let timeout = Duration::from_secs(100);
    let (engine, addr) = forward(upstream, Some("opaque"), serde_json::json!({ "idleTimeoutMs": timeout.as_millis() as u64 })).await;

    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut talking = TcpStream::connect(addr).await.unwrap();
    ping(&mut idle).await;
    let last_byte = Instant::now();
    // The talking connection sends a byte every 0.4 timeouts for 3 timeouts.
    let chatter = tokio::spawn(async move {
        for _ in 0..8 {
            tokio::time::sleep(timeout * 2 / 5).await;
            ping(&mut talking).await;
        }
        talking
    });

    let mut buf = [0u8; 1];
    let n = idle.read(&mut buf).await.unwrap();
    let closed_after = last_byte.elapsed();
    assert_eq!(n, 0, "the client got a FIN");
    assert!(closed_after >= timeout && closed_after <= timeout * 5 / 4 + Duration::from_millis(10), "closed after {closed_after:?}");
    upstream_eof.recv().await.expect("the target got a FIN too");

    let mut talking = chatter.await.unwrap();
    ping(&mut talking).await;
    let snap = engine.snapshot();
    assert_eq!(snap.tcp[0].idle_timeouts, 1, "{:?}", snap.tcp[0]);
    assert!(snap.tcp[0].closes.iter().all(|c| c.errno.is_empty()), "an idle close is a clean close: {:?}", snap.tcp[0].closes);
    assert_eq!(snap.tcp[0].src_open, 1, "the talking connection is still open");
}

#[tokio::test(start_paused = true)]
async fn with_the_idle_timeout_off_idle_connections_stay_open() {
    let (upstream, _eof) = echo_reporting_eof().await;
    let (engine, addr) = forward(upstream, Some("opaque"), serde_json::json!({ "idleTimeoutMs": 0 })).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    ping(&mut s).await;
    tokio::time::sleep(Duration::from_secs(10 * 3600)).await;
    ping(&mut s).await;
    assert_eq!(engine.snapshot().tcp[0].idle_timeouts, 0);
}
