//! The `upstream` target against real servers: Gunicorn serving a Flask app, and a standard-library
//! Python server that answers, fails, hangs, resets, streams and speaks WebSocket on request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_tests::{Gatehouse, apps_dir, client, sample};
use reqwest::StatusCode;

/// A test server process, killed on drop.
struct Backend {
    child: Child,
    port: u16,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend {
    /// `upstream_server.py NAME` with `args`; waits until it listens.
    fn start(name: &str, args: &[&str]) -> Backend {
        let mut child = Command::new("python3")
            .arg(apps_dir().join("upstream_server.py"))
            .arg(name)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port line");
        let port = line
            .trim()
            .strip_prefix("port=")
            .and_then(|p| p.parse().ok())
            .expect("port=N");
        Backend { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn get(&self, path: &str) -> String {
        client()
            .get(format!("{}{path}", self.url()))
            .send()
            .and_then(|r| r.text())
            .expect("backend")
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

fn upstream_config(servers: &[String], extra: &str) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.api]\nupstream = [{list}]\n{extra}\n")
}

fn start(servers: &[String], extra: &str) -> (tempfile::TempDir, Gatehouse) {
    let dir = tempfile::tempdir().expect("tmp");
    let gh = Gatehouse::start(dir.path(), &upstream_config(servers, extra));
    (dir, gh)
}

fn json(r: reqwest::blocking::Response) -> serde_json::Value {
    serde_json::from_str(&r.text().expect("body")).expect("json")
}

#[test]
fn gunicorn_behind_us_over_tcp_and_a_unix_socket_sees_the_client_and_no_hop_by_hop_fields() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = closed_port();
    let socket = dir.path().join("gunicorn.sock");
    let mut gunicorns = Vec::new();
    for bind in [
        format!("127.0.0.1:{port}"),
        format!("unix:{}", socket.display()),
    ] {
        gunicorns.push(Backend {
            child: Command::new("python3")
                .args([
                    "-m",
                    "gunicorn",
                    "--workers",
                    "1",
                    "--threads",
                    "4",
                    "--bind",
                ])
                .arg(&bind)
                .arg("flask_app:app")
                .current_dir(apps_dir())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gunicorn (pip install gunicorn)"),
            port,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while (TcpStream::connect(("127.0.0.1", port)).is_err() || !socket.exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    for server in [
        format!("http://127.0.0.1:{port}"),
        format!("unix:{}", socket.display()),
    ] {
        let config = upstream_config(std::slice::from_ref(&server), "via = true\n");
        let gh = Gatehouse::start(dir.path(), &config);
        let r = client()
            .get(gh.url("/headers?x=1"))
            .header("Host", "shop.example")
            .header("Connection", "keep-alive, x-private")
            .header("X-Private", "hop-by-hop")
            .header("X-Forwarded-For", "6.6.6.6")
            .send()
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{server}");
        assert!(r.headers().get("via").is_some(), "{server}");
        let seen = json(r);
        let h = &seen["headers"];
        assert_eq!(h["host"], "shop.example", "{server}: the client's Host");
        assert_eq!(
            h["x-forwarded-for"], "127.0.0.1",
            "{server}: the client's own claim dropped"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["via"], "1.1 gatehouse");
        assert!(h.get("x-private").is_none(), "{server}: {h}");
        assert_eq!(seen["full_path"], "/headers?x=1");

        let r = client().get(gh.url("/json")).send().expect("json");
        assert_eq!(json(r)["message"], "hello");
        let r = client().get(gh.url("/stream")).send().expect("stream");
        assert_eq!(
            r.text().expect("body"),
            "line 0\nline 1\nline 2\nline 3\nline 4\n"
        );
        let r = client().get(gh.url("/boom")).send().expect("boom");
        assert_eq!(
            r.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "the app's own 500 passes"
        );
    }
}

#[test]
fn round_robin_follows_weights_and_a_hash_key_sticks_to_its_server_across_restarts() {
    let a = Backend::start("a", &[]);
    let b = Backend::start("b", &[]);
    let c = Backend::start("c", &[]);
    let servers = [format!("{} weight=2", a.url()), b.url(), c.url()];
    let (_dir, gh) = start(&servers, "");
    let mut seen = std::collections::HashMap::new();
    for _ in 0..40 {
        let name = client()
            .get(gh.url("/id"))
            .send()
            .and_then(|r| r.text())
            .expect("id");
        *seen.entry(name).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&20), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("c"), Some(&10), "{seen:?}");

    let extra = "balance = \"hash\"\nhash_key = \"cookie:session\"\n";
    let homes = |gh: &Gatehouse| -> Vec<String> {
        (0..30)
            .map(|user| {
                let mut names = (0..3).map(|_| {
                    client()
                        .get(gh.url("/id"))
                        .header("Cookie", format!("theme=dark; session=user{user}"))
                        .send()
                        .and_then(|r| r.text())
                        .expect("id")
                });
                let first = names.next().expect("one");
                assert!(
                    names.all(|n| n == first),
                    "user{user} moved between requests"
                );
                first
            })
            .collect()
    };
    let (dir, gh) = start(&servers, extra);
    let before = homes(&gh);
    assert!(
        ["a", "b", "c"]
            .iter()
            .all(|s| before.iter().any(|h| h == s)),
        "keys spread over all servers: {before:?}"
    );
    drop(gh);
    let gh = Gatehouse::start(dir.path(), &upstream_config(&servers, extra));
    assert_eq!(homes(&gh), before, "the same homes after a restart");
}

#[test]
fn refused_servers_are_skipped_ejected_and_tried_again_and_all_down_is_a_quick_502() {
    let a = Backend::start("a", &[]);
    let dead_port = closed_port();
    let servers = [a.url(), format!("http://127.0.0.1:{dead_port}")];
    let (_dir, gh) = start(
        &servers,
        "max_fails = 2\nfail_timeout = \"2s\"\nconnect_timeout = \"1s\"\n",
    );
    // Every request succeeds: a refused connection never reached anyone, so another server is
    // tried, whatever the method.
    for _ in 0..10 {
        let r = client().post(gh.url("/id")).body("x").send().expect("post");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().expect("body"), "a");
    }
    gh.wait_stderr("left out for fail_timeout", Duration::from_secs(5));

    // The dead server comes to life: after fail_timeout it gets its share again.
    let b = Backend::start("b", &["--port", &dead_port.to_string()]);
    std::thread::sleep(Duration::from_millis(2500));
    let names: Vec<String> = (0..10)
        .map(|_| {
            client()
                .get(gh.url("/id"))
                .send()
                .and_then(|r| r.text())
                .expect("id")
        })
        .collect();
    assert!(names.iter().any(|n| n == "b"), "{names:?}");
    drop(a);
    drop(b);

    // Nothing listens anywhere: 502 at once, not after a hang.
    let started = Instant::now();
    let r = client().get(gh.url("/id")).send().expect("get");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(
            client().get(gh.url("/id")).send().expect("get").status(),
            StatusCode::BAD_GATEWAY
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn hangs_time_out_with_504_resets_give_502_and_a_post_is_never_sent_twice() {
    let a = Backend::start("a", &[]);
    let b = Backend::start("b", &[]);
    let servers = [a.url(), b.url()];
    let (_dir, gh) = start(
        &servers,
        "first_byte_timeout = \"1s\"\nread_timeout = \"1s\"\nretries = 1\nmax_fails = 100\n",
    );

    // GET is idempotent: a reset on a is retried on b.
    for _ in 0..4 {
        let r = client().get(gh.url("/reset?only=a")).send().expect("get");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().expect("body"), "no reset on b");
    }
    // POST is not: it may have been acted on, so the client gets 502 and nobody gets it twice.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            client()
                .post(gh.url("/reset?only=a"))
                .body("pay")
                .send()
                .expect("post")
                .status(),
        );
    }
    assert!(statuses.contains(&StatusCode::BAD_GATEWAY), "{statuses:?}");
    let posts = |s: &Backend| {
        serde_json::from_str::<serde_json::Value>(&s.get("/counts")).expect("counts")["POST /reset"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(
        posts(&a) + posts(&b),
        4,
        "each POST reached exactly one server once"
    );

    let started = Instant::now();
    let r = client().get(gh.url("/hang")).send().expect("hang");
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A body that stalls past read_timeout is cut: the client sees a short read, not a hang.
    let started = Instant::now();
    let r = client().get(gh.url("/slow?gap=3")).send().expect("slow");
    assert!(r.text().is_err(), "the body is cut off");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let r = client().get(gh.url("/slow?gap=0.2")).send().expect("slow");
    assert_eq!(r.text().expect("whole"), "1234567890");
}

#[test]
fn active_health_checks_take_a_server_out_and_bring_it_back() {
    let a = Backend::start("a", &[]);
    let b = Backend::start("b", &[]);
    let servers = [a.url(), b.url()];
    let (_dir, gh) = start(
        &servers,
        "health_check = { path = \"/healthz\", interval = \"200ms\", fails = 2, passes = 2, expect = \"2xx\" }\n",
    );
    let names = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                client()
                    .get(gh.url("/id"))
                    .send()
                    .and_then(|r| r.text())
                    .expect("id")
            })
            .collect()
    };
    assert!(names(6).iter().any(|n| n == "a"));
    a.get("/sick");
    gh.wait_stderr("failed its health checks", Duration::from_secs(5));
    assert!(names(10).iter().all(|n| n == "b"));
    a.get("/well");
    gh.wait_stderr("passed its health checks", Duration::from_secs(5));
    assert!(names(6).iter().any(|n| n == "a"));
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_100_mib_upload_and_download_stream_through_with_bounded_memory() {
    let a = Backend::start("a", &[]);
    let dir = tempfile::tempdir().expect("tmp");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("tmp");
    let config = upstream_config(&[a.url()], "").replace(
        "[server]\n",
        "[server]\nlimits = { max_body_size = \"200MiB\" }\n",
    );
    let tmp_text = tmp.display().to_string();
    let gh = Gatehouse::start_with_env(dir.path(), &config, &[("TMPDIR", &tmp_text)]);
    let before = peak_rss_kib(gh.pid());

    // Upload: chunked from the client, streamed to the server as it comes.
    let size: usize = 100 << 20;
    let mut hasher_input = Vec::with_capacity(1 << 20);
    hasher_input.extend((0..(1 << 20)).map(|i| (i % 251) as u8));
    let block = hasher_input.clone();
    let body = reqwest::blocking::Body::new(Repeat {
        block,
        left: size,
        at: 0,
    });
    let r = client()
        .post(gh.url("/upload"))
        .body(body)
        .send()
        .expect("upload");
    assert_eq!(r.status(), StatusCode::OK);
    let seen = json(r);
    assert_eq!(seen["length"], size as u64);
    assert_eq!(
        std::fs::read_dir(&tmp).expect("tmp").count(),
        0,
        "nothing spooled"
    );

    // Download: 100 MiB read by the client as it comes.
    let mut r = client()
        .get(gh.url(&format!("/download?size={size}")))
        .send()
        .expect("download");
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, size);
    let after = peak_rss_kib(gh.pid());
    assert!(
        after.saturating_sub(before) < 40 * 1024,
        "the front grew by {} KiB moving 200 MiB",
        after.saturating_sub(before)
    );

    // A streamed body past max_body_size is the client's fault: 413, not a server failure.
    let config = upstream_config(&[a.url()], "").replace(
        "[server]\n",
        "[server]\nlimits = { max_body_size = \"10KiB\" }\n",
    );
    let small = Gatehouse::start(dir.path(), &config);
    // curl, because it reads a response that comes while it still sends (reqwest's blocking
    // client reports its body channel closing instead); the body is chunked, without a length.
    let big = dir.path().join("64KiB");
    std::fs::write(&big, vec![b'y'; 64 << 10]).expect("write body");
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", "Transfer-Encoding: chunked", "--data-binary"])
        .arg(format!("@{}", big.display()))
        .arg(small.url("/upload"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413", "{out:?}");
    drop(small);

    // With request_buffering the body is read first and sent with a length.
    let config = upstream_config(&[a.url()], "request_buffering = true\n");
    let gh = Gatehouse::start(dir.path(), &config);
    let r = client()
        .post(gh.url("/echo"))
        .body(reqwest::blocking::Body::new(Repeat {
            block: vec![b'x'; 1000],
            left: 5000,
            at: 0,
        }))
        .send()
        .expect("post");
    let seen = json(r);
    assert_eq!(seen["length"], 5000);
    assert_eq!(seen["headers"]["content-length"], "5000");
    assert!(seen["headers"].get("transfer-encoding").is_none());
}

/// A body of `left` bytes made of `block` repeated, read without a known length (chunked).
struct Repeat {
    block: Vec<u8>,
    left: usize,
    at: usize,
}

impl Read for Repeat {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = buf.len().min(self.left).min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at = (self.at + n) % self.block.len();
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn a_websocket_is_proxied_both_ways() {
    let a = Backend::start("a", &[]);
    let (_dir, gh) = start(&[a.url()], "");
    let addr: SocketAddr = gh.addr();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("101");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    for (i, text) in ["hello", "second message"].iter().enumerate() {
        // A masked text frame, as clients send.
        let mask = [1u8, 2, 3, 4 + i as u8];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(j, b)| b ^ mask[j % 4]));
        s.write_all(&frame).expect("frame");
        let mut reply_head = [0u8; 2];
        s.read_exact(&mut reply_head).expect("reply head");
        let mut reply = vec![0u8; usize::from(reply_head[1] & 0x7f)];
        s.read_exact(&mut reply).expect("reply");
        assert_eq!(String::from_utf8_lossy(&reply), format!("a echo: {text}"));
    }
    // Quiet longer than the head timeout would allow an HTTP client: the tunnel stays.
    s.write_all(&[0x88, 0x80, 0, 0, 0, 0]).expect("close");
    let mut close = [0u8; 2];
    s.read_exact(&mut close).expect("close reply");
    assert_eq!(close, [0x88, 0x00]);
}

#[test]
fn https_upstreams_are_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = gatehouse_tests::tls::TestCa::new("Upstream CA");
    ca.write(dir.path());
    ca.issue(&["localhost"], false).write(dir.path(), "server");
    let cert = dir.path().join("server.pem").display().to_string();
    let key = dir.path().join("server.key").display().to_string();
    let a = Backend::start("secure", &["--tls", &cert, &key]);
    let url = format!("https://localhost:{}", a.port);
    let gh = Gatehouse::start(
        dir.path(),
        &upstream_config(std::slice::from_ref(&url), "tls_ca = \"ca.pem\"\n"),
    );
    let r = client().get(gh.url("/id")).send().expect("get");
    assert_eq!(r.text().expect("body"), "secure");
    drop(gh);
    // Without the CA the server's certificate is not trusted: 502, and it says why.
    let gh = Gatehouse::start(dir.path(), &upstream_config(&[url], "retries = 0\n"));
    let r = client().get(gh.url("/id")).send().expect("get");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let log = gh.wait_stderr("upstream request failed", Duration::from_secs(5));
    assert!(log.contains("certificate"), "{log}");
}

#[test]
fn upstream_settings_are_checked_with_their_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.api]\nupstream = [\"127.0.0.1:9000\", \"http://a:1 weight=0\"]\nbalance = \"hash\"\n[targets.site]\nstatic = \".\"\nretries = 3\n[targets.checked]\nupstream = [\"http://a:1\"]\nhealth_check = { interval = \"0s\" }\n",
    )
    .expect("config");
    let out = Command::new(gatehouse_tests::binary())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for key in [
        "targets.api.upstream[0]",
        "targets.api.upstream[1]",
        "targets.api.hash_key",
        "`targets.site`",
        "targets.checked.health_check",
    ] {
        assert!(text.contains(key), "{key} in:\n{text}");
    }
}

#[test]
fn the_router_sends_a_prefix_to_an_upstream_which_sees_the_path_below_it() {
    let a = Backend::start("a", &[]);
    let dir = gatehouse_tests::site(&[("index.html", b"site\n")]);
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.api]\nupstream = [\"{}\"]\n[targets.site]\nstatic = \"site\"\n[[plugins]]\nuse = \"router\"\n[[plugins.config.routes]]\npath = \"/api/\"\ntarget = \"api\"\nstrip_prefix = true\n[[plugins.config.routes]]\npath = \"/\"\ntarget = \"site\"\n",
        a.url()
    );
    let gh = Gatehouse::start(dir.path(), &config);
    let seen = json(client().get(gh.url("/api/echo?q=1")).send().expect("api"));
    assert_eq!(seen["path"], "/echo?q=1");
    assert_eq!(seen["name"], "a");
    assert_eq!(
        client()
            .get(gh.url("/"))
            .send()
            .and_then(|r| r.text())
            .expect("site"),
        "site\n"
    );
}

#[test]
fn the_admin_listener_reports_health_readiness_and_metrics_after_known_traffic() {
    let a = Backend::start("a", &[]);
    let dead = closed_port();
    let dir = gatehouse_tests::site(&[("index.html", b"site\n")]);
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[targets.api]\nupstream = [\"{}\", \"http://127.0.0.1:{dead}\"]\nmax_fails = 1\nfail_timeout = \"60s\"\n[targets.site]\nstatic = \"site\"\n[[plugins]]\nuse = \"router\"\n[[plugins.config.routes]]\npath = \"/api/\"\ntarget = \"api\"\nstrip_prefix = true\n[[plugins.config.routes]]\npath = \"/\"\ntarget = \"site\"\n",
        a.url()
    );
    let gh = Gatehouse::start(dir.path(), &config);
    let admin = format!("http://{}", gh.addrs[1]);
    let get = |url: String| client().get(url).send().expect("get");

    for _ in 0..3 {
        assert_eq!(get(gh.url("/api/id")).text().expect("body"), "a");
    }
    for path in ["/", "/", "/missing"] {
        get(gh.url(path));
    }
    let r = get(format!("{admin}/healthz"));
    assert_eq!(r.status(), StatusCode::OK);
    let r = get(format!("{admin}/readyz"));
    let status = r.status();
    let text = r.text().expect("readyz");
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("api: ok (1 of 2 servers up)"), "{text}");
    assert!(text.contains("plugins: ok (1 loaded)"), "{text}");
    assert_eq!(get(format!("{admin}/nope")).status(), StatusCode::NOT_FOUND);

    let metrics = get(format!("{admin}/metrics")).text().expect("metrics");
    let value =
        |series: &str| sample(&metrics, series).unwrap_or_else(|| panic!("{series} in\n{metrics}"));
    assert_eq!(
        value("gatehouse_responses_total{target=\"api\",status=\"200\"}"),
        3.0
    );
    assert_eq!(
        value("gatehouse_responses_total{target=\"site\",status=\"200\"}"),
        2.0
    );
    assert_eq!(
        value("gatehouse_responses_total{target=\"site\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        value("gatehouse_response_head_seconds_count{target=\"api\"}"),
        3.0
    );
    assert_eq!(
        value("gatehouse_plugin_calls_total{plugin=\"router\",hook=\"on-request\"}"),
        6.0
    );
    assert!(
        value("gatehouse_plugin_call_seconds_total{plugin=\"router\",hook=\"on-request\"}") > 0.0
    );
    let dead_server = format!("{{target=\"api\",server=\"http://127.0.0.1:{dead}\"}}");
    assert_eq!(
        value(&format!("gatehouse_upstream_server_up{dead_server}")),
        0.0
    );
    assert_eq!(
        value(&format!("gatehouse_upstream_failures_total{dead_server}")),
        1.0
    );
    assert_eq!(
        value("gatehouse_upstream_retries_total{target=\"api\"}"),
        1.0
    );
    assert!(value("gatehouse_connections_active") >= 0.0);

    // With its last server gone the upstream is not ready.
    drop(a);
    assert_eq!(get(gh.url("/api/id")).status(), StatusCode::BAD_GATEWAY);
    let r = get(format!("{admin}/readyz"));
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.text()
            .expect("readyz")
            .contains("api: NOT READY (0 of 2 servers up)")
    );
}

#[test]
fn http2_to_the_servers_when_configured() {
    // The server is another Gatehouse serving files; its access log says which protocol came.
    let site = gatehouse_tests::site(&[("hello.txt", b"over h2c\n")]);
    let origin = Gatehouse::start(
        site.path(),
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.site]\nstatic = \"site\"\n",
    );
    let (_dir, gh) = start(&[format!("http://{}", origin.addrs[0])], "http2 = true\n");
    let r = client().get(gh.url("/hello.txt")).send().expect("get");
    assert_eq!(r.text().expect("body"), "over h2c\n");
    let log = origin.wait_stdout("GET /hello.txt", Duration::from_secs(5));
    assert!(log.contains("HTTP/2.0"), "{log}");
    // Many Hosts still share one multiplexed connection per event loop.
    for i in 0..20 {
        let r = client()
            .get(gh.url("/hello.txt"))
            .header("Host", format!("tenant{i}.example"))
            .send()
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let conns = std::fs::read_dir(format!("/proc/{}/fd", origin.pid()))
        .expect("fds")
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .count();
    assert!(conns < 12, "{conns} sockets at the origin after 20 Hosts");
}

#[test]
fn the_first_byte_timer_starts_once_the_body_is_handed_over_even_when_buffered() {
    let a = Backend::start("a", &[]);
    let dir = tempfile::tempdir().expect("tmp");
    let config = upstream_config(
        &[a.url()],
        "request_buffering = true\nfirst_byte_timeout = \"1s\"\nretries = 0\n",
    )
    .replace(
        "[server]\n",
        "[server]\nlimits = { max_body_size = \"64MiB\" }\n",
    );
    let gh = Gatehouse::start(dir.path(), &config);
    // 32 MiB read by the server 64 KiB per 5 ms: about 3 s to send, far past first_byte_timeout,
    // which runs only from the end of the body (as far as the kernel's buffers let us see it).
    let size = 32 << 20;
    let r = client()
        .put(gh.url("/slowread?gap=0.005"))
        .body(vec![b'z'; size])
        .send()
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().expect("body"), format!("read {size} slowly\n"));
}

#[test]
fn the_admin_listener_answers_while_every_client_slot_is_busy() {
    let a = Backend::start("a", &[]);
    let dir = tempfile::tempdir().expect("tmp");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nlimits = {{ max_connections = 2 }}\n[admin]\nlisten = \"127.0.0.1:0\"\n[targets.api]\nupstream = [\"{}\"]\nfirst_byte_timeout = \"20s\"\n",
        a.url()
    );
    let gh = Gatehouse::start(dir.path(), &config);
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let url = gh.url("/hang");
            std::thread::spawn(move || client().get(url).send().map(|r| r.status()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let r = client()
        .get(format!("http://{}/healthz", gh.addrs[1]))
        .send()
        .expect("healthz");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(a);
    for b in busy {
        let _ = b.join();
    }
}

#[test]
fn a_lone_server_is_never_left_out_for_one_clients_broken_requests() {
    let a = Backend::start("a", &[]);
    let (_dir, gh) = start(&[a.url()], "max_fails = 1\nretries = 0\n");
    for _ in 0..5 {
        let r = client()
            .post(gh.url("/reset"))
            .body("x")
            .send()
            .expect("post");
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }
    // As nginx: with nothing to fail over to, the server is still tried.
    let r = client().get(gh.url("/id")).send().expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().expect("body"), "a");
    assert!(!gh.stderr().contains("left out for fail_timeout"));
}

#[test]
fn kept_connections_are_reused_one_the_server_closed_is_skipped_and_idle_ones_are_closed() {
    let a = Backend::start("a", &[]);
    let (_dir, gh) = start(&[a.url()], "keepalive_timeout = \"1s\"\n");
    // One client connection, so one event loop (each keeps its own connections).
    let client = client();
    let port = |method: reqwest::Method| {
        let r = client
            .request(method, gh.url("/port"))
            .body("x")
            .send()
            .expect("port");
        assert_eq!(r.status(), StatusCode::OK);
        r.text().expect("body")
    };
    // One request at a time: each goes on the connection the last one left.
    let first = port(reqwest::Method::GET);
    for _ in 0..4 {
        assert_eq!(port(reqwest::Method::GET), first);
    }

    // The server closes the kept connection without saying so in its answer. A POST (never
    // retried once it may have reached a server) then goes on a new connection, not the closed one.
    let r = client.get(gh.url("/bye")).send().expect("bye");
    assert_eq!(r.text().expect("body"), "bye");
    std::thread::sleep(Duration::from_millis(600));
    let second = port(reqwest::Method::POST);
    assert_ne!(second, first);
    assert_eq!(port(reqwest::Method::POST), second, "kept again");

    // Idle past keepalive_timeout, the connection is closed by Gatehouse (not only left unused):
    // the server sees no connection open but the one it is asked on. (hyper-util's pool looks
    // for expired connections every keepalive_timeout, so one goes within twice that.)
    std::thread::sleep(Duration::from_millis(2600));
    assert_eq!(a.get("/open"), "1");
    assert_ne!(port(reqwest::Method::GET), second);
}
