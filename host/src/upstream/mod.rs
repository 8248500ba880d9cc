//! The `upstream` target: HTTP servers behind Gatehouse (nginx's `proxy_pass` to an `upstream`
//! block). A server is picked per request ([`balance`]), its connections pooled per event loop
//! (hyper-util's client over our [`connect`]or), its health watched ([`server`], [`health`]);
//! bodies stream both ways ([`body`]); hop-by-hop fields are removed and the client is named
//! ([`headers`]). A request that never reached a server is tried on another; one that may have
//! reached it is retried only if its method is idempotent, within a retry budget.

mod balance;
mod body;
mod connect;
mod headers;
mod health;
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::request::Parts;
use http::{Method, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use thread_local::ThreadLocal;
use tokio_util::sync::DropGuard;

use crate::body::{Body, FileChunks};
use crate::config::{Endpoint, Forwarding, UpstreamConfig};
use crate::error::HttpError;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::request_body::{BodyFault, RequestBody, ServeBody};
use balance::Balancer;
use body::{OutBody, OutKind, Streamed, Unsent};
use connect::{ConnectError, Connector};
use server::{InFlight, Server};

pub use connect::ConnectError as UpstreamError;

/// A switched-protocols answer from a server (a response extension): the server's side of the
/// tunnel, for the pipeline to join with the client's once the 101 is sent. Taken once.
#[derive(Clone)]
pub struct UpstreamUpgrade(Arc<std::sync::Mutex<Option<(hyper::upgrade::OnUpgrade, InFlight)>>>);

impl UpstreamUpgrade {
    /// The server's connection (once hyper hands it over) and its slot, held as long as the
    /// tunnel.
    pub fn take(&self) -> Option<(hyper::upgrade::OnUpgrade, impl Send + 'static + use<>)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// An upstream target.
pub struct UpstreamTarget {
    name: String,
    config: UpstreamConfig,
    servers: Vec<Arc<Server>>,
    balancer: Balancer,
    connectors: Vec<Connector>,
    /// Per event loop, one client (and so one connection pool) per server: a connection is
    /// driven by the loop that opened it, and used only by that loop's requests.
    clients: ThreadLocal<Vec<Client<Connector, OutBody>>>,
    /// With `http2`: per event loop, the connection to each server.
    h2: ThreadLocal<std::sync::Mutex<Vec<Option<H2Sender>>>>,
    forwarding: Forwarding,
    in_flight: AtomicUsize,
    retrying: AtomicUsize,
    retries: prometheus_client::metrics::counter::Counter,
    _health: Option<DropGuard>,
}

impl std::fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("name", &self.name)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// Why an attempt failed.
enum Failure {
    /// Nothing reached the server: it is safe to try another with any method.
    NotSent(String),
    /// The request may have reached it.
    Broken(String),
    /// No response head within `first_byte_timeout`.
    Timeout,
}

/// Where an attempt's body comes from.
enum Source {
    Empty,
    Memory(bytes::Bytes),
    File(std::path::PathBuf, u64),
    Stream(Unsent),
}

type H2Sender = hyper::client::conn::http2::SendRequest<OutBody>;

/// Counts one request (or retry) in flight until dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl UpstreamTarget {
    /// Sets up the servers, the connector and (if configured) the health checks.
    pub fn build(
        name: &str,
        config: &UpstreamConfig,
        forwarding: &Forwarding,
        metrics: &Metrics,
    ) -> Result<UpstreamTarget, ConnectError> {
        let servers: Vec<Arc<Server>> = config
            .servers
            .iter()
            .map(|s| {
                let counts = metrics.upstream_server(name, &s.label);
                Arc::new(Server::new(s, config.max_connections, counts))
            })
            .collect();
        let connectors = Connector::for_servers(config)?;
        let health = match &config.health_check {
            Some(check) => Some(
                health::start(name, &servers, &connectors, check, config.http2)
                    .map_err(ConnectError::Tls)?,
            ),
            None => None,
        };
        Ok(UpstreamTarget {
            name: name.to_string(),
            balancer: Balancer::new(&config.balance, &servers),
            config: config.clone(),
            servers,
            connectors,
            clients: ThreadLocal::new(),
            h2: ThreadLocal::new(),
            forwarding: forwarding.clone(),
            in_flight: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            retries: metrics.upstream_retries(name),
            _health: health,
        })
    }

    /// Whether the request body is read whole before a server is contacted.
    pub fn buffers_requests(&self) -> bool {
        self.config.request_buffering
    }

    /// Whether at least one server takes requests, and how many of how many do.
    pub fn readiness(&self) -> Result<String, String> {
        let up = self.servers.iter().filter(|s| s.available()).count();
        let text = format!("{up} of {} servers up", self.servers.len());
        if up > 0 { Ok(text) } else { Err(text) }
    }

    fn client(&self, server: usize) -> Option<&Client<Connector, OutBody>> {
        let clients = self.clients.get_or(|| {
            self.connectors
                .iter()
                .map(|connector| {
                    Client::builder(TokioExecutor::new())
                        .pool_timer(TokioTimer::new())
                        .pool_idle_timeout(self.config.keepalive_timeout)
                        .pool_max_idle_per_host(self.config.keepalive)
                        .set_host(false)
                        .build(connector.clone())
                })
                .collect()
        });
        clients.get(server)
    }

    /// A retry may start if retries in flight stay within the budget (and at least 3 may).
    fn may_retry(&self) -> Option<Counted<'_>> {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        let allowed = ((in_flight as f64) * self.config.retry_budget).max(3.0) as usize;
        let now = self.retrying.fetch_add(1, Ordering::AcqRel);
        let guard = Counted(&self.retrying);
        (now < allowed).then_some(guard)
    }

    /// Proxies one request.
    pub async fn serve(
        &self,
        req: &Parts,
        body: ServeBody<'_>,
        peer: &Peer,
        mount: Option<&str>,
    ) -> Result<Response<Body>, HttpError> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _counted = Counted(&self.in_flight);
        let path = match mount {
            Some(m) => crate::path::below_mount(req.uri.path(), m).ok_or(HttpError::NotFound)?,
            None => req.uri.path(),
        };
        let path = if path.is_empty() { "/" } else { path };
        let target = match req.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let idempotent = matches!(
            req.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let upgrade = headers::wants_upgrade(req);
        let (source, fault) = match body {
            ServeBody::Read(RequestBody::Memory(b)) if b.is_empty() => (Source::Empty, None),
            ServeBody::Read(RequestBody::Memory(b)) => (Source::Memory(b.clone()), None),
            ServeBody::Read(RequestBody::Spooled { file, len }) => {
                (Source::File(file.path().to_path_buf(), *len), None)
            }
            ServeBody::Unread(stream) => {
                let fault = stream.fault();
                (
                    Source::Stream(Arc::new(std::sync::Mutex::new(Some(stream)))),
                    Some(fault),
                )
            }
        };

        let mut tried: Vec<usize> = Vec::new();
        let mut last = HttpError::BadGateway;
        let mut retry_guard = None;
        for attempt in 0..=self.config.retries {
            if attempt > 0 {
                match self.may_retry() {
                    Some(guard) => {
                        self.retries.inc();
                        retry_guard = Some(guard);
                    }
                    None => {
                        tracing::warn!(target = %self.name, "retry budget spent: not retrying");
                        break;
                    }
                }
            }
            let Some(index) = self
                .balancer
                .pick(&self.servers, req, peer.remote.ip, &tried)
            else {
                break;
            };
            tried.push(index);
            let server = &self.servers[index];
            let Some(slot) = server.acquire(self.config.connect_timeout).await else {
                tracing::warn!(target = %self.name, server = %server.label, "upstream server at max_connections");
                last = HttpError::ServiceUnavailable;
                continue;
            };
            let Some(kind) = attempt_body(&source)? else {
                // The client's body went to the failed attempt: nothing left to send again.
                break;
            };
            let (out_body, sent) = OutBody::new(kind);
            let request = self.request(req, &target, server, peer, out_body)?;
            match self.send(index, request, sent).await {
                Ok(response) => {
                    server.succeeded();
                    drop(retry_guard);
                    return Ok(self.respond(response, slot, upgrade));
                }
                Err(failure) => {
                    if let Some(e) = fault.as_ref().and_then(take_fault) {
                        // The client's body broke a limit: that is the answer, not the server.
                        return Err(e);
                    }
                    server.failed(self.config.max_fails, self.config.fail_timeout);
                    let (why, retry) = match &failure {
                        Failure::NotSent(why) => (why.clone(), true),
                        Failure::Broken(why) => (why.clone(), idempotent),
                        Failure::Timeout => {
                            ("no response within first_byte_timeout".into(), idempotent)
                        }
                    };
                    last = match failure {
                        Failure::Timeout => HttpError::GatewayTimeout,
                        _ => HttpError::BadGateway,
                    };
                    tracing::warn!(target = %self.name, server = %server.label, error = %why, "upstream request failed");
                    if !retry {
                        break;
                    }
                }
            }
        }
        if tried.is_empty() {
            tracing::warn!(target = %self.name, "no upstream server available (all down or left out)");
        }
        Err(last)
    }

    fn request(
        &self,
        req: &Parts,
        target: &str,
        server: &Server,
        peer: &Peer,
        body: OutBody,
    ) -> Result<http::Request<OutBody>, HttpError> {
        let authority = &server.authority;
        let out = headers::Outgoing {
            forwarding: &self.forwarding,
            preserve_host: self.config.preserve_host,
            server_authority: Some(authority),
            via: self.config.via,
        };
        let mut headers = headers::request_headers(req, peer, &out);
        if !headers.contains_key(http::header::HOST) {
            if let Ok(v) = http::HeaderValue::from_str(authority) {
                headers.insert(http::header::HOST, v);
            }
        }
        // HTTP/1.1 sends the target in origin form and the Host field as given; HTTP/2 sends the
        // URI's authority as `:authority`, which must then be the Host the server is to see.
        let uri_authority = if self.config.http2 {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(authority)
                .to_string()
        } else {
            "upstream".to_string()
        };
        let uri: http::Uri = format!("http://{uri_authority}{target}")
            .parse()
            .map_err(|_| HttpError::BadRequest("a target that cannot be forwarded"))?;
        let mut request = http::Request::new(body);
        *request.method_mut() = req.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// Sends one attempt; the response head must come within `first_byte_timeout` of the last
    /// byte of the request body.
    async fn send(
        &self,
        server: usize,
        request: http::Request<OutBody>,
        sent: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<Response<hyper::body::Incoming>, Failure> {
        let first_byte = self.config.first_byte_timeout;
        let deadline = async move {
            if let Some(mut sent) = sent {
                while !*sent.borrow_and_update() {
                    if sent.changed().await.is_err() {
                        break;
                    }
                }
            }
            tokio::time::sleep(first_byte).await;
        };
        let exchange = async {
            if self.config.http2 {
                self.send_h2(server, request).await
            } else {
                let Some(client) = self.client(server) else {
                    return Err(Failure::NotSent(format!("no client for server #{server}")));
                };
                client.request(request).await.map_err(|e| {
                    let why = crate::error::with_causes(&e);
                    if e.is_connect() {
                        Failure::NotSent(why)
                    } else {
                        Failure::Broken(why)
                    }
                })
            }
        };
        tokio::select! {
            result = exchange => result,
            () = deadline => Err(Failure::Timeout),
        }
    }

    /// HTTP/2: one multiplexed connection per server and event loop, opened when first needed
    /// and again once it has closed. (hyper-util's pool keys connections by the request's
    /// authority, which HTTP/2 sends as `:authority`, so every Host a client sends would open
    /// another connection.)
    async fn send_h2(
        &self,
        server: usize,
        request: http::Request<OutBody>,
    ) -> Result<Response<hyper::body::Incoming>, Failure> {
        let slots = self
            .h2
            .get_or(|| std::sync::Mutex::new(vec![None; self.connectors.len()]));
        let cached = slots
            .lock()
            .ok()
            .and_then(|s| s.get(server).cloned().flatten())
            .filter(|sender: &H2Sender| !sender.is_closed());
        let mut sender = match cached {
            Some(sender) => sender,
            None => {
                let connector = self
                    .connectors
                    .get(server)
                    .cloned()
                    .ok_or_else(|| Failure::NotSent(format!("no server #{server}")))?;
                let conn =
                    tower_service::Service::call(&mut connector.clone(), http::Uri::default())
                        .await
                        .map_err(|e| Failure::NotSent(crate::error::with_causes(&e)))?;
                let (sender, connection) =
                    hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .handshake(conn)
                        .await
                        .map_err(|e| Failure::NotSent(crate::error::with_causes(&e)))?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "upstream HTTP/2 connection closed");
                    }
                });
                if let Ok(mut s) = slots.lock()
                    && let Some(slot) = s.get_mut(server)
                {
                    *slot = Some(sender.clone());
                }
                sender
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| Failure::NotSent(crate::error::with_causes(&e)))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Broken(crate::error::with_causes(&e)))
    }

    fn respond(
        &self,
        response: Response<hyper::body::Incoming>,
        slot: InFlight,
        upgrade: bool,
    ) -> Response<Body> {
        let mut response = response;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && upgrade {
            let on = hyper::upgrade::on(&mut response);
            let (mut parts, _) = response.into_parts();
            headers::response_headers(&mut parts.headers, true, self.config.via);
            parts.extensions = http::Extensions::new();
            parts
                .extensions
                .insert(UpstreamUpgrade(Arc::new(std::sync::Mutex::new(Some((
                    on, slot,
                ))))));
            return Response::from_parts(parts, Body::Empty);
        }
        let (mut parts, incoming) = response.into_parts();
        headers::response_headers(&mut parts.headers, false, self.config.via);
        parts.extensions = http::Extensions::new();
        let body = Streamed::new(incoming, self.config.read_timeout, slot);
        Response::from_parts(parts, Body::Stream(Box::new(body)))
    }
}

/// The body for one attempt; `None` if the client's body was already given to an earlier one.
fn attempt_body(source: &Source) -> Result<Option<OutKind>, HttpError> {
    Ok(Some(match source {
        Source::Empty => OutKind::Empty,
        Source::Memory(bytes) => OutKind::Full(Some(bytes.clone())),
        Source::File(path, len) => {
            let file = std::fs::File::open(path).map_err(|e| {
                tracing::error!(error = %e, "cannot reopen a spooled request body");
                HttpError::Internal
            })?;
            OutKind::File(FileChunks::new(file, *len))
        }
        Source::Stream(unsent) => {
            if unsent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_none()
            {
                return Ok(None);
            }
            OutKind::streamed(unsent)
        }
    }))
}

fn take_fault(fault: &BodyFault) -> Option<HttpError> {
    fault.lock().ok().and_then(|mut f| f.take())
}

/// The `Host` a server is asked for when the client's is not passed on.
pub(crate) fn host_of(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Http { host, port } | Endpoint::Https { host, port } => {
            let default = matches!(
                (endpoint, port),
                (Endpoint::Http { .. }, 80) | (Endpoint::Https { .. }, 443)
            );
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            if default {
                host
            } else {
                format!("{host}:{port}")
            }
        }
        Endpoint::Unix(_) => "localhost".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, UpstreamServer};
    use std::time::Duration;

    fn target(budget: f64) -> UpstreamTarget {
        let config = UpstreamConfig {
            servers: vec![UpstreamServer {
                endpoint: Endpoint::Http {
                    host: "127.0.0.1".into(),
                    port: 9,
                },
                weight: 1,
                label: "http://127.0.0.1:9".into(),
            }],
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            max_connections: 10,
            keepalive: 1,
            keepalive_timeout: Duration::from_secs(1),
            retries: 2,
            retry_budget: budget,
            max_fails: 1,
            fail_timeout: Duration::from_secs(1),
            health_check: None,
            request_buffering: false,
            preserve_host: true,
            via: false,
            http2: false,
            tls_ca: None,
            tls_verify: true,
        };
        UpstreamTarget::build("t", &config, &Forwarding::default(), &Metrics::new())
            .expect("target")
    }

    #[test]
    fn retries_in_flight_stay_within_the_budget() {
        let t = target(0.2);
        // Few requests: at least three retries may run at once.
        let held: Vec<_> = (0..3)
            .map(|_| t.may_retry().expect("within the floor"))
            .collect();
        assert!(t.may_retry().is_none(), "a fourth passes the floor");
        drop(held);
        // 100 requests in flight: 20% of them.
        t.in_flight.store(100, Ordering::Release);
        let held: Vec<_> = (0..20)
            .map(|_| t.may_retry().expect("within 20%"))
            .collect();
        assert!(t.may_retry().is_none());
        drop(held);
        assert_eq!(
            t.retrying.load(Ordering::Acquire),
            0,
            "refused attempts hold nothing"
        );
    }
}
