//! See `bulwark::fuzzing::policy_token` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulwark::fuzzing::policy_token(data));
