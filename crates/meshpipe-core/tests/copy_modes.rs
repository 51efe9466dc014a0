//! Engine integration tests for the three copy modes (adaptive, splice,
//! buffered), and adaptive with the bulk copy off: every byte arrives, in
//! order, whether messages are small (adaptive stays buffered), large
//! (adaptive switches to the bulk copy, or to splice, mid-stream) or held up
//! by a destination that stops reading (the copy keeps the unwritten rest
//! and waits). The bulk buffers are a budget: a stream that finds it spent
//! is spliced, and buffers nobody uses are freed.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `adaptive-spliced`: adaptive with no bulk buffers, so bulk streams are spliced.
const MODES: [&str; 4] = ["adaptive", "adaptive-spliced", "splice", "buffered"];

fn copy_mode(mode: &str) -> serde_json::Value {
    match mode {
        "adaptive-spliced" => serde_json::json!({ "copy": { "mode": "adaptive" }, "limits": { "bulkBuffers": 0 } }),
        mode => serde_json::json!({ "copy": { "mode": mode } }),
    }
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
        // Which path carried the bytes: adaptive moves both 8 MiB
        // directions to the bulk copy (or, without bulk buffers, to
        // splice), splice starts there, buffered never leaves the small copy.
        let expect = match mode {
            "adaptive" => (2, 0),
            "buffered" => (0, 0),
            _ => (0, 2),
        };
        assert_eq!((snap.copy.bulk_directions, snap.copy.spliced_directions), expect, "copy mode {mode}");
        assert_eq!(snap.copy.bulk_refused, 0, "copy mode {mode}");
        engine.close(Duration::from_secs(1)).await;
    }
}

/// Small messages only: adaptive keeps both directions on the buffered copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_messages_stay_on_the_buffered_path_in_adaptive_mode() {
    let echo = echo_server().await;
    for (mode, expect_spliced) in [("adaptive", 0), ("adaptive-spliced", 0), ("splice", 2), ("buffered", 0)] {
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
        let snap = engine.snapshot();
        assert_eq!((snap.copy.bulk_directions, snap.copy.spliced_directions), (0, expect_spliced), "copy mode {mode}");
        assert_eq!(snap.copy.bulk_buffers, 0, "copy mode {mode}: no bulk buffer was ever allocated");
        engine.close(Duration::from_secs(1)).await;
    }
}

/// Request/response exchanges on one connection whose sizes cross the
/// 16 KiB buffer: small ones stay buffered, the first read that fills the
/// buffer moves the direction to the bulk copy (or splice), and later small
/// ones go on there.
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

/// A sink for `n` connections that reads none of them until `go` fires,
/// then returns the SHA-256 of what each one carried (sorted).
async fn held_sink(go: tokio::sync::watch::Receiver<bool>, n: usize) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<[u8; 32]>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut readers = Vec::new();
        for _ in 0..n {
            let (mut s, _) = l.accept().await.unwrap();
            let mut go = go.clone();
            readers.push(tokio::spawn(async move {
                go.wait_for(|g| *g).await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                sha(&got)
            }));
        }
        let mut sums = Vec::new();
        for r in readers {
            sums.push(r.await.unwrap());
        }
        sums.sort();
        sums
    });
    (addr, task)
}

/// Sends `data` through `addr` and half-closes; returns its SHA-256 and the task.
fn send(addr: std::net::SocketAddr, data: Vec<u8>) -> ([u8; 32], tokio::task::JoinHandle<()>) {
    let expect = sha(&data);
    let task = tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&data).await.unwrap();
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
    });
    (expect, task)
}

/// Waits (up to `limit`) until the engine's copy state satisfies `done`.
async fn until(engine: &meshpipe_core::Engine, limit: Duration, what: &str, done: impl Fn(&meshpipe_core::CopySnapshot) -> bool) {
    let waited = tokio::time::timeout(limit, async {
        while !done(&engine.snapshot().copy) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what}: the copy state stayed {:?}", engine.snapshot().copy);
}

/// One bulk buffer, two bulk streams to a target that reads neither yet:
/// one holds the buffer (its write is blocked), the other finds the budget
/// spent and is spliced, and the refusal is counted. Both arrive whole once
/// the target reads. Run on one worker thread, as the Node binding runs
/// each worker: the buffer cache is per thread, and on a work-stealing
/// runtime a stream whose task moved to the other thread would find its
/// cached buffer out of reach and be refused too.
#[test]
fn a_spent_bulk_budget_splices_the_next_stream() {
    let workers = WorkerThreads::start(1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (go, ready) = tokio::sync::watch::channel(false);
        let (target, received) = held_sink(ready, 2).await;
        let (engine, addr) = workers.forward(target, serde_json::json!({ "limits": { "bulkBuffers": 1 } }));
        // More than the kernel buffers between the proxy and the target hold,
        // so the proxy's write blocks with the buffer lent.
        let (first, sent_first) = send(addr, random(12 << 20, 1));
        until(&engine, Duration::from_secs(10), "the first stream takes the buffer", |c| c.bulk_directions == 1 && c.bulk_buffers == 1)
            .await;
        let (second, sent_second) = send(addr, random(12 << 20, 2));
        until(&engine, Duration::from_secs(10), "one bulk stream is refused a buffer and spliced, the other holds it", |c| {
            c.bulk_directions == 2 && c.bulk_refused == 1 && c.spliced_directions == 1 && c.bulk_buffers == 1
        })
        .await;
        go.send(true).unwrap();
        let mut expect = vec![first, second];
        expect.sort();
        assert_eq!(within(Duration::from_secs(30), received).await.unwrap(), expect, "both streams arrive whole");
        within(Duration::from_secs(10), sent_first).await.unwrap();
        within(Duration::from_secs(10), sent_second).await.unwrap();
        let snap = engine.snapshot();
        assert_eq!(snap.tcp[0].bytes_client_to_server, 24 << 20);
        assert_eq!(snap.copy.bulk_refused, 1, "counted once per stream, not per read");
        assert!(snap.copy.bulk_buffers <= snap.copy.bulk_buffers_limit, "the budget bounds the buffers: {:?}", snap.copy);
        engine.close(Duration::from_secs(1)).await;
    });
}

/// Buffers a finished bulk stream leaves cached are freed by the worker's
/// housekeeping once unused for a whole period (10 s, so this test waits
/// up to 35 s), giving their units of the budget back. Run on worker
/// threads as the Node binding runs them: the cache is per thread.
#[test]
fn unused_bulk_buffers_are_freed() {
    let workers = WorkerThreads::start(1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let echo = echo_server().await;
        let (engine, addr) = workers.forward(echo, serde_json::json!({}));
        let data = random(8 << 20, 5);
        let expect = sha(&data);
        assert_eq!(within(Duration::from_secs(30), roundtrip(addr, data)).await, expect);
        let copy = engine.snapshot().copy;
        assert_eq!((copy.bulk_directions, copy.bulk_buffers_limit, copy.bulk_buffer_bytes), (2, 4, 4 << 20), "{copy:?}");
        until(&engine, Duration::from_secs(35), "cached buffers are freed", |c| c.bulk_buffers == 0).await;
        engine.close(Duration::from_secs(1)).await;
    });
}
