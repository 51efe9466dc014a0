//! libFuzzer entry point for the `classify` check; the input handling and the
//! invariants live in `src/classify.rs`, which the stable smoke test
//! (`tests/smoke.rs`) also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshpipe_fuzz::classify::check(data));
