//! The `gatehouse` binary: parse the command line, then hand over to the library.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use gatehouse::access_log::AccessLog;
use gatehouse::cli::{Cli, Command};
use gatehouse::config::Config;
use gatehouse::server::Server;
use gatehouse::target::Targets;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Worker) => return gatehouse::wsgi::worker_main(),
        None => serve(&cli),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("gatehouse: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    Targets::build(&config)?;
    println!(
        "{}: ok ({} listener(s), {} target(s))",
        path.display(),
        config.server.listen.len(),
        config.targets.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn serve(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = match (&cli.config, cli.quick_config()) {
        (Some(path), None) => Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        (None, Some(text)) => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            Config::parse(&text, "<command line>", &cwd).map_err(|e| anyhow::anyhow!("{e}"))?
        }
        _ => bail!(
            "nothing to serve: give a config file with -c FILE, or an app as MODULE:CALLABLE (see --help)"
        ),
    };
    let ready_file = cli.ready_file.clone();
    gatehouse::logging::init(&config.log.level).map_err(anyhow::Error::msg)?;
    let (access_log, flusher) = AccessLog::start(&config.log).context("opening the access log")?;

    let server = Server::bind(&config, access_log)?;
    let addrs = server.local_addrs();
    for addr in &addrs {
        tracing::info!("listening on {addr}");
    }
    if let Some(ready) = &ready_file {
        write_ready_file(ready, &addrs).with_context(|| format!("writing {}", ready.display()))?;
    }
    let shutdown = CancellationToken::new();
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let watcher = shutdown.clone();
    std::thread::Builder::new()
        .name("gatehouse-signals".into())
        .spawn(move || signals.block_on(watch_signals(watcher)))
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

/// First SIGTERM/SIGINT: graceful shutdown. A second one: exit now.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting without waiting");
    std::process::exit(1);
}
