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

/// `mi_option_arena_eager_commit` in mimalloc's (v2) `mi_option_e`; libmimalloc-sys names no
/// constant for it.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// mimalloc commits its arena as a whole by default where the system overcommits; committed on
/// demand instead, the pages it purges are handed back, which lowers the front's resident memory
/// under load (bench/results/profile.md). The option must be set before the arena exists, that is
/// before the first allocation, which Rust's runtime makes before `main`: so it is set from the
/// executable's initialisers, which run before the runtime.
#[allow(unsafe_code)] // a link section, and an FFI call: the allocator's C API
mod commit_on_demand {
    extern "C" fn set() {
        // SAFETY: `mi_option_set` takes an option number and a value, no pointers; it needs no
        // initialisation of mimalloc (options are plain values read later).
        unsafe { libmimalloc_sys::mi_option_set(super::MI_OPTION_ARENA_EAGER_COMMIT, 0) }
    }

    // SAFETY: `.init_array` holds pointers to functions the loader calls before the program's
    // runtime starts; `set` takes no arguments, touches no Rust state and cannot unwind.
    #[used]
    #[unsafe(link_section = ".init_array")]
    static SET: extern "C" fn() = set;
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
