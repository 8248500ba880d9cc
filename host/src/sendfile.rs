//! Plain files sent with `sendfile(2)` on plain HTTP/1 connections (nginx's `sendfile on`).
//!
//! hyper writes buffers, never file descriptors. So a file's body reaches hyper as frames of
//! *marked* bytes: slices of [`MARK`], a static block nobody writes or reads, whose addresses say
//! "the next bytes of the file queued in [`FileSends`]". hyper, held to its vectored-write strategy
//! (`writev(true)` on the server builder), queues our slices uncopied and hands them to the
//! connection's stream, which sends that many bytes of the file with `sendfile` in their place.
//! The kernel takes the pages from its page cache: the copy into user memory and the copy back out
//! of it are gone. Hand-written because no crate joins hyper's writes to `sendfile`.
//!
//! Only where marks cannot leak: HTTP/1 over plain TCP (TLS encrypts the bytes it is given, HTTP/2
//! copies them into frames), and only a body that goes to hyper untouched (the pipeline's last step
//! converts it). Each frame starts at its own place in the mark (a tag, counted per connection),
//! and the stream checks that the slice it is given starts where the next queued file's next byte
//! is and is no longer than what is left of it: a marked slice out of step, or with no file
//! queued, fails the write and the connection closes, rather than sending the mark's zeros as a
//! file's bytes or one file's for another's.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::AsyncWrite;

/// Largest frame of marked bytes, and so of one `sendfile` (nginx's `sendfile_max_chunk` is 2 MiB):
/// fewer, larger frames cost hyper and the loop less per byte (about a third of the CPU of a 1 MiB
/// response, against 128 KiB frames). hyper asks for the next frame only once the last is nearly
/// sent, so a slow client takes long over one: the connection counts the bytes sendfile moves as
/// progress for `send_timeout` ([`FileSends::moved`]).
const FRAME: usize = 1024 * 1024;

/// Distinct places a frame may start at, `TAG_STEP` apart.
const TAGS: usize = 1024;
const TAG_STEP: usize = FRAME / TAGS;

/// Room for a frame at every tag. Zeroed read-only memory in the binary: never read, so never
/// resident.
const MARK_LEN: usize = 2 * FRAME;

static MARK: [u8; MARK_LEN] = [0; MARK_LEN];

/// Whether `slice` lies in [`MARK`].
fn is_marked(slice: &[u8]) -> bool {
    let start = MARK.as_ptr() as usize;
    let at = slice.as_ptr() as usize;
    !slice.is_empty() && at >= start && at + slice.len() <= start + MARK_LEN
}

/// How the connection a response goes to sends a file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The kernel sends them from its page cache (`sendfile`): plain HTTP/1 over TCP.
    Sendfile,
    /// They are written from memory (TLS, HTTP/2, a Unix socket).
    Bytes,
}

impl Delivery {
    /// How a request's response will be sent (the connection said when it set up [`FileSends`]).
    pub fn of(peer: &crate::peer::Peer) -> Delivery {
        if peer.sends_files {
            Delivery::Sendfile
        } else {
            Delivery::Bytes
        }
    }
}

/// A stream that can send bytes of a file itself.
pub trait SendFile {
    /// Whether [`SendFile::poll_sendfile`] works on this stream.
    fn sends_files(&self) -> bool {
        false
    }

    /// Writes `bufs` (a response head, say) telling the kernel that a file's bytes follow at
    /// once, so that it sends them together rather than the head in a packet of its own
    /// (`MSG_MORE`, which nginx gets from `tcp_nopush`).
    fn poll_write_more(
        &mut self,
        _cx: &mut Context<'_>,
        _bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        cannot_send_files()
    }

    /// Sends up to `len` bytes of `file` from its current position (advancing it).
    fn poll_sendfile(
        &mut self,
        _cx: &mut Context<'_>,
        _file: &File,
        _len: usize,
    ) -> Poll<io::Result<usize>> {
        cannot_send_files()
    }
}

/// What [`SendFile`]'s sends answer on a stream that cannot send files.
fn cannot_send_files() -> Poll<io::Result<usize>> {
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "this stream cannot send files",
    )))
}

/// One piece of a file that a frame of marked bytes stands for.
#[derive(Debug)]
struct Piece {
    file: Arc<File>,
    /// Where in the mark its frame starts.
    at: usize,
    len: usize,
    left: usize,
}

impl Piece {
    /// Where in the mark the next byte to send is.
    fn next(&self) -> usize {
        self.at + (self.len - self.left)
    }
}

#[derive(Debug, Default)]
struct Queue {
    pieces: VecDeque<Piece>,
    frames: usize,
    /// Bytes sent, and as of the last [`FileSends::moved`].
    sent: u64,
    seen: u64,
}

/// The files a connection's marked bytes stand for, in the order hyper writes them.
#[derive(Debug, Default)]
pub struct FileSends(Mutex<Queue>);

impl FileSends {
    /// Whether file bytes were sent since the last time this was asked.
    pub fn moved(&self) -> bool {
        self.0.lock().is_ok_and(|mut q| {
            let moved = q.sent != q.seen;
            q.seen = q.sent;
            moved
        })
    }

    /// Queues a piece of `len` (at most [`FRAME`]) bytes of `file`; its frame's place in the mark.
    fn push(&self, file: &Arc<File>, len: usize) -> Option<usize> {
        let mut q = self.0.lock().ok()?;
        let at = (q.frames % TAGS) * TAG_STEP;
        q.frames = q.frames.wrapping_add(1);
        q.pieces.push_back(Piece {
            file: Arc::clone(file),
            at,
            len,
            left: len,
        });
        Some(at)
    }

    /// Writes `bufs` to `io`: a marked slice as `sendfile` from the file queued for it, anything
    /// else as it is (up to the next marked slice).
    pub fn poll_write<T: AsyncWrite + SendFile + Unpin>(
        &self,
        mut io: Pin<&mut T>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match bufs.iter().position(|b| is_marked(b)) {
            None => io.poll_write_vectored(cx, bufs),
            Some(0) => {
                let at = bufs[0].as_ptr() as usize - MARK.as_ptr() as usize;
                let front = self.0.lock().ok().and_then(|q| {
                    q.pieces
                        .front()
                        .filter(|p| p.next() == at && bufs[0].len() <= p.left)
                        .map(|p| (Arc::clone(&p.file), p.left))
                });
                let Some((file, left)) = front else {
                    return Poll::Ready(Err(io::Error::other(
                        "marked bytes out of step with the files queued",
                    )));
                };
                let n = ready!(io.poll_sendfile(cx, &file, bufs[0].len().min(left)))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being sent",
                    )));
                }
                if let Ok(mut q) = self.0.lock() {
                    q.sent += n as u64;
                    if let Some(piece) = q.pieces.front_mut() {
                        piece.left -= n.min(piece.left);
                        if piece.left == 0 {
                            q.pieces.pop_front();
                        }
                    }
                }
                Poll::Ready(Ok(n))
            }
            Some(i) => io.poll_write_more(cx, &bufs[..i]),
        }
    }
}

/// A file body as frames of marked bytes, each queued with its file as it is handed to hyper.
#[derive(Debug)]
pub struct MarkedFile {
    file: Arc<File>,
    left: u64,
    sends: Arc<FileSends>,
}

impl MarkedFile {
    /// The next `len` bytes of `file` (from its position), to be sent through `sends`.
    pub fn new(file: File, len: u64, sends: &Arc<FileSends>) -> MarkedFile {
        MarkedFile {
            file: Arc::new(file),
            left: len,
            sends: Arc::clone(sends),
        }
    }

    /// Bytes not yet handed over.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// The next frame, its file queued for it.
    pub fn next_frame(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        let len = self.left.min(FRAME as u64) as usize;
        let at = self.sends.push(&self.file, len)?;
        self.left -= len as u64;
        Some(Bytes::from_static(&MARK[at..at + len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// A stream that records what it was given: bytes, and file bytes sent by `sendfile`.
    #[derive(Default)]
    struct Recorder {
        out: Vec<u8>,
        /// Most bytes one `sendfile` moves, to exercise partial sends.
        most: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            assert!(!is_marked(buf), "a mark written as bytes");
            self.out.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                assert!(!is_marked(b), "a mark written as bytes");
                self.out.extend_from_slice(b);
                n += b.len();
            }
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl SendFile for Recorder {
        fn sends_files(&self) -> bool {
            true
        }
        fn poll_write_more(
            &mut self,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(self).poll_write_vectored(cx, bufs)
        }
        fn poll_sendfile(
            &mut self,
            _cx: &mut Context<'_>,
            mut file: &File,
            len: usize,
        ) -> Poll<io::Result<usize>> {
            let mut buf = vec![0u8; len.min(self.most)];
            let n = io::Read::read(&mut file, &mut buf)?;
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().expect("tmp");
        f.write_all(bytes).expect("write");
        f.seek(SeekFrom::Start(0)).expect("seek");
        f
    }

    /// Drives `poll_write` the way hyper does: the head and the marked frames as one list of
    /// slices, advanced by what each call took.
    fn send(head: &[u8], frames: &[Bytes], sends: &FileSends, io: &mut Recorder) -> io::Result<()> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut pieces: Vec<&[u8]> = std::iter::once(head)
            .chain(frames.iter().map(|f| &f[..]))
            .filter(|p| !p.is_empty())
            .collect();
        while !pieces.is_empty() {
            let slices: Vec<io::IoSlice<'_>> = pieces.iter().map(|p| io::IoSlice::new(p)).collect();
            let Poll::Ready(n) = sends.poll_write(Pin::new(&mut *io), &mut cx, &slices) else {
                unreachable!("the recorder is always ready");
            };
            let mut n = n?;
            while n > 0 {
                let take = n.min(pieces[0].len());
                pieces[0] = &pieces[0][take..];
                n -= take;
                if pieces[0].is_empty() {
                    pieces.remove(0);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn marked_frames_become_the_files_bytes_in_order() {
        let one: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let two = b"second file".to_vec();
        let sends = Arc::new(FileSends::default());
        let mut frames = Vec::new();
        for body in [&one, &two] {
            let mut marked = MarkedFile::new(file_with(body), body.len() as u64, &sends);
            while let Some(frame) = marked.next_frame() {
                assert!(is_marked(&frame));
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 4, "3 MB in 1 MiB frames, then one");
        let mut io = Recorder {
            most: 100_000,
            ..Recorder::default()
        };
        send(b"HEAD\r\n\r\n", &frames, &sends, &mut io).expect("sent");
        let mut expected = b"HEAD\r\n\r\n".to_vec();
        expected.extend_from_slice(&one);
        expected.extend_from_slice(&two);
        assert!(io.out == expected, "the bytes sent are the files'");
        assert!(
            sends.0.lock().expect("lock").pieces.is_empty(),
            "nothing left queued"
        );
    }

    #[test]
    fn a_mark_without_a_file_or_a_file_that_shrank_fails_the_write() {
        let sends = FileSends::default();
        let mut io = Recorder {
            most: usize::MAX,
            ..Recorder::default()
        };
        let stray = Bytes::from_static(&MARK[..10]);
        assert!(send(b"", &[stray], &sends, &mut io).is_err());
        assert!(io.out.is_empty(), "no zeros sent");

        let sends = Arc::new(FileSends::default());
        let mut marked = MarkedFile::new(file_with(b"short"), 10, &sends);
        let frame = marked.next_frame().expect("a frame");
        let err = send(b"", &[frame], &sends, &mut io).expect_err("shrank");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(io.out, b"short");
    }

    #[test]
    fn moved_says_whether_file_bytes_went_out_since_it_was_last_asked() {
        let sends = Arc::new(FileSends::default());
        assert!(!sends.moved());
        let mut marked = MarkedFile::new(file_with(b"some bytes"), 10, &sends);
        let frame = marked.next_frame().expect("a frame");
        assert!(!sends.moved(), "queued is not sent");
        let mut io = Recorder {
            most: 4,
            ..Recorder::default()
        };
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let slices = [io::IoSlice::new(&frame)];
        let sent = sends.poll_write(Pin::new(&mut io), &mut cx, &slices);
        assert!(matches!(sent, Poll::Ready(Ok(4))));
        assert!(sends.moved());
        assert!(!sends.moved(), "nothing since");
    }

    #[test]
    fn a_frame_out_of_step_is_refused() {
        let sends = Arc::new(FileSends::default());
        let mut first = MarkedFile::new(file_with(b"first"), 5, &sends);
        let mut second = MarkedFile::new(file_with(b"second"), 6, &sends);
        let _never_written = first.next_frame().expect("a frame");
        let frame = second.next_frame().expect("a frame");
        let mut io = Recorder {
            most: usize::MAX,
            ..Recorder::default()
        };
        assert!(send(b"", &[frame], &sends, &mut io).is_err());
        assert!(
            io.out.is_empty(),
            "not the first file's bytes for the second"
        );
    }

    #[test]
    fn only_the_mark_is_marked() {
        assert!(is_marked(&MARK[5..10]));
        assert!(!is_marked(&MARK[..0]));
        assert!(!is_marked(b"ordinary bytes"));
        let copy = MARK[..4].to_vec();
        assert!(!is_marked(&copy));
    }
}
