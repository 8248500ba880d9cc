//! The front server: listeners, the accept loops, connection limits and graceful shutdown.

pub mod conn;
pub mod listener;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::pipeline::Gateway;
use crate::target::{BuildError, Targets};
use listener::{BindError, Listener};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A target could not be built.
    #[error(transparent)]
    Target(#[from] BuildError),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// A server with its sockets bound, ready to run.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<Listener>,
    gateway: Arc<Gateway>,
    shutdown_timeout: Duration,
}

impl Server {
    /// Builds the targets and binds every listener. Must run inside the tokio runtime.
    pub fn bind(config: &Config, access_log: AccessLog) -> Result<Server, StartError> {
        let targets = Targets::build(config)?;
        let listeners = config
            .server
            .listen
            .iter()
            .map(Listener::bind)
            .collect::<Result<Vec<_>, _>>()?;
        let gateway = Arc::new(Gateway {
            targets,
            limits: config.server.limits.clone(),
            access_log,
        });
        Ok(Server {
            listeners,
            gateway,
            shutdown_timeout: config.server.shutdown_timeout,
        })
    }

    /// The bound addresses, in config order (`IP:PORT` or `unix:PATH`).
    pub fn local_addrs(&self) -> Vec<String> {
        self.listeners.iter().map(Listener::local_addr).collect()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight requests finish
    /// within the shutdown timeout and closes idle connections at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let limits = &self.gateway.limits;
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let builder = Arc::new(conn::builder(limits));
        let tracker = TaskTracker::new();
        for listener in self.listeners {
            let accept = AcceptLoop {
                gateway: Arc::clone(&self.gateway),
                builder: Arc::clone(&builder),
                permits: Arc::clone(&permits),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
            };
            tracker.spawn(accept.run(listener));
        }
        shutdown.cancelled().await;
        tracker.close();
        tracing::info!(grace = ?self.shutdown_timeout, "shutting down: no new connections, finishing requests in flight");
        if tokio::time::timeout(self.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = tracker.len(),
                "shutdown timeout reached; closing the remaining connections"
            );
        }
    }
}

/// Accepts connections on one listener and spawns a task for each.
struct AcceptLoop {
    gateway: Arc<Gateway>,
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl AcceptLoop {
    async fn run(self, listener: Listener) {
        loop {
            // At `max_connections`, stop accepting: further clients wait in the kernel's backlog.
            let permit = tokio::select! {
                permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = self.shutdown.cancelled() => break,
            };
            let accepted = tokio::select! {
                accepted = accept(&listener) => accepted,
                () = self.shutdown.cancelled() => break,
            };
            match accepted {
                Ok(Accepted::Tcp(stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = conn::serve(
                        stream,
                        Some(client),
                        Arc::clone(&self.gateway),
                        Arc::clone(&self.builder),
                        self.shutdown.clone(),
                    );
                    self.tracker.spawn(async move {
                        conn.await;
                        drop(permit);
                    });
                }
                Ok(Accepted::Unix(stream)) => {
                    let conn = conn::serve(
                        stream,
                        None,
                        Arc::clone(&self.gateway),
                        Arc::clone(&self.builder),
                        self.shutdown.clone(),
                    );
                    self.tracker.spawn(async move {
                        conn.await;
                        drop(permit);
                    });
                }
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if let Listener::Unix(_, path) = &listener {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}
