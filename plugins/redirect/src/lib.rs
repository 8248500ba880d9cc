//! `redirect`: HTTP to HTTPS and one canonical host name, as nginx's `return 301
//! https://$host$request_uri` and `server_name` redirects.
//!
//! ```toml
//! [[plugins]]
//! use = "redirect"
//! [plugins.config]
//! https = true            # plain HTTP requests go to https://
//! https_port = 443        # the port in the new URL (left out when 443)
//! www = "remove"          # "add": example.com -> www.example.com; "remove": the other way
//! # host = "example.com"  # or one canonical host: every other host name is sent there
//! permanent = true        # 301 / 308 (default); false: 302 / 307
//! ```
//!
//! GET and HEAD get 301 (or 302); other methods 308 (or 307), which keep the method and body. The
//! path and query are kept. Requests to an IP address are not sent to another host name.

use gatehouse_sdk::{Action, Filter, Hook, LocalResponse, Request};
use serde::Deserialize;

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    https: bool,
    https_port: Option<u16>,
    www: Option<String>,
    host: Option<String>,
    permanent: Option<bool>,
}

#[derive(Debug, PartialEq, Eq)]
enum Canonical {
    Keep,
    AddWww,
    RemoveWww,
    Host(String),
}

/// The filter.
#[derive(Debug)]
pub struct Redirect {
    https: bool,
    https_port: u16,
    canonical: Canonical,
    permanent: bool,
}

impl Filter for Redirect {
    type Config = Config;
    const HOOKS: &'static [Hook] = &[Hook::OnRequest];
    const REQUEST_HEAD: bool = true;

    fn new(config: Config) -> Result<Self, String> {
        let canonical = match (config.www.as_deref(), config.host) {
            (Some(_), Some(_)) => return Err("give `www` or `host`, not both".into()),
            (Some("add"), None) => Canonical::AddWww,
            (Some("remove"), None) => Canonical::RemoveWww,
            (Some(other), None) => {
                return Err(format!("www = {other:?}: expected \"add\" or \"remove\""));
            }
            (None, Some(host)) => {
                if host.is_empty() || host.contains(['/', ':', ' ']) {
                    return Err(format!(
                        "host = {host:?}: expected a host name like example.com"
                    ));
                }
                Canonical::Host(host.to_ascii_lowercase())
            }
            (None, None) => Canonical::Keep,
        };
        if !config.https && canonical == Canonical::Keep {
            return Err("nothing to do: set `https = true`, `www` or `host`".into());
        }
        Ok(Redirect {
            https: config.https,
            https_port: config.https_port.unwrap_or(443),
            canonical,
            permanent: config.permanent.unwrap_or(true),
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        let Some(host) = req.host_name().map(str::to_ascii_lowercase) else {
            return Action::Continue;
        };
        let is_ip = host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[');
        let new_host = match &self.canonical {
            _ if is_ip => None,
            Canonical::Keep => None,
            Canonical::AddWww if !host.starts_with("www.") => Some(format!("www.{host}")),
            Canonical::RemoveWww => host.strip_prefix("www.").map(str::to_string),
            Canonical::Host(canonical) if *canonical != host => Some(canonical.clone()),
            _ => None,
        };
        let to_https = self.https && !req.is_tls();
        if new_host.is_none() && !to_https {
            return Action::Continue;
        }
        let scheme = if self.https || req.is_tls() {
            "https"
        } else {
            "http"
        };
        let mut authority = new_host.unwrap_or(host);
        if scheme == "https" && self.https_port != 443 {
            authority.push_str(&format!(":{}", self.https_port));
        }
        let mut location = format!("{scheme}://{authority}{}", req.path());
        if let Some(query) = req.query() {
            location.push('?');
            location.push_str(query);
        }
        let keeps_method = !matches!(req.method(), "GET" | "HEAD");
        let status = match (self.permanent, keeps_method) {
            (true, false) => 301,
            (true, true) => 308,
            (false, false) => 302,
            (false, true) => 307,
        };
        LocalResponse::redirect(status, &location)
            .text(format!("{status} -> {location}\n"))
            .into()
    }
}

gatehouse_sdk::export_filter!(Redirect);

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_sdk::testing::{self, TestRequest};

    fn to(config: &str, req: TestRequest) -> Option<(u16, String)> {
        let f: Redirect = testing::init(config).expect("config");
        let mut req = req;
        match testing::on_request(&f, &mut req) {
            Action::Continue => None,
            Action::Respond(r) => {
                let location = r
                    .headers
                    .iter()
                    .find(|(n, _)| n == "location")
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                Some((r.status, location))
            }
            other => panic!("{other:?}"),
        }
    }

    fn at(method: &str, host: &str, target: &str, tls: bool) -> TestRequest {
        let mut r = TestRequest::new(method, target).with_header("host", host);
        r.tls = tls;
        r
    }

    #[test]
    fn plain_http_goes_to_https_keeping_path_and_query() {
        let c = r#"{"https": true}"#;
        assert_eq!(
            to(c, at("GET", "example.com:8080", "/a/b?x=1", false)),
            Some((301, "https://example.com/a/b?x=1".into()))
        );
        assert_eq!(
            to(c, at("POST", "example.com", "/form", false)),
            Some((308, "https://example.com/form".into()))
        );
        assert_eq!(to(c, at("GET", "example.com", "/", true)), None);
        assert_eq!(
            to(
                r#"{"https": true, "https_port": 8443, "permanent": false}"#,
                at("GET", "e.com", "/", false)
            ),
            Some((302, "https://e.com:8443/".into()))
        );
    }

    #[test]
    fn one_canonical_host() {
        assert_eq!(
            to(r#"{"www": "add"}"#, at("GET", "example.com", "/p", true)),
            Some((301, "https://www.example.com/p".into()))
        );
        assert_eq!(
            to(
                r#"{"www": "add"}"#,
                at("GET", "www.example.com", "/p", true)
            ),
            None
        );
        assert_eq!(
            to(
                r#"{"www": "remove", "https": true}"#,
                at("GET", "www.example.com", "/p", false)
            ),
            Some((301, "https://example.com/p".into()))
        );
        assert_eq!(
            to(
                r#"{"host": "example.com"}"#,
                at("GET", "old.example.net", "/", false)
            ),
            Some((301, "http://example.com/".into()))
        );
        assert_eq!(
            to(r#"{"www": "add"}"#, at("GET", "192.0.2.1", "/", false)),
            None
        );
    }

    #[test]
    fn configs_that_do_nothing_or_clash_are_refused() {
        assert!(testing::init::<Redirect>("{}").is_err());
        assert!(testing::init::<Redirect>(r#"{"www": "maybe"}"#).is_err());
        assert!(testing::init::<Redirect>(r#"{"www": "add", "host": "a.com"}"#).is_err());
    }
}
