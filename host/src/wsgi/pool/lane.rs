//! One event loop's connections to the workers (lanes), the live workers as the event loops see
//! them, and reading the frames a worker sends back.

use super::super::frame::{self, Kind};
use super::super::{inbox, transport};
use super::ahead::{Ahead, Due};
use super::buffer::{Placed, ResponseBuffer};
use crate::error::HttpError;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use thread_local::ThreadLocal;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

/// What a worker said about one request.
#[derive(Debug)]
pub(super) enum Event {
    /// A whole small response whose head, body and end arrived in one read: one hand-off, no stream.
    Complete(u16, HeaderMap, Bytes),
    Start(u16, HeaderMap),
    Body(Bytes),
    End,
    Error(String),
    /// The app's response head cannot be used (too large, malformed): a 502.
    Unusable(String),
    /// The worker died or was killed. `read_all`: everything it wrote on this lane was read
    /// first, so a request sent ahead that has not begun never reached the app.
    Gone {
        read_all: bool,
    },
    /// More of the body went to the response's file (see [`super::buffer`]).
    Spilled,
    /// A thread of the worker took the request sent ahead: its `timeout` runs from now.
    Begun,
}

/// Where a lane delivers one request's events.
#[derive(Debug)]
pub(super) struct Sink {
    tx: inbox::Sender<Event>,
    /// The front's buffer for the response's body (credit on receipt), if it has one.
    buffer: Option<Arc<ResponseBuffer>>,
    /// When its `timeout` runs out; marked here (under the same lock as the stream's `Gone`) when
    /// the worker begins a request sent ahead, so `Gone` never passes a `Begin` read before it.
    due: Due,
    /// Credit for pieces the buffer took and not yet sent (see [`super::buffer::batch_credit`]).
    owed: u32,
}

/// One event loop's connection to one worker: frames out, and the requests waiting for frames back.
/// A task on that event loop reads it, so a response reaches its request on the same thread.
#[derive(Debug)]
pub(super) struct Lane {
    pub(super) frames: transport::Sender,
    /// Requests waiting for frames, by stream id (ours, sequential: a fast hash is safe).
    pub(super) streams: Mutex<FxHashMap<u32, Sink>>,
    /// Requests the worker has not finished, by stream id: each holds its pool slot until the worker
    /// says it is done (its last frame) or dies, even after the client has gone, so `backlog` bounds
    /// what the worker really has to do.
    pub(super) held: Mutex<FxHashMap<u32, Held>>,
    pub(super) next_stream: AtomicU32,
    /// Its reader has read to the end (the worker closed it or broke it).
    reader_done: AtomicBool,
}

/// A request's place in the pool: its queue permit and its count on the worker.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) _permit: super::Admitted,
    pub(super) worker: Arc<Worker>,
    /// When `timeout` runs out for it; the supervisor enforces it for requests whose client left.
    pub(super) due: Due,
    /// Told when the request is done: its thread is free for the next one waiting.
    pub(super) freed: Arc<tokio::sync::Notify>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.worker.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
    }
}

impl Lane {
    /// Takes over an accepted lane socket on the calling event loop and starts reading it. If the
    /// reading fails (frames that make no sense: the worker's state cannot be trusted), `broken`
    /// fires and the worker is replaced.
    pub(super) fn adopt(
        socket: std::os::unix::net::UnixStream,
        broken: CancellationToken,
        alive: Arc<AtomicBool>,
    ) -> std::io::Result<Arc<Lane>> {
        socket.set_nonblocking(true)?;
        let (frames, mut receiver) = transport::over_socket(UnixStream::from_std(socket)?);
        let lane = Arc::new(Lane {
            frames,
            streams: Mutex::new(FxHashMap::default()),
            held: Mutex::new(FxHashMap::default()),
            next_stream: AtomicU32::new(1),
            reader_done: AtomicBool::new(false),
        });
        let reading = Arc::clone(&lane);
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let result = read_frames(&mut receiver, &mut buf, &reading).await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "a worker connection failed: replacing the worker");
                broken.cancel();
            }
            // The worker is gone (its supervisor sees it exit) or will be: it takes nothing new,
            // then whatever waits on this lane fails. In that order: a slot freed here must not
            // go to a request that would be sent to the dead worker.
            alive.store(false, Ordering::Release);
            reading.fail_all(result.is_ok());
            reading.reader_done.store(true, Ordering::Release);
        });
        Ok(lane)
    }

    pub(super) fn send(&self, kind: Kind, stream: u32, payload: &[u8]) {
        let mut buf = Vec::with_capacity(frame::HEADER_LEN + payload.len());
        frame::write_frame(&mut buf, kind, stream, payload);
        self.frames.send(buf);
    }

    pub(super) fn open_stream(
        &self,
        buffer: Option<Arc<ResponseBuffer>>,
        due: Due,
    ) -> (u32, inbox::Receiver<Event>) {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = inbox::inbox();
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(
                id,
                Sink {
                    tx,
                    buffer,
                    due,
                    owed: 0,
                },
            );
        }
        (id, rx)
    }

    /// Holds a request's slot until the worker finishes it.
    pub(super) fn hold(&self, id: u32, held: Held) {
        if let Ok(mut map) = self.held.lock() {
            map.insert(id, held);
        }
    }

    /// A thread of the worker took a request sent ahead.
    fn begin(&self, id: u32) {
        if let Some(sink) = self.streams.lock().ok().as_ref().and_then(|s| s.get(&id)) {
            sink.due.begin();
            sink.tx.send(Event::Begun);
        }
        // Also through its place in the pool: after its client left (no stream), the supervisor
        // still holds it to its `timeout` (`Worker::overdue`). The same value, set once.
        if let Some(held) = self.held.lock().ok().as_ref().and_then(|h| h.get(&id)) {
            held.due.begin();
            held.worker.ahead.began();
        }
    }

    /// The worker finished a request (its last frame arrived): its slot is free.
    fn release(&self, id: u32) {
        let held = self.forget(id);
        if let Some(held) = &held {
            held.worker.finished.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Gives up a request's slot (dropped with the returned value), finished or never sent.
    pub(super) fn forget(&self, id: u32) -> Option<Held> {
        self.held.lock().ok().and_then(|mut map| map.remove(&id))
    }

    /// Forgets a stream; `false` if it was already gone (failed with its worker).
    pub(super) fn close_stream(&self, id: u32) -> bool {
        self.streams
            .lock()
            .ok()
            .and_then(|mut s| s.remove(&id))
            .is_some()
    }

    pub(super) fn deliver(&self, id: u32, event: Event) {
        let mut streams = self.streams.lock();
        let Some(sink) = streams.as_mut().ok().and_then(|s| s.get_mut(&id)) else {
            return;
        };
        match (event, &sink.buffer) {
            (Event::Body(bytes), Some(buffer)) => {
                let (placed, credit) = buffer.arrived(bytes);
                if let Some(credit) = super::buffer::batch_credit(&mut sink.owed, credit) {
                    self.send(Kind::Credit, id, &credit.to_be_bytes());
                }
                sink.tx.send(match placed {
                    Placed::Memory(bytes) => Event::Body(bytes),
                    Placed::Spilled => Event::Spilled,
                });
            }
            (event, _) => sink.tx.send(event),
        }
    }

    /// Tells every request on this lane that the worker is gone (`read_all`: after reading all it
    /// wrote), and frees their slots.
    pub(super) fn fail_all(&self, read_all: bool) {
        let held: Vec<_> = self
            .held
            .lock()
            .map(|mut map| map.drain().collect())
            .unwrap_or_default();
        drop(held);
        let streams: Vec<_> = self
            .streams
            .lock()
            .map(|mut s| s.drain().collect())
            .unwrap_or_default();
        for (_, sink) in streams {
            sink.tx.send(Event::Gone { read_all });
        }
    }
}

/// A live worker process, as the event loops see it.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) pid: u32,
    /// Lane sockets no event loop has taken yet.
    pub(super) spare: Mutex<Vec<std::os::unix::net::UnixStream>>,
    /// Each event loop's lane to this worker.
    pub(super) lanes: ThreadLocal<Arc<Lane>>,
    /// Requests it has (running, or sent ahead: see [`Ahead`]).
    pub(super) in_flight: AtomicUsize,
    /// When it last began a request (whether it may be sent more ahead).
    pub(super) ahead: Ahead,
    /// Taking requests; cleared (by its lanes too) the moment it is known to be gone.
    pub(super) alive: Arc<AtomicBool>,
    pub(super) kill: CancellationToken,
    /// Requests handed to this worker so far (sent ahead or not, retried elsewhere or not).
    pub(super) served: AtomicU64,
    /// Requests it finished (its last frame for them arrived).
    pub(super) finished: AtomicU64,
    /// Recycle after this many requests (0: never).
    pub(super) max_requests: u64,
    /// Fired when `max_requests` is reached: the supervisor starts a replacement, then drains this one.
    pub(super) retire: CancellationToken,
    /// Fired when one of its connections failed: the supervisor kills and replaces it.
    pub(super) broken: CancellationToken,
    /// Threads it runs requests on.
    pub(super) threads: usize,
    /// A request on it ran past `timeout` (it is being replaced for that).
    pub(super) timed_out: AtomicBool,
}

impl Worker {
    /// The calling event loop's lane, taken from the spares on first use. A thread beyond the lanes
    /// the worker opened (none in practice: there is one per event loop) borrows another's.
    pub(super) fn lane(&self) -> Result<Arc<Lane>, HttpError> {
        if let Some(lane) = self.lanes.get() {
            return Ok(Arc::clone(lane));
        }
        let spare = self.spare.lock().ok().and_then(|mut s| s.pop());
        match spare {
            Some(socket) => {
                let lane = Lane::adopt(socket, self.broken.clone(), Arc::clone(&self.alive)).map_err(|e| {
                    tracing::error!(pid = self.pid, error = %e, "cannot use a worker connection");
                    HttpError::BadGateway
                })?;
                Ok(Arc::clone(self.lanes.get_or(|| lane)))
            }
            None => self
                .lanes
                .iter()
                .next()
                .cloned()
                .ok_or(HttpError::BadGateway),
        }
    }

    /// Whether a request on this worker is past `deadline` plus a second: one whose client has left
    /// (so no response timer watches it) and that the app never finished.
    pub(super) fn overdue(&self, now: tokio::time::Instant) -> bool {
        self.lanes.iter().any(|lane| {
            let open = lane
                .streams
                .lock()
                .map(|s| s.keys().copied().collect::<Vec<_>>());
            let Ok(open) = open else { return false };
            lane.held.lock().is_ok_and(|held| {
                held.iter().any(|(id, h)| {
                    !open.contains(id)
                        && h.due
                            .deadline()
                            .is_some_and(|d| now > d + std::time::Duration::from_secs(1))
                })
            })
        })
    }

    /// A request on it ran past `timeout`. That costs the request, not the others: with nothing
    /// else running here the worker is killed at once; otherwise it takes no new requests and is
    /// replaced once the others are done (or `graceful_timeout` has passed).
    pub(super) fn request_timed_out(&self) {
        if self.timed_out.swap(true, Ordering::AcqRel) {
            return;
        }
        // Either way it takes no new request: one sent now would wait behind the stuck one.
        self.alive.store(false, Ordering::Release);
        if self.threads <= 1 || self.in_flight.load(Ordering::Acquire) <= 1 {
            self.kill.cancel();
        } else {
            self.retire.cancel();
        }
    }

    /// Marks the worker dead and tells every request on it.
    pub(super) fn fail_all(&self) {
        self.alive.store(false, Ordering::Release);
        for lane in self.lanes.iter() {
            lane.fail_all(false);
        }
    }

    /// Waits (at most `within`) until the reader of every lane in use has read to the end: then
    /// each request on it has heard what the worker said about it, `Begin` included.
    pub(super) async fn lanes_read(&self, within: std::time::Duration) {
        let until = tokio::time::Instant::now() + within;
        while self
            .lanes
            .iter()
            .any(|lane| !lane.reader_done.load(Ordering::Acquire))
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// Reads and delivers frames until the connection ends. Cancel-safe: unread bytes stay in `buf`.
pub(super) async fn read_frames(
    receiver: &mut transport::Receiver,
    buf: &mut BytesMut,
    lane: &Lane,
) -> std::io::Result<()> {
    loop {
        match receiver.recv(buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // A worker that dies with frames of ours unread resets the socket; Linux reports
            // that only once everything it wrote has been read, so this is its end too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
        // Responses whose start, body and end all came in this read go over as one event.
        let mut whole: Vec<(u32, u16, HeaderMap, Vec<Bytes>)> = Vec::new();
        while let Some(f) = frame::take_frame(buf)? {
            if matches!(f.kind, Kind::End | Kind::Error) {
                lane.release(f.stream);
            }
            let open = whole.iter().position(|(id, ..)| *id == f.stream);
            match (f.kind, open) {
                (Kind::Start, _) => match frame::decode_start(f.payload) {
                    Ok((status, headers)) => whole.push((f.stream, status, headers, Vec::new())),
                    Err(e) => lane.deliver(f.stream, Event::Unusable(e.to_string())),
                },
                (Kind::Body, Some(i)) => whole[i].3.push(f.payload),
                (Kind::End, Some(i)) => {
                    let (id, status, headers, parts) = whole.swap_remove(i);
                    lane.deliver(id, Event::Complete(status, headers, concat(parts)));
                }
                (Kind::Error, Some(i)) => {
                    // Started but failed: the client sees the start, then the failure, as if streamed.
                    let (id, status, headers, parts) = whole.swap_remove(i);
                    deliver_started(lane, id, status, headers, parts);
                    lane.deliver(
                        id,
                        Event::Error(String::from_utf8_lossy(&f.payload).into_owned()),
                    );
                }
                (Kind::Body, None) => lane.deliver(f.stream, Event::Body(f.payload)),
                (Kind::End, None) => lane.deliver(f.stream, Event::End),
                (Kind::Error, None) => lane.deliver(
                    f.stream,
                    Event::Error(String::from_utf8_lossy(&f.payload).into_owned()),
                ),
                (Kind::Begin, _) => lane.begin(f.stream),
                (other, _) => tracing::warn!(?other, "unexpected frame from a lane"),
            }
        }
        // Responses still going on: what came so far is streamed.
        for (id, status, headers, parts) in whole {
            deliver_started(lane, id, status, headers, parts);
        }
    }
}

fn deliver_started(lane: &Lane, id: u32, status: u16, headers: HeaderMap, parts: Vec<Bytes>) {
    lane.deliver(id, Event::Start(status, headers));
    for part in parts {
        lane.deliver(id, Event::Body(part));
    }
}

fn concat(mut parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for part in parts {
                all.extend_from_slice(&part);
            }
            all.freeze()
        }
    }
}
