//! Named targets, and the routing decision that picks one.
//!
//! The decision is a value ([`Route`]) produced by the routing phase, not a lookup hard-wired into the
//! server: a plugin (usually `router`) names the target, else `server.default_target` answers.

use http::Response;
use http::request::Parts;

use crate::body::Body;
use crate::config::{Config, TargetConfig};
use crate::error::HttpError;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::request_body::ServeBody;
use crate::static_files::StaticFiles;
use crate::upstream::{UpstreamError, UpstreamTarget};
use crate::wsgi::{WsgiError, WsgiTarget};

/// Index of a target in [`Targets`]: its position in the config's `[targets]`, the order plugins
/// are given the target names in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetId(usize);

impl TargetId {
    /// The position in the config's `[targets]`.
    pub fn index(self) -> usize {
        self.0
    }

    /// The target at `position` of the config's `[targets]`, if there are more than `position`.
    pub fn at(position: usize, count: usize) -> Option<TargetId> {
        (position < count).then_some(TargetId(position))
    }
}

/// Where a request goes: chosen by a plugin (usually `router`), else the default target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The chosen target.
    pub target: TargetId,
    /// A mount prefix chosen with it (a router's `strip_prefix`), replacing the target's `mount`.
    pub mount: Option<String>,
}

/// What a target needs of the request body before it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPolicy {
    /// The whole body, read before serving (in memory or spooled): a WSGI app sees a complete
    /// `wsgi.input`, so a slow upload never holds a Python thread.
    Whole,
    /// No body: it is read and thrown away before serving, within the same limits (nginx
    /// discards the body of a request for a static file), so the connection stays usable.
    Discard,
    /// The body as it arrives, passed on by the target (an upstream) within the limits.
    Stream,
}

/// A built target, ready to answer requests.
#[derive(Debug)]
pub enum Target {
    /// Files under a directory.
    Static(StaticFiles),
    /// A WSGI application in worker processes.
    Wsgi(WsgiTarget),
    /// The process's metrics in the OpenMetrics text format.
    Metrics(std::sync::Arc<Metrics>),
    /// HTTP servers behind us.
    Upstream(Box<UpstreamTarget>),
}

impl Target {
    /// Whether the body is read before [`Target::serve`].
    pub fn body_policy(&self) -> BodyPolicy {
        match self {
            Target::Wsgi(_) => BodyPolicy::Whole,
            Target::Static(_) | Target::Metrics(_) => BodyPolicy::Discard,
            Target::Upstream(u) if u.buffers_requests() => BodyPolicy::Whole,
            Target::Upstream(_) => BodyPolicy::Stream,
        }
    }

    /// Whether it can serve: workers up, a server up; `Ok` and `Err` both say what was found.
    pub fn readiness(&self) -> Result<String, String> {
        match self {
            Target::Static(files) => files.readiness(),
            Target::Wsgi(app) => app.readiness(),
            Target::Metrics(_) => Ok("ok".into()),
            Target::Upstream(upstream) => upstream.readiness(),
        }
    }

    /// Answers a request whose head is `req`; `body` is the whole body under
    /// [`BodyPolicy::Whole`], the unread body under [`BodyPolicy::Stream`] (unless a plugin read
    /// or set it), else whatever a plugin read or set (empty if none did).
    pub async fn serve(
        &self,
        req: &Parts,
        body: ServeBody<'_>,
        peer: &Peer,
        mount: Option<&str>,
    ) -> Result<Response<Body>, HttpError> {
        match self {
            Target::Static(files) => files.serve(req, mount, crate::sendfile::Delivery::of(peer)),
            Target::Wsgi(app) => match body {
                ServeBody::Read(body) => app.serve(req, body, peer, mount).await,
                ServeBody::Unread(_) => {
                    tracing::error!("a WSGI target was given an unread body");
                    Err(HttpError::Internal)
                }
            },
            Target::Metrics(metrics) => Ok(metrics_response(metrics)),
            Target::Upstream(upstream) => upstream.serve(req, body, peer, mount).await,
        }
    }
}

fn metrics_response(metrics: &Metrics) -> Response<Body> {
    let mut response = Response::new(Body::full(metrics.render()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

/// All targets of a configuration, by id and name.
#[derive(Debug)]
pub struct Targets {
    names: Vec<String>,
    targets: Vec<Target>,
    default: Option<TargetId>,
}

/// A target that could not be built from its (already validated) configuration.
#[derive(Debug, thiserror::Error)]
#[error("target `{name}`: {source}")]
pub struct BuildError {
    name: String,
    source: BuildCause,
}

/// What went wrong building a target.
#[derive(Debug, thiserror::Error)]
pub enum BuildCause {
    /// Opening a directory or socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The WSGI app or its workers did not start.
    #[error(transparent)]
    Wsgi(#[from] WsgiError),
    /// An upstream's TLS client or health checks could not be set up.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl Targets {
    /// Builds every target of a validated config.
    pub fn build(
        config: &Config,
        metrics: &std::sync::Arc<Metrics>,
        budget: &std::sync::Arc<crate::request_body::BodyBudget>,
    ) -> Result<Targets, BuildError> {
        let mut names = Vec::new();
        let mut targets = Vec::new();
        for (name, target) in &config.targets {
            let wrap = |source: BuildCause| BuildError {
                name: name.clone(),
                source,
            };
            let built = match target {
                TargetConfig::Static(s) => {
                    Target::Static(StaticFiles::open(s).map_err(|e| wrap(e.into()))?)
                }
                TargetConfig::Wsgi(w) => Target::Wsgi(
                    WsgiTarget::start(
                        name,
                        w,
                        config.server.threads,
                        metrics.wsgi(name),
                        std::sync::Arc::clone(budget),
                    )
                    .map_err(|e| wrap(e.into()))?,
                ),
                TargetConfig::Metrics => Target::Metrics(std::sync::Arc::clone(metrics)),
                TargetConfig::Upstream(u) => Target::Upstream(Box::new(
                    UpstreamTarget::build(name, u, &config.server.forwarding, metrics)
                        .map_err(|e| wrap(e.into()))?,
                )),
            };
            names.push(name.clone());
            targets.push(built);
        }
        let default = match &config.server.default_target {
            Some(name) => Some(
                names
                    .iter()
                    .position(|n| n == name)
                    .map(TargetId)
                    .ok_or_else(|| BuildError {
                        name: name.clone(),
                        source: std::io::Error::other("default target is not defined").into(),
                    })?,
            ),
            None => None,
        };
        Ok(Targets {
            names,
            targets,
            default,
        })
    }

    /// The route a request takes when no plugin chose one (`None`: no default target).
    pub fn default_route(&self) -> Option<Route> {
        self.default.map(|target| Route {
            target,
            mount: None,
        })
    }

    /// The target behind an id, if it is one of these targets (the chain and the targets of a
    /// gateway come from the same config, so it always is).
    pub fn get(&self, id: TargetId) -> Option<&Target> {
        self.targets.get(id.0)
    }

    /// The targets with their names, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Target)> {
        self.names.iter().map(String::as_str).zip(&self.targets)
    }

    /// The configured names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// A target's configured name, for logs.
    pub fn name(&self, id: TargetId) -> &str {
        self.names.get(id.0).map_or("-", String::as_str)
    }
}
