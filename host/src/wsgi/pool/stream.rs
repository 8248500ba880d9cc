//! A response as it arrives from a worker: the head, then the body streamed with credit.

use super::PoolGuard;
use super::buffer::{ResponseBuffer, batch_credit};
use super::lane::{Event, Lane, Worker};

use super::super::frame::Kind;
use super::super::inbox;
use crate::body::{Body, LazyDeadline};
use crate::error::HttpError;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

pub(super) fn build_response(
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
    pub(super) worker: Arc<Worker>,
    pub(super) lane: Arc<Lane>,
    pub(super) id: u32,
    pub(super) events: Option<inbox::Receiver<Event>>,
    pub(super) deadline: LazyDeadline,
    pub(super) done: bool,
    pub(super) timeout: Duration,
    /// The front's buffer for this body (credit sent as pieces arrive), if it has one.
    pub(super) buffer: Option<Arc<ResponseBuffer>>,
    /// Part of the body is in the buffer's file: read it out before anything after it.
    pub(super) from_file: bool,
    /// Credit earned as the client takes the body and not yet sent (see [`batch_credit`]).
    pub(super) owed: u32,
    /// Body bytes still to come by the response's `Content-Length`, if it has one: once none are,
    /// hyper stops reading the body, and that is no client leaving (no `Cancel`).
    pub(super) left: Option<u64>,
    pub(super) _pool: Arc<PoolGuard>,
}

/// Largest piece read back from a response's file at once.
const FILE_PIECE: usize = 256 * 1024;

impl ResponseStream {
    pub(super) fn timed_out(&mut self) {
        tracing::error!(pid = self.worker.pid, timeout = ?self.timeout, "request timed out: replacing its worker");
        self.worker.request_timed_out();
        self.done = true;
    }
}

impl crate::body::ChunkStream for ResponseStream {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            if self.from_file
                && let Some(piece) = self
                    .buffer
                    .as_ref()
                    .and_then(|b| b.read_spilled(FILE_PIECE))
            {
                return Poll::Ready(Some(match piece {
                    Ok((bytes, credit)) => {
                        self.credit(credit);
                        self.progress();
                        Ok(bytes)
                    }
                    Err(error) => {
                        self.done = true;
                        Err(error)
                    }
                }));
            }
            let Some(events) = self.events.as_mut() else {
                return Poll::Ready(None);
            };
            let event = events.poll_recv(cx);
            if let Poll::Ready(Some(Event::Spilled)) = event {
                self.from_file = true;
                continue;
            }
            if let Poll::Ready(Some(Event::Begun)) = event {
                continue;
            }
            return self.on_event(event, cx);
        }
    }
}

impl ResponseStream {
    /// Owes the worker `n` more bytes of credit, sent once enough has gathered.
    fn credit(&mut self, n: u32) {
        if let Some(n) = batch_credit(&mut self.owed, n) {
            self.lane.send(Kind::Credit, self.id, &n.to_be_bytes());
        }
    }

    /// A streamed body may run long: `timeout` bounds each wait for the app's next piece, not
    /// the whole.
    fn progress(&mut self) {
        self.deadline
            .set(tokio::time::Instant::now() + self.timeout);
    }

    fn on_event(
        &mut self,
        event: Poll<Option<Event>>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::io::Result<Bytes>>> {
        match event {
            Poll::Ready(Some(Event::Body(bytes))) => {
                if let Some(left) = &mut self.left {
                    *left = left.saturating_sub(bytes.len() as u64);
                }
                let credit = match &self.buffer {
                    Some(buffer) => buffer.taken(bytes.len() as u64),
                    None => u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                };
                self.credit(credit);
                self.progress();
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
            Poll::Ready(
                Some(
                    Event::Start(..)
                    | Event::Complete(..)
                    | Event::Unusable(_)
                    | Event::Gone { .. }
                    | Event::Spilled
                    | Event::Begun,
                )
                | None,
            ) => {
                self.done = true;
                Poll::Ready(Some(Err(std::io::Error::other(
                    "the worker died mid-response",
                ))))
            }
            Poll::Pending => {
                if self.deadline.poll_expired(cx) {
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
        if !self.done && self.left != Some(0) && self.worker.alive.load(Ordering::Acquire) {
            // The client went away first: let the worker stop and call close().
            self.lane.send(Kind::Cancel, self.id, b"");
        }
        // The slot stays held (see `Lane::held`) until the worker's last frame for it.
        self.lane.close_stream(self.id);
    }
}
