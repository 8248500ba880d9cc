//! A raw-byte view of HTTP/1 request heads, for the checks hyper normalizes away.
//!
//! hyper quietly drops `Content-Length` when `Transfer-Encoding` is present, merges repeated equal
//! `Content-Length` lines and accepts bare-LF line endings. Those are the shapes request smuggling is
//! built from, so this wrapper watches the bytes hyper reads, follows message framing (fixed length or
//! chunked) to find where each head starts, and queues one [`HeadVerdict`] per request head, in order.
//! The request pipeline takes the verdicts in the same order hyper hands it the requests. An HTTP/2
//! connection (prior-knowledge preface) is passed through untouched: HTTP/2 has its own framing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::sendfile::{FileSends, SendFile};

pub use crate::pipeline::verdicts::{HeadVerdict, Verdicts};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head,
    /// Skipping a fixed-length body.
    Fixed(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// HTTP/2, or framing hyper will reject anyway: stop looking.
    PassThrough,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Reading the chunk-size line.
    Size(Option<u64>, SizeLine),
    /// Skipping chunk data, then its CRLF.
    Data(u64),
    DataCr,
    DataLf,
    /// Reading trailer lines: `at_line_start`, `after_cr`.
    Trailers(bool, bool),
}

/// Where in a chunk-size line we are: `1*HEXDIG *( BWS ";" ext ) CRLF`.
#[derive(Debug, Clone, Copy)]
enum SizeLine {
    Digits,
    /// Whitespace after the size: only `;` may follow (`0 \r\n` is refused).
    Space,
    Ext,
    Cr,
}

/// Wraps a connection's byte stream and records a verdict for every HTTP/1 request head read.
#[derive(Debug)]
pub struct WireGuard<T> {
    inner: T,
    state: State,
    head: Vec<u8>,
    max_head: usize,
    verdicts: Verdicts,
    /// Slowloris defence: a head must arrive whole within this time of its first byte (or of the
    /// connection opening). hyper's own header timer also runs while a keep-alive connection is idle,
    /// which would cut idle connections at the header timeout instead of the keep-alive timeout.
    head_timeout: Option<Duration>,
    head_deadline: Option<Pin<Box<Sleep>>>,
    head_armed: bool,
    /// nginx's `send_timeout`: a write (or flush) that makes no progress for this long fails, and the
    /// connection closes, so a client that stops reading cannot pin a response, its file or its
    /// buffers forever.
    send_timeout: Option<Duration>,
    send_deadline: Option<Pin<Box<Sleep>>>,
    send_waiting: bool,
    /// Files this connection's writes send with `sendfile` (plain HTTP/1 only).
    sends: Option<Arc<FileSends>>,
}

impl<T> WireGuard<T> {
    /// Watches `inner`; heads larger than `max_head` bytes get [`HeadVerdict::TooLarge`]; a head not
    /// complete within `head_timeout` of its first byte fails the read (the connection closes).
    pub fn new(
        inner: T,
        max_head: usize,
        head_timeout: Option<Duration>,
        send_timeout: Option<Duration>,
    ) -> (Self, Verdicts) {
        let verdicts = Verdicts::default();
        let mut guard = WireGuard {
            inner,
            state: State::Head,
            head: Vec::new(),
            max_head,
            verdicts: verdicts.clone(),
            head_timeout,
            head_deadline: None,
            head_armed: false,
            send_timeout,
            send_deadline: None,
            send_waiting: false,
            sends: None,
        };
        guard.arm_head_timer();
        (guard, verdicts)
    }

    /// Whether a head or send timer runs (it would hold a waker of the task polling it).
    pub fn timing(&self) -> bool {
        self.head_deadline.is_some() || self.send_deadline.is_some()
    }

    /// The stream it watches.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The same guard over `f(inner)` (the socket leaving or joining the reactor).
    pub fn try_map<U>(self, f: impl FnOnce(T) -> io::Result<U>) -> io::Result<WireGuard<U>> {
        Ok(WireGuard {
            inner: f(self.inner)?,
            state: self.state,
            head: self.head,
            max_head: self.max_head,
            verdicts: self.verdicts,
            head_timeout: self.head_timeout,
            head_deadline: self.head_deadline,
            head_armed: self.head_armed,
            send_timeout: self.send_timeout,
            send_deadline: self.send_deadline,
            send_waiting: self.send_waiting,
            sends: self.sends,
        })
    }

    /// The connection parks between requests: the timers and the head buffer go (a head in
    /// progress keeps its timer: parking never lengthens a slow client's time).
    pub fn park(&mut self) {
        if !self.head_armed {
            self.head_deadline = None;
        }
        if !self.send_waiting {
            self.send_deadline = None;
        }
        if self.head.is_empty() {
            self.head = Vec::new();
        }
        self.verdicts.park();
    }

    /// Writes send marked bytes from the files queued in `sends` (see [`crate::sendfile`]).
    pub fn send_files(&mut self, sends: Arc<FileSends>) {
        self.sends = Some(sends);
    }

    /// What is read from here on is dropped unread (a closing connection draining its client):
    /// no framing is followed, no verdict recorded, no head timer runs.
    pub fn discard(&mut self) {
        self.state = State::PassThrough;
        self.head_armed = false;
        self.head_deadline = None;
        self.head = Vec::new();
    }

    fn arm_head_timer(&mut self) {
        let Some(timeout) = self.head_timeout else {
            return;
        };
        let deadline = Instant::now() + timeout;
        match &mut self.head_deadline {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.head_deadline = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.head_armed = true;
    }

    /// Passes a write's result through, failing it once writes have been pending for the send timeout.
    fn send_progress<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.send_waiting = false;
            return poll;
        }
        let Some(timeout) = self.send_timeout else {
            return poll;
        };
        if !self.send_waiting {
            self.send_waiting = true;
            let deadline = Instant::now() + timeout;
            match &mut self.send_deadline {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.send_deadline = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        if let Some(deadline) = &mut self.send_deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing within send_timeout",
                )));
            }
        }
        Poll::Pending
    }

    /// Follows the framing over freshly read bytes; an error means the body framing is malformed.
    fn observe(&mut self, mut bytes: &[u8]) -> Result<(), &'static str> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::PassThrough => return Ok(()),
                State::Head => {
                    // Clients may send empty lines before a request (RFC 9112 section 2.2).
                    if self.head.is_empty() {
                        let skip = bytes
                            .iter()
                            .take_while(|&&b| b == b'\r' || b == b'\n')
                            .count();
                        bytes = &bytes[skip..];
                        if bytes.is_empty() {
                            return Ok(());
                        }
                        if !self.head_armed {
                            self.arm_head_timer();
                        }
                    }
                    let start = self.head.len().saturating_sub(3);
                    let take = bytes.len().min(
                        self.max_head
                            .saturating_add(4)
                            .saturating_sub(self.head.len())
                            .max(1),
                    );
                    self.head.extend_from_slice(&bytes[..take]);
                    match find_head_end(&self.head[start..]) {
                        Some(end) => {
                            let end = start + end;
                            let rest = self.head.len() - end;
                            bytes = &bytes[take - rest..];
                            self.head.truncate(end);
                            self.finish_head();
                        }
                        None if self.head.len() > self.max_head => {
                            // hyper will answer 431 or 400 and close; nothing more to follow.
                            self.verdicts.push(HeadVerdict::TooLarge);
                            self.verdicts.lose_track();
                            self.state = State::PassThrough;
                            return Ok(());
                        }
                        None => bytes = &bytes[take..],
                    }
                }
                State::Fixed(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::Head;
                    }
                }
                State::Chunked(chunk) => match step_chunked(chunk, bytes) {
                    Ok((used, done)) => {
                        bytes = &bytes[used..];
                        if done {
                            self.state = State::Head;
                        }
                    }
                    Err(why) => {
                        self.verdicts.lose_track();
                        self.state = State::PassThrough;
                        return Err(why);
                    }
                },
            }
        }
        Ok(())
    }

    fn finish_head(&mut self) {
        self.head_armed = false;
        if self.head.starts_with(H2_PREFACE) {
            // HTTP/2 with prior knowledge: the preface looks like a head; HTTP/2 frames follow.
            self.state = State::PassThrough;
            return;
        }
        let head = std::mem::take(&mut self.head);
        let (verdict, next) = judge_head(&head, self.max_head);
        self.verdicts.push(verdict);
        if matches!(next, State::PassThrough) {
            self.verdicts.lose_track();
        }
        self.state = next;
        self.head = head;
        self.head.clear();
    }
}

/// Index just past the blank line ending a head (`\r\n\r\n`, or `\n\n` which we then reject).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + off;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => i = at + 1,
        }
    }
    None
}

/// Judges one complete head and says how its body is framed.
fn judge_head(head: &[u8], max_head: usize) -> (HeadVerdict, State) {
    if head.len() > max_head {
        return (HeadVerdict::TooLarge, State::PassThrough);
    }
    if has_bare_lf(head) {
        return (
            HeadVerdict::Reject("bare LF line ending"),
            State::PassThrough,
        );
    }
    // The head is CRLF-terminated throughout (checked above); hyper parses it properly and refuses
    // malformed ones itself. Only the framing fields matter here, so a line scan is enough.
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let http10 = lines.next().is_some_and(|l| l.ends_with(b" HTTP/1.0"));
    let mut content_length: Option<&[u8]> = None;
    let mut cl_lines = 0;
    let mut te_lines = 0;
    let mut te_chunked_last = false;
    let mut chunked_count = 0;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            cl_lines += 1;
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_lines += 1;
            for coding in value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                te_chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                chunked_count += usize::from(te_chunked_last);
            }
        }
    }
    let verdict = match () {
        _ if cl_lines > 0 && te_lines > 0 => {
            HeadVerdict::Reject("both Content-Length and Transfer-Encoding")
        }
        _ if cl_lines > 1 => HeadVerdict::Reject("repeated Content-Length"),
        _ if te_lines > 0 && http10 => HeadVerdict::Reject("Transfer-Encoding in HTTP/1.0"),
        _ if te_lines > 0 && (!te_chunked_last || chunked_count != 1) => {
            HeadVerdict::Reject("Transfer-Encoding must end with a single chunked")
        }
        _ => HeadVerdict::Clean,
    };
    if verdict != HeadVerdict::Clean {
        return (verdict, State::PassThrough);
    }
    let next = if te_lines > 0 {
        State::Chunked(Chunk::Size(None, SizeLine::Digits))
    } else if let Some(cl) = content_length {
        match std::str::from_utf8(cl)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        {
            Some(digits) => match digits.parse::<u64>() {
                Ok(0) => State::Head,
                Ok(n) => State::Fixed(n),
                Err(_) => {
                    return (
                        HeadVerdict::Reject("Content-Length out of range"),
                        State::PassThrough,
                    );
                }
            },
            None => {
                return (
                    HeadVerdict::Reject("Content-Length is not a plain number"),
                    State::PassThrough,
                );
            }
        }
    } else {
        State::Head
    };
    (HeadVerdict::Clean, next)
}

fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// Advances the chunked-body tracker over `bytes`; returns bytes used and whether the body ended, or
/// why the chunked framing is malformed.
fn step_chunked(chunk: &mut Chunk, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
    const BAD_SIZE: &str = "malformed chunk-size line";
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        match chunk {
            Chunk::Size(size, line) => match (*line, b) {
                (SizeLine::Digits, b) if b.is_ascii_hexdigit() => {
                    let digit = u64::from((b as char).to_digit(16).ok_or(BAD_SIZE)?);
                    let value = size
                        .unwrap_or(0)
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(digit));
                    *size = Some(value.ok_or("chunk size out of range")?);
                }
                (_, _) if size.is_none() => return Err(BAD_SIZE),
                (SizeLine::Digits | SizeLine::Space, b' ' | b'\t') => *line = SizeLine::Space,
                (SizeLine::Digits | SizeLine::Space | SizeLine::Ext, b';') => *line = SizeLine::Ext,
                (SizeLine::Digits | SizeLine::Ext, b'\r') => *line = SizeLine::Cr,
                (SizeLine::Ext, b) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {}
                (SizeLine::Cr, b'\n') => {
                    let n = size.unwrap_or(0);
                    *chunk = if n == 0 {
                        Chunk::Trailers(true, false)
                    } else {
                        Chunk::Data(n)
                    };
                }
                _ => return Err(BAD_SIZE),
            },
            Chunk::Data(left) => {
                i -= 1;
                let n = (*left).min((bytes.len() - i) as u64);
                *left -= n;
                i += n as usize;
                if *left == 0 {
                    *chunk = Chunk::DataCr;
                }
            }
            Chunk::DataCr if b == b'\r' => *chunk = Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => *chunk = Chunk::Size(None, SizeLine::Digits),
            Chunk::DataCr | Chunk::DataLf => return Err("chunk data not followed by CRLF"),
            Chunk::Trailers(line_start, after_cr) => match (b, *after_cr) {
                (b'\n', true) if *line_start => return Ok((i, true)),
                (b'\n', true) => *chunk = Chunk::Trailers(true, false),
                (b'\r', false) => *after_cr = true,
                (b'\n', false) | (_, true) => return Err("bare CR or LF in trailers"),
                _ => *line_start = false,
            },
        }
    }
    Ok((i, false))
}

impl<T: crate::server::io::Park> crate::server::io::Park for WireGuard<T> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_readable(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WireGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        if !matches!(this.state, State::PassThrough) && this.verdicts.is_upgraded() {
            // A protocol switch (a WebSocket): what follows is not HTTP and has no head timeout.
            this.state = State::PassThrough;
            this.head_armed = false;
        }
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !matches!(this.state, State::PassThrough) {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() {
                if let Err(why) = this.observe(fresh) {
                    // Fail the read: hyper ends the body with an error and the connection closes.
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)));
                }
            }
        }
        if poll.is_pending() && this.head_armed {
            if let Some(deadline) = &mut this.head_deadline {
                if deadline.as_mut().poll(cx).is_ready() {
                    this.head_armed = false;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not received in time",
                    )));
                }
            }
        }
        poll
    }
}

impl<T: AsyncWrite + SendFile + Unpin> AsyncWrite for WireGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = match &this.sends {
            Some(sends) => {
                sends.poll_write(Pin::new(&mut this.inner), cx, &[io::IoSlice::new(buf)])
            }
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
        };
        self.send_progress(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = match &this.sends {
            Some(sends) => sends.poll_write(Pin::new(&mut this.inner), cx, bufs),
            None => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        };
        self.send_progress(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.send_progress(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TLS writes its close_notify here: a client that reads nothing holds it like any write.
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.send_progress(cx, poll)
    }
}

/// The guard over `stream`, fed in pieces cut where `cuts` says, every verdict read (fuzzing).
#[cfg(feature = "fuzzing")]
pub fn fuzz(stream: &[u8], cuts: &[u8]) {
    let (mut guard, verdicts) = WireGuard::new((), 16 * 1024, None, None);
    let mut rest = stream;
    for &cut in cuts {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at((usize::from(cut) % rest.len()).max(1));
        if guard.observe(piece).is_err() {
            return;
        }
        rest = after;
    }
    let _ = guard.observe(rest);
    // Once the guard has lost track every later request is refused, so `next` never runs dry:
    // there are at most as many verdicts as bytes.
    for _ in 0..=stream.len() {
        if verdicts.next().is_none() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(chunks: &[&[u8]]) -> Vec<HeadVerdict> {
        let (mut guard, v) = WireGuard::new((), 16 * 1024, None, None);
        for c in chunks {
            let _ = guard.observe(c);
        }
        std::iter::from_fn(|| v.next())
            .take_while(|v| *v != HeadVerdict::Reject("request framing could not be followed"))
            .collect()
    }

    #[test]
    fn pipelined_fixed_and_chunked_bodies_split_anywhere() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        for split in 1..stream.len() {
            let (a, b) = stream.split_at(split);
            let got = verdicts(&[a, b]);
            assert_eq!(
                got,
                vec![
                    HeadVerdict::Clean,
                    HeadVerdict::Clean,
                    HeadVerdict::Reject("both Content-Length and Transfer-Encoding")
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn smuggling_shapes() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
                "repeated",
            ),
            (b"GET / HTTP/1.1\nHost: x\n\n", "bare LF"),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "HTTP/1.0",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                "single chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
                "single chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
                "plain number",
            ),
        ];
        for (bytes, why) in cases {
            match verdicts(&[bytes]).first() {
                Some(HeadVerdict::Reject(r)) => assert!(r.contains(why), "{r} vs {why}"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
            }
        }
    }

    #[test]
    fn oversized_head_and_h2_passthrough() {
        let (mut guard, v) = WireGuard::new((), 1024, None, None);
        guard
            .observe(format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000)).as_bytes())
            .expect("head");
        assert_eq!(v.next(), Some(HeadVerdict::TooLarge));
        assert_eq!(verdicts(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]), vec![]);
        assert_eq!(
            verdicts(&[b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"]),
            vec![HeadVerdict::Clean]
        );
    }

    #[test]
    fn chunk_framing_errors() {
        let head: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let observe = |body: &[u8]| {
            let (mut guard, _) = WireGuard::new((), 16 * 1024, None, None);
            guard.observe(&[head, body].concat())
        };
        assert_eq!(
            observe(b"5\r\nhello\r\n5 ; a=\"b c\"\r\nworld\r\n0\r\nX: y\r\n\r\n"),
            Ok(())
        );
        for bad in [
            &b"0 \r\n\r\n"[..],
            b" 0\r\n\r\n",
            b"5\n;\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"6_0\r\n",
            b"-5\r\n",
            b"+5\r\n",
            b";foo=bar\r\n",
            b"5;ext=val\rue\r\n",
            b"0\r\nX: y\n\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(observe(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
