//! How frames travel between the front and one worker: the one seam a faster transport (a
//! shared-memory ring waking the peer through eventfd/futex only when it sleeps) would replace.
//!
//! Today it is the worker's Unix-socket connection: frames to the worker are queued without
//! blocking the event loop and a task coalesces whatever is queued into one write; frames from the
//! worker are read in large pieces and parsed by the pool. On the worker's side the same two roles are
//! played by its frame reader and its connection's `send` (`worker/mod.rs`).

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// Sends whole frames to a worker; never blocks the caller.
#[derive(Debug, Clone)]
pub struct Sender(mpsc::UnboundedSender<Vec<u8>>);

impl Sender {
    /// Queues one frame (or several, back to back). A frame for a dead worker is dropped: its
    /// supervisor fails the requests in flight.
    pub fn send(&self, frames: Vec<u8>) {
        let _ = self.0.send(frames);
    }
}

/// Receives bytes from a worker.
#[derive(Debug)]
pub struct Receiver(OwnedReadHalf);

impl Receiver {
    /// Waits for bytes and appends them to `buf`; `Ok(0)` once the worker has closed its side.
    /// Cancel-safe: nothing read is lost if the caller stops waiting.
    pub async fn recv(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        self.0.read_buf(buf).await
    }
}

/// Opens the transport over a connected worker socket. Must run on the runtime that will drive it.
pub fn over_socket(stream: UnixStream) -> (Sender, Receiver) {
    let (reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_coalesced(writer, rx));
    (Sender(tx), Receiver(reader))
}

/// Writes queued frames, coalescing whatever is waiting (up to 1 MiB) into one write.
async fn write_coalesced(mut writer: OwnedWriteHalf, mut frames: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(first) = frames.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < 1 << 20 {
            match frames.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if writer.write_all(&batch).await.is_err() {
            return;
        }
    }
}
