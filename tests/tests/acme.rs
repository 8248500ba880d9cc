//! Automatic certificates against Pebble, Let's Encrypt's ACME test server (Debian package
//! `pebble`), started here on loopback with `pebble-challtestsrv` as its DNS (every name resolves
//! to 127.0.0.1): a certificate is issued, served, renewed with no restart, kept through a CA
//! outage, and served from the state directory after a restart.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_tests::tls::TestCa;
use gatehouse_tests::{Gatehouse, site};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pebble and its DNS, configured to validate challenges on `tls_port` and `http_port`.
struct Pebble {
    dir: PathBuf,
    port: u16,
    dns: u16,
    _dns_server: Running,
    server: Option<Running>,
}

impl Pebble {
    fn start(dir: &Path, tls_port: u16, http_port: u16, validity_seconds: u64) -> Pebble {
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).expect("pebble dir");
        let ca = TestCa::new("Pebble API CA");
        std::fs::write(dir.join("api-ca.pem"), &ca.pem).expect("api ca");
        ca.issue(&["127.0.0.1", "localhost"], false)
            .write(&dir, "api");
        let (port, dns, management) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{}", free_port()),
                "certificate": dir.join("api.pem"),
                "privateKey": dir.join("api.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_seconds,
            }
        });
        std::fs::write(dir.join("pebble.json"), config.to_string()).expect("config");
        let dns_server = Running(
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{management}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pebble-challtestsrv (apt install pebble)"),
        );
        let mut pebble = Pebble {
            dir,
            port,
            dns,
            _dns_server: dns_server,
            server: None,
        };
        pebble.resume();
        pebble
    }

    /// Starts (again) the ACME server itself, on the same port.
    fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pebble.log"))
            .expect("pebble log");
        let child = Command::new("pebble")
            .arg("-config")
            .arg(self.dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("pebble (apt install pebble)");
        self.server = Some(Running(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the ACME server (its DNS stays).
    fn stop(&mut self) {
        self.server = None;
    }

    fn acme_config(&self, challenge: &str) -> String {
        format!(
            "[server.acme]\ndomains = [\"site.test\"]\ncontact = [\"mailto:ops@site.test\"]\ndirectory = \"https://127.0.0.1:{}/dir\"\nca_root = \"{}\"\nstate_dir = \"acme\"\nchallenge = \"{challenge}\"\nretry_backoff = \"1s\"\n",
            self.port,
            self.dir.join("api-ca.pem").display()
        )
    }
}

/// The serial and issuer of the certificate served for `name` on `port`, if a handshake works.
fn served(port: u16, name: &str) -> Option<(String, String)> {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -serial -issuer"
    );
    let out = Command::new("sh").arg("-c").arg(script).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let serial = text
        .lines()
        .find_map(|l| l.strip_prefix("serial="))?
        .to_string();
    let issuer = text
        .lines()
        .find_map(|l| l.strip_prefix("issuer="))?
        .to_string();
    Some((serial, issuer))
}

/// Waits until the served certificate is one Pebble issued and is not `not`; returns its serial.
fn wait_for_pebble_certificate(
    port: u16,
    not: Option<&str>,
    gh: &Gatehouse,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some((serial, issuer)) = served(port, "site.test")
            && issuer.contains("Pebble")
            && Some(serial.as_str()) != not
        {
            return serial;
        }
        assert!(
            Instant::now() < deadline,
            "no new certificate from Pebble in {within:?}; gatehouse said:\n{}",
            gh.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn config(tls_port: u16, http_port: u16, pebble: &Pebble, challenge: &str, renew: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{http_port}\"]\n[[server.listeners]]\nlisten = [\"127.0.0.1:{tls_port}\"]\ntls = true\n{}{renew}\n[targets.site]\nstatic = \"site\"\n",
        pebble.acme_config(challenge)
    )
}

fn curl_k(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "10", "--resolve"])
        .arg(format!("site.test:{port}:127.0.0.1"))
        .arg(format!("https://site.test:{port}/"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tls_alpn_01_issues_serves_renews_survives_a_ca_outage_and_a_restart() {
    let dir = site(&[("index.html", b"acme site\n")]);
    let (tls_port, http_port) = (free_port(), free_port());
    let mut pebble = Pebble::start(dir.path(), tls_port, http_port, 30);
    // 30 s certificates renewed 20 s before expiry: a renewal 10 s after each issue.
    let text = config(
        tls_port,
        http_port,
        &pebble,
        "tls-alpn-01",
        "renew_before = \"20s\"",
    );
    let mut gh = Gatehouse::start(dir.path(), &text);

    let first = wait_for_pebble_certificate(tls_port, None, &gh, Duration::from_secs(60));
    assert_eq!(curl_k(tls_port), "acme site\n");
    assert!(dir.path().join("acme/site.test/cert.pem").exists());
    let key_mode = std::fs::metadata(dir.path().join("acme/site.test/key.pem"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("key");
    assert_eq!(key_mode, 0o600, "the key is private");

    // Renewed with no restart.
    let second = wait_for_pebble_certificate(tls_port, Some(&first), &gh, Duration::from_secs(60));

    // The CA goes away: renewal fails, is retried, and the current certificate keeps serving.
    pebble.stop();
    gh.wait_stderr("ordering a certificate failed", Duration::from_secs(60));
    let (serial, _) = served(tls_port, "site.test").expect("still serving");
    assert_eq!(
        serial, second,
        "the last certificate serves through the outage"
    );
    assert_eq!(curl_k(tls_port), "acme site\n");
    pebble.resume();
    let third = wait_for_pebble_certificate(tls_port, Some(&second), &gh, Duration::from_secs(60));

    // A restart serves the stored certificate at once, before any order could finish.
    gh.signal("TERM");
    gh.wait_exit(Duration::from_secs(20));
    pebble.stop();
    let gh = Gatehouse::start(dir.path(), &text.replace("renew_before = \"20s\"", ""));
    let (serial, issuer) = served(tls_port, "site.test").expect("served at once");
    assert!(issuer.contains("Pebble"), "{issuer}");
    assert!(
        serial == third || gh.stderr().contains("certificate issued"),
        "the stored certificate: {serial} vs {third}"
    );
    assert!(
        gh.stderr().contains("serving the stored certificate"),
        "{}",
        gh.stderr()
    );
}

#[test]
fn http_01_is_answered_on_the_plain_listener_even_while_it_redirects() {
    let dir = site(&[("index.html", b"acme site\n")]);
    let (tls_port, http_port) = (free_port(), free_port());
    let _pebble_keep;
    let text = {
        let pebble = Pebble::start(dir.path(), tls_port, http_port, 3600);
        let text = config(tls_port, http_port, &pebble, "http-01", "").replace(
            "[server]\nlisten = [",
            "[server]\n[[server.listeners]]\nredirect_https = true\nlisten = [",
        );
        _pebble_keep = pebble;
        text
    };
    let gh = Gatehouse::start(dir.path(), &text);
    wait_for_pebble_certificate(tls_port, None, &gh, Duration::from_secs(60));
    assert_eq!(curl_k(tls_port), "acme site\n");
    // Everything else on the plain port is redirected.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .arg(format!("http://127.0.0.1:{http_port}/x"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("308 https://127.0.0.1:{tls_port}/x")
    );
}
