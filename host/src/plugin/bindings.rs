//! The one `bindgen!` of the WIT contract, fenced here; the generated Host traits are implemented in
//! `host_impl/`, one file per interface.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: trappable },
    // Export arguments borrow: the request head is lowered from the request's own buffers.
    ownership: Borrowing { duplicate_if_necessary: true },
});
