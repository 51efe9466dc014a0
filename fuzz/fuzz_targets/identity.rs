//! libFuzzer entry point for the `identity` check; the input handling and the
//! invariants live in `src/identity.rs`, which the stable smoke test
//! (`tests/smoke.rs`) also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshpipe_fuzz::identity::check(data));
