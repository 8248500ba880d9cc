//! Named targets, and the routing decision that picks one.
//!
//! The decision is a value ([`Route`]) produced by the routing phase, not a lookup hard-wired into the
//! server: a plugin (usually `router`) names the target, else `server.default_target` answers.

use http::Response;
use http::request::Parts;

use crate::body::Body;
use crate::config::{Config, TargetConfig};
use crate::error::HttpError;
use crate::pipeline::{ConnCtx, RequestBody};
use crate::plugin::Services;
use crate::static_files::StaticFiles;
use crate::wsgi::{WsgiError, WsgiTarget};

/// The part of `path` below a target's `mount` prefix (`""` or `/` mount everything), or `None` when
/// the path is outside it: `/static` covers `/static` and `/static/x`, not `/staticx`.
pub fn below_mount<'a>(path: &'a str, mount: &str) -> Option<&'a str> {
    if mount.is_empty() || mount == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(mount)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Index of a target in [`Targets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetId(usize);

/// Where a request goes; set by the routing phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The chosen target.
    pub target: TargetId,
    /// A mount prefix chosen with it (a router's `strip_prefix`), replacing the target's `mount`.
    pub mount: Option<String>,
}

/// A built target, ready to answer requests.
#[derive(Debug)]
pub enum Target {
    /// Files under a directory.
    Static(StaticFiles),
    /// A WSGI application in worker processes.
    Wsgi(WsgiTarget),
    /// The process's metrics in the Prometheus text format.
    Metrics,
}

impl Target {
    /// Answers a request whose head is `req` and whose whole body is `body`.
    pub async fn serve(
        &self,
        req: &Parts,
        body: &RequestBody,
        conn: &ConnCtx,
        mount: Option<&str>,
        services: &Services,
    ) -> Result<Response<Body>, HttpError> {
        match self {
            Target::Static(files) => files.serve(req, mount),
            Target::Wsgi(app) => app.serve(req, body, conn, mount).await,
            Target::Metrics => Ok(metrics_response(services)),
        }
    }
}

fn metrics_response(services: &Services) -> Response<Body> {
    let mut text = String::new();
    services.render_metrics(&mut text);
    let mut response = Response::new(Body::full(text));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
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
}

impl Targets {
    /// Builds every target of a validated config.
    pub fn build(config: &Config) -> Result<Targets, BuildError> {
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
                    WsgiTarget::start(name, w, config.server.threads)
                        .map_err(|e| wrap(e.into()))?,
                ),
                TargetConfig::Metrics => Target::Metrics,
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

    /// The target at this position of the config's `[targets]`: plugins are given the target
    /// names in that order (`Chain::for_config`) and route by position.
    pub fn nth(&self, position: usize) -> Option<TargetId> {
        (position < self.targets.len()).then_some(TargetId(position))
    }

    /// The target behind an id.
    pub fn get(&self, id: TargetId) -> &Target {
        &self.targets[id.0]
    }

    /// A target's configured name, for logs.
    pub fn name(&self, id: TargetId) -> &str {
        &self.names[id.0]
    }
}

#[cfg(test)]
mod tests {
    use super::below_mount;

    #[test]
    fn mount_prefixes() {
        assert_eq!(below_mount("/a/b", "/"), Some("/a/b"));
        assert_eq!(below_mount("/a/b", ""), Some("/a/b"));
        assert_eq!(below_mount("/static", "/static"), Some(""));
        assert_eq!(below_mount("/static/x.css", "/static"), Some("/x.css"));
        assert_eq!(below_mount("/staticx/x.css", "/static"), None);
        assert_eq!(below_mount("/other", "/static"), None);
    }
}
