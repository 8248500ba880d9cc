//! One request's state from admission to its response, and the phases that move it along.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Version};

use super::{Gateway, error_response, off_loop, respond};
use crate::body::Body;
use crate::error::HttpError;
use crate::peer::Peer;
use crate::plugin::{Decision, Exchange, Progress, Ran};
use crate::request_body::{self, RequestBody, ServeBody};
use crate::target::{BodyPolicy, Route, Targets};

/// A request on its way through the phases: the exchange the plugins and the target work on,
/// the body while nobody has needed it, which plugins ran and where the request went.
pub(super) struct Session<B> {
    gateway: Arc<Gateway>,
    peer: Peer,
    version: Version,
    exchange: Box<Exchange>,
    /// The request body, until a plugin or the target needs it read.
    unread: Option<B>,
    progress: Progress,
    route: Option<Route>,
}

/// What a session leaves for the log phase.
pub(super) struct Outcome {
    /// The response to send.
    pub response: Response<Body>,
    /// The exchange, for the plugins' log phase (`None`: the request was refused at admission).
    pub exchange: Option<Box<Exchange>>,
    /// The plugins whose `on-request` ran.
    pub ran: Ran,
    /// The route taken, if the request reached the route phase.
    pub route: Option<Route>,
}

impl Outcome {
    /// A request answered before any plugin saw it: refused at admission, or answered by a plain
    /// listener itself (a redirect to HTTPS, an ACME validation).
    pub fn answered_early(response: Response<Body>) -> Outcome {
        Outcome {
            response,
            exchange: None,
            ran: Ran::default(),
            route: None,
        }
    }
}

impl<B> Session<B>
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A session for an admitted request; nothing of its body has been read.
    pub fn new(gateway: Arc<Gateway>, peer: Peer, req: Request<B>) -> Session<B> {
        let version = req.version();
        let (parts, body) = req.into_parts();
        // A request with no body has nothing to read: plugins that ask for it get it empty.
        let (known, unread) = if body.is_end_stream() {
            (Some(RequestBody::EMPTY), None)
        } else {
            (None, Some(body))
        };
        let mut exchange = Box::new(Exchange::new(
            parts,
            known,
            peer.remote.ip,
            peer.remote.https,
        ));
        exchange.client_subject.clone_from(&peer.client_subject);
        Session {
            gateway,
            peer,
            version,
            exchange,
            unread,
            progress: Progress::default(),
            route: None,
        }
    }

    /// Runs the phases from the plugins' on-request to their on-response.
    pub async fn run(mut self) -> Outcome {
        let response = match self.answer().await {
            Ok(response) => response,
            Err(e) => error_response(&e, self.version),
        };
        // Without plugins there is no on-response to run (and no future to move the response into).
        let response = if self.progress.ran == Ran::default() {
            response
        } else {
            respond::on_response(
                &self.gateway,
                &mut self.exchange,
                self.progress.ran,
                response,
                self.version,
            )
            .await
        };
        // An unread body is dropped here: hyper drains what has already arrived, or closes the
        // connection after the response instead of reading the rest.
        drop(self.unread.take());
        Outcome {
            response,
            exchange: Some(self.exchange),
            ran: self.progress.ran,
            route: self.route,
        }
    }

    /// Plugins' on-request, route, the target's body policy, serve: the response before
    /// on-response runs.
    async fn answer(&mut self) -> Result<Response<Body>, HttpError> {
        // A handle of its own: the phases below change the session while they read the gateway.
        let gateway = Arc::clone(&self.gateway);
        let chosen = loop {
            match off_loop::on_request(&gateway, &mut self.exchange, &mut self.progress).await? {
                Decision::Respond(response) => return Ok(response),
                Decision::Serve(route) => break route,
                // A plugin sees the body only in memory: it is kept there up to what a plugin
                // may read.
                Decision::Wait(waiter) => waiter.wait().await,
                Decision::ReadBody => {
                    let limits = &gateway.limits;
                    self.read_body(limits.body_buffer_size.max(limits.plugin_body_size))
                        .await?;
                }
            }
        };
        let route = route(&gateway.targets, chosen)?;
        let target = gateway.targets.get(route.target).ok_or_else(|| {
            tracing::error!(target = ?route.target, "route to a target of another configuration");
            HttpError::Internal
        })?;
        // Recorded before the body is read, so a 413 or 408 is logged with the target it was for.
        self.route = Some(route);
        match target.body_policy() {
            BodyPolicy::Whole => self.read_body(gateway.limits.body_buffer_size).await?,
            BodyPolicy::Discard => {
                if let Some(unread) = self.unread.take() {
                    request_body::discard(unread, &gateway.limits).await?;
                }
            }
            BodyPolicy::Stream => {}
        }
        let empty = RequestBody::EMPTY;
        let body = match (&self.exchange.body, self.unread.take()) {
            (Some(read), _) => ServeBody::Read(read),
            (None, Some(unread)) => {
                ServeBody::Unread(request_body::BodyStream::new(unread, &gateway.limits))
            }
            (None, None) => ServeBody::Read(&empty),
        };
        let mount = self.route.as_ref().and_then(|r| r.mount.as_deref());
        target
            .serve(&self.exchange.request, body, &self.peer, mount)
            .await
    }

    /// Reads the body into the exchange, unless it is there already (read, or set by a plugin),
    /// in memory up to `in_memory` bytes.
    async fn read_body(&mut self, in_memory: u64) -> Result<(), HttpError> {
        if self.exchange.body.is_some() {
            return Ok(());
        }
        let body = match self.unread.take() {
            Some(unread) => {
                let (body, reserved) = request_body::read(
                    unread,
                    in_memory,
                    &self.gateway.limits,
                    &self.gateway.body_budget,
                )
                .await?;
                self.exchange.body_reserved = reserved;
                body
            }
            None => RequestBody::EMPTY,
        };
        self.exchange.body = Some(body);
        Ok(())
    }
}

/// Route phase: the target a plugin chose, else the default target, else 404.
fn route(targets: &Targets, chosen: Option<Route>) -> Result<Route, HttpError> {
    match chosen {
        Some(route) => Ok(route),
        None => targets.default_route().ok_or(HttpError::NoRoute),
    }
}
