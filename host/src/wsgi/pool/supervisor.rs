//! The supervisor: spawns, connects, watches, restarts and recycles the workers.

use super::ahead::Ahead;
use super::lane::Worker;
use super::{PoolError, Shared};

use super::super::WORKER_ENV;
use super::super::frame::{self, Kind};
use super::super::worker::EXIT_APP_LOAD_FAILED;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thread_local::ThreadLocal;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Spawns waiting for their worker's connections (its lanes), by worker id.
type Waiting = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<UnixStream>>>>;

/// Spawns, connects, watches and restarts the workers.
pub(super) struct Supervisor {
    pub(super) shared: Arc<Shared>,
    pub(super) socket: PathBuf,
}

/// Worker ids handed out per spawn, so a late connection from a dead worker is never mistaken.
pub(super) static NEXT_WORKER_ID: AtomicU32 = AtomicU32::new(1);

/// Every pool's supervisor thread with its stop token, so the server can stop and reap all of
/// them (reloaded-away pools included) before the process exits.
static POOLS: Mutex<Vec<(CancellationToken, std::thread::JoinHandle<()>)>> = Mutex::new(Vec::new());

/// The process is shutting down: workers that exit now (their lanes closing with the event
/// loops) are neither restarted nor reported as crashed.
static STOPPING: AtomicBool = AtomicBool::new(false);

pub(super) fn register(stop: CancellationToken, thread: std::thread::JoinHandle<()>) {
    let mut pools = POOLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Pools reloaded away that have already stopped need no joining.
    pools.retain(|(_, t)| !t.is_finished());
    pools.push((stop, thread));
}

/// The server begins its shutdown: worker exits from here on are expected.
pub fn begin_shutdown() {
    STOPPING.store(true, Ordering::Release);
}

fn stopping() -> bool {
    STOPPING.load(Ordering::Acquire)
}

/// Stops every pool and waits until each supervisor has stopped and reaped its workers.
pub fn stop_all() {
    begin_shutdown();
    let pools: Vec<_> = std::mem::take(
        &mut *POOLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for (stop, _) in &pools {
        stop.cancel();
    }
    for (_, thread) in pools {
        let _ = thread.join();
    }
}

impl Supervisor {
    pub(super) async fn run(self, ready: std::sync::mpsc::Sender<Result<(), PoolError>>) {
        let listener = match UnixListener::bind(&self.socket) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let waiting: Waiting = Arc::default();
        tokio::spawn(accept_workers(
            listener,
            Arc::clone(&waiting),
            self.shared.shutdown.clone(),
        ));

        // All workers import the app at the same time: startup (and reload) waits for the slowest
        // import, not for the sum of them.
        let first = futures_util::future::join_all(
            (0..self.shared.slots.len()).map(|slot| self.spawn(slot, &waiting)),
        )
        .await;
        let mut started = Vec::new();
        for (slot, result) in first.into_iter().enumerate() {
            match result {
                Ok(running) => started.push((slot, running)),
                Err(e) => {
                    self.shared.shutdown.cancel();
                    let _ = ready.send(Err(e));
                    return;
                }
            }
        }
        tracing::info!(pool = %self.shared.config.name, workers = started.len(), "WSGI workers ready");
        let _ = ready.send(Ok(()));
        let mut watchers = Vec::new();
        for (slot, running) in started {
            let shared = Arc::clone(&self.shared);
            let waiting = Arc::clone(&waiting);
            let socket = self.socket.clone();
            watchers.push(tokio::spawn(async move {
                Supervisor { shared, socket }
                    .keep_alive(slot, running, waiting)
                    .await
            }));
        }
        self.shared.shutdown.cancelled().await;
        // Each watcher stops its worker and waits for it to exit: none outlives the pool.
        for watcher in watchers {
            let _ = watcher.await;
        }
    }

    /// Watches one slot's worker and replaces it whenever it exits (with backoff on quick deaths) or
    /// retires after `max_requests` (replacement first, then the old one drains: nothing is dropped).
    async fn keep_alive(self, slot: usize, mut running: Running, waiting: Waiting) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let worker = Arc::clone(&running.worker);
            let (retiring_tx, retiring_rx) = oneshot::channel();
            let (replaced_tx, replaced_rx) = oneshot::channel();
            let graceful = self.shared.config.graceful_timeout;
            let mut supervised = tokio::spawn(running.supervise(
                self.shared.shutdown.clone(),
                retiring_tx,
                replaced_rx,
                graceful,
            ));
            let (retiring, finished) = tokio::select! {
                r = retiring_rx => (r.is_ok(), false),
                _ = &mut supervised => (false, true),
            };
            if !retiring {
                if !finished {
                    let _ = supervised.await;
                }
                // Died (or the pool stopped): clear the slot unless a replacement already took it.
                if let Ok(mut s) = self.shared.slots[slot].lock() {
                    if s.as_ref().is_some_and(|w| Arc::ptr_eq(w, &worker)) {
                        *s = None;
                    }
                }
                if self.shared.shutdown.is_cancelled() {
                    return;
                }
                if stopping() {
                    // The process is stopping: wait for the pool's stop instead of a new worker.
                    self.shared.shutdown.cancelled().await;
                    return;
                }
                // Backoff is for crash loops (an app that dies on import or on its first
                // request); a worker that finished requests before dying is replaced at once, as
                // Gunicorn does, so a request that kills workers costs only itself.
                if started.elapsed() > Duration::from_secs(10)
                    || worker.finished.load(Ordering::Acquire) >= 1
                {
                    backoff = Duration::from_millis(100);
                }
            } else if worker.timed_out.load(Ordering::Acquire) {
                tracing::info!(pool = %self.shared.config.name, pid = worker.pid, "replacing a worker with a request past timeout once its other requests finish");
            } else {
                tracing::info!(pool = %self.shared.config.name, pid = worker.pid, "worker reached max_requests: replacing it");
            }
            loop {
                if !retiring {
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.shared.shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                match self.spawn(slot, &waiting).await {
                    Ok(next) => {
                        let cause = if worker.timed_out.load(Ordering::Acquire) {
                            "timeout"
                        } else if retiring {
                            "max_requests"
                        } else {
                            "crash"
                        };
                        self.shared.config.metrics.restarted(cause);
                        running = next;
                        // The old worker (if retiring) now gets no new requests and drains.
                        let _ = replaced_tx.send(());
                        break;
                    }
                    Err(e) => {
                        tracing::error!(pool = %self.shared.config.name, error = %e, "cannot start a worker; retrying");
                        if retiring {
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {}
                                () = self.shared.shutdown.cancelled() => return,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
        }
    }

    /// Starts one worker and waits for it to connect (or to fail loading the app).
    async fn spawn(&self, slot: usize, waiting: &Waiting) -> Result<Running, PoolError> {
        let config = &self.shared.config;
        let worker_id = NEXT_WORKER_ID.fetch_add(1, Ordering::Relaxed);
        let mut spec = config.spec.clone();
        spec.worker_id = worker_id;
        spec.socket = self.socket.clone();
        let spec_json =
            serde_json::to_string(&spec).map_err(|e| PoolError::Start(e.to_string()))?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut w) = waiting.lock() {
            w.insert(worker_id, tx);
        }
        let exe = std::env::current_exe()?;
        let mut command = tokio::process::Command::new(exe);
        command
            .arg("__worker")
            .env(WORKER_ENV, spec_json)
            // The embedded interpreter finds its standard library under the chosen Python's base prefix.
            .env("PYTHONHOME", &spec.interpreter.base_prefix)
            .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let pid = child.id().unwrap_or(0);
        let lanes = spec.lanes.max(1);
        let all_lanes = async {
            let mut streams = Vec::with_capacity(lanes);
            while streams.len() < lanes {
                match rx.recv().await {
                    Some(stream) => streams.push(stream),
                    None => return Err(PoolError::Start("connection lost".into())),
                }
            }
            Ok(streams)
        };
        let connected = tokio::select! {
            streams = all_lanes => streams,
            status = child.wait() => {
                let status = status?;
                if status.code() == Some(i32::from(EXIT_APP_LOAD_FAILED)) {
                    Err(PoolError::AppLoad { app: spec.app.clone() })
                } else {
                    Err(PoolError::Start(format!("worker exited with {status} before connecting")))
                }
            }
            () = tokio::time::sleep(Duration::from_secs(60)) => Err(PoolError::Start("no connection within 60s".into())),
        };
        if let Ok(mut w) = waiting.lock() {
            w.remove(&worker_id);
        }
        let spare = connected?
            .into_iter()
            .map(UnixStream::into_std)
            .collect::<Result<Vec<_>, _>>()?;
        let worker = Arc::new(Worker {
            pid,
            spare: Mutex::new(spare),
            lanes: ThreadLocal::new(),
            in_flight: AtomicUsize::new(0),
            ahead: Ahead::default(),
            alive: Arc::new(AtomicBool::new(true)),
            kill: CancellationToken::new(),
            served: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            max_requests: match config.max_requests {
                0 => 0,
                n => n + jitter(config.max_requests_jitter),
            },
            retire: CancellationToken::new(),
            broken: CancellationToken::new(),
            threads: config.spec.threads.max(1),
            timed_out: AtomicBool::new(false),
        });
        if let Ok(mut s) = self.shared.slots[slot].lock() {
            *s = Some(Arc::clone(&worker));
        }
        self.shared.changed.notify_waiters();
        tracing::debug!(pool = %config.name, pid, "worker connected");
        Ok(Running { worker, child })
    }
}

/// A connected worker process.
struct Running {
    pub(super) worker: Arc<Worker>,
    pub(super) child: tokio::process::Child,
}

impl Running {
    /// Watches the worker until it exits, is killed or the pool stops; or, once it has reached
    /// `max_requests` (reported through `retiring`) and its replacement is up (`replaced`), until its
    /// requests in flight are done or `graceful` has passed.
    pub(super) async fn supervise(
        mut self,
        shutdown: CancellationToken,
        retiring: oneshot::Sender<()>,
        mut replaced: oneshot::Receiver<()>,
        graceful: Duration,
    ) {
        let worker = Arc::clone(&self.worker);
        let mut retiring = Some(retiring);
        let mut draining_until: Option<tokio::time::Instant> = None;
        let reason = loop {
            tokio::select! {
                status = self.child.wait() => break status.map_or_else(|e| e.to_string(), |s| format!("exited with {s}")),
                () = worker.kill.cancelled() => break "killed after a request timed out".to_string(),
                () = worker.broken.cancelled() => break "killed after its connection failed".to_string(),
                () = shutdown.cancelled() => break "stopped".to_string(),
                () = worker.retire.cancelled(), if retiring.is_some() => {
                    if let Some(tx) = retiring.take() {
                        let _ = tx.send(());
                    }
                }
                r = &mut replaced, if retiring.is_none() && draining_until.is_none() => {
                    if r.is_err() {
                        // The supervisor went away without a replacement: the pool is stopping.
                        break "stopped".to_string();
                    }
                    worker.alive.store(false, Ordering::Release);
                    draining_until = Some(tokio::time::Instant::now() + graceful);
                }
                // A request whose client left still has its `timeout`.
                () = tokio::time::sleep(Duration::from_secs(1)), if draining_until.is_none() => {
                    if worker.overdue(tokio::time::Instant::now()) {
                        tracing::error!(pid = worker.pid, "a request whose client left ran past timeout: replacing its worker");
                        worker.request_timed_out();
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(20)), if draining_until.is_some() => {
                    let done = worker.in_flight.load(Ordering::Acquire) == 0;
                    if done || draining_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
                        break if done { "retired".to_string() } else { "retired (graceful_timeout passed)".to_string() };
                    }
                }
            }
        };
        worker.alive.store(false, Ordering::Release);
        if reason == "stopped" {
            worker.fail_all();
            // A stop asks first (SIGTERM, as Gunicorn does), so the app's exit handlers run.
            let pid = self.child.id().and_then(|p| i32::try_from(p).ok());
            if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        // The process is gone: each lane's reader reads what it wrote to the end and fails the
        // requests left, knowing which requests sent ahead it began (those it did not may run
        // elsewhere). This is for a lane that something else holds open (a process the app forked).
        worker.lanes_read(Duration::from_millis(500)).await;
        worker.fail_all();
        if reason.starts_with("retired") {
            tracing::info!(pid = worker.pid, %reason, "old worker stopped");
        } else if !shutdown.is_cancelled() && !stopping() {
            tracing::warn!(pid = worker.pid, %reason, "worker gone; its requests in flight get 502, restarting it");
        }
    }
}

/// A pseudo-random number in `0..=max` (the jitter need not be cryptographic).
fn jitter(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos.wrapping_mul(2_654_435_761) ^ std::process::id()) % (max + 1)
}

/// Accepts worker connections and hands each to the spawn waiting for its hello.
pub(super) async fn accept_workers(
    listener: UnixListener,
    waiting: Waiting,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let waiting = Arc::clone(&waiting);
        tokio::spawn(async move {
            let mut hello = [0u8; frame::HEADER_LEN + 4];
            let read =
                tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut hello)).await;
            if !matches!(read, Ok(Ok(_))) || hello[4] != Kind::Hello as u8 {
                return;
            }
            let id = u32::from_be_bytes([hello[9], hello[10], hello[11], hello[12]]);
            let tx = waiting.lock().ok().and_then(|w| w.get(&id).cloned());
            if let Some(tx) = tx {
                let _ = tx.send(stream);
            }
        });
    }
}
