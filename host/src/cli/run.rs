//! What each command does: serve (with signals, reload and graceful stop), check a config, scaffold
//! a plugin, run as a Python worker. This is the binary's `main` in all but name: it lives in the
//! library only so that the library can keep every other item private (and the compiler can report
//! dead code), and it is the one place that uses `anyhow`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use std::sync::Arc;

use super::{Cli, Command, PluginCommand};
use crate::access_log::AccessLog;
use crate::config::{Config, LoadError};
use crate::metrics::Metrics;
use crate::plugin::Chain;
use crate::server::{Reloader, Server};
use crate::store::SharedStore;
use crate::target::Targets;
use tokio_util::sync::CancellationToken;

/// Runs the command the command line names; the process exits with what it returns.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Worker) => return crate::wsgi::worker_main(),
        Some(Command::Plugin {
            command: PluginCommand::New { name, dir, sdk },
        }) => plugin_new(&name, &dir, sdk),
        None => serve(&cli),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("gatehouse: {}", causes(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: most of our errors already name their
/// cause in their own message, which `{:#}` would print a second time.
fn causes(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

fn plugin_new(name: &str, dir: &Path, sdk: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let sdk = sdk.unwrap_or_else(crate::scaffold::default_sdk);
    let root = crate::scaffold::new_plugin(name, dir, &sdk)?;
    println!(
        "created {root}\n\nnext:\n  cd {root}\n  rustup target add wasm32-wasip2\n  cargo test\n  cargo build --release --target wasm32-wasip2",
        root = root.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let store = match SharedStore::for_config(&config.store) {
        Ok(store) => Arc::new(store),
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let metrics = Arc::new(Metrics::new());
    if let Err(error) = Chain::for_config(&config, store, &metrics) {
        eprintln!("{}: {error}", path.display());
        return Ok(ExitCode::FAILURE);
    }
    if let Err(error) = crate::tls::Tls::new(&config.server) {
        eprintln!("{}: {error}", path.display());
        return Ok(ExitCode::FAILURE);
    }
    let budget = crate::request_body::BodyBudget::new(
        config.server.limits.body_memory_budget,
        config.server.limits.body_spool_budget,
    );
    let targets = Targets::build(&config, &metrics, &budget)?;
    drop(targets);
    crate::wsgi::stop_all_pools();
    println!(
        "{}: ok ({} listener(s), {} target(s), {} plugin(s))",
        path.display(),
        config.server.listen.len(),
        config.targets.len(),
        config.plugins.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Where the configuration comes from, so SIGHUP can read it again.
enum Source {
    File(PathBuf),
    Quick { text: String, cwd: PathBuf },
}

impl Source {
    fn load(&self) -> Result<Config, LoadError> {
        match self {
            Source::File(path) => Config::load(path),
            Source::Quick { text, cwd } => Config::parse(text, "<command line>", cwd),
        }
    }
}

fn serve(cli: &Cli) -> anyhow::Result<ExitCode> {
    let source = match (&cli.config, cli.quick_config()) {
        (Some(path), None) => Source::File(path.clone()),
        (None, Some(text)) => Source::Quick {
            text,
            cwd: std::env::current_dir().context("reading the current directory")?,
        },
        _ => bail!(
            "nothing to serve: give a config file with -c FILE, or an app as MODULE:CALLABLE (see --help)"
        ),
    };
    let config = source.load().map_err(|e| anyhow::anyhow!("{e}"))?;
    let ready_file = cli.ready_file.clone();
    let _diagnostics = crate::logging::init(&config.log.level, config.log.buffer_lines)
        .map_err(anyhow::Error::msg)?;
    let (access_log, flusher) = AccessLog::start(&config.log).context("opening the access log")?;

    let server = Server::bind(&config, access_log)?;
    let addrs = server.local_addrs();
    for addr in &addrs {
        tracing::info!(threads = config.server.threads, "listening on {addr}");
    }
    // Handlers are installed before anyone is told we are ready: a SIGTERM right after the ready file
    // appears must be a graceful stop, not the default action.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let handlers = signals
        .block_on(async { Signals::install() })
        .context("installing signal handlers")?;
    if let Some(ready) = &ready_file {
        write_ready_file(ready, &addrs).with_context(|| format!("writing {}", ready.display()))?;
    }
    let shutdown = CancellationToken::new();
    let watcher = shutdown.clone();
    let reloader = server.reloader(&config);
    std::thread::Builder::new()
        .name("gatehouse-signals".into())
        .spawn(move || signals.block_on(watch_signals(handlers, watcher, reloader, source)))
        .context("starting the signal thread")?;
    server.run(shutdown).context("serving")?;
    // The event loops are gone and with them every logger handle, so the writer thread drains and exits.
    flusher.finish();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Written to a temporary name and renamed, so a reader never sees half a file.
fn write_ready_file(path: &Path, addrs: &[String]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        addrs.iter().map(|a| format!("{a}\n")).collect::<String>(),
    )?;
    std::fs::rename(tmp, path)
}

/// The signals the server acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must run inside a runtime; the handlers are active from here on.
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// SIGHUP: reload the configuration (new workers, then the old drain). First SIGTERM/SIGINT: graceful
/// shutdown. A second one: exit now.
async fn watch_signals(
    signals: Signals,
    shutdown: CancellationToken,
    reloader: Reloader,
    source: Source,
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    let source = std::sync::Arc::new(source);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let (reloader, source) = (reloader.clone(), std::sync::Arc::clone(&source));
                // Building targets waits for new workers to load the app: not on this loop.
                let outcome = tokio::task::spawn_blocking(move || match source.load() {
                    Ok(config) => reloader.reload(&config).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                })
                .await;
                match outcome {
                    Ok(Ok(())) => tracing::info!("reloaded; the previous workers finish their requests and stop"),
                    Ok(Err(e)) => tracing::error!("reload failed, the running configuration keeps serving:\n{e}"),
                    Err(e) => tracing::error!("reload failed: {e}"),
                }
            }
        }
    }
    // Let go of the gateway so it (and its access log) can close once the event loops finish.
    drop(reloader);
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting without waiting");
    std::process::exit(1);
}
