//! Request bodies: read only when their consumer needs them (a WSGI app, a plugin that declared it),
//! whole, within the size and time limits, in memory or spooled to a temporary file.

use std::io::Write as _;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;

use crate::config::Limits;
use crate::error::HttpError;

/// A request body, read whole.
#[derive(Debug)]
pub enum RequestBody {
    /// Small bodies stay in memory.
    Memory(Bytes),
    /// Bodies past `body_buffer_size` are written to a temporary file (removed when dropped).
    Spooled {
        /// The file, positioned anywhere; readers open it by path.
        file: tempfile::NamedTempFile,
        /// Its length in bytes.
        len: u64,
    },
}

impl RequestBody {
    /// No body.
    pub const EMPTY: RequestBody = RequestBody::Memory(Bytes::new());

    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            RequestBody::Memory(b) => b.len() as u64,
            RequestBody::Spooled { len, .. } => *len,
        }
    }
}

/// The whole body, within the size and time limits, in memory or (past `body_buffer_size`) in a
/// temporary file, as nginx buffers client bodies. Bad chunking or forbidden trailers are a 400.
///
/// Polling the body is what makes hyper answer `Expect: 100-continue`: a request refused before
/// this runs never gets a `100 Continue`, and hyper closes the connection rather than read the
/// refused body (it drains only what has already arrived).
pub async fn read<B>(body: B, limits: &Limits) -> Result<RequestBody, HttpError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    if body.is_end_stream() {
        return Ok(RequestBody::EMPTY);
    }
    let in_memory = limits.body_buffer_size;
    let mut buf = BytesMut::new();
    let mut spool: Option<tempfile::NamedTempFile> = None;
    let len = consume(body, limits, |data, total| {
        match &mut spool {
            Some(file) => file.write_all(&data).map_err(spool_error)?,
            None if total > in_memory => {
                let mut file = tempfile::Builder::new()
                    .prefix("gatehouse-body-")
                    .tempfile()
                    .map_err(spool_error)?;
                file.write_all(&buf)
                    .and_then(|()| file.write_all(&data))
                    .map_err(spool_error)?;
                buf = BytesMut::new();
                spool = Some(file);
            }
            None => buf.extend_from_slice(&data),
        }
        Ok(())
    })
    .await?;
    Ok(match spool {
        Some(file) => RequestBody::Spooled { file, len },
        None => RequestBody::Memory(buf.freeze()),
    })
}

/// Reads the body and throws it away, within the same limits, as nginx discards the body of a
/// request for a static file: the connection stays usable for the next request, and a body that
/// is malformed is still a 400.
pub async fn discard<B>(body: B, limits: &Limits) -> Result<(), HttpError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    if body.is_end_stream() {
        return Ok(());
    }
    consume(body, limits, |_, _| Ok(())).await.map(|_| ())
}

/// Feeds every data frame to `sink` with the running total, within `max_body_size` and
/// `body_read_timeout`, checking the trailers; returns the body's length.
async fn consume<B>(
    mut body: B,
    limits: &Limits,
    mut sink: impl FnMut(Bytes, u64) -> Result<(), HttpError>,
) -> Result<u64, HttpError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let max = limits.max_body_size;
    let collect = async move {
        let mut total: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|_| HttpError::BadRequest("malformed or incomplete request body"))?;
            match frame.into_data() {
                Ok(data) => {
                    total += data.len() as u64;
                    if total > max {
                        return Err(HttpError::PayloadTooLarge);
                    }
                    sink(data, total)?;
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        check_trailers(&trailers)?;
                    }
                }
            }
        }
        Ok(total)
    };
    tokio::time::timeout(limits.body_read_timeout, collect)
        .await
        .map_err(|_| HttpError::RequestTimeout)?
}

fn spool_error(e: std::io::Error) -> HttpError {
    tracing::error!(error = %e, "cannot write a request body to a temporary file");
    HttpError::Internal
}

/// Fields that frame, route or authenticate a message may not arrive late in trailers (RFC 9110 6.5.1).
fn check_trailers(trailers: &HeaderMap) -> Result<(), HttpError> {
    const FORBIDDEN: [&str; 9] = [
        "content-length",
        "transfer-encoding",
        "host",
        "content-encoding",
        "content-range",
        "trailer",
        "te",
        "authorization",
        "cookie",
    ];
    if trailers.keys().any(|k| FORBIDDEN.contains(&k.as_str())) {
        return Err(HttpError::BadRequest("forbidden field in trailers"));
    }
    Ok(())
}
