//! `cors`: Cross-Origin Resource Sharing (the Fetch standard's CORS protocol): preflight requests
//! answered here, response headers added for allowed origins.
//!
//! ```toml
//! [[plugins]]
//! use = "cors"
//! paths = ["/api"]
//! [plugins.config]
//! allow_origins = ["https://app.example.com", "https://*.example.org"]   # or ["*"]
//! allow_methods = ["GET", "POST", "PUT"]         # default GET, HEAD, POST
//! allow_headers = ["content-type", "authorization"]   # or ["*"]: whatever is asked
//! expose_headers = ["x-request-id"]
//! allow_credentials = false
//! max_age = "10m"                                # how long browsers keep a preflight answer
//! ```
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered with
//! 204 and the allowed methods and headers when the origin, method and headers are allowed, and
//! with 403 otherwise; it never reaches the target. Other requests from an allowed origin get
//! `Access-Control-Allow-Origin` (the origin itself, or `*` when every origin is allowed without
//! credentials) and `Vary: Origin`; requests from other origins pass unchanged, without those
//! headers, so the browser withholds the response from the page.

use std::time::Duration;

use gatehouse_sdk::{Action, Filter, Hook, LocalResponse, Request, Response, units};
use serde::Deserialize;

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    allow_origins: Vec<String>,
    allow_methods: Option<Vec<String>>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    max_age: Option<units::Seconds>,
}

/// An allowed origin.
#[derive(Debug)]
enum Origin {
    Any,
    Exact(String),
    /// `scheme://*.suffix`: any subdomain of the suffix.
    Subdomains {
        scheme: String,
        suffix: String,
    },
}

impl Origin {
    fn matches(&self, origin: &str) -> bool {
        match self {
            Origin::Any => true,
            Origin::Exact(o) => o.eq_ignore_ascii_case(origin),
            Origin::Subdomains { scheme, suffix } => {
                let origin = origin.to_ascii_lowercase();
                origin
                    .strip_prefix(scheme.as_str())
                    .and_then(|rest| rest.strip_prefix("://"))
                    .is_some_and(|host| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
            }
        }
    }
}

/// The filter.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<Origin>,
    methods: Vec<String>,
    headers: Vec<String>,
    any_header: bool,
    expose: String,
    credentials: bool,
    max_age: Option<Duration>,
}

const ALLOWED: &str = "cors.origin";

impl Filter for Cors {
    type Config = Config;
    const HOOKS: &'static [Hook] = &[Hook::OnRequest, Hook::OnResponse];

    fn new(config: Config) -> Result<Self, String> {
        if config.allow_origins.is_empty() {
            return Err("allow_origins needs at least one origin (or \"*\")".into());
        }
        let origins = config
            .allow_origins
            .iter()
            .map(|o| {
                let o = o.trim_end_matches('/').to_ascii_lowercase();
                if o == "*" {
                    return Ok(Origin::Any);
                }
                let Some((scheme, host)) = o.split_once("://") else {
                    return Err(format!(
                        "allow_origins: {o:?} is not an origin like https://app.example.com"
                    ));
                };
                if host.contains('/') {
                    return Err(format!(
                        "allow_origins: {o:?} has a path; an origin has none"
                    ));
                }
                Ok(match host.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => Origin::Subdomains {
                        scheme: scheme.to_string(),
                        suffix: suffix.to_string(),
                    },
                    Some(_) => {
                        return Err(format!("allow_origins: {o:?}: use https://*.example.com"));
                    }
                    None => Origin::Exact(o.clone()),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let methods = config
            .allow_methods
            .unwrap_or_else(|| vec!["GET".into(), "HEAD".into(), "POST".into()])
            .into_iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        let any_header = config.allow_headers.iter().any(|h| h == "*");
        Ok(Cors {
            origins,
            methods,
            headers: config
                .allow_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            any_header,
            expose: config.expose_headers.join(", "),
            credentials: config.allow_credentials,
            max_age: config.max_age.map(|s| s.0),
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        let Some(origin) = req.header("origin") else {
            return Action::Continue;
        };
        let allowed = self.origins.iter().any(|o| o.matches(&origin));
        let requested = req.header("access-control-request-method");
        if req.method() == "OPTIONS"
            && let Some(method) = requested
        {
            return self.preflight(req, &origin, allowed, &method);
        }
        if allowed {
            req.set_context(ALLOWED, &origin);
        }
        Action::Continue
    }

    fn on_response(&self, req: &mut Request, resp: &mut Response) {
        let Some(origin) = req.context(ALLOWED) else {
            return;
        };
        let mut headers = vec![("access-control-allow-origin", self.allow_origin(&origin))];
        if self.credentials {
            headers.push(("access-control-allow-credentials", "true".into()));
        }
        if !self.expose.is_empty() {
            headers.push(("access-control-expose-headers", self.expose.clone()));
        }
        let _ = resp.set_headers(&headers);
        let _ = resp.append_header("vary", "Origin");
    }
}

gatehouse_sdk::export_filter!(Cors);

impl Cors {
    /// `*` when any origin may read without credentials, else the origin itself.
    fn allow_origin(&self, origin: &str) -> String {
        if !self.credentials && self.origins.iter().any(|o| matches!(o, Origin::Any)) {
            "*".into()
        } else {
            origin.to_string()
        }
    }

    fn preflight(&self, req: &Request, origin: &str, allowed: bool, method: &str) -> Action {
        let method = method.trim().to_ascii_uppercase();
        let asked: Vec<String> = req
            .header("access-control-request-headers")
            .map(|h| {
                h.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let method_ok = self.methods.contains(&method);
        let headers_ok = self.any_header || asked.iter().all(|h| self.headers.contains(h));
        if !(allowed && method_ok && headers_ok) {
            return LocalResponse::new(403)
                .header(
                    "vary",
                    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                )
                .text("403 Forbidden: CORS preflight refused\n")
                .into();
        }
        let mut r = LocalResponse::new(204)
            .header("access-control-allow-origin", self.allow_origin(origin))
            .header("access-control-allow-methods", self.methods.join(", "))
            .header(
                "vary",
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            );
        if !asked.is_empty() {
            r = r.header("access-control-allow-headers", asked.join(", "));
        }
        if self.credentials {
            r = r.header("access-control-allow-credentials", "true");
        }
        if let Some(age) = self.max_age {
            r = r.header("access-control-max-age", age.as_secs().to_string());
        }
        r.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_sdk::testing::{self, TestRequest, TestResponse};

    fn cors(config: &str) -> Cors {
        testing::init(config).expect("config")
    }

    fn preflight(origin: &str, method: &str, headers: &str) -> TestRequest {
        TestRequest::new("OPTIONS", "/api")
            .with_header("origin", origin)
            .with_header("access-control-request-method", method)
            .with_header("access-control-request-headers", headers)
    }

    fn answer(f: &Cors, req: &mut TestRequest) -> LocalResponse {
        match testing::on_request(f, req) {
            Action::Respond(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn header(r: &LocalResponse, name: &str) -> Option<String> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn preflights_are_answered_here() {
        let f = cors(
            r#"{"allow_origins": ["https://app.example.com", "https://*.example.org"],
                         "allow_methods": ["GET", "PUT"], "allow_headers": ["content-type"],
                         "max_age": "10m"}"#,
        );
        let r = answer(
            &f,
            &mut preflight("https://app.example.com", "PUT", "Content-Type"),
        );
        assert_eq!(r.status, 204);
        assert_eq!(
            header(&r, "access-control-allow-origin").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            header(&r, "access-control-allow-methods").as_deref(),
            Some("GET, PUT")
        );
        assert_eq!(
            header(&r, "access-control-allow-headers").as_deref(),
            Some("content-type")
        );
        assert_eq!(header(&r, "access-control-max-age").as_deref(), Some("600"));
        assert_eq!(
            answer(&f, &mut preflight("https://a.b.example.org", "GET", "")).status,
            204
        );
        assert_eq!(
            answer(&f, &mut preflight("https://evil.com", "GET", "")).status,
            403
        );
        assert_eq!(
            answer(&f, &mut preflight("https://example.org", "GET", "")).status,
            403
        );
        assert_eq!(
            answer(&f, &mut preflight("https://app.example.com", "DELETE", "")).status,
            403
        );
        assert_eq!(
            answer(
                &f,
                &mut preflight("https://app.example.com", "GET", "x-secret")
            )
            .status,
            403
        );
    }

    #[test]
    fn allowed_origins_get_headers_on_responses_and_others_none() {
        let f = cors(r#"{"allow_origins": ["*"], "expose_headers": ["x-id"]}"#);
        let mut req = TestRequest::get("/").with_header("origin", "https://x.test");
        assert_eq!(testing::on_request(&f, &mut req), Action::Continue);
        let mut resp = TestResponse::new(200, "ok");
        testing::on_response(&f, &mut req, &mut resp);
        assert_eq!(
            resp.header("access-control-allow-origin").as_deref(),
            Some("*")
        );
        assert_eq!(
            resp.header("access-control-expose-headers").as_deref(),
            Some("x-id")
        );
        assert_eq!(resp.header("vary").as_deref(), Some("Origin"));

        let f = cors(r#"{"allow_origins": ["https://app.test"], "allow_credentials": true}"#);
        let mut req = TestRequest::get("/").with_header("origin", "https://app.test");
        testing::on_request(&f, &mut req);
        let mut resp = TestResponse::new(200, "ok");
        testing::on_response(&f, &mut req, &mut resp);
        assert_eq!(
            resp.header("access-control-allow-origin").as_deref(),
            Some("https://app.test")
        );
        assert_eq!(
            resp.header("access-control-allow-credentials").as_deref(),
            Some("true")
        );
        let mut other = TestRequest::get("/").with_header("origin", "https://evil.test");
        testing::on_request(&f, &mut other);
        let mut resp = TestResponse::new(200, "ok");
        testing::on_response(&f, &mut other, &mut resp);
        assert_eq!(resp.header("access-control-allow-origin"), None);
    }

    #[test]
    fn bad_origins_are_refused() {
        assert!(testing::init::<Cors>(r#"{"allow_origins": []}"#).is_err());
        assert!(testing::init::<Cors>(r#"{"allow_origins": ["app.example.com"]}"#).is_err());
        assert!(testing::init::<Cors>(r#"{"allow_origins": ["https://x.com/path"]}"#).is_err());
    }
}
