//! libFuzzer entry point for the `http_headers` check; the input handling and the
//! invariants live in `src/http_headers.rs`, which the stable smoke test
//! (`tests/smoke.rs`) also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshpipe_fuzz::http_headers::check(data));
