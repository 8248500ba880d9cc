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
//! store. The plugin hands the host a rule (`rate::enforce`) when it starts, and the host applies
//! it to every request with no call into the plugin: it builds the key, moves the key's state in
//! one take (atomically under the store's lock, or by one script in Redis), so the limit is exact
//! across every event loop of the process (and across instances once the store is shared), and
//! sets the `RateLimit` fields or answers the refusal (429 with `Retry-After`, before any body is
//! read). Each key's state expires when its bucket is full again, and the store's byte budget
//! (least recently used first) bounds the key space whatever clients send.
//!
//! Why the host applies it: a call into the plugin for each request cost more than the whole
//! limit (`bench/results/profile.md`). The rule's wording (key, fields, refusal) is the
//! `gatehouse-rate` crate's, which the SDK's test harness applies the same way, so the tests
//! below exercise what the host does.

use std::time::Duration;

use gatehouse_sdk::rate::{self, Fields, KeyPart, Rule};
use gatehouse_sdk::{Filter, Hook, units};
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

/// The limiter: the rule lives in the host.
#[derive(Debug)]
pub struct RateLimit;

impl Filter for RateLimit {
    type Config = Config;
    // The host applies the rule: no hook is called.
    const HOOKS: &'static [Hook] = &[];

    fn new(config: Config) -> Result<Self, String> {
        rate::enforce(rule(config)?)?;
        Ok(RateLimit)
    }
}

gatehouse_sdk::export_filter!(RateLimit);

/// The rule a config asks for.
fn rule(config: Config) -> Result<Rule, String> {
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
        .map(|p| KeyPart::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    if key.is_empty() {
        return Err("key needs at least one part".into());
    }
    let status = config.status.unwrap_or(429);
    if !(400..=599).contains(&status) {
        return Err(format!("status must be 4xx or 5xx, not {status}"));
    }
    let name = config.name.unwrap_or_else(|| "default".into());
    // `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): quota and window, the same for
    // every response.
    let per_s = per.as_secs().max(1);
    let mut policy = format!("\"{name}\";q={};w={per_s}", config.rate);
    if config.burst > 0 {
        policy.push_str(&format!(";burst={}", config.burst));
    }
    Ok(Rule {
        key,
        interval_ns,
        tolerance_ns: interval_ns.saturating_mul(config.burst),
        status,
        fields: config
            .headers
            .unwrap_or(true)
            .then_some(Fields { name, policy }),
        limited_metric: Some("limited".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_sdk::Action;
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
