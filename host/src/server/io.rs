//! What a connection's byte stream needs beyond reading and writing: bytes read ahead handed back
//! ([`Prefixed`]: the protocol sniff, a parked connection's unread bytes), and waiting until the
//! client sends more without holding any buffer ([`Park`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sendfile::SendFile;

/// A stream that can wait, holding nothing, until its peer sends more (or closes).
pub trait Park {
    /// Ready when a read would find data (or the end of the stream); the waker is kept by the
    /// socket's own registration, so a parked connection stores no future for it.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Park for tokio::net::TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl SendFile for tokio::net::TcpStream {
    fn sends_files(&self) -> bool {
        true
    }

    fn poll_write_more(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let socket: &tokio::net::TcpStream = self;
        poll_send(socket, cx, || {
            let mut control = rustix::net::SendAncillaryBuffer::default();
            rustix::net::sendmsg(socket, bufs, &mut control, rustix::net::SendFlags::MORE)
        })
    }

    fn poll_sendfile(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let socket: &tokio::net::TcpStream = self;
        poll_send(socket, cx, || rustix::fs::sendfile(socket, file, None, len))
    }
}

/// Runs a non-blocking send on `socket` once it is writable, as tokio's own writes do.
fn poll_send(
    socket: &tokio::net::TcpStream,
    cx: &mut Context<'_>,
    mut send: impl FnMut() -> rustix::io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(socket.poll_write_ready(cx))?;
        match socket.try_io(tokio::io::Interest::WRITABLE, || {
            send().map_err(io::Error::from)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            sent => return Poll::Ready(sent),
        }
    }
}

// Over a Unix socket or TLS, files are written as bytes.
impl SendFile for tokio::net::UnixStream {}

impl<IO> SendFile for tokio_rustls::server::TlsStream<IO> {}

impl Park for tokio::net::UnixStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl<IO> Park for tokio_rustls::server::TlsStream<IO>
where
    IO: Park + AsyncRead + AsyncWrite + Unpin,
{
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (io, session) = self.get_mut();
        // rustls may hold decrypted bytes already: then there is something to read now.
        let buffered = session
            .process_new_packets()
            .map(|state| state.plaintext_bytes_to_read() > 0)
            .unwrap_or(true);
        if buffered {
            return Poll::Ready(Ok(()));
        }
        io.poll_readable(cx)
    }
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    /// `io`, read from `prefix` first.
    pub fn new(prefix: Bytes, io: IO) -> Prefixed<IO> {
        Prefixed { prefix, io }
    }

    /// Puts more bytes back in front (a parked connection's unread bytes). They are copied: hyper
    /// hands back a view into its whole read buffer, which must not stay alive for them.
    pub fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.prefix.is_empty() {
            self.prefix = Bytes::copy_from_slice(&bytes);
        } else {
            let mut joined = bytes::BytesMut::with_capacity(bytes.len() + self.prefix.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.prefix);
            self.prefix = joined.freeze();
        }
    }

    /// Whether bytes are waiting in front.
    pub fn has_prefix(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// The stream under the prefix.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The stream under the prefix.
    pub fn inner_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// The same prefix in front of `f(io)` (the socket leaving or joining the reactor).
    pub fn try_map<U>(self, f: impl FnOnce(IO) -> io::Result<U>) -> io::Result<Prefixed<U>> {
        Ok(Prefixed {
            prefix: self.prefix,
            io: f(self.io)?,
        })
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // An empty view still holds its buffer, for as long as the connection lives.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: SendFile> SendFile for Prefixed<IO> {
    fn sends_files(&self) -> bool {
        self.io.sends_files()
    }

    fn poll_write_more(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io.poll_write_more(cx, bufs)
    }

    fn poll_sendfile(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        self.io.poll_sendfile(cx, file, len)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Park> Park for Prefixed<IO> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.io.poll_readable(cx)
    }
}

/// The HTTP/2 connection preface: a client speaking HTTP/2 with prior knowledge starts with it.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes tell HTTP/2 (the whole preface) from HTTP/1 (anything that
/// departs from it); returns the bytes read (to be put back) and whether it is HTTP/2. An empty
/// read (the client closed) answers what was read so far, as HTTP/1.
pub async fn sniff<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<(Bytes, bool)> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        let have = buf.len();
        if have >= H2_PREFACE.len() {
            return Ok((buf.freeze(), true));
        }
        if buf[..] != H2_PREFACE[..have] {
            return Ok((buf.freeze(), false));
        }
        // Never more than the preface: what follows belongs to the protocol.
        let mut chunk = [0u8; 24];
        let want = H2_PREFACE.len() - have;
        let n = io.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok((buf.freeze(), false));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf[..] != H2_PREFACE[..buf.len()] {
            return Ok((buf.freeze(), false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sniffing_tells_the_preface_from_a_request_and_gives_every_byte_back() {
        let mut h2 = &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12"[..];
        let (read, is_h2) = sniff(&mut h2).await.expect("sniff");
        assert!(is_h2);
        assert_eq!(&read[..], H2_PREFACE);
        assert_eq!(h2, b"\x00\x00\x12", "nothing past the preface");

        let mut h1 = &b"GET / HTTP/1.1\r\n"[..];
        let (read, is_h2) = sniff(&mut h1).await.expect("sniff");
        assert!(!is_h2);
        let mut prefixed = Prefixed::new(read, h1);
        let mut all = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut prefixed, &mut all)
            .await
            .expect("read");
        assert_eq!(all, b"GET / HTTP/1.1\r\n");

        let mut partial = &b"PRI * HT"[..];
        let (read, is_h2) = sniff(&mut partial).await.expect("sniff");
        assert!(!is_h2, "closed before the preface ended");
        assert_eq!(&read[..], b"PRI * HT");
    }
}
