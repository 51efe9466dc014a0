//! The descriptor budget on a live engine: with the reserve set so that the
//! engine may hold only a few descriptors, connections past the budget wait
//! in the kernel backlog (no `EMFILE`, no accept error), are served as soon as
//! another closes, a bulk stream at the budget (bulk buffers off, so it is
//! spliced) carries on without splice pipes (it has no descriptors left for
//! them) with every byte intact, and every
//! descriptor is given back when the connections close.
//!
//! Alone in its test binary: the budget is sized from the descriptors the
//! whole process has open, which other tests running alongside would change.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The hard `RLIMIT_NOFILE`, which the engine raises the soft limit to.
fn hard_fd_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_budget_connections_wait_in_the_backlog_and_the_reserve_stays_free() {
    let echo = echo_server().await;
    // Leave the engine about 24 descriptors: everything else is "reserved".
    let reserve = hard_fd_limit() - open_fds() - 24;
    // No bulk buffers: bulk streams go to splice, whose pipes need descriptors.
    let (engine, addr) = forward(echo, Some("opaque"), serde_json::json!({ "limits": { "fdReserve": reserve, "bulkBuffers": 0 } })).await;
    let budget = engine.snapshot().limits.fds.budget.expect("a descriptor budget");
    assert!((8..=24).contains(&budget), "budget {budget}");
    let room = (budget / 2) as usize;

    let mut open = Vec::new();
    for i in 0..room {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[i as u8]).await.unwrap();
        let mut one = [0u8; 1];
        within(Duration::from_secs(5), s.read_exact(&mut one)).await.unwrap();
        open.push(s);
    }
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting.write_all(b"w").await.unwrap();
    let mut one = [0u8; 1];
    assert!(tokio::time::timeout(Duration::from_millis(300), waiting.read_exact(&mut one)).await.is_err(), "past the budget it waits");
    let snap = engine.snapshot();
    assert_eq!(snap.limits.fds.used, budget / 2 * 2, "{:?}", snap.limits.fds);
    assert!(snap.limits.fds.waits >= 1);
    assert_eq!(snap.listeners[0].accept_errors, 0, "the engine never ran into EMFILE");

    drop(open.pop());
    within(Duration::from_secs(5), waiting.read_exact(&mut one)).await.unwrap();
    assert_eq!(&one, b"w");

    // The budget is full again: a bulk stream gets no splice pipe and is
    // copied through user space instead, losslessly.
    let data = random(4 << 20, 11);
    let (mut r, mut w) = waiting.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move { w.write_all(&sent).await.unwrap() });
    let mut back = vec![0u8; data.len()];
    within(Duration::from_secs(20), r.read_exact(&mut back)).await.unwrap();
    writer.await.unwrap();
    assert!(back == data, "the bulk stream came back intact");
    let snap = engine.snapshot();
    assert!(snap.limits.fds.used <= budget, "{:?}", snap.limits.fds);
    assert!(snap.copy.spliced_directions >= 1, "the stream went to splice and found no pipe: {:?}", snap.copy);

    drop((r, open));
    let gave_back = tokio::time::timeout(Duration::from_secs(5), async {
        while engine.snapshot().limits.fds.used > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(gave_back.is_ok(), "every descriptor is given back: {:?}", engine.snapshot().limits.fds);
}
