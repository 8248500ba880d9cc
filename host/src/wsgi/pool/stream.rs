//! A response as it arrives from a worker: the head, then the body streamed with credit.

use super::PoolGuard;
use super::buffer::ResponseBuffer;
use super::lane::{Event, Lane, Worker};

use super::super::frame::Kind;
use super::super::inbox;
use crate::body::Body;
use crate::error::HttpError;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use std::future::Future;
use std::pin::Pin;
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
    pub(super) deadline: tokio::time::Instant,
    /// The deadline's timer, made when the body first has to wait.
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
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

/// Credit goes back to a worker in pieces of at least this many bytes (a window update, as in
/// HTTP/2), so a response smaller than that costs no frame and no system call on either side.
/// A stream's credit is held back in two places (its lane, as pieces arrive into the buffer, and
/// the stream, as the client takes them), together less than the worker's window minus its
/// largest piece: a worker never waits for credit the front is holding.
pub(super) const CREDIT_BATCH: u32 = 256 * 1024;

const _: () = assert!(
    2 * CREDIT_BATCH as i64 <= crate::wsgi::worker::WINDOW - crate::wsgi::worker::MAX_CHUNK as i64
);

/// Adds `n` to what a stream owes its worker; the credit to send now, if enough has gathered.
pub(super) fn batch_credit(owed: &mut u32, n: u32) -> Option<u32> {
    *owed = owed.saturating_add(n);
    (*owed >= CREDIT_BATCH).then(|| std::mem::take(owed))
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
        self.deadline = tokio::time::Instant::now() + self.timeout;
        if let Some(timer) = self.timer.as_mut() {
            timer.as_mut().reset(self.deadline);
        }
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
        if !self.done && self.left != Some(0) && self.worker.alive.load(Ordering::Acquire) {
            // The client went away first: let the worker stop and call close().
            self.lane.send(Kind::Cancel, self.id, b"");
        }
        // The slot stays held (see `Lane::held`) until the worker's last frame for it.
        self.lane.close_stream(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::{CREDIT_BATCH, batch_credit};

    #[test]
    fn credit_goes_back_in_batches_and_nothing_is_lost() {
        let mut owed = 0;
        assert_eq!(
            batch_credit(&mut owed, 100),
            None,
            "a small response sends none"
        );
        assert_eq!(batch_credit(&mut owed, CREDIT_BATCH - 101), None);
        assert_eq!(batch_credit(&mut owed, 1), Some(CREDIT_BATCH));
        assert_eq!(owed, 0);
        assert_eq!(
            batch_credit(&mut owed, 3 * CREDIT_BATCH),
            Some(3 * CREDIT_BATCH)
        );
        assert_eq!(batch_credit(&mut owed, 0), None);
    }
}
