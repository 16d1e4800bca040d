#![no_main]
//! See `bb_container_expander::fuzzing::layer`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| bb_container_expander::fuzzing::layer(data));
