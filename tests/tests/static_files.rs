//! The static target, black-box: a real binary, a real directory, real HTTP.

use std::time::Duration;

use gatehouse_tests::{Gatehouse, client, h2_client, site, static_config};
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT_ENCODING, ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, LOCATION, RANGE, VARY,
};

fn big(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn serve(files: &[(&str, &[u8])], target_extra: &str) -> (tempfile::TempDir, Gatehouse) {
    let dir = site(files);
    let gh = Gatehouse::start(dir.path(), &static_config(target_extra, ""));
    (dir, gh)
}

#[test]
fn get_head_mime_and_validators() {
    let (_dir, gh) = serve(
        &[
            ("index.html", b"<h1>hi</h1>"),
            ("app.js", b"let x = 1;"),
            ("data.bin", b"\x00\x01"),
        ],
        "",
    );
    let c = client();
    let r = c.get(gh.url("/")).send().expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_TYPE], "text/html");
    assert_eq!(r.headers()[CONTENT_LENGTH], "11");
    let etag = r.headers()[ETAG].to_str().expect("etag").to_string();
    let modified = r.headers()[LAST_MODIFIED].to_str().expect("lm").to_string();
    assert_eq!(r.text().expect("body"), "<h1>hi</h1>");

    assert_eq!(
        c.get(gh.url("/app.js")).send().expect("get").headers()[CONTENT_TYPE],
        "text/javascript"
    );
    assert_eq!(
        c.get(gh.url("/data.bin")).send().expect("get").headers()[CONTENT_TYPE],
        "application/octet-stream"
    );

    let head = c.head(gh.url("/index.html")).send().expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[CONTENT_LENGTH], "11");
    assert_eq!(head.headers()[ETAG].to_str().expect("etag"), etag);
    assert!(head.bytes().expect("body").is_empty());

    let r = c
        .get(gh.url("/index.html"))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .expect("inm");
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(r.bytes().expect("body").is_empty());
    let r = c
        .get(gh.url("/index.html"))
        .header(IF_NONE_MATCH, "\"other\"")
        .send()
        .expect("inm");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(gh.url("/index.html"))
        .header(IF_MODIFIED_SINCE, &modified)
        .send()
        .expect("ims");
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = c
        .get(gh.url("/index.html"))
        .header(IF_MODIFIED_SINCE, "Sun, 06 Nov 1994 08:49:37 GMT")
        .send()
        .expect("ims");
    assert_eq!(r.status(), StatusCode::OK);
}

#[test]
fn ranges() {
    let body = big(100_000);
    let (_dir, gh) = serve(&[("blob.bin", &body)], "");
    let c = client();
    let r = c
        .get(gh.url("/blob.bin"))
        .header(RANGE, "bytes=10-19")
        .send()
        .expect("range");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes 10-19/100000");
    assert_eq!(r.bytes().expect("body").as_ref(), &body[10..20]);
    let r = c
        .get(gh.url("/blob.bin"))
        .header(RANGE, "bytes=-5")
        .send()
        .expect("suffix");
    assert_eq!(r.bytes().expect("body").as_ref(), &body[99_995..]);
    let r = c
        .get(gh.url("/blob.bin"))
        .header(RANGE, "bytes=99990-")
        .send()
        .expect("open");
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes 99990-99999/100000");
    let r = c
        .get(gh.url("/blob.bin"))
        .header(RANGE, "bytes=100000-")
        .send()
        .expect("416");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes */100000");
    let r = c
        .get(gh.url("/blob.bin"))
        .header(RANGE, "bytes=0-1,5-6")
        .send()
        .expect("multi");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "several ranges are answered with the whole file"
    );
    assert_eq!(r.bytes().expect("body").len(), 100_000);
}

/// Plain HTTP/1 sends files from disk with sendfile: requests pipelined on one connection (two
/// files, a HEAD between them, a range) each get their own file's bytes, in order.
#[test]
fn pipelined_requests_get_each_files_bytes_in_order() {
    let one = big(2 * 1024 * 1024 + 5);
    let two: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let (_dir, gh) = serve(&[("one.bin", &one), ("two.bin", &two)], "");
    // (request line, more header lines, the body expected, its Content-Length)
    let requests = [
        ("GET /one.bin", "", &one[..], one.len()),
        ("HEAD /one.bin", "", &[][..], one.len()),
        ("GET /two.bin", "", &two[..], two.len()),
        (
            "GET /one.bin",
            "Range: bytes=5-1048580\r\n",
            &one[5..1_048_581],
            1_048_576,
        ),
        ("GET /two.bin", "Connection: close\r\n", &two[..], two.len()),
    ];
    let wire: String = requests
        .iter()
        .map(|(line, extra, _, _)| format!("{line} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"))
        .collect();
    let ex = gh.raw(wire.as_bytes(), Duration::from_secs(20));
    assert!(ex.closed, "the last request closes the connection");
    let mut rest = &ex.bytes[..];
    for (line, _, expected, length) in requests {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("{line}: no response head"));
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let declared: Option<usize> = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok());
        assert_eq!(declared, Some(length), "{line}: {head}");
        rest = &rest[end + 4..];
        assert!(rest.len() >= expected.len(), "{line}: body cut short");
        assert!(
            &rest[..expected.len()] == expected,
            "{line}: not the file's bytes"
        );
        rest = &rest[expected.len()..];
    }
    assert!(rest.is_empty(), "{} bytes more", rest.len());
}

#[test]
fn large_file_streams_intact_over_http1_and_http2() {
    let body = big(3 * 1024 * 1024 + 17);
    let (_dir, gh) = serve(&[("big.bin", &body)], "");
    let got = client()
        .get(gh.url("/big.bin"))
        .send()
        .expect("get")
        .bytes()
        .expect("body");
    assert!(got.as_ref() == body.as_slice(), "HTTP/1.1 body differs");
    let r = h2_client().get(gh.url("/big.bin")).send().expect("h2 get");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert!(
        r.bytes().expect("body").as_ref() == body.as_slice(),
        "HTTP/2 body differs"
    );
}

#[test]
fn directories_index_and_listing() {
    let (_dir, gh) = serve(
        &[
            ("docs/index.html", b"docs"),
            ("empty/.keep", b""),
            ("files/a.txt", b"a"),
            ("files/<b>.txt", b"b"),
        ],
        "",
    );
    let c = client();
    let r = c.get(gh.url("/docs?x=1")).send().expect("get");
    assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.headers()[LOCATION], "/docs/?x=1");
    assert_eq!(
        c.get(gh.url("/docs/"))
            .send()
            .expect("get")
            .text()
            .expect("body"),
        "docs"
    );
    assert_eq!(
        c.get(gh.url("/files/")).send().expect("get").status(),
        StatusCode::FORBIDDEN,
        "no listing by default"
    );

    let (_dir, gh) = serve(
        &[
            ("files/a.txt", b"a"),
            ("files/<b>.txt", b"b"),
            ("files/.secret", b"s"),
            ("files/sub/x", b"x"),
        ],
        "autoindex = true",
    );
    let r = c.get(gh.url("/files/")).send().expect("listing");
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().expect("html");
    assert!(html.contains("<a href=\"a.txt\">a.txt</a>"), "{html}");
    assert!(
        html.contains("<a href=\"%3Cb%3E.txt\">&lt;b&gt;.txt</a>"),
        "{html}"
    );
    assert!(html.contains("<a href=\"sub/\">sub/</a>"), "{html}");
    assert!(
        !html.contains("secret"),
        "hidden files are not listed: {html}"
    );
}

#[test]
fn methods_other_than_get_and_head_get_405_with_allow() {
    let (_dir, gh) = serve(&[("index.html", b"x")], "");
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = client()
            .request(method.parse().expect("method"), gh.url("/"))
            .send()
            .expect("send");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");
    }
}

#[test]
fn precompressed_siblings() {
    let (_dir, gh) = serve(
        &[
            ("app.js", b"plain"),
            ("app.js.gz", b"GZ"),
            ("app.js.br", b"BR"),
            ("only.css", b"p"),
            ("only.css.gz", b"G"),
        ],
        "",
    );
    let c = client();
    let r = c
        .get(gh.url("/app.js"))
        .header(ACCEPT_ENCODING, "gzip, br")
        .send()
        .expect("get");
    assert_eq!(r.headers()[CONTENT_ENCODING], "br");
    assert_eq!(r.headers()[CONTENT_TYPE], "text/javascript");
    assert_eq!(r.headers()[VARY], "Accept-Encoding");
    assert_eq!(r.text().expect("body"), "BR");
    let r = c
        .get(gh.url("/app.js"))
        .header(ACCEPT_ENCODING, "gzip")
        .send()
        .expect("get");
    assert_eq!(r.headers()[CONTENT_ENCODING], "gzip");
    assert_eq!(r.text().expect("body"), "GZ");
    let r = c
        .get(gh.url("/app.js"))
        .header(ACCEPT_ENCODING, "br;q=0, gzip;q=0")
        .send()
        .expect("get");
    assert!(r.headers().get(CONTENT_ENCODING).is_none());
    assert_eq!(r.headers()[VARY], "Accept-Encoding");
    assert_eq!(r.text().expect("body"), "plain");
    let r = c
        .get(gh.url("/only.css"))
        .header(ACCEPT_ENCODING, "br, gzip")
        .send()
        .expect("get");
    assert_eq!(r.headers()[CONTENT_ENCODING], "gzip");

    let (_dir, gh) = serve(
        &[("app.js", b"plain"), ("app.js.gz", b"GZ")],
        "precompressed = false",
    );
    let r = c
        .get(gh.url("/app.js"))
        .header(ACCEPT_ENCODING, "gzip")
        .send()
        .expect("get");
    assert!(r.headers().get(CONTENT_ENCODING).is_none());
    assert!(r.headers().get(VARY).is_none());
    assert_eq!(r.text().expect("body"), "plain");
}

#[test]
fn mount_path() {
    let (_dir, gh) = serve(&[("a.txt", b"a")], "mount = \"/static\"");
    let c = client();
    assert_eq!(
        c.get(gh.url("/static/a.txt"))
            .send()
            .expect("get")
            .text()
            .expect("body"),
        "a"
    );
    assert_eq!(
        c.get(gh.url("/a.txt")).send().expect("get").status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.get(gh.url("/staticx/a.txt"))
            .send()
            .expect("get")
            .status(),
        StatusCode::NOT_FOUND
    );
}

/// Traversal shapes are sent raw: an HTTP client library would normalise them away.
#[test]
fn traversal_and_hidden_files_are_404() {
    let dir = site(&[
        ("public.txt", b"public"),
        (".env", b"SECRET=1"),
        (".git/config", b"x"),
        ("sub/ok.txt", b"ok"),
    ]);
    // A secret next to the root, and symlinks out of it.
    std::fs::write(dir.path().join("secret.txt"), b"TOPSECRET").expect("write");
    std::os::unix::fs::symlink(
        dir.path().join("secret.txt"),
        dir.path().join("site/escape.txt"),
    )
    .expect("symlink");
    std::os::unix::fs::symlink("../secret.txt", dir.path().join("site/relative-escape.txt"))
        .expect("symlink");
    std::os::unix::fs::symlink("/etc", dir.path().join("site/etc")).expect("symlink");
    std::os::unix::fs::symlink("sub/ok.txt", dir.path().join("site/inside.txt")).expect("symlink");
    let gh = Gatehouse::start(dir.path(), &static_config("", ""));

    let get = |target: &str| {
        let ex = gh.raw(
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        );
        let text = ex.text();
        assert!(
            !text.contains("TOPSECRET") && !text.contains("root:") && !text.contains("SECRET=1"),
            "{target} leaked: {text}"
        );
        ex.statuses().first().copied().unwrap_or(0)
    };
    assert_eq!(get("/public.txt"), 200);
    assert_eq!(
        get("/inside.txt"),
        200,
        "a symlink that stays inside the root is served"
    );
    // Shapes with no normal form are refused before any target sees them (docs/http.md, "One view
    // of the request"); the rest reach the static target, which finds nothing to serve.
    for (target, status) in [
        ("/../secret.txt", 400),
        ("/sub/../../secret.txt", 400),
        ("/%2e%2e/secret.txt", 400),
        ("/%2E%2E/secret.txt", 400),
        ("/..%2fsecret.txt", 400),
        ("/sub/..%2f..%2fsecret.txt", 400),
        ("/%252e%252e/secret.txt", 404),
        ("/..%5csecret.txt", 400),
        ("/sub%5c..%5c..%5csecret.txt", 400),
        ("/public.txt%00.html", 400),
        ("/escape.txt", 404),
        ("/relative-escape.txt", 404),
        ("/etc/passwd", 404),
        ("/.env", 404),
        ("/%2eenv", 404),
        ("/.git/config", 404),
        ("/sub/../.env", 404),
    ] {
        assert_eq!(get(target), status, "{target}");
    }
    // A raw backslash is not a valid request-target character: refused before it gets anywhere.
    assert!(matches!(get("/..\\secret.txt"), 400 | 404));
}

#[test]
fn dotfiles_served_when_enabled() {
    let (_dir, gh) = serve(
        &[(".well-known/security.txt", b"contact")],
        "show_hidden = true",
    );
    let r = client()
        .get(gh.url("/.well-known/security.txt"))
        .send()
        .expect("get");
    assert_eq!(r.text().expect("body"), "contact");
}

/// Small files are kept in memory for `file_cache_valid`: a change on disk is not seen before that
/// (which is how this test knows the cache answered) and is seen after it, with validators, length
/// and ranges of the new version. `file_cache = 0` reads the disk every time.
#[test]
fn file_cache_serves_from_memory_until_valid_runs_out() {
    let (dir, gh) = serve(
        &[
            ("a.txt", b"first"),
            ("b.css", b"plain"),
            ("b.css.gz", b"gzipped"),
        ],
        "file_cache_valid = \"700ms\"\n",
    );
    let c = client();
    let get = |path: &str, extra: &[(reqwest::header::HeaderName, &str)]| {
        let mut req = c.get(gh.url(path)).header(ACCEPT_ENCODING, "identity");
        for (name, value) in extra {
            req = req.header(name, *value);
        }
        let r = req.send().expect("get");
        let status = r.status();
        let etag = r
            .headers()
            .get(ETAG)
            .map(|v| v.to_str().expect("etag").to_string());
        (status, etag, r.text().expect("body"))
    };
    let (_, first_etag, body) = get("/a.txt", &[]);
    assert_eq!(body, "first");
    std::fs::write(dir.path().join("site/a.txt"), b"second, longer").expect("write");
    let (status, etag, body) = get("/a.txt", &[]);
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "first"),
        "kept in memory"
    );
    assert_eq!(etag, first_etag);
    let (status, _, body) = get("/a.txt", &[(RANGE, "bytes=1-3")]);
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::PARTIAL_CONTENT, "irs")
    );
    let etag = first_etag.clone().expect("etag");
    assert_eq!(
        get("/a.txt", &[(IF_NONE_MATCH, &etag)]).0,
        StatusCode::NOT_MODIFIED
    );

    // Each Accept-Encoding gets its own entry.
    let r = c
        .get(gh.url("/b.css"))
        .header(ACCEPT_ENCODING, "gzip")
        .send()
        .expect("gz");
    assert_eq!(r.headers()[CONTENT_ENCODING], "gzip");
    assert_eq!(r.bytes().expect("body").as_ref(), b"gzipped");
    assert_eq!(get("/b.css", &[]).2, "plain");

    std::thread::sleep(Duration::from_millis(900));
    let (status, etag, body) = get("/a.txt", &[]);
    assert_eq!((status, body.as_str()), (StatusCode::OK, "second, longer"));
    assert_ne!(etag, first_etag, "the new version's validators");
    let (_, _, body) = get("/a.txt", &[(RANGE, "bytes=8-")]);
    assert_eq!(body, "longer");
    drop(gh);

    let (dir, gh) = serve(&[("a.txt", b"first")], "file_cache = 0\n");
    let get = |path: &str| {
        client()
            .get(gh.url(path))
            .send()
            .expect("get")
            .text()
            .expect("body")
    };
    assert_eq!(get("/a.txt"), "first");
    std::fs::write(dir.path().join("site/a.txt"), b"second").expect("write");
    assert_eq!(get("/a.txt"), "second", "no cache: the disk every time");
}
