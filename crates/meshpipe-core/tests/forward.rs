//! Engine integration tests for forwarding: integrity, half-close, resets,
//! connect failures, the connection limit, drain and loop protection at start,
//! on real sockets.

mod common;

use std::time::Duration;

use common::*;
use meshpipe_core::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_is_bit_exact_both_ways() {
    let echo = echo_server().await;
    for mode in [Some("opaque"), None] {
        let (engine, addr) = forward(echo, mode, serde_json::json!({})).await;
        let data = random(16 << 20, 1);
        let expect = sha(&data);
        assert_eq!(within(Duration::from_secs(30), roundtrip(addr, data)).await, expect, "mode {mode:?}");
        let snap = engine.snapshot();
        let series = &snap.tcp[0];
        assert_eq!(series.bytes_client_to_server, 16 << 20);
        assert_eq!(series.bytes_server_to_client, 16 << 20);
        engine.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_other_direction_flowing() {
    // The server reads until EOF, then answers: only works if our FIN is
    // propagated while the server->client direction stays open.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes()).await.unwrap();
    });
    let (_engine, addr) = forward(target, Some("opaque"), serde_json::json!({})).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&[7u8; 100_000]).await.unwrap();
    c.shutdown().await.unwrap();
    let mut reply = String::new();
    within(Duration::from_secs(10), c.read_to_string(&mut reply)).await.unwrap();
    assert_eq!(reply, "got 100000 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_closes_the_target_side() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let (got_all_tx, got_all) = tokio::sync::oneshot::channel();
    let (end_tx, end) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // First connection: read until it ends, reporting when all 10,000
        // bytes are in and how the stream ended.
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        let mut got_all_tx = Some(got_all_tx);
        let how = loop {
            match s.read(&mut buf).await {
                Ok(0) => break "eof",
                Ok(n) => {
                    total += n;
                    if total >= 10_000 {
                        if let Some(tx) = got_all_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                Err(_) => break "error",
            }
        };
        let _ = end_tx.send(how);
        // Later connections: echo.
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let (engine, addr) = forward(target, Some("opaque"), serde_json::json!({})).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&[1u8; 10_000]).await.unwrap();
    // Reset only once the target has everything: the RST must arrive as a
    // reset of an established stream, not race the data.
    within(Duration::from_secs(5), got_all).await.unwrap();
    socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
    drop(c); // RST
    let how = within(Duration::from_secs(5), end).await.unwrap();
    assert_eq!(how, "error", "the reset is propagated as a reset, not a clean EOF");
    // The same engine keeps serving.
    assert_eq!(roundtrip(addr, b"still alive".to_vec()).await, sha(b"still alive"));
    let snap = engine.snapshot();
    assert_eq!(snap.listeners[0].accepted, 2);
    let resets: u64 = snap
        .tcp
        .iter()
        .flat_map(|t| &t.closes)
        .filter(|c| c.peer == meshpipe_core::metrics::Peer::Src && c.errno == "ECONNRESET")
        .map(|c| c.count)
        .sum();
    assert_eq!(resets, 1, "the client's reset is counted on the src side");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_closes_client_promptly_and_is_counted() {
    // A port with nothing listening: bind then drop to get a free one.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let (engine, addr) = forward(dead, Some("opaque"), serde_json::json!({})).await;
    for _ in 0..3 {
        // The reset can arrive before connect() even returns: either way the
        // client learns promptly that the target is unreachable.
        if let Ok(mut c) = TcpStream::connect(addr).await {
            let mut buf = [0u8; 16];
            let r = within(Duration::from_secs(2), c.read(&mut buf)).await;
            assert!(matches!(r, Ok(0) | Err(_)), "client is closed, got {r:?}");
        }
    }
    let snap = engine.snapshot();
    assert_eq!(snap.errors.connect_failed, 3);
    let closes = &snap.tcp[0].closes;
    assert!(closes.iter().any(|c| c.peer == meshpipe_core::metrics::Peer::Dst && c.errno == "ECONNREFUSED" && c.count == 3), "{closes:?}");
    assert_eq!(snap.listeners[0].accepted, 3, "the listener keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_new_ones_in_the_backlog() {
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, Some("opaque"), serde_json::json!({ "limits": { "outboundConnections": 2 } })).await;
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    for s in [&mut a, &mut b] {
        s.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
    }
    // The third connects (kernel backlog) but is not served until a slot frees.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"y").await.unwrap();
    let mut one = [0u8; 1];
    assert!(tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut one)).await.is_err(), "third waits");
    assert!(engine.snapshot().listeners[0].limit_waits >= 1);
    drop(a);
    within(Duration::from_secs(5), c.read_exact(&mut one)).await.unwrap();
    assert_eq!(&one, b"y");
}

/// With one socket per worker, a worker that is idle must not sit on a slot
/// of the limit: the kernel may queue every connection on the *other*
/// worker's socket. Each round opens exactly `limit` connections, which must
/// all be served however the kernel spreads them.
#[test]
fn max_connections_are_all_usable_with_several_workers() {
    let workers = WorkerThreads::start(2);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let echo = echo_server().await;
        let (engine, addr) = workers.forward(echo, serde_json::json!({ "limits": { "outboundConnections": 2 } }));
        for round in 0..12 {
            let mut open = Vec::new();
            for i in 0..2 {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"x").await.unwrap();
                let mut one = [0u8; 1];
                let served = tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut one)).await;
                assert!(served.is_ok(), "round {round}: connection {i} of 2 was not served under a limit of 2");
                open.push(s);
            }
            drop(open);
            // Wait until both slots are free again before the next round.
            within(Duration::from_secs(5), async {
                while engine.snapshot().listeners[0].open > 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await;
        }
        // Never more than the limit at once: no connection ever had to wait
        // for a slot, and an idle worker with stale readiness did not count
        // (or take) one.
        assert_eq!(engine.snapshot().listeners[0].limit_waits, 0);
        engine.close(Duration::from_secs(1)).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_drains_then_cuts_at_the_deadline() {
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, Some("opaque"), serde_json::json!({})).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"hi").await.unwrap();
    let mut two = [0u8; 2];
    idle.read_exact(&mut two).await.unwrap();
    let started = std::time::Instant::now();
    let summary = engine.close(Duration::from_millis(300)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(summary.cut, 1);
    let mut buf = [0u8; 1];
    assert!(matches!(within(Duration::from_secs(2), idle.read(&mut buf)).await, Ok(0) | Err(_)));
    assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_accepting_refuses_at_once_and_open_connections_go_on() {
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, Some("opaque"), serde_json::json!({})).await;
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(b"before").await.unwrap();
    let mut six = [0u8; 6];
    open.read_exact(&mut six).await.unwrap();
    assert!(engine.stop_accepting(&["test".to_string()]).is_empty());
    // No await between the call and the connect: the port is closed by the call itself.
    assert!(TcpStream::connect(addr).await.is_err(), "refused as soon as stop_accepting returns");
    open.write_all(b"after!").await.unwrap();
    open.read_exact(&mut six).await.unwrap();
    assert_eq!(&six, b"after!");
    assert_eq!(engine.stop_accepting(&["nope".to_string()]), vec!["nope".to_string()]);
}

/// A fixed target that reaches one of the engine's own listeners through an
/// interface address (the listener binds 0.0.0.0) passes the config check,
/// which knows no interfaces, and is refused at start, before anything is
/// accepted: nothing stays bound.
#[tokio::test]
async fn a_forward_to_its_own_listener_through_an_interface_address_is_refused_at_start() {
    // The address this machine would send from: one of its interfaces, not loopback.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect("192.0.2.1:9").unwrap();
    let ip = probe.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "this test needs a non-loopback interface address, got {ip}");
    let port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    let spec: meshpipe_core::EngineSpec = serde_json::from_value(serde_json::json!({
        "listeners": [{
            "name": "self", "bind": format!("0.0.0.0:{port}"), "direction": "outbound",
            "target": { "kind": "fixed", "addr": format!("{ip}:{port}") }
        }]
    }))
    .unwrap();
    let config = spec.validate().expect("no interface is known to the config check");
    let err = Engine::start(config).await.err().expect("refused at start");
    assert_eq!(err.code(), meshpipe_core::ErrorCode::InvalidConfig);
    let msg = err.to_string();
    assert!(msg.contains(&format!("\"self\" forwards to {ip}:{port}")) && msg.contains(&format!("bind 0.0.0.0:{port}")), "{msg}");
    std::net::TcpListener::bind(("0.0.0.0", port)).expect("the listener was closed again");
}
