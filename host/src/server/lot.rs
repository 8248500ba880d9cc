//! The parking lot: idle keep-alive connections held by their event loop with no task, no timer
//! and no reactor registration of their own, as nginx holds them. A parked connection is one
//! entry in a slab and one descriptor in the loop's own epoll set (through mio); the set's
//! descriptor is registered with tokio once, and one task per loop serves it. When a client sends
//! its next request, its entry leaves the lot and becomes a connection task again.
//!
//! Hand-written because tokio cannot hold a socket without a task and a registration, and those
//! (a task cell of 512 bytes and a registration of 256, both cache-line aligned) were most of an
//! idle connection's cost; mio is the reactor tokio itself is built on. A parked connection must
//! not keep its old task alive either: no waker of that task may stay behind (see
//! `Activity::forget_waker`).
//!
//! Keep-alive expiry is found by a sweep every [`SWEEP`] while the lot holds anything (an empty
//! lot arms no timer), so it takes up to that much longer. A
//! request to close (to make room at `max_connections`) wakes the lot, which sweeps at once; at
//! shutdown every parked connection closes at once.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::LocalKey;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the lot looks for connections past their keep-alive or asked to close.
pub const SWEEP: Duration = Duration::from_millis(250);

/// Events taken from the lot's epoll set at once.
const EVENTS: usize = 256;

/// A parked connection.
pub trait Entry: Sized + 'static {
    /// The task that serves it again.
    type Task: std::future::Future<Output = ()> + Send + 'static;

    /// Its socket.
    fn fd(&self) -> RawFd;

    /// Past its keep-alive, or asked to close, at `now`.
    fn expired(&self, now: Instant) -> bool;

    /// Wake `waker` when it is asked to close.
    fn watch_close(&self, waker: &Waker);

    /// The client sent something (or closed): the task that serves it; `None` closes it.
    fn wake(self) -> Option<Self::Task>;
}

/// One event loop's parked connections.
pub struct Lot<E> {
    registry: mio::Registry,
    entries: Slab<E>,
    /// What a request to close one of them wakes (one waker for all: a reference count each).
    asked: Waker,
}

/// A request to close some parked connection: the lot sweeps at once.
#[derive(Default)]
struct Asked {
    flag: AtomicBool,
    lot: AtomicWaker,
}

impl Wake for Asked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.lot.wake();
    }
}

impl Asked {
    /// Ready once some connection was asked to close since the last time.
    fn poll_asked(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.lot.register(cx.waker());
        if self.flag.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Where an event loop keeps its lot.
pub type Place<E> = &'static LocalKey<RefCell<Option<Lot<E>>>>;

impl<E: Entry> Lot<E> {
    /// Parks `entry` in the calling event loop's lot; gives it back if the loop has none (not
    /// started, or shutting down) or its socket cannot be watched.
    pub fn park(lot: Place<E>, entry: E) -> Result<(), E> {
        lot.with(|lot| {
            let mut lot = lot.borrow_mut();
            let Some(lot) = lot.as_mut() else {
                return Err(entry);
            };
            let first = lot.entries.is_empty();
            let vacant = lot.entries.vacant_entry();
            let token = Token(vacant.key());
            let fd = entry.fd();
            match lot
                .registry
                .register(&mut SourceFd(&fd), token, Interest::READABLE)
            {
                Ok(()) => {
                    entry.watch_close(&lot.asked);
                    // Asked before it got here: the lot's next turn closes it. The first entry
                    // of an empty lot also turns its sweep back on.
                    if first || entry.expired(Instant::now()) {
                        lot.asked.wake_by_ref();
                    }
                    vacant.insert(entry);
                    Ok(())
                }
                Err(_) => Err(entry),
            }
        })
    }

    /// Takes an entry out of the lot (and of its epoll set).
    fn take(&mut self, key: usize) -> Option<E> {
        let entry = self.entries.try_remove(key)?;
        let _ = self.registry.deregister(&mut SourceFd(&entry.fd()));
        Some(entry)
    }

    /// Takes out the entries past their keep-alive or asked to close.
    fn expired(&mut self, now: Instant) -> Vec<E> {
        let keys: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.expired(now))
            .map(|(key, _)| key)
            .collect();
        let expired = keys.into_iter().filter_map(|key| self.take(key)).collect();
        // The slab keeps the room a burst made until it is empty again.
        if self.entries.is_empty() {
            self.entries.shrink_to_fit();
        }
        expired
    }
}

/// The lot's epoll set in tokio's reactor.
#[allow(unsafe_code)] // tokio's `AsyncFd` registration is `unsafe` (I/O safety)
fn watch(poll: mio::Poll) -> std::io::Result<AsyncFd<mio::Poll>> {
    // SAFETY: `mio::Poll` owns its epoll descriptor, never replaces it and closes it only when
    // dropped, which the `AsyncFd` that owns it does after leaving the reactor: the descriptor
    // stays valid and the same for the `AsyncFd`'s whole life.
    let watched = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) };
    Ok(watched?)
}

/// Opens the calling event loop's lot and serves it until `shutdown`, when every connection
/// still parked is closed. Woken connections are spawned on `tracker`.
pub async fn run<E: Entry>(lot: Place<E>, tracker: TaskTracker, shutdown: CancellationToken) {
    let opened = mio::Poll::new().and_then(|poll| {
        let registry = poll.registry().try_clone()?;
        Ok((watch(poll)?, registry))
    });
    let (mut poll, registry) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            // Connections then stay parked in their own tasks, as they do over TLS.
            tracing::warn!(%error, "no parking lot for idle connections on this event loop");
            return;
        }
    };
    let asked = Arc::new(Asked::default());
    lot.with(|lot| {
        *lot.borrow_mut() = Some(Lot {
            registry,
            entries: Slab::new(),
            asked: Waker::from(Arc::clone(&asked)),
        })
    });
    let mut events = mio::Events::with_capacity(EVENTS);
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeping = false;
    'serve: loop {
        // An empty lot has nothing to expire: no timer wakes its loop.
        let occupied = lot.with(|lot| {
            lot.borrow()
                .as_ref()
                .is_some_and(|lot| !lot.entries.is_empty())
        });
        if occupied && !sweeping {
            sweep.reset();
        }
        sweeping = occupied;
        tokio::select! {
            ready = poll.readable_mut() => {
                let Ok(mut ready) = ready else { break };
                loop {
                    events.clear();
                    if let Err(error) = ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        // Its connections close; later ones park in their own tasks.
                        tracing::warn!(%error, "the parking lot's epoll set failed");
                        break 'serve;
                    }
                    if events.is_empty() {
                        ready.clear_ready();
                        break;
                    }
                    for event in &events {
                        let woken = lot.with(|lot| {
                            lot.borrow_mut().as_mut().and_then(|lot| lot.take(event.token().0))
                        });
                        if let Some(task) = woken.and_then(Entry::wake) {
                            tracker.spawn(task);
                        }
                    }
                }
            }
            _ = sweep.tick(), if sweeping => drop(expired(lot)),
            () = std::future::poll_fn(|cx| asked.poll_asked(cx)) => drop(expired(lot)),
            () = shutdown.cancelled() => break,
        }
    }
    let parked = lot.with(|lot| lot.borrow_mut().take());
    drop(parked);
}

/// The lot's entries past their keep-alive or asked to close, taken out (to be dropped outside
/// the borrow: a connection's drop may reach other state).
fn expired<E: Entry>(lot: Place<E>) -> Vec<E> {
    let now = Instant::now();
    lot.with(|lot| {
        lot.borrow_mut()
            .as_mut()
            .map(|lot| lot.expired(now))
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// A parked stand-in: one end of a socket pair, and flags for what the lot did with it.
    struct Test {
        socket: UnixStream,
        asked: Arc<AtomicBool>,
        woken: Arc<AtomicBool>,
        dropped: Arc<AtomicBool>,
        close: Arc<std::sync::Mutex<Option<Waker>>>,
        /// Its keep-alive ends then.
        until: Option<Instant>,
    }

    impl Drop for Test {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::Release);
        }
    }

    impl Entry for Test {
        type Task = std::future::Ready<()>;

        fn fd(&self) -> RawFd {
            self.socket.as_raw_fd()
        }

        fn expired(&self, now: Instant) -> bool {
            self.asked.load(Ordering::Acquire) || self.until.is_some_and(|until| now >= until)
        }

        fn watch_close(&self, waker: &Waker) {
            *self.close.lock().expect("lock") = Some(waker.clone());
        }

        fn wake(self) -> Option<Self::Task> {
            self.woken.store(true, Ordering::Release);
            Some(std::future::ready(()))
        }
    }

    thread_local! {
        static LOT: RefCell<Option<Lot<Test>>> = const { RefCell::new(None) };
    }

    struct Probe {
        peer: UnixStream,
        asked: Arc<AtomicBool>,
        woken: Arc<AtomicBool>,
        dropped: Arc<AtomicBool>,
        close: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    fn entry() -> (Test, Probe) {
        let (socket, peer) = UnixStream::pair().expect("pair");
        socket.set_nonblocking(true).expect("nonblocking");
        let flags = || Arc::new(AtomicBool::new(false));
        let (asked, woken, dropped) = (flags(), flags(), flags());
        let close = Arc::new(std::sync::Mutex::new(None));
        let probe = Probe {
            peer,
            asked: Arc::clone(&asked),
            woken: Arc::clone(&woken),
            dropped: Arc::clone(&dropped),
            close: Arc::clone(&close),
        };
        let test = Test {
            socket,
            asked,
            woken,
            dropped,
            close,
            until: None,
        };
        (test, probe)
    }

    /// Lets the lot's task run without letting (paused) time reach the next sweep.
    async fn turns() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_is_woken_and_one_asked_to_close_is_closed_before_the_sweep() {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let running = tokio::spawn(run(&LOT, tracker, shutdown.clone()));
        turns().await;

        let (sending, mut client) = entry();
        let (idle, asked) = entry();
        assert!(Lot::park(&LOT, sending).is_ok());
        assert!(Lot::park(&LOT, idle).is_ok());
        turns().await;
        assert!(!client.woken.load(Ordering::Acquire), "nothing sent yet");

        client.peer.write_all(b"GET").expect("write");
        // The reactor sees the lot's epoll set become readable on its next turn.
        for _ in 0..50 {
            if client.woken.load(Ordering::Acquire) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            client.woken.load(Ordering::Acquire),
            "the client's next request wakes it"
        );

        asked.asked.store(true, Ordering::Release);
        let waker = asked.close.lock().expect("lock").clone().expect("watched");
        waker.wake();
        turns().await;
        assert!(
            asked.dropped.load(Ordering::Acquire),
            "a request to close is served at once, not at the next sweep"
        );
        assert!(!asked.woken.load(Ordering::Acquire));

        shutdown.cancel();
        running.await.expect("the lot ends at shutdown");
        let (late, _probe) = entry();
        assert!(Lot::park(&LOT, late).is_err(), "no lot after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_closes_an_expired_connection_parked_after_the_lot_stood_empty() {
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(&LOT, TaskTracker::new(), shutdown.clone()));
        turns().await;
        // Empty for a while: its sweep is off.
        tokio::time::sleep(SWEEP * 8).await;
        let (mut parked, probe) = entry();
        parked.until = Some(Instant::now() + SWEEP / 2);
        assert!(Lot::park(&LOT, parked).is_ok());
        turns().await;
        assert!(!probe.dropped.load(Ordering::Acquire), "not expired yet");
        tokio::time::sleep(SWEEP * 2).await;
        turns().await;
        assert!(
            probe.dropped.load(Ordering::Acquire),
            "the first entry turned the sweep back on"
        );
        shutdown.cancel();
        running.await.expect("ends");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_every_parked_connection() {
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(&LOT, TaskTracker::new(), shutdown.clone()));
        turns().await;
        let (parked, probe) = entry();
        assert!(Lot::park(&LOT, parked).is_ok());
        shutdown.cancel();
        running.await.expect("ends");
        assert!(probe.dropped.load(Ordering::Acquire));
        assert!(!probe.woken.load(Ordering::Acquire));
    }
}
