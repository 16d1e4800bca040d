#![no_main]
//! See `bb_container_expander::fuzzing::configuration`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| bb_container_expander::fuzzing::configuration(data));
