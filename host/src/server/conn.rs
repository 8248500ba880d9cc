//! One client connection: HTTP/1.1 or HTTP/2 through hyper, the keep-alive and send timers,
//! graceful close, protocol switches (tunnels), and parking.
//!
//! Parking: an HTTP/1.1 connection idle for [`PARK_AFTER`] hands its bytes back from hyper
//! (hyper's connection, its read and write buffers, are dropped) and drops every future it was
//! running. A plain TCP connection then leaves its task and tokio's reactor for the event loop's
//! parking lot ([`lot`]): one slab entry of about 300 bytes ([`Held`] and its [`Slot`]) beside
//! its shared state, so ten thousand idle keep-alive connections cost the kernel's socket state
//! and under 1 KiB each here, rather than hyper's buffers (tens of KiB each). Elsewhere (TLS,
//! Unix sockets) the task stays, as [`Parked`]: the same state, one keep-alive timer, and a wait
//! through the socket's own registration and the connection's close signal (no future stored
//! for either). Either way the next request starts a new stretch of serving on the same socket.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::config::Limits;
use crate::peer::Peer;
use crate::pipeline::{self, Activity, ConnCtx, LoggedBody, PlainListener};
use crate::sendfile::{FileSends, SendFile};
use crate::server::SharedGateway;
use crate::server::idle::{Connections, Registration};
use crate::server::io::{Park, Prefixed, sniff};
use crate::server::lot;
use crate::server::wire::WireGuard;

/// How long an HTTP/1.1 connection is idle before its hyper state is dropped.
pub const PARK_AFTER: Duration = Duration::from_millis(500);

/// How long a connection hyper ended on its own waits for the client's next bytes before it
/// closes, and how long it lingers at most (see [`linger`]; nginx's `lingering_timeout` and
/// `lingering_time`, shorter).
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
const LINGER_TIME: Duration = Duration::from_secs(10);

/// Most bytes a lingering connection reads and drops: room for a client to finish a body it
/// sends before it reads, without the server taking in a refused upload whole.
const LINGER_BYTES: usize = 1 << 20;

/// hyper's connection builders for a set of limits.
#[derive(Debug)]
pub struct Builders {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// The builders for a set of limits.
pub fn builder(limits: &Limits) -> Builders {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // The wire guard enforces the head timeout; hyper's would also cut idle keep-alive connections.
        .header_read_timeout(None)
        // hyper refuses buffers under 8 KiB; smaller head limits are enforced by the wire guard.
        .max_buf_size(limits.max_header_size.max(8192))
        .max_headers(limits.max_headers)
        // Queued writes: hyper hands body frames to the stream uncopied, which sending files
        // with sendfile relies on (`crate::sendfile`). For the same reason, never
        // `pipeline_flush`: it makes hyper copy frames into its own buffer.
        .writev(true)
        .keep_alive(true);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    Builders { http1, http2 }
}

/// The protocol a connection speaks, when TLS' ALPN already said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// `h2`.
    Http2,
    /// `http/1.1`.
    Http1,
}

/// The timers of a connection, copied out of its limits (a parked connection keeps nothing more).
#[derive(Debug, Clone, Copy)]
struct Timers {
    keepalive: Duration,
    send: Duration,
}

/// What a connection's task holds besides the byte stream.
struct Conn {
    ctx: Arc<ConnCtx>,
    /// Held for its drop: the connection leaves the registry when it closes.
    _registration: Registration,
    timers: Timers,
}

/// An HTTP/1.1 connection's byte stream: bytes hyper read ahead, in front of the wire guard (which
/// has seen them already), in front of bytes the protocol sniff read.
type Stream<IO> = Prefixed<WireGuard<Prefixed<IO>>>;

/// The request pipeline as hyper's service. Each request's future is boxed: hyper then keeps a
/// pointer, not the whole pipeline's state, per connection (and can hand the connection back
/// between requests, which needs an `Unpin` future).
#[derive(Clone)]
struct Service {
    gateway: SharedGateway,
    ctx: Arc<ConnCtx>,
}

type Handled = Result<hyper::Response<LoggedBody>, Infallible>;

thread_local! {
    /// Requests this event loop has started: its allocator trim runs only while it has none.
    static STARTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Requests started on this event loop's thread so far.
pub fn requests_started() -> u64 {
    STARTED.with(std::cell::Cell::get)
}

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = hyper::Response<LoggedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Handled> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        STARTED.with(|started| started.set(started.get().wrapping_add(1)));
        Box::pin(pipeline::handle(
            self.gateway.load_full(),
            Arc::clone(&self.ctx),
            req,
        ))
    }
}

/// Closes a connection whose client may still be sending (a body the server refused without
/// reading it) the way nginx's `lingering_close` does: the response is followed by our end of
/// the stream, and what the client still sends is read and dropped until it closes too, for at
/// most [`LINGER_TIME`] and [`LINGER_BYTES`], [`LINGER_TIMEOUT`] between reads, or until the
/// server needs the connection's place. Closing with its bytes unread would make the kernel send
/// a reset, which can cost the client the response it has not read yet, or fail the write it is
/// in. A client that already closed costs one read.
async fn linger<IO: AsyncRead + AsyncWrite + SendFile + Unpin>(
    mut stream: Stream<IO>,
    activity: &Activity,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // What comes now is not served: no heads are followed (nor verdicts kept for them).
    stream.inner_mut().discard();
    let drain = async {
        if stream.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 2048];
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            match tokio::time::timeout(LINGER_TIMEOUT, stream.read(&mut sink)).await {
                Ok(Ok(n @ 1..)) => dropped += n,
                _ => return,
            }
        }
    };
    tokio::select! {
        () = drain => {}
        () = tokio::time::sleep(LINGER_TIME) => {}
        () = activity.close_requested() => {}
    }
}

/// How a stretch of serving ended.
// Held inline on purpose: `Step` is returned once per stretch, and boxing `Held` would add an
// allocation to every parked connection.
#[allow(clippy::large_enum_variant)]
pub enum Step<IO> {
    /// The connection is over.
    Done,
    /// It idled (HTTP/1.1): park it.
    Park(Held<IO>),
}

/// What an HTTP/1.1 connection keeps between requests.
pub struct Held<IO> {
    stream: Stream<IO>,
    conn: Conn,
    gateway: SharedGateway,
    builders: Arc<Builders>,
}

/// What a connection holds for as long as it is open, in a task or in the lot: its place under
/// `max_connections` and in the open-connections gauge.
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _open: OpenConnection,
}

impl Slot {
    /// A connection's slot: its permit, and it counts in `gauge` until dropped.
    pub fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        gauge: &prometheus_client::metrics::gauge::Gauge,
    ) -> Slot {
        gauge.inc();
        Slot {
            _permit: permit,
            _open: OpenConnection(gauge.clone()),
        }
    }
}

/// Counts a connection in `gatehouse_connections_active` while it is open.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A connection's task: its slot, and either a stretch of serving, boxed so that it is gone
/// while the connection is parked, or the parked state (where the event loop's lot cannot take
/// the connection: TLS, Unix sockets).
pub struct Connection<IO> {
    state: State<IO>,
    /// `None` once the connection moved to the lot (the task then ends).
    slot: Option<Slot>,
}

// The parked state inline is the point: it is all a parked connection's task holds.
#[allow(clippy::large_enum_variant)]
enum State<IO> {
    Serving(Pin<Box<dyn Future<Output = Step<IO>> + Send>>),
    Parked(Parked<IO>),
    Closed,
}

impl<IO> Connection<IO> {
    /// A connection whose first stretch of serving (handshakes included) is `first`.
    pub fn new(first: impl Future<Output = Step<IO>> + Send + 'static, slot: Slot) -> Self {
        Connection {
            state: State::Serving(Box::pin(first)),
            slot: Some(slot),
        }
    }
}

impl<IO> Future for Connection<IO>
where
    IO: AsyncRead + AsyncWrite + Park + SendFile + Lodge + Unpin + Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Serving(serving) => match ready!(serving.as_mut().poll(cx)) {
                    Step::Done => this.state = State::Closed,
                    Step::Park(held) => match this.slot.take() {
                        Some(slot) => match IO::lodge(held, slot) {
                            Lodged::Lot => this.state = State::Closed,
                            Lodged::Here(held, slot) => {
                                this.slot = Some(slot);
                                this.state = State::Parked(Parked::new(held));
                            }
                        },
                        None => this.state = State::Closed,
                    },
                },
                State::Parked(parked) => {
                    let woken = ready!(parked.poll_wake(cx));
                    let state = std::mem::replace(&mut this.state, State::Closed);
                    if let (Wake::Request, State::Parked(parked)) = (woken, state) {
                        this.state = State::Serving(Box::pin(parked.held.serve()));
                    }
                }
                State::Closed => return Poll::Ready(()),
            }
        }
    }
}

/// A parked connection: what it keeps, and its keep-alive timer.
struct Parked<IO> {
    held: Held<IO>,
    keepalive: Pin<Box<Sleep>>,
}

/// Why a parked connection woke.
enum Wake {
    /// The client sent something (or closed: the next read says).
    Request,
    /// Idle past keep-alive, asked to close, or the socket failed.
    Close,
}

impl<IO: Park> Parked<IO> {
    fn new(held: Held<IO>) -> Self {
        let left = held.conn.keepalive_left(Instant::now());
        Parked {
            held,
            // `sleep` saturates where `now + left` would overflow (a keep-alive of "forever").
            keepalive: Box::pin(tokio::time::sleep(left)),
        }
    }

    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let conn = &self.held.conn;
        // Asked to make room, or shutdown (which asks every connection, see `Connections`).
        if conn.activity().poll_close(cx).is_ready() {
            return Poll::Ready(Wake::Close);
        }
        if self.keepalive.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wake::Close);
        }
        match ready!(self.held.stream.poll_readable(cx)) {
            Ok(()) => Poll::Ready(Wake::Request),
            Err(_) => Poll::Ready(Wake::Close),
        }
    }
}

/// Where a connection idle between requests waits.
// Returned once per park, never stored: boxing `Here` would cost an allocation per park.
#[allow(clippy::large_enum_variant)]
pub enum Lodged<IO> {
    /// In the event loop's lot (its task ends).
    Lot,
    /// In its own task.
    Here(Held<IO>, Slot),
}

/// Streams whose idle connections the event loop's lot can hold: plain TCP. TLS keeps its
/// session in user memory anyway, and Unix sockets are for a proxy in front, with few
/// connections; both park in their own task.
pub trait Lodge: Sized {
    /// Moves an idle connection to the lot, where it can.
    fn lodge(held: Held<Self>, slot: Slot) -> Lodged<Self> {
        Lodged::Here(held, slot)
    }
}

impl Lodge for tokio::net::UnixStream {}

impl<IO> Lodge for tokio_rustls::server::TlsStream<IO> {}

impl Lodge for tokio::net::TcpStream {
    fn lodge(held: Held<Self>, slot: Slot) -> Lodged<Self> {
        // A head begun or a write pending keeps its timer, which the lot would not run.
        if held.stream.get_ref().timing() {
            return Lodged::Here(held, slot);
        }
        // The socket leaves tokio's reactor (its registration is freed); the lot watches it.
        let held = match held.try_map(tokio::net::TcpStream::into_std) {
            Ok(held) => held,
            // It could not be deregistered: it is closed (an idle connection may be).
            Err(_) => return Lodged::Lot,
        };
        let parked = InLot { held, slot };
        match lot::Lot::park(&LOT, parked) {
            Ok(()) => Lodged::Lot,
            Err(InLot { held, slot, .. }) => match held.try_map(tokio::net::TcpStream::from_std) {
                Ok(held) => Lodged::Here(held, slot),
                Err(_) => Lodged::Lot,
            },
        }
    }
}

/// A plain TCP connection in the lot.
struct InLot {
    held: Held<std::net::TcpStream>,
    slot: Slot,
}

thread_local! {
    /// The calling event loop's lot (see [`lot`]).
    static LOT: std::cell::RefCell<Option<lot::Lot<InLot>>> = const { std::cell::RefCell::new(None) };
}

/// Serves the calling event loop's parking lot until `shutdown`.
pub async fn run_lot(
    tracker: tokio_util::task::TaskTracker,
    shutdown: tokio_util::sync::CancellationToken,
) {
    lot::run(&LOT, tracker, shutdown).await;
}

impl lot::Entry for InLot {
    type Task = Connection<tokio::net::TcpStream>;

    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.held.stream.get_ref().get_ref().get_ref().as_raw_fd()
    }

    fn expired(&self, now: Instant) -> bool {
        let conn = &self.held.conn;
        conn.keepalive_left(now).is_zero() || conn.activity().asked_to_close()
    }

    fn watch_close(&self, waker: &std::task::Waker) {
        self.held.conn.activity().set_close_waker(waker);
    }

    fn wake(self) -> Option<Self::Task> {
        // Past its keep-alive or asked to close before the sweep came by: not served again.
        if self.expired(Instant::now()) {
            return None;
        }
        // Back in tokio's reactor for as long as it is served.
        let held = self.held.try_map(tokio::net::TcpStream::from_std).ok()?;
        Some(Connection {
            state: State::Serving(Box::pin(held.serve())),
            slot: Some(self.slot),
        })
    }
}

impl<IO> Held<IO> {
    /// The same connection over `f(socket)`.
    fn try_map<U>(self, f: impl FnOnce(IO) -> std::io::Result<U>) -> std::io::Result<Held<U>> {
        let Held {
            stream,
            conn,
            gateway,
            builders,
        } = self;
        let stream = stream.try_map(|guard| guard.try_map(|sniffed| sniffed.try_map(f)))?;
        Ok(Held {
            stream,
            conn,
            gateway,
            builders,
        })
    }
}

impl<IO> Held<IO>
where
    IO: AsyncRead + AsyncWrite + Park + SendFile + Unpin + Send + 'static,
{
    /// Serves requests until the connection ends or idles long enough to park.
    async fn serve(self) -> Step<IO> {
        let Held {
            mut stream,
            conn,
            gateway,
            builders,
        } = self;
        let service = Service {
            gateway,
            ctx: Arc::clone(&conn.ctx),
        };
        loop {
            stream = match conn
                .serve_until_idle(stream, &builders.http1, service.clone())
                .await
            {
                Cycle::Done => return Step::Done,
                Cycle::Tunnel(stream, tunnel) => {
                    tunnel.run(stream).await;
                    return Step::Done;
                }
                Cycle::Idle(stream) => stream,
            };
            // Bytes hyper read ahead are the next request: serve it without parking.
            if !stream.has_prefix() {
                stream.inner_mut().park();
                return Step::Park(Held {
                    stream,
                    conn,
                    gateway: service.gateway,
                    builders,
                });
            }
        }
    }
}

/// Serves one accepted connection (after its PROXY header and TLS handshake, if any) until it
/// closes, idles out, shutdown closes it, or (HTTP/1.1) it idles long enough to park.
#[allow(clippy::too_many_arguments)]
pub async fn serve<I>(
    io: I,
    peer: Peer,
    plain: Option<Arc<PlainListener>>,
    negotiated: Option<Negotiated>,
    gateway: SharedGateway,
    builders: Arc<Builders>,
    connections: Arc<Connections>,
) -> Step<I>
where
    I: AsyncRead + AsyncWrite + Park + SendFile + Unpin + Send + 'static,
{
    let (max_head, head_timeout, timers) = {
        let gateway = gateway.load();
        let l = &gateway.limits;
        (
            l.max_header_size,
            l.header_read_timeout,
            Timers {
                keepalive: l.keepalive_timeout,
                send: l.send_timeout,
            },
        )
    };
    let mut io = io;
    let activity = Arc::new(Activity::default());
    let registration = connections.register(Arc::clone(&activity));
    // Without ALPN, the first bytes say: HTTP/2's preface, or an HTTP/1 request. Until they come
    // the connection is idle: closable for a new client, and within the head timeout.
    let (sniffed, http2) = match negotiated {
        Some(n) => (Bytes::new(), n == Negotiated::Http2),
        None => tokio::select! {
            sniffed = tokio::time::timeout(head_timeout, sniff(&mut io)) => match sniffed {
                Ok(Ok(sniffed)) => sniffed,
                _ => return Step::Done,
            },
            () = activity.close_requested() => return Step::Done,
        },
    };
    // Plain HTTP/1 over TCP sends files with sendfile; HTTP/2 and TLS need the bytes.
    let file_sends = (!http2 && io.sends_files()).then(|| Arc::new(FileSends::default()));
    let (mut guard, verdicts) = WireGuard::new(
        Prefixed::new(sniffed, io),
        max_head,
        Some(head_timeout),
        Some(timers.send),
    );
    if let Some(sends) = &file_sends {
        guard.send_files(Arc::clone(sends));
    }
    let mut peer = peer;
    peer.sends_files = file_sends.is_some();
    let ctx = Arc::new(ConnCtx {
        peer,
        verdicts,
        activity,
        plain,
        tunnel: std::sync::Mutex::new(None),
        file_sends,
    });
    let conn = Conn {
        ctx,
        _registration: registration,
        timers,
    };
    if http2 {
        let service = Service {
            gateway,
            ctx: Arc::clone(&conn.ctx),
        };
        let hyper = builders
            .http2
            .serve_connection(TokioIo::new(guard), service);
        // Boxed: an HTTP/1.1 connection's first stretch does not carry HTTP/2's state.
        let serving = Box::pin(conn.run_http2(hyper));
        serving.await;
        return Step::Done;
    }
    Held {
        stream: Prefixed::new(Bytes::new(), guard),
        conn,
        gateway,
        builders,
    }
    .serve()
    .await
}

/// A response whose body has not been polled for a while, judged against `send_timeout`.
#[derive(Debug, PartialEq, Eq)]
enum Stall {
    /// Not yet: look again after this long.
    WaitFor(Duration),
    /// The body was not polled, but a file frame went out by sendfile meanwhile: that is progress
    /// (hyper polls the next frame only once the last is nearly sent, which takes a slow
    /// client a while).
    Progressed,
    /// Nothing moved for `send_timeout`.
    Stalled,
}

/// Whether a response body unpolled for `stalled` has stalled (`file_moved`: whether the kernel
/// sent file bytes since the last look; asked only once `send_timeout` is reached).
fn stall_check(stalled: Duration, send: Duration, file_moved: impl FnOnce() -> bool) -> Stall {
    if stalled < send {
        Stall::WaitFor(send - stalled)
    } else if file_moved() {
        Stall::Progressed
    } else {
        Stall::Stalled
    }
}

/// Logged when a graceful close has waited `send_timeout` on the client and gives up.
const GRACE_OVER: &str = "still open send_timeout after a graceful close: connection closed";

/// The shortest wait between two looks, so that a timeout set to 0 cannot make a loop.
const MIN_LOOK: Duration = Duration::from_millis(100);

/// What the timers decide for a connection with no stalled response.
#[derive(Debug, PartialEq, Eq)]
enum Idle {
    /// Idle past keep-alive: close gracefully.
    Drain,
    /// Idle long enough after a response to park (HTTP/1.1).
    Park,
    /// Look again after this long.
    LookIn(Duration),
}

/// The keep-alive and park checks: `idle` is how long the connection has had nothing in flight
/// (`None`: a request runs), `parking` whether it may park, `has_served` whether it has answered a
/// request.
fn idle_check(
    idle: Option<Duration>,
    parking: bool,
    has_served: bool,
    keepalive: Duration,
    send: Duration,
) -> Idle {
    match idle {
        Some(idle) if idle >= keepalive => Idle::Drain,
        Some(idle) if parking && idle >= PARK_AFTER && has_served => Idle::Park,
        // It parks PARK_AFTER after its last response. One that has answered nothing yet (its
        // first head still coming, say a line a second) is looked at every PARK_AFTER, as while a
        // request runs, not in a loop of short sleeps.
        Some(idle) if parking => {
            let left = PARK_AFTER.saturating_sub(idle);
            let next = if left.is_zero() { PARK_AFTER } else { left };
            Idle::LookIn(next.min(keepalive - idle))
        }
        Some(idle) => Idle::LookIn((keepalive - idle).min(send).max(MIN_LOOK)),
        // A request runs: look again when a stall or the end of it could be noticed.
        None if parking => Idle::LookIn(PARK_AFTER),
        None => Idle::LookIn(keepalive.min(send).max(MIN_LOOK)),
    }
}

/// Why the timers woke a connection.
enum Tick {
    /// Go on.
    Wait,
    /// Close gracefully: idle past keep-alive.
    Drain,
    /// Drop now: a response stalled past send_timeout.
    Stalled,
    /// Idle long enough to park (HTTP/1.1).
    Park,
}

impl Conn {
    fn activity(&self) -> &Activity {
        &self.ctx.activity
    }

    /// What is left of the keep-alive of a connection idle (nothing in flight) at `now`.
    fn keepalive_left(&self, now: Instant) -> Duration {
        let idle = self.activity().idle_for(now).unwrap_or(Duration::ZERO);
        self.timers.keepalive.saturating_sub(idle)
    }

    /// The keep-alive, send-stall and park checks; reschedules `timer`.
    fn tick(&self, timer: std::pin::Pin<&mut tokio::time::Sleep>, parking: bool) -> Tick {
        let now = Instant::now();
        let Timers {
            keepalive, send, ..
        } = self.timers;
        // A response the client takes nothing of for send_timeout (an HTTP/2 stream whose window
        // stays shut, say) ends the connection: nothing holds its file or buffers.
        if let Some(stalled) = self.activity().send_stalled_for() {
            let sends = self.ctx.file_sends.as_ref();
            return match stall_check(stalled, send, || sends.is_some_and(|s| s.moved())) {
                Stall::WaitFor(left) => {
                    timer.reset(now + left);
                    Tick::Wait
                }
                Stall::Progressed => {
                    self.activity().progressed();
                    timer.reset(now + send);
                    Tick::Wait
                }
                Stall::Stalled => Tick::Stalled,
            };
        }
        let activity = self.activity();
        let idle = activity.idle_for(now);
        match idle_check(idle, parking, activity.has_served(), keepalive, send) {
            Idle::Drain => {
                // A graceful close may wait on the client (HTTP/2's GOAWAY and PING): it has
                // send_timeout, then the connection is dropped, and the timer is not left expired
                // (which would wake this task in a loop).
                timer.reset(now + send);
                Tick::Drain
            }
            Idle::Park => Tick::Park,
            Idle::LookIn(next) => {
                timer.reset(now + next);
                Tick::Wait
            }
        }
    }

    async fn run_http2<F>(self, hyper: F)
    where
        F: std::future::Future<Output = hyper::Result<()>> + GracefulShutdown,
    {
        let hyper = std::pin::pin!(hyper);
        let mut hyper = hyper;
        let mut draining = false;
        let timer = tokio::time::sleep(self.timers.keepalive.min(self.timers.send));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                result = hyper.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "HTTP/2 connection ended with an error");
                    }
                    return;
                }
                // To make room, or shutdown (which asks every connection).
                () = self.activity().close_requested(), if !draining => {
                    draining = true;
                    hyper.as_mut().graceful();
                }
                () = &mut timer => match self.tick(timer.as_mut(), false) {
                    Tick::Stalled => {
                        tracing::debug!("the client took no response data within send_timeout: connection closed");
                        return;
                    }
                    Tick::Drain if !draining => {
                        draining = true;
                        hyper.as_mut().graceful();
                    }
                    Tick::Drain => {
                        tracing::debug!("{GRACE_OVER}");
                        return;
                    }
                    _ => {}
                },
            }
        }
    }

    /// Serves requests on `stream` until the connection closes, turns into a tunnel, or has been
    /// idle for [`PARK_AFTER`] (then hyper hands the stream back, with any bytes it read ahead).
    async fn serve_until_idle<IO>(
        &self,
        stream: Stream<IO>,
        builder: &hyper::server::conn::http1::Builder,
        service: Service,
    ) -> Cycle<Stream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Park + SendFile + Unpin + Send + 'static,
    {
        let mut hyper = builder.serve_connection(TokioIo::new(stream), service);
        let timer = tokio::time::sleep(PARK_AFTER.min(self.timers.keepalive));
        tokio::pin!(timer);
        let mut draining = false;
        let mut parking = false;
        let outcome = loop {
            tokio::select! {
                result = std::future::poll_fn(|cx| hyper.poll_without_shutdown(cx)) => break result,
                // To make room, or shutdown (which asks every connection).
                () = self.activity().close_requested(), if !draining => {
                    draining = true;
                    std::pin::Pin::new(&mut hyper).graceful_shutdown();
                }
                () = &mut timer => match self.tick(timer.as_mut(), !draining && !parking) {
                    Tick::Stalled => {
                        tracing::debug!("the client took no response data within send_timeout: connection closed");
                        return Cycle::Done;
                    }
                    Tick::Drain if !draining => {
                        draining = true;
                        std::pin::Pin::new(&mut hyper).graceful_shutdown();
                    }
                    Tick::Drain => {
                        tracing::debug!("{GRACE_OVER}");
                        return Cycle::Done;
                    }
                    Tick::Park => {
                        parking = true;
                        std::pin::Pin::new(&mut hyper).graceful_shutdown();
                        timer.as_mut().reset(Instant::now() + self.timers.send);
                    }
                    _ => {}
                },
            }
        };
        if let Err(error) = outcome {
            tracing::debug!(%error, "connection ended with an error");
            return Cycle::Done;
        }
        let parts = hyper.into_parts();
        let mut stream = parts.io.into_inner();
        stream.unread(parts.read_buf);
        // A protocol switch: the client's side of the tunnel is this very stream.
        if let Some(tunnel) = self.ctx.take_tunnel() {
            return Cycle::Tunnel(stream, tunnel);
        }
        if draining || !parking {
            // Done without our asking: the client closed or asked to, or hyper answered a
            // request without reading its whole body (413, say).
            if !draining {
                Box::pin(linger(stream, self.activity())).await;
            }
            return Cycle::Done;
        }
        Cycle::Idle(stream)
    }
}

/// How a stretch of serving ended.
enum Cycle<S> {
    /// The connection is over.
    Done,
    /// It idled: hyper handed the stream back.
    Idle(S),
    /// It switched protocols: run the tunnel on the stream.
    Tunnel(S, crate::pipeline::Tunnel),
}

/// hyper's graceful shutdown, for the HTTP/2 connection future.
pub trait GracefulShutdown {
    /// Starts a graceful shutdown.
    fn graceful(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E> GracefulShutdown for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

#[cfg(test)]
mod stall_tests {
    use super::*;

    #[test]
    fn a_connection_is_looked_at_by_the_keepalive_and_park_deadlines_not_in_a_busy_loop() {
        let (keepalive, send) = (Duration::from_secs(75), Duration::from_secs(60));
        let ms = Duration::from_millis;
        let check = |idle, parking, served| idle_check(idle, parking, served, keepalive, send);
        assert_eq!(check(Some(keepalive), true, true), Idle::Drain);
        assert_eq!(check(Some(PARK_AFTER), true, true), Idle::Park);
        assert_eq!(
            check(Some(ms(100)), true, true),
            Idle::LookIn(PARK_AFTER - ms(100))
        );
        // Its first head still coming, a line a second: not parked (it has nothing to hand back
        // but a half head), and not woken every few milliseconds either.
        assert_eq!(check(Some(ms(3000)), true, false), Idle::LookIn(PARK_AFTER));
        assert_eq!(
            check(Some(keepalive - ms(100)), true, false),
            Idle::LookIn(ms(100)),
            "nor past its keep-alive"
        );
        assert_eq!(check(None, true, true), Idle::LookIn(PARK_AFTER));
        assert_eq!(check(Some(ms(1000)), false, true), Idle::LookIn(send));
        assert_eq!(check(None, false, true), Idle::LookIn(send));
        // keepalive_timeout = 0 (nginx's way to turn keep-alive off): no zero-length sleeps.
        let zero = idle_check(None, false, true, Duration::ZERO, send);
        assert_eq!(zero, Idle::LookIn(MIN_LOOK));
    }

    #[test]
    fn a_body_unpolled_past_send_timeout_has_stalled_unless_a_file_moved() {
        let send = Duration::from_secs(60);
        let never = || -> bool { panic!("asked before send_timeout") };
        assert_eq!(
            stall_check(Duration::from_secs(20), send, never),
            Stall::WaitFor(Duration::from_secs(40))
        );
        assert_eq!(
            stall_check(Duration::from_secs(61), send, || true),
            Stall::Progressed
        );
        assert_eq!(
            stall_check(Duration::from_secs(61), send, || false),
            Stall::Stalled
        );
    }
}

#[cfg(test)]
mod tests {
    /// A connection in the lot is one slab entry; what it keeps is what ten thousand idle
    /// connections cost beyond their shared state (see the module's doc).
    #[test]
    fn a_parked_connection_stays_small() {
        let entry = std::mem::size_of::<super::InLot>();
        assert!(entry <= 320, "a parked connection's entry is {entry} bytes");
    }
}
