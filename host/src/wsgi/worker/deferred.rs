//! Batched response writes for a worker with one thread: responses finished while more requests of
//! the same read wait to run go out together, in one write, instead of one write each (a system
//! call per request is a large share of a small request's cost).
//!
//! A deferred response waits for the rest of its batch, at most [`DEFER_MAX`] responses or 64 KiB;
//! and, because a request later in the batch may run long or hang, a watchdog thread writes any
//! response that has waited [`DEFER_WAIT`]. The watchdog sleeps on a condition variable whenever
//! nothing was deferred for a while, so an idle worker does not wake up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::Conn;

/// At most this many finished responses wait for their batch's write.
pub const DEFER_MAX: usize = 16;

/// At most this many bytes of finished responses wait for their batch's write.
pub const DEFER_BYTES: usize = 64 * 1024;

/// Longest a finished response waits for the rest of its batch.
pub const DEFER_WAIT: Duration = Duration::from_millis(1);

/// Checks without any deferral before the watchdog parks.
const IDLE_CHECKS: u32 = 100;

/// Whole responses not yet written on one lane.
#[derive(Debug, Default)]
pub struct Deferred {
    /// Their frames.
    pub bytes: Vec<u8>,
    /// How many responses.
    pub responses: usize,
    /// When the oldest was deferred.
    pub since: Option<Instant>,
}

impl Deferred {
    /// Adds a response's last frames; `true` when the batch is full and should be written now.
    pub fn push(&mut self, frames: &[u8]) -> bool {
        self.bytes.extend_from_slice(frames);
        self.responses += 1;
        self.since.get_or_insert_with(Instant::now);
        self.responses >= DEFER_MAX || self.bytes.len() >= DEFER_BYTES
    }

    /// Forgets what was written.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.responses = 0;
        self.since = None;
    }
}

/// Wakes the watchdog thread when it sleeps.
#[derive(Debug, Default)]
pub struct Watchdog {
    parked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Watchdog {
    /// Called after a response was deferred.
    pub fn deferred(&self) {
        if self.parked.load(Ordering::SeqCst) {
            let _guard = self.lock.lock();
            self.parked.store(false, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }

    /// Starts the watchdog thread over the worker's lanes.
    pub fn start(self: &Arc<Self>, conns: Vec<Arc<Conn>>) -> std::io::Result<()> {
        let dog = Arc::clone(self);
        std::thread::Builder::new()
            .name("wsgi-flush".into())
            .spawn(move || dog.run(&conns))?;
        Ok(())
    }

    fn run(&self, conns: &[Arc<Conn>]) {
        let mut idle = 0;
        loop {
            std::thread::sleep(DEFER_WAIT);
            let mut any = false;
            for conn in conns {
                let since = conn.deferred.lock().ok().and_then(|d| d.since);
                if let Some(since) = since {
                    any = true;
                    if since.elapsed() >= DEFER_WAIT {
                        let _ = conn.flush_deferred();
                    }
                }
            }
            if any {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle < IDLE_CHECKS {
                continue;
            }
            idle = 0;
            // Parked is announced before the last look, and a deferral is recorded before the
            // worker looks at parked: one of the two always sees the other.
            let Ok(mut guard) = self.lock.lock() else {
                return;
            };
            self.parked.store(true, Ordering::SeqCst);
            let pending = conns
                .iter()
                .any(|c| c.deferred.lock().is_ok_and(|d| d.since.is_some()));
            if pending {
                self.parked.store(false, Ordering::SeqCst);
                continue;
            }
            while self.parked.load(Ordering::SeqCst) {
                guard = match self.wake.wait(guard) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_full_at_its_response_or_byte_limit() {
        let mut d = Deferred::default();
        for _ in 1..DEFER_MAX {
            assert!(!d.push(b"frame"));
        }
        assert!(d.push(b"frame"), "the DEFER_MAX-th response fills it");
        assert!(d.since.is_some());
        d.clear();
        assert!(d.bytes.is_empty() && d.responses == 0 && d.since.is_none());
        assert!(d.push(&vec![0u8; DEFER_BYTES]), "so does a large response");
    }
}
