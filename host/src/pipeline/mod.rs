//! A request, phase by phase, on the head first:
//! admit -> plugins' on-request (the body read only before a plugin that declared it needs it) ->
//! route -> the target's body policy -> serve -> plugins' on-response -> log.
//!
//! One [`Session`](session::Session) owns a request's state from admission to the response; each
//! phase is a small function with typed input and output. Errors from any phase become a status in
//! exactly one place ([`error_response`]).

mod activity;
mod admit;
mod log;
mod normalise;
mod off_loop;
mod plain;
mod respond;
mod session;
mod tunnel;
pub mod verdicts;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, Version};

use crate::access_log::AccessLog;
use crate::body::Body;
use crate::config::{Forwarding, Limits};
use crate::error::HttpError;
use crate::forwarded;
use crate::metrics::{Metrics, ResponseCounters};
use crate::peer::Peer;
use crate::plugin::Chain;
use crate::request_body::BodyBudget;
use crate::target::Targets;
use verdicts::Verdicts;

pub use activity::{Activity, RequestGuard};
pub use admit::admit;
pub use log::LoggedBody;
pub use plain::PlainListener;
pub use tunnel::Tunnel;

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
    /// The process's metrics (kept across reloads).
    pub metrics: Arc<Metrics>,
    /// Response counters for these targets.
    pub responses: ResponseCounters,
    /// Whose proxy headers name the client.
    pub forwarding: Forwarding,
    /// Request bodies buffered at once, in memory and on disk.
    pub body_budget: Arc<BodyBudget>,
}

/// What the pipeline knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnCtx {
    /// Who is on the other end, as targets see it.
    pub peer: Peer,
    /// Byte-level verdicts for HTTP/1 heads, in request order.
    pub verdicts: Verdicts,
    /// In-flight requests and idle time, for the keep-alive timeout.
    pub activity: Arc<Activity>,
    /// What a plain listener answers itself (HTTPS redirects, ACME validations).
    pub plain: Option<Arc<PlainListener>>,
    /// The tunnel this connection turns into after a 101 (a WebSocket), for it to run.
    pub tunnel: std::sync::Mutex<Option<Tunnel>>,
    /// Files the connection sends with `sendfile` (plain HTTP/1 over TCP).
    pub file_sends: Option<Arc<crate::sendfile::FileSends>>,
}

impl ConnCtx {
    fn set_tunnel(&self, tunnel: Tunnel) {
        if let Ok(mut slot) = self.tunnel.lock() {
            *slot = Some(tunnel);
        }
    }

    /// The tunnel this connection became, if it did.
    pub fn take_tunnel(&self) -> Option<Tunnel> {
        self.tunnel.lock().ok().and_then(|mut t| t.take())
    }
}

/// Serves one request through all phases. Never fails: every error is a response.
pub async fn handle<B>(
    gateway: Arc<Gateway>,
    conn: Arc<ConnCtx>,
    req: Request<B>,
) -> Result<Response<LoggedBody>, Infallible>
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let guard = conn.activity.begin();
    let started = Instant::now();
    // Who the client is, once: plugins, the access log and the target all read this.
    let mut peer = conn.peer.clone();
    peer.remote = forwarded::resolve(peer.client, peer.tls, req.headers(), &gateway.forwarding);
    let access = gateway
        .access_log
        .enabled()
        .then(|| log::entry_for(&req, peer.remote.ip));
    let version = req.version();
    let verdict = if version < Version::HTTP_2 {
        conn.verdicts.next()
    } else {
        None
    };
    let mut req = req;
    let admitted =
        admit(&req, verdict, &gateway.limits).and_then(|()| normalise::normalise(&mut req));
    let own = match (&admitted, &conn.plain) {
        (Ok(()), Some(plain)) => plain::answer(plain, &req),
        _ => None,
    };
    let mut outcome = match (admitted, own) {
        (Err(e), _) | (Ok(()), Some(Err(e))) => {
            session::Outcome::answered_early(error_response(&e, version))
        }
        (Ok(()), Some(Ok(response))) => session::Outcome::answered_early(response),
        (Ok(()), None) => {
            session::Session::new(Arc::clone(&gateway), peer, req)
                .run()
                .await
        }
    };
    if tunnel::is_switch(&outcome.response) {
        tunnel::join(&mut outcome, &conn);
    }
    // The last step before hyper: nothing reads the body's bytes after this.
    if let Some(sends) = &conn.file_sends {
        outcome.response = outcome.response.map(|body| body.sent_through(sends));
    }
    Ok(log::finish(gateway, outcome, access, started, guard))
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
