//! Bodies through a proxy: the request body sent to a server (from memory, a spool file, or
//! streamed from the client), and the response body passed back with an idle-read timeout.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};

use super::server::InFlight;
use crate::body::{ChunkStream, FileChunks, LazyDeadline};
use crate::request_body::BodyStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's body while it is still unsent: an attempt takes it out when it first reads it, so
/// a retry after a connection that failed before sending anything can still send it.
pub type Unsent = Arc<Mutex<Option<BodyStream>>>;

/// A request body on its way to a server, saying when its last byte has gone (the first-byte
/// timer starts then).
#[derive(Debug)]
pub struct OutBody {
    kind: OutKind,
    sent: Option<tokio::sync::watch::Sender<bool>>,
}

/// Where a request body comes from.
#[derive(Debug)]
pub enum OutKind {
    /// Nothing.
    Empty,
    /// In memory (sent as one frame).
    Full(Option<Bytes>),
    /// A spooled body, read from its file.
    File(FileChunks),
    /// Streamed from the client.
    Stream {
        /// Where the stream waits until first read.
        unsent: Unsent,
        /// The stream, once taken.
        taken: Option<BodyStream>,
    },
}

impl OutKind {
    /// A streamed body, taken from `unsent` when first read.
    pub fn streamed(unsent: &Unsent) -> OutKind {
        OutKind::Stream {
            unsent: Arc::clone(unsent),
            taken: None,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            OutKind::Empty => Poll::Ready(None),
            OutKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            OutKind::File(file) => Poll::Ready(
                file.read_next()
                    .map(|r| r.map(Frame::data).map_err(Into::into)),
            ),
            OutKind::Stream { unsent, taken } => {
                if taken.is_none() {
                    *taken = unsent.lock().unwrap_or_else(PoisonError::into_inner).take();
                }
                match taken {
                    Some(stream) => Pin::new(stream).poll_frame(cx),
                    None => Poll::Ready(Some(Err("the request body was already sent".into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutKind::Empty => true,
            OutKind::Full(bytes) => bytes.is_none(),
            OutKind::File(file) => file.left() == 0,
            OutKind::Stream { taken, .. } => taken.as_ref().is_some_and(|s| s.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutKind::Empty => SizeHint::with_exact(0),
            OutKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            OutKind::File(file) => SizeHint::with_exact(file.left()),
            OutKind::Stream { unsent, taken } => match taken {
                Some(stream) => stream.size_hint(),
                None => unsent
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .map_or_else(SizeHint::default, |s| s.size_hint()),
            },
        }
    }
}

impl OutBody {
    /// A body, and what turns true once all of it has been sent (`None` for an empty body: sent
    /// with the head, and most requests have one).
    pub fn new(kind: OutKind) -> (OutBody, Option<tokio::sync::watch::Receiver<bool>>) {
        if kind.is_end_stream() {
            return (OutBody { kind, sent: None }, None);
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        (
            OutBody {
                kind,
                sent: Some(tx),
            },
            Some(rx),
        )
    }
}

impl http_body::Body for OutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let poll = this.kind.poll_frame(cx);
        // Done once the last frame is out, or the end is seen: hyper may not ask again after a
        // frame that ends the body.
        let done = matches!(poll, Poll::Ready(None))
            || (matches!(poll, Poll::Ready(Some(Ok(_)))) && this.kind.is_end_stream());
        if done && let Some(sent) = this.sent.take() {
            let _ = sent.send(true);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.kind.size_hint()
    }
}

/// A server's response body on its way to the client: a pause longer than `read_timeout` ends
/// it with an error (the client's connection then closes, as nginx does); the server's slot is
/// held until it ends.
pub struct Streamed {
    body: hyper::body::Incoming,
    idle: Duration,
    /// When the next piece must come by.
    deadline: LazyDeadline,
    _in_flight: InFlight,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed").finish_non_exhaustive()
    }
}

impl Streamed {
    /// Passes `body` on, within `idle` between reads, holding `in_flight`.
    pub fn new(body: hyper::body::Incoming, idle: Duration, in_flight: InFlight) -> Streamed {
        Streamed {
            body,
            idle,
            deadline: LazyDeadline::new(tokio::time::Instant::now() + idle),
            _in_flight: in_flight,
        }
    }
}

impl ChunkStream for Streamed {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let next = tokio::time::Instant::now() + self.idle;
                        self.deadline.set(next);
                        return Poll::Ready(Some(Ok(data)));
                    }
                    // Trailers are not passed on.
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(std::io::Error::other(e))));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    if self.deadline.poll_expired(cx) {
                        return Poll::Ready(Some(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the upstream server sent nothing within read_timeout",
                        ))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
