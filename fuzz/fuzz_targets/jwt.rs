//! See `bulwark::fuzzing::jwt` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulwark::fuzzing::jwt(data));
