//! The log phase: one access-log line and the plugins' `on-log`, once the response body is done
//! (or the client went away).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{REFERER, USER_AGENT};
use http::{HeaderValue, Request, Response, Version};
use http_body::{Frame, SizeHint};

use super::Gateway;
use super::RequestGuard;
use super::session::Outcome;
use crate::access_log::{AccessLog, Entry};
use crate::body::Body;
use crate::plugin::{Exchange, LogEntry, Ran};

/// Wraps the outcome's response so that its end writes the logs.
pub(super) fn finish(
    gateway: Arc<Gateway>,
    outcome: Outcome,
    access: Option<Entry>,
    started: Instant,
    guard: RequestGuard,
) -> Response<LoggedBody> {
    let Outcome {
        response,
        exchange,
        ran,
        route,
    } = outcome;
    // Copied only for a log that will name it.
    let target_id = route.as_ref().map(|r| r.target);
    let target = target_id.map(|t| gateway.targets.name(t));
    let plugin_log = match exchange {
        Some(exchange) if gateway.plugins.wants_log(ran) => Some(Box::new(PluginLog {
            gateway: Arc::clone(&gateway),
            exchange,
            ran,
            target: target.map(str::to_string),
            started,
        })),
        _ => None,
    };
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    gateway.responses.count(
        target_id.map(crate::target::TargetId::index),
        status,
        started.elapsed(),
    );
    let log = access.map(|entry| {
        Box::new(PendingLog {
            entry,
            status,
            target: target.unwrap_or("-").to_string(),
            started,
            log: gateway.access_log.clone(),
        })
    });
    // A body with something to send waits on the connection from the start: HTTP/2 polls it
    // only once the client's window has room.
    let waiting = !http_body::Body::is_end_stream(&body);
    guard.activity().body_polled(false, waiting);
    Response::from_parts(
        parts,
        LoggedBody {
            inner: body,
            sent: 0,
            status,
            log,
            plugin_log,
            waiting,
            guard,
        },
    )
}

/// The access-log line's fields known from the request head.
pub(super) fn entry_for<B>(req: &Request<B>, client: Option<IpAddr>) -> Entry {
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
    exchange: Box<Exchange>,
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
    /// Whether the last poll handed data over (the next one waits on the client).
    waiting: bool,
    guard: RequestGuard,
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
        let mut gave_data = false;
        if let Poll::Ready(Some(Ok(frame))) = &poll {
            if let Some(data) = frame.data_ref() {
                this.sent += data.len() as u64;
                gave_data = !this.inner.is_end_stream();
            }
        }
        this.guard.activity().body_polled(this.waiting, gave_data);
        this.waiting = gave_data;
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
        self.guard.activity().body_dropped(self.waiting);
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
            super::off_loop::on_log(pending.gateway, pending.exchange, pending.ran, entry);
        }
    }
}
