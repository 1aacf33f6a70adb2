//! See `bulwark::fuzzing::totp_code` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulwark::fuzzing::totp_code(data));
