//! A request, phase by phase: admit -> read body -> plugins' on-request -> route -> serve ->
//! plugins' on-response -> log (access log, plugins' on-log).
//!
//! Each phase is a small function with typed input and output. Errors from any phase become a status
//! in exactly one place ([`error_response`]).

mod admit;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use std::io::Write as _;

use bytes::{Bytes, BytesMut};
use http::header::{
    ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, REFERER, USER_AGENT,
};
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use crate::access_log::{AccessLog, Entry};
use crate::body::Body;
use crate::config::Limits;
use crate::error::HttpError;
use crate::plugin::{Chain, Choice, Decision, Exchange, LogEntry, Ran};
use crate::server::conn::{Activity, RequestGuard};
use crate::server::wire::Verdicts;
use crate::target::{Route, Targets};

pub use admit::admit;

/// Everything a request needs that outlives it: targets, plugins, limits, the access log.
#[derive(Debug)]
pub struct Gateway {
    /// The configured targets.
    pub targets: Targets,
    /// The plugin chain.
    pub plugins: Chain,
    /// Request limits.
    pub limits: Limits,
    /// The access log.
    pub access_log: AccessLog,
}

/// What the pipeline knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnCtx {
    /// The client's address; `None` on a Unix socket.
    pub client: Option<SocketAddr>,
    /// The local address the connection came in on; `None` on a Unix socket.
    pub local: Option<SocketAddr>,
    /// Byte-level verdicts for HTTP/1 heads, in request order.
    pub verdicts: Verdicts,
    /// In-flight requests and idle time, for the keep-alive timeout.
    pub activity: Arc<Activity>,
}

/// Serves one request through all phases. Never fails: every error is a response.
pub async fn handle<B>(
    gateway: Arc<Gateway>,
    conn: Arc<ConnCtx>,
    req: Request<B>,
) -> Result<Response<LoggedBody>, Infallible>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let guard = conn.activity.begin();
    let started = Instant::now();
    let entry = gateway
        .access_log
        .enabled()
        .then(|| entry_for(&req, conn.client));
    let version = req.version();
    let verdict = if version < Version::HTTP_2 {
        conn.verdicts.next()
    } else {
        None
    };

    let mut route: Option<Route> = None;
    let mut ran = Ran::default();
    let mut slot: Option<Box<Exchange>> = None;
    let received = async {
        admit(&req, verdict, &gateway.limits)?;
        let (parts, body) = req.into_parts();
        let body = read_body(body, &gateway.limits).await?;
        Ok::<_, HttpError>(Box::new(Exchange::new(parts, body, conn.client)))
    }
    .await;
    let response = match received {
        Err(e) => error_response(&e, version),
        Ok(ex) => {
            slot = Some(ex);
            let response = answer(&gateway, &mut slot, &mut ran, &mut route, &conn)
                .await
                .unwrap_or_else(|e| error_response(&e, version));
            respond(&gateway, &mut slot, ran, response, version).await
        }
    };

    // Copied only for a log that will name it.
    let target = route.map(|r| gateway.targets.name(r.target));
    let plugin_log = if gateway.plugins.wants_log(ran) {
        slot.take().map(|ex| {
            Box::new(PluginLog {
                gateway: Arc::clone(&gateway),
                exchange: Some(ex),
                ran,
                target: target.map(str::to_string),
                started,
            })
        })
    } else {
        None
    };
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    gateway.plugins.services().count_response(status);
    let log = entry.map(|entry| {
        Box::new(PendingLog {
            entry,
            status,
            target: target.unwrap_or("-").to_string(),
            started,
            log: gateway.access_log.clone(),
        })
    });
    Ok(Response::from_parts(
        parts,
        LoggedBody {
            inner: body,
            sent: 0,
            status,
            log,
            plugin_log,
            _guard: guard,
        },
    ))
}

/// A request body, read whole before the request is routed.
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
    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            RequestBody::Memory(b) => b.len() as u64,
            RequestBody::Spooled { len, .. } => *len,
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Read-body phase: the whole body, within the size and time limits, in memory or (past
/// `body_buffer_size`) in a temporary file, as nginx buffers client bodies. Bad chunking or forbidden
/// trailers are a 400.
async fn read_body<B>(body: B, limits: &Limits) -> Result<RequestBody, HttpError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    if body.is_end_stream() {
        return Ok(RequestBody::Memory(Bytes::new()));
    }
    let (max, in_memory) = (limits.max_body_size, limits.body_buffer_size);
    let collect = async move {
        let mut body = body;
        let mut buf = BytesMut::new();
        let mut spool: Option<(tempfile::NamedTempFile, u64)> = None;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|_| HttpError::BadRequest("malformed or incomplete request body"))?;
            match frame.into_data() {
                Ok(data) => {
                    let total =
                        spool.as_ref().map_or(buf.len() as u64, |(_, n)| *n) + data.len() as u64;
                    if total > max {
                        return Err(HttpError::PayloadTooLarge);
                    }
                    match &mut spool {
                        Some((file, len)) => {
                            file.write_all(&data).map_err(spool_error)?;
                            *len = total;
                        }
                        None if total > in_memory => {
                            let mut file = tempfile::Builder::new()
                                .prefix("gatehouse-body-")
                                .tempfile()
                                .map_err(spool_error)?;
                            file.write_all(&buf)
                                .and_then(|()| file.write_all(&data))
                                .map_err(spool_error)?;
                            buf.clear();
                            spool = Some((file, total));
                        }
                        None => buf.extend_from_slice(&data),
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        check_trailers(&trailers)?;
                    }
                }
            }
        }
        Ok(match spool {
            Some((file, len)) => RequestBody::Spooled { file, len },
            None => RequestBody::Memory(buf.freeze()),
        })
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

/// Plugins' on-request, then route and serve: the response before on-response runs. The chosen
/// route is recorded for the access log.
async fn answer(
    gateway: &Gateway,
    slot: &mut Option<Box<Exchange>>,
    ran: &mut Ran,
    route: &mut Option<Route>,
    conn: &ConnCtx,
) -> Result<Response<Body>, HttpError> {
    let choice = match gateway.plugins.on_request(slot, ran)? {
        Decision::Respond(response) => return Ok(response),
        Decision::Serve(choice) => choice,
    };
    let chosen = route_request(&gateway.targets, choice.as_ref())?;
    let ex = slot.as_deref().ok_or(HttpError::Internal)?;
    let served = serve(gateway, &chosen, ex, conn).await;
    *route = Some(chosen);
    served
}

/// Route phase: the target a plugin chose, else the default target, else 404.
fn route_request(targets: &Targets, choice: Option<&Choice>) -> Result<Route, HttpError> {
    match choice {
        Some(choice) => {
            let Some(target) = targets.nth(choice.target) else {
                tracing::error!(
                    target = choice.target,
                    "plugin routed to a target that is not configured"
                );
                return Err(HttpError::Internal);
            };
            Ok(Route {
                target,
                mount: choice.strip_prefix.clone(),
            })
        }
        None => targets.default_route().ok_or(HttpError::NoRoute),
    }
}

/// Serve phase: hand the request to its target.
async fn serve(
    gateway: &Gateway,
    route: &Route,
    ex: &Exchange,
    conn: &ConnCtx,
) -> Result<Response<Body>, HttpError> {
    gateway
        .targets
        .get(route.target)
        .serve(
            &ex.request,
            &ex.body,
            conn,
            route.mount.as_deref(),
            gateway.plugins.services(),
        )
        .await
}

/// Response phase: `on-response` of every plugin whose `on-request` ran, in reverse order, with the
/// body buffered first if one of them asked for it.
async fn respond(
    gateway: &Gateway,
    slot: &mut Option<Box<Exchange>>,
    ran: Ran,
    response: Response<Body>,
    version: Version,
) -> Response<Body> {
    if ran == Ran::default() {
        return response;
    }
    let response = if gateway.plugins.wants_response_body(ran) {
        match buffer_response(response, gateway.limits.body_buffer_size).await {
            Ok(r) => r,
            Err(e) => return error_response(&e, version),
        }
    } else {
        response
    };
    let Some(ex) = slot.as_deref_mut() else {
        return response;
    };
    ex.response = Some(response);
    let outcome = gateway.plugins.on_response(slot, ran);
    let response = slot.as_deref_mut().and_then(|ex| ex.response.take());
    match (outcome, response) {
        (Ok(()), Some(response)) => response,
        (Err(e), _) => error_response(&e, version),
        (Ok(()), None) => error_response(&HttpError::Internal, version),
    }
}

/// Reads a streamed response body into memory for plugins that change bodies.
async fn buffer_response(
    response: Response<Body>,
    limit: u64,
) -> Result<Response<Body>, HttpError> {
    let (mut parts, body) = response.into_parts();
    if matches!(body, Body::Empty | Body::Full(_)) {
        return Ok(Response::from_parts(parts, body));
    }
    let mut body = body;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            tracing::warn!(error = %e, "response body failed while buffering it for plugins");
            HttpError::BadGateway
        })?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                tracing::error!(
                    limit,
                    "response body larger than body_buffer_size, which plugins with RESPONSE_BODY may buffer"
                );
                return Err(HttpError::Internal);
            }
            buf.extend_from_slice(&data);
        }
    }
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(buf.len()));
    Ok(Response::from_parts(parts, Body::full(buf.freeze())))
}

/// The one place an [`HttpError`] becomes a response.
pub fn error_response(error: &HttpError, version: Version) -> Response<Body> {
    let status = error.status();
    if status.is_server_error() {
        tracing::warn!(%error, "request failed");
    } else {
        tracing::debug!(%error, "request refused");
    }
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(Body::full(text.clone()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
    match error {
        HttpError::MethodNotAllowed(allow) => {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        HttpError::RangeNotSatisfiable(len) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                headers.insert(CONTENT_RANGE, v);
            }
        }
        _ => {}
    }
    if error.closes_connection() && version < Version::HTTP_2 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn entry_for<B>(req: &Request<B>, client: Option<SocketAddr>) -> Entry {
    let header = |name| {
        req.headers()
            .get(name)
            .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    Entry {
        client,
        started: SystemTime::now(),
        method: req.method().as_str().to_string(),
        // HTTP/2 carries scheme and authority as pseudo-headers; log what an HTTP/1 request line would say.
        uri: match (req.version(), req.uri().path_and_query()) {
            (Version::HTTP_2, Some(pq)) => pq.as_str().to_string(),
            _ => req.uri().to_string(),
        },
        version: match req.version() {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        },
        referer: header(REFERER),
        user_agent: header(USER_AGENT),
        status: 0,
        bytes: 0,
        duration: std::time::Duration::ZERO,
        target: String::new(),
    }
}

/// An access-log line waiting for the body to finish.
#[derive(Debug)]
struct PendingLog {
    entry: Entry,
    status: u16,
    target: String,
    started: Instant,
    log: AccessLog,
}

/// The plugins' log phase, waiting for the body to finish.
#[derive(Debug)]
struct PluginLog {
    gateway: Arc<Gateway>,
    exchange: Option<Box<Exchange>>,
    ran: Ran,
    target: Option<String>,
    started: Instant,
}

/// A response body that counts what it sends, writes the access-log line and runs the plugins'
/// log phase when it is done (or the client goes away), and marks the request finished for the
/// keep-alive timer.
#[derive(Debug)]
pub struct LoggedBody {
    inner: Body,
    sent: u64,
    status: u16,
    // Boxed: hyper moves the response (and so this body) several times per request, and a
    // 416-byte body (528 with the response head) made those moves a visible share of a small
    // request's cost.
    log: Option<Box<PendingLog>>,
    plugin_log: Option<Box<PluginLog>>,
    _guard: RequestGuard,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll {
            if let Some(data) = frame.data_ref() {
                this.sent += data.len() as u64;
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(mut pending) = self.log.take() {
            pending.entry.status = pending.status;
            pending.entry.bytes = self.sent;
            pending.entry.duration = pending.started.elapsed();
            pending.entry.target = std::mem::take(&mut pending.target);
            pending.log.record(&pending.entry);
        }
        if let Some(mut pending) = self.plugin_log.take() {
            let entry = LogEntry {
                status: self.status,
                bytes_sent: self.sent,
                duration: pending.started.elapsed(),
                target: pending.target.take(),
            };
            pending
                .gateway
                .plugins
                .on_log(&mut pending.exchange, pending.ran, &entry);
        }
    }
}
