//! One small runtime for work that belongs to no request and no event loop: upstream health
//! checks, the allocator's trim. Started on first use; its one thread runs until the process
//! exits.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

static TRIM: OnceLock<fn()> = OnceLock::new();

/// How often the front hands freed memory back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// The binary's allocator hook that hands freed memory back to the system (the binary picks the
/// allocator; this library does not know it).
pub fn set_memory_trim(trim: fn()) {
    let _ = TRIM.set(trim);
}

/// Runs the allocator's trim every [`TRIM_EVERY`] in the front, if the binary set one.
pub fn start_memory_trim() -> Result<(), String> {
    let Some(trim) = TRIM.get().copied() else {
        return Ok(());
    };
    spawn(async move {
        let mut ticks = tokio::time::interval(TRIM_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            trim();
        }
    })
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
