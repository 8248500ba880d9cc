//! The config loader: any text gives a config or errors with positions, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        gatehouse::fuzzing::config(text);
    }
});
