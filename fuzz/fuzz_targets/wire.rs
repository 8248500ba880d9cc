//! The HTTP/1 wire guard: any byte stream, cut anywhere (the first bytes say where).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let cuts = data
        .len()
        .min(data.first().map_or(0, |b| usize::from(b % 16)) + 1);
    let (cuts, stream) = data.split_at(cuts);
    gatehouse::fuzzing::wire(stream, cuts);
});
