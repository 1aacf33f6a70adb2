//! See `bulwark::fuzzing::api_key` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulwark::fuzzing::api_key(data));
