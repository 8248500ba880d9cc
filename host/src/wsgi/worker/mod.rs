//! The worker process: one embedded CPython serving requests from the front over one socket.
//!
//! A reader thread takes frames off the socket and queues requests; `threads` handler threads each keep
//! a Python thread state for their whole life (the GIL is released while waiting, never the thread
//! state, which would cost an allocation per request) and run the app. Responses go back as frames;
//! a handler collects a response's frames and writes them in one call.

mod app;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};

use bytes::BytesMut;
use pyo3::prelude::*;

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
}

/// The socket to the front and the requests in flight on it.
#[derive(Debug)]
struct Conn {
    writer: Mutex<UnixStream>,
    streams: Mutex<HashMap<u32, Arc<Stream>>>,
    /// With one thread, that thread also reads the socket (no hand-off between threads per request);
    /// requests read while it waits for flow-control credit queue here.
    inline: Option<Mutex<Inline>>,
}

/// The reading side when the handler thread reads for itself.
#[derive(Debug)]
struct Inline {
    reader: FrameReader,
    pending: std::collections::VecDeque<(u32, WireRequest)>,
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
    fn read_batch(&mut self, conn: &Conn) -> Option<Vec<(u32, WireRequest)>> {
        let n = match self.socket.read(&mut self.chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        self.dispatch(n, conn)
    }

    /// Like [`FrameReader::read_batch`] but never blocks: picks up cancels and credits between the
    /// blocks of a streamed response.
    fn try_read_batch(&mut self, conn: &Conn) -> Option<Vec<(u32, WireRequest)>> {
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
    fn dispatch(&mut self, n: usize, conn: &Conn) -> Option<Vec<(u32, WireRequest)>> {
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
                Kind::Request => match frame::decode_request(frame.payload) {
                    Ok(req) => requests.push((frame.stream, req)),
                    Err(e) => eprintln!("gatehouse worker: bad request frame: {e}"),
                },
                Kind::Credit => {
                    if let (Some(stream), Ok(bytes)) = (
                        conn.stream(frame.stream),
                        <[u8; 4]>::try_from(&frame.payload[..]),
                    ) {
                        if let Ok(mut w) = stream.window.lock() {
                            *w += i64::from(u32::from_be_bytes(bytes));
                        }
                        stream.more.notify_all();
                    }
                }
                Kind::Cancel => {
                    if let Some(stream) = conn.stream(frame.stream) {
                        stream.cancelled.store(true, Ordering::Release);
                        stream.more.notify_all();
                    }
                }
                other => eprintln!("gatehouse worker: unexpected frame {other:?} from the front"),
            }
        }
    }
}

impl Conn {
    fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| std::io::Error::other("writer lock poisoned"))?;
        w.write_all(bytes)
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
                if let Some(requests) = inline.reader.try_read_batch(self) {
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
                match py.detach(|| inline.reader.read_batch(self)) {
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

/// Runs a worker: load the app, connect, serve until the front closes the socket.
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
    let socket = match UnixStream::connect(&spec.socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "gatehouse worker: cannot connect to {}: {e}",
                spec.socket.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let writer = match socket.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("gatehouse worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let threads = spec.threads.max(1);
    let reader = FrameReader::new(socket);
    let (inline, reader) = if threads == 1 {
        (
            Some(Mutex::new(Inline {
                reader,
                pending: Default::default(),
            })),
            None,
        )
    } else {
        (None, Some(reader))
    };
    let conn = Arc::new(Conn {
        writer: Mutex::new(writer),
        streams: Mutex::new(HashMap::new()),
        inline,
    });
    let mut hello = Vec::new();
    frame::write_frame(&mut hello, Kind::Hello, 0, &spec.worker_id.to_be_bytes());
    if conn.send(&hello).is_err() {
        return ExitCode::FAILURE;
    }
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
    match reader {
        None => serve_inline(&conn, &app),
        Some(reader) => serve_threaded(reader, &conn, app, threads),
    }
    // The front closed the socket: exit now (the front decides about drains).
    ExitCode::SUCCESS
}

/// One thread reads, runs the app and writes: every request that arrived in one read runs in one GIL hold.
fn serve_inline(conn: &Arc<Conn>, app: &app::App) {
    let Some(inline) = &conn.inline else { return };
    Python::attach(|py| {
        loop {
            let next = {
                let Ok(mut state) = inline.lock() else { return };
                match state.pending.pop_front() {
                    Some(job) => Some(job),
                    None => {
                        let state = &mut *state;
                        match py.detach(|| state.reader.read_batch(conn)) {
                            None => return,
                            Some(batch) => {
                                state.pending.extend(batch);
                                None
                            }
                        }
                    }
                }
            };
            if let Some((id, request)) = next {
                let stream = conn.open(id);
                app::handle(py, app, id, request, conn, &stream);
                conn.close(id);
            }
        }
    });
}

/// A reader thread hands requests to `threads` handler threads (for apps that wait on I/O).
fn serve_threaded(mut reader: FrameReader, conn: &Arc<Conn>, app: app::App, threads: usize) {
    let (jobs_tx, jobs_rx) = mpsc::channel::<(u32, WireRequest)>();
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let app = Arc::new(app);
    for i in 0..threads {
        let jobs = Arc::clone(&jobs_rx);
        let conn = Arc::clone(conn);
        let app = Arc::clone(&app);
        let spawned = std::thread::Builder::new()
            .name(format!("wsgi-{i}"))
            .spawn(move || {
                Python::attach(|py| {
                    loop {
                        let job = py.detach(|| jobs.lock().ok().and_then(|rx| rx.recv().ok()));
                        let Some((id, request)) = job else { break };
                        let stream = conn.open(id);
                        app::handle(py, &app, id, request, &conn, &stream);
                        conn.close(id);
                    }
                });
            });
        if let Err(e) = spawned {
            eprintln!("gatehouse worker: cannot start a thread: {e}");
            return;
        }
    }
    while let Some(batch) = reader.read_batch(conn) {
        for job in batch {
            if jobs_tx.send(job).is_err() {
                return;
            }
        }
    }
}
