//! The framed protocol between the front process and a Python worker, over one Unix socket per worker.
//!
//! Every frame is `len: u32 | kind: u8 | stream: u32 | payload`, big-endian, `len` counting kind,
//! stream and payload. Many requests share one connection (multiplexed by stream id), so either side
//! can batch several frames into one write.

use std::io;

/// Bytes before the payload: length, kind, stream.
pub const HEADER_LEN: usize = 9;
/// Largest frame accepted (a request with its buffered body, or one response chunk).
pub const MAX_FRAME: usize = 1 << 30;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Worker -> front, stream 0: the worker is up; payload is its id (u32).
    Hello = 1,
    /// Front -> worker: a request: environ pairs ([`PairEncoder`]), then the body ([`encode_body`]).
    Request = 2,
    /// Front -> worker: the client went away; stop the request.
    Cancel = 3,
    /// Front -> worker: the client consumed this many body bytes (u32); the worker may send more.
    Credit = 4,
    /// Worker -> front: status and headers ([`encode_start`]).
    Start = 5,
    /// Worker -> front: a piece of the response body.
    Body = 6,
    /// Worker -> front: the response is complete.
    End = 7,
    /// Worker -> front: the request failed (before or after `Start`); payload is a message.
    Error = 8,
    /// Front -> worker: a request sent ahead to a busy worker (`prefetch`), as `Request`; the
    /// worker says `Begin` when a thread takes it.
    RequestAhead = 9,
    /// Worker -> front: a thread took this request sent ahead (the app is about to see it).
    Begin = 10,
    /// Front -> worker: drop this request sent ahead if no thread has taken it yet (it waited
    /// too long); once begun, it goes on. Either way the worker answers (`Error` or `Begin`).
    Withdraw = 11,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Request,
            3 => Kind::Cancel,
            4 => Kind::Credit,
            5 => Kind::Start,
            6 => Kind::Body,
            7 => Kind::End,
            8 => Kind::Error,
            9 => Kind::RequestAhead,
            10 => Kind::Begin,
            11 => Kind::Withdraw,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub kind: Kind,
    /// Which request it belongs to (0 for connection-level frames).
    pub stream: u32,
    /// Its payload.
    pub payload: bytes::Bytes,
}

/// Appends one frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, kind: Kind, stream: u32, payload: &[u8]) {
    let len = u32::try_from(5 + payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Fills in the header of a frame whose payload was written after [`HEADER_LEN`] bytes of room.
pub fn seal(frame: &mut [u8], kind: Kind, stream: u32) {
    let len = u32::try_from(frame.len().saturating_sub(4)).unwrap_or(u32::MAX);
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame[4] = kind as u8;
    frame[5..HEADER_LEN].copy_from_slice(&stream.to_be_bytes());
}

/// Takes one complete frame off the front of `buf`, if there is one.
pub fn take_frame(buf: &mut bytes::BytesMut) -> io::Result<Option<Frame>> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(5..=MAX_FRAME).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad frame length {len}"),
        ));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(4 + len);
    let kind = Kind::from_u8(frame[4])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown frame kind"))?;
    let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]);
    let payload = frame.split_off(HEADER_LEN).freeze();
    Ok(Some(Frame {
        kind,
        stream,
        payload,
    }))
}

/// A request as the worker needs it: CGI variables (bytes, decoded as latin-1 there) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRequest {
    /// `(name, value)` pairs for the environ, in order.
    pub environ: EnvironPairs,
    /// The whole request body, when it was small enough to travel in the frame.
    pub body: bytes::Bytes,
    /// Otherwise the file the front spooled it to (removed by the front when the response ends).
    pub body_file: Option<std::path::PathBuf>,
}

const BODY_INLINE: u8 = 0;
const BODY_FILE: u8 = 1;

/// Encodes a request: the pairs ([`encode_pairs`]), `0`, then the body.
#[cfg(any(test, feature = "fuzzing"))]
pub fn encode_request(environ: &[(String, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * environ.len() + body.len() + 1);
    encode_pairs(&mut out, environ);
    out.push(BODY_INLINE);
    out.extend_from_slice(body);
    out
}

/// Appends the body part of a request frame: `0` and the body, or `1` and the spooled file's path.
pub fn encode_body(out: &mut Vec<u8>, body: Result<&[u8], &std::path::Path>) {
    use std::os::unix::ffi::OsStrExt;
    match body {
        Ok(bytes) => {
            out.push(BODY_INLINE);
            out.extend_from_slice(bytes);
        }
        Err(path) => {
            out.push(BODY_FILE);
            out.extend_from_slice(path.as_os_str().as_bytes());
        }
    }
}

/// Encodes a request whose body was spooled to a file: the pairs, `1`, then the file's path.
#[cfg(test)]
pub fn encode_request_spooled(
    environ: &[(String, Vec<u8>)],
    body_file: &std::path::Path,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * environ.len() + 64);
    encode_pairs(&mut out, environ);
    encode_body(&mut out, Err(body_file));
    out
}

/// Appends `count: u16`, then per pair `klen: u16 | key | vlen: u32 | value`.
fn encode_pairs(out: &mut Vec<u8>, pairs: &[(String, Vec<u8>)]) {
    use super::environ::Sink;
    let mut encoder = PairEncoder::new(out);
    for (key, value) in pairs {
        encoder.put(key, value);
    }
    encoder.finish();
}

/// Writes environ pairs straight into a frame payload, with no list in between.
#[derive(Debug)]
pub struct PairEncoder<'a> {
    out: &'a mut Vec<u8>,
    count_at: usize,
    count: u16,
}

impl<'a> PairEncoder<'a> {
    /// Starts the pairs section at the end of `out`.
    pub fn new(out: &'a mut Vec<u8>) -> PairEncoder<'a> {
        let count_at = out.len();
        out.extend_from_slice(&[0, 0]);
        PairEncoder {
            out,
            count_at,
            count: 0,
        }
    }

    fn key(
        &mut self,
        key_len: usize,
        write_key: impl FnOnce(&mut Vec<u8>),
        value_len: usize,
    ) -> bool {
        if self.count == u16::MAX || key_len > u16::MAX as usize {
            return false;
        }
        self.count += 1;
        self.out.extend_from_slice(&(key_len as u16).to_be_bytes());
        write_key(self.out);
        self.out
            .extend_from_slice(&u32::try_from(value_len).unwrap_or(u32::MAX).to_be_bytes());
        true
    }

    /// Writes the pair count; the encoder is done.
    pub fn finish(self) {
        self.out[self.count_at..self.count_at + 2].copy_from_slice(&self.count.to_be_bytes());
    }
}

impl super::environ::Sink for PairEncoder<'_> {
    fn put(&mut self, key: &str, value: &[u8]) {
        if self.key(
            key.len(),
            |out| out.extend_from_slice(key.as_bytes()),
            value.len(),
        ) {
            self.out.extend_from_slice(value);
        }
    }

    fn put_header(
        &mut self,
        name: &str,
        values: http::header::GetAll<'_, http::HeaderValue>,
        separator: &[u8],
    ) {
        let (count, len) = values
            .iter()
            .fold((0usize, 0usize), |(n, l), v| (n + 1, l + v.len()));
        let len = len + separator.len() * count.saturating_sub(1);
        let write_key = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"HTTP_");
            out.extend(name.bytes().map(|b| {
                if b == b'-' {
                    b'_'
                } else {
                    b.to_ascii_uppercase()
                }
            }));
        };
        if self.key(5 + name.len(), write_key, len) {
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    self.out.extend_from_slice(separator);
                }
                self.out.extend_from_slice(v.as_bytes());
            }
        }
    }
}

/// Decodes a request frame's payload (pairs, then the body or the spooled body's path).
pub fn decode_request(payload: bytes::Bytes) -> io::Result<WireRequest> {
    use std::os::unix::ffi::OsStrExt;
    // Checked once here, read in place later: no allocation per pair.
    // With no pairs they end right after the 2-byte count.
    let at = pairs_in(&payload)?.try_fold(2, |_, pair| pair.map(|(_, _, end)| end))?;
    let environ = EnvironPairs(payload.slice(..at));
    let rest = payload.slice(at..);
    match rest.first() {
        Some(&BODY_INLINE) => Ok(WireRequest {
            environ,
            body: rest.slice(1..),
            body_file: None,
        }),
        Some(&BODY_FILE) => Ok(WireRequest {
            environ,
            body: bytes::Bytes::new(),
            body_file: Some(std::ffi::OsStr::from_bytes(&rest[1..]).into()),
        }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request frame without a body tag",
        )),
    }
}

/// A request's environ pairs, still in the frame they came in (checked by [`decode_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironPairs(bytes::Bytes);

impl EnvironPairs {
    /// The pairs in order, borrowed from the frame.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        pairs_in(&self.0)
            .into_iter()
            .flatten()
            .map_while(Result::ok)
            .map(|(key, value, _)| (key, value))
    }

    /// The pairs as owned values, for tests.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn to_vec(&self) -> Vec<(String, Vec<u8>)> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }
}

/// Walks [`encode_pairs`]'s output: each pair with the offset where it ends.
fn pairs_in(payload: &[u8]) -> io::Result<impl Iterator<Item = io::Result<(&str, &[u8], usize)>>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "truncated frame");
    let count = payload
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(bad)?;
    let mut at = 2usize;
    let mut take = move |n: usize| -> io::Result<(&[u8], usize)> {
        let end = at.checked_add(n).ok_or_else(bad)?;
        let slice = payload.get(at..end).ok_or_else(bad)?;
        at = end;
        Ok((slice, end))
    };
    Ok((0..count).map(move |_| {
        let (klen, _) = take(2)?;
        let (key, _) = take(usize::from(u16::from_be_bytes([klen[0], klen[1]])))?;
        let key = std::str::from_utf8(key).map_err(|_| bad())?;
        let (vlen, _) = take(4)?;
        let vlen = u32::from_be_bytes([vlen[0], vlen[1], vlen[2], vlen[3]]) as usize;
        let (value, end) = take(vlen)?;
        Ok((key, value, end))
    }))
}

/// Encodes the response head: `status: u16 | reason-len: u16 | reason | count: u16 | (nlen: u16 | name | vlen: u32 | value)*`.
pub fn encode_start(status: u16, reason: &str, headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 48 * headers.len());
    out.extend_from_slice(&status.to_be_bytes());
    let reason = &reason.as_bytes()[..reason.len().min(1024)];
    out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    out.extend_from_slice(reason);
    encode_pairs(&mut out, headers);
    out
}

/// The largest response head an app may send (status, names, values and their framing): past it
/// the response is a 502, as nginx answers an upstream whose header overflows `proxy_buffer_size`.
/// It also keeps the field count (at least 7 bytes each here) under `HeaderMap`'s capacity.
pub const MAX_RESPONSE_HEAD: usize = 64 << 10;

/// Decodes [`encode_start`]'s output straight into a status and a header map whose values share
/// the frame's bytes (no copy). The reason phrase is not kept (HTTP/2 has none and hyper writes the
/// standard one). A header that is not valid HTTP is dropped with a warning: the app's mistake must
/// not cost the response. A head past [`MAX_RESPONSE_HEAD`] is an error.
pub fn decode_start(payload: bytes::Bytes) -> io::Result<(u16, http::HeaderMap)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "truncated start frame");
    if payload.len() < 4 {
        return Err(bad());
    }
    if payload.len() > MAX_RESPONSE_HEAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} bytes of response headers, more than the {} KiB allowed",
                payload.len(),
                MAX_RESPONSE_HEAD >> 10
            ),
        ));
    }
    let status = u16::from_be_bytes([payload[0], payload[1]]);
    let rlen = u16::from_be_bytes([payload[2], payload[3]]) as usize;
    let pairs_at = 4usize
        .checked_add(rlen)
        .filter(|&at| at <= payload.len())
        .ok_or_else(bad)?;
    let pairs = &payload[pairs_at..];
    let mut headers = http::HeaderMap::new();
    for pair in pairs_in(pairs)? {
        let (name, value, end) = pair?;
        let start = pairs_at + end - value.len();
        let value = payload.slice(start..pairs_at + end);
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_maybe_shared(value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.try_append(name, value).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "too many response headers")
                })?;
            }
            _ => tracing::warn!(header = name, "dropping an invalid header from the app"),
        }
    }
    Ok((status, headers))
}

/// Every frame in `bytes`, and each payload read as a request and as a response head, as the
/// worker and the front would (fuzzing).
#[cfg(feature = "fuzzing")]
pub fn fuzz(bytes: &[u8]) {
    let mut buf = bytes::BytesMut::from(bytes);
    while let Ok(Some(frame)) = take_frame(&mut buf) {
        if let Ok(request) = decode_request(frame.payload.clone()) {
            for pair in request.environ.iter() {
                std::hint::black_box(pair);
            }
            let _ = request.environ.to_vec();
        }
        let _ = decode_start(frame.payload);
    }
}

/// A request head from `head` (`METHOD TARGET` then `name: value` lines, as far as the `http`
/// crate accepts them, the way hyper would hand it over), its environ, and that environ through a
/// request frame and back (fuzzing).
#[cfg(feature = "fuzzing")]
pub fn fuzz_environ(head: &[u8]) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let (method, target) = first.split_once(' ').unwrap_or(("GET", first));
    let mut builder = http::Request::builder().method(method).uri(target);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            builder = builder.header(name.trim(), value.trim());
        }
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let origin = super::environ::Origin {
        remote_ip: Some(std::net::Ipv4Addr::LOCALHOST.into()),
        remote_port: Some(40000),
        local: None,
        scheme: "http",
        script_name: "",
        client_subject: None,
    };
    let environ = super::environ::build(&parts, &origin, 0);
    let payload = encode_request(&environ, b"");
    let decoded = decode_request(payload.into()).map(|r| r.environ.to_vec());
    assert_eq!(
        decoded.ok(),
        Some(environ),
        "an environ must survive its frame"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_split_anywhere() {
        let mut wire = Vec::new();
        write_frame(&mut wire, Kind::Hello, 0, &7u32.to_be_bytes());
        write_frame(&mut wire, Kind::Body, 42, b"hello");
        write_frame(&mut wire, Kind::End, 42, b"");
        for split in 0..wire.len() {
            let mut buf = bytes::BytesMut::from(&wire[..split]);
            let mut got = Vec::new();
            while let Some(f) = take_frame(&mut buf).expect("valid") {
                got.push(f);
            }
            buf.extend_from_slice(&wire[split..]);
            while let Some(f) = take_frame(&mut buf).expect("valid") {
                got.push(f);
            }
            assert_eq!(got.len(), 3, "split {split}");
            assert_eq!(
                got[1],
                Frame {
                    kind: Kind::Body,
                    stream: 42,
                    payload: bytes::Bytes::from_static(b"hello")
                }
            );
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut buf = bytes::BytesMut::from(&[0u8, 0, 0, 1, 9, 0, 0, 0, 0][..]);
        assert!(take_frame(&mut buf).is_err());
        let mut buf = bytes::BytesMut::from(&[0u8, 0, 0, 5, 99, 0, 0, 0, 0][..]);
        assert!(take_frame(&mut buf).is_err());
    }

    #[test]
    fn request_and_start_round_trip() {
        let environ = vec![
            ("REQUEST_METHOD".to_string(), b"GET".to_vec()),
            ("PATH_INFO".into(), vec![0xe9]),
        ];
        let wire = encode_request(&environ, b"body!");
        let req = decode_request(bytes::Bytes::from(wire.clone())).expect("decodes");
        assert_eq!(req.environ.to_vec(), environ);
        let empty = decode_request(bytes::Bytes::from(encode_request(&[], b"x"))).expect("decodes");
        assert!(empty.environ.to_vec().is_empty());
        assert_eq!(&empty.body[..], b"x");
        assert_eq!(&req.body[..], b"body!");
        assert!(decode_request(bytes::Bytes::from_static(&[0, 1, 0])).is_err());
        // Sealing a frame written in place gives the same bytes as writing it whole.
        let mut sealed = vec![0u8; HEADER_LEN];
        sealed.extend_from_slice(&wire);
        seal(&mut sealed, Kind::Request, 9);
        let mut whole = Vec::new();
        write_frame(&mut whole, Kind::Request, 9, &wire);
        assert_eq!(sealed, whole);
        let spooled = encode_request_spooled(&environ, std::path::Path::new("/tmp/body-1"));
        let req = decode_request(bytes::Bytes::from(spooled)).expect("decodes");
        assert_eq!(
            req.body_file.as_deref(),
            Some(std::path::Path::new("/tmp/body-1"))
        );
        assert!(req.body.is_empty());

        let start = encode_start(404, "Not Found", &[("X-A".into(), b"1".to_vec())]);
        let (status, headers) = decode_start(bytes::Bytes::from(start)).expect("decodes");
        assert_eq!(status, 404);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-a"], "1");
        let bad = encode_start(
            200,
            "OK",
            &[
                ("Bad Name".into(), b"1".to_vec()),
                ("X-B".into(), b"line\nbreak".to_vec()),
                ("X-C".into(), b"kept".to_vec()),
            ],
        );
        let (_, headers) = decode_start(bytes::Bytes::from(bad)).expect("decodes");
        assert_eq!(headers.len(), 1, "invalid names and values are dropped");
        assert_eq!(headers["x-c"], "kept");
    }
}
