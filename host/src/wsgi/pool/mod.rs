//! The front's side of a WSGI target: the worker processes, their sockets, dispatch and supervision.
//!
//! A supervisor thread (its own small tokio runtime) spawns `workers` processes (this binary, in worker
//! mode), accepts their connections on a private Unix socket, restarts crashed ones with backoff, and
//! kills one whose request runs past `timeout`. Each worker opens one connection (a lane) per
//! event-loop thread; an event loop takes its lane to a worker on first use and writes and reads it
//! itself, so a request and its response never cross to another front thread. Event loops dispatch
//! requests to the least-loaded live worker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Response;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::WorkerSpec;
use super::frame::{self, Kind};
use crate::body::{Body, LazyDeadline};
use crate::error::HttpError;
use crate::metrics::WsgiMetrics;

mod ahead;
mod buffer;
mod lane;
mod stream;
mod supervisor;

use lane::{Event, Held, Worker};
use stream::build_response;
use supervisor::Supervisor;

pub use stream::ResponseStream;
pub use supervisor::{begin_shutdown, stop_all};

/// Settings of one pool, from the target's configuration.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Target name, for logs.
    pub name: String,
    /// Worker processes.
    pub workers: usize,
    /// Longest a request may run in the app (to its response head; then between chunks).
    pub timeout: Duration,
    /// Longest a request may wait in the front for a free thread; past it, 503.
    pub queue_timeout: Duration,
    /// Requests waiting beyond those the threads are running; more get 503 at once.
    pub backlog: usize,
    /// Requests a worker may hold beyond its threads (see [`ahead`]).
    pub prefetch: usize,
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
    /// What the pool counts into.
    pub metrics: WsgiMetrics,
    /// Response bytes the front holds in memory per response before spilling to a file.
    pub response_buffer: u64,
    /// Response bytes the front holds in a temporary file per response (0: none).
    pub response_spool: u64,
    /// The process's budget for buffered bodies.
    pub budget: Arc<crate::request_body::BodyBudget>,
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

/// How one worker's try at a request ended.
enum Attempt {
    /// The app answered (or failed in a way the client hears about).
    Answered(Response<Body>),
    /// Sent ahead, and its worker died before beginning it: the request, to send again.
    NeverBegun(Vec<u8>),
}

/// Counts a request waiting in the front's queue until dropped.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    freed: &'a Notify,
    /// It got a thread; otherwise (its client left, or `queue_timeout`) a wake-up meant for it
    /// is passed on to the next in line.
    picked: bool,
}

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize, freed: &'a Notify) -> Waiting<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting {
            count,
            freed,
            picked: false,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        if !self.picked {
            self.freed.notify_one();
        }
    }
}

/// A request admitted to the pool (within `workers x threads + backlog`), counted in
/// `gatehouse_wsgi_requests_in_flight` until dropped.
#[derive(Debug)]
pub(super) struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Admitted {
    fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        gauge: &prometheus_client::metrics::gauge::Gauge,
    ) -> Admitted {
        gauge.inc();
        Admitted {
            _permit: permit,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gauge.dec();
    }
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
    /// A thread became free (a request finished).
    freed: Arc<Notify>,
    /// Requests waiting in the front for a free thread.
    waiting: AtomicUsize,
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
            freed: Arc::new(Notify::new()),
            waiting: AtomicUsize::new(0),
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
        let thread = std::thread::Builder::new()
            .name(format!("wsgi-{}", shared.config.name))
            .spawn(move || runtime.block_on(supervisor.run(ready_tx)))?;
        supervisor::register(shared.shutdown.clone(), thread);
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
        // A request sent ahead whose worker died before it began never reached the app: it goes
        // to another worker, and to another again if that one dies too, for `queue_timeout` from
        // the first death. Not for a number of tries: a request not begun cannot have caused the
        // deaths (other requests did: a crash, a hang past `timeout`), and under such faults a
        // few in a row are not rare.
        let mut give_up: Option<tokio::time::Instant> = None;
        loop {
            match self.attempt(request, give_up.is_some()).await? {
                Attempt::Answered(response) => return Ok(response),
                Attempt::NeverBegun(again) => {
                    let now = tokio::time::Instant::now();
                    let until = *give_up.get_or_insert(now + self.shared.config.queue_timeout);
                    if now >= until {
                        tracing::warn!(pool = %self.shared.config.name, queue_timeout = ?self.shared.config.queue_timeout, "workers kept dying before beginning a request: 503");
                        return Err(HttpError::ServiceUnavailable);
                    }
                    request = again;
                }
            }
        }
    }

    /// One worker's try at a request (`retry`: after one whose worker died before beginning it).
    async fn attempt(&self, mut request: Vec<u8>, retry: bool) -> Result<Attempt, HttpError> {
        let queue = Arc::clone(&self.shared.queue);
        let permit = if retry {
            // It was admitted once: it waits for its place again rather than failing.
            tokio::time::timeout(self.shared.config.queue_timeout, queue.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            queue.try_acquire_owned().ok()
        };
        let permit = Admitted::new(
            permit.ok_or(HttpError::ServiceUnavailable)?,
            &self.shared.config.metrics.in_flight,
        );
        // A request goes to a worker only when one of its threads is free (or as one sent ahead:
        // see `ahead`); until then it waits here, in arrival order, at most `queue_timeout`
        // (503). Almost always a thread is free and nobody waits: no timer then.
        let first_in_line = self.shared.waiting.load(Ordering::Acquire) == 0;
        let worker = match self.try_pick().filter(|_| first_in_line) {
            Some(worker) => worker,
            None => tokio::time::timeout(self.shared.config.queue_timeout, self.pick())
                .await
                .map_err(|_| {
                    tracing::warn!(pool = %self.shared.config.name, queue_timeout = ?self.shared.config.queue_timeout, "no thread free within queue_timeout: 503");
                    HttpError::ServiceUnavailable
                })?,
        };
        let lane = worker.lane()?;
        let served = worker.served.fetch_add(1, Ordering::AcqRel) + 1;
        if worker.max_requests > 0 && served == worker.max_requests {
            worker.retire.cancel();
        }
        let config = &self.shared.config;
        let buffer = (config.response_buffer > 0 || config.response_spool > 0).then(|| {
            buffer::ResponseBuffer::new(
                config.response_buffer,
                config.response_spool,
                &config.budget,
            )
        });
        // The app's time starts when a thread takes the request: now, or when the worker says
        // it began one sent ahead.
        let timeout = config.timeout;
        let due = worker
            .ahead
            .admit(&worker.in_flight, config.spec.threads.max(1), timeout);
        let (id, mut events) = lane.open_stream(buffer.clone(), due.clone());
        lane.hold(
            id,
            Held {
                _permit: permit,
                worker: Arc::clone(&worker),
                due: due.clone(),
                freed: Arc::clone(&self.shared.freed),
            },
        );
        if !worker.alive.load(Ordering::Acquire) {
            // It died since it was picked, perhaps after its lanes failed what they held: this
            // stream would hear nothing. Nothing was sent.
            lane.close_stream(id);
            drop(lane.forget(id));
            return Ok(Attempt::NeverBegun(request));
        }
        let again = due.sent_ahead().then(|| request.clone());
        let kind = match due.sent_ahead() {
            true => Kind::RequestAhead,
            false => Kind::Request,
        };
        frame::seal(&mut request, kind, id);
        lane.frames.send(request);
        let mut stream = ResponseStream {
            worker,
            lane,
            id,
            events: None,
            deadline: LazyDeadline::new(tokio::time::Instant::now() + timeout),
            done: false,
            timeout,
            buffer,
            from_file: false,
            owed: 0,
            left: None,
            _pool: Arc::clone(&self.guard),
        };
        // The timer lives in this future (no allocation); a streamed body gets its own below.
        // A request sent ahead waits at most `queue_timeout` for its worker to begin it (its
        // time in the worker's socket is queue time); then it is withdrawn, and the worker
        // either says it never began it or that it just did.
        let sent = tokio::time::Instant::now();
        let mut withdrawn: Option<tokio::time::Instant> = None;
        let first = loop {
            let deadline = match (due.deadline(), withdrawn) {
                (Some(deadline), _) => deadline,
                (None, None) => sent + config.queue_timeout,
                (None, Some(at)) => at + timeout,
            };
            match tokio::time::timeout_at(deadline, events.recv()).await {
                // Its clock starts now: wait again, with its deadline.
                Ok(Some(Event::Begun)) => continue,
                Ok(first) => break first,
                Err(_) => {}
            }
            let now = tokio::time::Instant::now();
            match (due.deadline(), withdrawn) {
                (Some(deadline), _) if deadline <= now => {
                    stream.timed_out();
                    return Err(HttpError::GatewayTimeout);
                }
                (Some(_), _) => {}
                (None, None) => {
                    tracing::warn!(pool = %config.name, queue_timeout = ?config.queue_timeout, "a request sent ahead did not begin within queue_timeout: withdrawn");
                    stream.lane.send(Kind::Withdraw, id, b"");
                    withdrawn = Some(now);
                }
                (None, Some(_)) => {
                    // No word from the worker about it: whether it ran is unknown.
                    stream.done = true;
                    return Err(HttpError::BadGateway);
                }
            }
        };
        if let Some(deadline) = due.deadline() {
            stream.deadline.set(deadline);
        }
        stream.done = true;
        let response = match first {
            Some(Event::Complete(status, headers, body)) => {
                build_response(status, headers, Body::full(body))
            }
            Some(Event::Start(status, headers)) => {
                stream.done = false;
                // Only an unambiguous length counts: with two, hyper refuses the head, and a
                // worker still sending by the other one must hear that its client is gone.
                let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
                stream.left = match (lengths.next(), lengths.next()) {
                    (Some(v), None) => v.to_str().ok().and_then(|v| v.parse().ok()),
                    _ => None,
                };
                stream.events = Some(events);
                build_response(status, headers, Body::Stream(Box::new(stream)))
            }
            // The worker's answer to our withdrawal: it never began it.
            Some(Event::Error(_)) if withdrawn.is_some() && due.deadline().is_none() => {
                Err(HttpError::ServiceUnavailable)
            }
            Some(Event::Error(_)) => Err(HttpError::Internal),
            Some(Event::Unusable(why)) => {
                tracing::error!(pool = %self.shared.config.name, "the app's response head is unusable: {why}");
                Err(HttpError::BadGateway)
            }
            Some(Event::End | Event::Body(_) | Event::Spilled | Event::Begun) => {
                tracing::error!(pool = %self.shared.config.name, "worker sent a body before its headers");
                Err(HttpError::BadGateway)
            }
            // Everything the worker wrote was read, and no `Begin` for this one: it never
            // reached the app.
            Some(Event::Gone { read_all: true }) if due.deadline().is_none() => {
                match (again, withdrawn) {
                    (Some(again), None) => return Ok(Attempt::NeverBegun(again)),
                    // It already waited `queue_timeout`.
                    (Some(_), Some(_)) => Err(HttpError::ServiceUnavailable),
                    (None, _) => Err(HttpError::BadGateway),
                }
            }
            // Otherwise whether it ran is unknown, as for any request in flight.
            Some(Event::Gone { .. }) | None => Err(HttpError::BadGateway),
        };
        response.map(Attempt::Answered)
    }

    /// A worker with a thread free, waiting in the front's queue (in arrival order: tokio's
    /// `Notify` wakes its oldest waiter, and a waiter keeps its place while it waits) while
    /// every thread is busy or no worker is up.
    async fn pick(&self) -> Arc<Worker> {
        // Behind others already in line, a newcomer does not look for a thread before it is
        // woken for one: the thread freed for the head of the line is not taken from under it
        // (that sent the oldest waiter to the back and gave the queue a long tail).
        let mut behind_others = self.shared.waiting.load(Ordering::Acquire) > 0;
        let mut waiting = Waiting::new(&self.shared.waiting, &self.shared.freed);
        let freed = self.shared.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        loop {
            let changed = self.shared.changed.notified();
            if !std::mem::take(&mut behind_others) {
                if let Some(worker) = self.try_pick() {
                    waiting.picked = true;
                    return worker;
                }
            }
            tokio::select! {
                () = &mut freed => {
                    // Woken for a thread someone else took: in line again (at the back).
                    freed.set(self.shared.freed.notified());
                    freed.as_mut().enable();
                }
                () = changed => {}
            }
        }
    }

    /// Workers up and taking requests.
    pub fn live_workers(&self) -> usize {
        self.shared
            .slots
            .iter()
            .filter(|slot| {
                slot.lock()
                    .ok()
                    .and_then(|w| w.clone())
                    .is_some_and(|w| w.alive.load(Ordering::Acquire))
            })
            .count()
    }

    /// The live worker with the fewest requests in flight among those with a thread free, or
    /// else with room for one sent ahead (`prefetch`) and busy with fresh work (see [`ahead`]),
    /// if any. Ties go round-robin, so an idle pool spreads requests over all its workers.
    fn try_pick(&self) -> Option<Arc<Worker>> {
        let slots = &self.shared.slots;
        let threads = self.shared.config.spec.threads.max(1);
        let room = threads + self.shared.config.prefetch;
        let start = self.shared.cursor.fetch_add(1, Ordering::Relaxed);
        (0..slots.len())
            .filter_map(|i| {
                slots[(start + i) % slots.len()]
                    .lock()
                    .ok()
                    .and_then(|w| w.clone())
            })
            .filter(|w| w.alive.load(Ordering::Acquire))
            .map(|w| (w.in_flight.load(Ordering::Acquire), w))
            .filter(|(busy, w)| *busy < threads || (*busy < room && w.ahead.fresh()))
            .min_by_key(|(busy, _)| *busy)
            .map(|(_, w)| w)
    }
}
