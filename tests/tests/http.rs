//! HTTP behaviour of the server itself: listeners, keep-alive, pipelining, HTTP/2, limits, timeouts.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use gatehouse_tests::{Gatehouse, client, h2_client, read_until_close, site, static_config};
use reqwest::StatusCode;

fn serve(extra: &str) -> (tempfile::TempDir, Gatehouse) {
    let dir = site(&[
        ("index.html", b"hello"),
        ("a.txt", b"AAAA"),
        ("b.txt", b"BB"),
    ]);
    let gh = Gatehouse::start(dir.path(), &static_config("", extra));
    (dir, gh)
}

fn limits(lines: &str) -> String {
    format!("[server.limits]\n{lines}\n")
}

#[test]
fn several_listeners_ipv4_ipv6_and_unix() {
    let dir = site(&[("index.html", b"hello")]);
    let config = "[server]\nlisten = [\"127.0.0.1:0\", \"[::1]:0\", \"unix:gh.sock\"]\n[targets.site]\nstatic = \"site\"\n";
    let gh = Gatehouse::start(dir.path(), config);
    assert_eq!(gh.addrs.len(), 3, "{:?}", gh.addrs);
    let v4 = &gh.addrs[0];
    let v6 = &gh.addrs[1];
    assert!(v4.starts_with("127.0.0.1:") && !v4.ends_with(":0"), "{v4}");
    assert!(v6.starts_with("[::1]:") && !v6.ends_with(":0"), "{v6}");
    assert_eq!(
        client()
            .get(format!("http://{v4}/"))
            .send()
            .expect("v4")
            .text()
            .expect("body"),
        "hello"
    );
    assert_eq!(
        client()
            .get(format!("http://{v6}/"))
            .send()
            .expect("v6")
            .text()
            .expect("body"),
        "hello"
    );
    let sock = gh.addrs[2].strip_prefix("unix:").expect("unix listener");
    let out = Command::new("curl")
        .args(["-s", "--unix-socket", sock, "http://localhost/"])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");
    assert!(
        gh.stderr().contains("listening on 127.0.0.1:"),
        "bound addresses are logged: {}",
        gh.stderr()
    );
}

#[test]
fn keep_alive_and_pipelining() {
    let (_dir, gh) = serve("");
    let mut stream = TcpStream::connect(gh.addr()).expect("connect");
    stream
        .write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /b.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let ex = read_until_close(&mut stream, Duration::from_secs(5));
    assert!(ex.closed);
    assert_eq!(ex.statuses(), vec![200, 200, 200]);
    let text = ex.text();
    let (a, b, c) = (
        text.find("AAAA"),
        text.find("\r\n\r\nBB"),
        text.find("hello"),
    );
    assert!(
        a < b && b < c && c.is_some(),
        "responses in request order: {text}"
    );
}

#[test]
fn chunked_request_body_is_read_before_answering() {
    let (_dir, gh) = serve("");
    let ex = gh.raw(
        b"POST /a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /b.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(ex.statuses(), vec![405, 200], "{}", ex.text());
}

#[test]
fn http2_prior_knowledge_many_streams() {
    let (_dir, gh) = serve("");
    let c = h2_client();
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let c = c.clone();
            let url = gh.url("/a.txt");
            std::thread::spawn(move || {
                let r = c.get(url).send().expect("h2");
                (r.version(), r.text().expect("body"))
            })
        })
        .collect();
    for h in handles {
        let (version, body) = h.join().expect("thread");
        assert_eq!(version, reqwest::Version::HTTP_2);
        assert_eq!(body, "AAAA");
    }
    let out = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &gh.url("/"),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}

#[test]
fn size_limits() {
    let (_dir, gh) = serve(&limits(
        "max_uri_length = 100\nmax_header_size = \"2KiB\"\nmax_headers = 10\nmax_body_size = 16",
    ));
    let status = |req: Vec<u8>| {
        let ex = gh.raw(&req, Duration::from_secs(5));
        assert!(ex.closed, "connection closed after a refusal");
        ex.statuses().first().copied()
    };
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(150));
    assert_eq!(status(long_uri.into_bytes()), Some(414));
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(3000)
    );
    assert_eq!(status(big_head.into_bytes()), Some(431));
    let many: String = (0..12).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(
        status(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes()),
        Some(431)
    );
    let declared = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n".to_vec();
    assert_eq!(
        status(declared),
        Some(413),
        "a declared length over the limit is refused before reading"
    );
    let chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n5\r\nmore!\r\n0\r\n\r\n".to_vec();
    assert_eq!(
        status(chunked),
        Some(413),
        "a chunked body over the limit is cut off"
    );
    // Within the limits everything still works.
    let ok = gh.raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\nConnection: close\r\n\r\n0123456789abcdef", Duration::from_secs(5));
    assert_eq!(ex_first(&ok), Some(405));
}

/// A server that takes bodies up to 16 KiB, and a connection to it that declared a 1 MiB one.
fn refused_upload() -> (tempfile::TempDir, Gatehouse, TcpStream) {
    let (dir, gh) = serve(&limits("max_body_size = \"16KiB\""));
    let mut s = TcpStream::connect(gh.addr()).expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n")
        .expect("head");
    (dir, gh, s)
}

/// A client still sending a body the server refused (413 on its declared length) hears the
/// refusal: closing with its bytes unread would make the kernel answer with a reset, which
/// destroys the response before the client reads it (nginx's `lingering_close`).
#[test]
fn a_client_still_sending_a_refused_body_reads_the_refusal() {
    let (_dir, _gh, mut s) = refused_upload();
    s.write_all(&[b'z'; 64 << 10]).expect("a part of the body");
    // The server has answered and closed its side by now; the client reads only afterwards.
    std::thread::sleep(Duration::from_millis(300));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    let read = std::io::Read::read_to_end(&mut s, &mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "{read:?}, read {:?}",
        text.lines().next()
    );
    assert!(read.is_ok(), "the connection ends cleanly: {read:?}");
}

/// Lingering is bounded: a client that keeps sending after a refusal (here, request heads that
/// are no longer served or even parsed) is cut off after about 10 s.
#[test]
fn a_client_that_keeps_sending_after_a_refusal_is_cut_off() {
    let (_dir, _gh, mut s) = refused_upload();
    let started = Instant::now();
    let heads = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
    let cut = loop {
        if s.write_all(&heads).is_err() || started.elapsed() > Duration::from_secs(30) {
            break started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        cut > Duration::from_secs(8) && cut < Duration::from_secs(15),
        "cut off after {cut:?}"
    );
}

fn ex_first(ex: &gatehouse_tests::RawExchange) -> Option<u16> {
    ex.statuses().first().copied()
}

#[test]
fn malformed_request_gets_400_and_close() {
    let (_dir, gh) = serve("");
    for bad in [&b"GARBAGE\r\n\r\n"[..], b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"] {
        let ex = gh.raw(bad, Duration::from_secs(5));
        assert_eq!(ex.statuses(), vec![400], "{}", String::from_utf8_lossy(bad));
        assert!(ex.closed);
    }
}

#[test]
fn slowloris_head_is_cut_off() {
    let (_dir, gh) = serve(&limits("header_read_timeout = \"1s\""));
    let mut stream = TcpStream::connect(gh.addr()).expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    // Dribble a header byte every 100 ms: never a complete head.
    let mut closed_after = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if stream.write_all(b"X").is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let probe = read_until_close(&mut stream, Duration::from_millis(1));
        if probe.closed {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the server never cut the dribbling client off");
    assert!(
        closed_after >= Duration::from_millis(900),
        "cut too early: {closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_secs(4),
        "cut too late: {closed_after:?}"
    );
    // A connection that sends nothing at all is cut off too.
    let mut silent = TcpStream::connect(gh.addr()).expect("connect");
    assert!(read_until_close(&mut silent, Duration::from_secs(4)).closed);
}

#[test]
fn idle_keep_alive_uses_keepalive_timeout_not_header_timeout() {
    let (_dir, gh) = serve(&limits(
        "header_read_timeout = \"1s\"\nkeepalive_timeout = \"3s\"",
    ));
    let mut stream = TcpStream::connect(gh.addr()).expect("connect");
    stream
        .write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let first = read_until_close(&mut stream, Duration::from_millis(1500));
    assert_eq!(first.statuses(), vec![200]);
    assert!(
        !first.closed,
        "idle keep-alive connection must outlive the header timeout"
    );
    // Still usable after the header timeout has passed.
    stream
        .write_all(b"GET /b.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let second = read_until_close(&mut stream, Duration::from_millis(500));
    assert_eq!(second.statuses(), vec![200]);
    let started = Instant::now();
    let rest = read_until_close(&mut stream, Duration::from_secs(6));
    assert!(
        rest.closed,
        "idle connection closed by the keep-alive timeout"
    );
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "closed after about 3s idle, not {:?}",
        started.elapsed()
    );
}

#[test]
fn slow_body_gets_408() {
    let (_dir, gh) = serve(&limits("body_read_timeout = \"1s\""));
    let mut stream = TcpStream::connect(gh.addr()).expect("connect");
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        .expect("write");
    let ex = read_until_close(&mut stream, Duration::from_secs(5));
    assert_eq!(ex.statuses(), vec![408]);
    assert!(ex.closed);
}

#[test]
fn max_connections_closes_the_longest_idle_connection_for_a_new_client() {
    let (_dir, gh) = serve(&limits("max_connections = 2"));
    let mut one = TcpStream::connect(gh.addr()).expect("connect");
    std::thread::sleep(Duration::from_millis(100));
    let mut two = TcpStream::connect(gh.addr()).expect("connect");
    two.write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let kept = read_until_close(&mut two, Duration::from_millis(300));
    assert_eq!(
        kept.statuses(),
        vec![200],
        "two is now an idle keep-alive connection"
    );
    // Both slots are taken by idle connections: the new client is served at once, and the one idle
    // the longest (one, which never sent anything) is closed for it.
    let third = gh.raw(
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    );
    assert_eq!(third.statuses(), vec![200]);
    assert!(
        read_until_close(&mut one, Duration::from_secs(2)).closed,
        "the oldest idle one closed"
    );
    two.write_all(b"GET /b.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    assert_eq!(
        read_until_close(&mut two, Duration::from_secs(2)).statuses(),
        vec![200]
    );
}

#[test]
fn max_connections_holds_further_clients_in_the_backlog_while_all_are_busy() {
    // A response larger than loopback's socket buffers, which the busy clients never read: their
    // requests stay in flight.
    let dir = site(&[("big.bin", &vec![7u8; 32 << 20]), ("a.txt", b"AAAA")]);
    let gh = Gatehouse::start(
        dir.path(),
        &static_config("", &limits("max_connections = 2")),
    );
    let busy = || {
        let mut s = TcpStream::connect(gh.addr()).expect("connect");
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        s
    };
    let one = busy();
    let two = busy();
    std::thread::sleep(Duration::from_millis(300));
    let mut third = TcpStream::connect(gh.addr()).expect("kernel accepts into the backlog");
    third
        .write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let waiting = read_until_close(&mut third, Duration::from_millis(700));
    assert!(
        waiting.bytes.is_empty(),
        "a third connection is not served while two are busy"
    );
    drop(one);
    let served = read_until_close(&mut third, Duration::from_secs(5));
    assert_eq!(served.statuses(), vec![200]);
    drop(two);
}

#[test]
fn server_stays_up_after_abuse() {
    let (_dir, gh) = serve("");
    for _ in 0..20 {
        let mut s = TcpStream::connect(gh.addr()).expect("connect");
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost");
        drop(s);
    }
    assert_eq!(
        client().get(gh.url("/")).send().expect("get").status(),
        StatusCode::OK
    );
}

#[test]
fn a_stalled_stdout_and_stderr_drop_log_lines_instead_of_freezing_the_server() {
    let dir = site(&[("a.txt", b"a")]);
    let config = "[server]\nlisten = [\"127.0.0.1:0\"]\n[log]\nlevel = \"debug\"\nbuffer_lines = 64\n\
        [targets.site]\nstatic = \"site\"\n[targets.stats]\nmetrics = true\n\
        [[plugins]]\nuse = \"router\"\n[[plugins.config.routes]]\nexact = \"/metrics\"\ntarget = \"stats\"\n\
        [[plugins.config.routes]]\npath = \"/\"\ntarget = \"site\"\n";
    let gh = Gatehouse::start_stalled(dir.path(), config);
    let c = client();
    // Each request writes an access-log line (about 150 bytes) to stdout and, being a 404, a debug
    // line to stderr: far more than the 64 KiB a pipe holds.
    let started = Instant::now();
    for i in 0..2000 {
        let r = c
            .get(gh.url(&format!("/missing-{i}")))
            .send()
            .unwrap_or_else(|e| panic!("request {i} after {:?}: {e}", started.elapsed()));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    let metrics = c
        .get(gh.url("/metrics"))
        .send()
        .expect("get")
        .text()
        .expect("text");
    let dropped = |log: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "gatehouse_log_lines_dropped_total{{log=\"{log}\"}} "
                ))
            })
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no dropped count for {log}:\n{metrics}"))
    };
    assert!(dropped("access") > 0, "{metrics}");
    assert!(dropped("diagnostics") > 0, "{metrics}");
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let dir = site(&[("a.txt", b"a")]);
    let gh = Gatehouse::start_under(
        dir.path(),
        &["prlimit", "--nofile=256:"],
        &static_config("", ""),
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gh.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers.len(), 2, "{line}");
    assert_eq!(numbers[0], numbers[1], "soft raised to hard: {line}");
    assert_ne!(numbers[0], "256", "{line}");
}

#[test]
fn a_client_that_stops_reading_is_cut_after_send_timeout() {
    let dir = site(&[("big.bin", &vec![7u8; 32 << 20]), ("a.txt", b"AAAA")]);
    let gh = Gatehouse::start(
        dir.path(),
        &static_config("", &limits("max_connections = 1\nsend_timeout = \"1s\"")),
    );
    let mut stalled = TcpStream::connect(gh.addr()).expect("connect");
    stalled
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    // The only slot is busy sending to a client that reads nothing; once send_timeout cuts it, the
    // next client is served.
    let started = Instant::now();
    let next = gh.raw(
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(next.statuses(), vec![200]);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "served before the cut: {waited:?}"
    );
    // The stalled client gets part of the file, then the connection ends.
    let rest = read_until_close(&mut stalled, Duration::from_secs(10));
    assert!(rest.closed);
    assert!(rest.bytes.len() < 32 << 20, "{} bytes", rest.bytes.len());
}

/// Bytes the kernel holds unsent or unacknowledged on the server's side of the connection from
/// `client` to `server` (`tx_queue` in /proc/net/tcp), once it stops growing.
fn server_send_queue(server: std::net::SocketAddr, client: std::net::SocketAddr) -> u64 {
    let key = |a: std::net::SocketAddr| format!(":{:04X}", a.port());
    let (local, remote) = (key(server), key(client));
    let read = || -> Option<u64> {
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        table.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(1)?.ends_with(&local) && f.get(2)?.ends_with(&remote))
                .then(|| u64::from_str_radix(f.get(4)?.split(':').next()?, 16).ok())
                .flatten()
        })
    };
    let mut last = None;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        let now = read();
        // Two equal readings of a queue the server has begun to fill: 0 would be a socket it has
        // not written to yet, which proves nothing.
        if now.is_some_and(|n| n > 0) && now == last {
            return now.unwrap_or(0);
        }
        last = now;
    }
    last.expect("the server's socket in /proc/net/tcp")
}

/// A client that asks for a large file with a 4 KiB receive buffer and reads nothing.
fn queued_for_a_client_that_never_reads(extra_limits: &str) -> u64 {
    let dir = site(&[("big.bin", &vec![7u8; 8 << 20])]);
    let gh = Gatehouse::start(dir.path(), &static_config("", &limits(extra_limits)));
    let server = gh.addr();
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&server.into()).expect("connect");
    let mut stalled: TcpStream = socket.into();
    stalled
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let client = stalled.local_addr().expect("client address");
    server_send_queue(server, client)
}

#[test]
fn a_client_that_never_reads_pins_at_most_send_queue_of_kernel_memory() {
    let bounded = queued_for_a_client_that_never_reads("");
    assert!(
        bounded <= (512 + 128) << 10,
        "{bounded} bytes queued with the default send_queue (512 KiB)"
    );
    let small = queued_for_a_client_that_never_reads("send_queue = \"64KiB\"");
    assert!(
        small <= 192 << 10,
        "{small} bytes queued with send_queue = 64KiB"
    );
    // Left to the kernel, the socket queues up to its autotuned send buffer.
    let unbounded = queued_for_a_client_that_never_reads("send_queue = 0");
    assert!(
        unbounded > 1 << 20,
        "only {unbounded} bytes queued with send_queue = 0"
    );
}

/// An HTTP/2 client (h2 crate, prior knowledge) that never opens its flow-control window: the
/// server can send headers but no data.
#[test]
fn an_http2_stream_whose_window_stays_shut_is_cut_after_send_timeout() {
    let dir = site(&[("big.bin", &vec![7u8; 4 << 20])]);
    let gh = Gatehouse::start(
        dir.path(),
        &static_config("", "[server.limits]\nsend_timeout = \"1s\"\n"),
    );
    let addr = gh.addr();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .initial_connection_window_size(65_535)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .expect("h2 handshake");
        let connection = tokio::spawn(connection);
        let mut client = client.ready().await.expect("ready");
        let request = http::Request::get(format!("http://{addr}/big.bin"))
            .body(())
            .expect("request");
        let (response, _) = client.send_request(request, true).expect("send");
        let response = response.await.expect("response head");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        // Read nothing and never release capacity: the stream stays shut.
        let started = std::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            let _ = body.data().await;
            let _ = connection.await;
        })
        .await;
        (ended.is_ok(), started.elapsed())
    });
    let (ended, took) = outcome;
    assert!(ended, "the server held the stalled stream for 10 s");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The server serves on.
    let r = client().get(gh.url("/big.bin")).send().expect("get");
    assert_eq!(r.bytes().expect("body").len(), 4 << 20);
}
