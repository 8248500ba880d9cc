//! A connection's requests in flight and its idle time, for the keep-alive timer: the pipeline marks
//! each request, the server's connection task reads the idle time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Requests in flight on a connection and when the last one finished.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    last_done_ms: AtomicU64,
}

/// Marks one request in flight until dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Default for Activity {
    /// A connection opened now, with nothing in flight.
    fn default() -> Activity {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Counts a request as in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(Arc::clone(self))
    }

    /// How long the connection has had nothing in flight; `None` while a request runs.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.opened + Duration::from_millis(self.last_done_ms.load(Ordering::Acquire));
        Some(now.saturating_duration_since(last))
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_done_ms.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
