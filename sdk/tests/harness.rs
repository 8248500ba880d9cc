//! The SDK's native test harness, used on a filter that touches every part of the API.

use std::time::Duration;

use gatehouse_sdk::testing::{self, TestRequest, TestResponse};
use gatehouse_sdk::{
    Action, Filter, Hook, LocalResponse, LogEntry, Request, Response, counter, kv, log,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    limit: i64,
}

struct Limiter {
    limit: i64,
}

impl Filter for Limiter {
    type Config = Config;
    const HOOKS: &'static [Hook] = &[Hook::OnRequest, Hook::OnResponse];
    // `/rewrite` reads the body.
    const REQUEST_BODY: bool = true;

    fn new(config: Config) -> Result<Self, String> {
        if config.limit <= 0 {
            return Err("limit must be positive".into());
        }
        Ok(Limiter {
            limit: config.limit,
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        let client = req.client_ip().unwrap_or_default();
        let n = counter::incr_in_window(&client, 1, Duration::from_secs(60));
        if n > self.limit {
            log::warn(&format!("{client} over the limit"));
            return LocalResponse::new(429).header("retry-after", "60").into();
        }
        req.set_context("seen", &n.to_string());
        if req.path() == "/rewrite" {
            req.set_path("/rewritten").expect("valid path");
            req.set_body(req.body().expect("body").to_ascii_uppercase())
                .expect("set body");
        }
        Action::Continue
    }

    fn on_response(&self, req: &mut Request, resp: &mut Response) {
        let seen = req.context("seen").unwrap_or_default();
        resp.set_header("x-seen", seen).expect("valid header");
    }
}

fn limiter() -> Limiter {
    testing::reset();
    testing::init(r#"{"limit": 2}"#).expect("config")
}

#[test]
fn config_is_parsed_and_checked() {
    assert!(
        testing::init::<Limiter>(r#"{"limit": 0}"#)
            .err()
            .expect("error")
            .contains("positive")
    );
    let err = testing::init::<Limiter>(r#"{"limit": "many"}"#)
        .err()
        .expect("error");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn requests_are_counted_per_client_and_limited() {
    let f = limiter();
    for expected in 1..=2 {
        let mut req = TestRequest::get("/").with_client_ip("10.0.0.1");
        assert_eq!(testing::on_request(&f, &mut req), Action::Continue);
        assert_eq!(req.context["seen"], expected.to_string());
    }
    let mut req = TestRequest::get("/").with_client_ip("10.0.0.1");
    let Action::Respond(r) = testing::on_request(&f, &mut req) else {
        panic!("third request must be limited")
    };
    assert_eq!(r.status, 429);
    assert_eq!(
        testing::logs(),
        [("warn".to_string(), "10.0.0.1 over the limit".to_string())]
    );
    let mut other = TestRequest::get("/").with_client_ip("10.0.0.2");
    assert_eq!(testing::on_request(&f, &mut other), Action::Continue);
}

#[test]
fn request_changes_and_response_hook() {
    let f = limiter();
    let mut req = TestRequest::new("POST", "/rewrite?x=1").with_body("abc");
    assert_eq!(testing::on_request(&f, &mut req), Action::Continue);
    assert_eq!(
        (req.path.as_str(), req.query.as_deref()),
        ("/rewritten", Some("x=1"))
    );
    assert_eq!(req.body, b"ABC");
    let mut resp = TestResponse::new(200, "ok");
    assert!(testing::on_response(&f, &mut req, &mut resp), "declared");
    assert_eq!(resp.header("x-seen").as_deref(), Some("1"));
    let entry = LogEntry {
        status: 200,
        bytes_sent: 2,
        duration_us: 5,
        target: None,
    };
    assert!(
        !testing::on_log(&f, &mut req, &entry),
        "a hook HOOKS leaves out is not called"
    );
}

#[test]
fn kv_store_semantics() {
    testing::reset();
    assert!(kv::set("a", b"1", None));
    assert_eq!(kv::get("a").as_deref(), Some(&b"1"[..]));
    assert!(!kv::compare_and_swap("a", Some(b"2"), b"3", None));
    assert!(kv::compare_and_swap("a", Some(b"1"), b"3", None));
    assert!(kv::compare_and_swap("b", None, b"x", None));
    assert!(kv::delete("a"));
    assert!(!kv::delete("a"));
    assert!(kv::set("t", b"1", Some(Duration::ZERO)));
    assert_eq!(kv::get("t"), None, "expired at once");
}

#[test]
fn invalid_headers_and_statuses_are_errors() {
    struct Bad;
    impl Filter for Bad {
        type Config = serde_json::Value;
        fn new(_: serde_json::Value) -> Result<Self, String> {
            Ok(Bad)
        }
        fn on_response(&self, _: &mut Request, resp: &mut Response) {
            assert!(resp.set_header("bad name", "x").is_err());
            assert!(resp.set_header("x-ok", "line\r\nbreak").is_err());
            assert!(resp.set_status(42).is_err());
        }
    }
    let bad: Bad = testing::init("{}").expect("config");
    let mut req = TestRequest::get("/");
    let mut resp = TestResponse::new(200, "");
    assert!(testing::on_response(&bad, &mut req, &mut resp));
    assert!(resp.headers.is_empty());
    assert_eq!(resp.status, 200);
}

#[test]
fn a_filter_that_did_not_ask_for_the_body_gets_not_requested() {
    struct HeadOnly;
    impl Filter for HeadOnly {
        type Config = serde::de::IgnoredAny;
        fn new(_: serde::de::IgnoredAny) -> Result<Self, String> {
            Ok(HeadOnly)
        }
        fn on_request(&self, req: &mut Request) -> Action {
            match req.body() {
                Err(gatehouse_sdk::Error::BodyNotRequested) => Action::Continue,
                other => panic!("expected NotRequested, got {other:?}"),
            }
        }
    }
    let filter: HeadOnly = testing::init("{}").expect("config");
    let mut req = TestRequest::new("POST", "/").with_body("secret");
    assert!(matches!(
        testing::on_request(&filter, &mut req),
        Action::Continue
    ));
}
