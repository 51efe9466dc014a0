//! libFuzzer entry point for the `transport_header` check; the input handling and the
//! invariants live in `src/transport_header.rs`, which the stable smoke test
//! (`tests/smoke.rs`) also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshpipe_fuzz::transport_header::check(data));
