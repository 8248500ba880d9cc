//! The front's side of a WSGI target: the worker processes, their sockets, dispatch and supervision.
//!
//! A supervisor thread (its own small tokio runtime) spawns `workers` processes (this binary, in worker
//! mode), accepts their connections on a private Unix socket, restarts crashed ones with backoff, and
//! kills one whose request runs past `timeout`. Each worker opens one connection (a lane) per
//! event-loop thread; an event loop takes its lane to a worker on first use and writes and reads it
//! itself, so a request and its response never cross to another front thread. Event loops dispatch
//! requests to the least-loaded live worker.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode};
use rustc_hash::FxHashMap;
use thread_local::ThreadLocal;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::frame::{self, Kind};
use super::worker::EXIT_APP_LOAD_FAILED;
use super::{WORKER_ENV, WorkerSpec, inbox, transport};
use crate::body::Body;
use crate::error::HttpError;

/// What a worker said about one request.
#[derive(Debug)]
enum Event {
    /// A whole small response whose head, body and end arrived in one read: one hand-off, no stream.
    Complete(u16, HeaderMap, Bytes),
    Start(u16, HeaderMap),
    Body(Bytes),
    End,
    Error(String),
    /// The worker died or was killed.
    Gone,
}

/// One event loop's connection to one worker: frames out, and the requests waiting for frames back.
/// A task on that event loop reads it, so a response reaches its request on the same thread.
#[derive(Debug)]
struct Lane {
    frames: transport::Sender,
    /// Requests waiting for frames, by stream id (ours, sequential: a fast hash is safe).
    streams: Mutex<FxHashMap<u32, inbox::Sender<Event>>>,
    next_stream: AtomicU32,
}

impl Lane {
    /// Takes over an accepted lane socket on the calling event loop and starts reading it.
    fn adopt(socket: std::os::unix::net::UnixStream) -> std::io::Result<Arc<Lane>> {
        socket.set_nonblocking(true)?;
        let (frames, mut receiver) = transport::over_socket(UnixStream::from_std(socket)?);
        let lane = Arc::new(Lane {
            frames,
            streams: Mutex::new(FxHashMap::default()),
            next_stream: AtomicU32::new(1),
        });
        let reading = Arc::clone(&lane);
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            if let Err(e) = read_frames(&mut receiver, &mut buf, &reading).await {
                tracing::debug!(error = %e, "worker lane closed");
            }
            // The worker is gone (its supervisor sees it exit): whatever waits on this lane fails.
            reading.fail_all();
        });
        Ok(lane)
    }

    fn send(&self, kind: Kind, stream: u32, payload: &[u8]) {
        let mut buf = Vec::with_capacity(frame::HEADER_LEN + payload.len());
        frame::write_frame(&mut buf, kind, stream, payload);
        self.frames.send(buf);
    }

    fn open_stream(&self) -> (u32, inbox::Receiver<Event>) {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = inbox::inbox();
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(id, tx);
        }
        (id, rx)
    }

    /// Forgets a stream; `false` if it was already gone (failed with its worker).
    fn close_stream(&self, id: u32) -> bool {
        self.streams
            .lock()
            .ok()
            .and_then(|mut s| s.remove(&id))
            .is_some()
    }

    fn deliver(&self, id: u32, event: Event) {
        if let Some(tx) = self.streams.lock().ok().as_ref().and_then(|s| s.get(&id)) {
            tx.send(event);
        }
    }

    /// Tells every request on this lane that the worker is gone.
    fn fail_all(&self) {
        let streams: Vec<_> = self
            .streams
            .lock()
            .map(|mut s| s.drain().collect())
            .unwrap_or_default();
        for (_, tx) in streams {
            tx.send(Event::Gone);
        }
    }
}

/// A live worker process, as the event loops see it.
#[derive(Debug)]
struct Worker {
    pid: u32,
    /// Lane sockets no event loop has taken yet.
    spare: Mutex<Vec<std::os::unix::net::UnixStream>>,
    /// Each event loop's lane to this worker.
    lanes: ThreadLocal<Arc<Lane>>,
    in_flight: AtomicUsize,
    alive: AtomicBool,
    kill: CancellationToken,
    /// Requests handed to this worker so far.
    served: AtomicU64,
    /// Recycle after this many requests (0: never).
    max_requests: u64,
    /// Fired when `max_requests` is reached: the supervisor starts a replacement, then drains this one.
    retire: CancellationToken,
}

impl Worker {
    /// The calling event loop's lane, taken from the spares on first use. A thread beyond the lanes
    /// the worker opened (none in practice: there is one per event loop) borrows another's.
    fn lane(&self) -> Result<Arc<Lane>, HttpError> {
        if let Some(lane) = self.lanes.get() {
            return Ok(Arc::clone(lane));
        }
        let spare = self.spare.lock().ok().and_then(|mut s| s.pop());
        match spare {
            Some(socket) => {
                let lane = Lane::adopt(socket).map_err(|e| {
                    tracing::error!(pid = self.pid, error = %e, "cannot use a worker connection");
                    HttpError::BadGateway
                })?;
                Ok(Arc::clone(self.lanes.get_or(|| lane)))
            }
            None => self
                .lanes
                .iter()
                .next()
                .cloned()
                .ok_or(HttpError::BadGateway),
        }
    }

    /// Marks the worker dead and tells every request on it.
    fn fail_all(&self) {
        self.alive.store(false, Ordering::Release);
        for lane in self.lanes.iter() {
            lane.fail_all();
        }
    }
}

/// Settings of one pool, from the target's configuration.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Target name, for logs.
    pub name: String,
    /// Worker processes.
    pub workers: usize,
    /// Longest a request may run.
    pub timeout: Duration,
    /// Requests waiting beyond those the threads are running; more get 503 at once.
    pub backlog: usize,
    /// What each worker is told (its id is filled in per spawn).
    pub spec: WorkerSpec,
    /// Extra environment for the workers.
    pub env: Vec<(String, String)>,
    /// Recycle a worker after this many requests (0: never).
    pub max_requests: u64,
    /// Up to this many more, chosen at random per worker, so workers do not all recycle at once.
    pub max_requests_jitter: u64,
    /// How long a retiring worker may take to finish its requests before it is killed.
    pub graceful_timeout: Duration,
}

/// Why a pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Setting up the socket or thread failed.
    #[error("cannot start the worker pool: {0}")]
    Io(#[from] std::io::Error),
    /// A worker exited while loading the app (its traceback is on standard error).
    #[error("the WSGI app {app:?} failed to load in a worker (see the error above)")]
    AppLoad {
        /// `module:callable`.
        app: String,
    },
    /// A worker did not come up.
    #[error("a worker did not start: {0}")]
    Start(String),
}

/// A running pool of Python workers.
#[derive(Debug)]
pub struct Pool {
    shared: Arc<Shared>,
    guard: Arc<PoolGuard>,
}

/// Keeps a pool's workers running while anything still uses them: the pool itself, and every
/// response still streaming from it (after a reload, the old pool lives until its last response ends).
#[derive(Debug)]
struct PoolGuard {
    shutdown: CancellationToken,
    _socket_dir: tempfile::TempDir,
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Debug)]
struct Shared {
    config: PoolConfig,
    slots: Vec<Mutex<Option<Arc<Worker>>>>,
    cursor: AtomicUsize,
    changed: Notify,
    queue: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Pool {
    /// Spawns the workers and waits until each has loaded the app and connected.
    pub fn start(config: PoolConfig) -> Result<Pool, PoolError> {
        let socket_dir = tempfile::Builder::new().prefix("gatehouse-").tempdir()?;
        let socket_path = socket_dir.path().join("workers.sock");
        let threads = config.spec.threads.max(1);
        let shared = Arc::new(Shared {
            slots: (0..config.workers).map(|_| Mutex::new(None)).collect(),
            cursor: AtomicUsize::new(0),
            changed: Notify::new(),
            queue: Arc::new(Semaphore::new(config.workers * threads + config.backlog)),
            shutdown: CancellationToken::new(),
            config,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let supervisor = Supervisor {
            shared: Arc::clone(&shared),
            socket: socket_path,
        };
        std::thread::Builder::new()
            .name(format!("wsgi-{}", shared.config.name))
            .spawn(move || runtime.block_on(supervisor.run(ready_tx)))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Pool {
                guard: Arc::new(PoolGuard {
                    shutdown: shared.shutdown.clone(),
                    _socket_dir: socket_dir,
                }),
                shared,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PoolError::Start("the supervisor thread stopped".into())),
        }
    }

    /// Sends a request frame (built with [`frame::HEADER_LEN`] bytes of room for its header) to a
    /// worker and returns the response head with a streaming body.
    pub async fn dispatch(&self, mut request: Vec<u8>) -> Result<Response<Body>, HttpError> {
        let permit = Arc::clone(&self.shared.queue)
            .try_acquire_owned()
            .map_err(|_| HttpError::ServiceUnavailable)?;
        let deadline = tokio::time::Instant::now() + self.shared.config.timeout;
        // Almost always a worker is up: no timer for the wait then.
        let worker = match self.try_pick() {
            Some(worker) => worker,
            None => tokio::time::timeout_at(deadline, self.pick())
                .await
                .map_err(|_| HttpError::ServiceUnavailable)?,
        };
        let lane = worker.lane()?;
        let served = worker.served.fetch_add(1, Ordering::AcqRel) + 1;
        if worker.max_requests > 0 && served == worker.max_requests {
            worker.retire.cancel();
        }
        let (id, mut events) = lane.open_stream();
        worker.in_flight.fetch_add(1, Ordering::AcqRel);
        frame::seal(&mut request, Kind::Request, id);
        lane.frames.send(request);
        let mut stream = ResponseStream {
            worker,
            lane,
            id,
            events: None,
            _permit: permit,
            deadline,
            timer: None,
            done: false,
            timeout: self.shared.config.timeout,
            _pool: Arc::clone(&self.guard),
        };
        // The timer lives in this future (no allocation); a streamed body gets its own below.
        let Ok(first) = tokio::time::timeout_at(deadline, events.recv()).await else {
            stream.timed_out();
            return Err(HttpError::GatewayTimeout);
        };
        match first {
            Some(Event::Complete(status, headers, body)) => {
                stream.done = true;
                build_response(status, headers, Body::full(body))
            }
            Some(Event::Start(status, headers)) => {
                stream.events = Some(events);
                build_response(status, headers, Body::Stream(Box::new(stream)))
            }
            Some(Event::Error(_)) => {
                stream.done = true;
                Err(HttpError::Internal)
            }
            Some(Event::End | Event::Body(_)) => {
                stream.done = true;
                tracing::error!(pool = %self.shared.config.name, "worker sent a body before its headers");
                Err(HttpError::BadGateway)
            }
            Some(Event::Gone) | None => {
                stream.done = true;
                Err(HttpError::BadGateway)
            }
        }
    }

    /// The live worker with the fewest requests in flight, waiting for one while none is up.
    async fn pick(&self) -> Arc<Worker> {
        loop {
            let notified = self.shared.changed.notified();
            if let Some(worker) = self.try_pick() {
                return worker;
            }
            notified.await;
        }
    }

    /// The live worker with the fewest requests in flight, if any is up. Ties go round-robin, so
    /// an idle pool spreads requests over all its workers.
    fn try_pick(&self) -> Option<Arc<Worker>> {
        let slots = &self.shared.slots;
        let start = self.shared.cursor.fetch_add(1, Ordering::Relaxed);
        (0..slots.len())
            .filter_map(|i| {
                slots[(start + i) % slots.len()]
                    .lock()
                    .ok()
                    .and_then(|w| w.clone())
            })
            .filter(|w| w.alive.load(Ordering::Acquire))
            .min_by_key(|w| w.in_flight.load(Ordering::Acquire))
    }
}

fn build_response(
    status: u16,
    headers: HeaderMap,
    body: Body,
) -> Result<Response<Body>, HttpError> {
    let status = StatusCode::from_u16(status).map_err(|_| HttpError::BadGateway)?;
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// A response body arriving from a worker; credits the worker as the client takes it.
#[derive(Debug)]
pub struct ResponseStream {
    worker: Arc<Worker>,
    lane: Arc<Lane>,
    id: u32,
    events: Option<inbox::Receiver<Event>>,
    _permit: OwnedSemaphorePermit,
    deadline: tokio::time::Instant,
    /// The deadline's timer, made when the body first has to wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
    timeout: Duration,
    _pool: Arc<PoolGuard>,
}

impl ResponseStream {
    fn timed_out(&mut self) {
        tracing::error!(pid = self.worker.pid, timeout = ?self.timeout, "request timed out: killing its worker");
        self.worker.kill.cancel();
        self.done = true;
    }
}

impl crate::body::ChunkStream for ResponseStream {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let Some(events) = self.events.as_mut() else {
            return Poll::Ready(None);
        };
        match events.poll_recv(cx) {
            Poll::Ready(Some(Event::Body(bytes))) => {
                self.lane
                    .send(Kind::Credit, self.id, &(bytes.len() as u32).to_be_bytes());
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Event::End)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Event::Error(message))) => {
                self.done = true;
                Poll::Ready(Some(Err(std::io::Error::other(format!(
                    "the app failed mid-response: {message}"
                )))))
            }
            Poll::Ready(Some(Event::Start(..) | Event::Complete(..) | Event::Gone) | None) => {
                self.done = true;
                Poll::Ready(Some(Err(std::io::Error::other(
                    "the worker died mid-response",
                ))))
            }
            Poll::Pending => {
                let deadline = self.deadline;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.timed_out();
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "request timed out mid-response",
                    ))));
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        if !self.done && self.worker.alive.load(Ordering::Acquire) {
            // The client went away first: let the worker stop and call close().
            self.lane.send(Kind::Cancel, self.id, b"");
        }
        if self.lane.close_stream(self.id) {
            self.worker.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Spawns waiting for their worker's connections (its lanes), by worker id.
type Waiting = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<UnixStream>>>>;

/// Spawns, connects, watches and restarts the workers.
struct Supervisor {
    shared: Arc<Shared>,
    socket: PathBuf,
}

/// Worker ids handed out per spawn, so a late connection from a dead worker is never mistaken.
static NEXT_WORKER_ID: AtomicU32 = AtomicU32::new(1);

impl Supervisor {
    async fn run(self, ready: std::sync::mpsc::Sender<Result<(), PoolError>>) {
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
        for (slot, running) in started {
            let shared = Arc::clone(&self.shared);
            let waiting = Arc::clone(&waiting);
            let socket = self.socket.clone();
            tokio::spawn(async move {
                Supervisor { shared, socket }
                    .keep_alive(slot, running, waiting)
                    .await
            });
        }
        self.shared.shutdown.cancelled().await;
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
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                }
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
            alive: AtomicBool::new(true),
            kill: CancellationToken::new(),
            served: AtomicU64::new(0),
            max_requests: match config.max_requests {
                0 => 0,
                n => n + jitter(config.max_requests_jitter),
            },
            retire: CancellationToken::new(),
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
    worker: Arc<Worker>,
    child: tokio::process::Child,
}

impl Running {
    /// Watches the worker until it exits, is killed or the pool stops; or, once it has reached
    /// `max_requests` (reported through `retiring`) and its replacement is up (`replaced`), until its
    /// requests in flight are done or `graceful` has passed.
    async fn supervise(
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
                () = tokio::time::sleep(Duration::from_millis(20)), if draining_until.is_some() => {
                    let done = worker.in_flight.load(Ordering::Acquire) == 0;
                    if done || draining_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
                        break if done { "retired".to_string() } else { "retired (graceful_timeout passed)".to_string() };
                    }
                }
            }
        };
        worker.fail_all();
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if reason.starts_with("retired") {
            tracing::info!(pid = worker.pid, %reason, "old worker stopped");
        } else if !shutdown.is_cancelled() {
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

/// Reads and delivers frames until the connection ends. Cancel-safe: unread bytes stay in `buf`.
async fn read_frames(
    receiver: &mut transport::Receiver,
    buf: &mut BytesMut,
    lane: &Lane,
) -> std::io::Result<()> {
    loop {
        if receiver.recv(buf).await? == 0 {
            return Ok(());
        }
        // Responses whose start, body and end all came in this read go over as one event.
        let mut whole: Vec<(u32, u16, HeaderMap, Vec<Bytes>)> = Vec::new();
        while let Some(f) = frame::take_frame(buf)? {
            let open = whole.iter().position(|(id, ..)| *id == f.stream);
            match (f.kind, open) {
                (Kind::Start, _) => match frame::decode_start(f.payload) {
                    Ok((status, headers)) => whole.push((f.stream, status, headers, Vec::new())),
                    Err(e) => lane.deliver(f.stream, Event::Error(e.to_string())),
                },
                (Kind::Body, Some(i)) => whole[i].3.push(f.payload),
                (Kind::End, Some(i)) => {
                    let (id, status, headers, parts) = whole.swap_remove(i);
                    lane.deliver(id, Event::Complete(status, headers, concat(parts)));
                }
                (Kind::Error, Some(i)) => {
                    // Started but failed: the client sees the start, then the failure, as if streamed.
                    let (id, status, headers, parts) = whole.swap_remove(i);
                    deliver_started(lane, id, status, headers, parts);
                    lane.deliver(
                        id,
                        Event::Error(String::from_utf8_lossy(&f.payload).into_owned()),
                    );
                }
                (Kind::Body, None) => lane.deliver(f.stream, Event::Body(f.payload)),
                (Kind::End, None) => lane.deliver(f.stream, Event::End),
                (Kind::Error, None) => lane.deliver(
                    f.stream,
                    Event::Error(String::from_utf8_lossy(&f.payload).into_owned()),
                ),
                (other, _) => tracing::warn!(?other, "unexpected frame from a lane"),
            }
        }
        // Responses still going on: what came so far is streamed.
        for (id, status, headers, parts) in whole {
            deliver_started(lane, id, status, headers, parts);
        }
    }
}

fn deliver_started(lane: &Lane, id: u32, status: u16, headers: HeaderMap, parts: Vec<Bytes>) {
    lane.deliver(id, Event::Start(status, headers));
    for part in parts {
        lane.deliver(id, Event::Body(part));
    }
}

fn concat(mut parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for part in parts {
                all.extend_from_slice(&part);
            }
            all.freeze()
        }
    }
}

/// Accepts worker connections and hands each to the spawn waiting for its hello.
async fn accept_workers(listener: UnixListener, waiting: Waiting, shutdown: CancellationToken) {
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
