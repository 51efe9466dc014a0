//! Per-direction bounds on a live engine: each direction has its own
//! connection limit (a full inbound side leaves outbound traffic alone, and
//! its excess waits in the kernel backlog), and the connections in protocol
//! detection are capped per direction (past the cap a connection does not
//! wait for bytes: what it already sent is classified, otherwise it is
//! counted as `over_limit`; either way it carries every byte), and one
//! inbound host holds at most its share of them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use meshpipe_core::{Direction, Engine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An engine with an inbound and an outbound listener, both forwarding to `target`.
async fn two_directions(target: SocketAddr, mode: &str, extra: serde_json::Value) -> (Engine, SocketAddr, SocketAddr) {
    let mut cfg = serde_json::json!({
        "listeners": [
            { "name": "in", "bind": "127.0.0.1:0", "target": { "kind": "fixed", "addr": target.to_string() }, "mode": mode, "direction": "inbound" },
            { "name": "out", "bind": "127.0.0.1:0", "target": { "kind": "fixed", "addr": target.to_string() }, "mode": mode, "direction": "outbound" }
        ]
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let (engine, inbound) = start(cfg).await;
    let outbound = engine.bound()[1].bind.parse().unwrap();
    (engine, inbound, outbound)
}

/// Sends `msg` and reads the echo, within a few seconds.
async fn echoed(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    within(Duration::from_secs(5), s.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, msg);
}

/// Waits (polling the engine's counters) until `f` holds.
async fn until(engine: &Engine, what: &str, f: impl Fn(&meshpipe_core::Snapshot) -> bool) {
    let ok = tokio::time::timeout(Duration::from_secs(5), async {
        while !f(&engine.snapshot()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting until {what}: {:?}", engine.snapshot().limits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbound_side_does_not_starve_outbound_traffic() {
    let echo = echo_server().await;
    let (engine, inbound, outbound) = two_directions(echo, "opaque", serde_json::json!({ "limits": { "inboundConnections": 2 } })).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(inbound).await.unwrap();
        echoed(&mut s, b"in").await;
        idle.push(s);
    }
    // The third inbound connection completes its handshake (backlog) but is not served.
    let mut third = TcpStream::connect(inbound).await.unwrap();
    third.write_all(b"third").await.unwrap();
    let mut buf = [0u8; 5];
    assert!(tokio::time::timeout(Duration::from_millis(300), third.read_exact(&mut buf)).await.is_err(), "the third inbound waits");
    // Outbound has its own slots: served at once, however many.
    for i in 0..5u8 {
        let mut s = TcpStream::connect(outbound).await.unwrap();
        echoed(&mut s, &[b'o', i]).await;
    }
    let limits = engine.snapshot().limits;
    let inbound_limit = &limits.connections[Direction::Inbound.index()];
    assert_eq!((inbound_limit.limit, inbound_limit.used), (Some(2), 2), "{limits:?}");
    assert!(inbound_limit.refused >= 1);
    assert_eq!(limits.connections[Direction::Outbound.index()].refused, 0);
    // A slot frees: the waiting connection is served, its bytes intact.
    drop(idle.pop());
    within(Duration::from_secs(5), third.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"third");
}

/// How many connections of `dir` detection ended with `result`.
fn detected(engine: &Engine, dir: Direction, result: &str) -> u64 {
    engine.snapshot().detect.iter().filter(|d| d.direction == dir && d.result.as_str() == result).map(|d| d.count).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_detection_cap_connections_skip_detection_and_keep_every_byte() {
    let echo = echo_server().await;
    let detect = serde_json::json!({ "inboundTimeoutMs": 10_000, "outboundTimeoutMs": 10_000, "serverFirstGraceMs": 0 });
    let (engine, inbound, outbound) =
        // HTTP as bytes: the peer is an echo server.
        two_directions(echo, "detect", serde_json::json!({ "limits": { "detectingConnections": 2 }, "detect": detect, "http": { "enabled": false } }))
            .await;
    // Two silent clients hold both inbound detection slots (a slowloris flood, in small).
    let silent = [TcpStream::connect(inbound).await.unwrap(), TcpStream::connect(inbound).await.unwrap()];
    until(&engine, "two inbound connections are detecting", |s| s.limits.detecting[Direction::Inbound.index()].used == 2).await;

    // The next inbound connection, silent when it is served, does not wait
    // for bytes: it is forwarded at once, undetected, losslessly.
    let request = b"GET /over HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut s = TcpStream::connect(inbound).await.unwrap();
    until(&engine, "the third inbound connection is forwarded undetected", |_| detected(&engine, Direction::Inbound, "over_limit") == 1)
        .await;
    echoed(&mut s, request).await;
    // A client that writes at once may be classified on what it sent (or
    // not, depending on when it is served): every byte arrives either way.
    let data = random(256 * 1024, 7);
    let mut full = request.to_vec();
    full.extend_from_slice(&data);
    assert_eq!(within(Duration::from_secs(10), roundtrip(inbound, full.clone())).await, sha(&full));
    // Outbound has its own detection slots.
    let mut o = TcpStream::connect(outbound).await.unwrap();
    echoed(&mut o, request).await;
    let snap = engine.snapshot();
    let undetected = detected(&engine, Direction::Inbound, "over_limit");
    let instant = detected(&engine, Direction::Inbound, "http/1");
    assert_eq!((undetected + instant, undetected >= 1), (2, true), "{:?}", snap.detect);
    assert_eq!(detected(&engine, Direction::Outbound, "http/1"), 1, "{:?}", snap.detect);
    assert_eq!(snap.limits.detecting[Direction::Inbound.index()].refused, 2);
    // Every slot was taken: not a host's share (the share of 2 slots is 2).
    assert_eq!(snap.limits.detecting_share.as_ref().map(|s| (s.host, s.refused)), Some((2, 0)));

    // Once the silent clients leave, inbound connections wait for their bytes again.
    drop(silent);
    until(&engine, "the detection slots are free", |s| s.limits.detecting[Direction::Inbound.index()].used == 0).await;
    let mut again = TcpStream::connect(inbound).await.unwrap();
    until(&engine, "a new inbound connection is detecting", |s| s.limits.detecting[Direction::Inbound.index()].used == 1).await;
    echoed(&mut again, request).await;
    assert_eq!(detected(&engine, Direction::Inbound, "http/1"), instant + 1, "{:?}", engine.snapshot().detect);
    assert_eq!(detected(&engine, Direction::Inbound, "over_limit"), undetected);
}

/// A silent connection to `to` from `source` (a loopback address).
async fn from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_inbound_host_holds_only_its_share_of_the_detection_slots() {
    let echo = echo_server().await;
    let detect = serde_json::json!({ "inboundTimeoutMs": 10_000, "outboundTimeoutMs": 10_000, "serverFirstGraceMs": 0 });
    // 32 slots: one host may hold 8 (a sixteenth, at least 8).
    let cfg = serde_json::json!({ "limits": { "detectingConnections": 32 }, "detect": detect, "http": { "enabled": false } });
    let (engine, inbound, outbound) = two_directions(echo, "detect", cfg).await;
    let used = |s: &meshpipe_core::Snapshot| s.limits.detecting[Direction::Inbound.index()].used;
    let mut flood = Vec::new();
    for _ in 0..8 {
        flood.push(from([127, 0, 0, 1], inbound).await);
    }
    until(&engine, "the host holds its 8 slots", |s| used(s) == 8).await;
    // Its ninth does not wait for bytes, with 24 slots free.
    let mut ninth = from([127, 0, 0, 1], inbound).await;
    until(&engine, "the ninth is forwarded undetected", |_| detected(&engine, Direction::Inbound, "over_limit") == 1).await;
    echoed(&mut ninth, b"GET /ninth HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(used(&engine.snapshot()), 8);
    // Counted as the host's share, not as a full direction.
    let limits = engine.snapshot().limits;
    assert_eq!(limits.detecting[Direction::Inbound.index()].refused, 0);
    assert_eq!(limits.detecting_share.as_ref().map(|s| (s.host, s.refused)), Some((8, 1)));
    // Other hosts still get slots and wait for their bytes (three of them:
    // a host whose bucket the flood's shares by chance, 1 in 16,384, would
    // share its cap).
    let mut others = Vec::new();
    for last in 2..=4u8 {
        others.push(from([127, 0, 0, last], inbound).await);
    }
    until(&engine, "other hosts are detecting", |s| used(s) >= 10).await;
    for s in &mut others {
        echoed(s, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
    }
    assert!(detected(&engine, Direction::Inbound, "http/1") >= 2, "{:?}", engine.snapshot().detect);
    // Outbound (the local application) is not shared out.
    let mut out = Vec::new();
    for _ in 0..12 {
        out.push(from([127, 0, 0, 1], outbound).await);
    }
    until(&engine, "twelve outbound connections from one host are detecting", |s| {
        s.limits.detecting[Direction::Outbound.index()].used == 12
    })
    .await;
}

/// A host's share comes back when its connections end mid-detection: the
/// client cutting them (a reset) or closing them, so a flood that went away
/// leaves its host detected as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_gets_its_share_back_when_its_detecting_connections_end() {
    let echo = echo_server().await;
    let detect = serde_json::json!({ "inboundTimeoutMs": 10_000, "outboundTimeoutMs": 10_000, "serverFirstGraceMs": 0 });
    let cfg = serde_json::json!({ "limits": { "detectingConnections": 32 }, "detect": detect, "http": { "enabled": false } });
    let (engine, inbound, _outbound) = two_directions(echo, "detect", cfg).await;
    let used = |s: &meshpipe_core::Snapshot| s.limits.detecting[Direction::Inbound.index()].used;
    for round in 0..3 {
        let mut flood = Vec::new();
        for _ in 0..8 {
            flood.push(from([127, 0, 0, 1], inbound).await);
        }
        until(&engine, "the host holds its 8 slots", |s| used(s) == 8).await;
        for (i, s) in flood.into_iter().enumerate() {
            if i % 2 == 0 {
                // A reset rather than a FIN.
                socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
            }
            drop(s);
        }
        until(&engine, "the flood's slots are back", |s| used(s) == 0).await;
        assert_eq!(detected(&engine, Direction::Inbound, "over_limit"), 0, "round {round}: {:?}", engine.snapshot().detect);
    }
    // The whole share again, and still only the share.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(from([127, 0, 0, 1], inbound).await);
    }
    until(&engine, "the host holds its 8 slots again", |s| used(s) == 8).await;
    let _ninth = from([127, 0, 0, 1], inbound).await;
    until(&engine, "the ninth is over the share", |_| detected(&engine, Direction::Inbound, "over_limit") == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_detection_cap_what_a_client_already_sent_still_decides() {
    let echo = echo_server().await;
    let detect = serde_json::json!({ "inboundTimeoutMs": 10_000, "outboundTimeoutMs": 10_000, "serverFirstGraceMs": 0 });
    let limits = serde_json::json!({ "inboundConnections": 3, "detectingConnections": 2 });
    let (engine, inbound, _) =
        two_directions(echo, "detect", serde_json::json!({ "limits": limits, "detect": detect, "http": { "enabled": false } })).await;
    // Two silent clients hold both detection slots; a third, silent too, is
    // forwarded undetected and holds the last connection slot.
    let silent = [TcpStream::connect(inbound).await.unwrap(), TcpStream::connect(inbound).await.unwrap()];
    until(&engine, "two inbound connections are detecting", |s| s.limits.detecting[Direction::Inbound.index()].used == 2).await;
    let third = TcpStream::connect(inbound).await.unwrap();
    until(&engine, "the third is forwarded undetected", |_| detected(&engine, Direction::Inbound, "over_limit") == 1).await;

    // The fourth waits in the kernel backlog (no connection slot), with its
    // request already sent: by the time it is served its bytes are there.
    let request = b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut fourth = TcpStream::connect(inbound).await.unwrap();
    fourth.write_all(request).await.unwrap();
    until(&engine, "the fourth waits for a connection slot", |s| s.limits.connections[Direction::Inbound.index()].refused >= 1).await;
    drop(third);
    let mut back = vec![0u8; request.len()];
    within(Duration::from_secs(5), fourth.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, request);
    // Still no detection slot free, yet it was detected, not forwarded blind.
    let snap = engine.snapshot();
    assert_eq!(snap.limits.detecting[Direction::Inbound.index()].used, 2, "{:?}", snap.limits);
    assert_eq!(snap.limits.detecting[Direction::Inbound.index()].refused, 2, "{:?}", snap.limits);
    assert_eq!(detected(&engine, Direction::Inbound, "http/1"), 1, "{:?}", snap.detect);
    assert_eq!(detected(&engine, Direction::Inbound, "over_limit"), 1, "{:?}", snap.detect);
    drop(silent);
}
