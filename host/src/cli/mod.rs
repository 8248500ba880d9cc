//! The command line: `gatehouse -c FILE`, `gatehouse check -c FILE`, `gatehouse MODULE:CALLABLE`,
//! `gatehouse plugin new NAME`.

mod run;

pub use run::main;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  gatehouse -c gatehouse.toml                  serve with a config file
  gatehouse -c gatehouse.toml --ready-file r   also write the bound addresses to r once listening
  gatehouse check -c gatehouse.toml            validate a config file (and load its plugins)
  gatehouse plugin new bot-block               create a plugin crate with a passing test
  gatehouse app:app --static /static=./static  quick mode with static files under /static
  gatehouse app:app                            quick mode: serve a WSGI app on 127.0.0.1:8000
  gatehouse mysite.wsgi:application -b 0.0.0.0:8000 -w 4 --threads 2
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
    #[arg(value_name = "MODULE:CALLABLE", conflicts_with = "config")]
    pub app: Option<String>,
    /// Quick mode: address to listen on (IP:PORT or unix:PATH); repeatable.
    #[arg(short, long, value_name = "ADDR", requires = "app")]
    pub bind: Vec<String>,
    /// Quick mode: worker processes.
    #[arg(short, long, value_name = "N", requires = "app")]
    pub workers: Option<u32>,
    /// Quick mode: threads per worker.
    #[arg(long, value_name = "N", requires = "app")]
    pub threads: Option<u32>,
    /// Quick mode: request timeout, e.g. 30s.
    #[arg(long, value_name = "DURATION", requires = "app")]
    pub timeout: Option<String>,
    /// Quick mode: directory to import the app from (default: the current directory).
    #[arg(long, value_name = "DIR", requires = "app")]
    pub chdir: Option<PathBuf>,
    /// Quick mode: serve files of DIR under /PREFIX (routed by the `router` plugin); repeatable.
    #[arg(long = "static", value_name = "/PREFIX=DIR", requires = "app", value_parser = static_spec)]
    pub statics: Vec<String>,
}

impl Cli {
    /// The config quick mode stands for: one WSGI target over the current directory receiving everything.
    pub fn quick_config(&self) -> Option<String> {
        let app = self.app.as_ref()?;
        let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
        let binds = if self.bind.is_empty() {
            vec!["127.0.0.1:8000".to_string()]
        } else {
            self.bind.clone()
        };
        let listen: Vec<String> = binds.iter().map(|b| quote(b)).collect();
        let mut text = format!(
            "[server]\nlisten = [{}]\n\n[targets.app]\nwsgi = {}\n",
            listen.join(", "),
            quote(app)
        );
        if let Some(n) = self.workers {
            text.push_str(&format!("workers = {n}\n"));
        }
        if let Some(n) = self.threads {
            text.push_str(&format!("threads = {n}\n"));
        }
        if let Some(t) = &self.timeout {
            text.push_str(&format!("timeout = {}\n", quote(t)));
        }
        if let Some(dir) = &self.chdir {
            text.push_str(&format!("chdir = {}\n", quote(&dir.display().to_string())));
        }
        if !self.statics.is_empty() {
            // Routing is the router plugin's job, here as with a config file.
            let mut routes = String::new();
            for (i, spec) in self.statics.iter().enumerate() {
                let (prefix, dir) = spec.split_once('=').unwrap_or((spec.as_str(), ""));
                let name = format!("static{}", i + 1);
                text.push_str(&format!("\n[targets.{name}]\nstatic = {}\n", quote(dir)));
                routes.push_str(&format!(
                    "\n[[plugins.config.routes]]\npath = {}\ntarget = \"{name}\"\nstrip_prefix = true\n",
                    quote(prefix)
                ));
            }
            text.push_str("\n[[plugins]]\nuse = \"router\"\n");
            text.push_str(&routes);
            text.push_str("\n[[plugins.config.routes]]\npath = \"/\"\ntarget = \"app\"\n");
        }
        Some(text)
    }
}

/// `--static /PREFIX=DIR`: checked here so a mistake is a usage error, not a config error about
/// keys the user never wrote.
fn static_spec(spec: &str) -> Result<String, String> {
    match spec.split_once('=') {
        Some((prefix, dir)) if prefix.starts_with('/') && !dir.is_empty() => Ok(spec.to_string()),
        _ => Err(format!(
            "{spec:?} is not /PREFIX=DIR (for example /static=./static)"
        )),
    }
}

/// `gatehouse plugin ...`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a plugin crate NAME (a filter with a passing test) that builds to wasm32-wasip2.
    New {
        /// The crate name, e.g. `bot-block`.
        name: String,
        /// Where to create it (default: the current directory).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// The gatehouse-sdk crate to depend on (default: the one this binary was built from).
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
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
    /// Plugin tools.
    Plugin {
        /// What to do.
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Internal: run as a Python worker process (started by gatehouse itself).
    #[command(name = "__worker", hide = true)]
    Worker,
}
