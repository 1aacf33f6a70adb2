//! See `bulwark::fuzzing::audit_log` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulwark::fuzzing::audit_log(data));
