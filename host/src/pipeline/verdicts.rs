//! What the wire guard (`server::wire`) saw in the raw bytes of each HTTP/1 request head, queued
//! per connection for the admit phase, which takes them in the order hyper dispatches requests.

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
pub struct Verdicts(Arc<Mutex<Queue>>);

#[derive(Debug, Default)]
struct Queue {
    pending: std::collections::VecDeque<HeadVerdict>,
    /// Tracking stopped on bytes we could not follow: fail closed for any later request.
    lost: bool,
}

impl Verdicts {
    /// The verdict for the next request hyper dispatches; `None` on HTTP/2 connections.
    pub fn next(&self) -> Option<HeadVerdict> {
        let Ok(mut q) = self.0.lock() else {
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
        if let Ok(mut q) = self.0.lock() {
            q.pending.push_back(v);
        }
    }

    /// The guard could not follow the framing: every later request is refused.
    pub fn lose_track(&self) {
        if let Ok(mut q) = self.0.lock() {
            q.lost = true;
        }
    }
}
