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
    /// Front -> worker: a request; payload is [`encode_request`]'s.
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
            _ => return None,
        })
    }
}

/// Name/value pairs: environ entries or response headers (values are bytes).
pub type Pairs = Vec<(String, Vec<u8>)>;

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
    pub environ: Pairs,
    /// The whole request body.
    pub body: bytes::Bytes,
}

/// Encodes a request: the pairs ([`encode_pairs`]), then the body.
pub fn encode_request(environ: &[(String, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * environ.len() + body.len());
    encode_pairs(&mut out, environ);
    out.extend_from_slice(body);
    out
}

/// Appends `count: u16`, then per pair `klen: u16 | key | vlen: u32 | value`.
fn encode_pairs(out: &mut Vec<u8>, pairs: &[(String, Vec<u8>)]) {
    let pairs = &pairs[..pairs.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(pairs.len() as u16).to_be_bytes());
    for (k, v) in pairs {
        let k = &k.as_bytes()[..k.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(k.len() as u16).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(v);
    }
}

/// Decodes [`encode_request`]'s output.
pub fn decode_request(payload: bytes::Bytes) -> io::Result<WireRequest> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "truncated request frame");
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> io::Result<std::ops::Range<usize>> {
        let range = *at..at.checked_add(n).ok_or_else(bad)?;
        if range.end > payload.len() {
            return Err(bad());
        }
        *at = range.end;
        Ok(range)
    };
    let count = u16::from_be_bytes(
        payload
            .get(take(&mut at, 2)?)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let mut environ = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let r = take(&mut at, 2)?;
        let klen = u16::from_be_bytes([payload[r.start], payload[r.start + 1]]) as usize;
        let key = String::from_utf8(payload[take(&mut at, klen)?].to_vec()).map_err(|_| bad())?;
        let r = take(&mut at, 4)?;
        let vlen = u32::from_be_bytes(payload[r].try_into().map_err(|_| bad())?) as usize;
        let value = payload[take(&mut at, vlen)?].to_vec();
        environ.push((key, value));
    }
    Ok(WireRequest {
        environ,
        body: payload.slice(at..),
    })
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

/// Decodes [`encode_start`]'s output into status, reason and headers.
pub fn decode_start(payload: bytes::Bytes) -> io::Result<(u16, String, Pairs)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "truncated start frame");
    if payload.len() < 4 {
        return Err(bad());
    }
    let status = u16::from_be_bytes([payload[0], payload[1]]);
    let rlen = u16::from_be_bytes([payload[2], payload[3]]) as usize;
    let reason = payload.get(4..4 + rlen).ok_or_else(bad)?;
    let reason = String::from_utf8_lossy(reason).into_owned();
    let headers = decode_request(payload.slice(4 + rlen..))?.environ;
    Ok((status, reason, headers))
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
        let req = decode_request(bytes::Bytes::from(wire)).expect("decodes");
        assert_eq!(req.environ, environ);
        assert_eq!(&req.body[..], b"body!");
        assert!(decode_request(bytes::Bytes::from_static(&[0, 1, 0])).is_err());

        let start = encode_start(404, "Not Found", &[("X-A".into(), b"1".to_vec())]);
        let (status, reason, headers) = decode_start(bytes::Bytes::from(start)).expect("decodes");
        assert_eq!((status, reason.as_str()), (404, "Not Found"));
        assert_eq!(headers, vec![("X-A".to_string(), b"1".to_vec())]);
    }
}
