//! See `bulwark::fuzzing::config_toml` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulwark::fuzzing::config_toml(data));
