//! Requests sent ahead to a busy worker (`prefetch`), and when each one's `timeout` starts.
//!
//! A worker whose every thread is busy may hold up to `prefetch` more requests in its socket, so
//! a thread that finishes goes straight to the next one instead of waiting for the front to learn
//! that it is free and send another (a wait of two context switches per request, in which the
//! worker's caches go cold). Only a worker that began a request within [`FRESH`] is sent more:
//! one stuck in a long request does not collect others behind it.
//!
//! A request sent ahead says so (`RequestAhead`), and the worker answers `Begin` when a thread
//! takes it, before the app sees it. So its `timeout` (the app's time) starts then, and one that
//! never began when its worker died can run on another worker (see `Pool::dispatch`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

/// A busy worker is sent a request ahead only if it began one this recently.
const FRESH: Duration = Duration::from_millis(10);

/// The clock `Ahead::last_begun` counts from.
static EPOCH: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

fn now_nanos() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// When a request's `timeout` runs out.
#[derive(Debug, Clone)]
pub(super) enum Due {
    /// A thread was free for it.
    At(Instant),
    /// Sent ahead: it waits behind the worker's earlier requests until the worker says `Begin`.
    Queued(Arc<Begun>),
}

impl Due {
    /// `None` while the request waits behind others in its worker.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            Due::At(deadline) => Some(*deadline),
            Due::Queued(begun) => begun.deadline.get().copied(),
        }
    }

    /// Whether it was sent ahead (and so says when it begins).
    pub(super) fn sent_ahead(&self) -> bool {
        matches!(self, Due::Queued(_))
    }

    /// The worker said a thread took it.
    pub(super) fn begin(&self) {
        if let Due::Queued(begun) = self {
            let _ = begun.deadline.set(Instant::now() + begun.timeout);
        }
    }
}

/// Set once, when a request sent ahead begins.
#[derive(Debug)]
pub(super) struct Begun {
    timeout: Duration,
    deadline: OnceLock<Instant>,
}

/// When one worker last began a request.
#[derive(Debug, Default)]
pub(super) struct Ahead {
    /// Nanoseconds from [`EPOCH`]; 0: never.
    last_begun: AtomicU64,
}

impl Ahead {
    /// Counts a request onto the worker (`in_flight`): it begins now if a thread is free, else
    /// it is sent ahead.
    pub(super) fn admit(&self, in_flight: &AtomicUsize, threads: usize, timeout: Duration) -> Due {
        if in_flight.fetch_add(1, Ordering::AcqRel) < threads {
            self.began();
            return Due::At(Instant::now() + timeout);
        }
        Due::Queued(Arc::new(Begun {
            timeout,
            deadline: OnceLock::new(),
        }))
    }

    /// The worker began a request.
    pub(super) fn began(&self) {
        self.last_begun.store(now_nanos(), Ordering::Release);
    }

    /// Whether the worker began a request within [`FRESH`].
    pub(super) fn fresh(&self) -> bool {
        let last = self.last_begun.load(Ordering::Acquire);
        last != 0 && now_nanos().saturating_sub(last) < FRESH.as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_beyond_the_threads_has_no_deadline_until_it_begins() {
        let ahead = Ahead::default();
        let in_flight = AtomicUsize::new(0);
        let timeout = Duration::from_secs(5);
        let first = ahead.admit(&in_flight, 1, timeout);
        assert!(!first.sent_ahead() && first.deadline().is_some());
        assert!(ahead.fresh());
        let second = ahead.admit(&in_flight, 1, timeout);
        assert!(second.sent_ahead() && second.deadline().is_none());
        assert_eq!(in_flight.load(Ordering::Acquire), 2);
        second.begin();
        let deadline = second.deadline().expect("began");
        assert!(deadline > Instant::now() + timeout - Duration::from_secs(1));
        second.begin();
        assert_eq!(second.deadline(), Some(deadline), "set once");
    }

    #[test]
    fn a_worker_is_fresh_only_shortly_after_it_began_a_request() {
        let ahead = Ahead::default();
        assert!(!ahead.fresh(), "never began one");
        ahead.last_begun.store(
            now_nanos().saturating_sub(FRESH.as_nanos() as u64 * 2),
            Ordering::Release,
        );
        assert!(!ahead.fresh());
        ahead.began();
        assert!(ahead.fresh());
    }
}
