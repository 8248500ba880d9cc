//! One server of an upstream: its requests in flight and its health, passive (consecutive
//! failures leave it out for `fail_timeout`, then it is tried again) and active (background checks
//! mark it down after `fails` failed checks and up after `passes` good ones).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Endpoint, UpstreamServer};
use crate::metrics::UpstreamServerMetrics;

/// A server and what is known of it.
#[derive(Debug)]
pub struct Server {
    /// As configured, for logs and metrics.
    pub label: String,
    /// Where it is.
    pub endpoint: Endpoint,
    /// The `Host` it is asked for when the client's is not passed on (made once).
    pub authority: String,
    /// Its relative share.
    pub weight: u32,
    in_flight: AtomicUsize,
    slots: Arc<Semaphore>,
    fails: AtomicU32,
    /// Left out until this many milliseconds after `epoch` (0: not left out).
    ejected_until_ms: AtomicU64,
    /// Active checks' verdict (true when there are none).
    up: AtomicBool,
    checks: Mutex<(u32, u32)>,
    epoch: Instant,
    metrics: UpstreamServerMetrics,
}

type Mutex<T> = std::sync::Mutex<T>;

/// A request in flight to a server; counted until dropped.
#[derive(Debug)]
pub struct InFlight {
    server: Arc<Server>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.server.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Server {
    /// A server allowed `max_connections` requests in flight, counting into `metrics`.
    pub fn new(
        config: &UpstreamServer,
        max_connections: usize,
        metrics: UpstreamServerMetrics,
    ) -> Server {
        Server {
            label: config.label.clone(),
            endpoint: config.endpoint.clone(),
            authority: super::host_of(&config.endpoint),
            weight: config.weight,
            in_flight: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(max_connections)),
            fails: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            up: AtomicBool::new(true),
            checks: Mutex::new((0, 0)),
            epoch: Instant::now(),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether requests may go to it: up by the active checks and not left out for failing.
    pub fn available(&self) -> bool {
        self.up.load(Ordering::Acquire)
            && self.now_ms() >= self.ejected_until_ms.load(Ordering::Acquire)
    }

    /// Requests in flight to it now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A slot for one request, waiting up to `wait` for one (`max_connections`).
    pub async fn acquire(self: &Arc<Self>, wait: Duration) -> Option<InFlight> {
        let slots = Arc::clone(&self.slots);
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => tokio::time::timeout(wait, slots.acquire_owned())
                .await
                .ok()?
                .ok()?,
        };
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(InFlight {
            server: Arc::clone(self),
            _slot: slot,
        })
    }

    /// A request it answered: its failure count starts over (and it shows as up again).
    pub fn succeeded(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
        if self.metrics.up.get() == 0 && self.up.load(Ordering::Relaxed) {
            self.metrics.up.set(1);
        }
    }

    /// A request it failed (refused, reset, timed out): after `max_fails` in a row it is left out
    /// for `fail_timeout`, then tried again. Returns true when this failure ejected it.
    pub fn failed(&self, max_fails: u32, fail_timeout: Duration) -> bool {
        self.metrics.failures.inc();
        if max_fails == 0 {
            return false;
        }
        let fails = self.fails.fetch_add(1, Ordering::AcqRel) + 1;
        if fails < max_fails {
            return false;
        }
        self.fails.store(0, Ordering::Release);
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(fail_timeout.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until_ms.store(until, Ordering::Release);
        self.metrics.up.set(0);
        tracing::warn!(server = %self.label, ?fail_timeout, "upstream server failed {fails} times in a row: left out for fail_timeout");
        true
    }

    /// One active check's result; returns the new state when it changed.
    pub fn checked(&self, ok: bool, fails: u32, passes: u32) -> Option<bool> {
        let mut counts = self
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (bad, good) = &mut *counts;
        if ok {
            *bad = 0;
            *good += 1;
        } else {
            *good = 0;
            *bad += 1;
        }
        let up = self.up.load(Ordering::Acquire);
        let flip = if up { *bad >= fails } else { *good >= passes };
        if flip {
            self.up.store(!up, Ordering::Release);
            self.metrics.up.set(i64::from(!up));
            if !up {
                // Back up: a passive ejection from before does not hold it out longer.
                self.ejected_until_ms.store(0, Ordering::Release);
            }
            return Some(!up);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        Server::new(
            &UpstreamServer {
                endpoint: Endpoint::Unix("/x".into()),
                weight: 1,
                label: "x".into(),
            },
            2,
            crate::metrics::Metrics::new().upstream_server("t", "x"),
        )
    }

    #[test]
    fn consecutive_failures_eject_for_fail_timeout_and_a_success_resets_the_count() {
        let s = server();
        assert!(!s.failed(3, Duration::from_secs(60)));
        assert!(!s.failed(3, Duration::from_secs(60)));
        s.succeeded();
        assert!(!s.failed(3, Duration::from_secs(60)));
        assert!(!s.failed(3, Duration::from_secs(60)));
        assert!(s.available());
        assert!(s.failed(3, Duration::from_secs(60)));
        assert!(!s.available());
        let s = server();
        assert!(s.failed(1, Duration::ZERO));
        assert!(s.available(), "tried again once fail_timeout has passed");
    }

    #[test]
    fn active_checks_flip_after_their_thresholds() {
        let s = server();
        assert_eq!(s.checked(false, 2, 2), None);
        assert_eq!(s.checked(false, 2, 2), Some(false));
        assert!(!s.available());
        assert_eq!(s.checked(true, 2, 2), None);
        assert_eq!(s.checked(true, 2, 2), Some(true));
        assert!(s.available());
    }

    #[tokio::test]
    async fn slots_bound_requests_in_flight() {
        let s = Arc::new(server());
        let a = s.acquire(Duration::ZERO).await.expect("one");
        let _b = s.acquire(Duration::ZERO).await.expect("two");
        assert_eq!(s.in_flight(), 2);
        assert!(s.acquire(Duration::from_millis(10)).await.is_none());
        drop(a);
        assert!(s.acquire(Duration::ZERO).await.is_some());
    }
}
