//! See `bulwark::fuzzing::strict_json` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulwark::fuzzing::strict_json(data));
