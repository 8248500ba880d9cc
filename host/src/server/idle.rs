//! The open connections of the process, so that at `max_connections` the one idle the longest can be
//! closed to make room (as nginx reuses idle keep-alive connections when it runs out of them) instead
//! of every new client waiting until some connection's keep-alive timeout.
//!
//! A connection registers when it opens and leaves when it closes: two lock operations per
//! connection, none per request. Only an acceptor that finds no free slot scans the map.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use crate::pipeline::Activity;

/// Every open connection, by id.
#[derive(Debug, Default)]
pub struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
    /// Shutting down: every connection, open or opening, is asked to close. Read and written
    /// under `open`'s lock, so a connection registers either before (and is asked by
    /// [`Connections::close_all`]) or after (and is asked by [`Connections::register`]).
    closing_all: AtomicBool,
}

#[derive(Debug)]
struct Open {
    activity: Arc<Activity>,
    /// Already asked to close: not chosen again while it finishes.
    closing: bool,
}

/// A connection's place in [`Connections`]; leaves it when dropped.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    connections: Arc<Connections>,
}

impl Connections {
    /// Registers a connection whose requests `activity` tracks.
    pub fn register(self: &Arc<Self>, activity: Arc<Activity>) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut open = self.lock();
        let closing = self.closing_all.load(Ordering::Relaxed);
        if closing {
            activity.request_close();
        }
        open.insert(id, Open { activity, closing });
        drop(open);
        Registration {
            id,
            connections: Arc::clone(self),
        }
    }

    /// Asks the connection that has had nothing in flight the longest to close; false if every
    /// connection is busy (or already closing).
    pub fn close_oldest_idle(&self) -> bool {
        let now = Instant::now();
        let mut open = self.lock();
        let oldest = open
            .iter_mut()
            .filter(|(_, c)| !c.closing)
            .filter_map(|(_, c)| c.activity.idle_for(now).map(|idle| (idle, c)))
            .max_by_key(|(idle, _)| *idle);
        match oldest {
            Some((_, c)) => {
                c.closing = true;
                c.activity.request_close();
                true
            }
            None => false,
        }
    }

    /// Asks every connection, and every one that registers from now on, to close (at
    /// shutdown): busy ones once their requests are done, idle and parked ones now.
    pub fn close_all(&self) {
        let mut open = self.lock();
        self.closing_all.store(true, Ordering::Relaxed);
        for c in open.values_mut() {
            c.closing = true;
            c.activity.request_close();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Open>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_longest_idle_connection_is_closed_first_and_busy_ones_never() {
        let connections = Arc::new(Connections::default());
        let old = Arc::new(Activity::default());
        let a = connections.register(Arc::clone(&old));
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        let young = Arc::new(Activity::default());
        let _b = connections.register(Arc::clone(&young));
        let busy = Arc::new(Activity::default());
        let _c = connections.register(Arc::clone(&busy));
        let _running = busy.begin();
        tokio::time::advance(std::time::Duration::from_secs(1)).await;

        assert!(connections.close_oldest_idle());
        old.close_requested().await;
        let not_yet = tokio::time::timeout(std::time::Duration::ZERO, young.close_requested());
        assert!(not_yet.await.is_err(), "only the oldest was asked");
        assert!(connections.close_oldest_idle());
        young.close_requested().await;
        assert!(!connections.close_oldest_idle(), "only a busy one is left");
        drop(a);
        assert_eq!(connections.lock().len(), 2);
    }

    #[tokio::test]
    async fn at_shutdown_open_connections_and_later_ones_are_asked_to_close() {
        let connections = Arc::new(Connections::default());
        let open = Arc::new(Activity::default());
        let _a = connections.register(Arc::clone(&open));
        connections.close_all();
        open.close_requested().await;
        let late = Arc::new(Activity::default());
        let _b = connections.register(Arc::clone(&late));
        late.close_requested().await;
        assert!(!connections.close_oldest_idle(), "both are closing already");
    }
}
