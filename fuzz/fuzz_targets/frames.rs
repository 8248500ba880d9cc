//! The front <-> worker frames and their payloads, from either side.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse::fuzzing::frames(data));
