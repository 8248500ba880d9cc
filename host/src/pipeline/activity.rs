//! A connection's requests in flight and its idle time, for the keep-alive timer: the pipeline marks
//! each request, the server's connection task reads the idle time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use tokio::time::Instant;

/// Requests in flight on a connection and when the last one finished; and whether a response
/// body waits for the client (handed data that the connection has not come back for).
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    last_done_ms: AtomicU64,
    /// Response bodies whose last poll gave data: the next poll waits on the client.
    waiting_bodies: AtomicUsize,
    /// When a response body was last polled, in ms since `opened`.
    last_poll_ms: AtomicU64,
    /// The server asked the connection to close (to make room, or at shutdown). A flag and a
    /// waker rather than a `Notify`: a parked connection waits on it without holding a future.
    close: AtomicBool,
    close_waker: AtomicWaker,
}

/// Marks one request in flight until dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    /// The connection's activity.
    pub fn activity(&self) -> &Activity {
        &self.0
    }
}

impl Default for Activity {
    /// A connection opened now, with nothing in flight.
    fn default() -> Activity {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
            waiting_bodies: AtomicUsize::new(0),
            last_poll_ms: AtomicU64::new(0),
            close: AtomicBool::new(false),
            close_waker: AtomicWaker::new(),
        }
    }
}

impl Activity {
    /// Counts a request as in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(Arc::clone(self))
    }

    /// Whether a request has finished on the connection (a connection that has served none is
    /// not parked: its first head has its own timer).
    pub fn has_served(&self) -> bool {
        self.last_done_ms.load(Ordering::Acquire) > 0
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

impl Activity {
    /// Asks the connection to close once what is in flight is done.
    pub fn request_close(&self) {
        self.close.store(true, Ordering::Release);
        self.close_waker.wake();
    }

    /// Ready once the connection has been asked to close.
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.close_waker.register(cx.waker());
        if self.close.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Who a request to close wakes from now on (the event loop's parking lot): it replaces the
    /// waker of the task the connection leaves, which must not keep that task's memory alive.
    pub fn set_close_waker(&self, waker: &std::task::Waker) {
        self.close_waker.register(waker);
    }

    /// Whether the connection has been asked to close (for a holder that cannot wait on it).
    pub fn asked_to_close(&self) -> bool {
        self.close.load(Ordering::Acquire)
    }

    /// Resolves once the connection has been asked to close.
    pub async fn close_requested(&self) {
        std::future::poll_fn(|cx| self.poll_close(cx)).await;
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A response body was polled; `gave_data` is whether it handed data over (so the next poll
    /// waits on the connection, not on the producer); `was_waiting` what it said before.
    pub fn body_polled(&self, was_waiting: bool, gave_data: bool) {
        self.last_poll_ms
            .store(self.elapsed_ms(), Ordering::Relaxed);
        match (was_waiting, gave_data) {
            (false, true) => {
                self.waiting_bodies.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.waiting_bodies.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
    }

    /// A response made progress without its body being polled (a file sent by the kernel).
    pub fn progressed(&self) {
        self.last_poll_ms
            .store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// A response body that was waiting on the connection went away.
    pub fn body_dropped(&self, was_waiting: bool) {
        if was_waiting {
            self.waiting_bodies.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// How long response data has waited for the connection to take more (`None`: nothing
    /// waits). On HTTP/2 a client that never opens its window stalls here, not in a socket
    /// write.
    pub fn send_stalled_for(&self) -> Option<Duration> {
        if self.waiting_bodies.load(Ordering::Acquire) == 0 {
            return None;
        }
        let last = self.last_poll_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(
            self.elapsed_ms().saturating_sub(last),
        ))
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.opened.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.0.last_done_ms.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
