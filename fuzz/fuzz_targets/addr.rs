//! libFuzzer entry point for the `addr` check; the input handling and the
//! invariants live in `src/addr.rs`, which the stable smoke test
//! (`tests/smoke.rs`) also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshpipe_fuzz::addr::check(data));
