//! What plugins hand the host: paths, queries, hosts, header fields, local responses.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse::fuzzing::host_calls(data));
