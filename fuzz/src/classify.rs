//! Fuzz target for `meshpipe_core::detect`: no panic on any bytes, in any mode, and the verdict
//! never depends on how the bytes were split across reads.
//!
//! The proxy hands the whole accumulated prefix to its connection's `Classifier` after every
//! read, so beyond "no panic" the target checks the facts the proxy relies on: every prefix of
//! the input is either undecided or decided exactly as the whole input is (a decision is final),
//! an input of `DETECT_BUFFER_CAP` bytes or more is always decided, and one `Classifier` fed the
//! prefixes in order answers at every step what the one-shot `classify` answers. All prefixes are
//! checked for short inputs; for long ones a spread of prefixes is, so each run stays linear
//! enough for libFuzzer to explore. The first input byte picks the port mode, so the fuzzer can
//! steer into each matcher; one mode is a declared HTTP/1 port that also looks for mesh TLS
//! (`Expect::Any` with `declared_http1`), where a request line still well-formed at the cap
//! is HTTP/1.

use meshpipe_core::detect::{classify, Classifier, Expect, Verdict, DETECT_BUFFER_CAP};

/// Port modes: what the classifier expects, and whether the port is declared HTTP/1.
const MODES: [(Expect, bool); 5] =
    [(Expect::Any, false), (Expect::Http1, true), (Expect::Http2, false), (Expect::Tls, false), (Expect::Any, true)];

/// The one-shot verdict for `buf` in a mode.
fn classify_in(buf: &[u8], (expect, declared): (Expect, bool)) -> Verdict {
    if declared == (expect == Expect::Http1) {
        // The mode's own default: the public one-shot form must agree.
        let one_shot = classify(buf, expect);
        assert_eq!(one_shot, Classifier::new(expect).declared_http1(declared).update(buf));
        return one_shot;
    }
    Classifier::new(expect).declared_http1(declared).update(buf)
}

/// Prefix lengths to check: all of them for short inputs, otherwise the first 512, every
/// 97th after that, and the last few around the end and the cap.
fn prefix_lengths(len: usize) -> impl Iterator<Item = usize> {
    let dense = len.min(512);
    let sparse = (dense..len).step_by(97);
    let edges = [len.saturating_sub(2), len.saturating_sub(1), DETECT_BUFFER_CAP - 1, DETECT_BUFFER_CAP];
    (0..=dense).chain(sparse).chain(edges.into_iter().filter(move |&n| n <= len))
}

/// Checks one input; panics (an assertion) when an invariant above is broken.
pub fn check(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let mode = MODES[usize::from(selector) % MODES.len()];
    let whole = classify_in(input, mode);
    if input.len() >= DETECT_BUFFER_CAP {
        assert!(matches!(whole, Verdict::Decided(_)), "undecided at {} bytes", input.len());
    }
    if input.is_empty() {
        assert_eq!(whole, Verdict::NeedMore);
    }
    let mut incremental = Classifier::new(mode.0).declared_http1(mode.1);
    let mut decided = false;
    for end in prefix_lengths(input.len()) {
        let verdict = classify_in(&input[..end], mode);
        assert!(
            verdict == Verdict::NeedMore || verdict == whole,
            "prefix of {end} bytes decided {verdict:?}, whole input of {} bytes {whole:?}",
            input.len()
        );
        // The proxy stops feeding a classifier once it has decided.
        if !decided {
            let step = incremental.update(&input[..end]);
            assert_eq!(step, verdict, "incremental and one-shot differ at {end} bytes");
            // Pending only while undecided, on a declared HTTP/1 port.
            if incremental.declared_request_pending() {
                assert!(mode.1 && step == Verdict::NeedMore, "pending with {step:?} in mode {mode:?}");
            }
            decided = step != Verdict::NeedMore;
        }
    }
}
