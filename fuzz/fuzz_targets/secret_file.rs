//! See `bulwark::fuzzing::secret_file` for the properties this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulwark::fuzzing::secret_file(data));
