//! `router`: Nginx's `server_name` + `location` as a plugin.
//!
//! ```toml
//! [[plugins]]
//! use = "router"
//! [[plugins.config.routes]]
//! host = "*.example.com"          # exact, `*.suffix`, or absent (the default server)
//! path = "/static/"               # a prefix (default "/"); or `exact = "/robots.txt"`
//! target = "assets"
//! strip_prefix = true             # the target sees the path below the prefix
//! [[plugins.config.routes]]
//! path = "/old/"
//! redirect = "https://example.com/new{path}"   # {path} (with query) and {host} are filled in
//! status = 301                    # 301, 302 (default), 307 or 308
//! [[plugins.config.routes]]
//! methods = ["GET", "POST"]
//! target = "app"
//! ```
//!
//! Host first, as Nginx picks a server block: routes for the exact host win over `*.suffix` routes
//! (the longest suffix first), which win over routes without a host; only that group's routes are
//! considered. Within it an exact path beats prefixes, and the longest prefix wins. A path that
//! matches only with another method gets 405; nothing at all gets 404.

use gatehouse_sdk::{Action, Filter, Hook, LocalResponse, Request};
use serde::Deserialize;

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The routes, in any order (specificity decides, not order).
    pub routes: Vec<RouteConfig>,
}

/// One route as written in TOML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    host: Option<String>,
    path: Option<String>,
    exact: Option<String>,
    methods: Option<Vec<String>>,
    target: Option<String>,
    #[serde(default)]
    strip_prefix: bool,
    redirect: Option<String>,
    status: Option<u16>,
}

#[derive(Debug, PartialEq, Eq)]
enum HostMatch {
    Any,
    Suffix(String),
    Exact(String),
}

impl HostMatch {
    /// Whether the pattern covers `host`.
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Suffix(s) => host
                .strip_suffix(s.as_str())
                .is_some_and(|rest| !rest.is_empty()),
            HostMatch::Exact(h) => h == host,
        }
    }

    /// How specific the pattern is: exact > longest suffix > any.
    fn specificity(&self) -> (u8, usize) {
        match self {
            HostMatch::Any => (0, 0),
            HostMatch::Suffix(s) => (1, s.len()),
            HostMatch::Exact(_) => (2, 0),
        }
    }
}

#[derive(Debug)]
enum Then {
    Target { name: String, strip: bool },
    Redirect { to: String, status: u16 },
}

#[derive(Debug)]
struct Route {
    path: String,
    /// A prefix route's path without its trailing `/`: the mount point it matches below.
    mount: String,
    exact: bool,
    methods: Vec<String>,
    then: Then,
}

impl Route {
    fn path_rank(&self, path: &str) -> Option<(u8, usize)> {
        if self.exact {
            return (path == self.path).then_some((1, self.path.len()));
        }
        let below = self.mount.is_empty()
            || path
                .strip_prefix(self.mount.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        below.then_some((0, self.path.len()))
    }
}

/// The routes of one host pattern: an Nginx server block.
#[derive(Debug)]
struct Server {
    host: HostMatch,
    routes: Vec<Route>,
}

/// The router.
#[derive(Debug)]
pub struct Router {
    /// Most specific host pattern first, so the first that matches is the request's server.
    servers: Vec<Server>,
}

/// A route as written, checked: its host pattern and what it matches below it.
fn route_from(i: usize, r: RouteConfig, targets: &[String]) -> Result<(HostMatch, Route), String> {
    let at = format!("routes[{i}]");
    let (path, exact) = match (r.path, r.exact) {
        (Some(_), Some(_)) => {
            return Err(format!("{at}: give `path` (a prefix) or `exact`, not both"));
        }
        (Some(p), None) => (p, false),
        (None, Some(e)) => (e, true),
        (None, None) => ("/".to_string(), false),
    };
    if !path.starts_with('/') {
        return Err(format!("{at}: a path starts with `/`: {path:?}"));
    }
    let host = match r.host.map(|h| h.to_ascii_lowercase()) {
        None => HostMatch::Any,
        Some(h) if h == "*" || h == "_" => HostMatch::Any,
        Some(h) if h.starts_with("*.") && !h[2..].contains('*') => {
            HostMatch::Suffix(h[1..].to_string())
        }
        Some(h) if !h.contains('*') && !h.is_empty() => HostMatch::Exact(h),
        Some(h) => {
            return Err(format!(
                "{at}: a host is a name, `*.suffix` or absent: {h:?}"
            ));
        }
    };
    let then = match (r.target, r.redirect) {
        (Some(_), Some(_)) => return Err(format!("{at}: give `target` or `redirect`, not both")),
        (Some(name), None) => {
            if !targets.is_empty() && !targets.contains(&name) {
                return Err(format!(
                    "{at}: no target named {name:?} (defined: {})",
                    targets.join(", ")
                ));
            }
            if r.status.is_some() {
                return Err(format!("{at}: `status` goes with `redirect`"));
            }
            Then::Target {
                name,
                strip: r.strip_prefix,
            }
        }
        (None, Some(to)) => {
            let status = r.status.unwrap_or(302);
            if ![301, 302, 303, 307, 308].contains(&status) {
                return Err(format!(
                    "{at}: a redirect status is 301, 302, 303, 307 or 308, not {status}"
                ));
            }
            Then::Redirect { to, status }
        }
        (None, None) => return Err(format!("{at}: a route needs `target` or `redirect`")),
    };
    let methods = r
        .methods
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.to_ascii_uppercase())
        .collect();
    let route = Route {
        mount: path.trim_end_matches('/').to_string(),
        path,
        exact,
        methods,
        then,
    };
    Ok((host, route))
}

impl Filter for Router {
    type Config = Config;
    const HOOKS: &'static [Hook] = &[Hook::OnRequest];

    // Every request is routed on its host, path and method.
    const REQUEST_HEAD: bool = true;

    fn new(config: Config) -> Result<Self, String> {
        let targets = gatehouse_sdk::targets();
        if config.routes.is_empty() {
            return Err("`routes` is empty: add at least one route".into());
        }
        let mut servers: Vec<Server> = Vec::new();
        for (i, r) in config.routes.into_iter().enumerate() {
            let (host, route) = route_from(i, r, &targets)?;
            match servers.iter_mut().find(|s| s.host == host) {
                Some(server) => server.routes.push(route),
                None => servers.push(Server {
                    host,
                    routes: vec![route],
                }),
            }
        }
        servers.sort_by_key(|s| std::cmp::Reverse(s.host.specificity()));
        Ok(Router { servers })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        let raw_host = req.host_name().unwrap_or_default();
        // Lower-case only when needed: most clients send lower-case hosts.
        let host: std::borrow::Cow<'_, str> = if raw_host.bytes().any(|b| b.is_ascii_uppercase()) {
            raw_host.to_ascii_lowercase().into()
        } else {
            raw_host.into()
        };
        let host = host.as_ref();
        let path = req.path();
        let method = req.method();

        // The server block: the most specific host pattern that has any route for this host.
        let Some(server) = self.servers.iter().find(|s| s.host.matches(host)) else {
            return not_found(host, path);
        };
        let in_server = server.routes.iter();

        let mut best: Option<((u8, usize), &Route)> = None;
        let mut allowed: Vec<&str> = Vec::new();
        for route in in_server {
            let Some(rank) = route.path_rank(path) else {
                continue;
            };
            if !route.methods.is_empty() && !route.methods.iter().any(|m| m == method) {
                allowed.extend(route.methods.iter().map(String::as_str));
                continue;
            }
            if best.is_none_or(|(b, _)| rank > b) {
                best = Some((rank, route));
            }
        }
        match best {
            Some((_, route)) => match &route.then {
                Then::Target { name, strip } => Action::Route {
                    target: name.clone(),
                    strip_prefix: (*strip && !route.exact && !route.mount.is_empty())
                        .then(|| route.mount.clone()),
                },
                Then::Redirect { to, status } => {
                    let full = match req.query() {
                        Some(q) => format!("{path}?{q}"),
                        None => path.to_string(),
                    };
                    let location = to.replace("{path}", &full).replace("{host}", host);
                    LocalResponse::redirect(*status, &location)
                        .text(format!("{status} redirect to {location}\n"))
                        .into()
                }
            },
            None if !allowed.is_empty() => {
                allowed.sort_unstable();
                allowed.dedup();
                LocalResponse::new(405)
                    .header("allow", allowed.join(", "))
                    .text(format!("405 Method Not Allowed: {method} {path}\n"))
                    .into()
            }
            None => not_found(host, path),
        }
    }
}

fn not_found(host: &str, path: &str) -> Action {
    LocalResponse::new(404)
        .text(format!("404 Not Found: no route for {host}{path}\n"))
        .into()
}

gatehouse_sdk::export_filter!(Router);

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_sdk::testing::{self, TestRequest};

    fn router(config: serde_json::Value) -> Result<Router, String> {
        testing::init_with_targets(&config.to_string(), &["app", "assets", "admin"])
    }

    fn route(r: &Router, host: &str, method: &str, target: &str) -> Action {
        let mut req = TestRequest::new(method, target).with_header("host", host);
        testing::on_request(r, &mut req)
    }

    #[test]
    fn hosts_then_longest_prefix() {
        let r = router(serde_json::json!({"routes": [
            {"path": "/", "target": "app"},
            {"path": "/static/", "target": "assets", "strip_prefix": true},
            {"host": "*.example.com", "target": "admin"},
            {"host": "admin.example.com", "path": "/x", "target": "assets"},
            {"exact": "/static/special", "target": "admin"},
        ]}))
        .unwrap();
        assert_eq!(route(&r, "other.org", "GET", "/a"), Action::route("app"));
        assert_eq!(
            route(&r, "other.org", "GET", "/static/a.css"),
            Action::Route {
                target: "assets".into(),
                strip_prefix: Some("/static".into())
            }
        );
        assert_eq!(
            route(&r, "other.org", "GET", "/staticx"),
            Action::route("app")
        );
        assert_eq!(
            route(&r, "other.org", "GET", "/static/special"),
            Action::route("admin")
        );
        assert_eq!(
            route(&r, "www.example.com:8080", "GET", "/static/a"),
            Action::route("admin")
        );
        assert_eq!(
            route(&r, "admin.example.com", "GET", "/x/y"),
            Action::route("assets")
        );
        // The exact-host server block has no route for `/`: 404, not a fall-back to other blocks.
        let Action::Respond(resp) = route(&r, "admin.example.com", "GET", "/") else {
            panic!()
        };
        assert_eq!(resp.status, 404);
        assert!(String::from_utf8_lossy(&resp.body).contains("no route for admin.example.com/"));
    }

    #[test]
    fn methods_and_redirects() {
        let r = router(serde_json::json!({"routes": [
            {"path": "/api", "methods": ["post"], "target": "app"},
            {"path": "/old/", "redirect": "https://{host}/new{path}", "status": 308},
        ]}))
        .unwrap();
        assert_eq!(route(&r, "h", "POST", "/api/x"), Action::route("app"));
        let Action::Respond(resp) = route(&r, "h", "GET", "/api/x") else {
            panic!()
        };
        assert_eq!(resp.status, 405);
        assert!(resp.headers.contains(&("allow".into(), b"POST".to_vec())));
        let Action::Respond(resp) = route(&r, "h", "GET", "/old/a?b=1") else {
            panic!()
        };
        assert_eq!(resp.status, 308);
        assert!(
            resp.headers
                .contains(&("location".into(), b"https://h/new/old/a?b=1".to_vec()))
        );
        let Action::Respond(resp) = route(&r, "h", "GET", "/nothing") else {
            panic!()
        };
        assert_eq!(resp.status, 404);
    }

    #[test]
    fn config_errors_name_the_route() {
        let e =
            router(serde_json::json!({"routes": [{"path": "/", "target": "nope"}]})).unwrap_err();
        assert!(
            e.contains("routes[0]") && e.contains("no target named \"nope\""),
            "{e}"
        );
        let e =
            router(serde_json::json!({"routes": [{"redirect": "/x", "status": 200}]})).unwrap_err();
        assert!(e.contains("redirect status"), "{e}");
        let e = router(serde_json::json!({"routes": [{"target": "app", "bogus": 1}]})).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = router(serde_json::json!({"routes": []})).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }
}
