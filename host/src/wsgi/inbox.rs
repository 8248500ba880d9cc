//! One request's hand-off from its lane's reader to the task waiting for the response.
//!
//! A queue behind a mutex plus the waiting task's waker: what an unbounded channel does, without its
//! per-channel setup (tokio's channel allocates a cache-padded, zeroed block of 32 slots, ~1,300
//! instructions on every request, for what is almost always a single event).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    waker: Option<Waker>,
    /// The sending side is gone: after the queue drains, `recv` answers `None`.
    closed: bool,
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock leaves the queue consistent (push/pop only).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state, then wakes the waiting task (outside the lock).
    fn change_and_wake(&self, change: impl FnOnce(&mut State<T>)) {
        let waker = {
            let mut state = self.lock();
            change(&mut state);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A new inbox: the sender for the lane, the receiver for the request.
pub fn inbox<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            waker: None,
            closed: false,
        }),
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

/// The delivering side; dropping it ends the receiver's stream once it is drained.
#[derive(Debug)]
pub struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues an event and wakes the waiting task.
    pub fn send(&self, event: T) {
        self.0.change_and_wake(|state| state.queue.push_back(event));
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.change_and_wake(|state| state.closed = true);
    }
}

/// The waiting side.
#[derive(Debug)]
pub struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// The next event; `None` once the sender is gone and everything sent has been taken.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.0.lock();
        if let Some(event) = state.queue.pop_front() {
            return Poll::Ready(Some(event));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for the next event.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::inbox;

    #[tokio::test]
    async fn events_arrive_in_order_then_the_end() {
        let (tx, mut rx) = inbox();
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(n) = rx.recv().await {
                got.push(n);
            }
            got
        });
        tokio::task::yield_now().await;
        tx.send(1);
        tx.send(2);
        tokio::task::yield_now().await;
        tx.send(3);
        drop(tx);
        assert_eq!(waiting.await.expect("receiver"), [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_receiver_waiting_across_threads_is_woken() {
        let (tx, mut rx) = inbox();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send("late");
        });
        assert_eq!(rx.recv().await, Some("late"));
        sender.join().expect("sender thread");
        assert_eq!(rx.recv().await, None);
    }
}
