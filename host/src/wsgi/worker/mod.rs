//! The worker process: one embedded CPython serving requests from the front over its lanes, one
//! socket per front event loop (so no front thread stands between an event loop and a worker).
//!
//! With one thread, that thread reads the sockets itself and runs every request of one read in one
//! GIL hold. With more, a reader thread per lane takes frames off its socket and queues requests;
//! `threads` handler threads each keep a Python thread state for their whole life (the GIL is
//! released while waiting, never the thread state, which would cost an allocation per request) and
//! run the app. Responses go back as frames on the request's lane; a handler collects a response's
//! frames and writes them in one call.

mod app;

pub(crate) use app::MAX_CHUNK;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};

use bytes::BytesMut;
use pyo3::prelude::*;
use rustc_hash::FxHashMap;

use super::WorkerSpec;
use super::frame::{self, Kind, WireRequest};

/// Exit status telling the supervisor the app could not be loaded (retrying will not help).
pub const EXIT_APP_LOAD_FAILED: u8 = 3;

/// How many response-body bytes a worker may send ahead of what the client has taken.
pub const WINDOW: i64 = 1 << 20;

/// Flow control and cancellation for one request in flight.
#[derive(Debug, Default)]
struct Stream {
    window: Mutex<i64>,
    more: Condvar,
    cancelled: AtomicBool,
    /// [`WAITING`], then [`STARTED`] when a thread takes it or [`WITHDRAWN`] if the front took it
    /// back first (one compare-and-swap decides).
    state: AtomicU8,
}

const WAITING: u8 = 0;
const STARTED: u8 = 1;
const WITHDRAWN: u8 = 2;

/// One lane (socket) to the front and the requests in flight on it.
#[derive(Debug)]
struct Conn {
    /// This lane's index among the worker's lanes.
    lane: usize,
    writer: Mutex<UnixStream>,
    /// By stream id (the front's, sequential: a fast hash is safe).
    streams: Mutex<FxHashMap<u32, Arc<Stream>>>,
    /// With one thread, that thread also reads the sockets (no hand-off between threads per
    /// request); shared by all lanes.
    inline: Option<Arc<Mutex<Inline>>>,
}

/// A request read off a lane: the lane's index, the stream id, the request, and whether it was
/// sent ahead (the front is told when it begins).
type Job = (usize, u32, WireRequest, bool);

/// The reading side when the handler thread reads for itself: every lane's reader, and the
/// requests read (while waiting for flow-control credit, say) but not yet run.
#[derive(Debug)]
struct Inline {
    readers: Vec<FrameReader>,
    pending: std::collections::VecDeque<Job>,
}

impl Inline {
    /// Blocks until at least one lane has sent something; `false` once the front closed a lane.
    /// With several lanes, one poll says which to read (reading them all would mostly find nothing).
    fn fill(&mut self, conns: &[Arc<Conn>]) -> bool {
        if let [reader] = &mut self.readers[..] {
            return match reader.read_batch(&conns[0]) {
                Some(batch) => {
                    self.pending.extend(batch);
                    true
                }
                None => false,
            };
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<_> = self
                .readers
                .iter()
                .map(|r| rustix::event::PollFd::new(&r.socket, rustix::event::PollFlags::IN))
                .collect();
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => return true,
                Err(_) => return false,
            }
            fds.iter().map(|fd| !fd.revents().is_empty()).collect()
        };
        for (lane, reader) in self.readers.iter_mut().enumerate() {
            if !ready[lane] {
                continue;
            }
            // Readable (or closed): this read does not block.
            match reader.read_batch(&conns[lane]) {
                Some(batch) => self.pending.extend(batch),
                None => return false,
            }
        }
        true
    }
}

/// Reads frames off the socket, applying credits and cancels at once and returning requests.
#[derive(Debug)]
struct FrameReader {
    socket: UnixStream,
    buf: BytesMut,
    chunk: Vec<u8>,
}

impl FrameReader {
    fn new(socket: UnixStream) -> FrameReader {
        FrameReader {
            socket,
            buf: BytesMut::with_capacity(64 * 1024),
            chunk: vec![0u8; 64 * 1024],
        }
    }

    /// Blocks for one read; returns the requests it completed (`None`: the front closed the socket).
    fn read_batch(&mut self, conn: &Conn) -> Option<Vec<Job>> {
        let n = match self.socket.read(&mut self.chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        self.dispatch(n, conn)
    }

    /// Like [`FrameReader::read_batch`] but never blocks: picks up cancels and credits between the
    /// blocks of a streamed response.
    fn try_read_batch(&mut self, conn: &Conn) -> Option<Vec<Job>> {
        match rustix::net::recv(
            &self.socket,
            &mut self.chunk,
            rustix::net::RecvFlags::DONTWAIT,
        ) {
            Ok((0, _)) => None,
            Ok((n, _)) => self.dispatch(n, conn),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Some(Vec::new()),
            Err(_) => None,
        }
    }

    /// Takes the frames out of `n` freshly read bytes.
    fn dispatch(&mut self, n: usize, conn: &Conn) -> Option<Vec<Job>> {
        self.buf.extend_from_slice(&self.chunk[..n]);
        let mut requests = Vec::new();
        loop {
            let frame = match frame::take_frame(&mut self.buf) {
                Ok(Some(f)) => f,
                Ok(None) => return Some(requests),
                Err(e) => {
                    eprintln!("gatehouse worker: protocol error from the front: {e}");
                    return None;
                }
            };
            match frame.kind {
                Kind::Request | Kind::RequestAhead => match frame::decode_request(frame.payload) {
                    // Opened on arrival, so a cancel that comes while it waits for a thread is seen.
                    Ok(req) => {
                        conn.open(frame.stream);
                        let ahead = frame.kind == Kind::RequestAhead;
                        requests.push((conn.lane, frame.stream, req, ahead));
                    }
                    Err(e) => {
                        eprintln!("gatehouse worker: bad request frame: {e}");
                        // The front hears of it (an error), rather than waiting for its timeout.
                        let _ = conn.send_frame(Kind::Error, frame.stream, b"bad request frame");
                    }
                },
                Kind::Credit => {
                    if let (Some(stream), Ok(bytes)) = (
                        conn.stream(frame.stream),
                        <[u8; 4]>::try_from(&frame.payload[..]),
                    ) {
                        if let Ok(mut w) = stream.window.lock() {
                            *w += i64::from(u32::from_be_bytes(bytes));
                        }
                        // With one thread nothing waits on the condition variable (that thread
                        // reads the socket itself), and a notify is a system call.
                        if conn.inline.is_none() {
                            stream.more.notify_all();
                        }
                    }
                }
                Kind::Cancel => {
                    if let Some(stream) = conn.stream(frame.stream) {
                        stream.cancelled.store(true, Ordering::Release);
                        stream.more.notify_all();
                    }
                }
                Kind::Withdraw => {
                    let withdrawn = conn.stream(frame.stream).is_some_and(|stream| {
                        stream
                            .state
                            .compare_exchange(
                                WAITING,
                                WITHDRAWN,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                    });
                    // Said at once (its place in the front's queue is freed now), not when a
                    // thread reaches it; that thread then skips it in silence.
                    if withdrawn {
                        let _ = conn.send_frame(
                            Kind::Error,
                            frame.stream,
                            b"withdrawn before it started",
                        );
                    }
                }
                other => eprintln!("gatehouse worker: unexpected frame {other:?} from the front"),
            }
        }
    }
}

impl Conn {
    fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer
            .lock()
            .map_err(|_| std::io::Error::other("writer lock poisoned"))?
            .write_all(bytes)
    }

    /// Sends one frame on its own (a response goes out whole through [`Conn::send`]).
    fn send_frame(&self, kind: Kind, stream: u32, payload: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(frame::HEADER_LEN + payload.len());
        frame::write_frame(&mut frame, kind, stream, payload);
        self.send(&frame)
    }

    fn open(&self, id: u32) -> Arc<Stream> {
        let stream = Arc::new(Stream {
            window: Mutex::new(WINDOW),
            ..Stream::default()
        });
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(id, Arc::clone(&stream));
        }
        stream
    }

    /// The stream a request opened on arrival; `None` if its client left before a thread took it
    /// (the front is told, and the app never sees it). For a request sent ahead, the front learns
    /// that it begins before the app sees it: one this worker never began may run elsewhere.
    /// `out` holds frames of this lane still to send (the last request's end), sent first, in the
    /// same write.
    fn start(&self, id: u32, ahead: bool, mut out: Vec<u8>) -> Option<Arc<Stream>> {
        let stream = self.stream(id).unwrap_or_else(|| self.open(id));
        let started = stream
            .state
            .compare_exchange(WAITING, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if started && !stream.cancelled.load(Ordering::Acquire) {
            if ahead {
                frame::write_frame(&mut out, Kind::Begin, id, b"");
            }
            if !out.is_empty() {
                // If the front cannot hear it, it cannot hear the response either.
                self.send(&out).ok()?;
            }
            return Some(stream);
        }
        self.close(id);
        if started {
            frame::write_frame(&mut out, Kind::Error, id, b"cancelled before it started");
        }
        // Withdrawn (`!started`): the front was told when it was.
        if !out.is_empty() {
            let _ = self.send(&out);
        }
        None
    }

    fn close(&self, id: u32) {
        if let Ok(mut streams) = self.streams.lock() {
            streams.remove(&id);
        }
    }

    /// With one thread, looks (without blocking) for cancels and credits that arrived meanwhile; with
    /// several, the reader thread already applies them as they come.
    fn poll_control(&self) {
        if let Some(inline) = &self.inline {
            if let Ok(mut inline) = inline.lock() {
                let inline = &mut *inline;
                if let Some(requests) = inline.readers[self.lane].try_read_batch(self) {
                    inline.pending.extend(requests);
                }
            }
        }
    }

    /// Waits (without the GIL) for the front to grant `stream` more credit, or to cancel it.
    fn wait_for_credit(&self, py: Python<'_>, stream: &Arc<Stream>) -> std::io::Result<()> {
        match &self.inline {
            Some(inline) => {
                let mut inline = inline
                    .lock()
                    .map_err(|_| std::io::Error::other("lock poisoned"))?;
                let inline = &mut *inline;
                let reader = &mut inline.readers[self.lane];
                match py.detach(|| reader.read_batch(self)) {
                    Some(requests) => {
                        inline.pending.extend(requests);
                        Ok(())
                    }
                    None => Err(std::io::Error::other("front connection closed")),
                }
            }
            None => {
                let stream = Arc::clone(stream);
                py.detach(move || {
                    if let Ok(window) = stream.window.lock() {
                        let _ = stream
                            .more
                            .wait_timeout(window, std::time::Duration::from_millis(500));
                    }
                });
                Ok(())
            }
        }
    }

    fn stream(&self, id: u32) -> Option<Arc<Stream>> {
        self.streams.lock().ok().and_then(|s| s.get(&id).cloned())
    }
}

/// Runs a worker: load the app, open its lanes, serve until the front closes one.
pub fn main(spec: WorkerSpec) -> ExitCode {
    if let Some(dir) = &spec.chdir {
        if let Err(e) = std::env::set_current_dir(dir) {
            eprintln!("gatehouse worker: cannot chdir to {}: {e}", dir.display());
            return ExitCode::from(EXIT_APP_LOAD_FAILED);
        }
    }
    Python::initialize();
    let app = match Python::attach(|py| app::load(py, &spec)) {
        Ok(app) => app,
        Err(message) => {
            eprintln!(
                "gatehouse worker: cannot load the WSGI app {:?}:\n{message}",
                spec.app
            );
            return ExitCode::from(EXIT_APP_LOAD_FAILED);
        }
    };
    let threads = spec.threads.max(1);
    let mut sockets = Vec::new();
    for _ in 0..spec.lanes.max(1) {
        match connect(&spec) {
            Ok(pair) => sockets.push(pair),
            Err(e) => {
                eprintln!(
                    "gatehouse worker: cannot connect to {}: {e}",
                    spec.socket.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let (writers, readers): (Vec<_>, Vec<_>) = sockets.into_iter().unzip();
    let (inline, readers) = if threads == 1 {
        let inline = Inline {
            readers,
            pending: Default::default(),
        };
        (Some(Arc::new(Mutex::new(inline))), Vec::new())
    } else {
        (None, readers)
    };
    let conns: Vec<Arc<Conn>> = writers
        .into_iter()
        .enumerate()
        .map(|(lane, writer)| {
            Arc::new(Conn {
                lane,
                writer: Mutex::new(writer),
                streams: Mutex::new(FxHashMap::default()),
                inline: inline.clone(),
            })
        })
        .collect();
    let flags = app::Flags {
        multithread: threads > 1,
        multiprocess: spec.workers > 1,
    };
    let app = match Python::attach(|py| app::App::new(py, app, flags)) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("gatehouse worker: cannot prepare the environ: {e}");
            return ExitCode::FAILURE;
        }
    };
    match inline {
        Some(inline) => serve_inline(&conns, &inline, &app),
        None => serve_threaded(readers, &conns, app, threads),
    }
    // The front closed a lane: exit now (the front decides about drains).
    ExitCode::SUCCESS
}

/// Opens one lane: connects and says which worker this is.
fn connect(spec: &WorkerSpec) -> std::io::Result<(UnixStream, FrameReader)> {
    let mut socket = UnixStream::connect(&spec.socket)?;
    let mut hello = Vec::new();
    frame::write_frame(&mut hello, Kind::Hello, 0, &spec.worker_id.to_be_bytes());
    socket.write_all(&hello)?;
    let reader = FrameReader::new(socket.try_clone()?);
    Ok((socket, reader))
}

/// One thread reads, runs the app and writes: every request that arrived in one read runs in one GIL hold.
fn serve_inline(conns: &[Arc<Conn>], inline: &Mutex<Inline>, app: &app::App) {
    Python::attach(|py| {
        // When the sockets were last read: a request that has waited longer than a moment behind a
        // slow one may have been cancelled meanwhile, so the sockets are read again (without
        // blocking) before it runs. Requests of a fresh batch run without that syscall.
        let mut read_at = std::time::Instant::now();
        // The last response's final frames (its lane, the bytes), held until the next request's
        // `Begin` can go with them or the thread is about to wait: one write instead of two.
        let mut tail: Option<(usize, Vec<u8>)> = None;
        loop {
            let next = {
                let Ok(mut state) = inline.lock() else { return };
                match state.pending.pop_front() {
                    Some(job) => Some(job),
                    None => {
                        if let Some((lane, bytes)) = tail.take() {
                            let _ = conns[lane].send(&bytes);
                        }
                        let state = &mut *state;
                        if !py.detach(|| state.fill(conns)) {
                            return;
                        }
                        read_at = std::time::Instant::now();
                        None
                    }
                }
            };
            let Some((lane, id, request, ahead)) = next else {
                continue;
            };
            if read_at.elapsed() > std::time::Duration::from_millis(2) {
                for conn in conns {
                    conn.poll_control();
                }
                read_at = std::time::Instant::now();
            }
            let carried = match tail.take() {
                Some((l, bytes)) if l == lane => bytes,
                Some((l, bytes)) => {
                    let _ = conns[l].send(&bytes);
                    Vec::new()
                }
                None => Vec::new(),
            };
            let conn = &conns[lane];
            let Some(stream) = conn.start(id, ahead, carried) else {
                continue;
            };
            let last = app::handle(py, app, id, request, conn, &stream);
            conn.close(id);
            tail = Some((lane, last));
        }
    });
}

/// A reader thread per lane hands requests to `threads` handler threads (for apps that wait on
/// I/O); the worker stops when the first lane closes.
fn serve_threaded(readers: Vec<FrameReader>, conns: &[Arc<Conn>], app: app::App, threads: usize) {
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let app = Arc::new(app);
    for i in 0..threads {
        let jobs = Arc::clone(&jobs_rx);
        let conns = conns.to_vec();
        let app = Arc::clone(&app);
        let spawned = std::thread::Builder::new()
            .name(format!("wsgi-{i}"))
            .spawn(move || {
                Python::attach(|py| {
                    loop {
                        let job = py.detach(|| jobs.lock().ok().and_then(|rx| rx.recv().ok()));
                        let Some((lane, id, request, ahead)) = job else {
                            break;
                        };
                        let conn = &conns[lane];
                        let Some(stream) = conn.start(id, ahead, Vec::new()) else {
                            continue;
                        };
                        let last = app::handle(py, &app, id, request, conn, &stream);
                        conn.close(id);
                        let _ = conn.send(&last);
                    }
                });
            });
        if let Err(e) = spawned {
            eprintln!("gatehouse worker: cannot start a thread: {e}");
            return;
        }
    }
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    for (lane, mut reader) in readers.into_iter().enumerate() {
        let conn = Arc::clone(&conns[lane]);
        let jobs = jobs_tx.clone();
        let closed = closed_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("lane-{lane}"))
            .spawn(move || {
                while let Some(batch) = reader.read_batch(&conn) {
                    for job in batch {
                        if jobs.send(job).is_err() {
                            break;
                        }
                    }
                }
                let _ = closed.send(());
            });
        if let Err(e) = spawned {
            eprintln!("gatehouse worker: cannot start a thread: {e}");
            return;
        }
    }
    let _ = closed_rx.recv();
}
