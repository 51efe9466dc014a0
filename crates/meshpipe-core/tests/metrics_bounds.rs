//! Metric cardinality on a live engine: each direction has its own series
//! budget (junk SNIs sent to the inbound side fold into the inbound overflow
//! series and never push an outbound target there), and series no connection
//! uses are evicted after the retention period, which frees their slots.
//! Runs on tokio's paused clock.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use meshpipe_core::{Direction, Engine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `data`, half-closes and reads the echo to its end.
async fn exchange(addr: SocketAddr, data: &[u8]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, data);
}

fn series(engine: &Engine, direction: Direction) -> Vec<meshpipe_core::metrics::TcpSnapshot> {
    engine.snapshot().tcp.into_iter().filter(|s| s.direction == direction).collect()
}

#[tokio::test(start_paused = true)]
async fn junk_snis_fill_only_the_inbound_budget_and_idle_series_are_evicted() {
    let echo = echo_server().await;
    let retain = Duration::from_secs(60);
    let cfg = serde_json::json!({
        "listeners": [
            { "name": "in", "bind": "127.0.0.1:0", "target": { "kind": "fixed", "addr": echo.to_string() }, "direction": "inbound" },
            { "name": "out", "bind": "127.0.0.1:0", "target": { "kind": "fixed", "addr": echo.to_string() }, "direction": "outbound" }
        ],
        "metrics": { "maxTargets": 5, "retainIdleMs": retain.as_millis() as u64 },
        // TCP series only (the peer is an echo server); HTTP series share the
        // budget, see metrics/http.rs.
        "http": { "enabled": false }
    });
    let (engine, inbound) = start(cfg).await;
    let outbound: SocketAddr = engine.bound()[1].bind.parse().unwrap();

    for i in 0..20 {
        exchange(inbound, &client_hello(&format!("junk-{i}.example"))).await;
    }
    exchange(outbound, b"GET / HTTP/1.1\r\n\r\n").await;

    let inb = series(&engine, Direction::Inbound);
    assert_eq!(inb.iter().filter(|s| !s.overflow).count(), 5, "the inbound budget");
    let overflow = inb.iter().find(|s| s.overflow).expect("an inbound overflow series");
    assert_eq!(overflow.src_open_total, 15);
    let out = series(&engine, Direction::Outbound);
    assert_eq!(out.len(), 1);
    assert!(!out[0].overflow, "the outbound target keeps its own series: {:?}", out[0]);
    assert_eq!(engine.snapshot().tcp_series, vec![5, 1]);

    // Nothing uses them for the retention period (plus one sweep): evicted.
    tokio::time::sleep(retain * 5 / 4 + Duration::from_secs(1)).await;
    let snap = engine.snapshot();
    assert_eq!(snap.tcp_series, vec![0, 0], "{:?}", snap.tcp);
    assert!(snap.evicted_series >= 6, "{}", snap.evicted_series);
    assert!(series(&engine, Direction::Inbound).iter().any(|s| s.overflow), "the overflow series is never evicted");

    // The freed slots take new targets again.
    exchange(inbound, &client_hello("back.example")).await;
    let inb = series(&engine, Direction::Inbound);
    assert!(inb.iter().any(|s| !s.overflow && s.sni.as_deref() == Some("back.example")), "{inb:?}");
}

#[tokio::test(start_paused = true)]
async fn a_series_with_an_open_connection_is_kept() {
    let echo = echo_server().await;
    let retain = Duration::from_secs(60);
    let (engine, addr) =
        forward(echo, Some("opaque"), serde_json::json!({ "metrics": { "retainIdleMs": retain.as_millis() as u64 }, "idleTimeoutMs": 0 }))
            .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    tokio::time::sleep(retain * 3).await;
    let snap = engine.snapshot();
    assert_eq!(snap.tcp_series, vec![0, 1]);
    assert_eq!(snap.tcp[0].src_open, 1);
    drop(s);
    tokio::time::sleep(retain * 3).await;
    assert_eq!(engine.snapshot().tcp_series, vec![0, 0]);
}
