//! Upgrades and CONNECT through the HTTP proxy become byte tunnels after the
//! handshake, with nothing lost: HTTP/1.1 `Upgrade` (as WebSockets use it),
//! `CONNECT` from HTTP/1.1 and HTTP/1.0 clients with the authority passed on
//! unchanged, HTTP/2 extended CONNECT (RFC 8441), and `Upgrade: h2c`
//! stripped into a plain request.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http::*;
use common::within;
use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(20);

/// Reads the backend's label line, then checks that `data` comes back whole.
async fn echo_through<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut S, label: &str, data: &[u8]) {
    let mut got = vec![0u8; label.len()];
    within(T, io.read_exact(&mut got)).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&got), label);
    let (mut r, mut w) = tokio::io::split(io);
    let write = async {
        w.write_all(data).await.unwrap();
        w.flush().await.unwrap();
    };
    let read = async {
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).await.unwrap();
        back
    };
    let ((), back) = within(T, async { tokio::join!(write, read) }).await;
    assert!(back == data, "the tunnel carried every byte in order");
}

#[tokio::test]
async fn http1_upgrade_becomes_a_tunnel_after_101() {
    let (backend, _) = h1_backend("ws").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h1_client(proxy).await;
    let req = Request::get("/chat")
        .header("host", "ws.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(full(""))
        .unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    let mut io = TokioIo::new(within(T, hyper::upgrade::on(resp)).await.unwrap());
    echo_through(&mut io, "ws /chat\n", &common::random(300_000, 1)).await;
    drop(io);
    let snap = engine.snapshot();
    let s = snap.http.iter().find(|s| s.authority.as_deref() == Some("ws.test")).unwrap();
    assert_eq!(s.responses[0].status_code, Some(101));
}

#[tokio::test]
async fn connect_from_http11_reaches_a_forward_proxy_with_its_authority() {
    let (backend, seen) = h1_backend("fwd").await;
    let (_engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h1_client(proxy).await;
    let req = Request::connect("db.example:5432").header("host", "db.example:5432").body(full("")).unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut io = TokioIo::new(within(T, hyper::upgrade::on(resp)).await.unwrap());
    echo_through(&mut io, "fwd db.example:5432\n", &common::random(200_000, 2)).await;
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn connect_from_http10_with_bytes_sent_early_loses_nothing() {
    let (backend, _) = h1_backend("fwd10").await;
    let (_engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    // The request and the first tunnel bytes in one write: the proxy must
    // carry the bytes past the handshake to the other side.
    s.write_all(b"CONNECT db.example:443 HTTP/1.0\r\n\r\nearly-bytes").await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within(T, s.read_exact(&mut b)).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    let mut label = vec![0u8; "fwd10 db.example:443\nearly-bytes".len()];
    within(T, s.read_exact(&mut label)).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&label), "fwd10 db.example:443\nearly-bytes");
    s.write_all(b"more").await.unwrap();
    let mut more = [0u8; 4];
    within(T, s.read_exact(&mut more)).await.unwrap();
    assert_eq!(&more, b"more");
}

#[tokio::test]
async fn refused_connect_is_a_plain_response() {
    // A forward proxy that refuses: 407, no tunnel; the connection stays usable.
    let (backend, _) = h1_backend("deny").await;
    let (_engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h1_client(proxy).await;
    let req = Request::connect("deny.example:443").body(full("")).unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 407);
    assert_eq!(text(resp).await, "proxy authentication required");
    let resp = within(T, c.send_request(get("/after"))).await.unwrap();
    assert_eq!(text(resp).await, "deny GET /after web.test");
}

#[tokio::test]
async fn h2c_upgrade_requests_are_proxied_as_plain_requests() {
    let (backend, _) = h1_backend("h2c").await;
    let (_engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h1_client(proxy).await;
    let req = Request::get("/plain")
        .header("host", "x.test")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQAAP__")
        .body(full(""))
        .unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200, "not 101: the upgrade was stripped");
    assert_eq!(text(resp).await, "h2c GET /plain x.test");
}

#[tokio::test]
async fn http2_extended_connect_tunnels_websockets_over_h2() {
    let (backend, _) = h2_backend("h2ws").await;
    let (_engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h2_client(proxy).await;
    // RFC 8441 §3: a client sends extended CONNECT once it has the
    // server's SETTINGS_ENABLE_CONNECT_PROTOCOL; after one exchange it has.
    let r = within(T, c.send_request(Request::get("http://h2ws.test/warm").body(full("")).unwrap())).await.unwrap();
    text(r).await;
    let mut req = Request::connect("http://h2ws.test/chat").header("sec-websocket-version", "13").body(full("")).unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut io = TokioIo::new(within(T, hyper::upgrade::on(resp)).await.unwrap());
    echo_through(&mut io, "h2ws http://h2ws.test/chat\n", &common::random(200_000, 3)).await;
}

/// A relay for one connection to `backend` that holds the backend's bytes
/// back for `hold` (a server slow to send its preface) and sets the flag
/// when the proxy sent a HEADERS frame before them.
async fn slow_preface_relay(backend: SocketAddr, hold: Duration) -> (SocketAddr, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let early = Arc::new(AtomicBool::new(false));
    let flag = early.clone();
    tokio::spawn(async move {
        let (proxy, _) = l.accept().await.unwrap();
        let server = TcpStream::connect(backend).await.unwrap();
        let (mut from_proxy, mut to_proxy) = proxy.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        let released = Arc::new(AtomicBool::new(false));
        let r = released.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            r.store(true, Ordering::SeqCst);
            let _ = tokio::io::copy(&mut from_server, &mut to_proxy).await;
        });
        // The client preface (RFC 9113 §3.4), then frames: 9-byte headers.
        let mut preface = [0u8; 24];
        if from_proxy.read_exact(&mut preface).await.is_err() {
            return;
        }
        to_server.write_all(&preface).await.unwrap();
        loop {
            let mut head = [0u8; 9];
            if from_proxy.read_exact(&mut head).await.is_err() {
                return;
            }
            if head[3] == 0x1 && !released.load(Ordering::SeqCst) {
                flag.store(true, Ordering::SeqCst);
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if from_proxy.read_exact(&mut payload).await.is_err() {
                return;
            }
            if to_server.write_all(&head).await.is_err() || to_server.write_all(&payload).await.is_err() {
                return;
            }
        }
    });
    (addr, early)
}

#[tokio::test]
async fn extended_connect_waits_for_the_upstreams_settings() {
    // RFC 8441 §3: `:protocol` goes upstream only after the upstream's
    // SETTINGS enabled it, also when the upstream is slow to send them and
    // the extended CONNECT is the first request of a fresh connection.
    let (backend, seen) = h2_backend("h2ws").await;
    let (relay, early) = slow_preface_relay(backend, Duration::from_millis(300)).await;
    let (_engine, proxy) = common::forward(relay, None, serde_json::json!({})).await;
    // The first request of the client's connection, sent before the
    // proxy's SETTINGS are in (the proxy enables extended CONNECT from its
    // first frame and takes it), so the proxy's upstream connection is new.
    let mut c = h2_client(proxy).await;
    let mut req = Request::connect("http://h2ws.test/chat").header("sec-websocket-version", "13").body(full("")).unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!early.load(Ordering::SeqCst), "the request went upstream before the upstream's SETTINGS");
    let mut io = TokioIo::new(within(T, hyper::upgrade::on(resp)).await.unwrap());
    echo_through(&mut io, "h2ws http://h2ws.test/chat\n", &common::random(100_000, 5)).await;
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn extended_connect_to_an_upstream_that_did_not_enable_it_is_a_502_never_sent() {
    let (backend, seen) = h2_backend_without_extended_connect("plain-h2").await;
    let (_engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h2_client(proxy).await;
    let mut req = Request::connect("http://plain-h2.test/chat").header("sec-websocket-version", "13").body(full("")).unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    // The proxy's own answer, not the upstream's reset of a stream it refused.
    let why = text(resp).await;
    assert!(why.contains("does not accept extended CONNECT") && why.contains("SETTINGS_ENABLE_CONNECT_PROTOCOL"), "{why}");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0, "the upstream never got a :protocol it did not allow");
    // The connection (the proxy's and the upstream's) serves other requests on.
    let r = within(T, c.send_request(Request::get("http://plain-h2.test/after").body(full("")).unwrap())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(text(r).await, "plain-h2 GET http://plain-h2.test/after ");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
}

/// An upstream that reads what the proxy sends and answers every
/// connection with `first` (raw bytes), then closes it (`close`) or keeps
/// reading.
async fn raw_h2_upstream(first: Vec<u8>, close: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let first = first.clone();
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if s.read_exact(&mut preface).await.is_err() {
                    return;
                }
                let _ = s.write_all(&first).await;
                if close {
                    return;
                }
                let mut sink = vec![0u8; 4096];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

async fn extended_connect_through(upstream: SocketAddr) -> (StatusCode, String) {
    let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let mut c = h2_client(proxy).await;
    let mut req = Request::connect("http://odd.test/chat").header("sec-websocket-version", "13").body(full("")).unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = within(T, c.send_request(req)).await.unwrap();
    (resp.status(), text(resp).await)
}

#[tokio::test]
async fn an_upstream_that_ends_or_breaks_its_preface_is_named_as_such() {
    // Half a SETTINGS frame header, then the close: the upstream never
    // said, and the answer does not claim it refused.
    let (status, why) = extended_connect_through(raw_h2_upstream(vec![0, 0, 6, 4], true).await).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(why.contains("HTTP/2 connection closed") && !why.contains("does not accept"), "{why}");
    // A PING before any SETTINGS (RFC 9113 §3.4 makes SETTINGS the first frame).
    let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let settings_on = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1];
    let (status, why) = extended_connect_through(raw_h2_upstream([&ping[..], &settings_on].concat(), false).await).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(why.contains("something else than a valid SETTINGS frame"), "{why}");
}
