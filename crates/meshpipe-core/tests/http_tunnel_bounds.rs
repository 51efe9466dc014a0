//! A tunnel (an HTTP/1.1 `Upgrade` after its 101, a `CONNECT` after its
//! 2xx) is still the client's connection: it keeps the connection's slot of
//! the direction's limit and its descriptors until it closes, it stays in
//! the live registry (`/connections`), and the idle timeout closes it like
//! any other connection. A client must not be able to turn every accepted
//! connection into a tunnel the limits no longer see.

mod common;

use std::time::Duration;

use common::http::*;
use common::within;
use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use meshpipe_core::{Direction, Engine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);

/// Opens a WebSocket-style tunnel through `proxy` and reads the backend's label.
async fn open_tunnel(proxy: std::net::SocketAddr) -> TokioIo<hyper::upgrade::Upgraded> {
    let mut c = h1_client(proxy).await;
    let req = Request::get("/chat")
        .header("host", "ws.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(full(""))
        .unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(within(T, hyper::upgrade::on(resp)).await.unwrap());
    let mut label = [0u8; "ws /chat\n".len()];
    within(T, io.read_exact(&mut label)).await.unwrap();
    io
}

fn outbound_used(engine: &Engine) -> (u64, u64) {
    let s = engine.snapshot().limits;
    let c = s.connections.iter().find(|c| c.direction == Direction::Outbound).unwrap();
    (c.used, c.refused)
}

/// Polls the engine's counters until `f` holds (or fails naming `what`).
async fn until(engine: &Engine, what: &str, f: impl Fn(&Engine) -> bool) {
    let ok = tokio::time::timeout(T, async {
        while !f(engine) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "timed out waiting until {what}: {:?} / {} live",
        engine.snapshot().limits.connections,
        engine.connections(100).len()
    );
}

#[tokio::test]
async fn a_tunnel_keeps_its_connection_slot_until_it_closes() {
    let (backend, _) = h1_backend("ws").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({ "limits": { "outboundConnections": 1 } })).await;
    let mut tunnel = open_tunnel(proxy).await;
    tunnel.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    within(T, tunnel.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"ping");
    assert_eq!(outbound_used(&engine).0, 1, "the tunnel holds the one slot");
    assert_eq!(engine.connections(10).len(), 1, "the tunnel is a live connection");

    // A second client waits in the backlog while the tunnel lives...
    let waiting = tokio::spawn(async move {
        let mut c = h1_client(proxy).await;
        let resp = c.send_request(get("/after")).await.unwrap();
        text(resp).await
    });
    until(&engine, "the second client waits for a slot", |e| outbound_used(e).1 >= 1).await;
    assert!(!waiting.is_finished(), "served past the limit while the tunnel was open");

    // ...and is served once the tunnel closed.
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(T, tunnel.read_to_end(&mut rest)).await.unwrap();
    drop(tunnel);
    assert_eq!(within(T, waiting).await.unwrap(), "ws GET /after web.test");
}

#[tokio::test(start_paused = true)]
async fn an_idle_tunnel_is_closed_by_the_idle_timeout() {
    let (backend, _) = h1_backend("ws").await;
    let timeout = Duration::from_secs(100);
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({ "idleTimeoutMs": timeout.as_millis() as u64 })).await;
    let mut tunnel = open_tunnel(proxy).await;
    let quiet_from = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(timeout * 3, tunnel.read(&mut buf)).await.expect("the idle tunnel was never closed").unwrap();
    assert_eq!(n, 0, "the client got a FIN");
    let after = quiet_from.elapsed();
    assert!(after >= timeout, "closed after {after:?}, before the idle timeout");
    // Counted when the connection's task ends, once the upstream closed too.
    let idle = |e: &Engine| e.snapshot().tcp.iter().map(|s| s.idle_timeouts).sum::<u64>();
    until(&engine, "the idle close is counted", |e| idle(e) == 1).await;
    until(&engine, "the tunnel's connection is gone", |e| e.connections(10).is_empty() && outbound_used(e).0 == 0).await;
}

/// Sends `request`, then `data`, half-closes, and reads everything back.
async fn exchange(proxy: std::net::SocketAddr, request: &[u8], data: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if within(T, s.read(&mut byte)).await.unwrap() == 0 {
            return String::from_utf8_lossy(&head).into_owned();
        }
        head.push(byte[0]);
    }
    s.write_all(data).await.unwrap();
    s.shutdown().await.unwrap();
    within(T, s.read_to_end(&mut head)).await.unwrap();
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn a_connect_answered_200_with_a_transfer_encoding_is_still_a_tunnel() {
    // RFC 9112 §6.3 rule 2: a client ignores the Transfer-Encoding of a 2xx
    // to CONNECT too; no coding is decoded, so none is refused.
    for te in ["identity", "chunked,", "gzip"] {
        let head = format!("HTTP/1.1 200 Connection established\r\nTransfer-Encoding: {te}\r\n\r\nhello");
        let (upstream, _) = raw_upstream(Box::leak(head.into_bytes().into_boxed_slice())).await;
        let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
        let got = exchange(proxy, b"CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n", b" tunnel bytes").await;
        assert!(got.starts_with("HTTP/1.1 200"), "{te}: {got:?}");
        let (head, tunnel) = got.split_once("\r\n\r\n").unwrap();
        assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "{te}: {head:?}");
        assert_eq!(tunnel, "hello tunnel bytes", "{te}: nothing lost either way");
    }
}

#[tokio::test]
async fn a_success_that_opens_no_tunnel_is_a_502() {
    // hyper's client takes a 204 to CONNECT for no tunnel; the client would
    // take any 2xx for one (RFC 9110 §9.3.6). Refused, and counted.
    let (upstream, _) = raw_upstream(b"HTTP/1.1 204 No Content\r\n\r\nGARBAGE").await;
    let (engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let got = exchange(proxy, b"CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n", b"tunnel bytes").await;
    assert!(got.starts_with("HTTP/1.1 502"), "{got:?}");
    assert!(got.contains("204") && !got.contains("GARBAGE"), "{got:?}");
    let snap = engine.snapshot();
    assert!(
        snap.http_errors.iter().any(|e| e.error == meshpipe_core::http::HttpErrorReason::BadGateway && e.count == 1),
        "{:?}",
        snap.http_errors
    );
}

#[tokio::test]
async fn a_connect_answered_200_with_a_content_length_is_still_a_tunnel() {
    // RFC 9110 §9.3.6: a 2xx to CONNECT has no content and a client ignores
    // its Content-Length; the bytes after the head are the tunnel's.
    let (upstream, _) = raw_upstream(b"HTTP/1.1 200 Connection established\r\nContent-Length: 5\r\n\r\nhello").await;
    let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let got = exchange(proxy, b"CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n", b" tunnel bytes").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    let (head, tunnel) = got.split_once("\r\n\r\n").unwrap();
    assert!(!head.to_ascii_lowercase().contains("content-length"), "{head:?}");
    assert_eq!(tunnel, "hello tunnel bytes", "nothing lost either way");
}

#[tokio::test]
async fn a_switch_the_client_did_not_ask_for_is_a_502() {
    // RFC 9110 §15.2.2: a server switches only to a protocol the request's
    // Upgrade named; a 101 to a plain request is the upstream's failure.
    let (upstream, _) = raw_upstream(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nGARBAGE").await;
    let (engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let got = exchange(proxy, b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n", b"").await;
    assert!(got.starts_with("HTTP/1.1 502"), "{got:?}");
    assert!(!got.contains("GARBAGE"), "{got:?}");
    let snap = engine.snapshot();
    assert!(
        snap.http_errors.iter().any(|e| e.error == meshpipe_core::http::HttpErrorReason::BadGateway && e.count == 1),
        "{:?}",
        snap.http_errors
    );
}

#[tokio::test]
async fn a_switch_to_a_protocol_the_client_did_not_offer_is_a_502() {
    // RFC 9110 §7.8: a 101 names the protocol it switches to, one the
    // request offered. The client offered a WebSocket; a server that
    // switches to something else (or names nothing) must not get a tunnel.
    for answer in ["Upgrade: h2c\r\n", "Upgrade: websocket, x-other\r\n", ""] {
        let reply = format!("HTTP/1.1 101 Switching Protocols\r\n{answer}Connection: upgrade\r\n\r\nGARBAGE");
        let (upstream, _) = raw_upstream(Box::leak(reply.into_bytes().into_boxed_slice())).await;
        let (engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
        let got = exchange(proxy, b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", b"").await;
        assert!(got.starts_with("HTTP/1.1 502"), "{answer:?}: {got:?}");
        assert!(!got.contains("GARBAGE"), "{answer:?}: {got:?}");
        let snap = engine.snapshot();
        assert!(
            snap.http_errors.iter().any(|e| e.error == meshpipe_core::http::HttpErrorReason::BadGateway && e.count == 1),
            "{answer:?}: {:?}",
            snap.http_errors
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_tunnel_ends_even_when_the_upstream_ignores_the_fin() {
    // The upstream agrees, then neither reads, writes nor closes: the idle
    // close must still end the tunnel and give its slot back.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 16 * 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n").await;
            let _ = held_tx.send(s);
        }
    });
    let timeout = Duration::from_secs(100);
    let (engine, proxy) = common::forward(
        upstream,
        None,
        serde_json::json!({ "idleTimeoutMs": timeout.as_millis() as u64, "limits": { "outboundConnections": 1 } }),
    )
    .await;
    let mut c = h1_client(proxy).await;
    let req = Request::get("/chat")
        .header("host", "ws.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(full(""))
        .unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut tunnel = TokioIo::new(within(T, hyper::upgrade::on(resp)).await.unwrap());
    let _held = held_rx.recv().await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(timeout * 3, tunnel.read(&mut buf)).await.expect("the idle tunnel was never closed").unwrap();
    assert_eq!(n, 0);
    until(&engine, "the tunnel's connection ends and its slot is free", |e| e.connections(10).is_empty() && outbound_used(e).0 == 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_half_closed_tunnel_ends_at_the_idle_timeout_when_the_upstream_never_closes() {
    // The client sends its FIN (the other direction may go on, RFC 9110
    // §9.3.6), the upstream never answers it nor closes: nothing reads the
    // client any more, yet the idle close must still end the tunnel and
    // give its slot back.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 16 * 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n").await;
            let _ = held_tx.send(s);
        }
    });
    let timeout = Duration::from_secs(100);
    let (engine, proxy) = common::forward(
        upstream,
        None,
        serde_json::json!({ "idleTimeoutMs": timeout.as_millis() as u64, "limits": { "outboundConnections": 1 } }),
    )
    .await;
    let mut c = h1_client(proxy).await;
    let req = Request::get("/chat")
        .header("host", "ws.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(full(""))
        .unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut tunnel = TokioIo::new(within(T, hyper::upgrade::on(resp)).await.unwrap());
    let mut held = held_rx.recv().await.unwrap();
    tunnel.shutdown().await.unwrap();
    // The FIN reached the upstream: the half-close was carried over.
    let mut buf = [0u8; 16];
    assert_eq!(within(T, held.read(&mut buf)).await.unwrap(), 0);
    // The sweep's shutdown reaches the client as the end of the stream.
    let n = tokio::time::timeout(timeout * 3, tunnel.read(&mut buf)).await.expect("the idle tunnel was never closed").unwrap();
    assert_eq!(n, 0);
    until(&engine, "the half-closed tunnel's connection ends and its slot is free", |e| {
        e.connections(10).is_empty() && outbound_used(e).0 == 0
    })
    .await;
    assert!(engine.snapshot().tcp.iter().any(|s| s.idle_timeouts >= 1), "counted as an idle timeout");
}
