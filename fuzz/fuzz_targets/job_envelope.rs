//! See `bulwark::fuzzing::job_envelope` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulwark::fuzzing::job_envelope(data));
