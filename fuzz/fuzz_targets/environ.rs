//! The WSGI environ of any request head, and its trip through a request frame.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse::fuzzing::environ(data));
