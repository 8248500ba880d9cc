//! Requests held until another notifies them (`request.wait-for` / `host.notify`): request
//! collapsing. In the front process only: with a shared store, each instance collapses its own
//! requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lock;

/// Keys requests wait on (request collapsing), each with a count of the notifications so far.
///
/// A key is here only while a request waits on it (a waiter leaves when dropped, a request whose
/// client went away included), so the map holds no more keys than there are requests in flight.
#[derive(Debug, Default)]
pub struct Waits {
    keys: Arc<Mutex<HashMap<String, Arc<WaitSlot>>>>,
}

/// One key's wake-ups.
#[derive(Debug, Default)]
struct WaitSlot {
    notify: tokio::sync::Notify,
    notified: AtomicU64,
}

/// A request's intent to wait on a key, taken when the plugin asks (so a notification that comes
/// before the request starts waiting still counts).
#[derive(Debug)]
pub struct Waiter {
    key: String,
    slot: Arc<WaitSlot>,
    keys: Arc<Mutex<HashMap<String, Arc<WaitSlot>>>>,
    seen: u64,
    timeout: Duration,
}

impl Waits {
    /// A waiter on `key`, for at most `timeout`.
    pub fn register(&self, key: String, timeout: Duration) -> Waiter {
        let slot = Arc::clone(lock(&self.keys).entry(key.clone()).or_default());
        let seen = slot.notified.load(Ordering::Acquire);
        Waiter {
            key,
            slot,
            keys: Arc::clone(&self.keys),
            seen,
            timeout,
        }
    }

    /// Wakes every request waiting on `key`.
    pub fn notify(&self, key: &str) {
        if let Some(slot) = lock(&self.keys).get(key) {
            slot.notified.fetch_add(1, Ordering::AcqRel);
            slot.notify.notify_waiters();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.keys).len()
    }
}

impl Waiter {
    /// Waits until the key is notified (since the waiter was taken) or the timeout passes.
    pub async fn wait(self) {
        let notified = self.slot.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.slot.notified.load(Ordering::Acquire) == self.seen {
            let _ = tokio::time::timeout(self.timeout, notified).await;
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut keys = lock(&self.keys);
        // The map's reference and this waiter's: nobody else waits on the key.
        if Arc::strong_count(&self.slot) <= 2 {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waiters_wake_on_notify_even_one_sent_before_they_wait_and_keys_go_with_them() {
        let waits = Waits::default();
        let early = waits.register("k".into(), Duration::from_secs(10));
        waits.notify("k");
        let started = tokio::time::Instant::now();
        early.wait().await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the earlier notify counted"
        );
        assert_eq!(waits.len(), 0);

        let a = waits.register("k".into(), Duration::from_secs(10));
        let b = waits.register("k".into(), Duration::from_secs(10));
        let both = tokio::spawn(async move {
            tokio::join!(a.wait(), b.wait());
        });
        tokio::task::yield_now().await;
        waits.notify("k");
        both.await.expect("join");
        assert_eq!(waits.len(), 0);

        let lonely = waits.register("other".into(), Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        lonely.wait().await;
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "waited for the timeout"
        );
        let dropped = waits.register("gone".into(), Duration::from_secs(2));
        drop(dropped);
        assert_eq!(waits.len(), 0);
    }
}
