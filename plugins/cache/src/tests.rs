//! The cache through the SDK's native harness: requests and responses as the host would pass
//! them, the store in memory, the clock moved by hand.

use std::time::Duration;

use gatehouse_sdk::testing::{self, TestRequest, TestResponse};
use gatehouse_sdk::{Action, LocalResponse};

use super::Cache;

fn cache(config: &str) -> Cache {
    testing::reset();
    testing::init(config).expect("config")
}

fn get(path: &str) -> TestRequest {
    TestRequest::get(path).with_header("host", "example.com")
}

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> TestResponse {
    let mut r = TestResponse::new(status, body);
    r.headers = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
    r
}

/// Sends `req` through the cache: the stored answer if it made one, else the target's `origin`
/// response after the cache's on-response.
fn exchange(
    cache: &Cache,
    req: &mut TestRequest,
    origin: impl FnOnce(&TestRequest) -> TestResponse,
) -> (TestResponse, bool) {
    match testing::on_request(cache, req) {
        Action::Respond(LocalResponse {
            status,
            headers,
            body,
        }) => {
            let mut resp = TestResponse::new(status, body);
            resp.headers = headers;
            (resp, true)
        }
        Action::Continue => {
            let mut resp = origin(req);
            testing::on_response(cache, req, &mut resp);
            (resp, false)
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn fetch(cache: &Cache, path: &str, origin: &TestResponse) -> (TestResponse, bool) {
    exchange(cache, &mut get(path), |_| origin.clone())
}

#[test]
fn a_fresh_response_is_served_from_the_store_with_its_age() {
    let c = cache("{}");
    let origin = response(
        200,
        &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
        "hello",
    );
    let (first, cached) = fetch(&c, "/a", &origin);
    assert!(!cached);
    assert_eq!(first.header("x-cache").as_deref(), Some("MISS"));
    assert!(
        first
            .header("cache-status")
            .unwrap_or_default()
            .contains("stored")
    );
    testing::advance(Duration::from_secs(5));
    let (second, cached) = fetch(&c, "/a", &origin);
    assert!(cached, "served from the store");
    assert_eq!(second.body, b"hello");
    assert_eq!(second.header("age").as_deref(), Some("5"));
    assert_eq!(second.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(second.header("etag").as_deref(), Some("\"v1\""));
    // Another query is another URL.
    assert!(!fetch(&c, "/a?x=1", &origin).1);
    // Past max-age it is stale: the request goes on, with the stored validator.
    testing::advance(Duration::from_secs(60));
    let mut req = get("/a");
    let (_, cached) = exchange(&c, &mut req, |r| {
        assert_eq!(r.header("if-none-match").as_deref(), Some("\"v1\""));
        response(304, &[("cache-control", "max-age=60"), ("x-new", "1")], "")
    });
    assert!(!cached);
    // The 304 refreshed it: fresh again, with the new field.
    let (third, cached) = fetch(&c, "/a", &origin);
    assert!(cached);
    assert_eq!(third.body, b"hello");
    assert_eq!(third.header("x-new").as_deref(), Some("1"));
}

#[test]
fn a_304_during_revalidation_becomes_the_stored_response_for_the_client() {
    let c = cache("{}");
    let origin = response(
        200,
        &[
            ("cache-control", "max-age=1"),
            ("etag", "\"v1\""),
            ("content-type", "text/plain"),
        ],
        "body",
    );
    fetch(&c, "/r", &origin);
    testing::advance(Duration::from_secs(3));
    let mut req = get("/r");
    let (resp, _) = exchange(&c, &mut req, |_| {
        response(
            304,
            &[("cache-control", "max-age=10"), ("etag", "\"v2\"")],
            "",
        )
    });
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"body");
    assert_eq!(resp.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(
        resp.header("etag").as_deref(),
        Some("\"v1\""),
        "ETag is not updated by a 304"
    );
    assert_eq!(resp.header("x-cache").as_deref(), Some("REVALIDATED"));
    // The client's own conditional is answered from the refreshed entry.
    testing::advance(Duration::from_secs(11));
    let mut req = get("/r").with_header("if-none-match", "\"v1\"");
    let (resp, _) = exchange(&c, &mut req, |r| {
        assert_eq!(r.header("if-none-match").as_deref(), Some("\"v1\""));
        response(304, &[("cache-control", "max-age=10")], "")
    });
    assert_eq!(resp.status, 304);
    assert!(resp.body.is_empty());
}

#[test]
fn what_must_not_be_stored_is_not() {
    let c = cache("{}");
    for (path, headers) in [
        ("/no-store", vec![("cache-control", "max-age=60, no-store")]),
        ("/private", vec![("cache-control", "max-age=60, private")]),
        (
            "/cookie",
            vec![("cache-control", "max-age=60"), ("set-cookie", "a=1")],
        ),
        (
            "/vary-star",
            vec![("cache-control", "max-age=60"), ("vary", "*")],
        ),
        ("/no-info", vec![]),
    ] {
        let origin = response(200, &headers, "x");
        fetch(&c, path, &origin);
        assert!(!fetch(&c, path, &origin).1, "{path} was stored");
    }
    // A 403 has no heuristic freshness: with Last-Modified alone it is not stored.
    let origin = response(
        403,
        &[("last-modified", "Sun, 09 Sep 2001 01:46:40 GMT")],
        "x",
    );
    fetch(&c, "/403", &origin);
    assert!(!fetch(&c, "/403", &origin).1);
    // A request with Authorization: only with public, must-revalidate or s-maxage.
    let origin = response(200, &[("cache-control", "max-age=60")], "x");
    let mut req = get("/auth").with_header("authorization", "Basic eDp5");
    exchange(&c, &mut req, |_| origin.clone());
    assert!(!fetch(&c, "/auth", &origin).1);
    let public = response(200, &[("cache-control", "max-age=60, public")], "x");
    let mut req = get("/auth-public").with_header("authorization", "Basic eDp5");
    exchange(&c, &mut req, |_| public.clone());
    assert!(fetch(&c, "/auth-public", &public).1);
    // Configured: Set-Cookie responses are stored.
    let c = cache(r#"{"store_set_cookie": true}"#);
    let origin = response(
        200,
        &[("cache-control", "max-age=60"), ("set-cookie", "a=1")],
        "x",
    );
    fetch(&c, "/cookie", &origin);
    assert!(fetch(&c, "/cookie", &origin).1);
}

#[test]
fn vary_selects_a_variant_per_request_field_value() {
    let c = cache("{}");
    let origin = |lang: &'static str| {
        move |_: &TestRequest| {
            response(
                200,
                &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
                lang,
            )
        }
    };
    let mut en = get("/v").with_header("accept-language", "en");
    exchange(&c, &mut en, origin("en"));
    let mut de = get("/v").with_header("accept-language", "de");
    let (resp, cached) = exchange(&c, &mut de, origin("de"));
    assert!(!cached && resp.body == b"de");
    let mut en = get("/v").with_header("accept-language", "en");
    let (resp, cached) = exchange(&c, &mut en, origin("xx"));
    assert!(cached);
    assert_eq!(resp.body, b"en");
    let mut none = get("/v");
    assert!(
        !exchange(&c, &mut none, origin("none")).1,
        "an absent field is its own variant"
    );
}

#[test]
fn a_response_that_varies_on_the_surrogate_capability_is_reused() {
    // The cache announces itself to the target (Surrogate-Capability); a target that varies on
    // it stored a variant for that value, which later lookups must select.
    let c = cache("{}");
    let origin = response(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("vary", "Surrogate-Capability"),
        ],
        "esi",
    );
    let mut first = get("/esi");
    let (_, cached) = exchange(&c, &mut first, |req| {
        assert!(req.header("surrogate-capability").is_some());
        origin.clone()
    });
    assert!(!cached);
    assert!(fetch(&c, "/esi", &origin).1, "the second is a hit");
}

#[test]
fn unsafe_methods_invalidate_the_url_and_its_locations() {
    let c = cache("{}");
    let origin = response(200, &[("cache-control", "max-age=60")], "x");
    fetch(&c, "/item", &origin);
    fetch(&c, "/other", &origin);
    let mut failed = TestRequest::new("POST", "/item").with_header("host", "example.com");
    exchange(&c, &mut failed, |_| response(500, &[], ""));
    assert!(
        fetch(&c, "/item", &origin).1,
        "a failed POST invalidates nothing"
    );
    let mut post = TestRequest::new("POST", "/item").with_header("host", "example.com");
    exchange(&c, &mut post, |_| {
        response(201, &[("location", "http://example.com/other")], "")
    });
    assert!(!fetch(&c, "/item", &origin).1);
    assert!(!fetch(&c, "/other", &origin).1);
}

#[test]
fn conditional_and_range_requests_are_answered_from_the_store() {
    let c = cache("{}");
    let origin = response(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("etag", "W/\"x\""),
            ("last-modified", "Sun, 09 Sep 2001 01:46:40 GMT"),
        ],
        "0123456789",
    );
    fetch(&c, "/f", &origin);
    let mut req = get("/f").with_header("if-none-match", "\"a\", W/\"x\"");
    let (resp, cached) = exchange(&c, &mut req, |_| origin.clone());
    assert!(cached);
    assert_eq!(resp.status, 304);
    assert_eq!(resp.header("etag").as_deref(), Some("W/\"x\""));
    let mut req = get("/f").with_header("if-modified-since", "Sun, 09 Sep 2001 01:46:40 GMT");
    assert_eq!(exchange(&c, &mut req, |_| origin.clone()).0.status, 304);
    let mut req = get("/f").with_header("range", "bytes=2-4");
    let (resp, _) = exchange(&c, &mut req, |_| origin.clone());
    assert_eq!(resp.status, 206);
    assert_eq!(resp.body, b"234");
    assert_eq!(
        resp.header("content-range").as_deref(),
        Some("bytes 2-4/10")
    );
}

#[test]
fn stale_responses_are_served_only_where_allowed() {
    let c = cache("{}");
    let origin = response(
        200,
        &[
            ("cache-control", "max-age=1, stale-if-error=60"),
            ("etag", "\"e\""),
        ],
        "old",
    );
    fetch(&c, "/sie", &origin);
    testing::advance(Duration::from_secs(5));
    let mut req = get("/sie");
    let (resp, _) = exchange(&c, &mut req, |_| response(503, &[], "down"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"old");
    assert_eq!(resp.header("x-cache").as_deref(), Some("STALE"));

    let strict = response(
        200,
        &[
            (
                "cache-control",
                "max-age=1, stale-if-error=60, must-revalidate",
            ),
            ("etag", "\"e\""),
        ],
        "old",
    );
    fetch(&c, "/strict", &strict);
    testing::advance(Duration::from_secs(5));
    let mut req = get("/strict");
    assert_eq!(
        exchange(&c, &mut req, |_| response(503, &[], "down"))
            .0
            .status,
        503
    );

    // stale-while-revalidate: one request revalidates, the others get the stale copy meanwhile.
    let swr = response(
        200,
        &[
            ("cache-control", "max-age=1, stale-while-revalidate=60"),
            ("etag", "\"e\""),
        ],
        "old",
    );
    fetch(&c, "/swr", &swr);
    testing::advance(Duration::from_secs(5));
    let mut first = get("/swr");
    assert_eq!(testing::on_request(&c, &mut first), Action::Continue);
    let (resp, cached) = fetch(&c, "/swr", &swr);
    assert!(cached);
    assert_eq!(resp.header("x-cache").as_deref(), Some("UPDATING"));
}

#[test]
fn request_directives_are_honoured() {
    let c = cache("{}");
    let origin = response(200, &[("cache-control", "max-age=60")], "x");
    fetch(&c, "/d", &origin);
    let mut req = get("/d").with_header("cache-control", "no-cache");
    assert!(!exchange(&c, &mut req, |_| origin.clone()).1);
    testing::advance(Duration::from_secs(10));
    let mut req = get("/d").with_header("cache-control", "max-age=5");
    assert!(!exchange(&c, &mut req, |_| origin.clone()).1);
    let mut req = get("/missing").with_header("cache-control", "only-if-cached");
    assert_eq!(exchange(&c, &mut req, |_| origin.clone()).0.status, 504);
}

#[test]
fn purge_is_for_configured_clients_only() {
    let c = cache(r#"{"purge_from": ["10.0.0.0/8"]}"#);
    let origin = response(200, &[("cache-control", "max-age=60")], "x");
    fetch(&c, "/p", &origin);
    let mut outsider = TestRequest::new("PURGE", "/p")
        .with_header("host", "example.com")
        .with_client_ip("192.0.2.1");
    assert!(
        matches!(testing::on_request(&c, &mut outsider), Action::Respond(r) if r.status == 403)
    );
    let mut admin = TestRequest::new("PURGE", "/p")
        .with_header("host", "example.com")
        .with_client_ip("10.1.2.3");
    assert!(matches!(testing::on_request(&c, &mut admin), Action::Respond(r) if r.status == 200));
    assert!(!fetch(&c, "/p", &origin).1);
}

#[test]
fn bad_configs_are_refused() {
    assert!(testing::init::<Cache>(r#"{"purge_from": ["nope"]}"#).is_err());
    assert!(testing::init::<Cache>(r#"{"heuristic_fraction": 2}"#).is_err());
    assert!(testing::init::<Cache>(r#"{"max_entry_size": "1XB"}"#).is_err());
    assert!(testing::init::<Cache>(r#"{"colour": "red"}"#).is_err());
}

#[test]
fn a_body_over_max_entry_size_passes_through_unstored() {
    let c = cache(r#"{"max_entry_size": 4}"#);
    let origin = response(200, &[("cache-control", "max-age=60")], "too long");
    let (resp, _) = fetch(&c, "/big", &origin);
    assert_eq!(resp.body, b"too long");
    assert!(!fetch(&c, "/big", &origin).1);
}

#[test]
fn concurrent_misses_collapse_into_one_fetch() {
    let c = cache("{}");
    let origin = response(200, &[("cache-control", "max-age=60")], "once");
    let mut first = get("/c");
    assert_eq!(testing::on_request(&c, &mut first), Action::Continue);
    assert_eq!(first.waiting, None, "the first miss fetches");
    let mut second = get("/c");
    assert_eq!(testing::on_request(&c, &mut second), Action::Continue);
    let (key, timeout) = second.waiting.clone().expect("the second waits");
    assert_eq!(timeout, 5000);
    // The first one's response is stored and wakes the waiters; the second then finds it.
    let mut resp = origin.clone();
    testing::on_response(&c, &mut first, &mut resp);
    assert_eq!(testing::notified(), vec![key]);
    match testing::on_request(&c, &mut second) {
        Action::Respond(r) => {
            assert_eq!(r.body, b"once");
            // Its own on-response (the responder's runs too) leaves the hit a hit.
            let mut answer = TestResponse::new(r.status, r.body);
            answer.headers = r.headers;
            testing::on_response(&c, &mut second, &mut answer);
            assert_eq!(answer.header("x-cache").as_deref(), Some("HIT"));
        }
        other => panic!("{other:?}"),
    }

    // A wait the host ignores (past its limit of waits per request): the request goes on as an
    // ordinary miss, and its response is stored.
    let mut first = get("/w");
    testing::on_request(&c, &mut first);
    let mut ignored = get("/w");
    testing::on_request(&c, &mut ignored);
    assert!(ignored.waiting.is_some());
    let mut resp = response(200, &[("cache-control", "max-age=60")], "w");
    testing::on_response(&c, &mut ignored, &mut resp);
    assert_eq!(resp.header("x-cache").as_deref(), Some("MISS"));
    assert!(
        resp.header("cache-status")
            .unwrap_or_default()
            .contains("stored")
    );

    // A response that cannot be stored: the waiters go on themselves, and for a while the URL's
    // misses do not wait at all (nothing would come of it).
    let mut first = get("/private");
    testing::on_request(&c, &mut first);
    let mut second = get("/private");
    testing::on_request(&c, &mut second);
    assert!(second.waiting.is_some());
    let mut resp = response(200, &[("cache-control", "private")], "mine");
    testing::on_response(&c, &mut first, &mut resp);
    assert_eq!(testing::on_request(&c, &mut second), Action::Continue);
    assert_eq!(second.waiting, None, "after one wait it goes on");
    let mut third = get("/private");
    testing::on_request(&c, &mut third);
    assert_eq!(third.waiting, None, "hit-for-miss: no waiting");
}

#[test]
fn a_plain_hit_leaves_the_same_answer_with_the_host_and_a_request_to_judge_does_not() {
    let c = cache("{}");
    let origin = response(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("age", "3"),
            ("content-type", "text/plain"),
        ],
        "hello",
    );
    let mut miss = get("/a");
    fetch_with(&c, &mut miss, &origin);
    assert_eq!(miss.offered, None, "a miss has nothing to offer");
    testing::advance(Duration::from_secs(5));

    let mut hit = get("/a");
    let (served, cached) = fetch_with(&c, &mut hit, &origin);
    assert!(cached);
    let answer = hit.offered.expect("a plain hit offers its answer");
    // What the host will send is what the plugin sent, but for the fields it computes per answer.
    let without = |headers: &[(String, Vec<u8>)]| {
        let mut kept: Vec<_> = headers
            .iter()
            .filter(|(n, _)| !["age", "cache-status", "content-length"].contains(&n.as_str()))
            .cloned()
            .collect();
        kept.sort();
        kept
    };
    assert_eq!(without(&answer.response.headers), without(&served.headers));
    assert_eq!(
        (answer.response.status, &answer.response.body[..]),
        (200, &b"hello"[..])
    );
    assert_eq!(answer.lifetime_ms, 60_000);
    // The age the host computes at any moment is the plugin's: 3 s on arrival, 5 s since.
    let now = gatehouse_sdk::clock::now_ms();
    assert_eq!(
        (answer.initial_age_ms + (now - answer.response_time_ms)) / 1000,
        8
    );
    assert_eq!(served.header("age").as_deref(), Some("8"));
    assert_eq!(answer.cache_status.as_deref(), Some("gatehouse; hit"));
    assert!(answer.depends_on.iter().any(|k| k.starts_with("idx:")));
    for name in ["cache-control", "authorization", "if-none-match", "range"] {
        assert!(
            answer.consult_if_present.iter().any(|n| n == name),
            "{name}"
        );
    }

    // A request with a field the plugin judges is served, but leaves no answer.
    let mut conditional = get("/a").with_header("if-none-match", "\"x\"");
    let (_, cached) = fetch_with(&c, &mut conditional, &origin);
    assert!(cached);
    assert_eq!(conditional.offered, None);
}

#[test]
fn a_variant_is_left_with_the_host_with_the_fields_that_select_it() {
    let c = cache("{}");
    let origin = response(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("vary", "Accept-Encoding, X-Lang"),
        ],
        "hello",
    );
    fetch_with(
        &c,
        &mut get("/v").with_header("accept-encoding", "gzip"),
        &origin,
    );
    let mut hit = get("/v").with_header("accept-encoding", "gzip");
    let (_, cached) = fetch_with(&c, &mut hit, &origin);
    assert!(cached);
    let answer = hit.offered.expect("offered");
    assert_eq!(answer.vary, ["accept-encoding", "x-lang"]);
    // Made from the URL's index of Vary names and the variant itself: both must stay.
    assert_eq!(answer.depends_on.len(), 2, "{:?}", answer.depends_on);
    assert!(answer.depends_on[0].starts_with("idx:"));
    assert!(answer.depends_on[1].starts_with("ent:"));
}

fn fetch_with(cache: &Cache, req: &mut TestRequest, origin: &TestResponse) -> (TestResponse, bool) {
    exchange(cache, req, |_| origin.clone())
}
