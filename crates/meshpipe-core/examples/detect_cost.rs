//! Micro-benchmark of the protocol classifier: what one connection's detection costs in CPU,
//! for a normal request and for a slow client trickling an endless request line.
//!
//! `cargo run --release -p meshpipe-core --example detect_cost [ROUNDS]` prints nanoseconds per
//! connection (the minimum over rounds, so background load on a shared machine inflates it as
//! little as possible). Under `valgrind --tool=callgrind` it gives exact instruction counts:
//! `callgrind CASE` runs one case (`request`, `rescan` or `incremental`) exactly once.
//!
//! Cases (each is one connection's whole detection, fed the way `proxy/sniff.rs` feeds it):
//! - `request`: an 80-byte HTTP/1.1 request in one read (the common case);
//! - `trickle rescan`: `GET /` then 16 KiB of request-target in 256 reads of 64 bytes, with the
//!   whole prefix classified again after every read (what the proxy did before the classifier
//!   kept its state);
//! - `trickle incremental`: the same bytes through one `Classifier`, which resumes where the
//!   previous read stopped.

use std::hint::black_box;
use std::time::Instant;

use meshpipe_core::detect::{classify, Classifier, Expect, Verdict, DETECT_BUFFER_CAP};

const REQUEST: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: bench\r\nUser-Agent: mp\r\nAccept: */*\r\n\r\n";
const READS: usize = 256;

fn trickle() -> Vec<u8> {
    let mut v = b"GET /".to_vec();
    v.resize(DETECT_BUFFER_CAP, b'a');
    v
}

fn request() -> Verdict {
    let mut c = Classifier::new(Expect::Any);
    c.update(black_box(REQUEST))
}

fn trickle_rescan(input: &[u8]) -> Verdict {
    let step = input.len() / READS;
    let mut last = Verdict::NeedMore;
    for end in (step..=input.len()).step_by(step) {
        last = classify(black_box(&input[..end]), Expect::Any);
        if last != Verdict::NeedMore {
            break;
        }
    }
    last
}

fn trickle_incremental(input: &[u8]) -> Verdict {
    let step = input.len() / READS;
    let mut c = Classifier::new(Expect::Any);
    let mut last = Verdict::NeedMore;
    for end in (step..=input.len()).step_by(step) {
        last = c.update(black_box(&input[..end]));
        if last != Verdict::NeedMore {
            break;
        }
    }
    last
}

/// Minimum nanoseconds per call of `f` over `rounds` rounds of `per_round` calls.
fn measure(rounds: usize, per_round: usize, mut f: impl FnMut() -> Verdict) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            black_box(f());
        }
        best = best.min(t.elapsed().as_nanos() as f64 / per_round as f64);
    }
    best
}

fn main() {
    let arg = std::env::args().nth(1);
    let input = trickle();
    if arg.as_deref() == Some("callgrind") {
        match std::env::args().nth(2).as_deref() {
            Some("request") => black_box(request()),
            Some("rescan") => black_box(trickle_rescan(&input)),
            Some("incremental") => black_box(trickle_incremental(&input)),
            other => panic!("callgrind CASE: expected request, rescan or incremental, got {other:?}"),
        };
        return;
    }
    let rounds = arg.and_then(|a| a.parse().ok()).unwrap_or(20);
    let req = measure(rounds, 20_000, request);
    let rescan = measure(rounds, 20, || trickle_rescan(&input));
    let incremental = measure(rounds, 200, || trickle_incremental(&input));
    println!("request (80 B, 1 read):                {req:>12.0} ns/conn");
    println!("trickle rescan (16 KiB, {READS} reads):     {rescan:>12.0} ns/conn  {:>8.1}x request", rescan / req);
    println!("trickle incremental (16 KiB, {READS} reads):{incremental:>12.0} ns/conn  {:>8.1}x request", incremental / req);
}
