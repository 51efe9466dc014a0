//! Clients that abuse the HTTP server end with a bounded, counted outcome
//! while other clients are served: an HTTP/1 client that never finishes a
//! request head (slowloris) is closed once the head timeout passed since
//! the head's first byte (`header_timeout`), while an idle keep-alive
//! connection, a slow request body and an upgraded connection are not timed
//! as heads (the idle timeout closes an idle connection, uncounted), nor is
//! one stray empty line between requests (RFC 9112 §2.2), nor the rest of
//! a request body hyper drains after an error response; and an
//! HTTP/2 client that breaks the protocol or its
//! flood limits (rapid reset, CVE-2023-44487; a flow-control window past
//! 2^31-1, RFC 9113 §6.9.1) gets a GOAWAY and is closed (`protocol_error`).

mod common;

use std::time::Duration;

use common::http::*;
use common::within;
use meshpipe_core::http::HttpErrorReason;
use meshpipe_core::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET http://a/` in HPACK, static table only.
const GET: &[u8] = b"\x82\x86\x84\x41\x01a";

fn errors(engine: &Engine, reason: HttpErrorReason) -> u64 {
    engine.snapshot().http_errors.iter().filter(|e| e.error == reason).map(|e| e.count).sum()
}

async fn until(engine: &Engine, reason: HttpErrorReason, n: u64) {
    let ok = tokio::time::timeout(T, async {
        while errors(engine, reason) != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "{reason:?} counted {} times, not {n}: {:?}", errors(engine, reason), engine.snapshot().http_errors);
}

/// Reads until the server closes; returns what it sent.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match within(T, s.read(&mut buf)).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether `bytes` (frames from the server) hold a GOAWAY with `code`.
fn has_goaway(bytes: &[u8], code: u32) -> bool {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        if bytes[at + 3] == 7 && at + 9 + 8 <= bytes.len() {
            let c = &bytes[at + 9 + 4..at + 9 + 8];
            if u32::from_be_bytes([c[0], c[1], c[2], c[3]]) == code {
                return true;
            }
        }
        at += 9 + len;
    }
    false
}

#[tokio::test(start_paused = true)]
async fn a_request_head_that_never_ends_is_closed_and_counted() {
    let (backend, seen) = h1_backend("b").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut slow = TcpStream::connect(proxy).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    // One header line every 5 s: never a complete head.
    let trickle = async {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if slow.write_all(format!("x-{i}: y\r\n").as_bytes()).await.is_err() {
                break;
            }
        }
    };
    let started = tokio::time::Instant::now();
    let counted = async {
        while errors(&engine, HttpErrorReason::HeaderTimeout) == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = trickle => panic!("still open after 500 s: {:?}", engine.snapshot().http_errors),
        _ = counted => {}
    }
    let after = started.elapsed();
    assert!(after >= Duration::from_secs(30), "closed after {after:?}, before the header read timeout");
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    let mut c = h1_client(proxy).await;
    assert_eq!(text(within(T, c.send_request(get("/ok"))).await.unwrap()).await, "b GET /ok web.test");
}

/// Reads one whole response (a `Content-Length` body) from `s`.
async fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = within(T, s.read(&mut buf)).await.expect("response bytes");
        assert!(n > 0, "closed mid-response: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
                .expect("content-length");
            if got.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_outlives_the_head_timeout() {
    let (backend, seen) = h1_backend("b").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_response(&mut s).await.ends_with("b GET /one a"));
    // Idle for two head timeouts: hyper's own header timer would have
    // closed it at 30 s.
    tokio::time::sleep(Duration::from_secs(60)).await;
    s.write_all(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_response(&mut s).await.ends_with("b GET /two a"));
    let conns = || seen.connections.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(conns(), 1, "the proxy kept its upstream connection too (idle within the pool's 90 s)");
    // Idle for ten head timeouts (Go keeps idle connections 90 s): the
    // client's connection stays; the pool's idle upstream one does not.
    tokio::time::sleep(Duration::from_secs(300)).await;
    s.write_all(b"GET /three HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_response(&mut s).await.ends_with("b GET /three a"));
    assert_eq!(conns(), 2, "the pool closed its upstream connection after 90 s idle");
    assert_eq!(errors(&engine, HttpErrorReason::HeaderTimeout), 0);
}

#[tokio::test(start_paused = true)]
async fn a_later_head_that_trickles_is_closed_and_counted() {
    let (backend, seen) = h1_backend("b").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({ "http": { "headerTimeoutMs": 10_000 } })).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    read_response(&mut s).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    // The next head's clock starts at its first byte, not at the end of
    // the previous response.
    let started = tokio::time::Instant::now();
    s.write_all(b"GET /two HTTP/1.1\r\n").await.unwrap();
    let mut i = 0;
    let closed = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if errors(&engine, HttpErrorReason::HeaderTimeout) > 0 {
            break started.elapsed();
        }
        i += 1;
        assert!(i < 100, "a trickled head is never cut off");
        let _ = s.write_all(format!("x-{i}: y\r\n").as_bytes()).await;
    };
    assert!(closed >= Duration::from_secs(10) && closed <= Duration::from_secs(13), "closed {closed:?} after the head began");
    assert_eq!(read_until_closed(&mut s).await, b"", "closed without a response");
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_request_body_is_not_a_slow_head() {
    let (backend, _) = h1_backend("b").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({ "http": { "headerTimeoutMs": 5_000 } })).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"POST /sha HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
    // One chunk every 4 s for 40 s: the body takes eight head timeouts.
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    for i in 0..10u8 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let chunk = vec![b'a' + i; 100];
        sha2::Digest::update(&mut h, &chunk);
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
        s.write_all(&chunk).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let hex: String = sha2::Digest::finalize(h).iter().map(|b| format!("{b:02x}")).collect();
    assert!(read_response(&mut s).await.ends_with(&format!("{hex} 1000")));
    assert_eq!(errors(&engine, HttpErrorReason::HeaderTimeout), 0);
}

#[tokio::test(start_paused = true)]
async fn an_upgraded_connection_is_not_timed_as_heads() {
    let (backend, _) = h1_backend("b").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({ "http": { "headerTimeoutMs": 5_000 } })).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("b /ws\n") {
        let n = within(T, s.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
    // Partial "messages" with long pauses: bytes, not heads.
    for i in 0..4 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        s.write_all(format!("ping {i} ").as_bytes()).await.unwrap();
        let n = within(T, s.read(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], format!("ping {i} ").as_bytes());
    }
    assert_eq!(errors(&engine, HttpErrorReason::HeaderTimeout), 0);
}

/// Real clock (a 1 s head timeout, generous upper bounds): under tokio's
/// paused clock a head that follows a lone CRLF went unanswered, by a plain
/// hyper server too (cause not established), while the real clock serves it.
#[tokio::test]
async fn an_empty_line_after_a_request_is_not_a_head() {
    let (backend, seen) = h1_backend("b").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({ "http": { "headerTimeoutMs": 1_000 } })).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"POST /sha HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc").await.unwrap();
    assert!(read_response(&mut s).await.ends_with(" 3"));
    // The CRLF some clients send after a POST body (RFC 9112 §2.2: a server
    // SHOULD ignore at least one empty line before a request-line), here
    // arriving on its own once the connection is idle; then three head
    // timeouts of idleness.
    s.write_all(b"\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let quiet = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(quiet.is_err(), "an idle connection with a stray empty line was closed: {quiet:?}");
    s.write_all(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_response(&mut s).await.ends_with("b GET /two a"));
    assert_eq!(seen.connections.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(errors(&engine, HttpErrorReason::HeaderTimeout), 0);

    // More than one empty line is the start of a head, timed as one (a
    // stream of CRLFs is no way around the timer).
    let started = tokio::time::Instant::now();
    let trickle = async {
        loop {
            if s.write_all(b"\r\n").await.is_err() {
                return started.elapsed();
            }
            if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                return started.elapsed();
            }
        }
    };
    let closed = within(T, trickle).await;
    assert!(closed >= Duration::from_secs(1), "closed {closed:?} after the empty lines began, before the head timeout");
    // Counted, though hyper's buffer held no request for it to report.
    until(&engine, HttpErrorReason::HeaderTimeout, 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_keep_alive_connection_after_an_error_response_is_idle_not_a_head() {
    // Nothing listens here: every request gets the proxy's 502, and its
    // body is dropped unread, so hyper drains the rest of it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (engine, proxy) = common::forward(dead, None, serde_json::json!({ "http": { "headerTimeoutMs": 10_000 } })).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    // A body larger than what detection and hyper's first read take, so its
    // rest is read after the exchange ended.
    let mut req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n".to_vec();
    req.extend(vec![b'x'; 5000]);
    s.write_all(&req).await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 502"));
    let mut buf = [0u8; 1024];
    let quiet = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await;
    assert!(quiet.is_err(), "an idle connection was closed after an error response: {quiet:?}");
    s.write_all(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 502"), "the connection was reused");
    assert_eq!(errors(&engine, HttpErrorReason::HeaderTimeout), 0);
    // A head that trickles after such an exchange is still timed.
    s.write_all(b"GET /three HTTP/1.1\r\n").await.unwrap();
    let started = tokio::time::Instant::now();
    for i in 0..100 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if errors(&engine, HttpErrorReason::HeaderTimeout) > 0 {
            break;
        }
        assert!(i < 99, "a trickled head is never cut off");
        let _ = s.write_all(format!("x-{i}: y\r\n").as_bytes()).await;
    }
    let closed = started.elapsed();
    assert!(closed >= Duration::from_secs(10) && closed <= Duration::from_secs(13), "closed {closed:?} after the head began");
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed_by_the_idle_timeout() {
    let (backend, _) = h1_backend("b").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({ "idleTimeoutMs": 120_000 })).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    read_response(&mut s).await;
    let idle = tokio::time::Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(600), s.read_to_end(&mut rest)).await.expect("closed by the idle timeout");
    let after = idle.elapsed();
    assert!(rest.is_empty());
    assert!(after >= Duration::from_secs(120) && after <= Duration::from_secs(151), "closed after {after:?}");
    assert_eq!(errors(&engine, HttpErrorReason::HeaderTimeout), 0, "an idle connection is not an abusive one");
}

#[tokio::test]
async fn http2_rapid_reset_is_cut_off_and_counted() {
    let (backend, _) = h2_backend("b").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut flood = [PREFACE, &frame(4, 0, 0, &[])].concat();
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        flood.extend(frame(1, 0x5, id, GET));
        flood.extend(frame(3, 0, id, &8u32.to_be_bytes()));
    }
    // The server may close before it read everything: a failed write is fine.
    let _ = s.write_all(&flood).await;
    let got = read_until_closed(&mut s).await;
    assert!(has_goaway(&got, 0xb), "GOAWAY ENHANCE_YOUR_CALM expected");
    until(&engine, HttpErrorReason::ProtocolError, 1).await;
    let mut c = h2_client(proxy).await;
    let resp = within(T, c.send_request(http::Request::get("http://b.test/ok").body(full("")).unwrap())).await.unwrap();
    assert_eq!(text(resp).await, "b GET http://b.test/ok ");
}

#[tokio::test]
async fn http2_window_overflow_is_a_counted_protocol_error() {
    let (backend, _) = h2_backend("b").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let update = frame(8, 0, 0, &0x7fff_ffffu32.to_be_bytes());
    s.write_all(&[PREFACE, &frame(4, 0, 0, &[]), &update, &update].concat()).await.unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(has_goaway(&got, 0x3), "GOAWAY FLOW_CONTROL_ERROR expected");
    until(&engine, HttpErrorReason::ProtocolError, 1).await;
    // A client that just closes is not a protocol error.
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(&[PREFACE, &frame(4, 0, 0, &[])].concat()).await.unwrap();
    drop(c);
    let mut ok = h2_client(proxy).await;
    let resp = within(T, ok.send_request(http::Request::get("http://b.test/ok").body(full("")).unwrap())).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(errors(&engine, HttpErrorReason::ProtocolError), 1);
}
