//! Requests sent ahead to a busy worker (`prefetch`), and when each one's `timeout` starts.
//!
//! A worker whose every thread is busy may hold up to `prefetch` more requests in its socket, so
//! a thread that finishes goes straight to the next one instead of waiting for the front to learn
//! that it is free and send another (a wait of two context switches per request, in which the
//! worker's caches go cold). Only a worker that began a request within [`FRESH`] is sent more:
//! one stuck in a long request does not collect others behind it.
//!
//! A request's `timeout` is the app's time, so one sent ahead starts its clock when it begins: the
//! front counts that as the moment an earlier request's last frame arrives, the oldest request sent
//! ahead going first: a moment after the worker really began it, never before. A request sent
//! ahead that never began when its worker dies gets 503 (see `Pool::dispatch`). Off by default:
//! docs/wsgi.md says what it costs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

/// A busy worker is sent a request ahead only if it began one this recently.
pub(super) const FRESH: Duration = Duration::from_millis(10);

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
    /// A thread took it at once.
    At(Instant),
    /// Sent ahead: it waits behind the worker's earlier requests.
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
}

/// Set once, when a request sent ahead begins.
#[derive(Debug)]
pub(super) struct Begun {
    timeout: Duration,
    deadline: OnceLock<Instant>,
}

/// One worker's requests sent ahead, oldest first.
#[derive(Debug, Default)]
pub(super) struct Ahead {
    /// Exactly the requests beyond the worker's threads: changed only with `in_flight`, under
    /// this lock.
    queue: Mutex<VecDeque<Arc<Begun>>>,
    /// When the worker last began a request (nanoseconds from [`EPOCH`]; 0: never).
    last_begun: AtomicU64,
}

impl Ahead {
    /// Counts a request onto the worker (`in_flight`): it begins now if a thread is free, else
    /// it queues behind the others.
    pub(super) fn admit(&self, in_flight: &AtomicUsize, threads: usize, timeout: Duration) -> Due {
        let Ok(mut queue) = self.queue.lock() else {
            in_flight.fetch_add(1, Ordering::AcqRel);
            return Due::At(Instant::now() + timeout);
        };
        if in_flight.fetch_add(1, Ordering::AcqRel) < threads {
            drop(queue);
            self.last_begun.store(now_nanos(), Ordering::Release);
            return Due::At(Instant::now() + timeout);
        }
        let begun = Arc::new(Begun {
            timeout,
            deadline: OnceLock::new(),
        });
        queue.push_back(Arc::clone(&begun));
        Due::Queued(begun)
    }

    /// A request on the worker ended: its thread takes the oldest request sent ahead, if any (not
    /// on a worker that is gone: those never begin).
    pub(super) fn release(&self, in_flight: &AtomicUsize, alive: bool) {
        let next = match self.queue.lock() {
            Ok(mut queue) => {
                in_flight.fetch_sub(1, Ordering::AcqRel);
                queue.pop_front()
            }
            Err(_) => {
                in_flight.fetch_sub(1, Ordering::AcqRel);
                None
            }
        };
        if let Some(next) = next.filter(|_| alive) {
            let _ = next.deadline.set(Instant::now() + next.timeout);
            self.last_begun.store(now_nanos(), Ordering::Release);
        }
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
    fn requests_beyond_the_threads_begin_in_order_as_earlier_ones_end() {
        let ahead = Ahead::default();
        let in_flight = AtomicUsize::new(0);
        let timeout = Duration::from_secs(5);
        assert!(matches!(ahead.admit(&in_flight, 1, timeout), Due::At(_)));
        assert!(ahead.fresh());
        let second = ahead.admit(&in_flight, 1, timeout);
        let third = ahead.admit(&in_flight, 1, timeout);
        assert_eq!(in_flight.load(Ordering::Acquire), 3);
        assert!(second.deadline().is_none() && third.deadline().is_none());
        ahead.release(&in_flight, true);
        let began = second.deadline().expect("the second began");
        assert!(began > Instant::now() + timeout - Duration::from_secs(1));
        assert!(third.deadline().is_none(), "the third still waits");
        ahead.release(&in_flight, true);
        assert!(third.deadline().is_some());
        ahead.release(&in_flight, true);
        assert_eq!(in_flight.load(Ordering::Acquire), 0);
        // A thread is free again: the next begins at once.
        assert!(matches!(ahead.admit(&in_flight, 1, timeout), Due::At(_)));
    }

    #[test]
    fn requests_queued_on_a_worker_that_is_gone_never_begin() {
        let ahead = Ahead::default();
        let in_flight = AtomicUsize::new(0);
        let timeout = Duration::from_secs(5);
        let _running = ahead.admit(&in_flight, 1, timeout);
        let queued = ahead.admit(&in_flight, 1, timeout);
        ahead.release(&in_flight, false);
        assert!(queued.deadline().is_none());
        ahead.release(&in_flight, false);
        assert_eq!(in_flight.load(Ordering::Acquire), 0);
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
        ahead.last_begun.store(now_nanos(), Ordering::Release);
        assert!(ahead.fresh());
    }
}
