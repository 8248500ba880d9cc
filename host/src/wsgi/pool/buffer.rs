//! The front's buffer for one WSGI response, as nginx's `proxy_buffering`: body bytes a worker
//! sends are credited back at once, so the app's thread goes on without waiting for the client,
//! while they fit in memory (`response_buffer`), then in a temporary file (`response_spool`),
//! within the process's body budgets. Past those, credit is returned only as the client takes the
//! bytes: flow control, and then a slow reader holds the thread again.
//!
//! Order is kept: once a response spills, everything after goes to its file, and the file is read
//! out before the response's end. The file is written and read on the event loop, as nginx does
//! with its temporary files (without `aio`): the pieces are small and usually in the page cache.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::request_body::{BodyBudget, Reservation};

/// Credit goes back to a worker in pieces of at least this many bytes (a window update, as in
/// HTTP/2), so a response smaller than that costs no frame and no system call on either side.
/// A stream's credit is held back in two places (its lane, as pieces arrive into the buffer, and
/// the stream, as the client takes them), together less than the worker's window minus its
/// largest piece: a worker never waits for credit the front is holding.
pub(super) const CREDIT_BATCH: u32 = 256 * 1024;

const _: () = assert!(
    2 * CREDIT_BATCH as i64 <= crate::wsgi::worker::WINDOW - crate::wsgi::worker::MAX_CHUNK as i64
);

/// Adds `n` to what a stream owes its worker; the credit to send now, if enough has gathered.
pub(super) fn batch_credit(owed: &mut u32, n: u32) -> Option<u32> {
    *owed = owed.saturating_add(n);
    (*owed >= CREDIT_BATCH).then(|| std::mem::take(owed))
}

/// Where a piece from the worker went.
#[derive(Debug)]
pub(super) enum Placed {
    /// Kept in memory: hand it to the client.
    Memory(Bytes),
    /// Written to the response's file: the client reads it from there.
    Spilled,
}

/// One response's buffer, shared by its lane's reader and the request's task.
#[derive(Debug)]
pub(super) struct ResponseBuffer {
    memory_limit: u64,
    spool_limit: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Bytes handed to the client's queue and not yet taken.
    in_memory: u64,
    /// Bytes received and not yet credited to the worker.
    owed: u64,
    spill: Option<Spill>,
    reserved: Reservation,
}

#[derive(Debug)]
struct Spill {
    file: std::fs::File,
    written: u64,
    read: u64,
}

impl ResponseBuffer {
    /// A buffer of `memory` bytes in memory and `spool` in a file, against `budget`.
    pub(super) fn new(memory: u64, spool: u64, budget: &Arc<BodyBudget>) -> Arc<ResponseBuffer> {
        Arc::new(ResponseBuffer {
            memory_limit: memory,
            spool_limit: spool,
            state: Mutex::new(State {
                in_memory: 0,
                owed: 0,
                spill: None,
                reserved: budget.reserve(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A piece arrived from the worker: where it goes, and the credit to send back now.
    pub(super) fn arrived(&self, bytes: Bytes) -> (Placed, u32) {
        let len = bytes.len() as u64;
        let mut state = self.lock();
        if state.spill.is_none() {
            if state.in_memory + len <= self.memory_limit && state.reserved.try_memory(len) {
                state.in_memory += len;
                return (Placed::Memory(bytes), credit(len));
            }
            if self.spool_limit == 0 {
                // No file: the client's pace sets the worker's.
                state.in_memory += len;
                state.owed += len;
                return (Placed::Memory(bytes), 0);
            }
            match tempfile::tempfile() {
                Ok(file) => {
                    state.spill = Some(Spill {
                        file,
                        written: 0,
                        read: 0,
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot create a temporary file for a response: the client's pace sets the app's");
                    state.in_memory += len;
                    state.owed += len;
                    return (Placed::Memory(bytes), 0);
                }
            }
        }
        let within = state
            .spill
            .as_ref()
            .is_some_and(|s| s.written - s.read + len <= self.spool_limit)
            && state.reserved.try_spool(len);
        // Past its bound the piece still goes to the file (order), but is not credited: the
        // worker stops after one window.
        if !within {
            state.owed += len;
        }
        let written = state.spill.as_mut().map(|spill| {
            spill
                .file
                .seek(SeekFrom::Start(spill.written))
                .and_then(|_| spill.file.write_all(&bytes))
                .map(|()| spill.written += len)
        });
        if let Some(Err(error)) = written {
            tracing::error!(%error, "cannot write a response to its temporary file");
        }
        (Placed::Spilled, if within { credit(len) } else { 0 })
    }

    /// The client took `n` bytes that were in memory: the credit to send back now.
    pub(super) fn taken(&self, n: u64) -> u32 {
        let mut state = self.lock();
        state.in_memory = state.in_memory.saturating_sub(n);
        state.reserved.release_memory(n);
        let back = state.owed.min(n);
        state.owed -= back;
        credit(back)
    }

    /// The next piece of the file the client has not read (at most `max` bytes), and the credit
    /// to send back for it; `None` when the file is read to its end (so far).
    pub(super) fn read_spilled(&self, max: usize) -> Option<std::io::Result<(Bytes, u32)>> {
        let mut state = self.lock();
        let spill = state.spill.as_mut()?;
        let unread = spill.written - spill.read;
        if unread == 0 {
            return None;
        }
        let want = usize::try_from(unread).unwrap_or(usize::MAX).min(max);
        let mut buf = vec![0; want];
        let result = spill
            .file
            .seek(SeekFrom::Start(spill.read))
            .and_then(|_| spill.file.read_exact(&mut buf));
        if let Err(error) = result {
            return Some(Err(error));
        }
        spill.read += want as u64;
        let n = want as u64;
        state.reserved.release_spool(n);
        let back = state.owed.min(n);
        state.owed -= back;
        Some(Ok((Bytes::from(buf), credit(back))))
    }
}

fn credit(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_then_file_then_flow_control_in_order() {
        let budget = BodyBudget::new(1 << 30, 1 << 30);
        let buffer = ResponseBuffer::new(10, 20, &budget);
        let piece = |c: u8| Bytes::from(vec![c; 6]);
        // 6 in memory, credited.
        assert!(matches!(
            buffer.arrived(piece(b'a')),
            (Placed::Memory(_), 6)
        ));
        // 12 would pass the memory bound: to the file, credited.
        assert!(matches!(buffer.arrived(piece(b'b')), (Placed::Spilled, 6)));
        assert!(matches!(buffer.arrived(piece(b'c')), (Placed::Spilled, 6)));
        assert!(matches!(buffer.arrived(piece(b'd')), (Placed::Spilled, 6)));
        // The file holds 18 unread; 24 would pass its bound: written, but not credited.
        assert!(matches!(buffer.arrived(piece(b'e')), (Placed::Spilled, 0)));
        // The client takes the memory piece: room again, so the owed credit comes back; then it
        // reads the file, in order.
        assert_eq!(buffer.taken(6), 6);
        let mut read = Vec::new();
        let mut credited = 0;
        while let Some(piece) = buffer.read_spilled(4) {
            let (bytes, credit) = piece.expect("read");
            read.extend_from_slice(&bytes);
            credited += credit;
        }
        assert_eq!(read, b"bbbbbbccccccddddddeeeeee");
        assert_eq!(credited, 0, "nothing more was owed");
    }

    #[test]
    fn without_a_file_the_client_sets_the_pace_past_memory() {
        let budget = BodyBudget::new(1 << 30, 1 << 30);
        let buffer = ResponseBuffer::new(4, 0, &budget);
        assert!(matches!(
            buffer.arrived(Bytes::from_static(b"abcd")),
            (Placed::Memory(_), 4)
        ));
        assert!(matches!(
            buffer.arrived(Bytes::from_static(b"efgh")),
            (Placed::Memory(_), 0)
        ));
        assert_eq!(
            buffer.taken(4),
            4,
            "credit comes back as the client takes it"
        );
        assert_eq!(buffer.taken(4), 0);
    }

    #[test]
    fn the_process_budget_caps_what_buffers_hold() {
        let budget = BodyBudget::new(5, 0);
        let buffer = ResponseBuffer::new(100, 0, &budget);
        assert!(matches!(
            buffer.arrived(Bytes::from_static(b"abcd")),
            (Placed::Memory(_), 4)
        ));
        assert!(matches!(
            buffer.arrived(Bytes::from_static(b"efgh")),
            (Placed::Memory(_), 0)
        ));
    }

    #[test]
    fn credit_goes_back_in_batches_and_nothing_is_lost() {
        let mut owed = 0;
        assert_eq!(
            batch_credit(&mut owed, 100),
            None,
            "a small response sends none"
        );
        assert_eq!(batch_credit(&mut owed, CREDIT_BATCH - 101), None);
        assert_eq!(batch_credit(&mut owed, 1), Some(CREDIT_BATCH));
        assert_eq!(owed, 0);
        assert_eq!(
            batch_credit(&mut owed, 3 * CREDIT_BATCH),
            Some(3 * CREDIT_BATCH)
        );
        assert_eq!(batch_credit(&mut owed, 0), None);
    }
}
