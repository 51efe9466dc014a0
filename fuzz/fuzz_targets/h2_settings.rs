//! libFuzzer entry point for the `h2_settings` check; the input handling and
//! the invariants live in `src/h2_settings.rs`, which the stable smoke test
//! (`tests/smoke.rs`) also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshpipe_fuzz::h2_settings::check(data));
