//! One small runtime for work that belongs to no request and no event loop: upstream health
//! checks. Started on first use; its one thread runs until the process exits.

use std::future::Future;
use std::sync::OnceLock;

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
