//! Diagnostics through `tracing`, to standard error.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `RUST_LOG` when set, else the config's level.
pub fn init(config_level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            EnvFilter::try_new(env).map_err(|e| format!("RUST_LOG: {e}"))?
        }
        _ => EnvFilter::try_new(config_level)
            .map_err(|e| format!("log.level {config_level:?}: {e}"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init()
        .map_err(|e| e.to_string())
}
