//! The command line: `gatehouse -c FILE`, `gatehouse check -c FILE`, and (soon) `gatehouse MODULE:CALLABLE`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  gatehouse -c gatehouse.toml                  serve with a config file
  gatehouse -c gatehouse.toml --ready-file r   also write the bound addresses to r once listening
  gatehouse check -c gatehouse.toml            validate a config file and exit 0 (valid) or 1
  RUST_LOG=debug gatehouse -c gatehouse.toml   more logging (overrides [log] level)";

/// One binary that does the jobs of Nginx and Gunicorn.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; serving is the default.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The TOML config file to serve.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Once every listener is bound, write their addresses here, one per line (`IP:PORT` or `unix:PATH`).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Quick mode: serve the WSGI application MODULE:CALLABLE without a config file (like `gunicorn app:app`).
    #[arg(value_name = "MODULE:CALLABLE")]
    pub app: Option<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config file: print every problem and exit 1, or exit 0 when it is valid.
    Check {
        /// The TOML config file to check.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Internal: run as a Python worker process (started by gatehouse itself).
    #[command(name = "__worker", hide = true)]
    Worker,
}
