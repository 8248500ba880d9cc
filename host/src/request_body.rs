//! Request bodies: read only when their consumer needs them (a WSGI app, a plugin that declared it),
//! whole, within the size and time limits, in memory or spooled to a temporary file.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::config::Limits;
use crate::error::HttpError;

/// A request body, read whole.
#[derive(Debug)]
pub enum RequestBody {
    /// Small bodies stay in memory.
    Memory(Bytes),
    /// Bodies past `body_buffer_size` are written to a temporary file (removed when dropped).
    Spooled {
        /// The file, positioned anywhere; readers open it by path.
        file: tempfile::NamedTempFile,
        /// Its length in bytes.
        len: u64,
    },
}

impl RequestBody {
    /// No body.
    pub const EMPTY: RequestBody = RequestBody::Memory(Bytes::new());

    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            RequestBody::Memory(b) => b.len() as u64,
            RequestBody::Spooled { len, .. } => *len,
        }
    }
}

/// Bytes of bodies buffered at once across the process, in memory and in spool files
/// (`server.limits.body_memory_budget` and `body_spool_budget`): past either, a request body that
/// needs more gets 503, and a response buffer waits on its client instead, rather than the front
/// running out of memory or disk.
#[derive(Debug)]
pub struct BodyBudget {
    memory: AtomicU64,
    memory_max: AtomicU64,
    spool: AtomicU64,
    spool_max: AtomicU64,
}

/// What one body holds of the [`BodyBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    memory: u64,
    spool: u64,
}

impl BodyBudget {
    /// A budget of `memory` bytes in memory and `spool` bytes in temporary files.
    pub fn new(memory: u64, spool: u64) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            memory: AtomicU64::new(0),
            memory_max: AtomicU64::new(memory),
            spool: AtomicU64::new(0),
            spool_max: AtomicU64::new(spool),
        })
    }

    /// New bounds (a reload): one budget serves the requests of the old and the new
    /// configuration, so a reload never doubles what bodies may hold.
    pub fn resize(&self, memory: u64, spool: u64) {
        self.memory_max.store(memory, Ordering::Relaxed);
        self.spool_max.store(spool, Ordering::Relaxed);
    }

    /// An empty reservation against this budget.
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            memory: 0,
            spool: 0,
        }
    }
}

fn take(counter: &AtomicU64, max: &AtomicU64, n: u64) -> bool {
    let max = max.load(Ordering::Relaxed);
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(n).filter(|&total| total <= max)
        })
        .is_ok()
}

impl Reservation {
    fn memory(&mut self, n: u64) -> Result<(), HttpError> {
        if !take(&self.budget.memory, &self.budget.memory_max, n) {
            tracing::warn!("request bodies in memory reached body_memory_budget: 503");
            return Err(HttpError::ServiceUnavailable);
        }
        self.memory += n;
        Ok(())
    }

    fn spool(&mut self, n: u64) -> Result<(), HttpError> {
        if !take(&self.budget.spool, &self.budget.spool_max, n) {
            tracing::warn!("spooled request bodies reached body_spool_budget: 503");
            return Err(HttpError::ServiceUnavailable);
        }
        self.spool += n;
        Ok(())
    }

    /// Takes `n` more bytes of memory if the budget has them (a response buffer: past the budget
    /// it falls back to flow control instead of failing).
    pub fn try_memory(&mut self, n: u64) -> bool {
        let ok = take(&self.budget.memory, &self.budget.memory_max, n);
        if ok {
            self.memory += n;
        }
        ok
    }

    /// Takes `n` more bytes of spool if the budget has them.
    pub fn try_spool(&mut self, n: u64) -> bool {
        let ok = take(&self.budget.spool, &self.budget.spool_max, n);
        if ok {
            self.spool += n;
        }
        ok
    }

    /// Gives back `n` bytes of memory (at most what is held).
    pub fn release_memory(&mut self, n: u64) {
        let n = n.min(self.memory);
        self.budget.memory.fetch_sub(n, Ordering::AcqRel);
        self.memory -= n;
    }

    /// Gives back `n` bytes of spool (at most what is held).
    pub fn release_spool(&mut self, n: u64) {
        let n = n.min(self.spool);
        self.budget.spool.fetch_sub(n, Ordering::AcqRel);
        self.spool -= n;
    }

    /// What was held in memory moves to the spool (the buffer went to a file).
    fn move_to_spool(&mut self) -> Result<(), HttpError> {
        let n = self.memory;
        self.spool(n)?;
        self.budget.memory.fetch_sub(n, Ordering::AcqRel);
        self.memory = 0;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.memory.fetch_sub(self.memory, Ordering::AcqRel);
        self.budget.spool.fetch_sub(self.spool, Ordering::AcqRel);
    }
}

/// The whole body, within the size and time limits, in memory or (past `in_memory` bytes) in a
/// temporary file, as nginx buffers client bodies, against the process's [`BodyBudget`]. Bad
/// chunking or forbidden trailers are a 400. The file is created and written off the event loop.
///
/// Polling the body is what makes hyper answer `Expect: 100-continue`: a request refused before
/// this runs never gets a `100 Continue`, and hyper closes the connection rather than read the
/// refused body (it drains only what has already arrived).
pub async fn read<B>(
    body: B,
    in_memory: u64,
    limits: &Limits,
    budget: &Arc<BodyBudget>,
) -> Result<(RequestBody, Option<Reservation>), HttpError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    if body.is_end_stream() {
        return Ok((RequestBody::EMPTY, None));
    }
    let mut reserved = budget.reserve();
    let mut frames = Frames::new(body, limits.max_body_size);
    let collect = async {
        let mut buf = BytesMut::new();
        let mut spool: Option<(tempfile::NamedTempFile, tokio::fs::File)> = None;
        while let Some(data) = frames.next().await? {
            match &mut spool {
                Some((_, file)) => {
                    reserved.spool(data.len() as u64)?;
                    file.write_all(&data).await.map_err(spool_error)?;
                }
                None if frames.total > in_memory => {
                    reserved.move_to_spool()?;
                    reserved.spool(data.len() as u64)?;
                    let named = tokio::task::spawn_blocking(|| {
                        tempfile::Builder::new()
                            .prefix("gatehouse-body-")
                            .tempfile()
                    })
                    .await
                    .map_err(|_| HttpError::Internal)?
                    .map_err(spool_error)?;
                    let mut file = tokio::fs::File::from_std(
                        named.as_file().try_clone().map_err(spool_error)?,
                    );
                    file.write_all(&buf).await.map_err(spool_error)?;
                    file.write_all(&data).await.map_err(spool_error)?;
                    buf = BytesMut::new();
                    spool = Some((named, file));
                }
                None => {
                    reserved.memory(data.len() as u64)?;
                    buf.extend_from_slice(&data);
                }
            }
        }
        Ok(match spool {
            Some((named, mut file)) => {
                file.flush().await.map_err(spool_error)?;
                RequestBody::Spooled {
                    file: named,
                    len: frames.total,
                }
            }
            None => RequestBody::Memory(buf.freeze()),
        })
    };
    let body = tokio::time::timeout(limits.body_read_timeout, collect)
        .await
        .map_err(|_| HttpError::RequestTimeout)??;
    Ok((body, Some(reserved)))
}

/// Reads the body and throws it away, within the same limits, as nginx discards the body of a
/// request for a static file: the connection stays usable for the next request, and a body that
/// is malformed is still a 400.
pub async fn discard<B>(body: B, limits: &Limits) -> Result<(), HttpError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    if body.is_end_stream() {
        return Ok(());
    }
    let mut frames = Frames::new(body, limits.max_body_size);
    let drain = async {
        while frames.next().await?.is_some() {}
        Ok(())
    };
    tokio::time::timeout(limits.body_read_timeout, drain)
        .await
        .map_err(|_| HttpError::RequestTimeout)?
}

/// A body's data frames, within `max_body_size`, its trailers checked.
struct Frames<B> {
    body: B,
    max: u64,
    total: u64,
}

impl<B> Frames<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    fn new(body: B, max: u64) -> Frames<B> {
        Frames {
            body,
            max,
            total: 0,
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, HttpError> {
        while let Some(frame) = self.body.frame().await {
            let frame =
                frame.map_err(|_| HttpError::BadRequest("malformed or incomplete request body"))?;
            match frame.into_data() {
                Ok(data) => {
                    self.total += data.len() as u64;
                    if self.total > self.max {
                        return Err(HttpError::PayloadTooLarge);
                    }
                    return Ok(Some(data));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        check_trailers(&trailers)?;
                    }
                }
            }
        }
        Ok(None)
    }
}

fn spool_error(e: std::io::Error) -> HttpError {
    tracing::error!(error = %e, "cannot write a request body to a temporary file");
    HttpError::Internal
}

/// Fields that frame, route or authenticate a message may not arrive late in trailers (RFC 9110 6.5.1).
fn check_trailers(trailers: &HeaderMap) -> Result<(), HttpError> {
    const FORBIDDEN: [&str; 9] = [
        "content-length",
        "transfer-encoding",
        "host",
        "content-encoding",
        "content-range",
        "trailer",
        "te",
        "authorization",
        "cookie",
    ];
    if trailers.keys().any(|k| FORBIDDEN.contains(&k.as_str())) {
        return Err(HttpError::BadRequest("forbidden field in trailers"));
    }
    Ok(())
}

/// What a target gets of the request body: read whole (by its body policy or for a plugin), or
/// still unread, to stream.
#[derive(Debug)]
pub enum ServeBody<'a> {
    /// The whole body (empty when there is none).
    Read(&'a RequestBody),
    /// The body as it arrives, within the limits.
    Unread(BodyStream),
}

/// Why a streamed body stopped: what its consumer tells the client.
pub type BodyFault = Arc<std::sync::Mutex<Option<HttpError>>>;

/// A request body passed on as it arrives (to an upstream), within `max_body_size` and
/// `body_read_timeout`, its trailers checked. A limit it breaks is kept in [`BodyStream::fault`],
/// so the consumer can answer 413 or 408 rather than a generic failure.
pub struct BodyStream {
    inner: std::pin::Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError> + Send>>,
    total: u64,
    max: u64,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    fault: BodyFault,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyStream")
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl BodyStream {
    /// Streams `body` within `limits`.
    pub fn new<B>(body: B, limits: &Limits) -> BodyStream
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        BodyStream {
            inner: Box::pin(body.map_err(Into::into)),
            total: 0,
            max: limits.max_body_size,
            deadline: Box::pin(tokio::time::sleep(limits.body_read_timeout)),
            fault: BodyFault::default(),
        }
    }

    /// Where the limit a body broke is kept.
    pub fn fault(&self) -> BodyFault {
        Arc::clone(&self.fault)
    }

    fn fail(&mut self, error: HttpError) -> BoxError {
        let text = error.to_string();
        if let Ok(mut slot) = self.fault.lock() {
            slot.get_or_insert(error);
        }
        text.into()
    }
}

impl http_body::Body for BodyStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.total += data.len() as u64;
                    if this.total > this.max {
                        return Poll::Ready(Some(Err(this.fail(HttpError::PayloadTooLarge))));
                    }
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Err(e) = check_trailers(trailers)
                {
                    return Poll::Ready(Some(Err(this.fail(e))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => Poll::Ready(Some(Err(this.fail(HttpError::BadRequest(
                "malformed or incomplete request body",
            ))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(this.fail(HttpError::RequestTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
