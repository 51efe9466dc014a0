//! Engine integration tests for the three copy modes (adaptive, splice,
//! buffered): every byte arrives, in order, whether messages are small
//! (adaptive stays buffered), large (adaptive switches to splice mid-stream)
//! or held up by a destination that stops reading (the buffered copy keeps
//! the unwritten rest and waits).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODES: [&str; 3] = ["adaptive", "splice", "buffered"];

fn copy_mode(mode: &str) -> serde_json::Value {
    serde_json::json!({ "copy": { "mode": mode } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_is_bit_exact_in_every_mode() {
    let echo = echo_server().await;
    for mode in MODES {
        let (engine, addr) = forward(echo, Some("opaque"), copy_mode(mode)).await;
        let data = random(8 << 20, 7);
        let expect = sha(&data);
        assert_eq!(within(Duration::from_secs(30), roundtrip(addr, data)).await, expect, "copy mode {mode}");
        let snap = engine.snapshot();
        assert_eq!(snap.tcp[0].bytes_client_to_server, 8 << 20, "copy mode {mode}");
        assert_eq!(snap.tcp[0].bytes_server_to_client, 8 << 20, "copy mode {mode}");
        // Which path carried the bytes: adaptive switches both 8 MiB
        // directions to splice, splice starts there, buffered never does.
        let expect_spliced = if mode == "buffered" { 0 } else { 2 };
        assert_eq!(snap.copy.spliced_directions, expect_spliced, "copy mode {mode}");
        engine.close(Duration::from_secs(1)).await;
    }
}

/// Small messages only: adaptive keeps both directions on the buffered copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_messages_stay_on_the_buffered_path_in_adaptive_mode() {
    let echo = echo_server().await;
    for (mode, expect_spliced) in [("adaptive", 0), ("splice", 2), ("buffered", 0)] {
        let (engine, addr) = forward(echo, Some("opaque"), copy_mode(mode)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        for i in 0..50u8 {
            let msg = vec![i; 200];
            c.write_all(&msg).await.unwrap();
            let mut back = vec![0u8; 200];
            within(Duration::from_secs(5), c.read_exact(&mut back)).await.unwrap();
            assert_eq!(back, msg);
        }
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        within(Duration::from_secs(5), c.read_to_end(&mut rest)).await.unwrap();
        drop(c);
        within(Duration::from_secs(5), async {
            while engine.snapshot().listeners[0].open > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        assert_eq!(engine.snapshot().copy.spliced_directions, expect_spliced, "copy mode {mode}");
        engine.close(Duration::from_secs(1)).await;
    }
}

/// Request/response exchanges on one connection whose sizes cross the
/// 16 KiB buffer: small ones stay buffered, the first read that fills the
/// buffer moves the direction to splice, and later small ones go on there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_of_mixed_sizes_in_every_mode() {
    let echo = echo_server().await;
    let sizes = [1usize, 6, 100, 1500, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 200_000, 3, 70_000, 7];
    for mode in MODES {
        let (engine, addr) = forward(echo, Some("opaque"), copy_mode(mode)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut sent = 0u64;
        for (i, &n) in sizes.iter().enumerate() {
            let msg = random(n, i as u64 + 100);
            c.write_all(&msg).await.unwrap();
            let mut back = vec![0u8; n];
            within(Duration::from_secs(10), c.read_exact(&mut back)).await.unwrap();
            assert!(back == msg, "copy mode {mode}: message {i} ({n} bytes) came back changed");
            sent += n as u64;
        }
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        within(Duration::from_secs(10), c.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty(), "copy mode {mode}: the echo's FIN arrives after the last answer");
        drop(c);
        within(Duration::from_secs(5), async {
            while engine.snapshot().tcp[0].bytes_server_to_client < sent {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert_eq!(engine.snapshot().tcp[0].bytes_client_to_server, sent, "copy mode {mode}");
        engine.close(Duration::from_secs(1)).await;
    }
}

/// The target stops reading for a while: the proxy's writes to it come up
/// short, and whatever it has read but not written must be kept and sent
/// later, in order, with nothing lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_target_loses_nothing_in_every_mode() {
    for mode in MODES {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            // Let the client fill every buffer between it and us first.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            sha(&got)
        });
        let (_engine, addr) = forward(target, Some("opaque"), copy_mode(mode)).await;
        let data = random(12 << 20, 42);
        let expect = sha(&data);
        let mut c = TcpStream::connect(addr).await.unwrap();
        // Odd-sized writes, so reads in the proxy do not line up with them.
        for chunk in data.chunks(7_919) {
            c.write_all(chunk).await.unwrap();
        }
        c.shutdown().await.unwrap();
        let got = within(Duration::from_secs(30), server).await.unwrap();
        assert_eq!(got, expect, "copy mode {mode}");
    }
}

#[test]
fn an_unknown_copy_mode_is_rejected_with_the_choices() {
    let spec = serde_json::json!({
        "listeners": [],
        "copy": { "mode": "zero-copy" }
    });
    let err = serde_json::from_value::<meshpipe_core::EngineSpec>(spec).unwrap_err().to_string();
    assert!(err.contains("zero-copy") && err.contains("adaptive") && err.contains("splice") && err.contains("buffered"), "{err}");
}

/// TCP urgent data (RFC 9293 §3.8.5): Linux stops reads at the urgent mark
/// and splice cannot cross it at all. The urgent byte is carried in band, in
/// its place, and nothing after it is held back or lost, whether the
/// direction is still buffered or already splicing, and with the FIN
/// right behind the mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_data_is_carried_in_band_in_every_mode() {
    for mode in MODES {
        for bulk_first in [0usize, 256 * 1024] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let target = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                got
            });
            let (_engine, addr) = forward(target, Some("opaque"), copy_mode(mode)).await;
            let lead = random(bulk_first, 9);
            let sent = {
                let lead = lead.clone();
                tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    let mut c = std::net::TcpStream::connect(addr).unwrap();
                    c.write_all(&lead).unwrap();
                    // Let the proxy read the bulk (and switch to splice) first.
                    std::thread::sleep(Duration::from_millis(100));
                    let cork = |c: &std::net::TcpStream, on: bool| socket2::SockRef::from(c).set_cork(on).unwrap();
                    // One segment: data, the urgent byte, more data.
                    cork(&c, true);
                    c.write_all(b"abc").unwrap();
                    socket2::SockRef::from(&c).send_out_of_band(b"X").unwrap();
                    c.write_all(b"def").unwrap();
                    cork(&c, false);
                    c.shutdown(std::net::Shutdown::Write).unwrap();
                    // Keep the socket open until the server has everything.
                    std::thread::sleep(Duration::from_millis(300));
                })
            };
            let got = within(Duration::from_secs(10), server).await.unwrap();
            sent.await.unwrap();
            let mut expect = lead.clone();
            expect.extend_from_slice(b"abcXdef");
            assert!(
                got == expect,
                "copy mode {mode}, {bulk_first} bytes first: got {} bytes ending {:?}",
                got.len(),
                String::from_utf8_lossy(&got[got.len().saturating_sub(8)..])
            );
        }
    }
}
