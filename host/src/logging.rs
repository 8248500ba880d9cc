//! Diagnostics through `tracing`, to standard error, through a bounded queue and a writer thread
//! (tracing-appender's non-blocking writer, lossy): a stderr nobody reads drops lines, counted in
//! `gatehouse_log_lines_dropped_total{log="diagnostics"}`, instead of blocking an event loop.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the global subscriber: `RUST_LOG` when set, else the config's level. Lines written before
/// the returned guard is dropped are flushed when it is.
pub fn init(config_level: &str, buffer_lines: usize) -> Result<WorkerGuard, String> {
    let (text, source) = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => (env, "RUST_LOG".to_string()),
        _ => (
            config_level.to_string(),
            format!("log.level {config_level:?}"),
        ),
    };
    let mut filter = EnvFilter::try_new(&text).map_err(|e| format!("{source}: {e}"))?;
    // rustls warns about what a client sent (an IP address as SNI, say) on every handshake: a
    // client could fill the log. Its errors stay, unless the filter names rustls itself.
    if !text.contains("rustls") {
        filter = filter.add_directive(
            "rustls=error"
                .parse()
                .map_err(|e| format!("built-in log filter: {e}"))?,
        );
    }
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(buffer_lines)
        .thread_name("diagnostics")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(guard)
}

/// Diagnostic lines dropped so far because standard error did not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
