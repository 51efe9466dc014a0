//! The invariants meshpipe's parsers are fuzzed against, one module per
//! fuzz target, each with `check(data: &[u8])`, which panics when an
//! invariant is broken.
//!
//! The checks live in this library rather than in the `fuzz_targets/`
//! binaries so they run in two places: libFuzzer drives them through the
//! binaries, coverage-guided (`guided.sh` on stable Rust, 30 s per target
//! in CI; `cargo +nightly fuzz run NAME` with AddressSanitizer for long
//! runs), and the stable smoke test (`tests/smoke.rs`) feeds them a fixed
//! corpus of hand-made seeds, mutations of them and seeded random bytes on
//! every CI run, so a regression against an invariant fails CI whatever the
//! fuzzer's luck.

pub mod addr;
pub mod classify;
pub mod h2_settings;
pub mod http_headers;
pub mod identity;
pub mod transport_header;
