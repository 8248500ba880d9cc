//! `headers`: set, add and remove request and response header fields (nginx's
//! `proxy_set_header`, `add_header`, `proxy_hide_header`), with a `security` preset.
//!
//! ```toml
//! [[plugins]]
//! use = "headers"
//! [plugins.config.request]
//! set = { "X-Env" = "production" }       # replaces any value the client sent
//! remove = ["X-Debug"]
//! [plugins.config.response]
//! set = { "Cache-Control" = "no-store" }
//! add = { "Link" = "</app.css>; rel=preload" }   # kept beside values already there
//! remove = ["Server", "X-Powered-By"]
//! [plugins.config.security]
//! hsts = "max-age=63072000; includeSubDomains"   # only on HTTPS responses
//! content_type_options = true                    # X-Content-Type-Options: nosniff
//! frame_options = "DENY"                         # X-Frame-Options
//! referrer_policy = "strict-origin-when-cross-origin"
//! csp = "default-src 'self'"                     # Content-Security-Policy, if given
//! ```
//!
//! `security = true` takes the preset's defaults (all of the above but `csp`); a table changes
//! them (`false` or `""` leaves one out). Preset fields the app sets itself are left as the app
//! set them; `set`, `add` and `remove` apply after the preset, so they win.

use std::collections::BTreeMap;

use gatehouse_sdk::{Action, Filter, Hook, Request, Response};
use serde::Deserialize;

/// The plugin's `config` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    request: Edits,
    #[serde(default)]
    response: Edits,
    security: Option<Security>,
}

/// Changes to one message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edits {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

impl Edits {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// `security = true`, or a table of the preset's fields.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Security {
    /// The defaults, or none.
    On(bool),
    /// Chosen fields.
    Fields(SecurityFields),
}

/// The preset's fields; `false` / `""` leaves one out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityFields {
    hsts: Option<Toggle>,
    content_type_options: Option<bool>,
    frame_options: Option<Toggle>,
    referrer_policy: Option<Toggle>,
    csp: Option<String>,
}

/// A value, or `false` for none.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Toggle {
    /// `false` leaves it out (`true`: the default value).
    On(bool),
    /// This value.
    Value(String),
}

const HSTS: &str = "max-age=63072000; includeSubDomains";
const FRAME_OPTIONS: &str = "DENY";
const REFERRER_POLICY: &str = "strict-origin-when-cross-origin";

fn pick(toggle: Option<&Toggle>, default: &str) -> Option<String> {
    match toggle {
        None | Some(Toggle::On(true)) => Some(default.to_string()),
        Some(Toggle::On(false)) => None,
        Some(Toggle::Value(v)) if v.is_empty() => None,
        Some(Toggle::Value(v)) => Some(v.clone()),
    }
}

/// The filter.
#[derive(Debug)]
pub struct Headers {
    request: Edits,
    response: Edits,
    /// Preset fields set when the response lacks them.
    preset: Vec<(String, String)>,
    /// HSTS, for HTTPS responses only.
    hsts: Option<String>,
}

fn check(edits: &Edits, which: &str) -> Result<(), String> {
    let names = edits
        .set
        .keys()
        .chain(edits.add.keys())
        .chain(edits.remove.iter());
    for name in names {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            return Err(format!("{which}: {name:?} is not a header name"));
        }
    }
    for value in edits.set.values().chain(edits.add.values()) {
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!(
                "{which}: a header value may not hold CR, LF or NUL"
            ));
        }
    }
    Ok(())
}

impl Filter for Headers {
    type Config = Config;
    const HOOKS: &'static [Hook] = &[Hook::OnRequest, Hook::OnResponse];

    /// Each side is called only if the config edits it.
    fn hooks(&self) -> &'static [Hook] {
        let request = !self.request.is_empty();
        let response = !self.response.is_empty() || !self.preset.is_empty() || self.hsts.is_some();
        match (request, response) {
            (true, true) => Self::HOOKS,
            (true, false) => &[Hook::OnRequest],
            (false, true) => &[Hook::OnResponse],
            (false, false) => &[],
        }
    }

    fn new(config: Config) -> Result<Self, String> {
        check(&config.request, "request")?;
        check(&config.response, "response")?;
        let (preset, hsts) = match config.security {
            None | Some(Security::On(false)) => (Vec::new(), None),
            Some(Security::On(true)) => (
                vec![
                    ("x-content-type-options".into(), "nosniff".into()),
                    ("x-frame-options".into(), FRAME_OPTIONS.into()),
                    ("referrer-policy".into(), REFERRER_POLICY.into()),
                ],
                Some(HSTS.to_string()),
            ),
            Some(Security::Fields(f)) => {
                let mut preset = Vec::new();
                if f.content_type_options.unwrap_or(true) {
                    preset.push(("x-content-type-options".into(), "nosniff".into()));
                }
                if let Some(v) = pick(f.frame_options.as_ref(), FRAME_OPTIONS) {
                    preset.push(("x-frame-options".into(), v));
                }
                if let Some(v) = pick(f.referrer_policy.as_ref(), REFERRER_POLICY) {
                    preset.push(("referrer-policy".into(), v));
                }
                if let Some(csp) = f.csp.filter(|c| !c.is_empty()) {
                    preset.push(("content-security-policy".into(), csp));
                }
                (preset, pick(f.hsts.as_ref(), HSTS))
            }
        };
        Ok(Headers {
            request: config.request,
            response: config.response,
            preset,
            hsts,
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        for name in &self.request.remove {
            req.remove_header(name);
        }
        if !self.request.set.is_empty() {
            let set: Vec<(&String, &String)> = self.request.set.iter().collect();
            let _ = req.set_headers(&set);
        }
        for (name, value) in &self.request.add {
            let _ = req.append_header(name, value);
        }
        Action::Continue
    }

    fn on_response(&self, req: &mut Request, resp: &mut Response) {
        // One call for the names present instead of one per preset field.
        let present: Vec<String> = if self.preset.is_empty() && self.hsts.is_none() {
            Vec::new()
        } else {
            resp.headers().into_iter().map(|(name, _)| name).collect()
        };
        let absent = |name: &str| !present.iter().any(|p| p == name);
        let mut missing: Vec<(&str, &str)> = self
            .preset
            .iter()
            .filter(|(name, _)| absent(name))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        if let Some(hsts) = &self.hsts
            && absent("strict-transport-security")
            && req.is_tls()
        {
            missing.push(("strict-transport-security", hsts));
        }
        if !missing.is_empty() {
            let _ = resp.set_headers(&missing);
        }
        for name in &self.response.remove {
            resp.remove_header(name);
        }
        if !self.response.set.is_empty() {
            let set: Vec<(&String, &String)> = self.response.set.iter().collect();
            let _ = resp.set_headers(&set);
        }
        for (name, value) in &self.response.add {
            let _ = resp.append_header(name, value);
        }
    }
}

gatehouse_sdk::export_filter!(Headers);

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_sdk::testing::{self, TestRequest, TestResponse};

    fn run(config: &str, req: &mut TestRequest, resp: &mut TestResponse) {
        let f: Headers = testing::init(config).expect("config");
        testing::on_request(&f, req);
        testing::on_response(&f, req, resp);
    }

    #[test]
    fn a_side_with_nothing_to_do_is_not_visited() {
        let f: Headers = testing::init(r#"{"security": true}"#).expect("config");
        let mut req = TestRequest::get("/");
        let mut resp = TestResponse::new(200, "ok");
        testing::on_request(&f, &mut req);
        assert!(testing::on_response(&f, &mut req, &mut resp));
        assert_eq!(
            resp.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(f.hooks(), &[Hook::OnResponse]);
        let f: Headers =
            testing::init(r#"{"request": {"set": {"x-env": "prod"}}}"#).expect("config");
        assert_eq!(f.hooks(), &[Hook::OnRequest]);
        assert!(!testing::on_response(&f, &mut req, &mut resp));
    }

    #[test]
    fn set_add_and_remove_both_ways() {
        let config = r#"{"request": {"set": {"X-Env": "prod"}, "remove": ["x-debug"]},
                        "response": {"set": {"Cache-Control": "no-store"}, "add": {"Vary": "Origin"},
                                     "remove": ["Server"]}}"#;
        let mut req = TestRequest::get("/")
            .with_header("x-env", "dev")
            .with_header("x-debug", "1");
        let mut resp = TestResponse::new(200, "ok");
        resp.headers = vec![
            ("server".into(), b"app".to_vec()),
            ("vary".into(), b"Accept".to_vec()),
        ];
        run(config, &mut req, &mut resp);
        assert_eq!(req.header("x-env").as_deref(), Some("prod"));
        assert_eq!(req.header("x-debug"), None);
        assert_eq!(resp.header("cache-control").as_deref(), Some("no-store"));
        assert_eq!(resp.header("server"), None);
        let vary: Vec<_> = resp.headers.iter().filter(|(n, _)| n == "vary").collect();
        assert_eq!(vary.len(), 2);
    }

    #[test]
    fn the_security_preset_fills_what_the_app_left_out() {
        let mut req = TestRequest::get("/");
        let mut resp = TestResponse::new(200, "ok");
        resp.headers = vec![("x-frame-options".into(), b"SAMEORIGIN".to_vec())];
        run(r#"{"security": true}"#, &mut req, &mut resp);
        assert_eq!(
            resp.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(
            resp.header("x-frame-options").as_deref(),
            Some("SAMEORIGIN")
        );
        assert_eq!(
            resp.header("referrer-policy").as_deref(),
            Some("strict-origin-when-cross-origin")
        );
        assert_eq!(
            resp.header("strict-transport-security"),
            None,
            "not over plain HTTP"
        );
        let mut tls = TestRequest::get("/");
        tls.tls = true;
        let mut resp = TestResponse::new(200, "ok");
        run(
            r#"{"security": {"csp": "default-src 'self'", "frame_options": false}}"#,
            &mut tls,
            &mut resp,
        );
        assert_eq!(
            resp.header("strict-transport-security").as_deref(),
            Some(HSTS)
        );
        assert_eq!(
            resp.header("content-security-policy").as_deref(),
            Some("default-src 'self'")
        );
        assert_eq!(resp.header("x-frame-options"), None);
    }

    #[test]
    fn bad_names_and_values_are_refused() {
        assert!(testing::init::<Headers>(r#"{"response": {"set": {"Bad Name": "x"}}}"#).is_err());
        assert!(testing::init::<Headers>(r#"{"request": {"set": {"X": "a\r\nb"}}}"#).is_err());
        assert!(testing::init::<Headers>(r#"{"security": {"nope": true}}"#).is_err());
    }
}
