//! One small runtime for work that belongs to no request and no event loop: upstream health
//! checks. Started on first use; its one thread runs until the process exits. And the binary's
//! allocator trim, which the event loops run.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

static TRIM: OnceLock<fn()> = OnceLock::new();

/// How often an event loop that started no request meanwhile hands freed memory back.
pub const TRIM_EVERY: Duration = Duration::from_secs(1);

/// The binary's allocator hook that hands memory freed on the calling thread back to the system
/// (the binary picks the allocator; this library does not know it).
pub fn set_memory_trim(trim: fn()) {
    let _ = TRIM.set(trim);
}

/// The allocator's trim, if the binary set one.
pub fn memory_trim() -> Option<fn()> {
    TRIM.get().copied()
}

static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();

/// Runs `task` on the background runtime.
pub fn spawn<F>(task: F) -> Result<(), String>
where
    F: Future<Output = ()> + Send + 'static,
{
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gatehouse-background")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the background runtime: {e}"))
    });
    match runtime {
        Ok(rt) => {
            rt.spawn(task);
            Ok(())
        }
        Err(e) => Err(e.clone()),
    }
}
