//! Inbound mesh TLS carrying HTTP is served as HTTP through a real engine:
//! a meshed peer (a rustls client with its own workload certificate) opens
//! mesh TLS to an app port of the engine (SNI = the engine's identity, so
//! the engine terminates it), and the decrypted bytes are detected and
//! served request by request: HTTP series with `tls="true"` and the peer's
//! `client_id`, a large streamed body intact, a refused app port answered
//! 502 with `l5d-proxy-error` (the client is a proxy), an HTTP/1 upgrade
//! still a byte tunnel, and a non-HTTP client still forwarded as bytes with
//! nothing lost. The inbound detection slot the ClientHello peek took is
//! held through the handshake and the detection on the decrypted bytes. (The 4143 tunnel, whose header names the
//! session protocol, needs a pod IP and a redirect: test/mesh-netns.test.ts
//! covers it.)

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::time::Duration;

use common::http::*;
use common::within;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshpipe_core::http::HttpErrorReason;
use meshpipe_core::identity::Identity;
use meshpipe_core::tls::{self, ClientAlpn, TlsState};
use meshpipe_core::vocab::{Direction, TlsLabel};
use meshpipe_core::{Engine, Snapshot};
use pki::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);

struct Mesh {
    engine: Engine,
    /// The engine's inbound listener (a fixed app target).
    addr: SocketAddr,
    client: TlsState,
    client_id: Identity,
    server_id: Identity,
}

/// An engine with an inbound listener forwarding to `app`, holding the
/// server identity, and a meshed client's TLS state from the same CA.
async fn mesh(app: SocketAddr) -> Mesh {
    mesh_with(app, serde_json::json!({})).await
}

/// `mesh` with more engine settings (`extra` is merged into the config).
async fn mesh_with(app: SocketAddr, extra: serde_json::Value) -> Mesh {
    let mut cfg = serde_json::json!({
        "listeners": [{
            "name": "inbound",
            "bind": "127.0.0.1:0",
            "target": { "kind": "fixed", "addr": app.to_string() },
            "direction": "inbound"
        }]
    });
    if let (Some(c), serde_json::Value::Object(e)) = (cfg.as_object_mut(), extra) {
        c.extend(e);
    }
    let (engine, addr) = common::start(cfg).await;
    let ca = ca();
    let (server_id, client_id) = (linkerd("web", "shop"), linkerd("api", "shop"));
    engine.set_identity(&material(&ca, &server_id)).unwrap();
    let client = TlsState::new(&material(&ca, &client_id), 1).unwrap();
    Mesh { engine, addr, client, client_id, server_id }
}

impl Mesh {
    async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let (stream, _) = within(T, tls::connect(&self.client, tcp, &self.server_id, ClientAlpn::None, T)).await.unwrap();
        stream
    }

    async fn h1(&self) -> hyper::client::conn::http1::SendRequest<BoxBody> {
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(self.tls().await)).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        tx
    }

    /// Waits until `f(snapshot)` holds (a response is counted when its body ends).
    async fn until(&self, f: impl Fn(&Snapshot) -> bool) -> Snapshot {
        within(T, async {
            loop {
                let s = self.engine.snapshot();
                if f(&s) {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
    }
}

fn inbound<'a>(snap: &'a Snapshot, authority: &str) -> &'a meshpipe_core::metrics::HttpSnapshot {
    snap.http
        .iter()
        .find(|s| s.direction == Direction::Inbound && s.authority.as_deref() == Some(authority))
        .unwrap_or_else(|| panic!("no inbound series for {authority}: {:?}", snap.http))
}

fn responses(s: &meshpipe_core::metrics::HttpSnapshot, status: u16) -> u64 {
    s.responses.iter().filter(|r| r.status_code == Some(status)).map(|r| r.count).sum()
}

#[tokio::test]
async fn http1_inside_mesh_tls_is_served_per_request_with_the_client_identity() {
    let (app, seen) = h1_backend("app").await;
    let m = mesh(app).await;
    let mut c = m.h1().await;
    let resp = within(T, c.send_request(get("/a"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(text(resp).await, "app GET /a web.test");
    // A large streamed body, on the same connection.
    let n = 8 * 1024 * 1024;
    let req = Request::post("/sha").header("host", "web.test").body(Pattern { left: n, offset: 0 }.boxed()).unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    let hex: String = pattern_sha(n).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(text(resp).await, format!("{hex} {n}"));
    let snap = m.until(|s| s.http.iter().any(|h| h.direction == Direction::Inbound && responses(h, 200) == 2)).await;
    let s = inbound(&snap, "web.test");
    assert_eq!((s.tls, s.client_id.as_deref(), s.requests, responses(s, 200)), (TlsLabel::True, Some(m.client_id.as_str()), 2, 2), "{s:?}");
    assert_eq!(s.target_addr.as_deref(), Some(app.to_string().as_str()));
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 2);
    // The client side's TCP series is the mesh one; its bytes are the plaintext the app saw.
    let tcp = snap.tcp.iter().find(|t| t.direction == Direction::Inbound && t.tls == TlsLabel::True).expect("the mesh TCP series");
    assert_eq!(tcp.client_id.as_deref(), Some(m.client_id.as_str()));
    assert!(tcp.bytes_client_to_server > n, "{tcp:?}");
}

#[tokio::test]
async fn http2_inside_mesh_tls_is_served_as_http2() {
    let (app, _) = h2_backend("app2").await;
    let m = mesh(app).await;
    let (mut c, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(m.tls().await)).await.unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        // A forged client identity is replaced by the one mesh TLS proved.
        let req = Request::get(format!("http://web.test/r{i}")).header("l5d-client-id", "admin.forged").body(full("")).unwrap();
        let resp = within(T, c.send_request(req)).await.unwrap();
        assert_eq!(resp.headers()["x-version"], "HTTP/2.0");
        assert_eq!(resp.headers()["x-l5d-client-id"], m.client_id.as_str(), "the app sees the proven client identity");
        let body = text(resp).await;
        assert!(body.starts_with("app2 GET ") && body.contains(&format!("/r{i}")), "{body}");
    }
    let snap = m.until(|s| s.http.iter().any(|h| h.direction == Direction::Inbound && responses(h, 200) == 3)).await;
    let s = inbound(&snap, "web.test");
    assert_eq!((s.tls, s.client_id.as_deref(), s.requests), (TlsLabel::True, Some(m.client_id.as_str()), 3));
}

#[tokio::test]
async fn a_refused_app_port_is_a_502_with_l5d_proxy_error_for_the_meshed_peer() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let m = mesh(closed).await;
    let mut c = m.h1().await;
    let resp = within(T, c.send_request(get("/x"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let why = resp.headers().get("l5d-proxy-error").expect("l5d-proxy-error toward a meshed peer").to_str().unwrap().to_string();
    assert!(why.contains(&closed.to_string()), "{why}");
    // The connection stays usable (a 502 does not close it).
    let again = within(T, c.send_request(get("/y"))).await.unwrap();
    assert_eq!(again.status(), StatusCode::BAD_GATEWAY);
    let snap = m.until(|s| s.http.iter().any(|h| h.direction == Direction::Inbound && responses(h, 502) == 2)).await;
    let s = inbound(&snap, "web.test");
    assert!(s.responses.iter().all(|r| r.error == Some(HttpErrorReason::BadGateway)), "{s:?}");
    let errors = snap.http_errors.iter().find(|e| e.direction == Direction::Inbound && e.error == HttpErrorReason::BadGateway).unwrap();
    assert_eq!(errors.count, 2);
}

#[tokio::test]
async fn an_upgrade_inside_mesh_tls_becomes_a_byte_tunnel() {
    let (app, _) = h1_backend("ws").await;
    let m = mesh(app).await;
    let mut c = m.h1().await;
    let req = Request::get("/chat")
        .header("host", "ws.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(full(""))
        .unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(within(T, hyper::upgrade::on(resp)).await.unwrap());
    let label = b"ws /chat\n";
    let mut got = vec![0u8; label.len()];
    within(T, io.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, label);
    let data = common::random(300_000, 7);
    let (mut r, mut w) = tokio::io::split(io);
    let write = async { w.write_all(&data).await.unwrap() };
    let read = async {
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).await.unwrap();
        back
    };
    let ((), back) = within(T, async { tokio::join!(write, read) }).await;
    assert!(back == data, "the tunnel carried every byte in order");
    let snap = m.engine.snapshot();
    assert_eq!(responses(inbound(&snap, "ws.test"), 101), 1);
}

#[tokio::test]
async fn a_client_that_is_not_http_is_still_forwarded_as_bytes() {
    let app = common::echo_server().await;
    let m = mesh(app).await;
    let mut s = m.tls().await;
    let mut data = b"\x00\x01 not http at all ".to_vec();
    data.extend(common::random(200_000, 3));
    let (mut r, mut w) = tokio::io::split(&mut s);
    let write = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let read = async {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = within(T, async { tokio::join!(write, read) }).await;
    assert!(back == data, "every byte, the ones detection read first included ({} of {})", back.len(), data.len());
    assert!(m.engine.snapshot().http.iter().all(|h| h.direction != Direction::Inbound));
}

#[tokio::test]
async fn detection_inside_mesh_tls_holds_an_inbound_detection_slot() {
    let (app, seen) = h1_backend("app").await;
    // No server-first grace: a silent client keeps detecting (and its slot)
    // until the detect timeout, as on a port declared HTTP.
    let m = mesh_with(app, serde_json::json!({ "limits": { "detectingConnections": 1 }, "detect": { "serverFirstGraceMs": 0 } })).await;
    let inbound_slots = |s: &Snapshot| s.limits.detecting[Direction::Inbound.index()].clone();
    // A client that stops half-way through the handshake (a ClientHello for
    // this proxy's identity, then nothing) holds the slot the peek took.
    let mut stalled = TcpStream::connect(m.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(m.server_id.as_str().to_string()).unwrap();
    let mut hello = rustls::ClientConnection::new(m.client.client_config(&m.server_id, ClientAlpn::None), name).unwrap();
    let mut first_flight = Vec::new();
    hello.write_tls(&mut first_flight).unwrap();
    stalled.write_all(&first_flight).await.unwrap();
    m.until(|s| inbound_slots(s).used == 1).await;
    drop(stalled);
    m.until(|s| inbound_slots(s).used == 0).await;
    // A meshed client that says nothing after its handshake: the slot the
    // peek took is kept through the handshake and the detection on the
    // decrypted stream.
    let silent = m.tls().await;
    m.until(|s| inbound_slots(s).used == 1).await;
    // So the next client's detection finds none (counted): silent when it
    // is served, it is forwarded at once and its request reaches the app as
    // bytes (the app still answers it).
    let mut plain = TcpStream::connect(m.addr).await.unwrap();
    m.until(|s| inbound_slots(s).refused == 1).await;
    plain.write_all(b"GET /bytes HTTP/1.1\r\nhost: web.test\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    within(T, plain.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("app GET /bytes web.test"), "{answer}");
    let snap = m.engine.snapshot();
    assert_eq!(inbound_slots(&snap).refused, 1, "{:?}", inbound_slots(&snap));
    assert!(!snap.http.iter().any(|h| h.direction == Direction::Inbound), "not served as HTTP: {:?}", snap.http);
    // The slot is given back when the silent client leaves; then HTTP again.
    drop(silent);
    m.until(|s| inbound_slots(s).used == 0).await;
    let mut c = m.h1().await;
    let resp = within(T, c.send_request(get("/http"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    let snap = m.until(|s| s.http.iter().any(|h| h.direction == Direction::Inbound && responses(h, 200) == 1)).await;
    assert_eq!(inbound(&snap, "web.test").requests, 1);
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_split_client_hello_is_still_terminated_when_every_detection_slot_is_taken() {
    let (app, seen) = h1_backend("app").await;
    // The detect timeout outlasts the test: the slot stays held throughout.
    let limits = serde_json::json!({ "limits": { "detectingConnections": 1 }, "detect": { "inboundTimeoutMs": 60_000 } });
    let m = mesh_with(app, limits).await;
    let inbound_slots = |s: &Snapshot| s.limits.detecting[Direction::Inbound.index()].clone();
    // A plain client, silent, holds the one detection slot.
    let _silent = TcpStream::connect(m.addr).await.unwrap();
    m.until(|s| inbound_slots(s).used == 1).await;
    // A meshed client's ClientHello arrives in two pieces, the second only
    // once the proxy found no slot for it: detection without a slot waits
    // (holding no buffer) for the rest of the first record instead of
    // forwarding the first piece to the app as bytes.
    let (open, gate) = tokio::sync::oneshot::channel();
    let tcp = common::Gated::new(TcpStream::connect(m.addr).await.unwrap(), 40, gate);
    let handshake = tls::connect(&m.client, tcp, &m.server_id, ClientAlpn::None, T);
    let mut open = Some(open);
    let sequence = async {
        m.until(|s| inbound_slots(s).refused == 1).await;
        open.take().unwrap().send(()).unwrap();
    };
    let (done, ()) = within(T, async { tokio::join!(handshake, sequence) }).await;
    let (mut stream, _) = done.expect("the mesh TLS handshake completes");
    stream.write_all(b"GET /split HTTP/1.1\r\nhost: web.test\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    within(T, stream.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("app GET /split web.test"), "{answer}");
    let snap = m.engine.snapshot();
    assert_eq!((inbound_slots(&snap).used, inbound_slots(&snap).refused), (1, 1), "{:?}", inbound_slots(&snap));
    let detected =
        |c: &str| snap.detect.iter().filter(|d| d.direction == Direction::Inbound && d.result.as_str() == c).map(|d| d.count).sum::<u64>();
    assert_eq!((detected("tls"), detected("over_limit")), (1, 0), "{:?}", snap.detect);
    let client_id = m.client_id.as_str();
    assert!(
        snap.tcp.iter().any(|t| t.direction == Direction::Inbound && t.tls == TlsLabel::True && t.client_id.as_deref() == Some(client_id)),
        "the split client's connection is mesh TLS from {client_id}: {:?}",
        snap.tcp
    );
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
    // A slot-less client whose first record never completes is forwarded
    // as bytes after the short wait, long before the 60 s detect timeout:
    // what it sent reaches the app.
    let mut stuck = TcpStream::connect(m.addr).await.unwrap();
    stuck.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]).await.unwrap();
    m.until(|s| {
        s.detect.iter().filter(|d| d.direction == Direction::Inbound && d.result.as_str() == "over_limit").map(|d| d.count).sum::<u64>()
            == 1
    })
    .await;
    drop(stuck);
}

#[tokio::test]
async fn without_a_slot_a_first_record_that_never_completes_still_reaches_the_app_whole() {
    let echo = common::echo_server().await;
    let limits = serde_json::json!({ "limits": { "detectingConnections": 1 }, "detect": { "inboundTimeoutMs": 60_000 } });
    let m = mesh_with(echo, limits).await;
    let _silent = TcpStream::connect(m.addr).await.unwrap();
    m.until(|s| s.limits.detecting[Direction::Inbound.index()].used == 1).await;
    // Handshake records announcing 12,288 bytes (more than a slot-less
    // read takes: not waited for) and 3,000 bytes (waited for until the
    // short wait ends), each followed by less than announced; the client
    // then waits for its echo. Every byte must come back without the
    // client sending more.
    for (announced, sent) in [(0x3000usize, 8000usize), (3000, 2000)] {
        let mut bytes = vec![
            0x16,
            0x03,
            0x01,
            (announced >> 8) as u8,
            announced as u8,
            0x01,
            0x00,
            ((announced - 4) >> 8) as u8,
            (announced - 4) as u8,
        ];
        bytes.extend((0..sent - bytes.len()).map(|i| (i % 251) as u8));
        let mut c = TcpStream::connect(m.addr).await.unwrap();
        c.write_all(&bytes).await.unwrap();
        let mut back = vec![0u8; sent];
        within(T, c.read_exact(&mut back)).await.unwrap();
        assert!(back == bytes, "announced {announced}, sent {sent}: the echo differs");
    }
    let over_limit = m
        .engine
        .snapshot()
        .detect
        .iter()
        .filter(|d| d.direction == Direction::Inbound && d.result.as_str() == "over_limit")
        .map(|d| d.count)
        .sum::<u64>();
    assert_eq!(over_limit, 2);
}

#[tokio::test]
async fn a_meshed_client_is_still_terminated_when_every_detection_slot_is_taken() {
    let (app, seen) = h1_backend("app").await;
    // No server-first grace: the silent meshed client below keeps its slot.
    let limits =
        serde_json::json!({ "limits": { "detectingConnections": 1, "inboundConnections": 2 }, "detect": { "serverFirstGraceMs": 0 } });
    let m = mesh_with(app, limits).await;
    let inbound_slots = |s: &Snapshot| s.limits.detecting[Direction::Inbound.index()].clone();
    // A meshed client silent after its handshake holds the one detection
    // slot; a plain client, silent when served, is forwarded undetected and
    // holds the last connection slot.
    let silent = m.tls().await;
    m.until(|s| inbound_slots(s).used == 1).await;
    let plain = TcpStream::connect(m.addr).await.unwrap();
    m.until(|s| inbound_slots(s).refused == 1).await;
    // The next meshed client waits in the kernel backlog with its
    // ClientHello sent; once the plain client leaves it is served, with
    // every detection slot still taken.
    let tcp = TcpStream::connect(m.addr).await.unwrap();
    // Polled first, the handshake writes its ClientHello before the plain
    // client leaves.
    let handshake = tls::connect(&m.client, tcp, &m.server_id, ClientAlpn::None, T);
    let mut plain = Some(plain);
    let free_a_slot = async {
        m.until(|s| s.limits.connections[Direction::Inbound.index()].refused >= 1).await;
        plain.take();
    };
    let (done, ()) = within(T, async { tokio::join!(handshake, free_a_slot) }).await;
    // Its ClientHello decides at once: mesh TLS is terminated, the client
    // verified, and its request (bytes: there is no slot for detection on
    // the decrypted stream) reaches the app.
    let (mut stream, _) = done.expect("the mesh TLS handshake completes");
    stream.write_all(b"GET /late HTTP/1.1\r\nhost: web.test\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    within(T, stream.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("app GET /late web.test"), "{answer}");
    let snap = m.engine.snapshot();
    assert_eq!((inbound_slots(&snap).used, inbound_slots(&snap).refused), (1, 2), "{:?}", inbound_slots(&snap));
    let tls =
        |c: &str| snap.detect.iter().filter(|d| d.direction == Direction::Inbound && d.result.as_str() == c).map(|d| d.count).sum::<u64>();
    assert_eq!((tls("tls"), tls("over_limit")), (2, 1), "{:?}", snap.detect);
    let client_id = m.client_id.as_str();
    assert!(
        snap.tcp.iter().any(|t| t.direction == Direction::Inbound && t.tls == TlsLabel::True && t.client_id.as_deref() == Some(client_id)),
        "the late client's connection is mesh TLS from {client_id}: {:?}",
        snap.tcp
    );
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(silent);
}

/// A mesh whose inbound listener declares the app's protocol (a Server's
/// `proxyProtocol: HTTP/1`, `HTTP/2` or `gRPC`).
async fn declared(app: SocketAddr, mode: &str) -> Mesh {
    mesh_with(
        app,
        serde_json::json!({ "listeners": [{
            "name": "inbound",
            "bind": "127.0.0.1:0",
            "target": { "kind": "fixed", "addr": app.to_string() },
            "mode": mode,
            "direction": "inbound"
        }] }),
    )
    .await
}

#[tokio::test]
async fn mesh_tls_is_terminated_on_a_port_declared_http1_too() {
    // Linkerd detects TLS first on every inbound port but an opaque one: a
    // meshed peer's HTTP/1 reaches a port declared HTTP/1 inside mesh TLS.
    let (app, _) = h1_backend("app").await;
    let m = declared(app, "http1").await;
    let mut c = m.h1().await;
    let req = Request::get("/meshed").header("host", "web.test").header("l5d-client-id", "admin.forged").body(full("")).unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.headers()["x-l5d-client-id"], m.client_id.as_str(), "the app sees the proven client identity");
    assert_eq!(text(resp).await, "app GET /meshed web.test");
    // Plaintext HTTP/1 on the same port is still served as HTTP/1...
    let mut plain = h1_client(m.addr).await;
    let resp = within(T, plain.send_request(get("/plain"))).await.unwrap();
    assert_eq!(text(resp).await, "app GET /plain web.test");
    // ...and the HTTP/2 preface on a port declared HTTP/1 is still not HTTP
    // to it: forwarded as bytes (the HTTP/1 app answers what it can).
    let snap =
        m.until(|s| s.http.iter().any(|h| h.direction == Direction::Inbound && h.tls == TlsLabel::True && responses(h, 200) == 1)).await;
    let meshed = snap.http.iter().find(|h| h.direction == Direction::Inbound && h.tls == TlsLabel::True).unwrap();
    assert_eq!(meshed.client_id.as_deref(), Some(m.client_id.as_str()));
    let mut raw = TcpStream::connect(m.addr).await.unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    raw.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(T, raw.read_to_end(&mut back)).await.unwrap();
    let snap = m.engine.snapshot();
    let not_http: u64 = snap.detect.iter().filter(|d| d.result.as_str() == "not_http").map(|d| d.count).sum();
    assert_eq!(not_http, 1, "{:?}", snap.detect);
}

#[tokio::test]
async fn mesh_tls_is_terminated_on_a_port_declared_http2_too() {
    let (app, _) = h2_backend("app2").await;
    let m = declared(app, "grpc").await;
    let (mut c, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(m.tls().await)).await.unwrap();
    tokio::spawn(conn);
    let resp = within(T, c.send_request(Request::get("http://web.test/h2").body(full("")).unwrap())).await.unwrap();
    assert_eq!(resp.headers()["x-version"], "HTTP/2.0");
    assert_eq!(resp.headers()["x-l5d-client-id"], m.client_id.as_str());
    let snap = m.until(|s| s.http.iter().any(|h| h.direction == Direction::Inbound && responses(h, 200) == 1)).await;
    assert_eq!(inbound(&snap, "web.test").tls, TlsLabel::True);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meshed_client_hello_to_a_learned_server_first_target_is_still_terminated() {
    // A target learned as server-first skips detection (the client waits
    // for the server's banner), but a meshed peer's ClientHello that has
    // already arrived names this proxy: it is mesh TLS to terminate, not
    // bytes for the app. Whether the ClientHello is in the socket when the
    // connection is served depends on scheduling (it is sent right after
    // the connect, so it usually is): some attempts may still go to the app
    // as bytes, and the test needs some terminated. Without the check, none
    // ever is.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 db ready\r\n").await;
                let mut buf = [0u8; 256];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    // A detect timeout longer than the test's bound: a connection that
    // waited it out would fail the test.
    let m = mesh_with(app, serde_json::json!({ "detect": { "inboundTimeoutMs": 60_000, "serverFirstGraceMs": 100 } })).await;
    // A silent plaintext client teaches the proxy that the app speaks first.
    let mut plain = TcpStream::connect(m.addr).await.unwrap();
    let mut banner = [0u8; 14];
    within(T, plain.read_exact(&mut banner)).await.unwrap();
    assert_eq!(&banner, b"220 db ready\r\n");
    m.until(|s| s.server_first.targets.len() == 1).await;
    let count = |s: &Snapshot, result: &str| -> u64 { s.detect.iter().filter(|d| d.result.as_str() == result).map(|d| d.count).sum() };
    let before = count(&m.engine.snapshot(), "server_first");

    let (mut terminated, mut attempts) = (0, 0);
    while terminated < 3 && attempts < 200 {
        attempts += 1;
        let tcp = TcpStream::connect(m.addr).await.unwrap();
        // The ClientHello goes out at once: a learned target's connection
        // that already holds it is terminated; one served before it arrived
        // is forwarded to the app, whose banner fails the handshake.
        let Ok((mut stream, _)) = tls::connect(&m.client, tcp, &m.server_id, ClientAlpn::None, T).await else { continue };
        // Learned: no detection inside either, so no wait for the client.
        let mut banner = [0u8; 14];
        within(T, stream.read_exact(&mut banner)).await.unwrap();
        assert_eq!(&banner, b"220 db ready\r\n", "the app's banner inside mesh TLS");
        terminated += 1;
    }
    assert!(terminated > 0, "no meshed ClientHello to the learned server-first target was terminated");
    let snap = m.engine.snapshot();
    assert_eq!(count(&snap, "tls"), terminated, "{:?}", snap.detect);
    assert_eq!(
        count(&snap, "server_first") - before + terminated,
        attempts,
        "every attempt was either TLS or skipped as server-first: {:?}",
        snap.detect
    );
}

#[tokio::test]
async fn a_meshed_client_waiting_for_a_server_first_app_is_not_stalled_and_teaches_the_proxy() {
    // Linkerd's inbound waits out the detect timeout (10 s) on mesh TLS to a
    // server-first app on a port not marked opaque. Here a verified client
    // silent past the grace period after its handshake makes the proxy dial
    // the app; the app speaks first, so its banner goes through at once and
    // the target is learned.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"* OK imap ready\r\n").await;
                let mut buf = [0u8; 256];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    let _ = s.write_all(&buf[..n]).await;
                }
            });
        }
    });
    let m = mesh_with(app, serde_json::json!({ "detect": { "inboundTimeoutMs": 60_000, "serverFirstGraceMs": 100 } })).await;
    let mut s = m.tls().await;
    let mut banner = [0u8; 17];
    within(T, s.read_exact(&mut banner)).await.unwrap();
    assert_eq!(&banner, b"* OK imap ready\r\n");
    // Every byte after it still goes through, both ways.
    s.write_all(b"a1 NOOP\r\n").await.unwrap();
    let mut echo = [0u8; 9];
    within(T, s.read_exact(&mut echo)).await.unwrap();
    assert_eq!(&echo, b"a1 NOOP\r\n");
    let snap = m.engine.snapshot();
    assert_eq!(snap.server_first.targets.len(), 1, "learned: {:?}", snap.server_first.targets);
    assert_eq!(snap.server_first.targets[0].addr, app.to_string());
    assert!(snap.http.iter().all(|h| h.direction != Direction::Inbound), "not served as HTTP: {:?}", snap.http);
}

#[tokio::test(start_paused = true)]
async fn the_detection_slot_is_held_one_detect_timeout_in_all_from_accept() {
    // The ClientHello, the handshake and the detection of the decrypted
    // bytes share the port's detect timeout from accept: a client that
    // sends its ClientHello late and then nothing cannot hold its slot for
    // twice the timeout.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    let (accepted_tx, accepted) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let _ = accepted_tx.send(tokio::time::Instant::now());
        let _keep = s;
        std::future::pending::<()>().await;
    });
    let timeout = Duration::from_secs(2);
    let m = mesh_with(
        app,
        serde_json::json!({ "limits": { "detectingConnections": 1 }, "detect": { "inboundTimeoutMs": 2_000, "serverFirstGraceMs": 0 } }),
    )
    .await;
    let inbound_slots = |s: &Snapshot| s.limits.detecting[Direction::Inbound.index()].clone();
    let t0 = tokio::time::Instant::now();
    let tcp = TcpStream::connect(m.addr).await.unwrap();
    m.until(|s| inbound_slots(s).used == 1).await;
    // Three quarters of the timeout pass before the ClientHello.
    tokio::time::sleep(timeout * 3 / 4).await;
    let (_stream, _) = within(T, tls::connect(&m.client, tcp, &m.server_id, ClientAlpn::None, T)).await.unwrap();
    // Then nothing: forwarded as bytes when the timeout from accept ends.
    let forwarded = within(T, accepted).await.unwrap() - t0;
    assert!(forwarded >= timeout, "forwarded after {forwarded:?}, before the detect timeout");
    assert!(forwarded < timeout * 5 / 4, "forwarded after {forwarded:?}: the slot was held past one detect timeout from accept");
    let snap = m.until(|s| inbound_slots(s).used == 0).await;
    assert_eq!(inbound_slots(&snap).refused, 0);
}

#[tokio::test]
async fn an_http2_server_preface_to_a_silent_client_teaches_nothing() {
    // An HTTP/2 server (gRPC) sends its SETTINGS before it reads anything
    // (RFC 9113 §3.4), so the server-first race sees it answer a silent
    // client first. Learned, that would stop detection for every client of
    // the target, meshed ones included: no HTTP metrics, and a forged
    // l5d-client-id reaching the app as sent. Passed on as bytes, it would
    // let this one client do the same by waiting for the grace period.
    let (app, seen) = h2_backend("grpc").await;
    let m = mesh_with(app, serde_json::json!({ "detect": { "inboundTimeoutMs": 60_000, "serverFirstGraceMs": 100 } })).await;
    let silent = TcpStream::connect(m.addr).await.unwrap();
    // The race dials the app, which sends its SETTINGS at once.
    within(T, async {
        while seen.connections.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // The client then speaks HTTP/2: detected, its claimed identity removed.
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(silent)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://web.test/r").header("l5d-client-id", "admin.forged").body(full("")).unwrap();
    let resp = within(T, tx.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-l5d-client-id").is_none(), "a plaintext client's claimed identity reached the app: {:?}", resp.headers());
    let snap = m.engine.snapshot();
    assert!(snap.server_first.targets.is_empty(), "learned from an HTTP/2 preface: {:?}", snap.server_first.targets);
    // A meshed HTTP/2 client is still served as HTTP/2, its identity proven.
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(m.tls().await)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://web.test/r").header("l5d-client-id", "admin.forged").body(full("")).unwrap();
    let resp = within(T, tx.send_request(req)).await.unwrap();
    assert_eq!(resp.headers()["x-l5d-client-id"], m.client_id.as_str());
}

#[tokio::test]
async fn a_meshed_http_client_slower_than_the_grace_is_still_served_as_http() {
    // The grace only starts the race: an app that does not speak first
    // leaves the decision to the client's bytes, however late within the
    // detect timeout, so its request still gets the proven identity (not
    // the one it claims) and nothing is learned.
    let (app, seen) = h1_backend("app").await;
    let m = mesh_with(app, serde_json::json!({ "detect": { "inboundTimeoutMs": 60_000, "serverFirstGraceMs": 50 } })).await;
    let mut s = m.tls().await;
    // Waits until the proxy has dialled the app for the race (the backend
    // counts connections), i.e. well past the grace.
    within(T, async {
        while seen.connections.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    s.write_all(b"GET /late HTTP/1.1\r\nhost: web.test\r\nl5d-client-id: admin.forged\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    within(T, s.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("x-l5d-client-id: {}", m.client_id.as_str())), "{answer}");
    let snap = m.until(|s| s.http.iter().any(|h| h.direction == Direction::Inbound && responses(h, 200) == 1)).await;
    assert!(snap.server_first.targets.is_empty(), "{:?}", snap.server_first.targets);
}

#[tokio::test(start_paused = true)]
async fn a_learned_target_skips_the_wait_inside_mesh_tls_too() {
    // A grace longer than the test's bound: a terminated connection to the
    // learned target gets the banner in time only if detection on its
    // decrypted bytes is skipped, not raced again.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 db ready\r\n").await;
                let mut buf = [0u8; 256];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let grace = T * 3 / 2;
    let cfg =
        serde_json::json!({ "detect": { "inboundTimeoutMs": 10 * T.as_millis() as u64, "serverFirstGraceMs": grace.as_millis() as u64 } });
    let m = mesh_with(app, cfg).await;
    let mut plain = TcpStream::connect(m.addr).await.unwrap();
    let mut banner = [0u8; 14];
    within(grace * 2, plain.read_exact(&mut banner)).await.unwrap();
    m.until(|s| s.server_first.targets.len() == 1).await;
    let mut terminated = 0;
    for _ in 0..50 {
        let tcp = TcpStream::connect(m.addr).await.unwrap();
        let Ok((mut stream, _)) = tls::connect(&m.client, tcp, &m.server_id, ClientAlpn::None, T).await else { continue };
        let mut banner = [0u8; 14];
        within(T, stream.read_exact(&mut banner)).await.unwrap();
        assert_eq!(&banner, b"220 db ready\r\n");
        terminated += 1;
        if terminated == 3 {
            break;
        }
    }
    assert!(terminated > 0, "no ClientHello to the learned target was terminated");
}

/// An HTTP/1 app with a short header timeout: a connection without a byte
/// for 200 ms gets `on_idle` (a 408, or nothing) and is closed, and `idle`
/// hears of it; a request is answered 200 with the `l5d-client-id` it
/// carried in `x-seen-id`.
async fn impatient_h1_app(on_idle: &'static [u8]) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    let (idle_tx, idle) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let idle_tx = idle_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                        Ok(Ok(n @ 1..)) => head.extend_from_slice(&buf[..n]),
                        Err(_) if head.is_empty() => {
                            let _ = s.write_all(on_idle).await;
                            drop(s);
                            let _ = idle_tx.send(());
                            return;
                        }
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let id = text.lines().find_map(|l| l.strip_prefix("l5d-client-id: ")).unwrap_or("-").trim().to_string();
                let answer = format!("HTTP/1.1 200 OK\r\nx-seen-id: {id}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (app, idle)
}

/// Sends a request claiming another identity on `s` and returns the answer.
async fn forged_request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) -> String {
    s.write_all(b"GET /late HTTP/1.1\r\nhost: web.test\r\nl5d-client-id: admin.forged\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    within(T, s.read_to_end(&mut answer)).await.unwrap();
    String::from_utf8_lossy(&answer).to_ascii_lowercase()
}

#[tokio::test]
async fn an_http_apps_408_to_a_silent_client_teaches_nothing() {
    // An HTTP app times an idle connection out with a 408 (RFC 9110
    // §15.5.9): it answered, but it is not a server-first protocol, and
    // learned it would stop detection for every client of the target.
    let (app, mut idle) = impatient_h1_app(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").await;
    let m = mesh_with(app, serde_json::json!({ "detect": { "inboundTimeoutMs": 60_000, "serverFirstGraceMs": 50 } })).await;
    // Plaintext: the race's connection gets the 408 and is closed; the
    // client's late request still decides: HTTP, its claimed identity
    // removed.
    let mut plain = TcpStream::connect(m.addr).await.unwrap();
    within(T, idle.recv()).await.unwrap();
    let answer = forged_request(&mut plain).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("x-seen-id: -"), "a plaintext client's claimed identity reached the app: {answer}");
    // Mesh TLS: the race's connection gets the 408 and is closed; the
    // client's late request still decides, and is served as HTTP.
    let mut s = m.tls().await;
    within(T, idle.recv()).await.unwrap();
    let answer = forged_request(&mut s).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("x-seen-id: {}", m.client_id.as_str())), "the proven identity, not the claimed one: {answer}");
    let snap = m.engine.snapshot();
    assert!(snap.server_first.targets.is_empty(), "learned from a 408: {:?}", snap.server_first.targets);
}

#[tokio::test]
async fn an_app_closing_the_raced_connection_leaves_the_decision_to_the_client() {
    // The app closes the connection the race opened (idle too long for it)
    // before the slow meshed client writes: the client's request still
    // decides, on a new connection.
    let (app, mut idle) = impatient_h1_app(b"").await;
    let m = mesh_with(app, serde_json::json!({ "detect": { "inboundTimeoutMs": 60_000, "serverFirstGraceMs": 50 } })).await;
    let mut s = m.tls().await;
    within(T, idle.recv()).await.unwrap();
    let answer = forged_request(&mut s).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("x-seen-id: {}", m.client_id.as_str())), "{answer}");
    assert!(m.engine.snapshot().server_first.targets.is_empty());
}

#[tokio::test]
async fn a_meshed_request_line_stalled_past_the_detect_timeout_on_a_declared_http1_port_is_still_served_as_http() {
    // Inside mesh TLS too: a request line still pending at the deadline is
    // HTTP/1 on a declared port, so the app sees the proven identity, never
    // one the client wrote (as bytes, the request would skip the rewrite).
    let (app, _) = h1_backend("app").await;
    let m = mesh_with(
        app,
        serde_json::json!({
            "listeners": [{
                "name": "inbound", "bind": "127.0.0.1:0", "target": { "kind": "fixed", "addr": app.to_string() },
                "mode": "http1", "direction": "inbound"
            }],
            "detect": { "outboundTimeoutMs": 400, "inboundTimeoutMs": 400, "serverFirstGraceMs": 100 }
        }),
    )
    .await;
    let mut s = m.tls().await;
    s.write_all(b"GET /stalled").await.unwrap();
    s.flush().await.unwrap();
    // Detection inside mesh TLS has ended once the connection leaves `detecting`.
    within(T, async {
        while m.engine.connections(16).iter().all(|c| c.state == meshpipe_core::ConnState::Detecting) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    s.write_all(b" HTTP/1.1\r\nhost: web.test\r\nl5d-client-id: admin.forged\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    within(T, s.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("x-l5d-client-id: {}", m.client_id.as_str().to_ascii_lowercase())), "the proven identity: {answer}");
    assert!(!answer.contains("admin.forged"), "{answer}");
}
