//! Process-level behaviour: the command line, config errors, logs, and graceful shutdown.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use gatehouse_tests::{Gatehouse, binary, client, read_until_close, site, static_config};

fn run(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run gatehouse");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().expect("tmp");
    let (code, out, _) = run(&["--version"], dir.path());
    assert_eq!(code, 0);
    assert!(out.starts_with("gatehouse "), "{out}");
    let (code, out, _) = run(&["--help"], dir.path());
    assert_eq!(code, 0);
    assert!(
        out.contains("check") && out.contains("Examples:") && out.contains("--ready-file"),
        "{out}"
    );
    let (code, _, err) = run(&[], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("-c FILE"), "{err}");
    let (code, _, err) = run(&["no_such_module:app", "--bind", "127.0.0.1:0"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("No module named 'no_such_module'"), "{err}");
    let (code, _, err) = run(&["app:app", "-c", "x.toml"], dir.path());
    assert_eq!(
        code, 2,
        "a config file and an app exclude each other: {err}"
    );
    for bad in ["static", "/static=", "static=./s"] {
        let (code, _, err) = run(&["app:app", "--static", bad], dir.path());
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("is not /PREFIX=DIR"), "{err}");
    }
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = site(&[("index.html", b"x")]);
    std::fs::write(dir.path().join("g.toml"), static_config("", "")).expect("write");
    let (code, out, err) = run(&["check", "-c", "g.toml"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("g.toml: ok (1 listener(s), 1 target(s), 0 plugin(s))"),
        "{out}"
    );
}

#[test]
fn check_reports_every_error_with_file_line_and_key() {
    let dir = site(&[("index.html", b"x")]);
    let config = "[server]\nlisten = [\"127.0.0.1:8000\", \"127.0.0.1:8000\"]\ndefault_target = \"nope\"\n\n[targets.site]\nstatic = \"missing-dir\"\n";
    std::fs::write(dir.path().join("bad.toml"), config).expect("write");
    let (code, _, err) = run(&["check", "-c", "bad.toml"], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.toml:2:")
            && err.contains("`server.listen[1]`")
            && err.contains("listed twice"),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:3:")
            && err.contains("`server.default_target`")
            && err.contains("no target named \"nope\""),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:6:") && err.contains("`targets.site.static`"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("typo.toml"),
        "[server]\nlisten = [\"127.0.0.1:0\"]\nlisten_backlog = 5\n",
    )
    .expect("write");
    let (code, _, err) = run(&["check", "-c", "typo.toml"], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("typo.toml:3:1: `server.listen_backlog`: unknown field `listen_backlog`"),
        "{err}"
    );

    let (code, _, err) = run(&["check", "-c", "absent.toml"], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("absent.toml: cannot read the config file"),
        "{err}"
    );

    // Serving a broken config fails the same way, before binding anything.
    let (code, _, err) = run(&["-c", "typo.toml"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `listen_backlog`"), "{err}");
}

#[test]
fn port_already_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dir = site(&[("index.html", b"x")]);
    let config = format!(
        "[server]\nlisten = [\"{}\"]\n[targets.site]\nstatic = \"site\"\n",
        taken.local_addr().expect("addr")
    );
    std::fs::write(dir.path().join("g.toml"), config).expect("write");
    let (code, _, err) = run(&["-c", "g.toml"], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot listen on 127.0.0.1:") && err.contains("in use"),
        "{err}"
    );
    assert_eq!(err.matches("in use").count(), 1, "the cause once: {err}");

    // The port is refused before any Python worker imports the app.
    std::fs::write(
        dir.path().join("marker_app.py"),
        "open('imported', 'w').close()\ndef app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'']\n",
    )
    .expect("app");
    let config = format!(
        "[server]\nlisten = [\"{}\"]\n[targets.app]\nwsgi = \"marker_app:app\"\nworkers = 1\n",
        taken.local_addr().expect("addr")
    );
    std::fs::write(dir.path().join("w.toml"), config).expect("write");
    let (code, _, err) = run(&["-c", "w.toml"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("in use"), "{err}");
    assert!(
        !dir.path().join("imported").exists(),
        "the app was imported before the port was found taken"
    );
}

/// Its loops share their port through SO_REUSEPORT, which must not let a second Gatehouse join the
/// port and silently take half of the connections.
#[test]
fn a_second_gatehouse_on_the_same_port_is_refused() {
    let dir = site(&[("index.html", b"x")]);
    let first = Gatehouse::start(dir.path(), &static_config("", ""));
    let config = format!(
        "[server]\nlisten = [\"{}\"]\n[targets.site]\nstatic = \"site\"\n",
        first.addr()
    );
    std::fs::write(dir.path().join("second.toml"), config).expect("write");
    let (code, _, err) = run(&["-c", "second.toml"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("in use"), "{err}");
    assert_eq!(
        client().get(first.url("/")).send().expect("get").status(),
        200
    );
}

#[test]
fn combined_access_log() {
    let dir = site(&[("index.html", b"hello")]);
    let gh = Gatehouse::start(dir.path(), &static_config("", ""));
    client()
        .get(gh.url("/index.html?q=1"))
        .header("User-Agent", "probe/1.0")
        .header("Referer", "http://ref/")
        .send()
        .expect("get");
    client().get(gh.url("/missing")).send().expect("get");
    let out = gh.wait_stdout("/missing", Duration::from_secs(5));
    let line = out
        .lines()
        .find(|l| l.contains("/index.html?q=1"))
        .expect(&out);
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("] \"GET /index.html?q=1 HTTP/1.1\" 200 5 \"http://ref/\" \"probe/1.0\" rt="),
        "{line}"
    );
    assert!(line.ends_with(" target=site"), "{line}");
    assert!(
        out.lines()
            .any(|l| l.contains("\"GET /missing HTTP/1.1\" 404 ")),
        "{out}"
    );
}

#[test]
fn json_access_log_to_a_file_and_log_level() {
    let dir = site(&[("index.html", b"hello")]);
    let extra =
        "[log]\naccess_log = \"json\"\naccess_log_path = \"access.log\"\nlevel = \"warn\"\n";
    let gh = Gatehouse::start(dir.path(), &static_config("", extra));
    client().get(gh.url("/")).send().expect("get");
    let path = dir.path().join("access.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains('\n') || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let entry: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("json line");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["bytes"], 5);
    assert_eq!(entry["uri"], "/");
    assert_eq!(entry["target"], "site");
    assert!(entry["duration_s"].as_f64().is_some());
    assert!(
        !gh.stderr().contains("INFO"),
        "level = warn hides info lines: {}",
        gh.stderr()
    );
}

#[test]
fn shutdown_does_not_wait_for_idle_keep_alive_connections() {
    let dir = site(&[("index.html", b"hello")]);
    let mut gh = Gatehouse::start(dir.path(), &static_config("", ""));
    // Idle HTTP/1.1 keep-alive and HTTP/2 connections.
    let mut idle = TcpStream::connect(gh.addr()).expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert_eq!(
        read_until_close(&mut idle, Duration::from_millis(300)).statuses(),
        vec![200]
    );
    let h2 = gatehouse_tests::h2_client();
    h2.get(gh.url("/")).send().expect("h2");
    let started = Instant::now();
    gh.signal("TERM");
    let status = gh
        .wait_exit(Duration::from_secs(5))
        .expect("exits promptly");
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(read_until_close(&mut idle, Duration::from_secs(1)).closed);
}

/// Starts downloading /big.bin and reads its first KiB, leaving the rest in flight.
fn start_download(gh: &Gatehouse) -> (TcpStream, [u8; 1024]) {
    let mut stream = TcpStream::connect(gh.addr()).expect("connect");
    stream
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut first = [0u8; 1024];
    stream.read_exact(&mut first).expect("response started");
    (stream, first)
}

#[test]
fn shutdown_lets_in_flight_responses_finish() {
    let body: Vec<u8> = (0..32 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let dir = site(&[("big.bin", &body)]);
    let mut gh = Gatehouse::start(dir.path(), &static_config("", "shutdown_timeout = \"20s\""));
    let (mut stream, first) = start_download(&gh);
    gh.signal("INT");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect(gh.addr()).is_err(),
        "no new connections once shutting down"
    );
    assert!(
        gh.wait_exit(Duration::from_millis(200)).is_none(),
        "still sending the in-flight response"
    );
    let rest = read_until_close(&mut stream, Duration::from_secs(20));
    let mut all = first.to_vec();
    all.extend(rest.bytes);
    let start = all.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert!(
        all[start..] == body[..],
        "the in-flight body arrived whole ({} of {} bytes)",
        all.len() - start,
        body.len()
    );
    let status = gh
        .wait_exit(Duration::from_secs(5))
        .expect("exits after the response");
    assert!(status.success(), "{status}");
}

#[test]
fn shutdown_timeout_bounds_the_wait() {
    let body = vec![7u8; 32 * 1024 * 1024];
    let dir = site(&[("big.bin", &body)]);
    let mut gh = Gatehouse::start(dir.path(), &static_config("", "shutdown_timeout = \"1s\""));
    // Held open, never read further.
    let (_stream, _) = start_download(&gh);
    let started = Instant::now();
    gh.signal("TERM");
    // The client never reads the rest; the grace period ends the wait.
    let status = gh
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the grace period");
    assert!(status.success(), "{status}\n{}", gh.stderr());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert!(
        gh.stderr().contains("shutdown timeout reached"),
        "{}",
        gh.stderr()
    );
}

#[test]
fn unix_socket_file_is_removed_at_shutdown_and_threads_setting_serves() {
    let dir = site(&[("index.html", b"hello")]);
    let config = "[server]\nlisten = [\"127.0.0.1:0\", \"unix:gh.sock\"]\nthreads = 3\n[targets.site]\nstatic = \"site\"\n";
    let mut gh = Gatehouse::start(dir.path(), config);
    let sock = dir.path().join("gh.sock");
    assert!(sock.exists());
    let c = client();
    for _ in 0..30 {
        assert_eq!(
            c.get(gh.url("/"))
                .send()
                .expect("get")
                .text()
                .expect("body"),
            "hello"
        );
    }
    gh.signal("TERM");
    assert!(
        gh.wait_exit(Duration::from_secs(5))
            .expect("exits")
            .success()
    );
    assert!(!sock.exists(), "socket file removed");
}

#[test]
fn the_readme_examples_are_valid() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    // gatehouse.toml needs what examples/run.sh builds first (a virtualenv, the bot-block plugin):
    // tests/tests/example.rs builds those and runs it.
    let (code, out, err) = run(&["check", "-c", "static.toml"], &examples);
    assert_eq!(code, 0, "static.toml: {err}");
    assert!(out.contains(": ok ("), "{out}");
}
