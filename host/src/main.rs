//! The `gatehouse` binary: everything it does is [`gatehouse::main`].

use std::process::ExitCode;

/// mimalloc: the front allocates and frees many small buffers per request across threads, where it is
/// measurably cheaper than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // No transparent huge pages for this process (and the workers it starts, which inherit the
    // flag): where the system enables them, the kernel folds any 2 MiB range of the allocator's
    // arena that has a page in use into one huge page, so memory handed back after a burst came
    // back as RSS seconds later (10,000 idle connections: 1.5 KB each became 2.9 KB). Failing is
    // harmless: the kernel then just has no such flag.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    gatehouse::set_memory_trim(trim);
    gatehouse::main()
}

/// Hands memory the calling thread freed after a burst (thousands of connections served at once,
/// then parked) back to the system: mimalloc returns free pages only when a later allocation or a
/// collection comes by, which an idle event loop never makes. An event loop calls it once a
/// second while it starts no request.
#[allow(unsafe_code)] // an FFI call: the allocator's C API
fn trim() {
    // SAFETY: `mi_collect` takes no pointers and has no preconditions; it only returns pages
    // mimalloc already considers free (the `false`: purges only those past mimalloc's delay).
    unsafe { libmimalloc_sys::mi_collect(false) }
}
