//! The `cache` plugin through the binary, in front of a real WSGI app: hits never reach Python
//! and never read a request body; what is too large to store passes through whole.

use std::time::{Duration, Instant};

use gatehouse_tests::{Gatehouse, admin_metric as metric, client};

const APP: &str = r#"
import itertools, time
count = itertools.count(1)

def app(environ, start_response):
    n = next(count)
    path = environ["PATH_INFO"]
    if path == "/slow":
        time.sleep(1)
    if path == "/big":
        body = b"x" * (3 * 1024 * 1024)
        start_response("200 OK", [("Cache-Control", "max-age=60"), ("X-Count", str(n)),
                                  ("Content-Length", str(len(body)))])
        return [body]
    max_age = 3 if path == "/short" else 60
    headers = [("Cache-Control", "max-age=%d" % max_age), ("X-Count", str(n)),
               ("Content-Type", "text/plain")]
    if path.startswith("/news/") or path == "/front":
        headers.append(("Surrogate-Key", "news " + path.strip("/").replace("/", "-")))
    start_response("200 OK", headers)
    return [("%s %d" % (path, n)).encode()]
"#;

fn serve() -> (tempfile::TempDir, Gatehouse) {
    serve_with("")
}

fn serve_with(cache_config: &str) -> (tempfile::TempDir, Gatehouse) {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("counted.py"), APP).expect("app");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[targets.app]\nwsgi = \"counted:app\"\nchdir = \"{}\"\nworkers = 1\nthreads = 8\n\
         [[plugins]]\nuse = \"cache\"\n{cache_config}",
        dir.path().display()
    );
    let gh = Gatehouse::start(dir.path(), &config);
    (dir, gh)
}

fn get(gh: &Gatehouse, path: &str) -> (String, String, usize) {
    let r = client().get(gh.url(path)).send().expect("get");
    assert_eq!(r.status(), 200);
    let x_cache = r
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let count = r
        .headers()
        .get("x-count")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let len = r.bytes().expect("body").len();
    (x_cache, count, len)
}

#[test]
fn hits_are_answered_on_the_head_without_python_and_unsafe_methods_invalidate() {
    let (_dir, gh) = serve();
    assert_eq!(get(&gh, "/a"), ("MISS".into(), "1".into(), 4));
    assert_eq!(
        get(&gh, "/a"),
        ("HIT".into(), "1".into(), 4),
        "Python did not run"
    );

    // A hit does not wait for a body the client announces and never sends.
    let started = Instant::now();
    let exchange = gh.raw(
        b"GET /a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&exchange.bytes).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-count: 1"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited for the body"
    );

    // A successful POST to the URL invalidates it: the next GET reaches the app.
    let r = client().post(gh.url("/a")).body("x").send().expect("post");
    assert_eq!(r.status(), 200, "{:?}", r.text());
    assert_eq!(get(&gh, "/a"), ("MISS".into(), "3".into(), 4));
    assert_eq!(get(&gh, "/a").0, "HIT");
}

fn age(r: &reqwest::blocking::Response) -> u64 {
    r.headers()
        .get("age")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("an age")
}

#[test]
fn plain_hits_are_answered_by_the_host_without_the_plugin_while_fresh_and_unchanged() {
    let (_dir, gh) = serve();
    let calls = || {
        metric(
            &gh,
            "gatehouse_plugin_calls_total{plugin=\"cache\",hook=\"on-request\"}",
        )
    };
    let hits = || metric(&gh, "gatehouse_plugin_total{plugin=\"cache\",name=\"hit\"}");
    assert_eq!(get(&gh, "/a").0, "MISS");
    assert_eq!(get(&gh, "/a").0, "HIT");
    assert_eq!(
        (calls(), hits()),
        (2.0, 1.0),
        "the first hit is the plugin's"
    );
    for _ in 0..5 {
        assert_eq!(get(&gh, "/a"), ("HIT".into(), "1".into(), 4));
    }
    let head = client().head(gh.url("/a")).send().expect("head");
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "4");
    assert_eq!(
        (calls(), hits()),
        (2.0, 7.0),
        "the host answered, and counted them"
    );

    // The host's answer ages as the plugin's would, and says how long it stays fresh.
    std::thread::sleep(Duration::from_millis(1100));
    let r = client().get(gh.url("/a")).send().expect("get");
    assert!(age(&r) >= 1, "{:?}", r.headers());
    let status = r.headers()["cache-status"]
        .to_str()
        .expect("text")
        .to_string();
    assert!(status.starts_with("gatehouse; hit; ttl=5"), "{status}");
    assert_eq!(calls(), 2.0);

    // A request with a field the plugin must judge goes to it: here, to revalidate.
    let r = client()
        .get(gh.url("/a"))
        .header("cache-control", "no-cache")
        .send()
        .expect("get");
    assert_eq!(r.headers()["x-count"], "2", "the app was asked again");
    assert_eq!(calls(), 3.0);

    // A stale entry is the plugin's again: its answer ends with its freshness.
    assert_eq!(get(&gh, "/short").0, "MISS");
    assert_eq!(get(&gh, "/short").0, "HIT");
    assert_eq!(get(&gh, "/short").0, "HIT");
    let before = calls();
    // Three seconds of freshness: room for a loaded machine between the miss and the two hits.
    std::thread::sleep(Duration::from_millis(3200));
    let (x_cache, count, _) = get(&gh, "/short");
    assert_ne!(x_cache, "HIT");
    assert_eq!(count, "4", "fetched again");
    assert_eq!(calls(), before + 1.0);
}

#[test]
fn the_host_gives_each_client_the_variant_its_fields_select() {
    // Static files vary by Accept-Encoding (a precompressed sibling for clients that take gzip).
    let dir = gatehouse_tests::site(&[("a.txt", b"plain text"), ("a.txt.gz", b"gzipped!")]);
    let config = "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                  [targets.site]\nstatic = \"site\"\n[[plugins]]\nuse = \"cache\"\n\
                  [[plugins]]\nuse = \"headers\"\n[plugins.config.response]\n\
                  set = { \"Cache-Control\" = \"max-age=60\" }\n";
    let gh = Gatehouse::start(dir.path(), config);
    // No decoding in the client: the bytes show which variant came.
    let c = reqwest::blocking::Client::builder()
        .no_gzip()
        .build()
        .expect("client");
    let fetch = |encoding: Option<&str>| {
        let mut r = c.get(gh.url("/a.txt"));
        if let Some(encoding) = encoding {
            r = r.header("accept-encoding", encoding);
        }
        let r = r.send().expect("get");
        let x_cache = r.headers()["x-cache"].to_str().expect("text").to_string();
        (x_cache, r.text().expect("body"))
    };
    // Each variant: a miss, then the plugin's hit, which leaves the answer with the host.
    for _ in 0..2 {
        fetch(Some("gzip"));
        fetch(None);
        fetch(Some("br"));
    }
    let calls = metric(
        &gh,
        "gatehouse_plugin_calls_total{plugin=\"cache\",hook=\"on-request\"}",
    );
    for _ in 0..4 {
        assert_eq!(fetch(Some("gzip")), ("HIT".into(), "gzipped!".into()));
        assert_eq!(fetch(None), ("HIT".into(), "plain text".into()));
        assert_eq!(fetch(Some("br")), ("HIT".into(), "plain text".into()));
    }
    let after = metric(
        &gh,
        "gatehouse_plugin_calls_total{plugin=\"cache\",hook=\"on-request\"}",
    );
    assert_eq!(after, calls, "the host answered every one");
}

#[test]
fn a_response_larger_than_a_plugin_may_buffer_streams_through_unstored() {
    let (_dir, gh) = serve();
    // 3 MiB, past plugin_body_size (1 MiB): delivered whole, not stored, not a 500.
    assert_eq!(get(&gh, "/big"), ("MISS".into(), "1".into(), 3 << 20));
    assert_eq!(get(&gh, "/big"), ("MISS".into(), "2".into(), 3 << 20));
    assert_eq!(get(&gh, "/small").0, "MISS");
    assert_eq!(get(&gh, "/small").0, "HIT");
}

#[test]
fn concurrent_misses_of_one_url_reach_the_app_once() {
    let (_dir, gh) = serve();
    let gh = &gh;
    let answers: Vec<(String, String, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(move || get(gh, "/slow"))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    let counts: Vec<&str> = answers.iter().map(|a| a.1.as_str()).collect();
    assert!(
        counts.iter().all(|c| *c == "1"),
        "the app ran more than once: {counts:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| a.0 == "MISS").count(),
        1,
        "{answers:?}"
    );
}

fn purge(gh: &Gatehouse, path: &str, keys: Option<&str>) -> (u16, String) {
    let mut r = client().request(
        reqwest::Method::from_bytes(b"PURGE").expect("method"),
        gh.url(path),
    );
    if let Some(keys) = keys {
        r = r.header("surrogate-key", keys);
    }
    let r = r.send().expect("purge");
    (r.status().as_u16(), r.text().expect("body"))
}

#[test]
fn purges_by_url_prefix_and_tag_from_allowed_addresses() {
    let (_dir, gh) = serve_with("[plugins.config]\npurge_from = [\"127.0.0.1/32\"]\n");
    let paths = ["/a/1", "/a/2", "/ab", "/b", "/news/1", "/news/2", "/front"];
    for path in paths {
        assert_eq!(get(&gh, path).0, "MISS", "{path}");
        assert_eq!(get(&gh, path).0, "HIT", "{path}");
    }

    // One URL.
    assert_eq!(purge(&gh, "/b", None).0, 200);
    assert_eq!(purge(&gh, "/b", None).0, 404, "already gone");
    assert_eq!(get(&gh, "/b").0, "MISS");

    // A prefix: the URLs below it, not a sibling that merely shares its letters.
    let (status, text) = purge(&gh, "/a/*", None);
    assert_eq!(status, 200, "{text}");
    assert_eq!(get(&gh, "/a/1").0, "MISS");
    assert_eq!(get(&gh, "/a/2").0, "MISS");
    assert_eq!(get(&gh, "/ab").0, "HIT");
    // Entries fetched within a second of a purge count as before it (instances sharing a store
    // may disagree on the time that much); one fetched later is stored for good.
    std::thread::sleep(Duration::from_millis(1100));
    get(&gh, "/a/1");
    assert_eq!(get(&gh, "/a/1").0, "HIT", "stored again after the purge");

    // A tag named by the responses' Surrogate-Key.
    let (status, text) = purge(&gh, "/", Some("news-1"));
    assert_eq!(status, 200, "{text}");
    assert_eq!(get(&gh, "/news/1").0, "MISS");
    assert_eq!(get(&gh, "/news/2").0, "HIT");
    assert_eq!(purge(&gh, "/", Some("news")).0, 200);
    for path in ["/news/1", "/news/2", "/front"] {
        assert_eq!(get(&gh, path).0, "MISS", "{path}");
    }
    assert_eq!(get(&gh, "/ab").0, "HIT", "untagged entries stay");
}

#[test]
fn purges_are_refused_from_other_addresses() {
    let (_dir, gh) = serve_with("[plugins.config]\npurge_from = [\"192.0.2.0/24\"]\n");
    assert_eq!(get(&gh, "/a/1").0, "MISS");
    assert_eq!(purge(&gh, "/a/*", None).0, 403);
    assert_eq!(purge(&gh, "/", Some("news")).0, 403);
    assert_eq!(get(&gh, "/a/1").0, "HIT");
}
