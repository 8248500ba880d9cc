//! TLS termination: certificates made at test time, checked with real `curl` and `openssl
//! s_client` and with a rustls client that keeps its connection across a reload.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use gatehouse_tests::tls::{TestCa, TlsConn};
use gatehouse_tests::{Gatehouse, apps_dir, site};

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("an address")
}

/// `curl` over HTTPS to `name` (resolved to `addr`), trusting `ca`; returns (exit ok, stdout).
fn curl(
    args: &[&str],
    name: &str,
    addr: SocketAddr,
    ca: &std::path::Path,
    path: &str,
) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{name}:{}:127.0.0.1", addr.port()))
        .args(args)
        .arg(format!("https://{name}:{}{path}", addr.port()))
        .output()
        .expect("curl (apt install curl)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `openssl s_client` with `args`, sending nothing; returns what it printed.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl (apt install openssl)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn tls_site(extra_server: &str) -> (tempfile::TempDir, TestCa, String) {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let dir = site(&[("index.html", b"hello over tls\n"), ("big.bin", &big)]);
    let ca = TestCa::new("Gatehouse Test CA");
    ca.write(dir.path());
    ca.issue(&["a.test", "www.a.test"], false)
        .write(dir.path(), "a");
    ca.issue(&["b.test"], false).write(dir.path(), "b");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{extra_server}\n[[server.listeners]]\nlisten = [\"127.0.0.1:0\"]\ntls = true\n[[server.certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\n[[server.certificates]]\ncert = \"b.pem\"\nkey = \"b.key\"\n[targets.site]\nstatic = \"site\"\n"
    );
    (dir, ca, config)
}

#[test]
fn https_picks_the_certificate_by_name_speaks_h2_and_http1_and_refuses_tls_1_1() {
    let (dir, ca, config) = tls_site("[admin]\nlisten = \"127.0.0.1:0\"\n");
    let gh = Gatehouse::start(dir.path(), &config);
    let tls = addr(&gh.addrs[1]);
    let ca_path = dir.path().join("ca.pem");

    // Real curl, both protocols, each verifying the name it asked for.
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (ok, out) = curl(
            &[flag, "-w", "|%{http_version}"],
            "a.test",
            tls,
            &ca_path,
            "/",
        );
        assert!(ok, "{out}");
        assert_eq!(out, format!("hello over tls\n|{version}"));
    }
    // A file big enough to be sent from disk: over TLS as bytes (sendfile is for plain TCP).
    let big = std::fs::read(dir.path().join("site/big.bin")).expect("big.bin");
    for flag in ["--http2", "--http1.1"] {
        let out_file = dir.path().join("got.bin");
        let out_arg = out_file.display().to_string();
        let (ok, out) = curl(&[flag, "-o", &out_arg], "a.test", tls, &ca_path, "/big.bin");
        assert!(ok, "{out}");
        let got = std::fs::read(&out_file).expect("got.bin");
        assert!(got == big, "{flag}: {} bytes, not the file's", got.len());
    }
    let (ok, out) = curl(&["--http2"], "b.test", tls, &ca_path, "/");
    assert!(ok, "b.test's certificate is served for b.test: {out}");
    let (ok, out) = curl(&["--http2"], "www.a.test", tls, &ca_path, "/");
    assert!(ok, "a second name of a.test's certificate: {out}");

    // ALPN as the rustls client sees it, and which certificate came.
    let (_, negotiated) =
        TlsConn::connect(tls, "b.test", &[ca.der()], &["h2", "http/1.1"], None).expect("b.test");
    assert_eq!(negotiated.alpn.as_deref(), Some("h2"));
    let b_pem = std::fs::read_to_string(dir.path().join("b.pem")).expect("b.pem");
    assert_eq!(negotiated.cert, pem_der(&b_pem));
    let (mut conn, negotiated) =
        TlsConn::connect(tls, "a.test", &[ca.der()], &["http/1.1"], None).expect("a.test");
    assert_eq!(negotiated.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(
        conn.get("a.test", "/").expect("get"),
        (200, "hello over tls\n".into())
    );

    // A client sending an IP address as SNI (wrk does) is served, and rustls' warning about it
    // does not reach the log once per handshake.
    for _ in 0..3 {
        let out = s_client(tls, &["-servername", "127.0.0.1"]);
        assert!(
            out.contains("CN = a.test") || out.contains("CN=a.test"),
            "{out}"
        );
    }
    assert!(!gh.stderr().contains("Illegal SNI"), "{}", gh.stderr());

    // An unknown name gets the default (first) certificate; no name at all too.
    let out = s_client(tls, &["-servername", "nobody.test"]);
    assert!(
        out.contains("CN = a.test") || out.contains("CN=a.test"),
        "{out}"
    );
    let out = s_client(tls, &["-noservername", "-alpn", "h2"]);
    assert!(out.contains("ALPN protocol: h2"), "{out}");

    // Sessions resume (TLS 1.2 tickets: the ticket comes within the handshake there).
    let session = dir.path().join("session.pem").display().to_string();
    let out = s_client(
        tls,
        &["-tls1_2", "-servername", "a.test", "-sess_out", &session],
    );
    assert!(out.contains("New, TLSv1.2"), "{out}");
    let out = s_client(
        tls,
        &["-tls1_2", "-servername", "a.test", "-sess_in", &session],
    );
    assert!(out.contains("Reused, TLSv1.2"), "{out}");

    // TLS 1.2 yes, TLS 1.1 no (the client is allowed to try it: security level 0).
    let out = s_client(tls, &["-tls1_2", "-servername", "a.test"]);
    assert!(out.contains("TLSv1.2"), "{out}");
    let out = s_client(
        tls,
        &[
            "-tls1_1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-servername",
            "a.test",
        ],
    );
    // rustls answers a hello it cannot serve with a handshake_failure alert (40).
    assert!(
        out.contains("Cipher is (NONE)") && out.contains("alert handshake failure"),
        "TLS 1.1 refused: {out}"
    );

    // The plain listener beside it still speaks HTTP.
    let r = gatehouse_tests::client()
        .get(gh.url("/"))
        .send()
        .expect("plain");
    assert_eq!(r.text().expect("body"), "hello over tls\n");

    // Handshakes are counted by result.
    let metrics = gatehouse_tests::client()
        .get(format!("http://{}/metrics", gh.addrs[2]))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    let count = |result: &str| -> f64 {
        let series = format!("gatehouse_tls_handshakes_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(count("ok") >= 8.0, "{metrics}");
    assert!(count("failed") >= 1.0, "the TLS 1.1 attempt: {metrics}");
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

#[test]
fn client_certificates_are_required_or_optional_per_listener_and_reach_the_app() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = TestCa::new("Gatehouse Test CA");
    let clients = TestCa::new("Client CA");
    let stranger = TestCa::new("Some Other CA");
    ca.issue(&["app.test"], false).write(dir.path(), "server");
    std::fs::write(dir.path().join("clients.pem"), &clients.pem).expect("clients");
    let alice = clients.issue(&["alice"], true);
    let mallory = stranger.issue(&["mallory"], true);
    let config = format!(
        "[server]\n\
         [[server.listeners]]\nlisten = [\"127.0.0.1:0\"]\ntls = true\nclient_ca = \"clients.pem\"\n\
         [[server.listeners]]\nlisten = [\"127.0.0.1:0\"]\ntls = true\nclient_ca = \"clients.pem\"\nclient_auth = \"optional\"\n\
         [[server.certificates]]\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [targets.app]\nwsgi = \"stdlib_app:app\"\nchdir = \"{}\"\n",
        apps_dir().display()
    );
    let gh = Gatehouse::start(dir.path(), &config);
    let (required, optional) = (addr(&gh.addrs[0]), addr(&gh.addrs[1]));

    let env = |at: SocketAddr, client: Option<(&str, &str)>| -> Result<serde_json::Value, String> {
        let (mut conn, _) = TlsConn::connect(at, "app.test", &[ca.der()], &["http/1.1"], client)?;
        let (status, body) = conn.get("app.test", "/environ")?;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).map_err(|e| e.to_string())
    };
    let seen = env(required, Some((&alice.cert, &alice.key))).expect("alice is let in");
    assert_eq!(seen["SSL_CLIENT_S_DN"], "O=Gatehouse Tests,CN=alice");
    assert_eq!(seen["SSL_CLIENT_VERIFY"], "SUCCESS");
    assert_eq!(seen["HTTPS"], "on");
    assert_eq!(seen["wsgi"]["url_scheme"], "https");

    assert!(env(required, None).is_err(), "no certificate: refused");
    assert!(
        env(required, Some((&mallory.cert, &mallory.key))).is_err(),
        "a certificate from another CA: refused"
    );

    let seen = env(optional, None).expect("optional: served without one");
    assert_eq!(seen["SSL_CLIENT_S_DN"], serde_json::Value::Null);
    assert_eq!(seen["HTTPS"], "on");
    let seen = env(optional, Some((&alice.cert, &alice.key))).expect("and with one");
    assert_eq!(seen["SSL_CLIENT_S_DN"], "O=Gatehouse Tests,CN=alice");

    // Real curl with and without the certificate.
    std::fs::write(dir.path().join("alice.pem"), &alice.cert).expect("alice");
    std::fs::write(dir.path().join("alice.key"), &alice.key).expect("alice key");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).expect("ca");
    let ca_path = dir.path().join("ca.pem");
    let cert = dir.path().join("alice.pem").display().to_string();
    let key = dir.path().join("alice.key").display().to_string();
    let (ok, out) = curl(
        &["--cert", &cert, "--key", &key],
        "app.test",
        required,
        &ca_path,
        "/environ",
    );
    assert!(ok && out.contains("CN=alice"), "{out}");
    let (ok, out) = curl(&[], "app.test", required, &ca_path, "/environ");
    assert!(!ok, "curl without a certificate is refused: {out}");

    // Plugins see the same subject.
    drop(gh);
    let probe = format!(
        "[[plugins]]\nuse = \"{}\"\nconfig = {{ label = \"p\", echo = true }}\n",
        env!("FIXTURE_PROBE")
    );
    let gh = Gatehouse::start(dir.path(), &format!("{config}{probe}"));
    let (mut conn, _) = TlsConn::connect(
        addr(&gh.addrs[0]),
        "app.test",
        &[ca.der()],
        &["http/1.1"],
        Some((&alice.cert, &alice.key)),
    )
    .expect("alice");
    let (status, text) = conn.get("app.test", "/").expect("get");
    assert_eq!(status, 200);
    assert!(
        text.contains("subject=O=Gatehouse Tests,CN=alice\n"),
        "{text}"
    );
    assert!(text.contains("scheme=https\n"), "{text}");
}

#[test]
fn sighup_swaps_the_certificate_without_dropping_a_connection_and_a_broken_one_keeps_the_last() {
    let (dir, ca, config) = tls_site("");
    let gh = Gatehouse::start(dir.path(), &config);
    let tls = addr(&gh.addrs[1]);
    let first = std::fs::read_to_string(dir.path().join("a.pem")).expect("a.pem");

    let (mut kept, negotiated) =
        TlsConn::connect(tls, "a.test", &[ca.der()], &["http/1.1"], None).expect("connect");
    assert_eq!(negotiated.cert, pem_der(&first));
    assert_eq!(kept.get("a.test", "/").expect("get").0, 200);

    let second = ca.issue(&["a.test"], false);
    second.write(dir.path(), "a");
    gh.signal("HUP");
    gh.wait_stderr("reloaded", Duration::from_secs(20));
    let (_, negotiated) =
        TlsConn::connect(tls, "a.test", &[ca.der()], &["http/1.1"], None).expect("connect");
    assert_eq!(
        negotiated.cert, second.der,
        "new handshakes get the new certificate"
    );
    assert_eq!(
        kept.get("a.test", "/")
            .expect("the open connection goes on")
            .0,
        200
    );

    // A broken certificate: the reload fails, says why, and the last good one keeps serving.
    std::fs::write(dir.path().join("a.pem"), "not a certificate\n").expect("break");
    gh.signal("HUP");
    let err = gh.wait_stderr("reload failed", Duration::from_secs(20));
    assert!(err.contains("a.pem"), "{err}");
    let (_, negotiated) =
        TlsConn::connect(tls, "a.test", &[ca.der()], &["http/1.1"], None).expect("connect");
    assert_eq!(negotiated.cert, second.der);
    // A key that belongs to another certificate is refused the same way.
    let third = ca.issue(&["a.test"], false);
    std::fs::write(dir.path().join("a.pem"), &third.cert).expect("cert");
    gh.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gh.stderr().contains("does not belong") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gh.stderr().contains("does not belong"), "{}", gh.stderr());
    assert_eq!(kept.get("a.test", "/").expect("still open").0, 200);
}

#[test]
fn a_plain_listener_redirects_to_https_and_a_silent_client_is_cut_at_the_handshake_timeout() {
    let (dir, _ca, config) = tls_site("[server.limits]\ntls_handshake_timeout = \"1s\"\n");
    let config = config.replace(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n",
        "[server]\n[[server.listeners]]\nlisten = [\"127.0.0.1:0\"]\nredirect_https = true\n",
    );
    let gh = Gatehouse::start(dir.path(), &config);
    let tls = addr(&gh.addrs[1]);
    let r = gh.raw(
        b"POST /a/b?x=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let text = r.text();
    assert_eq!(r.statuses(), [308], "{text}");
    assert!(
        text.contains(&format!(
            "location: https://example.com:{}/a/b?x=1\r\n",
            tls.port()
        )),
        "{text}"
    );

    // Connect and say nothing: closed after tls_handshake_timeout, not held.
    let mut silent = TcpStream::connect(tls).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn the_proxy_protocol_names_the_client_only_from_trusted_peers() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = format!(
        "[server]\n\
         [[server.listeners]]\nlisten = [\"127.0.0.1:0\"]\nproxy_protocol = [\"127.0.0.1\"]\n\
         [[server.listeners]]\nlisten = [\"127.0.0.1:0\"]\nproxy_protocol = [\"10.0.0.0/8\"]\n\
         [targets.app]\nwsgi = \"stdlib_app:app\"\nchdir = \"{}\"\n",
        apps_dir().display()
    );
    let gh = Gatehouse::start(dir.path(), &config);
    let (trusted, untrusted) = (addr(&gh.addrs[0]), addr(&gh.addrs[1]));
    let ask = |at: SocketAddr, prefix: &[u8]| -> String {
        let mut s = TcpStream::connect(at).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(prefix).expect("prefix");
        s.write_all(b"GET /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };

    let v1 = ask(trusted, b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\n");
    assert!(v1.contains("\"REMOTE_ADDR\": \"203.0.113.7\""), "{v1}");
    assert!(v1.contains("\"REMOTE_PORT\": \"40000\""), "{v1}");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 192, 0, 2, 1, 0x1f, 0x90, 0, 80]);
    let v2 = ask(trusted, &v2);
    assert!(v2.contains("\"REMOTE_ADDR\": \"198.51.100.9\""), "{v2}");
    // A trusted peer must send the header: without it the connection is closed unanswered.
    assert_eq!(ask(trusted, b""), "");
    // From a peer not in the list the header is just bytes before a request: a 400.
    let refused = ask(untrusted, b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\n");
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(!refused.contains("203.0.113.7"), "{refused}");
}

#[test]
fn a_session_from_a_listener_without_client_certificates_does_not_resume_past_mutual_tls() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = TestCa::new("Gatehouse Test CA");
    let clients = TestCa::new("Client CA");
    ca.issue(&["app.test"], false).write(dir.path(), "server");
    std::fs::write(dir.path().join("clients.pem"), &clients.pem).expect("clients");
    std::fs::write(dir.path().join("index.html"), "hello\n").expect("index");
    let config = "[server]\n\
         [[server.listeners]]\nlisten = [\"127.0.0.1:0\"]\ntls = true\n\
         [[server.listeners]]\nlisten = [\"127.0.0.1:0\"]\ntls = true\nclient_ca = \"clients.pem\"\n\
         [[server.certificates]]\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [targets.site]\nstatic = \".\"\n";
    let gh = Gatehouse::start(dir.path(), config);
    let (open, mutual) = (addr(&gh.addrs[0]), addr(&gh.addrs[1]));

    // One client config: its session store carries a ticket from one connection to the next.
    let client =
        gatehouse_tests::tls::client_config(&[ca.der()], &["http/1.1"], None).expect("client");
    for _ in 0..2 {
        let (mut conn, _) = TlsConn::connect_with(open, "app.test", &client).expect("open");
        assert_eq!(conn.get("app.test", "/").expect("get").0, 200);
    }
    let (_, again) = TlsConn::connect_with(open, "app.test", &client).expect("open");
    assert!(again.resumed, "sessions resume on the same listener");
    // The ticket is offered to the mutual-TLS listener: no certificate, no way in.
    let refused = TlsConn::connect_with(mutual, "app.test", &client)
        .and_then(|(mut conn, negotiated)| conn.get("app.test", "/").map(|r| (r, negotiated)));
    assert!(
        refused.is_err(),
        "resumed into mutual TLS without a certificate: {refused:?}"
    );
}
