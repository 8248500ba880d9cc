//! The torture suite (pass/fail; `bench/torture.sh` gives the throughput figures): hostile clients
//! and faults while normal traffic runs. Every normal request must succeed, every faulty one must
//! get exactly its documented status, slow connections are cut at their timeouts, and the server
//! ends with the workers it started with.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_tests::{Gatehouse, apps_dir, client, raise_open_files};

const ADVERSARIAL: &str = env!("FIXTURE_ADVERSARIAL");

const SLOW_HEADERS: usize = 500;
const SLOW_READERS: usize = 500;
/// What most slow readers ask the app for and never read.
const SLOW_READ_BYTES: usize = 256 << 10;
/// How many ask for [`LARGE_READ_BYTES`] instead: more than the kernel's socket buffers take for a
/// client that reads nothing (about 3-4 MiB on loopback), so the front has to hold the rest for the
/// app's thread to go free.
const LARGE_READERS: usize = 20;
const LARGE_READ_BYTES: usize = 8 << 20;

fn wsgi(extra_server: &str, plugins: &str, target: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{extra_server}\n{plugins}\n[targets.app]\nwsgi = \"stdlib_app:app\"\nchdir = \"{}\"\n{target}\n",
        apps_dir().display()
    )
}

/// How many requests for each path got each status (or error).
type Outcomes = BTreeMap<(String, String), u64>;

/// Runs `clients` threads, each sending `pick(i)` requests until `stop`, and returns what they
/// got: (path, status or error) -> count, and the slowest answer.
fn load(
    gh: &Gatehouse,
    clients: usize,
    stop: &Arc<AtomicBool>,
    pick: fn(usize, u64) -> &'static str,
) -> std::thread::JoinHandle<(Outcomes, Duration)> {
    let url = gh.url("");
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let slowest = Arc::new(Mutex::new(Duration::ZERO));
        std::thread::scope(|scope| {
            for c in 0..clients {
                let (url, stop, counts, slowest) = (&url, &stop, &counts, &slowest);
                scope.spawn(move || {
                    let http = client();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let path = pick(c, n);
                        n += 1;
                        let started = Instant::now();
                        let outcome = match http.get(format!("{url}{path}")).send() {
                            Ok(r) => r.status().as_u16().to_string(),
                            Err(e) => format!("error: {e}"),
                        };
                        let took = started.elapsed();
                        let mut s = slowest.lock().expect("lock");
                        *s = (*s).max(took);
                        drop(s);
                        *counts
                            .lock()
                            .expect("lock")
                            .entry((path.to_string(), outcome))
                            .or_insert(0) += 1;
                    }
                });
            }
        });
        let counts = counts.lock().expect("lock").clone();
        let slowest = *slowest.lock().expect("lock");
        (counts, slowest)
    })
}

fn report(title: &str, counts: &Outcomes) -> String {
    let mut out = format!("{title}:\n");
    for ((path, outcome), n) in counts {
        out.push_str(&format!("  {path:<16} {outcome:<8} {n}\n"));
    }
    out
}

/// True once the peer has closed `s` (EOF or reset) within `wait`, reading and dropping whatever
/// it still sends.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(500))))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
}

#[test]
fn five_hundred_slow_header_and_five_hundred_slow_reading_clients_hold_no_python_thread() {
    raise_open_files((SLOW_HEADERS + SLOW_READERS) as u64 + 512);
    let dir = tempfile::tempdir().expect("tmp");
    // One Python thread in all: if any slow client held it, normal traffic would stop.
    let gh = Gatehouse::start(
        dir.path(),
        &wsgi(
            "[server.limits]\nheader_read_timeout = \"4s\"\nsend_timeout = \"5s\"\nkeepalive_timeout = \"5s\"\n[log]\naccess_log = \"off\"\n",
            "",
            "workers = 1\nthreads = 1\n",
        ),
    );
    let addr = gh.addr();
    let c = client();

    // Slow readers: a request for a large response, then not one byte read.
    let mut slow_readers: Vec<TcpStream> = (0..SLOW_READERS)
        .map(|i| {
            let size = if i < LARGE_READERS {
                LARGE_READ_BYTES
            } else {
                SLOW_READ_BYTES
            };
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(format!("GET /big?{size} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .expect("write");
            s
        })
        .collect();
    // The app produces all of their responses (the one thread serves them in turn); the request
    // after them is answered once it has, while not one of those bytes has been read.
    let r = c.get(gh.url("/plain")).send().expect("get");
    assert_eq!(r.status(), 200);
    let produced = Instant::now();

    // Slow headers: a head that never ends, one more byte every 500 ms.
    let mut slow_headers: Vec<TcpStream> = (0..SLOW_HEADERS)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("write");
            s
        })
        .collect();
    let heads_started = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let normal = load(&gh, 4, &stop, |_, _| "/plain");
    while heads_started.elapsed() < Duration::from_secs(3) {
        for s in &mut slow_headers {
            let _ = s.write_all(b"a");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let (counts, slowest) = normal.join().expect("load");
    let text = report("normal traffic beside 1,000 slow clients", &counts);
    println!("{text}");
    let ok = counts
        .get(&("/plain".to_string(), "200".to_string()))
        .copied()
        .unwrap_or(0);
    assert_eq!(
        counts.values().sum::<u64>(),
        ok,
        "every normal request succeeds\n{text}"
    );
    assert!(ok >= 20, "normal traffic kept flowing\n{text}");
    assert!(
        slowest < Duration::from_secs(2),
        "no normal request waited on a slow client ({slowest:?})"
    );

    // header_read_timeout (4 s) has passed for every slow head, and send_timeout (5 s) for every
    // slow reader whose response stopped moving (keepalive_timeout, 5 s, for one the kernel's
    // buffers took whole): each is closed. Only then is anything read from a slow reader (reading
    // is progress): what the kernel still holds for it, then the end. The first one still open
    // fails the test.
    for (kind, conns, deadline) in [
        (
            "slow head",
            &mut slow_headers,
            heads_started + Duration::from_secs(5),
        ),
        (
            "slow reader",
            &mut slow_readers,
            produced + Duration::from_millis(6500),
        ),
    ] {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        for (i, s) in conns.iter_mut().enumerate() {
            assert!(
                closed_within(s, Duration::from_secs(2)),
                "{kind} {i} still open"
            );
        }
    }
    println!(
        "500 slow heads cut {:?} after they started; 500 slow readers {:?} after their responses were produced",
        heads_started.elapsed(),
        produced.elapsed()
    );

    // Nothing is left behind: the worker serves as before.
    let r = c.get(gh.url("/plain")).send().expect("get");
    assert_eq!(r.status(), 200);
}

/// Which path client `c` asks for on its `n`th request: mostly normal ones, and now and then a
/// fault whose status is documented.
fn faulty_mix(c: usize, n: u64) -> &'static str {
    match (c, n % 20) {
        (0, 5) => "/sigkill",
        (1, 7) => "/sleep?4",
        (2, 11) => "/trap",
        (3, 13) => "/crash",
        _ => "/plain",
    }
}

#[test]
fn faults_during_load_cost_exactly_the_requests_they_hit() {
    let dir = tempfile::tempdir().expect("tmp");
    let plugins = format!("[[plugins]]\nuse = \"{ADVERSARIAL}\"\npaths = [\"/trap\"]\n");
    // One thread per worker, so a worker that dies or hangs has exactly one request on it.
    let target = "workers = 3\nthreads = 1\ntimeout = \"2s\"\nmax_requests = 40\ngraceful_timeout = \"5s\"\n";
    let config = wsgi("[log]\naccess_log = \"off\"\n", &plugins, target);
    let gh = Gatehouse::start(dir.path(), &config);
    let workers = gh.children().len();
    assert_eq!(workers, 3);

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&gh, 6, &stop, faulty_mix);
    std::thread::sleep(Duration::from_secs(4));
    // A new config mid-load: more requests per worker before recycling.
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        config.replace("max_requests = 40", "max_requests = 60"),
    )
    .expect("rewrite config");
    gh.signal("HUP");
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let (counts, _) = running.join().expect("load");
    let text = report("requests during faults", &counts);
    println!("{text}");

    let expected = |path: &str| match path {
        "/sigkill" | "/crash" => "502",
        "/sleep?4" => "504",
        "/trap" => "500",
        _ => "200",
    };
    for ((path, outcome), n) in &counts {
        assert_eq!(
            outcome,
            expected(path),
            "{n} x {path} got {outcome}\n{text}\n{}",
            gh.stderr()
        );
    }
    let count = |path: &str| {
        counts
            .iter()
            .filter(|((p, _), _)| p == path)
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    for path in ["/sigkill", "/crash", "/sleep?4", "/trap"] {
        assert!(count(path) >= 1, "{path} ran\n{text}");
    }
    // 3 workers x 40 requests: recycling happened several times over.
    assert!(count("/plain") > 200, "{text}");
    let log = gh.stderr();
    assert!(log.contains("reloaded"), "SIGHUP took effect:\n{log}");

    // The run ends with the workers it started with.
    let deadline = Instant::now() + Duration::from_secs(15);
    while gh.children().len() != workers && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        gh.children().len(),
        workers,
        "workers at the end\n{}",
        gh.stderr()
    );
    let r = client().get(gh.url("/plain")).send().expect("get");
    assert_eq!(r.status(), 200);
}
