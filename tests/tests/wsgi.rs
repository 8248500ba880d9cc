//! The `wsgi` target through the real binary: PEP 3333 behaviour, real Flask and Django apps, the
//! interpreter choice, and what clients see when workers crash, hang or are overloaded.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gatehouse_tests::{Gatehouse, apps_dir, client, read_until_close};
use reqwest::StatusCode;
use serde_json::Value;

/// A config with one WSGI target named `app` over `tests/apps`, plus `extra` target settings.
fn wsgi_config(app: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nwsgi = \"{app}\"\nchdir = \"{}\"\n{extra}\n",
        apps_dir().display()
    )
}

struct Served {
    gh: Gatehouse,
    marks: tempfile::TempDir,
}

fn serve(app: &str, extra: &str) -> Served {
    let marks = tempfile::tempdir().expect("tmp");
    let marks_path = marks.path().display().to_string();
    // Spooled request bodies go here, so tests can see them come and go.
    let tmp = marks.path().join("tmp");
    std::fs::create_dir_all(&tmp).expect("mkdir");
    let tmp = tmp.display().to_string();
    let env = [
        ("GATEHOUSE_TEST_MARKS", marks_path.as_str()),
        ("TMPDIR", tmp.as_str()),
    ];
    let gh = Gatehouse::start_with_env(marks.path(), &wsgi_config(app, extra), &env);
    Served { gh, marks }
}

/// Both ways a worker reads requests: one thread that reads the socket itself, and several with a
/// reader thread handing requests over.
const WORKER_MODES: [&str; 2] = ["threads = 1", "threads = 2"];

/// The pool still answers after whatever the test did to it.
fn assert_serving(gh: &Gatehouse) {
    assert_served(&client(), gh, "get");
}

/// A client that gives up after `limit`: for requests that must not wait behind another.
fn client_within(limit: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(limit)
        .build()
        .expect("client")
}

/// The pool answers a request through `client` (`why`: what it would mean if not).
fn assert_served(client: &reqwest::blocking::Client, gh: &Gatehouse, why: &str) {
    let r = client.get(gh.url("/environ")).send().expect(why);
    assert_eq!(r.status(), StatusCode::OK, "{why}");
}

fn json(r: reqwest::blocking::Response) -> Value {
    let status = r.status();
    let text = r.text().expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"))
}

#[test]
fn environ_follows_pep_3333() {
    let s = serve("stdlib_app:app", "workers = 2\nthreads = 2");
    let r = client()
        .get(s.gh.url("/environ?x=1&y=%20"))
        .header("X-Custom", "a")
        .header("Accept", "text/html")
        .header("Cookie", "a=1")
        .send()
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let env = json(r);
    assert_eq!(env["REQUEST_METHOD"], "GET");
    assert_eq!(env["SCRIPT_NAME"], "");
    assert_eq!(env["PATH_INFO"], "/environ");
    assert_eq!(env["QUERY_STRING"], "x=1&y=%20");
    assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(env["SERVER_NAME"], "127.0.0.1");
    assert_eq!(env["SERVER_PORT"], s.gh.addr().port().to_string());
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert!(
        env["REMOTE_PORT"]
            .as_str()
            .is_some_and(|p| p.parse::<u16>().is_ok())
    );
    assert_eq!(env["CONTENT_TYPE"], Value::Null, "absent when absent");
    assert_eq!(env["CONTENT_LENGTH"], Value::Null);
    assert_eq!(env["headers"]["HTTP_X_CUSTOM"], "a");
    assert_eq!(env["headers"]["HTTP_COOKIE"], "a=1");
    assert_eq!(
        env["types"],
        serde_json::json!(["str"]),
        "every CGI value is a native str"
    );
    assert_eq!(env["wsgi"]["version"], serde_json::json!([1, 0]));
    assert_eq!(env["wsgi"]["url_scheme"], "http");
    assert_eq!(env["wsgi"]["multithread"], true);
    assert_eq!(env["wsgi"]["multiprocess"], true);
    assert_eq!(env["wsgi"]["run_once"], false);
    assert_eq!(env["wsgi"]["input_terminated"], true);

    // One view of the request: PATH_INFO and HTTP_HOST are the normal forms plugins and the router
    // match on; an encoded `/` has none (the app would see a boundary no matcher saw).
    let env = json(
        client()
            .get(s.gh.url("//x/..//%65nviron"))
            .header("Host", "App.Example.COM.:8000")
            .send()
            .expect("get"),
    );
    assert_eq!(env["PATH_INFO"], "/environ");
    assert_eq!(env["headers"]["HTTP_HOST"], "app.example.com:8000");
    assert_eq!(env["SERVER_NAME"], "app.example.com");
    let r = client()
        .get(s.gh.url("/environ%2Fcaf%C3%A9"))
        .send()
        .expect("get");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // An absolute-form target's authority wins over Host (RFC 9112 section 3.2.2).
    let r = s.gh.raw(
        b"GET http://real.example/environ HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        r.text().contains("\"HTTP_HOST\": \"real.example\""),
        "{}",
        r.text()
    );
    // PATH_INFO is percent-decoded, then each byte becomes one code point (latin-1).
    let r =
        s.gh.raw(b"GET /caf%C3%A9 HTTP/1.0\r\n\r\n", Duration::from_secs(5));
    assert!(
        r.text().contains("\"path\": \"/caf\\u00c3\\u00a9\""),
        "{}",
        r.text()
    );
    assert!(
        !s.gh.stderr().contains("wsgiref"),
        "the validator found a problem:\n{}",
        s.gh.stderr()
    );
}

#[test]
fn flags_follow_the_config_and_factories_work() {
    let s = serve("stdlib_app:make_app()", "workers = 1\nthreads = 1");
    let env = json(client().get(s.gh.url("/environ")).send().expect("get"));
    assert_eq!(env["wsgi"]["multithread"], false);
    assert_eq!(env["wsgi"]["multiprocess"], false);
    let raw =
        s.gh.raw(b"GET /environ HTTP/1.0\r\n\r\n", Duration::from_secs(5));
    assert!(
        raw.text().contains("\"SERVER_PROTOCOL\": \"HTTP/1.0\""),
        "{}",
        raw.text()
    );
}

#[test]
fn wsgi_input_reads_agree_with_each_other() {
    let s = serve("stdlib_app:app", "");
    let out = json(
        client()
            .post(s.gh.url("/input"))
            .body("abcdef\nline2\nline3\n")
            .send()
            .expect("post"),
    );
    assert_eq!(out["read3"], "abc");
    assert_eq!(out["readline"], "def\n");
    assert_eq!(out["readline_size2"], "li");
    assert_eq!(out["readlines"], serde_json::json!(["ne2\n", "line3\n"]));
    assert_eq!(out["eof_read"], "");
    assert_eq!(out["eof_readline"], "");
    let out = json(
        client()
            .post(s.gh.url("/iterate"))
            .body("one\ntwo\nthree")
            .send()
            .expect("post"),
    );
    assert_eq!(out["lines"], serde_json::json!(["one\n", "two\n", "three"]));

    // A chunked request body is buffered whole and its length given in CONTENT_LENGTH.
    let raw = s.gh.raw(
        b"POST /read_all HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        Duration::from_secs(5),
    );
    let expected_sum: u32 = b"hello world".iter().map(|&b| u32::from(b)).sum();
    assert!(
        raw.text()
            .contains(&format!("{{\"length\": 11, \"sum\": {expected_sum}}}")),
        "{}",
        raw.text()
    );
    // A large body arrives intact.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = json(
        client()
            .post(s.gh.url("/read_all"))
            .body(big.clone())
            .send()
            .expect("post"),
    );
    assert_eq!(out["length"], 3_000_000);
    assert_eq!(out["sum"], big.iter().map(|&b| u64::from(b)).sum::<u64>());
    // That body was past body_buffer_size (1 MiB): it went through a temporary file, now removed.
    let spooled: Vec<_> = std::fs::read_dir(s.marks.path().join("tmp"))
        .expect("tmp")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("gatehouse-body-")
        })
        .collect();
    assert!(
        spooled.is_empty(),
        "spooled bodies are removed: {spooled:?}"
    );
    let out = json(
        client()
            .post(s.gh.url("/input"))
            .body(format!("abc{}\nline2\n", "x".repeat(2 << 20)))
            .send()
            .expect("post"),
    );
    assert_eq!(out["read3"], "abc");
    assert_eq!(
        out["readline"].as_str().map(str::len),
        Some((2 << 20) + 1),
        "readline across a spooled body"
    );
    assert_eq!(out["readline_size2"], "li");
    assert_eq!(out["readlines"], serde_json::json!(["ne2\n"]));
}

#[test]
fn response_bodies_stream_write_and_file_wrapper() {
    for threads in WORKER_MODES {
        response_bodies(threads);
    }
}

fn response_bodies(threads: &str) {
    let s = serve("stdlib_app:app", threads);
    let text = client()
        .get(s.gh.url("/stream?4"))
        .send()
        .expect("get")
        .text()
        .expect("body");
    assert_eq!(text, "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
    assert_eq!(
        client()
            .get(s.gh.url("/write"))
            .send()
            .expect("get")
            .text()
            .expect("body"),
        "written then returned"
    );

    // Bigger than the flow-control window many times over, over HTTP/1.1 and HTTP/2.
    let size = 20 * 1024 * 1024;
    let expected: Vec<u8> = (0..size).map(|i| (i % 256) as u8).collect();
    let body = client()
        .get(s.gh.url(&format!("/big?{size}")))
        .send()
        .expect("get")
        .bytes()
        .expect("body");
    assert!(
        body.as_ref() == expected.as_slice(),
        "HTTP/1.1 body differs ({} bytes)",
        body.len()
    );
    let body = gatehouse_tests::h2_client()
        .get(s.gh.url(&format!("/big?{size}")))
        .send()
        .expect("get")
        .bytes()
        .expect("body");
    assert!(
        body.as_ref() == expected.as_slice(),
        "HTTP/2 body differs ({} bytes)",
        body.len()
    );

    let file: Vec<u8> = (0..1_000_000u32).map(|i| (i * 13 % 256) as u8).collect();
    std::fs::write(s.marks.path().join("file.bin"), &file).expect("write");
    let body = client()
        .get(s.gh.url("/file"))
        .send()
        .expect("get")
        .bytes()
        .expect("body");
    assert!(
        body.as_ref() == file.as_slice(),
        "file_wrapper body differs"
    );
    assert!(!s.gh.stderr().contains("wsgiref"), "{}", s.gh.stderr());
}

#[test]
fn a_client_that_reads_nothing_does_not_hold_the_apps_thread() {
    // One worker, one thread. A 20 MiB response to a client that never reads: the front takes it
    // (1 MiB in memory, the rest in a temporary file), so the thread is free at once.
    let s = serve("stdlib_app:app", "workers = 1\nthreads = 1");
    let size = 20 * 1024 * 1024;
    let mut stalled = TcpStream::connect(s.gh.addr()).expect("connect");
    stalled
        .write_all(format!("GET /big?{size} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("request");
    std::thread::sleep(Duration::from_millis(500));
    assert_served(
        &client_within(Duration::from_secs(5)),
        &s.gh,
        "the next request is served while the first client reads nothing",
    );
    // The stalled client, reading at last, gets every byte in order.
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut reader = std::io::BufReader::new(stalled);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("head");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = vec![0u8; size];
    std::io::Read::read_exact(&mut reader, &mut body).expect("body");
    assert!(
        body.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8),
        "the body came back in order"
    );

    // Without a file and with little memory, the client's pace sets the app's again.
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 1\nresponse_buffer = \"64KiB\"\nresponse_spool = 0",
    );
    let mut stalled = TcpStream::connect(s.gh.addr()).expect("connect");
    stalled
        .write_all(format!("GET /big?{size} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("request");
    std::thread::sleep(Duration::from_millis(500));
    let quick = client_within(Duration::from_secs(2));
    assert!(
        quick.get(s.gh.url("/environ")).send().is_err(),
        "flow control: the thread waits on the stalled client"
    );
    drop(stalled);
}

#[test]
fn close_is_called_on_every_iterable() {
    let s = serve("stdlib_app:app", "");
    assert_eq!(
        client()
            .get(s.gh.url("/close?normal"))
            .send()
            .expect("get")
            .text()
            .expect("body"),
        "ab"
    );
    let mark = s.marks.path().join("normal");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mark.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(mark).expect("close() ran"),
        "closed"
    );
}

#[test]
fn a_client_going_away_stops_the_app_and_close_still_runs() {
    for threads in WORKER_MODES {
        client_goes_away(threads);
    }
}

fn client_goes_away(threads: &str) {
    let s = serve("stdlib_app:app", threads);
    let mut stream = TcpStream::connect(s.gh.addr()).expect("connect");
    stream
        .write_all(b"GET /slow_close?gone HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut first = [0u8; 64];
    let _ = std::io::Read::read(&mut stream, &mut first).expect("the response starts");
    let left = Instant::now();
    drop(stream);
    let mark = s.marks.path().join("gone");
    wait_for("close() after the client left", || mark.exists());
    // 100 chunks at 50 ms would take 5 s: the app was stopped early.
    assert!(
        left.elapsed() < Duration::from_secs(3),
        "{:?}",
        left.elapsed()
    );
    assert_serving(&s.gh);
}

#[test]
fn app_errors_are_500_with_the_traceback_in_the_log_only() {
    let s = serve("stdlib_app:app", "");
    let r = client().get(s.gh.url("/error")).send().expect("get");
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !r.text().expect("body").contains("SECRET-TRACEBACK-MARKER"),
        "no traceback in the response"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.gh.stderr().contains("SECRET-TRACEBACK-MARKER") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = s.gh.stderr();
    assert!(
        log.contains("Traceback") && log.contains("SECRET-TRACEBACK-MARKER"),
        "{log}"
    );

    assert_eq!(
        client().get(s.gh.url("/hop")).send().expect("get").status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let r = client().get(s.gh.url("/exc_info")).send().expect("get");
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a second start_response with exc_info replaces the first"
    );
    assert_eq!(r.text().expect("body"), "replaced");

    // An error after the headers went out: the connection ends without a proper end of body.
    let mut stream = TcpStream::connect(s.gh.addr()).expect("connect");
    stream
        .write_all(b"GET /late_error HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let ex = read_until_close(&mut stream, Duration::from_secs(5));
    // (hyper may not have flushed the first part before it saw the error; either way the response is
    // visibly incomplete, and it is not turned into a 500 after a 200 was promised).
    let text = ex.text();
    assert!(
        ex.closed && !text.ends_with("0\r\n\r\n") && !text.contains(" 500 "),
        "{text}"
    );

    // And the worker keeps serving.
    assert_serving(&s.gh);
}

#[test]
fn a_response_with_two_content_lengths_does_not_hold_its_worker() {
    // The app's head is refused, so its body goes nowhere: the worker must hear that, not wait
    // for credit until `timeout` with the next request stuck behind it.
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 1\ntimeout = \"30s\"",
    );
    let mut stream = TcpStream::connect(s.gh.addr()).expect("connect");
    stream
        .write_all(b"GET /two_lengths HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let ex = read_until_close(&mut stream, Duration::from_secs(5));
    assert!(!ex.text().contains(" 200 "), "{}", ex.text());
    assert_served(
        &client_within(Duration::from_secs(5)),
        &s.gh,
        "answered at once",
    );
}

#[test]
fn a_short_body_from_the_app_closes_the_connection_in_every_worker_mode() {
    for mode in ["", "threads = 4", "workers = 2\nthreads = 2"] {
        let s = serve("stdlib_app:app", mode);
        for path in ["/short", "/short_stream"] {
            let mut stream = TcpStream::connect(s.gh.addr()).expect("connect");
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .expect("write");
            let ex = read_until_close(&mut stream, Duration::from_secs(5));
            assert!(
                ex.closed,
                "{mode:?} {path}: a body shorter than its Content-Length closes the connection"
            );
            // Whatever arrived before the close, it is never a complete 100-byte body.
            let text = ex.text();
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            assert!(body.len() < 100, "{mode:?} {path}: {text}");
        }
        assert_serving(&s.gh);
    }
}

#[test]
fn an_app_that_returns_30000_headers_gets_a_502_and_the_worker_serves_on() {
    let s = serve("stdlib_app:app", "");
    for count in ["30000", "70000"] {
        let r = client()
            .get(s.gh.url(&format!("/many_headers?{count}")))
            .send()
            .expect("get");
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "{count} headers");
    }
    s.gh.wait_stderr("response head is unusable", Duration::from_secs(5));
    let r = client()
        .get(s.gh.url("/many_headers?50"))
        .send()
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("x-h49"), "{:?}", r.headers());
    assert_serving(&s.gh);
}

#[test]
fn content_length_from_the_app_is_respected_and_bodiless_statuses_have_none() {
    let s = serve("stdlib_app:app", "");

    let r = client().get(s.gh.url("/long")).send().expect("get");
    assert_eq!(
        r.text().expect("body"),
        "12345",
        "a body longer than its Content-Length is cut"
    );

    let r = client().head(s.gh.url("/environ")).send().expect("head");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().expect("body").is_empty());
    let ex = s.gh.raw(
        b"GET /no_content HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(ex.text().starts_with("HTTP/1.1 204"), "{}", ex.text());
    assert!(
        ex.text().ends_with("\r\n\r\n"),
        "no body after a 204: {:?}",
        ex.text()
    );
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn crashed_workers_give_502_and_are_replaced() {
    let s = serve(
        "stdlib_app:app",
        "workers = 2\n[admin]\nlisten = \"127.0.0.1:0\"",
    );
    for path in ["/crash", "/segfault"] {
        let r = client().get(s.gh.url(path)).send().expect("get");
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "{path}");
        // The pool recovers: requests succeed again once the worker is back.
        wait_for("a replacement worker", || {
            client()
                .get(s.gh.url("/environ"))
                .send()
                .is_ok_and(|r| r.status() == StatusCode::OK)
        });
    }
    let pids: std::collections::HashSet<_> = (0..20)
        .map(|_| json(client().get(s.gh.url("/environ")).send().expect("get"))["pid"].as_u64())
        .collect();
    assert_eq!(pids.len(), 2, "two live workers again: {pids:?}");
    let metrics = client()
        .get(format!("http://{}/metrics", s.gh.addrs[1]))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    for line in [
        "gatehouse_wsgi_worker_restarts_total{target=\"app\",reason=\"crash\"} 2",
        "gatehouse_wsgi_requests_in_flight{target=\"app\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[test]
fn a_worker_whose_connection_carries_garbage_is_replaced_and_requests_go_on() {
    let s = serve("stdlib_app:app", "workers = 1");
    let before = json(client().get(s.gh.url("/environ")).send().expect("get"))["pid"].clone();
    let r = client().get(s.gh.url("/corrupt")).send().expect("get");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    s.gh.wait_stderr("replacing the worker", Duration::from_secs(5));
    let quick = client_within(Duration::from_secs(5));
    let mut served = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(r) = quick.get(s.gh.url("/environ")).send()
            && r.status() == StatusCode::OK
        {
            served = Some(json(r)["pid"].clone());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = served.expect("a replacement serves within seconds, not after a timeout");
    assert_ne!(before, after);
}

#[test]
fn a_burst_deeper_than_the_threads_waits_in_the_front_and_timeout_counts_only_the_apps_time() {
    // One thread, 2 s timeout, eight 0.5 s requests at once: 4 s of work. Each request's timeout
    // starts when a thread takes it, so all of them succeed and the worker is never killed.
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 1\ntimeout = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"",
    );
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let url = s.gh.url("/sleep?0.5");
            std::thread::spawn(move || client().get(url).send().map(|r| r.status()))
        })
        .collect();
    for b in burst {
        assert_eq!(b.join().expect("thread").expect("get"), StatusCode::OK);
    }
    let metrics = client()
        .get(format!("http://{}/metrics", s.gh.addrs[1]))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    assert!(
        !metrics.contains("gatehouse_wsgi_worker_restarts_total{"),
        "no worker was replaced: {metrics}"
    );
}

/// A GET of `path` on its own thread: its status once joined.
fn get_in_background(
    gh: &Gatehouse,
    path: &str,
) -> std::thread::JoinHandle<reqwest::Result<StatusCode>> {
    let url = gh.url(path);
    std::thread::spawn(move || client().get(url).send().map(|r| r.status()))
}

fn h2_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// An HTTP/2 connection to `addr`, driven by a task of the calling runtime.
async fn h2_client(addr: std::net::SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2");
    tokio::spawn(connection);
    client
}

/// Starts a GET of `path` as a new stream of `client`.
async fn h2_get(
    client: &h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    path: &str,
) -> h2::client::ResponseFuture {
    let mut ready = client.clone().ready().await.expect("ready");
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(())
        .expect("request");
    ready.send_request(request, true).expect("send").0
}

/// The statuses of [`at_once_over_h2`]'s results, in order of status (for tests where which
/// request a worker takes first does not matter).
fn sorted_statuses(results: &[(StatusCode, Duration)]) -> Vec<StatusCode> {
    let mut statuses: Vec<StatusCode> = results.iter().map(|(status, _)| *status).collect();
    statuses.sort();
    statuses
}

/// Sends every path as a stream of one HTTP/2 connection at once (so the front dispatches them
/// within microseconds of each other) and returns each one's status and time, in order.
fn at_once_over_h2(addr: std::net::SocketAddr, paths: &[&str]) -> Vec<(StatusCode, Duration)> {
    let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    h2_runtime().block_on(async move {
        let client = h2_client(addr).await;
        let started = Instant::now();
        let mut pending = Vec::new();
        for path in &paths {
            let response = h2_get(&client, addr, path).await;
            pending.push(tokio::spawn(async move {
                let response = response.await.expect("response");
                let status = response.status().as_u16();
                let mut body = response.into_body();
                while let Some(chunk) = body.data().await {
                    if chunk.is_err() {
                        break;
                    }
                }
                (
                    StatusCode::from_u16(status).expect("status"),
                    started.elapsed(),
                )
            }));
        }
        let mut out = Vec::new();
        for p in pending {
            out.push(p.await.expect("task"));
        }
        out
    })
}

#[test]
fn a_request_sent_ahead_to_a_busy_worker_gets_its_whole_timeout_from_when_it_begins() {
    // One thread, two more requests sent ahead: three 0.6 s requests at once take 1.8 s, but
    // each runs 0.6 s of its 1 s timeout, counted from when the thread takes it.
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 1\nprefetch = 2\ntimeout = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"",
    );
    let results = at_once_over_h2(s.gh.addr(), &["/sleep?0.6", "/sleep?0.6", "/sleep?0.6"]);
    for (status, _) in &results {
        assert_eq!(*status, StatusCode::OK, "{results:?}");
    }
    let metrics = client()
        .get(format!("http://{}/metrics", s.gh.addrs[1]))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    assert!(
        !metrics.contains("gatehouse_wsgi_worker_restarts_total{"),
        "no worker was replaced: {metrics}"
    );
}

#[test]
fn a_request_sent_ahead_to_a_worker_that_dies_before_beginning_it_runs_on_another() {
    // Two requests at once on one single-thread worker: one runs, the other is sent ahead. The
    // one that runs first kills the worker or, if the other ran first, the other is done by
    // then; either way the request that did not kill the worker is answered 200, having run once.
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 1\nprefetch = 1\ntimeout = \"20s\"",
    );
    let results = at_once_over_h2(s.gh.addr(), &["/sigkill", "/close?sent-ahead"]);
    assert_eq!(results[0].0, StatusCode::BAD_GATEWAY, "{results:?}");
    assert_eq!(results[1].0, StatusCode::OK, "{results:?}");
    assert!(s.marks.path().join("sent-ahead").exists());
    assert_serving(&s.gh);
}

#[test]
fn a_response_finished_before_the_next_request_kills_its_worker_is_still_answered() {
    // One thread, the second request sent ahead. The worker holds the first response's last
    // frames (all of it: a list, sent whole at its end) to send them with the second's `Begin` in
    // one write; they must be out before the second runs (and kills the worker). If the kill happens to run first, the other request
    // never began and runs on the replacement: 200 either way.
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 1\nprefetch = 1\ntimeout = \"20s\"",
    );
    for _ in 0..3 {
        let results = at_once_over_h2(s.gh.addr(), &["/plain", "/sigkill"]);
        assert_eq!(results[0].0, StatusCode::OK, "{results:?}");
        assert_eq!(results[1].0, StatusCode::BAD_GATEWAY, "{results:?}");
        assert_serving(&s.gh);
    }
}

#[test]
fn a_request_sent_ahead_behind_one_that_hangs_runs_once_the_hung_one_is_killed() {
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 1\nprefetch = 1\ntimeout = \"1s\"",
    );
    let results = at_once_over_h2(s.gh.addr(), &["/sleep?30", "/close?behind-hung"]);
    // If the quick one began first it simply ran; if it waited, it ran after the kill.
    assert_eq!(
        sorted_statuses(&results),
        [StatusCode::OK, StatusCode::GATEWAY_TIMEOUT],
        "{results:?}"
    );
    assert!(s.marks.path().join("behind-hung").exists());
}

#[test]
fn a_request_sent_ahead_that_hangs_gets_504_timeout_after_it_begins() {
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 1\nprefetch = 1\ntimeout = \"1s\"",
    );
    // Streams are dispatched in order: the second is sent ahead and begins after 0.3 s.
    let results = at_once_over_h2(s.gh.addr(), &["/sleep?0.3", "/sleep?5"]);
    assert_eq!(results[0].0, StatusCode::OK, "{results:?}");
    assert_eq!(results[1].0, StatusCode::GATEWAY_TIMEOUT, "{results:?}");
    assert!(results[1].1 < Duration::from_secs(3), "{results:?}");
}

#[test]
fn a_request_sent_ahead_that_does_not_begin_within_queue_timeout_gets_503() {
    // The second request waits in the worker behind a 3 s one: past queue_timeout (1 s) it is
    // withdrawn, and the worker drops it unrun.
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 1\nprefetch = 1\nqueue_timeout = \"1s\"\ntimeout = \"20s\"",
    );
    let results = at_once_over_h2(s.gh.addr(), &["/sleep?3", "/sleep?3"]);
    assert_eq!(
        sorted_statuses(&results),
        [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE],
        "{results:?}"
    );
    assert_serving(&s.gh);
}

#[test]
fn a_withdrawn_request_is_answered_at_once_by_a_worker_with_threads() {
    // Two threads busy for 3 s, a third request sent ahead: withdrawn after queue_timeout (1 s),
    // its 503 comes then, not when a thread frees.
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 2\nprefetch = 1\nqueue_timeout = \"1s\"\ntimeout = \"20s\"",
    );
    let results = at_once_over_h2(s.gh.addr(), &["/sleep?3", "/sleep?3", "/sleep?3"]);
    let refused: Vec<_> = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(refused.len(), 1, "{results:?}");
    assert!(refused[0].1 < Duration::from_millis(2500), "{results:?}");
    assert_eq!(
        results
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .count(),
        2,
        "{results:?}"
    );
}

#[test]
fn requests_are_not_sent_ahead_to_a_worker_stuck_in_a_long_request() {
    // Two single-thread workers; one runs a 3 s request. Quick requests that come later go to
    // the other worker (sent ahead to it while it is busy), none behind the long one.
    let s = serve(
        "stdlib_app:app",
        "workers = 2\nthreads = 1\nprefetch = 4\ntimeout = \"20s\"",
    );
    let long = get_in_background(&s.gh, "/sleep?3");
    std::thread::sleep(Duration::from_millis(300));
    let quick = at_once_over_h2(s.gh.addr(), &["/sleep?0.05"; 6]);
    for (status, took) in &quick {
        assert_eq!(*status, StatusCode::OK);
        assert!(
            *took < Duration::from_millis(2000),
            "a quick request waited behind the long one: {quick:?}"
        );
    }
    assert_eq!(long.join().expect("thread").expect("get"), StatusCode::OK);
}

#[test]
fn a_request_waiting_past_queue_timeout_gets_503() {
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 1\nqueue_timeout = \"2s\"",
    );
    let requests: Vec<_> = (0..3)
        .map(|i| {
            let url = s.gh.url("/sleep?1.2");
            std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 100 }));
            std::thread::spawn(move || client().get(url).send().map(|r| r.status()))
        })
        .collect();
    let statuses: Vec<StatusCode> = requests
        .into_iter()
        .map(|r| r.join().expect("thread").expect("get"))
        .collect();
    // The second waits 1.2 s (within queue_timeout), the third 2.4 s (past it).
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::SERVICE_UNAVAILABLE
        ]
    );
}

#[test]
fn a_timed_out_request_costs_only_itself_when_its_worker_runs_others() {
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 2\ntimeout = \"1s\"",
    );
    let before = json(client().get(s.gh.url("/environ")).send().expect("get"))["pid"].clone();
    let stuck = {
        let url = s.gh.url("/sleep?4");
        std::thread::spawn(move || client().get(url).send().map(|r| r.status()))
    };
    std::thread::sleep(Duration::from_millis(300));
    let neighbour = {
        let url = s.gh.url("/sleep?0.9");
        std::thread::spawn(move || client().get(url).send().map(|r| r.status()))
    };
    assert_eq!(
        stuck.join().expect("thread").expect("get"),
        StatusCode::GATEWAY_TIMEOUT
    );
    // Its neighbour on the same worker is still running when the stuck one times out: it
    // finishes (a 200, not a 502), and only then is the worker replaced.
    assert_eq!(
        neighbour.join().expect("thread").expect("get"),
        StatusCode::OK
    );
    wait_for("a replacement worker", || {
        client()
            .get(s.gh.url("/environ"))
            .send()
            .is_ok_and(|r| r.status() == StatusCode::OK)
    });
    let after = json(client().get(s.gh.url("/environ")).send().expect("get"))["pid"].clone();
    assert_ne!(before, after);
}

#[test]
fn a_request_past_the_timeout_gets_504_and_its_worker_is_replaced() {
    let s = serve("stdlib_app:app", "timeout = \"1s\"");
    let before = json(client().get(s.gh.url("/environ")).send().expect("get"))["pid"].clone();
    let started = Instant::now();
    let r = client().get(s.gh.url("/sleep?30")).send().expect("get");
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    wait_for("a replacement worker", || {
        client()
            .get(s.gh.url("/environ"))
            .send()
            .is_ok_and(|r| r.status() == StatusCode::OK)
    });
    let after = json(client().get(s.gh.url("/environ")).send().expect("get"))["pid"].clone();
    assert_ne!(before, after, "the hung worker was killed and replaced");
}

/// A worker with one thread writes each response when it is finished: a request after it that runs
/// long must not hold it back.
#[test]
fn a_long_request_does_not_hold_back_responses_finished_before_it() {
    let dir = tempfile::tempdir().expect("tmp");
    // One event loop, so the requests below reach the worker on one lane, in order, in one read.
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nthreads = 1\n[targets.app]\nwsgi = \"stdlib_app:app\"\nchdir = \"{}\"\nworkers = 1\nthreads = 1\ntimeout = \"20s\"\n",
        apps_dir().display()
    );
    let gh = Gatehouse::start(dir.path(), &config);
    let get = |path: &str| {
        let url = gh.url(path);
        std::thread::spawn(move || {
            let started = Instant::now();
            let status = client().get(url).send().expect("get").status();
            (status, started.elapsed())
        })
    };
    // The worker's only thread is busy, so the next requests queue up and are read together.
    let busy = get("/sleep?0.5");
    std::thread::sleep(Duration::from_millis(100));
    let fast: Vec<_> = (0..5).map(|_| get("/plain")).collect();
    std::thread::sleep(Duration::from_millis(100));
    let slow = get("/sleep?3");
    for f in fast {
        let (status, took) = f.join().expect("thread");
        assert_eq!(status, StatusCode::OK);
        assert!(
            took < Duration::from_millis(1500),
            "a quick response waited for the slow request after it: {took:?}"
        );
    }
    assert_eq!(busy.join().expect("thread").0, StatusCode::OK);
    assert_eq!(slow.join().expect("thread").0, StatusCode::OK);
}

#[test]
fn a_full_queue_answers_503_at_once() {
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 1\nbacklog = 1\ntimeout = \"20s\"",
    );
    let url = s.gh.url("/sleep?2");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || client().get(url).send().expect("slow").status())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let r = client().get(s.gh.url("/environ")).send().expect("get");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no waiting: {:?}",
        started.elapsed()
    );
    for t in slow {
        assert_eq!(
            t.join().expect("thread"),
            StatusCode::OK,
            "the running and the queued request both finish"
        );
    }
}

#[test]
fn flask_app() {
    let s = serve("flask_app:app", "threads = 4");
    let c = client();
    let out = json(c.get(s.gh.url("/json?q=search")).send().expect("get"));
    assert_eq!(out["message"], "hello");
    assert_eq!(out["args"]["q"], "search");
    let out = json(
        c.post(s.gh.url("/form"))
            .form(&[("name", "Zoë"), ("tag", "a"), ("tag", "b")])
            .send()
            .expect("post"),
    );
    assert_eq!(out["name"], "Zoë");
    assert_eq!(out["tags"], serde_json::json!(["a", "b"]));
    let out = json(
        c.post(s.gh.url("/echo-json"))
            .json(&serde_json::json!({"k": [1, 2]}))
            .send()
            .expect("post"),
    );
    assert_eq!(out["received"]["k"], serde_json::json!([1, 2]));

    let upload: Vec<u8> = (0..300_000u32).map(|i| (i % 256) as u8).collect();
    let boundary = "gatehouse-boundary";
    let mut multipart = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").into_bytes();
    multipart.extend_from_slice(&upload);
    multipart.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let out = json(
        c.post(s.gh.url("/upload"))
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(multipart)
            .send()
            .expect("upload"),
    );
    assert_eq!(out["filename"], "data.bin");
    assert_eq!(out["size"], 300_000);
    assert_eq!(out["note"], "hi");
    let sha = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().expect("stdin").write_all(&upload)?;
            child.wait_with_output()
        });
    let sha = String::from_utf8_lossy(&sha.expect("sha256sum").stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    assert_eq!(out["sha256"], sha);

    assert_eq!(
        c.get(s.gh.url("/stream"))
            .send()
            .expect("get")
            .text()
            .expect("body"),
        "line 0\nline 1\nline 2\nline 3\nline 4\n"
    );
    let r = c.get(s.gh.url("/set-cookie")).send().expect("get");
    let cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("session=abc123") && c.contains("HttpOnly")),
        "{cookies:?}"
    );
    let out = json(
        c.get(s.gh.url("/cookies"))
            .header("Cookie", "a=1; b=2")
            .send()
            .expect("get"),
    );
    assert_eq!(out, serde_json::json!({"a": "1", "b": "2"}));
    assert_eq!(
        c.get(s.gh.url("/boom")).send().expect("get").status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[test]
fn django_project_mounted_under_a_prefix() {
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nwsgi = \"djangosite.wsgi:application\"\nchdir = \"{}\"\nmount = \"/shop\"\n",
        apps_dir().join("djangosite").display()
    );
    let dir = tempfile::tempdir().expect("tmp");
    let gh = Gatehouse::start(dir.path(), &config);
    let c = client();
    let r = c.get(gh.url("/shop/hello/")).send().expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.text().expect("body"),
        "hello from django, script='/shop' path=/shop/hello/"
    );
    let out = json(
        c.post(gh.url("/shop/submit/"))
            .form(&[("name", "gatehouse"), ("x", "1")])
            .send()
            .expect("post"),
    );
    assert_eq!(out, serde_json::json!({"name": "gatehouse", "count": 2}));
    let r = c.get(gh.url("/shop/download/")).send().expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .expect("ascii")
            .contains("settings.py")
    );
    let expected =
        std::fs::read(apps_dir().join("djangosite/djangosite/settings.py")).expect("read");
    assert_eq!(r.bytes().expect("body").as_ref(), expected.as_slice());
    assert_eq!(
        c.get(gh.url("/elsewhere")).send().expect("get").status(),
        StatusCode::NOT_FOUND,
        "outside the mount"
    );
}

#[test]
fn a_virtualenv_package_installed_with_its_own_pip_is_importable() {
    let dir = tempfile::tempdir().expect("tmp");
    let venv = dir.path().join("venv");
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv");
    assert!(ok.success());
    // A package that exists nowhere else: built here and installed with the venv's own pip.
    let pkg = dir.path().join("pkg");
    std::fs::create_dir_all(pkg.join("gatehouse_venv_probe")).expect("mkdir");
    std::fs::write(
        pkg.join("gatehouse_venv_probe/__init__.py"),
        "MESSAGE = 'from the venv'\n",
    )
    .expect("write");
    std::fs::write(
        pkg.join("pyproject.toml"),
        "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n[project]\nname = \"gatehouse-venv-probe\"\nversion = \"1.0\"\n",
    )
    .expect("write");
    let out = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet"])
        .arg(&pkg)
        .output()
        .expect("pip");
    assert!(
        out.status.success(),
        "pip install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        dir.path().join("venvapp.py"),
        "import subprocess, sys, gatehouse_venv_probe\n\ndef app(environ, start_response):\n    if environ['PATH_INFO'] == '/sub':\n        # A program the app starts sees the same venv, not the embedded interpreter's settings.\n        out = subprocess.run([sys.executable, '-c', 'import gatehouse_venv_probe, os, sys; print(sys.prefix, os.environ.get(\"PYTHONHOME\"), os.environ.get(\"GATEHOUSE_WORKER\"))'], capture_output=True, text=True)\n        body = (out.stdout.strip() + '|' + out.stderr.strip()[-300:]).encode()\n    else:\n        body = ('%s|%s' % (gatehouse_venv_probe.MESSAGE, sys.prefix)).encode()\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [body]\n",
    )
    .expect("write");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nwsgi = \"venvapp:app\"\nvirtualenv = \"{}\"\n",
        venv.display()
    );
    let gh = Gatehouse::start(dir.path(), &config);
    let text = client()
        .get(gh.url("/"))
        .send()
        .expect("get")
        .text()
        .expect("body");
    assert_eq!(text, format!("from the venv|{}", venv.display()));
    let text = client()
        .get(gh.url("/sub"))
        .send()
        .expect("get")
        .text()
        .expect("body");
    assert_eq!(
        text,
        format!("{} None None|", venv.display()),
        "a subprocess of the app uses the venv, and sees none of the worker's own settings"
    );

    // The same through $VIRTUAL_ENV, as after `source venv/bin/activate`.
    let config = "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nwsgi = \"venvapp:app\"\n";
    let venv_str = venv.display().to_string();
    let gh = Gatehouse::start_with_env(dir.path(), config, &[("VIRTUAL_ENV", &venv_str)]);
    let text = client()
        .get(gh.url("/"))
        .send()
        .expect("get")
        .text()
        .expect("body");
    assert_eq!(text, format!("from the venv|{}", venv.display()));
}

#[test]
fn an_app_that_fails_to_import_stops_startup_with_its_traceback() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("broken.py"),
        "import this_module_does_not_exist\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("g.toml"),
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nwsgi = \"broken:app\"\n",
    )
    .expect("write");
    let out = Command::new(gatehouse_tests::binary())
        .args(["-c", "g.toml"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ModuleNotFoundError") && err.contains("this_module_does_not_exist"),
        "{err}"
    );
    assert!(
        err.contains("target `app`") && err.contains("failed to load"),
        "{err}"
    );
}

#[test]
fn quick_mode_serves_an_app_without_a_config_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let apps = apps_dir().display().to_string();
    let args = [
        "stdlib_app:app",
        "--chdir",
        &apps,
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--threads",
        "2",
    ];
    let gh = Gatehouse::start_args(dir.path(), &args, &[]);
    let env = json(client().get(gh.url("/environ")).send().expect("get"));
    assert_eq!(env["wsgi"]["multiprocess"], true);
    assert_eq!(env["wsgi"]["multithread"], true);
}

#[test]
fn quick_mode_static_prefixes_go_through_the_router_plugin() {
    let dir = tempfile::tempdir().expect("tmp");
    let assets = dir.path().join("assets");
    std::fs::create_dir_all(&assets).expect("mkdir");
    std::fs::write(assets.join("app.css"), "body {}\n").expect("write");
    let apps = apps_dir().display().to_string();
    let args = [
        "stdlib_app:app",
        "--chdir",
        &apps,
        "--bind",
        "127.0.0.1:0",
        "--static",
        "/static=assets",
    ];
    let gh = Gatehouse::start_args(dir.path(), &args, &[]);
    let c = client();
    let r = c.get(gh.url("/static/app.css")).send().expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().expect("body"), "body {}\n");
    let env = json(c.get(gh.url("/environ")).send().expect("get"));
    assert_eq!(
        env["PATH_INFO"], "/environ",
        "everything else reaches the app"
    );
    let log = gh.wait_stdout("target=static1", std::time::Duration::from_secs(5));
    assert!(log.contains("target=static1"), "{log}");
}

#[test]
fn router_strip_prefix_becomes_script_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[targets.app]\nwsgi = \"stdlib_app:app\"\nchdir = {:?}\n\n[[plugins]]\nuse = \"router\"\n[[plugins.config.routes]]\npath = \"/shop\"\ntarget = \"app\"\nstrip_prefix = true\n",
        apps_dir().display().to_string()
    );
    let gh = Gatehouse::start(dir.path(), &config);
    let env = json(client().get(gh.url("/shop/environ")).send().expect("get"));
    assert_eq!(env["SCRIPT_NAME"], "/shop");
    assert_eq!(env["PATH_INFO"], "/environ");
    let r = client().get(gh.url("/elsewhere")).send().expect("get");
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "nothing matches: the router's 404"
    );
}

#[test]
fn proxy_headers_are_believed_only_from_trusted_peers_and_plugins_see_the_same_client() {
    let start = |server: &str| {
        let config = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n{server}\n[targets.app]\nwsgi = \"stdlib_app:app\"\nchdir = \"{}\"\n\
             [[plugins]]\nuse = \"{}\"\nconfig = {{ label = \"p\", report_client = true }}\n",
            apps_dir().display(),
            env!("FIXTURE_PROBE"),
        );
        let dir = tempfile::tempdir().expect("tmp");
        (Gatehouse::start(dir.path(), &config), dir)
    };
    // A client behind a proxy that appends X-Forwarded-For also sends a Forwarded of its own.
    let spoof = |gh: &Gatehouse| {
        let r = client()
            .get(gh.url("/environ"))
            .header("X-Forwarded-For", "203.0.113.5")
            .header("X-Forwarded-Proto", "https")
            .header("Forwarded", "for=198.51.100.66;proto=http")
            .send()
            .expect("get");
        let plugin = (
            r.headers()["x-client"].to_str().expect("ascii").to_string(),
            r.headers()["x-client-scheme"]
                .to_str()
                .expect("ascii")
                .to_string(),
        );
        (json(r), plugin)
    };
    let (untrusted, _d1) = start("");
    let (env, plugin) = spoof(&untrusted);
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(env["wsgi"]["url_scheme"], "http");
    assert_eq!(plugin, ("127.0.0.1".into(), "http".into()));
    assert_eq!(
        env["headers"]["HTTP_X_FORWARDED_FOR"], "203.0.113.5",
        "the header itself still reaches the app"
    );

    let (trusted, _d2) = start("forwarded_allow_ips = [\"127.0.0.1\", \"::1\"]");
    let (env, plugin) = spoof(&trusted);
    assert_eq!(
        env["REMOTE_ADDR"], "203.0.113.5",
        "X-Forwarded-For, not the client's Forwarded"
    );
    assert_eq!(
        env["REMOTE_PORT"],
        Value::Null,
        "a forwarded client's port is unknown"
    );
    assert_eq!(env["wsgi"]["url_scheme"], "https");
    assert_eq!(
        plugin,
        ("203.0.113.5".into(), "https".into()),
        "plugins see what the app sees"
    );
    assert!(
        !trusted.stderr().contains("wsgiref"),
        "{}",
        trusted.stderr()
    );

    let (rfc, _d3) =
        start("forwarded_allow_ips = [\"127.0.0.1\"]\nforwarded_header = \"forwarded\"");
    let (env, plugin) = spoof(&rfc);
    assert_eq!(env["REMOTE_ADDR"], "198.51.100.66");
    assert_eq!(env["wsgi"]["url_scheme"], "http");
    assert_eq!(plugin, ("198.51.100.66".into(), "http".into()));
}

#[test]
fn max_requests_recycles_workers_without_dropping_a_request() {
    let s = serve(
        "stdlib_app:app",
        "workers = 2\nthreads = 2\nmax_requests = 15\nmax_requests_jitter = 5\ntimeout = \"20s\"",
    );
    let url_fast = s.gh.url("/environ");
    let url_slow = s.gh.url("/sleep?0.2");
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let (fast, slow) = (url_fast.clone(), url_slow.clone());
            std::thread::spawn(move || {
                let c = client();
                let mut pids = Vec::new();
                for i in 0..25 {
                    let url = if (i + t) % 5 == 0 { &slow } else { &fast };
                    let r = c.get(url).send().expect("request");
                    assert_eq!(r.status(), StatusCode::OK, "request {i} of client {t}");
                    pids.push(json(r)["pid"].as_u64().expect("pid"));
                }
                pids
            })
        })
        .collect();
    let mut pids = std::collections::HashSet::new();
    for t in threads {
        pids.extend(t.join().expect("client thread"));
    }
    // 150 requests over workers recycled every 15-20: many generations of workers served them.
    assert!(pids.len() >= 6, "workers were recycled: {pids:?}");
    assert!(
        s.gh.stderr().contains("reached max_requests"),
        "{}",
        s.gh.stderr()
    );
}

/// Waits until the app answers `version` (after a reload).
fn wait_for_version(gh: &Gatehouse, version: &str) {
    wait_for(&format!("version {version} to be served"), || {
        client()
            .get(gh.url("/"))
            .send()
            .is_ok_and(|r| r.text().is_ok_and(|t| t == version))
    });
}

fn versioned_app(dir: &Path, version: u32) {
    let code = format!(
        "import time\nVERSION = {version}\n\ndef app(environ, start_response):\n    if environ['PATH_INFO'] == '/slow':\n        time.sleep(1.5)\n    body = str(VERSION).encode()\n    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])\n    return [body]\n"
    );
    std::fs::write(dir.join("versioned.py"), code).expect("write app");
}

#[test]
fn sighup_reloads_app_code_and_config_with_no_failed_request() {
    let dir = tempfile::tempdir().expect("tmp");
    versioned_app(dir.path(), 1);
    let config = "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nwsgi = \"versioned:app\"\nworkers = 2\nthreads = 2\n";
    let gh = Gatehouse::start(dir.path(), config);
    let url = gh.url("/");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let c = client();
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = c.get(&url).send().expect("request");
                    assert_eq!(r.status(), StatusCode::OK);
                    seen.push(r.text().expect("body"));
                }
                seen
            })
        })
        .collect();
    let slow_url = gh.url("/slow");
    let slow = std::thread::spawn(move || {
        client()
            .get(slow_url)
            .send()
            .expect("slow")
            .text()
            .expect("body")
    });
    std::thread::sleep(Duration::from_millis(300));
    versioned_app(dir.path(), 2);
    gh.signal("HUP");
    wait_for_version(&gh, "2");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.join().expect("no client saw a failed request"));
    }
    assert!(
        all.contains(&"1".to_string()) && all.contains(&"2".to_string()),
        "both versions served"
    );
    assert_eq!(
        slow.join().expect("slow request"),
        "1",
        "the request in flight finished on the old worker"
    );
    wait_for("the old workers to stop", || gh.children().len() == 2);

    // A broken config on reload: logged, and the running one keeps serving.
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nwsgi = 5\n",
    )
    .expect("write");
    gh.signal("HUP");
    wait_for("the reload error in the log", || {
        gh.stderr().contains("reload failed")
    });
    assert_eq!(
        client()
            .get(gh.url("/"))
            .send()
            .expect("get")
            .text()
            .expect("body"),
        "2"
    );
}

/// Workers open one lane per event loop, counted from the config; a reload that lowers
/// `server.threads` (which takes effect only at restart) leaves an event loop without a lane of its
/// own, and it borrows another's: every request still gets its answer.
#[test]
fn an_event_loop_without_its_own_lane_borrows_one() {
    let dir = tempfile::tempdir().expect("tmp");
    versioned_app(dir.path(), 1);
    let config = |threads: u32| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nthreads = {threads}\n[targets.app]\nwsgi = \"versioned:app\"\nworkers = 1\n"
        )
    };
    let gh = Gatehouse::start(dir.path(), &config(2));
    versioned_app(dir.path(), 2);
    std::fs::write(dir.path().join("gatehouse.toml"), config(1)).expect("write");
    gh.signal("HUP");
    wait_for_version(&gh, "2");
    // Fresh connections land on both event loops.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = gh.url("/");
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| {
                        let r = client().get(&url).send().expect("request");
                        (r.status(), r.text().expect("body"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for c in clients {
        for (status, body) in c.join().expect("client") {
            assert_eq!((status, body.as_str()), (StatusCode::OK, "2"));
        }
    }
}

#[test]
fn sigterm_lets_python_requests_in_flight_finish() {
    let s = serve("stdlib_app:app", "workers = 1\nthreads = 2");
    let mut gh = s.gh;
    let url = gh.url("/sleep?1");
    let in_flight = std::thread::spawn(move || {
        let r = client().get(url).send().expect("request");
        (r.status(), r.text().expect("body"))
    });
    std::thread::sleep(Duration::from_millis(300));
    gh.signal("TERM");
    let (status, body) = in_flight.join().expect("client");
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"slept\": true"), "{body}");
    let exit = gh
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the request");
    assert!(exit.success(), "{exit}");
    drop(s.marks);
}

#[test]
fn shutdown_under_load_reaps_every_worker_and_reports_no_crash() {
    let s = serve("stdlib_app:app", "workers = 2\nthreads = 2");
    let mut gh = s.gh;
    let workers = gh.children();
    assert_eq!(workers.len(), 2, "{workers:?}");
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let url = gh.url(if i % 2 == 0 { "/sleep?0.5" } else { "/environ" });
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| client().get(&url).send().map(|r| r.status()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    gh.signal("TERM");
    for c in clients {
        for status in c.join().expect("client").into_iter().flatten() {
            // Requests after the listeners closed fail to connect; every answered one is a 200.
            assert_eq!(status, StatusCode::OK);
        }
    }
    let exit = gh.wait_exit(Duration::from_secs(15)).expect("exits");
    assert!(exit.success(), "{exit}");
    for pid in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} outlived the server"
        );
    }
    let log = gh.stderr();
    assert!(!log.contains("restarting it"), "{log}");
    drop(s.marks);
}

#[test]
fn ctrl_c_to_the_whole_process_group_still_lets_requests_finish() {
    let s = serve("stdlib_app:app", "workers = 2");
    let mut gh = s.gh;
    let url = gh.url("/sleep?1");
    let in_flight = std::thread::spawn(move || client().get(url).send().expect("request").status());
    std::thread::sleep(Duration::from_millis(300));
    // What a terminal's Ctrl-C does: SIGINT to the server and every worker at once.
    let mut pids = gh.children();
    pids.push(gh.pid());
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
    }
    assert_eq!(in_flight.join().expect("client"), StatusCode::OK);
    let exit = gh.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(exit.success(), "{exit}");
    drop(s.marks);
}

#[test]
fn workers_load_the_app_in_parallel() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("slowimport.py"),
        "import time\ntime.sleep(1)\n\ndef app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'up']\n",
    )
    .expect("write");
    let config = "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nwsgi = \"slowimport:app\"\nworkers = 4\n";
    let started = Instant::now();
    let gh = Gatehouse::start(dir.path(), config);
    let took = started.elapsed();
    assert_eq!(
        client()
            .get(gh.url("/"))
            .send()
            .expect("get")
            .text()
            .expect("body"),
        "up"
    );
    // Four 1-second imports one after another would take over 4 s.
    assert!(took < Duration::from_millis(3500), "startup took {took:?}");
}

#[test]
fn another_build_of_the_same_python_version_is_refused_at_start_naming_both() {
    // Debian's /usr/bin/python3.11 beside the pyenv 3.11 the binary is built with (scripts/test.sh
    // installs it): same version, another standard library and extension modules.
    let other = "/usr/bin/python3.11";
    let built = Command::new("python3")
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output()
        .expect("python3");
    let built = String::from_utf8_lossy(&built.stdout).trim().to_string();
    assert_ne!(
        built, other,
        "this test needs the binary built with another 3.11 than Debian's"
    );
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("hello.py"),
        "def app(e, s):\n    s('200 OK', [])\n    return [b'hi']\n",
    )
    .expect("write");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nwsgi = \"hello:app\"\npython = \"{other}\"\n"
    );
    std::fs::write(dir.path().join("gatehouse.toml"), config).expect("write");
    let out = Command::new(gatehouse_tests::binary())
        .args(["-c", "gatehouse.toml"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with another build: {stderr}"
    );
    assert!(
        stderr.contains(other) && stderr.contains(&built) && stderr.contains("PYO3_PYTHON="),
        "{stderr}"
    );
}

#[test]
fn an_abandoned_queued_request_never_runs_and_gives_its_place_back() {
    for mode in ["threads = 1", "threads = 2"] {
        // One worker; `backlog = 1` past its threads.
        let s = serve(
            "stdlib_app:app",
            &format!("workers = 1\n{mode}\nbacklog = 1\ntimeout = \"20s\""),
        );
        let busy: Vec<_> = (0..if mode.ends_with('2') { 2 } else { 1 })
            .map(|_| {
                let url = s.gh.url("/sleep?1.5");
                std::thread::spawn(move || client().get(url).send().map(|r| r.status()))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        // Queued behind the busy threads, then abandoned by its client.
        let mut queued = TcpStream::connect(s.gh.addr()).expect("connect");
        queued
            .write_all(b"GET /close?abandoned HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        std::thread::sleep(Duration::from_millis(200));
        // While it waits, the one place of the backlog is taken.
        let r = client().get(s.gh.url("/environ")).send().expect("get");
        assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{mode}: backlog full"
        );
        drop(queued);
        std::thread::sleep(Duration::from_millis(200));
        // It waited in the front, never given to the worker: its place is free again at once.
        let next = {
            let url = s.gh.url("/environ");
            std::thread::spawn(move || client().get(url).send().map(|r| r.status()))
        };
        for b in busy {
            assert_eq!(b.join().expect("thread").expect("get"), StatusCode::OK);
        }
        assert_eq!(
            next.join().expect("thread").expect("get"),
            StatusCode::OK,
            "{mode}: queued in the freed place"
        );
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !s.marks.path().join("abandoned").exists(),
            "{mode}: a request whose client left before it started must not run"
        );
        // Once the worker dropped it, the slot is free again.
        assert_serving(&s.gh);
    }
}

#[test]
fn an_http2_stream_reset_while_queued_never_runs() {
    let s = serve(
        "stdlib_app:app",
        "workers = 1\nthreads = 1\nbacklog = 1\ntimeout = \"20s\"",
    );
    let busy = get_in_background(&s.gh, "/sleep?1.5");
    std::thread::sleep(Duration::from_millis(300));
    let addr = s.gh.addr();
    let runtime = h2_runtime();
    // The connection stays open: only the stream is reset (RST_STREAM), not the connection.
    let _client = runtime.block_on(async move {
        let client = h2_client(addr).await;
        let response = h2_get(&client, addr, "/close?abandoned-h2").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(response);
        tokio::time::sleep(Duration::from_millis(200)).await;
        client
    });
    assert_eq!(busy.join().expect("thread").expect("get"), StatusCode::OK);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !s.marks.path().join("abandoned-h2").exists(),
        "a stream reset before its request started must not run"
    );
    assert_serving(&s.gh);
}

#[test]
fn request_bodies_held_at_once_are_bounded_in_memory_and_on_disk() {
    for limits in [
        "body_buffer_size = \"1MiB\"\nbody_memory_budget = \"64KiB\"",
        "body_buffer_size = \"16KiB\"\nbody_spool_budget = \"64KiB\"",
    ] {
        let marks = tempfile::tempdir().expect("tmp");
        let config = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[server.limits]\n{limits}\n[targets.app]\nwsgi = \"stdlib_app:app\"\nchdir = \"{}\"\nworkers = 1\nthreads = 2\n",
            apps_dir().display()
        );
        let gh = Gatehouse::start(marks.path(), &config);
        let post = |url: String| {
            std::thread::spawn(move || {
                client()
                    .post(url)
                    .body(vec![b'x'; 40 << 10])
                    .send()
                    .map(|r| r.status())
            })
        };
        // The first body is held while its request sleeps; a second one would pass the budget.
        let first = post(gh.url("/sleep?1"));
        std::thread::sleep(Duration::from_millis(400));
        let second = post(gh.url("/sleep?0"))
            .join()
            .expect("thread")
            .expect("post");
        assert_eq!(second, StatusCode::SERVICE_UNAVAILABLE, "{limits}");
        assert_eq!(first.join().expect("thread").expect("post"), StatusCode::OK);
        // Given back when the request ended.
        let again = post(gh.url("/sleep?0"))
            .join()
            .expect("thread")
            .expect("post");
        assert_eq!(again, StatusCode::OK, "{limits}");
    }
}
