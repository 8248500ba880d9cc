//! Response bodies: one enum instead of a boxed trait object, so the common cases cost no allocation.

use std::fs::File;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::sendfile::{FileSends, MarkedFile};

/// Largest piece of a file read at once while streaming it: bigger pieces mean fewer syscalls per
/// byte, but each response in flight holds one piece in memory, for as long as its client takes
/// to read it (up to `send_timeout`): 500 clients that stop reading hold 500 pieces.
const FILE_CHUNK: u64 = 128 * 1024;

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// No body at all (HEAD, 204, 304, or a body the client will not see).
    Empty,
    /// A body already in memory, sent as one frame.
    Full(Option<Bytes>),
    /// A byte range of an open file, streamed in chunks of at most [`FILE_CHUNK`].
    File(FileChunks),
    /// A body a target produces as it goes (a WSGI worker's response).
    Stream(Box<dyn ChunkStream>),
    /// A file the connection sends with `sendfile` (see [`crate::sendfile`]).
    Marked(MarkedFile),
}

/// A response body produced piece by piece by a target; a target's own type, so this layer needs
/// to know none of them.
pub trait ChunkStream: Send + Sync + std::fmt::Debug {
    /// The next piece of the body; `None` at its end, an error if it cannot be completed.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>>;
}

impl Body {
    /// This body as a connection that sends files with `sendfile` sends it: a file through
    /// `sends`, anything else as it is.
    pub fn sent_through(self, sends: &std::sync::Arc<FileSends>) -> Body {
        match self {
            Body::File(chunks) => {
                let (file, left) = chunks.into_parts();
                Body::Marked(MarkedFile::new(file, left, sends))
            }
            body => body,
        }
    }

    /// A body from anything that becomes [`Bytes`].
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(bytes))
        }
    }
}

/// A deadline for a body that may have to wait (for a worker's or a server's next piece): its
/// timer is made only when the body first waits, so a body already whole when first read costs
/// no allocation and no timer.
#[derive(Debug)]
pub struct LazyDeadline {
    at: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LazyDeadline {
    /// Runs out at `at`.
    pub fn new(at: tokio::time::Instant) -> LazyDeadline {
        LazyDeadline { at, timer: None }
    }

    /// Moves it to `at`.
    pub fn set(&mut self, at: tokio::time::Instant) {
        self.at = at;
        if let Some(timer) = self.timer.as_mut() {
            timer.as_mut().reset(at);
        }
    }

    /// Whether it has run out; if not, `cx` is woken when it does.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        use std::future::Future;
        let at = self.at;
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}

/// `len` bytes of a file starting at its current position.
#[derive(Debug)]
pub struct FileChunks {
    file: File,
    left: u64,
}

impl FileChunks {
    /// Streams the next `len` bytes of `file` (already positioned at the range start).
    pub fn new(file: File, len: u64) -> FileChunks {
        FileChunks { file, left: len }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::File(chunks) => Poll::Ready(chunks.read_next().map(|r| r.map(Frame::data))),
            Body::Stream(stream) => stream.poll_next(cx).map(|r| r.map(|r| r.map(Frame::data))),
            Body::Marked(file) => Poll::Ready(file.next_frame().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::File(chunks) => chunks.left == 0,
            Body::Stream(_) => false,
            Body::Marked(file) => file.left() == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::File(chunks) => SizeHint::with_exact(chunks.left),
            Body::Stream(_) => SizeHint::default(),
            Body::Marked(file) => SizeHint::with_exact(file.left()),
        }
    }
}

impl FileChunks {
    /// The file (positioned at the next byte to send) and how many bytes are left.
    pub fn into_parts(self) -> (File, u64) {
        (self.file, self.left)
    }

    /// Bytes not yet read.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// Reads the next chunk synchronously. Like nginx without `aio`, this reads from the page cache on
    /// the event-loop thread: a thread hand-off per chunk costs more than the copy for warm files.
    pub fn read_next(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.left == 0 {
            return None;
        }
        let want = self.left.min(FILE_CHUNK) as usize;
        // Read straight into spare capacity: zeroing the buffer first would cost as much as the copy.
        let mut buf = Vec::with_capacity(want);
        while buf.len() < want {
            match rustix::io::read(&self.file, rustix::buffer::spare_capacity(&mut buf)) {
                Ok(0) => break,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    self.left = 0;
                    return Some(Err(e.into()));
                }
            }
        }
        let filled = buf.len();
        if filled == 0 {
            // The file shrank under us: end the stream short; the client sees a truncated body and the
            // connection closes, which is the honest outcome.
            self.left = 0;
            return Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            )));
        }
        self.left -= filled as u64;
        Some(Ok(Bytes::from(buf)))
    }
}
