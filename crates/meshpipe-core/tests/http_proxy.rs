//! HTTP-aware proxying through a real engine: HTTP/1 and HTTP/2 requests
//! proxied one by one over pooled upstream connections, headers carried
//! faithfully (hop-by-hop ones dropped), streaming bodies, errors as HTTP
//! responses, and the metrics checked against the requests actually made.

mod common;

use std::time::Duration;

use common::http::*;
use common::within;
use http::{Request, StatusCode};
use meshpipe_core::vocab::Direction;

const T: Duration = Duration::from_secs(20);

fn series<'a>(snap: &'a meshpipe_core::Snapshot, authority: &str) -> &'a meshpipe_core::metrics::HttpSnapshot {
    snap.http
        .iter()
        .find(|s| s.authority.as_deref() == Some(authority))
        .unwrap_or_else(|| panic!("no series for {authority}: {:?}", snap.http))
}

fn responses(s: &meshpipe_core::metrics::HttpSnapshot, status: u16) -> u64 {
    s.responses.iter().filter(|r| r.status_code == Some(status)).map(|r| r.count).sum()
}

/// Waits until `f(snapshot)` holds: responses are counted when their body
/// ends, which the client may see a moment before the proxy records it.
async fn until(engine: &meshpipe_core::Engine, f: impl Fn(&meshpipe_core::Snapshot) -> bool) -> meshpipe_core::Snapshot {
    within(T, async {
        loop {
            let s = engine.snapshot();
            if f(&s) {
                return s;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// The upstream's `Keep-Alive: timeout=N` bounds how long the pool reuses
/// its connection (N - 1 s, or N / 2 below 2 s): a request sent as the
/// upstream closes an idle connection would fail after it was written.
#[tokio::test]
async fn an_upstream_keep_alive_timeout_bounds_reuse() {
    let (backend, seen) = h1_backend("b").await;
    let (_engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h1_client(proxy).await;
    let conns = || seen.connections.load(std::sync::atomic::Ordering::Relaxed);
    let mut get_with = async |keep_alive: &str| {
        let req = Request::get("/ka").header("host", "web.test").header("x-keep-alive", keep_alive).body(full("")).unwrap();
        let resp = within(T, c.send_request(req)).await.unwrap();
        assert!(resp.headers().get("keep-alive").is_none(), "hop-by-hop: the upstream's Keep-Alive stays on its hop");
        assert_eq!(text(resp).await, "b GET /ka web.test");
    };
    // Real time, not paused: the engine shares this runtime, and a paused
    // clock auto-advances to the next timer whenever a loopback segment is
    // late (a loaded machine), which can jump the pool's clock past a
    // window in the middle of a step. The windows are wide instead (the
    // halfway rule below 2 s is `pool.rs`'s unit test).
    // timeout=3: reused for 2 s.
    get_with("3").await;
    get_with("3").await;
    assert_eq!(conns(), 1, "reused at once");
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    get_with("10").await;
    assert_eq!(conns(), 2, "not reused past the upstream's idle timeout less the margin");
    // timeout=10: reused after a pause well within its 9 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    get_with("0").await;
    assert_eq!(conns(), 2, "reused within the upstream's idle timeout");
    // timeout=0: not kept at all.
    get_with("0").await;
    assert_eq!(conns(), 3, "an upstream that keeps nothing idle is not pooled");
}

#[tokio::test]
async fn http1_requests_are_proxied_one_by_one_over_a_pooled_connection() {
    let (backend, seen) = h1_backend("b1").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h1_client(proxy).await;
    for i in 0..20 {
        let req = Request::get(format!("/item/{i}"))
            .header("host", "Web.Test:8080")
            .header("x-echo", format!("v{i}"))
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            .body(full(""))
            .unwrap();
        let resp = within(T, c.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-echo"], format!("v{i}").as_str());
        assert_eq!(resp.headers()["x-version"], "HTTP/1.1");
        assert_eq!(text(resp).await, format!("b1 GET /item/{i} Web.Test:8080"));
    }
    let snap = until(&engine, |s| s.http.iter().any(|h| h.authority.as_deref() == Some("web.test:8080") && responses(h, 200) == 20)).await;
    let s = series(&snap, "web.test:8080");
    assert_eq!(s.requests, 20);
    assert_eq!(s.latency_ms.count, 20);
    assert_eq!(s.direction, Direction::Outbound);
    assert_eq!(s.target_addr.as_deref(), Some(backend.to_string().as_str()));
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 20);
    assert_eq!(seen.connections.load(std::sync::atomic::Ordering::Relaxed), 1, "one upstream connection, reused");
    let tcp = snap.tcp.iter().find(|t| t.target_addr.as_deref() == Some(backend.to_string().as_str())).unwrap();
    assert_eq!((tcp.src_open_total, tcp.dst_open_total), (1, 1));
    assert!(tcp.bytes_client_to_server > 0 && tcp.bytes_server_to_client > 0);
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_reach_the_backend() {
    // A raw backend that returns the request head it received.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        let body = String::from_utf8_lossy(&head).to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: keep-alive, x-resp-hop\r\nx-resp-hop: 1\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await.unwrap();
        let _ = s.read(&mut buf).await;
    });
    let (_engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h1_client(proxy).await;
    let req = Request::get("/h")
        .header("host", "a.test")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic eDp5")
        .header("x-end", "kept")
        .body(full(""))
        .unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert!(resp.headers().get("x-resp-hop").is_none(), "response hop-by-hop fields are dropped too");
    let head = text(resp).await.to_ascii_lowercase();
    assert!(head.starts_with("get /h http/1.1\r\n"), "{head}");
    for gone in ["x-hop:", "keep-alive:"] {
        assert!(!head.contains(gone), "{gone} reached the backend: {head}");
    }
    for kept in ["x-end: kept", "te: trailers", "proxy-authorization: basic", "host: a.test"] {
        assert!(head.contains(kept), "{kept} missing: {head}");
    }
}

#[tokio::test]
async fn http2_streams_are_multiplexed_and_measured() {
    let (backend, seen) = h2_backend("b2").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let c = h2_client(proxy).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("http://grpc.test/s/{i}")).body(full("")).unwrap();
            let resp = c.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-version"], "HTTP/2.0");
            text(resp).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(within(T, t).await.unwrap(), format!("b2 GET http://grpc.test/s/{i} "));
    }
    let snap = until(&engine, |s| s.http.iter().any(|h| h.authority.as_deref() == Some("grpc.test") && responses(h, 200) == 50)).await;
    assert_eq!(series(&snap, "grpc.test").requests, 50);
    assert_eq!(seen.connections.load(std::sync::atomic::Ordering::Relaxed), 1, "one multiplexed upstream connection");
}

#[tokio::test]
async fn grpc_status_is_read_from_trailers() {
    let (backend, _) = h2_backend("g").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h2_client(proxy).await;
    for code in [0u16, 13, 5] {
        let req =
            Request::post(format!("http://svc.grpc/grpc/{code}")).header("content-type", "application/grpc").body(full("msg")).unwrap();
        let resp = within(T, c.send_request(req)).await.unwrap();
        let (_, n, trailers) = body_sha(resp.into_body()).await;
        assert_eq!(n, 3);
        assert_eq!(trailers.unwrap()["grpc-status"], code.to_string().as_str(), "trailers reach the client");
    }
    let snap = until(&engine, |s| s.http.iter().any(|h| h.responses.iter().map(|r| r.count).sum::<u64>() == 3)).await;
    let s = series(&snap, "svc.grpc");
    let by = |g: u8| s.responses.iter().find(|r| r.grpc_status == Some(g)).unwrap_or_else(|| panic!("grpc {g}: {:?}", s.responses));
    assert_eq!(by(0).classification, meshpipe_core::metrics::Classification::Success);
    assert_eq!(by(13).classification, meshpipe_core::metrics::Classification::Failure, "INTERNAL is a failure");
    assert_eq!(by(5).classification, meshpipe_core::metrics::Classification::Success, "NOT_FOUND is not");
}

#[tokio::test]
async fn streaming_bodies_both_ways_are_carried_whole() {
    let (backend, _) = h1_backend("s").await;
    let (_engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h1_client(proxy).await;
    let n: u64 = 48 << 20;
    // Upload (chunked: no content-length) of 48 MiB.
    let req = Request::post("/sha").header("host", "up.test").body(http_body_util::BodyExt::boxed(Pattern { left: n, offset: 0 })).unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    let hex: String = pattern_sha(n).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(text(resp).await, format!("{hex} {n}"));
    // Download of 48 MiB.
    let resp = within(T, c.send_request(get(&format!("/size/{n}")))).await.unwrap();
    let (sha, len, _) = within(T, body_sha(resp.into_body())).await;
    assert_eq!((sha, len), (pattern_sha(n), n));
}

#[tokio::test]
async fn unreachable_upstreams_get_502_and_grpc_gets_unavailable() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (engine, proxy) = common::forward(dead, Some("http1"), serde_json::json!({})).await;
    let mut c = h1_client(proxy).await;
    let resp = within(T, c.send_request(get("/x"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(resp.headers().get("l5d-proxy-error").is_none(), "only toward meshed peers");
    let body = text(resp).await;
    assert!(body.to_lowercase().contains("connection refused"), "{body}");
    // The connection survives the error.
    let req = Request::post("/g").header("host", "web.test").header("content-type", "application/grpc").body(full("")).unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "14");
    let snap = engine.snapshot();
    let s = series(&snap, "web.test");
    assert_eq!(s.requests, 2);
    let bad = s.responses.iter().find(|r| r.status_code == Some(502)).unwrap();
    assert_eq!((bad.count, bad.error), (1, Some(meshpipe_core::http::HttpErrorReason::BadGateway)));
    assert!(s.responses.iter().any(|r| r.grpc_status == Some(14) && r.classification == meshpipe_core::metrics::Classification::Failure));
    let errors =
        snap.http_errors.iter().find(|e| e.direction == Direction::Outbound && e.error == meshpipe_core::http::HttpErrorReason::BadGateway);
    assert_eq!(errors.unwrap().count, 2);
}

#[tokio::test]
async fn response_timeout_answers_504() {
    let (backend, _) = h1_backend("slow").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({"http": {"responseTimeoutMs": 200}})).await;
    let mut c = h1_client(proxy).await;
    let resp = within(T, c.send_request(get("/slow/5000"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let resp = within(T, c.send_request(get("/fast"))).await.unwrap();
    assert_eq!(resp.status(), 200, "a fast request on the same connection is unaffected");
    text(resp).await;
    let snap = engine.snapshot();
    assert!(snap.http_errors.iter().any(|e| e.error == meshpipe_core::http::HttpErrorReason::GatewayTimeout && e.count == 1));
}

#[tokio::test]
async fn oversized_headers_get_431_and_large_ones_pass() {
    let (backend, _) = h1_backend("big").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({"http": {"maxHeaderBytes": 32768}})).await;
    let mut c = h1_client(proxy).await;
    let req = Request::get("/ok").header("host", "h.test").header("x-big", "a".repeat(24 * 1024)).body(full("")).unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200, "24 KiB of headers fit in a 32 KiB limit");
    text(resp).await;
    let mut c = h1_client(proxy).await;
    let req = Request::get("/no").header("host", "h.test").header("x-big", "a".repeat(40 * 1024)).body(full("")).unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let snap =
        until(&engine, |s| s.http_errors.iter().any(|e| e.error == meshpipe_core::http::HttpErrorReason::HeadersTooLarge && e.count == 1))
            .await;
    assert_eq!(series(&snap, "h.test").requests, 1, "the refused request never reached the proxy logic");
}

#[tokio::test]
async fn malformed_requests_get_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (backend, seen) = h1_backend("m").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nbad header line\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    within(T, s.read_to_end(&mut out)).await.unwrap();
    assert!(out.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&out));
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    let snap = engine.snapshot();
    assert!(snap.http_errors.iter().any(|e| e.error == meshpipe_core::http::HttpErrorReason::BadRequest && e.count == 1));
}

#[tokio::test]
async fn a_malformed_request_body_is_the_clients_400_not_an_upstream_502() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (backend, _) = h1_backend("m").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    // A chunk size past u64 (RFC 9112 §7.1): the head is fine, the body is not.
    for body in [&b"FFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n"[..], b"5;a=b\nhello\r\n0\r\n\r\n", b"zz\r\n"] {
        let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
        s.write_all(b"POST /sha HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
        s.write_all(body).await.unwrap();
        let mut out = Vec::new();
        within(T, s.read_to_end(&mut out)).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 400"), "{:?}: {}", String::from_utf8_lossy(body), String::from_utf8_lossy(&out));
    }
    // A body cut short (the client half-closed after 10 of 100 bytes) is the
    // client's too, counted as a cancel.
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"POST /sha HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    within(T, s.read_to_end(&mut out)).await.unwrap();
    assert!(out.starts_with(b"HTTP/1.1 400"), "cut short: {}", String::from_utf8_lossy(&out));
    let snap = engine.snapshot();
    let count = |r| snap.http_errors.iter().filter(|e| e.error == r).map(|e| e.count).sum::<u64>();
    assert_eq!(count(meshpipe_core::http::HttpErrorReason::BadRequest), 3, "{:?}", snap.http_errors);
    assert_eq!(count(meshpipe_core::http::HttpErrorReason::ClientCancel), 1, "{:?}", snap.http_errors);
    assert_eq!(count(meshpipe_core::http::HttpErrorReason::BadGateway), 0, "the upstream is not blamed: {:?}", snap.http_errors);
}

#[tokio::test]
async fn declared_http_port_with_a_non_http_client_is_forwarded_and_counted() {
    let echo = common::echo_server().await;
    let (engine, proxy) = common::forward(echo, Some("http1"), serde_json::json!({})).await;
    let data = common::random(100_000, 7);
    let got = within(T, common::roundtrip(proxy, data.clone())).await;
    assert_eq!(got, common::sha(&data), "every byte forwarded as TCP");
    let snap = engine.snapshot();
    assert!(snap.http_errors.iter().any(|e| e.error == meshpipe_core::http::HttpErrorReason::NotHttp && e.count == 1));
}

#[tokio::test]
async fn http_disabled_forwards_http_as_tcp() {
    let (backend, seen) = h1_backend("tcp").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({"http": {"enabled": false}})).await;
    let mut c = h1_client(proxy).await;
    for _ in 0..3 {
        let resp = within(T, c.send_request(get("/t"))).await.unwrap();
        text(resp).await;
    }
    assert!(engine.snapshot().http.is_empty());
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 3);
}

#[tokio::test]
async fn the_drain_ends_idle_http_connections_gracefully_before_its_deadline() {
    let ((b1, _), (b2, _)) = (h1_backend("d1").await, h2_backend("d2").await);
    let (engine, proxy1) = common::start(serde_json::json!({
        "listeners": [
            { "name": "h1", "bind": "127.0.0.1:0", "target": { "kind": "fixed", "addr": b1.to_string() }, "direction": "outbound" },
            { "name": "h2", "bind": "127.0.0.1:0", "target": { "kind": "fixed", "addr": b2.to_string() }, "direction": "outbound" }
        ]
    }))
    .await;
    let proxy2: std::net::SocketAddr = engine.bound()[1].bind.parse().unwrap();
    // An HTTP/1 keep-alive connection and an HTTP/2 one, both idle after a request.
    let mut c1 = h1_client(proxy1).await;
    assert_eq!(within(T, c1.send_request(get("/one"))).await.unwrap().status(), StatusCode::OK);
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(proxy2).await.unwrap());
    let (mut c2, conn2) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    let conn2 = tokio::spawn(conn2);
    let r = within(T, c2.send_request(Request::get("http://web.test/two").body(full("")).unwrap())).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A long deadline: both connections must be shut down by the proxy (a
    // closed HTTP/1 connection, a GOAWAY on HTTP/2), not cut at the deadline.
    let summary = within(T, engine.close(Duration::from_secs(15))).await;
    assert_eq!(summary.cut, 0, "{summary:?}");
    within(T, conn2).await.unwrap().expect("the HTTP/2 connection ended cleanly (GOAWAY), not with an error");
    within(T, async {
        while !c1.is_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_host_header_is_made_unambiguous_for_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (backend, seen) = h1_backend("h").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let ask = |request: &'static [u8]| async move {
        let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        within(T, s.read_to_end(&mut out)).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    // RFC 9112 §3.2: one Host, required in HTTP/1.1; refused otherwise.
    let two = ask(b"GET /two HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n").await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    let none = ask(b"GET /none HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 0, "neither reached the backend");
    // RFC 9112 §3.2.2: absolute-form wins over Host, and the proxy says so.
    let abs = ask(b"GET http://api.test/x HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n").await;
    assert!(abs.ends_with("h GET http://api.test/x api.test"), "{abs}");
    // An HTTP/1.0 request needs no Host, but the HTTP/1.1 one sent upstream does.
    let old = ask(b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(old.ends_with(&format!("h GET /old {backend}")), "{old}");
    let snap = engine.snapshot();
    assert!(
        snap.http_errors.iter().any(|e| e.error == meshpipe_core::http::HttpErrorReason::BadRequest && e.count == 2),
        "{:?}",
        snap.http_errors
    );
}

#[tokio::test]
async fn an_http2_host_that_disagrees_with_the_authority_is_a_400() {
    let (backend, seen) = h2_backend("h2").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h2_client(proxy).await;
    // RFC 9113 §8.3.1: the proxy labels and routes by :authority; the app might read Host.
    let forged = Request::get("http://api.test/x").header("host", "admin.test").body(full("")).unwrap();
    let resp = within(T, c.send_request(forged)).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 0, "never reached the backend");
    // The same host in another case, or no Host at all, is served.
    let same = Request::get("http://api.test/y").header("host", "API.test").body(full("")).unwrap();
    assert_eq!(within(T, c.send_request(same)).await.unwrap().status(), 200);
    let plain = Request::get("http://api.test/z").body(full("")).unwrap();
    assert_eq!(within(T, c.send_request(plain)).await.unwrap().status(), 200);
    let snap = engine.snapshot();
    assert!(
        snap.http_errors.iter().any(|e| e.error == meshpipe_core::http::HttpErrorReason::BadRequest && e.count == 1),
        "{:?}",
        snap.http_errors
    );
}

#[tokio::test]
async fn an_upload_stalled_after_an_early_response_does_not_hold_up_another_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that answers every head at once (before any body) and
    // keeps the connection open, reading on.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                let mut answered = 0;
                loop {
                    let heads = seen.windows(4).filter(|w| w == b"\r\n\r\n").count();
                    while answered < heads {
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nearly\n").await.is_err() {
                            return;
                        }
                        answered += 1;
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    // A announces a large body, sends 10 bytes of it and stalls, after the response.
    let mut a = tokio::net::TcpStream::connect(proxy).await.unwrap();
    a.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n0123456789").await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"early\n") {
        let mut buf = [0u8; 256];
        let n = within(T, a.read(&mut buf)).await.unwrap();
        assert!(n > 0, "A's response");
        got.extend_from_slice(&buf[..n]);
    }
    // B, another client, must not wait for A's upload to finish.
    let mut b = h1_client(proxy).await;
    let resp = tokio::time::timeout(T, b.send_request(get("/b"))).await.expect("B waited behind A's stalled upload").unwrap();
    assert_eq!(text(resp).await, "early\n");
    drop(a);
}

#[tokio::test]
async fn an_inbound_request_cannot_claim_a_client_identity() {
    // l5d-client-id tells the application who the meshed client is (the
    // identity mesh TLS proved); from a client without mesh TLS it is a
    // forgery and never reaches the application (Linkerd strips it too).
    let (backend, _) = h1_backend("in").await;
    let cfg = serde_json::json!({ "listeners": [{ "name": "in", "bind": "127.0.0.1:0",
        "target": { "kind": "fixed", "addr": backend.to_string() }, "direction": "inbound" }] });
    let (_engine, proxy) = common::start(cfg).await;
    let mut c = h1_client(proxy).await;
    let req = Request::get("/x")
        .header("host", "web.test")
        .header("l5d-client-id", "admin.prod.serviceaccount.identity.linkerd.cluster.local")
        .body(full(""))
        .unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-l5d-client-id").is_none(), "the forged identity reached the app: {:?}", resp.headers());
}

#[tokio::test]
async fn an_upstreams_content_length_beside_a_transfer_encoding_is_not_passed_on() {
    // RFC 9112 §6.3: the chunked coding frames this body (20 bytes); the
    // stale Content-Length must not reach the client, which would cut the
    // body at 3 bytes.
    let (upstream, _) =
        raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n14\r\nAAAAAAAAAAAAAAAAAAAA\r\n0\r\n\r\n")
            .await;
    let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let got = raw_exchange(proxy, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(!got.to_ascii_lowercase().contains("content-length: 3"), "{got}");
    assert!(got.contains(&"A".repeat(20)), "the whole body: {got}");
}

#[tokio::test]
async fn an_upstream_transfer_coding_other_than_chunked_is_a_502() {
    // The request accepted no transfer coding (RFC 9112 §6.1): gzip-coded
    // bytes passed on as content would corrupt it silently.
    let (upstream, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc").await;
    let (engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let got = raw_exchange(proxy, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 502"), "{got}");
    assert!(!got.contains("abc"), "{got}");
    let snap = engine.snapshot();
    assert!(
        snap.http_errors.iter().any(|e| e.error == meshpipe_core::http::HttpErrorReason::BadGateway && e.count == 1),
        "{:?}",
        snap.http_errors
    );
}

#[tokio::test]
async fn an_http10_upgrade_request_is_proxied_as_a_plain_request() {
    // RFC 9110 §7.8: Upgrade in an HTTP/1.0 request is ignored, so the
    // upstream gets neither Upgrade nor Connection: upgrade.
    let (upstream, heads) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let got = raw_exchange(proxy, b"GET /ws HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.0 200") && got.ends_with("ok"), "{got}");
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 1);
    let head = String::from_utf8_lossy(&heads[0]).to_ascii_lowercase();
    assert!(head.starts_with("get /ws http/1.1\r\n") && !head.contains("upgrade"), "{head}");
}

#[tokio::test]
async fn an_inbound_request_cannot_claim_a_client_identity_in_its_trailers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that keeps everything up to the end of a chunked body's
    // trailer section, then answers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the trailers: {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            if text.find("\r\n0\r\n").is_some_and(|at| text[at..].ends_with("\r\n\r\n")) {
                break;
            }
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await.unwrap();
        String::from_utf8_lossy(&seen).to_ascii_lowercase()
    });
    let cfg = serde_json::json!({ "listeners": [{ "name": "in", "bind": "127.0.0.1:0",
        "target": { "kind": "fixed", "addr": backend.to_string() }, "direction": "inbound" }] });
    let (_engine, proxy) = common::start(cfg).await;
    let got = raw_exchange(
        proxy,
        b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: l5d-client-id, x-other\r\nConnection: close\r\n\r\n\
          3\r\nabc\r\n0\r\nl5d-client-id: admin.prod.serviceaccount.identity.linkerd.cluster.local\r\nx-other: kept\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let seen = within(T, upstream).await.unwrap();
    assert!(seen.contains("x-other: kept"), "the other trailer is carried: {seen}");
    assert!(!seen.contains("admin.prod"), "the forged identity reached the app in a trailer: {seen}");
}

#[tokio::test]
async fn request_lines_the_http_parser_takes_are_served_as_http_so_a_forged_identity_is_removed() {
    // Detection accepts at least what hyper's parser accepts (several empty
    // lines first, a bare LF, obs-text in the target): such requests are
    // served by the HTTP layer, which removes a plaintext client's
    // l5d-client-id, instead of being forwarded as bytes with it.
    let (upstream, heads) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let cfg = serde_json::json!({ "listeners": [{ "name": "in", "bind": "127.0.0.1:0",
        "target": { "kind": "fixed", "addr": upstream.to_string() }, "direction": "inbound" }] });
    let (engine, proxy) = common::start(cfg).await;
    let forged = "l5d-client-id: admin.prod.serviceaccount.identity.linkerd.cluster.local";
    let requests = [
        format!("\r\n\r\nGET /a HTTP/1.1\r\nHost: a\r\n{forged}\r\nConnection: close\r\n\r\n"),
        format!("GET /b HTTP/1.1\nHost: a\r\n{forged}\r\nConnection: close\r\n\r\n"),
        format!("GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n{forged}\r\nConnection: close\r\n\r\n"),
    ];
    for r in &requests {
        let got = raw_exchange(proxy, r.as_bytes()).await;
        assert!(got.starts_with("HTTP/1.1 200") || got.starts_with("HTTP/1.1 400"), "{r:?}: {got}");
    }
    for head in heads.lock().unwrap().iter() {
        let head = String::from_utf8_lossy(head);
        assert!(!head.contains("admin.prod"), "a forged identity reached the app: {head}");
    }
    let snap = engine.snapshot();
    let http1: u64 = snap.detect.iter().filter(|d| d.result.as_str() == "http/1").map(|d| d.count).sum();
    assert_eq!(http1, 3, "{:?}", snap.detect);
}

#[tokio::test]
async fn a_transfer_coding_on_a_response_without_content_is_not_an_error() {
    // RFC 9112 §6.1: the answer to HEAD, or a 304, may name the coding a GET
    // would get; it has no content to decode.
    for (method, head) in [
        ("HEAD", &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"[..]),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"),
    ] {
        let (upstream, _) = raw_upstream(head).await;
        let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
        let got = raw_exchange(proxy, format!("{method} / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes()).await;
        let want = if method == "HEAD" { "HTTP/1.1 200" } else { "HTTP/1.1 304" };
        assert!(got.starts_with(want), "{method}: {got}");
    }
}
