//! The `gatehouse` binary: everything it does is [`gatehouse::main`].

use std::process::ExitCode;

/// mimalloc: the front allocates and frees many small buffers per request across threads, where it is
/// measurably cheaper than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    gatehouse::main()
}
