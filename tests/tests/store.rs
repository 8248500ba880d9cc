//! `[store] backend = "redis://..."`: the plugins' store in a real `redis-server`, shared by two
//! Gatehouse instances, and what plugins get while it is down.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_tests::{Gatehouse, site};
use reqwest::StatusCode;

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt install redis-server)");
        // Owned at once: a failed start still kills and reaps it.
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 16];
                if matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG")) {
                    return redis;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

fn config(redis: u16, plugins: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nthreads = 2\n[store]\nbackend = \"redis://127.0.0.1:{redis}/0\"\nretry_after = \"300ms\"\n\
         [targets.site]\nstatic = \"site\"\n{plugins}"
    )
}

fn fresh_get(gh: &Gatehouse, path: &str) -> reqwest::blocking::Response {
    reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
        .get(gh.url(path))
        .send()
        .expect("get")
}

const RATE: &str =
    "[[plugins]]\nuse = \"rate-limit\"\n[plugins.config]\nrate = 5\nper = \"1m\"\nburst = 4\n";

#[test]
fn two_instances_share_one_rate_limit_exactly_and_each_others_cache() {
    let redis = Redis::start(free_port());
    let dir = site(&[("a.txt", b"AAAA")]);
    let a = Gatehouse::start(dir.path(), &config(redis.port, RATE));
    let other = site(&[("a.txt", b"AAAA")]);
    let b = Gatehouse::start(other.path(), &config(redis.port, RATE));
    let mut ok = 0;
    for i in 0..20 {
        let gh = if i % 2 == 0 { &a } else { &b };
        let r = fresh_get(gh, "/a.txt");
        match r.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                // 5 a minute: one every 12 s.
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .expect("text")
                    .parse()
                    .expect("seconds");
                assert!((1..=12).contains(&retry), "retry after {retry}");
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(ok, 5, "burst 4 + 1 across both instances");

    // The cache: what one instance stored, the other serves.
    let chain = "[[plugins]]\nuse = \"cache\"\n[plugins.config]\npurge_from = [\"127.0.0.1/32\"]\n[[plugins]]\nuse = \"headers\"\n[plugins.config.response]\nset = { \"Cache-Control\" = \"max-age=60\" }\n";
    let dir = site(&[("c.txt", b"from a")]);
    let a = Gatehouse::start(dir.path(), &config(redis.port, chain));
    let other = site(&[("c.txt", b"from b")]);
    let b = Gatehouse::start(other.path(), &config(redis.port, chain));
    let first = fresh_get(&a, "/c.txt");
    assert_eq!(first.headers()["x-cache"], "MISS");
    let second = fresh_get(&b, "/c.txt");
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert_eq!(
        second.text().expect("body"),
        "from a",
        "b served a's stored response"
    );
    // Hits that the host would answer itself with a memory store (docs/cache.md): with a shared
    // store it must not, as the entry can change on another instance unseen.
    for _ in 0..3 {
        assert_eq!(fresh_get(&b, "/c.txt").headers()["x-cache"], "HIT");
    }
    let purge = reqwest::blocking::Client::new()
        .request(
            reqwest::Method::from_bytes(b"PURGE").expect("method"),
            a.url("/c.txt"),
        )
        .send()
        .expect("purge");
    assert_eq!(purge.status(), StatusCode::OK);
    let after = fresh_get(&b, "/c.txt");
    assert_eq!(after.headers()["x-cache"], "MISS", "purged on a, gone on b");
    assert_eq!(after.text().expect("body"), "from b");
}

#[test]
fn a_store_outage_gives_each_plugin_its_configured_answer_and_recovers() {
    let redis = Redis::start(free_port());
    let plugins = format!(
        "{}[[plugins]]\nname = \"strict\"\nuse = \"rate-limit\"\npaths = [\"/strict\"]\nstore_errors = \"closed\"\n[plugins.config]\nrate = 1000\nper = \"1s\"\n",
        RATE.replace(
            "use = \"rate-limit\"\n",
            "use = \"rate-limit\"\npaths = [\"/a.txt\"]\n"
        )
    );
    let dir = site(&[("a.txt", b"A"), ("strict/b.txt", b"B")]);
    let gh = Gatehouse::start(dir.path(), &config(redis.port, &plugins));
    let statuses = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| fresh_get(&gh, "/a.txt").status().as_u16())
            .collect()
    };
    assert_eq!(statuses(6), [200, 200, 200, 200, 200, 429]);

    let port = redis.stop();
    // Fail open (the default): the limit lets requests through; fail closed: 503. Quickly, not
    // after a timeout per request.
    let started = Instant::now();
    assert_eq!(statuses(10), [200; 10], "open: as if the store were empty");
    assert_eq!(
        fresh_get(&gh, "/strict/b.txt").status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(gh.stderr().contains("the shared store is unavailable"));

    // Back (empty): after retry_after the limit holds again.
    let _redis = Redis::start(port);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(statuses(6), [200, 200, 200, 200, 200, 429]);
    assert_eq!(fresh_get(&gh, "/strict/b.txt").status(), StatusCode::OK);
    assert!(gh.stderr().contains("the shared store is reachable again"));
}
