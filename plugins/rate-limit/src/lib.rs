//! `rate-limit`: requests per key per period with a burst, by the generic cell rate algorithm
//! (GCRA, what `governor` and Redis' `redis-cell` implement) over the host's key-value store.
//!
//! ```toml
//! [[plugins]]
//! use = "rate-limit"
//! [plugins.config]
//! rate = 10              # requests ...
//! per = "1s"             # ... per period (default 1s): one every 100 ms on average
//! burst = 20             # how many more may come at once (default 0)
//! key = ["ip"]           # what is limited: "ip", "host", "method", "path", "path:N" (the first
//!                        # N segments), "header:NAME"; several parts make one key
//! name = "default"       # the policy's name in the RateLimit headers
//! headers = true         # RateLimit-Policy and RateLimit on every response
//! ```
//!
//! One GCRA state per key: the theoretical arrival time of the next request, kept in the host's
//! store and moved by the host's `rate-take` in one call (atomically under the store's lock, or by
//! compare-and-swap in Redis), so the limit is exact across every event loop of the process (and
//! across instances once the store is shared). The `RateLimit` fields are set for the response
//! from `on-request`: the plugin is called once per request. A request over the limit gets 429
//! with `Retry-After` before any body is read. Each key's state expires when its bucket is full
//! again, and the store's byte budget (least recently used first) bounds the key space whatever
//! clients send.
//!
//! Why GCRA rather than a crate: `governor` keeps its state in process memory; the point here is
//! that the state lives in the host's store, shared by every loop and instance, so the few lines
//! of the algorithm are written against it (in the host: `store::gcra`).

use std::time::Duration;

use gatehouse_sdk::rate::{self, Rate};
use gatehouse_sdk::{Action, Filter, Hook, LocalResponse, Request, metrics, units};
use serde::Deserialize;

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    rate: u64,
    per: Option<units::Seconds>,
    #[serde(default)]
    burst: u64,
    key: Option<Vec<String>>,
    name: Option<String>,
    headers: Option<bool>,
    status: Option<u16>,
}

/// One part of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Ip,
    Host,
    Method,
    Path,
    PathSegments(usize),
    Header(String),
}

/// The limiter.
#[derive(Debug)]
pub struct RateLimit {
    /// Nanoseconds between requests at the steady rate.
    interval_ns: u64,
    /// How far ahead of now the theoretical arrival time may run (the burst).
    tolerance_ns: u64,
    /// `RateLimit-Policy`.
    policy: String,
    key: Vec<Part>,
    name: String,
    headers: bool,
    status: u16,
}

fn part(text: &str) -> Result<Part, String> {
    Ok(match text {
        "ip" => Part::Ip,
        "host" => Part::Host,
        "method" => Part::Method,
        "path" => Part::Path,
        other => {
            if let Some(n) = other.strip_prefix("path:") {
                let n: usize = n
                    .parse()
                    .map_err(|_| format!("key part {other:?}: expected path:N, N a number"))?;
                Part::PathSegments(n)
            } else if let Some(name) = other.strip_prefix("header:") {
                if name.is_empty() {
                    return Err("key part \"header:\" needs a header name".into());
                }
                Part::Header(name.to_ascii_lowercase())
            } else {
                return Err(format!(
                    "unknown key part {other:?}: expected ip, host, method, path, path:N or header:NAME"
                ));
            }
        }
    })
}

impl Filter for RateLimit {
    type Config = Config;
    // The `RateLimit` fields are set for the response in `on-request`: no call on the response.
    const HOOKS: &'static [Hook] = &[Hook::OnRequest];

    fn new(config: Config) -> Result<Self, String> {
        if config.rate == 0 {
            return Err("rate must be at least 1".into());
        }
        let per = config.per.map_or(Duration::from_secs(1), |s| s.0);
        let per_ns = u64::try_from(per.as_nanos()).unwrap_or(u64::MAX);
        if per_ns == 0 {
            return Err("per must be a positive duration".into());
        }
        let interval_ns = (per_ns / config.rate).max(1);
        let key = config
            .key
            .unwrap_or_else(|| vec!["ip".into()])
            .iter()
            .map(|p| part(p))
            .collect::<Result<Vec<_>, _>>()?;
        if key.is_empty() {
            return Err("key needs at least one part".into());
        }
        let status = config.status.unwrap_or(429);
        if !(400..=599).contains(&status) {
            return Err(format!("status must be 4xx or 5xx, not {status}"));
        }
        let name = config.name.unwrap_or_else(|| "default".into());
        let per_s = per.as_secs().max(1);
        let mut policy = format!("\"{name}\";q={};w={per_s}", config.rate);
        if config.burst > 0 {
            policy.push_str(&format!(";burst={}", config.burst));
        }
        Ok(RateLimit {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(config.burst),
            policy,
            key,
            name,
            headers: config.headers.unwrap_or(true),
            status,
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        let key = self.key_of(req);
        match self.take(&key) {
            Verdict::Allowed { remaining, reset_s } => {
                if self.headers {
                    let _ = req.set_response_headers(&[
                        ("ratelimit-policy", self.policy().as_bytes()),
                        ("ratelimit", self.state(remaining, reset_s).as_bytes()),
                    ]);
                }
                Action::Continue
            }
            Verdict::Limited { retry_after_s } => {
                metrics::add("limited", 1);
                let mut r = LocalResponse::new(self.status)
                    .text(format!("{} Too Many Requests\n", self.status))
                    .header("retry-after", retry_after_s.to_string());
                if self.headers {
                    r = r
                        .header("ratelimit-policy", self.policy())
                        .header("ratelimit", self.state(0, retry_after_s));
                }
                r.into()
            }
        }
    }
}

gatehouse_sdk::export_filter!(RateLimit);

/// What GCRA decided.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allowed { remaining: u64, reset_s: u64 },
    Limited { retry_after_s: u64 },
}

impl RateLimit {
    fn key_of(&self, req: &Request) -> String {
        let mut key = String::new();
        for (i, part) in self.key.iter().enumerate() {
            if i > 0 {
                key.push('\u{1f}');
            }
            match part {
                Part::Ip => key.push_str(&req.client_ip().unwrap_or_else(|| "unix".into())),
                Part::Host => key.push_str(req.host_name().unwrap_or("")),
                Part::Method => key.push_str(req.method()),
                Part::Path => key.push_str(req.path()),
                Part::PathSegments(n) => {
                    let path = req.path();
                    let end = path
                        .match_indices('/')
                        .nth(*n)
                        .map_or(path.len(), |(i, _)| i);
                    key.push_str(&path[..end]);
                }
                Part::Header(name) => key.push_str(&req.header(name).unwrap_or_default()),
            }
        }
        key
    }

    /// GCRA in the store, one host call: allowed if the theoretical arrival time is no further
    /// ahead of now than the burst allows; then it moves one interval on.
    fn take(&self, key: &str) -> Verdict {
        let interval = Duration::from_nanos(self.interval_ns);
        match rate::take(key, interval, Duration::from_nanos(self.tolerance_ns)) {
            Rate::Allowed { ahead } => {
                let ahead = u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX);
                let room = (self.tolerance_ns + self.interval_ns).saturating_sub(ahead);
                Verdict::Allowed {
                    remaining: room / self.interval_ns,
                    reset_s: ahead.div_ceil(1_000_000_000),
                }
            }
            Rate::Limited { retry_in } => Verdict::Limited {
                retry_after_s: retry_in.as_nanos().div_ceil(1_000_000_000).max(1) as u64,
            },
        }
    }

    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): quota and window; the same
    /// for every response, so made once.
    fn policy(&self) -> &str {
        &self.policy
    }

    /// `RateLimit`: what is left and when the key is whole again.
    fn state(&self, remaining: u64, reset_s: u64) -> String {
        format!("\"{}\";r={remaining};t={reset_s}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_sdk::testing::{self, TestRequest};

    fn limiter(config: &str) -> RateLimit {
        testing::reset();
        testing::init(config).expect("config")
    }

    fn status(f: &RateLimit, req: &mut TestRequest) -> u16 {
        match testing::on_request(f, req) {
            Action::Continue => 200,
            Action::Respond(r) => r.status,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let f = limiter(r#"{"rate": 2, "per": "1s", "burst": 3}"#);
        let mut req = TestRequest::get("/").with_client_ip("192.0.2.1");
        // burst + 1 at once, then nothing until an interval (500 ms) has passed.
        for i in 0..4 {
            assert_eq!(status(&f, &mut req), 200, "request {i}");
        }
        assert_eq!(status(&f, &mut req), 429);
        testing::advance(Duration::from_millis(500));
        assert_eq!(status(&f, &mut req), 200);
        assert_eq!(status(&f, &mut req), 429);
        // Another client has its own bucket.
        let mut other = TestRequest::get("/").with_client_ip("192.0.2.2");
        assert_eq!(status(&f, &mut other), 200);
        // After the whole burst's time the bucket is full again.
        testing::advance(Duration::from_secs(3));
        for _ in 0..4 {
            assert_eq!(status(&f, &mut req), 200);
        }
    }

    #[test]
    fn rates_above_a_thousand_a_second_are_kept_despite_the_millisecond_clock() {
        // Effectively unlimited: nothing is refused, however many requests share a millisecond.
        let f = limiter(r#"{"rate": 1000000000, "per": "1s"}"#);
        let mut req = TestRequest::get("/").with_client_ip("192.0.2.1");
        for i in 0..10_000 {
            assert_eq!(status(&f, &mut req), 200, "request {i}");
        }
        // 100 a millisecond: about that many pass in each one, and no more.
        let f = limiter(r#"{"rate": 100000, "per": "1s"}"#);
        let started = std::time::Instant::now();
        let allowed = (0..20_000).filter(|_| status(&f, &mut req) == 200).count();
        let ms = started.elapsed().as_millis() as usize;
        assert!(allowed >= 100, "{allowed} allowed");
        assert!(allowed <= 100 * (ms + 2), "{allowed} allowed in {ms} ms");
    }

    #[test]
    fn a_refusal_says_when_to_come_back_and_headers_say_what_is_left() {
        let f = limiter(r#"{"rate": 1, "per": "10s", "name": "api"}"#);
        let mut req = TestRequest::get("/").with_client_ip("192.0.2.1");
        assert_eq!(status(&f, &mut req), 200);
        let mut resp = testing::TestResponse::new(200, "ok");
        testing::on_response(&f, &mut req, &mut resp);
        assert_eq!(
            resp.header("ratelimit-policy").as_deref(),
            Some("\"api\";q=1;w=10")
        );
        assert_eq!(
            resp.header("ratelimit").as_deref(),
            Some("\"api\";r=0;t=10")
        );
        match testing::on_request(&f, &mut req) {
            Action::Respond(r) => {
                assert_eq!(r.status, 429);
                let retry = r
                    .headers
                    .iter()
                    .find(|(n, _)| n == "retry-after")
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                assert_eq!(retry.as_deref(), Some("10"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(testing::metric("limited"), 1);
    }

    #[test]
    fn without_headers_the_response_is_not_visited() {
        let f = limiter(r#"{"rate": 1, "per": "10s", "headers": false}"#);
        let mut req = TestRequest::get("/").with_client_ip("192.0.2.1");
        assert_eq!(status(&f, &mut req), 200);
        let mut resp = testing::TestResponse::new(200, "ok");
        assert!(!testing::on_response(&f, &mut req, &mut resp));
        assert_eq!(resp.header("ratelimit"), None);
        assert_eq!(status(&f, &mut req), 429, "still limited");
    }

    #[test]
    fn keys_combine_parts() {
        let f = limiter(r#"{"rate": 1, "per": "1m", "key": ["header:x-api-key", "path:1"]}"#);
        let mut a = TestRequest::get("/v1/users").with_header("x-api-key", "a");
        assert_eq!(status(&f, &mut a), 200);
        let mut a_same_prefix = TestRequest::get("/v1/orders").with_header("x-api-key", "a");
        assert_eq!(status(&f, &mut a_same_prefix), 429, "same key: /v1 and a");
        let mut a_other_prefix = TestRequest::get("/v2/orders").with_header("x-api-key", "a");
        assert_eq!(status(&f, &mut a_other_prefix), 200);
        let mut b = TestRequest::get("/v1/users").with_header("x-api-key", "b");
        assert_eq!(status(&f, &mut b), 200);
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        assert!(testing::init::<RateLimit>(r#"{"rate": 0}"#).is_err());
        assert!(testing::init::<RateLimit>(r#"{"rate": 1, "key": ["cookie"]}"#).is_err());
        assert!(testing::init::<RateLimit>(r#"{"rate": 1, "per": "0s"}"#).is_err());
        assert!(testing::init::<RateLimit>(r#"{"rate": 1, "per": "1 fortnight"}"#).is_err());
    }
}
