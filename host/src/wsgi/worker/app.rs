//! Calling a WSGI application: environ in, status/headers/body frames out (PEP 3333).

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use super::{Conn, Stream};
use crate::wsgi::WorkerSpec;
use crate::wsgi::frame::{self, Kind, WireRequest};

/// Largest body frame; bigger app chunks are split.
pub(crate) const MAX_CHUNK: usize = 256 * 1024;
/// Pending frames are written once they pass this size (and always at the end of a response).
const FLUSH_AT: usize = 64 * 1024;

/// `wsgi.multithread` and `wsgi.multiprocess`, true to the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Flags {
    /// More than one thread per worker.
    pub multithread: bool,
    /// More than one worker.
    pub multiprocess: bool,
}

/// Imports `module:callable` (or calls `module:factory()`), with `sys` set up like the chosen interpreter.
pub fn load(py: Python<'_>, spec: &WorkerSpec) -> Result<Py<PyAny>, String> {
    let show = |e: PyErr| format_exception(py, &e);
    let sys = py.import("sys").map_err(show)?;
    let interp = &spec.interpreter;
    let mut path: Vec<String> = Vec::new();
    if let Some(dir) = &spec.chdir {
        path.push(dir.display().to_string());
    } else if let Ok(cwd) = std::env::current_dir() {
        path.push(cwd.display().to_string());
    }
    path.extend(spec.pythonpath.iter().map(|p| p.display().to_string()));
    path.extend(interp.path.iter().cloned());
    sys.setattr("path", path).map_err(show)?;
    for (attr, value) in [
        ("prefix", &interp.prefix),
        ("exec_prefix", &interp.exec_prefix),
        ("base_prefix", &interp.base_prefix),
        ("base_exec_prefix", &interp.base_exec_prefix),
        ("executable", &interp.executable),
    ] {
        sys.setattr(attr, value).map_err(show)?;
    }
    sys.setattr("argv", vec![interp.executable.clone()])
        .map_err(show)?;
    // `.pth` files in site-packages (editable installs, namespace packages) are processed by `site`.
    let site = py.import("site").map_err(show)?;
    for dir in interp.path.iter().filter(|p| p.ends_with("site-packages")) {
        site.call_method1("addsitedir", (dir,)).map_err(show)?;
    }

    // Ctrl-C in a terminal signals the whole process group: the front decides when workers stop (it
    // drains them, then closes their socket or kills them), so SIGINT/SIGTERM must not kill a worker
    // in the middle of a request. A Python handler, unlike SIG_IGN, is not inherited by programs the
    // app runs.
    // PYTHONHOME (set for the embedded interpreter) and our spec must not leak into programs the app
    // starts: a virtualenv's python would ignore its own site-packages under someone else's home.
    py.run(
        c"import os, signal\nsignal.signal(signal.SIGINT, lambda *_: None)\nsignal.signal(signal.SIGTERM, lambda *_: None)\nos.environ.pop('PYTHONHOME', None)\nos.environ.pop('GATEHOUSE_WORKER', None)\n",
        None,
        None,
    )
    .map_err(show)?;

    let (module, callable) = spec
        .app
        .split_once(':')
        .ok_or_else(|| format!("{:?} is not MODULE:CALLABLE", spec.app))?;
    let module = py.import(module).map_err(show)?;
    let (name, call) = match callable.strip_suffix("()") {
        Some(factory) => (factory, true),
        None => (callable, false),
    };
    let mut obj = module.getattr(name).map_err(show)?;
    if call {
        obj = obj.call0().map_err(show)?;
    }
    if !obj.is_callable() {
        return Err(format!(
            "{}:{callable} is not callable",
            spec.app.split(':').next().unwrap_or("")
        ));
    }
    Ok(obj.unbind())
}

fn format_exception(py: Python<'_>, e: &PyErr) -> String {
    let formatted = py
        .import("traceback")
        .and_then(|tb| tb.call_method1("format_exception", (e.clone_ref(py),)))
        .and_then(|lines| PyString::new(py, "").call_method1("join", (lines,)))
        .and_then(|s| s.extract::<String>());
    formatted.unwrap_or_else(|_| e.to_string())
}

/// What one response has done so far.
struct Response {
    id: u32,
    conn: Arc<Conn>,
    stream: Arc<Stream>,
    status: Option<(u16, String)>,
    headers: Vec<(String, Vec<u8>)>,
    headers_sent: bool,
    content_length: Option<u64>,
    sent: u64,
    out: Vec<u8>,
}

impl Response {
    fn flush(&mut self) -> PyResult<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.conn.send(&self.out);
        self.out.clear();
        result.map_err(|e| PyOSError::new_err(format!("front connection lost: {e}")))
    }

    fn send_headers(&mut self) -> PyResult<()> {
        if self.headers_sent {
            return Ok(());
        }
        let Some((status, reason)) = &self.status else {
            return Err(PyAssertionError::new_err(
                "the application sent a body before calling start_response",
            ));
        };
        frame::write_frame(
            &mut self.out,
            Kind::Start,
            self.id,
            &frame::encode_start(*status, reason, &self.headers),
        );
        self.headers_sent = true;
        Ok(())
    }

    /// Sends body bytes: headers first, never past the app's Content-Length, within the flow window.
    fn send_body(&mut self, py: Python<'_>, mut data: &[u8]) -> PyResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.send_headers()?;
        if let Some(limit) = self.content_length {
            // Past its own Content-Length the rest is cut: the client was promised exactly that many bytes.
            let room = limit.saturating_sub(self.sent) as usize;
            data = &data[..data.len().min(room)];
        }
        for chunk in data.chunks(MAX_CHUNK) {
            self.reserve(py, chunk.len())?;
            frame::write_frame(&mut self.out, Kind::Body, self.id, chunk);
            self.sent += chunk.len() as u64;
            if self.out.len() >= FLUSH_AT {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Waits (without the GIL) until the client has taken enough for `n` more bytes to be in flight.
    fn reserve(&mut self, py: Python<'_>, n: usize) -> PyResult<()> {
        let n = n as i64;
        loop {
            if self.stream.cancelled.load(Ordering::Acquire) {
                return Err(PyOSError::new_err("client disconnected"));
            }
            {
                let mut window = self
                    .stream
                    .window
                    .lock()
                    .map_err(|_| PyOSError::new_err("lock poisoned"))?;
                if *window >= n || *window >= super::WINDOW {
                    *window -= n;
                    return Ok(());
                }
            }
            self.flush()?;
            self.conn
                .wait_for_credit(py, &self.stream)
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
        }
    }
}

fn lock(state: &Mutex<Response>) -> PyResult<std::sync::MutexGuard<'_, Response>> {
    state
        .lock()
        .map_err(|_| PyOSError::new_err("response state lock poisoned"))
}

/// The `start_response` callable handed to the app.
#[pyclass(frozen)]
struct StartResponse {
    state: Arc<Mutex<Response>>,
}

/// Hop-by-hop headers belong to the server, not the app (PEP 3333).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__(
        &self,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Write> {
        let exc_info = exc_info.filter(|e| !e.is_none());
        let mut state = lock(&self.state)?;
        if state.status.is_some() {
            match exc_info {
                None => {
                    return Err(PyAssertionError::new_err(
                        "start_response called twice without exc_info",
                    ));
                }
                Some(info) if state.headers_sent => {
                    // Too late to change the response: re-raise the app's exception (PEP 3333).
                    let info = info.cast::<PyTuple>()?;
                    return Err(PyErr::from_value(info.get_item(1)?));
                }
                Some(_) => {}
            }
        }
        let status: String = status
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("status must be a str like '200 OK'"))?
            .to_str()?
            .to_string();
        let code = status
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| {
                (100..1000).contains(c) && status.as_bytes().get(3).is_none_or(|&b| b == b' ')
            })
            .ok_or_else(|| {
                PyValueError::new_err(format!("invalid status {status:?}: expected like '200 OK'"))
            })?;
        let reason = status.get(4..).unwrap_or("").to_string();
        let mut list = Vec::new();
        let mut content_length = None;
        for item in headers.try_iter()? {
            let item = item?;
            let pair = item
                .cast::<PyTuple>()
                .map_err(|_| PyTypeError::new_err("headers must be (name, value) tuples"))?;
            if pair.len() != 2 {
                return Err(PyTypeError::new_err("headers must be (name, value) tuples"));
            }
            let name: String = pair.get_item(0)?.cast::<PyString>()?.to_str()?.to_string();
            let value_obj = pair.get_item(1)?;
            let value = latin1(
                value_obj
                    .cast::<PyString>()
                    .map_err(|_| PyTypeError::new_err("header values must be str"))?
                    .to_str()?,
            )?;
            if HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(&name)) {
                return Err(PyAssertionError::new_err(format!(
                    "hop-by-hop header not allowed: {name}"
                )));
            }
            if name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                || value.iter().any(|&b| b == b'\r' || b == b'\n')
            {
                return Err(PyValueError::new_err(format!("invalid header {name:?}")));
            }
            if name.eq_ignore_ascii_case("content-length") {
                content_length = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            }
            list.push((name, value));
        }
        state.status = Some((code, reason));
        state.headers = list;
        state.content_length = content_length;
        drop(state);
        Ok(Write {
            state: Arc::clone(&self.state),
        })
    }
}

/// The `write()` callable `start_response` returns (for legacy apps).
#[pyclass(frozen)]
struct Write {
    state: Arc<Mutex<Response>>,
}

#[pymethods]
impl Write {
    fn __call__(&self, py: Python<'_>, data: &Bound<'_, PyBytes>) -> PyResult<()> {
        let mut state = lock(&self.state)?;
        state.send_body(py, data.as_bytes())?;
        state.flush()
    }
}

fn latin1(s: &str) -> PyResult<Vec<u8>> {
    s.chars()
        .map(|c| {
            u8::try_from(u32::from(c))
                .map_err(|_| PyValueError::new_err(format!("header value {s:?} is not latin-1")))
        })
        .collect()
}

/// `wsgi.file_wrapper`: iterates a file in blocks; for a real file the worker reads it itself.
#[pyclass]
struct FileWrapper {
    filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize = 8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> FileWrapper {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let block = self.filelike.call_method1(py, "read", (self.blksize,))?;
        Ok(if block.bind(py).len()? == 0 {
            None
        } else {
            Some(block)
        })
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.filelike.bind(py).hasattr("close")? {
            self.filelike.call_method0(py, "close")?;
        }
        Ok(())
    }
}

/// Environ keys most requests carry. Their Python strings are made once per worker, so a request
/// reuses them (with their hashes already computed) instead of building and hashing ~20 new keys.
const COMMON_KEYS: [&str; 32] = [
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_PROTOCOL",
    "SERVER_NAME",
    "SERVER_PORT",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "wsgi.url_scheme",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "HTTP_HOST",
    "HTTP_USER_AGENT",
    "HTTP_ACCEPT",
    "HTTP_ACCEPT_ENCODING",
    "HTTP_ACCEPT_LANGUAGE",
    "HTTP_CONNECTION",
    "HTTP_COOKIE",
    "HTTP_REFERER",
    "HTTP_ORIGIN",
    "HTTP_AUTHORIZATION",
    "HTTP_CACHE_CONTROL",
    "HTTP_PRAGMA",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_REQUEST_ID",
    "HTTP_X_REQUESTED_WITH",
    "HTTP_UPGRADE_INSECURE_REQUESTS",
    "HTTP_DNT",
];

/// The loaded app and what every request's environ shares, prepared once per worker.
#[derive(Debug)]
pub struct App {
    callable: Py<PyAny>,
    template: Py<PyDict>,
    /// `COMMON_KEYS` as Python strings, same order.
    keys: Vec<Py<PyString>>,
    bytes_io: Py<PyAny>,
    open: Py<PyAny>,
}

impl App {
    /// Prepares the constant part of the environ for `callable`.
    pub fn new(py: Python<'_>, callable: Py<PyAny>, flags: Flags) -> PyResult<App> {
        let template = PyDict::new(py);
        template.set_item("wsgi.version", (1, 0))?;
        template.set_item("wsgi.errors", py.import("sys")?.getattr("stderr")?)?;
        template.set_item("wsgi.multithread", flags.multithread)?;
        template.set_item("wsgi.multiprocess", flags.multiprocess)?;
        template.set_item("wsgi.run_once", false)?;
        template.set_item("wsgi.input_terminated", true)?;
        template.set_item("wsgi.file_wrapper", py.get_type::<FileWrapper>())?;
        let io = py.import("io")?;
        Ok(App {
            callable,
            template: template.unbind(),
            keys: COMMON_KEYS
                .iter()
                .map(|k| PyString::intern(py, k).unbind())
                .collect(),
            bytes_io: io.getattr("BytesIO")?.unbind(),
            open: io.getattr("open")?.unbind(),
        })
    }
}

/// Runs one request through the app. Returns the response's last frames (its end, or all of it
/// for a list), not yet sent: the caller sends them before the worker runs anything else (so a
/// response the app finished is never lost with a worker that a later request crashes), alone or
/// with the next request's `Begin` in one write.
pub(super) fn handle(
    py: Python<'_>,
    app: &App,
    id: u32,
    request: WireRequest,
    conn: &Arc<Conn>,
    stream: &Arc<Stream>,
) -> Vec<u8> {
    let state = Arc::new(Mutex::new(Response {
        id,
        conn: Arc::clone(conn),
        stream: Arc::clone(stream),
        status: None,
        headers: Vec::new(),
        headers_sent: false,
        content_length: None,
        sent: 0,
        out: Vec::new(),
    }));
    let result = run(py, app, request, &state);
    let Ok(mut response) = state.lock() else {
        return Vec::new();
    };
    match result.and_then(|()| response.send_headers()) {
        Ok(()) => frame::write_frame(&mut response.out, Kind::End, id, b""),
        Err(e) => {
            let cancelled = stream.cancelled.load(Ordering::Acquire);
            if !cancelled {
                eprintln!(
                    "gatehouse worker: error in the WSGI app:\n{}",
                    format_exception(py, &e)
                );
            }
            // Whatever was pending is dropped: the front answers 500 (or cuts a started response).
            response.out.clear();
            frame::write_frame(&mut response.out, Kind::Error, id, e.to_string().as_bytes());
        }
    }
    std::mem::take(&mut response.out)
}

fn run(
    py: Python<'_>,
    app: &App,
    request: WireRequest,
    state: &Arc<Mutex<Response>>,
) -> PyResult<()> {
    // The constant wsgi.* entries are copied from a template (one C-level dict copy).
    let environ = app.template.bind(py).copy()?;
    for (key, value) in request.environ.iter() {
        let key = match COMMON_KEYS.iter().position(|k| *k == key) {
            Some(i) => app.keys[i].bind(py).clone(),
            None => PyString::new(py, key),
        };
        // PEP 3333: native strings whose code points are the bytes (latin-1).
        match std::str::from_utf8(value)
            .ok()
            .filter(|text| text.is_ascii())
        {
            Some(ascii) => environ.set_item(key, ascii)?,
            None => environ.set_item(
                key,
                value.iter().map(|&b| char::from(b)).collect::<String>(),
            )?,
        }
    }
    let input = match &request.body_file {
        // A spooled body: a real buffered file object, as PEP 3333's input stream needs.
        Some(path) => app
            .open
            .bind(py)
            .call1((path.as_os_str().to_string_lossy().into_owned(), "rb"))?,
        None => app
            .bytes_io
            .bind(py)
            .call1((PyBytes::new(py, &request.body),))?,
    };
    environ.set_item("wsgi.input", &input)?;
    let app = &app.callable;

    let start_response = Py::new(
        py,
        StartResponse {
            state: Arc::clone(state),
        },
    )?;
    let iterable = app.call1(py, (environ, start_response))?;
    let iterable = iterable.bind(py);
    let outcome = send_iterable(py, iterable, state);
    // PEP 3333: close() is called whatever happened. (Lists and tuples have none; asking them would
    // build an AttributeError, which costs more than the whole rest of a small response.)
    let plain =
        iterable.is_exact_instance_of::<PyList>() || iterable.is_exact_instance_of::<PyTuple>();
    if !plain && iterable.hasattr("close")? {
        if let Err(e) = iterable.call_method0("close") {
            if outcome.is_ok() {
                return Err(e);
            }
            eprintln!(
                "gatehouse worker: close() failed too:\n{}",
                format_exception(py, &e)
            );
        }
    }
    outcome
}

fn send_iterable(
    py: Python<'_>,
    iterable: &Bound<'_, PyAny>,
    state: &Arc<Mutex<Response>>,
) -> PyResult<()> {
    if let Ok(wrapper) = iterable.cast::<FileWrapper>() {
        if let Some(file) = reopen_real_file(py, &wrapper.borrow())? {
            return send_file(py, file, state);
        }
    }
    // A list or tuple is already fully produced, so its blocks may go out together with the end of
    // the response. Anything else (a generator) may take its time producing the next block, and PEP
    // 3333 forbids delaying a block meanwhile: each one is written as soon as it is yielded.
    let produced = iterable.is_instance_of::<PyList>() || iterable.is_instance_of::<PyTuple>();
    for item in iterable.try_iter()? {
        let item = item?;
        let bytes = item
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("WSGI response items must be bytes"))?;
        let mut response = lock(state)?;
        response.send_body(py, bytes.as_bytes())?;
        if !produced {
            response.flush()?;
            // The app may take its time before the next block: notice a client that left.
            response.conn.poll_control();
        }
    }
    Ok(())
}

/// A file object backed by a real file, reopened by descriptor so Rust can read it without Python
/// copying every block; positioned where the Python file object was.
fn reopen_real_file(py: Python<'_>, wrapper: &FileWrapper) -> PyResult<Option<std::fs::File>> {
    let filelike = wrapper.filelike.bind(py);
    let (Ok(fileno), Ok(tell)) = (
        filelike.call_method0("fileno"),
        filelike.call_method0("tell"),
    ) else {
        let _ = PyErr::take(py);
        return Ok(None);
    };
    let (fd, pos): (i32, u64) = (fileno.extract()?, tell.extract()?);
    let Ok(mut file) = std::fs::File::open(format!("/proc/self/fd/{fd}")) else {
        return Ok(None);
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(pos))
        .map_err(|e| PyOSError::new_err(e.to_string()))?;
    Ok(Some(file))
}

fn send_file(
    py: Python<'_>,
    mut file: std::fs::File,
    state: &Arc<Mutex<Response>>,
) -> PyResult<()> {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = py
            .detach(|| file.read(&mut buf))
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        lock(state)?.send_body(py, &buf[..n])?;
    }
}
