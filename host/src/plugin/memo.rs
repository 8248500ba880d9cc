//! `continue`s a plugin said hold for its client (`request.continue-for-client`): an address
//! filter's decision depends on nothing but the client's address, and calling into the plugin for
//! each request costs more than the filter's whole work. Per event loop (no lock, no cache lines
//! shared between cores) and bounded.

use std::cell::RefCell;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use thread_local::ThreadLocal;

/// Addresses one event loop remembers per plugin; the least recently used go first.
pub const MAX_CLIENTS: usize = 1024;

/// One event loop's addresses (`None`: a Unix-socket client) and until when each holds; made on
/// first use.
type Loop = RefCell<Option<LruCache<Option<IpAddr>, Instant>>>;

/// The addresses whose `continue` holds, until when, per event loop.
#[derive(Debug, Default)]
pub(super) struct ClientMemo {
    loops: ThreadLocal<Loop>,
}

impl ClientMemo {
    /// Whether a `continue` for `client` still holds at `now` (read only if one is kept).
    pub(super) fn holds(&self, client: Option<IpAddr>, now: impl FnOnce() -> Instant) -> bool {
        let Some(cell) = self.loops.get() else {
            return false;
        };
        let mut memo = cell.borrow_mut();
        let Some(memo) = memo.as_mut() else {
            return false;
        };
        match memo.get(&client) {
            Some(until) if *until > now() => true,
            Some(_) => {
                memo.pop(&client);
                false
            }
            None => false,
        }
    }

    /// Remembers that a `continue` for `client` holds for `ttl` from `now`.
    pub(super) fn keep(&self, client: Option<IpAddr>, now: Instant, ttl: Duration) {
        let cell = self.loops.get_or_default();
        let mut memo = cell.borrow_mut();
        let memo = memo.get_or_insert_with(|| {
            LruCache::new(NonZeroUsize::new(MAX_CLIENTS).unwrap_or(NonZeroUsize::MIN))
        });
        memo.put(client, now + ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_continue_holds_for_its_client_until_it_expires_and_the_memo_is_bounded() {
        let memo = ClientMemo::default();
        let now = Instant::now();
        let a = Some(IpAddr::from([192, 0, 2, 1]));
        assert!(!memo.holds(a, || now));
        memo.keep(a, now, Duration::from_secs(1));
        assert!(memo.holds(a, || now));
        assert!(!memo.holds(Some(IpAddr::from([192, 0, 2, 2])), || now));
        assert!(!memo.holds(a, || now + Duration::from_secs(1)), "expired");
        assert!(!memo.holds(a, || now), "and forgotten");
        for i in 0..=MAX_CLIENTS as u32 {
            memo.keep(
                Some(IpAddr::from(i.to_be_bytes())),
                now,
                Duration::from_secs(9),
            );
        }
        assert!(
            !memo.holds(Some(IpAddr::from(0u32.to_be_bytes())), || now),
            "the oldest went"
        );
        assert!(memo.holds(
            Some(IpAddr::from((MAX_CLIENTS as u32).to_be_bytes())),
            || now
        ));
        // Another event loop has its own.
        std::thread::scope(|s| {
            s.spawn(|| assert!(!memo.holds(a, || now)));
        });
    }
}
