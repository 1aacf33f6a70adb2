//! See `bulwark::fuzzing::session_token` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulwark::fuzzing::session_token(data));
