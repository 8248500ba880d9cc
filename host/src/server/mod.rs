//! The front server: listeners, the accept loops, connection limits and graceful shutdown.

mod admin;
pub mod conn;
mod idle;
mod io;
pub mod listener;
mod lot;
mod proxy_protocol;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::config::{AcmeChallenge, Config, Listen, ListenAddr};
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::pipeline::{Gateway, PlainListener};
use crate::plugin::Chain;
use crate::request_body::BodyBudget;
use crate::store::SharedStore;
use crate::target::{BuildError, Targets};
use crate::tls::acme::{Acme, Http01Tokens};
use crate::tls::{Acceptor, HandshakeError, Tls, TlsError};
use idle::Connections;
use listener::{BindError, Bound, Listener, LoopSocket};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A target could not be built.
    #[error(transparent)]
    Target(#[from] BuildError),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A plugin could not be loaded or refused its config.
    #[error(transparent)]
    Plugin(#[from] crate::plugin::LoadError),
    /// A certificate, key or client CA could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The shared store could not be set up.
    #[error("{0}")]
    Store(String),
}

/// How one listener's connections are opened: PROXY protocol, TLS, or a plain listener's own
/// answers.
#[derive(Debug)]
struct Role {
    listen: Listen,
    tls: Option<Acceptor>,
    plain: Option<Arc<PlainListener>>,
    /// The admin listener: health, readiness and metrics, no plugins.
    admin: bool,
}

/// The gateway requests use, swapped whole on reload: requests in flight keep the one they started with.
pub type SharedGateway = Arc<ArcSwap<Gateway>>;

/// Swaps in a new configuration while the server runs (SIGHUP).
#[derive(Debug, Clone)]
pub struct Reloader {
    gateway: SharedGateway,
    listen: Vec<Listen>,
    threads: usize,
    tls: Option<(Arc<Tls>, Vec<Arc<Role>>)>,
}

impl Reloader {
    /// Builds the new targets (starting new workers and waiting for them) and swaps them in. On any
    /// error the running configuration keeps serving. Listener and thread changes need a restart.
    pub fn reload(&self, config: &Config) -> Result<(), StartError> {
        if config.server.listen != self.listen {
            tracing::warn!(
                "changes to server.listen and server.listeners take effect at the next restart"
            );
        }
        if config.server.threads != self.threads {
            // Also reached without touching `threads`: its default follows the WSGI workers.
            tracing::warn!(
                running = self.threads,
                configured = config.server.threads,
                "the number of event-loop threads (server.threads) changes at the next restart"
            );
        }
        // The shared store, the body budget and the access log survive the reload.
        let current = self.gateway.load();
        if !current.plugins.store().made_from(&config.store) {
            tracing::warn!("changes to [store] take effect at the next restart");
        }
        let gateway = build_gateway(
            config,
            Arc::clone(current.plugins.store()),
            Arc::clone(&current.metrics),
            current.access_log.clone(),
            Arc::clone(&current.body_budget),
        )?;
        // Certificates and client CAs last: if they fail, the new gateway is dropped unused.
        if let Some((tls, roles)) = &self.tls {
            let pairs: Vec<_> = roles
                .iter()
                .filter_map(|role| {
                    let acceptor = role.tls.as_ref()?;
                    let listen = config
                        .server
                        .listen
                        .iter()
                        .find(|l| l.addr == role.listen.addr)
                        .and_then(|l| l.tls.as_ref())
                        .or(role.listen.tls.as_ref())?;
                    Some((listen, acceptor))
                })
                .collect();
            tls.reload(&config.server, &pairs)?;
        }
        self.gateway.store(Arc::new(gateway));
        Ok(())
    }
}

/// The one place a gateway is built from a config. Plugins first: a plugin that fails to load
/// starts no workers for nothing (and on reload leaves the old chain serving).
fn build_gateway(
    config: &Config,
    store: Arc<SharedStore>,
    metrics: Arc<Metrics>,
    access_log: AccessLog,
    body_budget: Arc<BodyBudget>,
) -> Result<Gateway, StartError> {
    let limits = &config.server.limits;
    body_budget.resize(limits.body_memory_budget, limits.body_spool_budget);
    let plugins = Chain::for_config(config, store, &metrics)?;
    let targets = Targets::build(config, &metrics, &body_budget)?;
    let responses = metrics.responses_for(&targets.names().collect::<Vec<_>>());
    Ok(Gateway {
        targets,
        plugins,
        limits: config.server.limits.clone(),
        access_log,
        metrics,
        responses,
        forwarding: config.server.forwarding.clone(),
        body_budget,
    })
}

/// A server with its sockets bound, ready to run.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<(Bound, Arc<Role>)>,
    gateway: SharedGateway,
    shutdown_timeout: Duration,
    loops: usize,
    tls: Option<Arc<Tls>>,
    acme: Option<Acme>,
}

impl Server {
    /// Binds every listener, once per event loop, then loads the plugins and builds the targets:
    /// a port in use fails at once, before any Python worker has imported the app.
    pub fn bind(config: &Config, access_log: AccessLog) -> Result<Server, StartError> {
        raise_open_file_limit(config.server.limits.max_connections);
        let loops = config.server.threads;
        let bound = config
            .server
            .listen
            .iter()
            .map(|listen| Bound::bind(&listen.addr, loops))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = Tls::new(&config.server)?;
        let tokens = config
            .server
            .acme
            .as_ref()
            .filter(|a| a.challenge == AcmeChallenge::Http01)
            .map(|_| Arc::new(Http01Tokens::default()));
        // Where redirects to HTTPS go: the first TLS listener's port (as bound, for port 0).
        let https_port = config
            .server
            .listen
            .iter()
            .zip(&bound)
            .find(|(l, _)| l.tls.is_some() && matches!(l.addr, ListenAddr::Tcp(_)))
            .and_then(|(_, b)| b.port())
            .unwrap_or(443);
        let mut listeners = Vec::new();
        for (listen, bound) in config.server.listen.iter().zip(bound) {
            let acceptor = match (&listen.tls, &tls) {
                (Some(t), Some(tls)) => Some(tls.acceptor(t)?),
                _ => None,
            };
            let plain = PlainListener {
                redirect_https: listen.redirect_https.then_some(https_port),
                acme: tokens.clone(),
            };
            let role = Role {
                listen: listen.clone(),
                plain: (acceptor.is_none() && plain.is_active()).then(|| Arc::new(plain)),
                tls: acceptor,
                admin: false,
            };
            listeners.push((bound, Arc::new(role)));
        }
        if let Some(addr) = &config.admin {
            let role = Role {
                listen: Listen {
                    addr: addr.clone(),
                    tls: None,
                    proxy_protocol: None,
                    redirect_https: false,
                },
                tls: None,
                plain: None,
                admin: true,
            };
            listeners.push((Bound::bind(addr, loops)?, Arc::new(role)));
        }
        let acme = match (&config.server.acme, &tls) {
            (Some(acme), Some(tls)) => Some(Acme::new(
                acme.clone(),
                Arc::clone(tls.certificates()),
                tokens.unwrap_or_default(),
            )),
            _ => None,
        };
        let store = Arc::new(SharedStore::for_config(&config.store).map_err(StartError::Store)?);
        let metrics = Arc::new(Metrics::new());
        metrics.watch_dropped_lines("diagnostics", crate::logging::dropped_lines);
        let log = access_log.clone();
        metrics.watch_dropped_lines("access", move || log.dropped_lines());
        let limits = &config.server.limits;
        let body_budget = BodyBudget::new(limits.body_memory_budget, limits.body_spool_budget);
        let gateway = Arc::new(ArcSwap::from_pointee(build_gateway(
            config,
            store,
            metrics,
            access_log,
            body_budget,
        )?));
        Ok(Server {
            listeners,
            gateway,
            shutdown_timeout: config.server.shutdown_timeout,
            loops,
            tls,
            acme,
        })
    }

    /// A handle to reload the configuration while [`Server::run`] serves.
    pub fn reloader(&self, config: &Config) -> Reloader {
        Reloader {
            gateway: Arc::clone(&self.gateway),
            listen: config.server.listen.clone(),
            threads: config.server.threads,
            tls: self.tls.as_ref().map(|tls| {
                let roles = self.listeners.iter().map(|(_, r)| Arc::clone(r)).collect();
                (Arc::clone(tls), roles)
            }),
        }
    }

    /// The bound addresses, in config order (`IP:PORT` or `unix:PATH`).
    pub fn local_addrs(&self) -> Vec<String> {
        self.listeners.iter().map(|(b, _)| b.local_addr()).collect()
    }

    /// Serves on one event-loop thread per configured thread until `shutdown` is cancelled, then stops
    /// accepting, lets in-flight requests finish within the shutdown timeout and closes idle
    /// connections at once. Blocks the calling thread until every loop has stopped.
    pub fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        // A copy: holding the gateway here would keep it (and its workers) alive past a reload.
        let limits = &self.gateway.load().limits.clone();
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let admin_slots = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
        let connections = Arc::new(Connections::default());
        let builder = Arc::new(conn::builder(limits));
        let socket_files: Vec<_> = self
            .listeners
            .iter()
            .filter_map(|(b, _)| b.socket_file())
            .collect();
        let mut per_loop: Vec<Vec<(LoopSocket, Arc<Role>)>> =
            (0..self.loops).map(|_| Vec::new()).collect();
        for (bound, role) in self.listeners {
            for (index, socket) in bound.into_loop_sockets(self.loops)?.into_iter().enumerate() {
                per_loop[index].push((socket, Arc::clone(&role)));
            }
        }
        let acme = match self.acme {
            Some(acme) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let stop = shutdown.clone();
                Some(
                    std::thread::Builder::new()
                        .name("gatehouse-acme".into())
                        .spawn(move || runtime.block_on(acme.run(stop)))?,
                )
            }
            None => None,
        };
        let mut threads = Vec::new();
        for (index, sockets) in per_loop.into_iter().enumerate() {
            let event_loop = EventLoop {
                index,
                admin_slots: Arc::clone(&admin_slots),
                sockets,
                gateway: Arc::clone(&self.gateway),
                builder: Arc::clone(&builder),
                permits: Arc::clone(&permits),
                connections: Arc::clone(&connections),
                shutdown: shutdown.clone(),
                grace: self.shutdown_timeout,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("gatehouse-loop-{index}"))
                    .spawn(move || event_loop.run())?,
            );
        }
        let mut result = Ok(());
        for thread in threads {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(std::io::Error::other("an event loop panicked")),
            }
        }
        if let Some(acme) = acme {
            let _ = acme.join();
        }
        // Every request is done: the Python workers stop, and are reaped before we exit.
        crate::wsgi::stop_all_pools();
        for path in socket_files {
            let _ = std::fs::remove_file(path);
        }
        result
    }
}

/// Raises the soft limit on open files to the hard one, as nginx's `worker_rlimit_nofile` would be
/// set by hand: the soft default (often 1024) is far below `max_connections`. Says so when even the
/// hard limit leaves too little room (each connection is one descriptor; files being sent, spooled
/// bodies, worker sockets and plugin caches need more).
fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(%error, "cannot raise the open-file limit");
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    if let Some(files) = now {
        let wanted = max_connections as u64 + 256;
        if files < wanted {
            tracing::warn!(
                open_files = files,
                max_connections,
                "the open-file limit (ulimit -n) is below max_connections plus room for files and \
                 workers: connections past it fail to be accepted; raise the hard limit or lower \
                 server.limits.max_connections"
            );
        }
    }
}

/// One event loop: a single-threaded tokio runtime serving its share of the connections.
struct EventLoop {
    index: usize,
    admin_slots: Arc<Semaphore>,
    sockets: Vec<(LoopSocket, Arc<Role>)>,
    gateway: SharedGateway,
    builder: Arc<conn::Builders>,
    permits: Arc<Semaphore>,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
    grace: Duration,
}

impl EventLoop {
    fn run(self) -> std::io::Result<()> {
        // With a remote store, plugin calls run on this loop's blocking threads (they wait on
        // the network); their number bounds the calls in flight and the store's connections.
        let blocking = self.gateway.load().plugins.store().threads();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(blocking)
            .build()?;
        runtime.block_on(async move {
            // The allocator keeps pages a burst freed until a later allocation comes by, which an
            // idle loop never makes: a loop that started no request for a second hands its own
            // back (a busy loop's allocations do it, and a trim there would only give back pages
            // about to be used again). Not tracked: shutdown does not wait for it.
            if let Some(trim) = crate::background::memory_trim() {
                tokio::spawn(async move {
                    let mut ticks = tokio::time::interval(crate::background::TRIM_EVERY);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut seen = conn::requests_started();
                    loop {
                        ticks.tick().await;
                        let started = conn::requests_started();
                        if started == seen {
                            trim();
                        }
                        seen = started;
                    }
                });
            }
            let tracker = TaskTracker::new();
            tracker.spawn(conn::run_lot(tracker.clone(), self.shutdown.clone()));
            for (socket, role) in self.sockets {
                let accept = AcceptLoop {
                    role,
                    admin_slots: Arc::clone(&self.admin_slots),
                    gateway: Arc::clone(&self.gateway),
                    builder: Arc::clone(&self.builder),
                    permits: Arc::clone(&self.permits),
                    connections: Arc::clone(&self.connections),
                    shutdown: self.shutdown.clone(),
                    tracker: tracker.clone(),
                };
                tracker.spawn(accept.run(socket.into_listener()?));
            }
            self.shutdown.cancelled().await;
            // Idle and parked connections close now, busy ones after their requests.
            self.connections.close_all();
            crate::wsgi::begin_shutdown();
            tracker.close();
            if self.index == 0 {
                tracing::info!(grace = ?self.grace, "shutting down: no new connections, finishing requests in flight");
            }
            if tokio::time::timeout(self.grace, tracker.wait()).await.is_err() {
                tracing::warn!(open = tracker.len(), "shutdown timeout reached; closing the remaining connections");
            }
            Ok(())
        })
    }
}

/// Admin connections open at once, beside `max_connections`.
const ADMIN_CONNECTIONS: usize = 16;

/// Accepts connections on one listener and spawns a task for each.
struct AcceptLoop {
    role: Arc<Role>,
    admin_slots: Arc<Semaphore>,
    gateway: SharedGateway,
    builder: Arc<conn::Builders>,
    permits: Arc<Semaphore>,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl AcceptLoop {
    async fn run(self, listener: Listener) {
        loop {
            let accepted = tokio::select! {
                accepted = accept(&listener) => accepted,
                () = self.shutdown.cancelled() => break,
            };
            // The admin listener has slots of its own: a server at `max_connections` still
            // answers its health checks, and they never close a client's connection.
            if self.role.admin {
                match Arc::clone(&self.admin_slots).try_acquire_owned() {
                    Ok(permit) => match accepted {
                        Ok(Accepted::Tcp(stream, _)) => {
                            self.tracker.spawn(admin::serve(
                                stream,
                                Arc::clone(&self.gateway),
                                permit,
                            ));
                        }
                        Ok(Accepted::Unix(stream)) => {
                            self.tracker.spawn(admin::serve(
                                stream,
                                Arc::clone(&self.gateway),
                                permit,
                            ));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "admin accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    // Too many admin clients at once: this one is closed unanswered.
                    Err(_) => drop(accepted),
                }
                continue;
            }
            // At `max_connections` the connection idle the longest is asked to close, and the
            // accepted one waits, unread, for its slot; when every connection is busy it waits for
            // any to close, and this loop accepts nothing more meanwhile: further clients wait in
            // the kernel's backlog. The permit is taken after accepting because each loop has its
            // own socket: a loop holding a permit while blocked in accept could starve the loop
            // whose backlog has the client.
            let permit = match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(p) => p,
                Err(TryAcquireError::Closed) => break,
                Err(TryAcquireError::NoPermits) => {
                    self.connections.close_oldest_idle();
                    tokio::select! {
                        permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                        () = self.shutdown.cancelled() => break,
                    }
                }
            };
            match accepted {
                Ok(Accepted::Tcp(stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    let send_queue = self.gateway.load().limits.send_queue;
                    if send_queue > 0 {
                        // Bounds what a client that reads slowly pins in the kernel: without it
                        // the socket queues up to its autotuned buffer, and a thousand such
                        // clients can push every connection into TCP memory pressure.
                        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(send_queue);
                    }
                    let local = stream.local_addr().ok();
                    self.spawn_connection(stream, Some(client), local, permit);
                }
                Ok(Accepted::Unix(stream)) => self.spawn_connection(stream, None, None, permit),
                // Another loop took the connection first (shared Unix socket).
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl AcceptLoop {
    /// Serves one connection in its own task (PROXY header and TLS handshake first, where the
    /// listener has them); its slot frees when it closes.
    fn spawn_connection<I>(
        &self,
        io: I,
        client: Option<std::net::SocketAddr>,
        local: Option<std::net::SocketAddr>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) where
        I: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + io::Park
            + crate::sendfile::SendFile
            + conn::Lodge
            + Unpin
            + Send
            + 'static,
    {
        let role = Arc::clone(&self.role);
        let gateway = Arc::clone(&self.gateway);
        let builder = Arc::clone(&self.builder);
        let connections = Arc::clone(&self.connections);
        let metrics = Arc::clone(&gateway.load().metrics);
        let slot = conn::Slot::new(permit, metrics.connections());
        let mut io = io;
        if role.tls.is_none() {
            let first = async move {
                let Some(peer) = proxied(&role, &gateway, &mut io, client, local).await else {
                    return conn::Step::Done;
                };
                let plain = role.plain.clone();
                conn::serve(io, peer, plain, None, gateway, builder, connections).await
            };
            self.tracker.spawn(conn::Connection::new(first, slot));
            return;
        }
        let first = async move {
            let Some(mut peer) = proxied(&role, &gateway, &mut io, client, local).await else {
                return conn::Step::Done;
            };
            let Some(acceptor) = &role.tls else {
                return conn::Step::Done;
            };
            // Boxed: the handshake's state is gone once it is done.
            let accepting = Box::pin(acceptor.accept(io));
            match accepting.await {
                Ok((stream, established)) => {
                    metrics.tls_handshake("ok");
                    peer.client_subject = established.client_subject;
                    let negotiated = match established.alpn {
                        Some(crate::tls::Alpn::Http2) => Some(conn::Negotiated::Http2),
                        Some(crate::tls::Alpn::Http1) => Some(conn::Negotiated::Http1),
                        None => None,
                    };
                    conn::serve(
                        stream,
                        peer,
                        None,
                        negotiated,
                        gateway,
                        builder,
                        connections,
                    )
                    .await
                }
                Err(HandshakeError::AcmeValidation) => {
                    metrics.tls_handshake("acme");
                    conn::Step::Done
                }
                Err(error) => {
                    metrics.tls_handshake(match error {
                        HandshakeError::Timeout => "timeout",
                        _ => "failed",
                    });
                    tracing::debug!(?client, %error, "TLS handshake");
                    conn::Step::Done
                }
            }
        };
        self.tracker.spawn(conn::Connection::new(first, slot));
    }
}

/// The connection's peer: the client a PROXY header names, where the listener takes one from
/// this peer, or the socket's own peer. `None`: no valid header in time (the connection closes).
async fn proxied<I>(
    role: &Role,
    gateway: &SharedGateway,
    io: &mut I,
    client: Option<std::net::SocketAddr>,
    local: Option<std::net::SocketAddr>,
) -> Option<Peer>
where
    I: tokio::io::AsyncRead + Unpin,
{
    let peer = Peer::new(client, local, role.tls.is_some());
    let Some(trusted) = &role.listen.proxy_protocol else {
        return Some(peer);
    };
    // On a Unix socket its permissions decide who may connect.
    if !client.is_none_or(|c| trusted.contains(c.ip())) {
        return Some(peer);
    }
    let timeout = gateway.load().limits.tls_handshake_timeout;
    let header = Box::pin(proxy_protocol::read_header(io));
    match tokio::time::timeout(timeout, header).await {
        Ok(Ok(Some(proxied))) => Some(Peer::new(
            Some(proxied.client),
            Some(proxied.local),
            peer.tls,
        )),
        Ok(Ok(None)) => Some(peer),
        Ok(Err(error)) => {
            tracing::debug!(?client, %error, "connection closed");
            None
        }
        Err(_) => {
            tracing::debug!(?client, "no PROXY header in time: connection closed");
            None
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
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}
