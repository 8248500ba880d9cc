//! What the wire guard (`server::wire`) saw in the raw bytes of each HTTP/1 request head, queued
//! per connection for the admit phase, which takes them in the order hyper dispatches requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What the raw bytes of one request head showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadVerdict {
    /// Nothing wrong at the byte level.
    Clean,
    /// A smuggling or framing shape; the reason is for the log.
    Reject(&'static str),
    /// The head is larger than the configured limit.
    TooLarge,
}

/// The verdicts of one connection, shared between the reader and the request pipeline.
#[derive(Debug, Clone, Default)]
pub struct Verdicts(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// The connection switched protocols (a 101 was sent): no more heads to follow.
    upgraded: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    pending: std::collections::VecDeque<HeadVerdict>,
    /// Tracking stopped on bytes we could not follow: fail closed for any later request.
    lost: bool,
}

impl Verdicts {
    /// The verdict for the next request hyper dispatches; `None` on HTTP/2 connections.
    pub fn next(&self) -> Option<HeadVerdict> {
        let Ok(mut q) = self.0.queue.lock() else {
            return Some(HeadVerdict::Reject("internal lock poisoned"));
        };
        match q.pending.pop_front() {
            Some(v) => Some(v),
            None if q.lost => Some(HeadVerdict::Reject("request framing could not be followed")),
            None => None,
        }
    }

    /// Queues the verdict of the next head the wire guard saw.
    pub fn push(&self, v: HeadVerdict) {
        if let Ok(mut q) = self.0.queue.lock() {
            q.pending.push_back(v);
        }
    }

    /// The connection switches protocols after this response: the reader stops looking for heads.
    pub fn upgrade(&self) {
        self.0.upgraded.store(true, Ordering::Release);
    }

    /// Whether the connection switched protocols.
    pub fn is_upgraded(&self) -> bool {
        self.0.upgraded.load(Ordering::Acquire)
    }

    /// The connection parks: an empty queue gives its buffer back.
    pub fn park(&self) {
        if let Ok(mut q) = self.0.queue.lock()
            && q.pending.is_empty()
        {
            q.pending = std::collections::VecDeque::new();
        }
    }

    /// The guard could not follow the framing: every later request is refused.
    pub fn lose_track(&self) {
        if let Ok(mut q) = self.0.queue.lock() {
            q.lost = true;
        }
    }
}
