//! Replays gunicorn's HTTP request corpus (../shared/corpus/gunicorn-requests) against the real binary.
//!
//! Invalid requests must be refused by the HTTP layer (a 4xx/5xx refusal status or a closed connection),
//! never reach the target, never get a 2xx. Valid ones must all be answered by the target.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gatehouse_tests::{Gatehouse, RawExchange, read_until_close, site, static_config};

/// Statuses the HTTP layer uses to refuse a request before any target sees it.
const REFUSALS: [u16; 6] = [400, 408, 413, 414, 431, 505];

fn corpus_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var("GATEHOUSE_CORPUS").ok().map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/gunicorn-requests")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/gunicorn-requests")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("expectations.json").exists())
}

/// The corpus format: real newlines are layout only; `\r \n \t \0 \xHH` are the bytes.
fn decode(text: &str) -> Vec<u8> {
    let text: String = text.chars().filter(|&c| c != '\n' && c != '\r').collect();
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'0' => out.push(0),
                b'\\' => out.push(b'\\'),
                b'x' if i + 3 < bytes.len() + 1 => {
                    let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).expect("hex");
                    out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                    i += 4;
                    continue;
                }
                other => {
                    out.push(b'\\');
                    out.push(other);
                }
            }
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    requests: usize,
}

fn cases(kind: &str) -> (Vec<Case>, usize) {
    let dir = corpus_dir()
        .expect("the request corpus (../shared/corpus/gunicorn-requests or GATEHOUSE_CORPUS)");
    let expectations: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expectations.json")).expect("read"),
    )
    .expect("json");
    let mut out = Vec::new();
    let mut skipped = 0;
    for (name, case) in expectations["cases"].as_object().expect("cases") {
        if case["kind"] != kind {
            continue;
        }
        if case["config_dependent"] == true {
            skipped += 1;
            continue;
        }
        let text = std::fs::read(dir.join(name)).expect("case file");
        out.push(Case {
            name: name.clone(),
            bytes: decode(&String::from_utf8_lossy(&text)),
            requests: case["n_requests"].as_u64().unwrap_or(1) as usize,
        });
    }
    (out, skipped)
}

fn server() -> (tempfile::TempDir, Gatehouse) {
    let dir = site(&[("index.html", b"ok")]);
    let gh = Gatehouse::start(
        dir.path(),
        &static_config("", "[log]\naccess_log = \"off\"\n"),
    );
    (dir, gh)
}

#[test]
fn decoding_follows_the_corpus_readme() {
    assert_eq!(
        decode("GET / HTTP/1.1\\r\\n\n\\r\\n"),
        b"GET / HTTP/1.1\r\n\r\n"
    );
    assert_eq!(decode("a\\0b\\x7fc\\td"), b"a\0b\x7fc\td");
}

#[test]
fn invalid_requests_are_refused() {
    let (_dir, gh) = server();
    let (cases, skipped) = cases("invalid");
    assert!(cases.len() >= 50, "corpus too small: {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut stream = TcpStream::connect(gh.addr()).expect("connect");
        let _ = stream.write_all(&case.bytes);
        let _ = stream.shutdown(Shutdown::Write);
        let ex = read_until_close(&mut stream, Duration::from_secs(5));
        let statuses = ex.statuses();
        let refused = match statuses.first() {
            None => ex.closed,
            Some(s) => REFUSALS.contains(s) && ex.closed && statuses.len() == 1,
        };
        if !refused {
            failures.push(format!(
                "{}: statuses {statuses:?}, closed {}",
                case.name, ex.closed
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid requests were not refused:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} invalid cases refused ({skipped} config-dependent cases skipped)",
        cases.len()
    );
    // The server is still up and serving after all of that.
    let ex = gh.raw(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(ex.statuses(), vec![200]);
}

fn answered(gh: &Gatehouse, case: &Case) -> RawExchange {
    let mut stream = TcpStream::connect(gh.addr()).expect("connect");
    stream.write_all(&case.bytes).expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut all = RawExchange {
        bytes: Vec::new(),
        closed: false,
    };
    while all.statuses().len() < case.requests && !all.closed && Instant::now() < deadline {
        let more = read_until_close(&mut stream, Duration::from_millis(50));
        all.bytes.extend(more.bytes);
        all.closed = more.closed;
    }
    all
}

/// Cases gunicorn accepts that Gatehouse refuses on purpose, each with the reason; they must get 400.
const DELIBERATE_400: [(&str, &str); 3] = [
    (
        "valid/009.http",
        "`Transfer-Encoding: identity` with Content-Length: RFC 9112 section 6.3 requires 400 when a \
         request's transfer coding does not end in chunked, and CL+TE is a smuggling shape",
    ),
    (
        "valid/014.http",
        "an unencoded `\"` in the query: hyper's URI parser refuses it; browsers always send %22",
    ),
    (
        "valid/rfc9112_target_absolute_userinfo_01.http",
        "userinfo (`user:pass@`) in an absolute-form target: RFC 9110 section 4.2.4 tells recipients \
         to treat it as an error, and its authority would become the request's host",
    ),
];

/// The corpus strips real newlines, which shortens bodies that contained them (valid/099's multipart
/// body): such a request can never be complete, and a server that buffers bodies waits for the rest.
fn body_shorter_than_declared(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let declared = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    declared.is_some_and(|n| bytes.len() - end - 4 < n)
}

/// Whether the case has HTTP/1.1 requests and no `Host` field anywhere: gunicorn accepts those,
/// RFC 9112 section 3.2 (and Gatehouse) answer 400.
fn lacks_host(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes).to_ascii_lowercase();
    text.contains(" http/1.1\r\n") && !text.contains("\r\nhost:")
}

/// Whether the case's first request line is HTTP/1.1 (a first HTTP/1.0 request without keep-alive
/// ends the connection before a later one is read).
fn starts_http11(bytes: &[u8]) -> bool {
    let end = bytes
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(bytes.len());
    bytes[..end].ends_with(b"HTTP/1.1")
}

/// The case with `Host: corpus` after each HTTP/1.1 request line, so that its framing is still
/// exercised.
fn with_host(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 32);
    let mut rest = bytes;
    while let Some(at) = rest.windows(10).position(|w| w == b"HTTP/1.1\r\n") {
        out.extend_from_slice(&rest[..at + 10]);
        out.extend_from_slice(b"Host: corpus\r\n");
        rest = &rest[at + 10..];
    }
    out.extend_from_slice(rest);
    out
}

#[test]
fn valid_requests_are_answered_by_the_target() {
    let (_dir, gh) = server();
    let (cases, skipped) = cases("valid");
    assert!(cases.len() >= 40, "corpus too small: {}", cases.len());
    let mut failures = Vec::new();
    let mut truncated = 0;
    let mut without_host = 0;
    for case in &cases {
        if body_shorter_than_declared(&case.bytes) {
            truncated += 1;
            continue;
        }
        if lacks_host(&case.bytes) && starts_http11(&case.bytes) {
            without_host += 1;
            let statuses = answered(&gh, case).statuses();
            if statuses != [400] {
                failures.push(format!(
                    "{}: HTTP/1.1 without Host must get 400, got {statuses:?}",
                    case.name
                ));
            }
        }
        let case = &Case {
            name: case.name.clone(),
            bytes: if lacks_host(&case.bytes) {
                with_host(&case.bytes)
            } else {
                case.bytes.clone()
            },
            requests: case.requests,
        };
        let ex = answered(&gh, case);
        let statuses = ex.statuses();
        if let Some((_, why)) = DELIBERATE_400.iter().find(|(name, _)| *name == case.name) {
            if statuses.first() != Some(&400) {
                failures.push(format!(
                    "{}: expected the deliberate 400 ({why}), got {statuses:?}",
                    case.name
                ));
            }
            continue;
        }
        if statuses.len() != case.requests || statuses.iter().any(|s| REFUSALS.contains(s)) {
            failures.push(format!(
                "{}: statuses {statuses:?} (want {} answers)",
                case.name, case.requests
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} valid requests failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(truncated <= 1, "{truncated} cases have truncated bodies");
    assert!(
        without_host > 0,
        "the corpus has HTTP/1.1 cases without Host"
    );
    eprintln!(
        "{} valid cases answered ({skipped} config-dependent, {truncated} truncated skipped; \
         {without_host} without Host refused, then answered with one)",
        cases.len()
    );
}
