//! Every detection outcome on a live connection, each proven lossless with
//! SHA-256 both ways: HTTP/1, HTTP/2, TLS, opaque port, not HTTP, read
//! timeout, server first (learned and cached), client closed, oversized input
//! and a trickling client.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use meshpipe_core::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Detection outcomes on the TCP path: HTTP is forwarded as bytes here (the
/// peers are echo servers, not HTTP servers; the HTTP layer has its own
/// tests in http_proxy.rs and http_tunnel.rs).
fn detect_cfg(timeout_ms: u64, grace_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "detect": { "outboundTimeoutMs": timeout_ms, "inboundTimeoutMs": timeout_ms, "serverFirstGraceMs": grace_ms },
        "http": { "enabled": false }
    })
}

fn results(engine: &Engine) -> Vec<(String, u64)> {
    engine.snapshot().detect.iter().map(|d| (d.result.as_str().to_string(), d.count)).collect()
}

fn has(engine: &Engine, result: &str) -> bool {
    results(engine).iter().any(|(r, n)| r == result && *n > 0)
}

async fn lossless(addr: SocketAddr, head: &[u8], body_len: usize, seed: u64) {
    let mut data = head.to_vec();
    data.extend_from_slice(&random(body_len, seed));
    let expect = sha(&data);
    assert_eq!(within(Duration::from_secs(20), roundtrip(addr, data)).await, expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_http2_tls_and_random_are_classified_and_lossless() {
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, None, detect_cfg(5000, 100)).await;
    lossless(addr, b"GET /index.html HTTP/1.1\r\nHost: example\r\n\r\n", 1 << 20, 1).await;
    assert!(has(&engine, "http/1"), "{:?}", results(&engine));
    lossless(addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 1 << 20, 2).await;
    assert!(has(&engine, "http/2"), "{:?}", results(&engine));
    lossless(addr, &client_hello("db.example.internal"), 1 << 20, 3).await;
    assert!(has(&engine, "tls"), "{:?}", results(&engine));
    let snap = engine.snapshot();
    assert!(snap.tcp.iter().any(|s| s.sni.as_deref() == Some("db.example.internal") && s.tls == meshpipe_core::vocab::TlsLabel::Opaque));
    lossless(addr, &[0x00, 0xff, 0x13, 0x37], 1 << 20, 4).await;
    assert!(has(&engine, "not_http"), "{:?}", results(&engine));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_mode_skips_detection() {
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, Some("opaque"), detect_cfg(5000, 100)).await;
    lossless(addr, b"GET / HTTP/1.1\r\n\r\n", 1 << 20, 5).await;
    assert_eq!(results(&engine), vec![("opaque_port".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_http2_with_other_bytes_is_forwarded_as_tcp() {
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, Some("http2"), detect_cfg(5000, 100)).await;
    lossless(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 64 << 10, 6).await;
    assert_eq!(results(&engine), vec![("not_http".to_string(), 1)], "validated, not trusted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_request_then_silence_times_out_without_loss() {
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, None, detect_cfg(300, 50)).await;
    // 15 bytes: too long to be a stalled short greeting, so it may be a
    // long request line arriving slowly; only the timeout ends detection.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /very-long-").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.write_all(b"path HTTP/1.1\r\n\r\n").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(Duration::from_secs(5), c.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"GET /very-long-path HTTP/1.1\r\n\r\n");
    assert_eq!(results(&engine), vec![("read_timeout".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_first_is_answered_within_grace_and_learned() {
    let server = banner_server(b"220 smtp.example ESMTP ready\r\n").await;
    let (engine, addr) = forward(server, None, detect_cfg(10_000, 100)).await;
    for round in 0..3 {
        let started = Instant::now();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut banner = [0u8; 30];
        within(Duration::from_secs(5), c.read_exact(&mut banner)).await.unwrap();
        let waited = started.elapsed();
        assert_eq!(&banner, b"220 smtp.example ESMTP ready\r\n");
        if round == 0 {
            assert!(waited >= Duration::from_millis(90), "first connection waits the grace period: {waited:?}");
        }
        assert!(waited < Duration::from_secs(2), "never the 10 s detect timeout: {waited:?}");
        // The rest of the session is still proxied both ways.
        c.write_all(b"EHLO me\r\n").await.unwrap();
        let mut echo = [0u8; 9];
        c.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"EHLO me\r\n");
    }
    let r = results(&engine);
    assert!(r.contains(&("server_first".to_string(), 3)), "{r:?}");
    assert_eq!(engine.snapshot().server_first.targets.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_server_first_target_costs_no_delay() {
    let server = banner_server(b"* OK\r\n").await;
    let (engine, addr) = forward(server, None, detect_cfg(10_000, 200)).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut b = [0u8; 6];
    first.read_exact(&mut b).await.unwrap();
    assert_eq!(engine.snapshot().server_first.targets[0].hits, 0, "the first connection raced and learned");
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.read_exact(&mut b).await.unwrap();
    // The second connection found the target in the cache: it skipped
    // detection (and the grace wait) entirely instead of racing again.
    let snap = engine.snapshot();
    assert_eq!(snap.server_first.targets[0].hits, 1, "the cache answered the second connection");
    let r = results(&engine);
    assert!(r.contains(&("server_first".to_string(), 2)), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_and_silent_server_proceed_after_the_timeout() {
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, None, detect_cfg(400, 50)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.write_all(b"late hello").await.unwrap();
    let mut back = [0u8; 10];
    within(Duration::from_secs(5), c.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"late hello");
    assert_eq!(results(&engine), vec![("read_timeout".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_closing_during_detection_is_counted() {
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, None, detect_cfg(5000, 0)).await;
    drop(TcpStream::connect(addr).await.unwrap());
    for _ in 0..50 {
        if has(&engine, "client_closed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(results(&engine), vec![("client_closed".to_string(), 1)]);
    for _ in 0..100 {
        if engine.snapshot().listeners[0].open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(engine.snapshot().listeners[0].open, 0, "the connection ends once both sides have closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_before_sending_still_gets_the_answer() {
    // `nc -N host port </dev/null` style: the client shuts down its write
    // side at once and reads; the server greets, reads to EOF, says goodbye.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                s.write_all(b"BANNER\n").await.unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).await.unwrap();
                s.write_all(b"BYE\n").await.unwrap();
            });
        }
    });
    for grace in [100, 0] {
        let (engine, addr) = forward(target, None, detect_cfg(2000, grace)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        within(Duration::from_secs(5), c.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"BANNER\nBYE\n", "grace {grace}: the FIN went upstream and the answer came back");
        assert_eq!(results(&engine), vec![("client_closed".to_string(), 1)], "still counted as closed during detection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_during_the_race_is_not_learned() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s); // closes without a byte
        }
    });
    let (engine, addr) = forward(target, None, detect_cfg(2000, 50)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    let _ = within(Duration::from_secs(5), c.read_to_end(&mut got)).await;
    assert!(got.is_empty());
    assert_eq!(results(&engine), vec![("not_http".to_string(), 1)]);
    assert!(engine.snapshot().server_first.targets.is_empty(), "a close is not a greeting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_line_goes_opaque_not_dropped() {
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, None, detect_cfg(5000, 100)).await;
    let mut head = b"GET /".to_vec();
    head.extend(std::iter::repeat_n(b'a', 20 * 1024));
    lossless(addr, &head, 4096, 7).await;
    assert_eq!(results(&engine), vec![("not_http".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_request_line_is_still_detected() {
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, None, detect_cfg(5000, 100)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let line = b"GET /slow HTTP/1.1\r\n";
    for byte in line {
        c.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(Duration::from_secs(5), c.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, line);
    assert_eq!(results(&engine), vec![("http/1".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_inputs_in_random_chunks_are_lossless() {
    use rand::{Rng, SeedableRng};
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, None, detect_cfg(200, 30)).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let heads: [&[u8]; 5] = [b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x16\x03\x01\x00", b"\r\n\r\nGET", b""];
    for case in 0..40u64 {
        let mut data = heads[rng.gen_range(0..heads.len())].to_vec();
        let body = rng.gen_range(0..40_000);
        data.extend(random(body, case));
        let expect = data.clone();
        let c = TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = c.into_split();
        let mut chunk_rng = rand::rngs::StdRng::seed_from_u64(case);
        let writer = tokio::spawn(async move {
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = chunk_rng.gen_range(1..=rest.len().min(3000));
                w.write_all(&rest[..n]).await.unwrap();
                rest = &rest[n..];
                if chunk_rng.gen_bool(0.2) {
                    tokio::time::sleep(Duration::from_millis(chunk_rng.gen_range(0..40))).await;
                }
            }
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        within(Duration::from_secs(10), r.read_to_end(&mut back)).await.unwrap();
        writer.await.unwrap();
        assert_eq!(sha(&back), sha(&expect), "case {case}: {} bytes in, {} out", expect.len(), back.len());
    }
    let total: u64 = engine.snapshot().detect.iter().map(|d| d.count).sum();
    assert_eq!(total, 40, "every connection got exactly one detection result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_stalled_greeting_is_not_http_after_the_grace_period() {
    // A client-first protocol whose greeting is short and looks like the
    // start of a method token: it waits for the answer, so waiting for a
    // request line would stall it for the whole detect timeout.
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, None, detect_cfg(10_000, 100)).await;
    let started = Instant::now();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    within(Duration::from_secs(5), c.read_exact(&mut pong)).await.unwrap();
    assert_eq!(&pong, b"ping");
    assert!(started.elapsed() < Duration::from_secs(2), "no detect-timeout stall: {:?}", started.elapsed());
    assert_eq!(results(&engine), vec![("not_http".to_string(), 1)]);
}

/// A client that trickles a plausible request line one byte per segment is
/// not classified forever: after a bounded number of reads it is `not_http`
/// (long before the detect timeout), and every byte still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_by_byte_trickle_is_decided_after_a_bounded_number_of_reads() {
    let echo = echo_server().await;
    let (engine, addr) = forward(echo, None, detect_cfg(60_000, 0)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.set_nodelay(true).unwrap();
    let mut sent = b"GET /".to_vec();
    c.write_all(&sent).await.unwrap();
    let started = Instant::now();
    // Each byte in its own segment, with a pause so the proxy reads it alone.
    while !has(&engine, "not_http") {
        assert!(sent.len() < 2_000, "still undecided after {} single-byte reads", sent.len());
        c.write_all(b"a").await.unwrap();
        sent.push(b'a');
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(30), "decided by the read bound, not the 60 s timeout");
    assert!(!has(&engine, "read_timeout"));
    c.write_all(b" HTTP/1.1\r\n\r\n").await.unwrap();
    sent.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(Duration::from_secs(10), c.read_to_end(&mut back)).await.unwrap();
    assert_eq!(sha(&back), sha(&sent), "every trickled byte is forwarded");
}
