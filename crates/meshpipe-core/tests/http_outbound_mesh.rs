//! Outbound HTTP to a meshed peer proxy, and what the peer's error headers
//! do: a real engine with a workload identity proxies an application's
//! HTTP/1 requests over mesh TLS (the tunnel ALPN and transport header) to
//! a peer that stands in for the peer's inbound sidecar (a rustls server with
//! the peer's certificate, reading the header, then serving HTTP/1). Linkerd's
//! outbound rules: `l5d-proxy-connection` is the peers' business and never
//! reaches the application; `close` from a peer proven by mesh TLS ends the
//! application's connection after that response (HTTP/1: `connection:
//! close`; HTTP/2: GOAWAY); `l5d-proxy-error` is passed on. A plaintext upstream cannot close the
//! application's connection with that header, and it is stripped there too.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use common::within;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshpipe_core::tls::{self, AlpnRule, TlsState};
use meshpipe_core::transport_header::{self, SessionProtocol};
use meshpipe_core::PolicySpec;
use pki::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(20);

/// What a peer answers: `/close` is a 502 it made up that ends its
/// connection; anything else a 200 naming the port the header asked for.
async fn answer(req: http::Request<hyper::body::Incoming>, port: u16) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut r = Response::new(Full::new(Bytes::from(format!("port {port}"))));
    if req.uri().path() == "/close" {
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r.headers_mut().insert("l5d-proxy-error", "connection to 10.0.0.9:8080 failed".parse().unwrap());
        r.headers_mut().insert("l5d-proxy-connection", "close".parse().unwrap());
    }
    Ok(r)
}

/// A stand-in for a meshed pod's inbound sidecar: the tunnel's TLS (client
/// certificate required, ALPN `transport.l5d.io/v1`), the transport header
/// (HTTP/1 session protocol expected), then HTTP/1.
async fn peer(state: TlsState) -> SocketAddr {
    let state = std::sync::Arc::new(state);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            let state = state.clone();
            tokio::spawn(async move {
                let (mut tls, accepted) = tls::accept(&state, tcp, AlpnRule::Tunnel, T).await.expect("mesh TLS from the engine");
                assert!(accepted.tunnel);
                let header = transport_header::read_header(&mut tls, T).await.expect("a transport header");
                let port = header.port.get();
                let svc = hyper::service::service_fn(move |req| answer(req, port));
                match header.protocol {
                    Some(SessionProtocol::Http1) => {
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
                    }
                    Some(SessionProtocol::Http2) => {
                        let _ =
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), svc).await;
                    }
                    other => panic!("an HTTP session protocol in the header, got {other:?}"),
                }
            });
        }
    });
    addr
}

/// A plaintext upstream that sends `l5d-proxy-connection: close` on every
/// response (only a peer proven by mesh TLS may use it).
async fn plain_upstream(bind: &str) -> SocketAddr {
    let l = TcpListener::bind(bind).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req| async move {
                    let mut r = answer(req, 0).await?;
                    r.headers_mut().insert("l5d-proxy-connection", "close".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    addr
}

/// Sends one HTTP/1.1 request on `s` and reads its response head and body
/// (`content-length` bodies only). Returns (head, body).
async fn exchange(s: &mut TcpStream, path: &str) -> (String, String) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: web.test\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap().to_ascii_lowercase();
            let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap()).unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "EOF inside a body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return (head, String::from_utf8(buf[end + 4..end + 4 + len].to_vec()).unwrap());
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "EOF before a response head: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// True when the proxy closes `s` (EOF with nothing more to read).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(within(T, s.read(&mut b)).await, Ok(0))
}

#[tokio::test]
async fn a_peer_proxys_close_ends_the_applications_connection_and_never_reaches_it() {
    let ca = ca();
    let (api, web) = (linkerd("api", "shop"), linkerd("web", "shop"));
    let tunnel = peer(TlsState::new(&material(&ca, &web), 1).unwrap()).await;
    // 127.0.0.1 is the meshed pod (its app port 8080, never dialled: the
    // tunnel carries the port in the header); 127.0.0.2 runs no sidecar.
    let plain = plain_upstream("127.0.0.2:0").await;
    let (engine, meshed_listener) = common::start(serde_json::json!({
        "listeners": [
            { "name": "to-meshed", "bind": "127.0.0.1:0", "target": { "kind": "fixed", "addr": "127.0.0.1:8080" }, "direction": "outbound" },
            { "name": "to-plain", "bind": "127.0.0.1:0", "target": { "kind": "fixed", "addr": plain.to_string() }, "direction": "outbound" }
        ]
    }))
    .await;
    let plain_listener: SocketAddr = engine.bound()[1].bind.parse().unwrap();
    engine.set_identity(&material(&ca, &api)).unwrap();
    let policy: PolicySpec = serde_json::from_value(serde_json::json!({
        "generation": 2,
        "meshDestinations": [{ "net": "127.0.0.1/32", "identity": web.as_str(), "tunnelPort": tunnel.port(), "source": "test" }]
    }))
    .unwrap();
    engine.set_policy(&policy).unwrap();

    let mut app = TcpStream::connect(meshed_listener).await.unwrap();
    let (head, body) = within(T, exchange(&mut app, "/ok")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "port 8080", "the tunnel named the original port");
    let (head, _) = within(T, exchange(&mut app, "/close")).await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(head.contains("l5d-proxy-error: connection to 10.0.0.9:8080 failed"), "the peer's error is passed on: {head}");
    assert!(!head.contains("l5d-proxy-connection"), "never passed to the application: {head}");
    assert!(head.contains("connection: close"), "the application is told: {head}");
    assert!(closed(&mut app).await, "the application's connection is closed after the response");

    // HTTP/2 from the application: the peer's close becomes a GOAWAY, after
    // the response, and the header is gone.
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(TcpStream::connect(meshed_listener).await.unwrap()))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let get = |path: &str| http::Request::get(format!("http://web.test{path}")).body(http_body_util::Empty::<Bytes>::new()).unwrap();
    let ok = within(T, h2.send_request(get("/ok"))).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let r = within(T, h2.send_request(get("/close"))).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(r.headers().get("l5d-proxy-connection").is_none(), "never passed to the application");
    assert!(r.headers().get("l5d-proxy-error").is_some());
    within(T, driver).await.unwrap().expect("the HTTP/2 connection ends cleanly (GOAWAY), not with an error");

    // A plaintext upstream's header is stripped and closes nothing.
    let mut app = TcpStream::connect(plain_listener).await.unwrap();
    for _ in 0..3 {
        let (head, body) = within(T, exchange(&mut app, "/ok")).await;
        assert!(head.starts_with("http/1.1 200") && body == "port 0", "{head}");
        assert!(!head.contains("l5d-proxy-connection") && !head.contains("connection: close"), "{head}");
    }
}
