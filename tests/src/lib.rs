//! Test harness: starts the real `gatehouse` binary with a real config on port 0 and talks to it.

pub mod tls;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `gatehouse` binary under test: `GATEHOUSE_BIN`, or the one in this target directory, which
/// is first brought up to date with `cargo build` (once per test process; a no-op when the test
/// script has just built it), so a test never runs a binary older than the source.
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("GATEHOUSE_BIN") {
        return PathBuf::from(path);
    }
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("current exe");
            // target/<profile>/deps/<test> -> target/<profile>/gatehouse
            let dir = exe.parent().and_then(Path::parent).expect("target dir");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "--quiet", "-p", "gatehouse"]);
            if dir.file_name().is_some_and(|p| p == "release") {
                build.arg("--release");
            }
            let out = build.output().expect("run cargo build");
            assert!(
                out.status.success(),
                "cargo build -p gatehouse failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let bin = dir.join("gatehouse");
            assert!(bin.exists(), "{} was not built", bin.display());
            bin
        })
        .clone()
}

/// A running gatehouse process, killed on drop.
pub struct Gatehouse {
    child: Child,
    /// The bound addresses, as the ready file lists them.
    pub addrs: Vec<String>,
    /// The temporary directory holding the config (and anything the test put there).
    pub dir: PathBuf,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// Pipes kept open and never read (see [`Gatehouse::start_stalled`]).
    _stalled: Option<(ChildStdout, ChildStderr)>,
}

fn capture(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&out);
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

impl Gatehouse {
    /// Writes `config` to `dir/gatehouse.toml` and starts serving it; waits until it listens.
    pub fn start(dir: &Path, config: &str) -> Gatehouse {
        Self::start_with_env(dir, config, &[])
    }

    /// Like [`Gatehouse::start`], with extra environment variables.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Gatehouse {
        let config_path = dir.join("gatehouse.toml");
        std::fs::write(&config_path, config).expect("write config");
        let config_arg = config_path.display().to_string();
        Self::start_args(dir, &["-c", &config_arg], env)
    }

    /// Like [`Gatehouse::start`], with standard output and error pipes that nobody ever reads: once
    /// their kernel buffers fill, every write to them would block.
    pub fn start_stalled(dir: &Path, config: &str) -> Gatehouse {
        let config_path = dir.join("gatehouse.toml");
        std::fs::write(&config_path, config).expect("write config");
        let config_arg = config_path.display().to_string();
        Self::spawn(dir, &[], &["-c", &config_arg], &[], true)
    }

    /// Like [`Gatehouse::start`], run under `wrapper` (a command such as `prlimit --nofile=256:`
    /// that then runs the binary).
    pub fn start_under(dir: &Path, wrapper: &[&str], config: &str) -> Gatehouse {
        let config_path = dir.join("gatehouse.toml");
        std::fs::write(&config_path, config).expect("write config");
        let config_arg = config_path.display().to_string();
        Self::spawn(dir, wrapper, &["-c", &config_arg], &[], false)
    }

    /// Starts `gatehouse ARGS... --ready-file DIR/ready` in `dir`; waits until it listens.
    pub fn start_args(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Gatehouse {
        Self::spawn(dir, &[], args, env, false)
    }

    fn spawn(
        dir: &Path,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        stalled: bool,
    ) -> Gatehouse {
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(binary());
                cmd
            }
            None => Command::new(binary()),
        };
        cmd.args(args)
            .arg("--ready-file")
            .arg(&ready)
            .current_dir(dir);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn gatehouse");
        let (out, err) = (
            child.stdout.take().expect("stdout"),
            child.stderr.take().expect("stderr"),
        );
        let (stdout, stderr, held) = if stalled {
            (Arc::default(), Arc::default(), Some((out, err)))
        } else {
            (capture(out), capture(err), None)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let addrs = text.lines().map(str::to_string).collect();
                return Gatehouse {
                    child,
                    addrs,
                    dir: dir.to_path_buf(),
                    stdout,
                    stderr,
                    _stalled: held,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "gatehouse exited with {status} before listening:\n{}",
                    stderr.lock().expect("lock")
                );
            }
            assert!(Instant::now() < deadline, "gatehouse did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs
            .iter()
            .find_map(|a| a.parse().ok())
            .expect("a TCP listener")
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// Sends raw bytes on a new connection and returns everything read until the server closes it
    /// (or `wait` passes without the server closing).
    pub fn raw(&self, request: &[u8], wait: Duration) -> RawExchange {
        raw_exchange(self.addr(), request, wait)
    }

    /// What the server wrote to standard output (the access log) so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    /// What the server wrote to standard error (diagnostics) so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Process ids of the server's direct children (its Python workers), from `/proc`.
    pub fn children(&self) -> Vec<u32> {
        let parent = self.child.id().to_string();
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so split after the closing parenthesis.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(1) == Some(&parent.as_str()) && fields.first() != Some(&"Z") {
                if let Ok(pid) = entry.file_name().to_string_lossy().parse() {
                    out.push(pid);
                }
            }
        }
        out
    }

    /// Sends a signal by name (`TERM`, `INT`) with the real `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `needle` appears on standard output (access-log lines are written asynchronously).
    pub fn wait_stdout(&self, needle: &str, timeout: Duration) -> String {
        wait_for(|| self.stdout(), needle, timeout)
    }

    /// Waits until standard error (the log) contains `needle`; panics with the log if it never does.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> String {
        let out = wait_for(|| self.stderr(), needle, timeout);
        assert!(out.contains(needle), "{needle:?} never logged:\n{out}");
        out
    }
}

fn wait_for(read: impl Fn() -> String, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let out = read();
        if out.contains(needle) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcome of a raw exchange.
#[derive(Debug)]
pub struct RawExchange {
    /// All bytes the server sent.
    pub bytes: Vec<u8>,
    /// Whether the server closed the connection within the wait.
    pub closed: bool,
}

impl RawExchange {
    /// The status codes of every response in the bytes, in order.
    pub fn statuses(&self) -> Vec<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        let mut statuses = Vec::new();
        let mut rest: &str = &text;
        while let Some(at) = rest.find("HTTP/1.") {
            let line = &rest[at..];
            if let Some(code) = line.get(9..12).and_then(|c| c.parse().ok()) {
                statuses.push(code);
            }
            rest = &rest[at + 8..];
        }
        statuses
    }

    /// The bytes as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Sends `request` to `addr` and reads until the server closes the connection or `wait` passes.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> RawExchange {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let _ = stream.write_all(request);
    read_until_close(&mut stream, wait)
}

/// Reads until EOF, a reset, or `wait` passes.
pub fn read_until_close(stream: &mut TcpStream, wait: Duration) -> RawExchange {
    let deadline = Instant::now() + wait;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return RawExchange {
                bytes,
                closed: false,
            };
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => {
                return RawExchange {
                    bytes,
                    closed: true,
                };
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return RawExchange {
                    bytes,
                    closed: false,
                };
            }
            Err(_) => {
                return RawExchange {
                    bytes,
                    closed: true,
                };
            }
        }
    }
}

/// Raises this process's soft limit on open files to the hard one; the clients need one each.
pub fn raise_open_files(needed: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised).expect("raise the open-file limit");
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        now >= needed,
        "this test needs {needed} open files; the hard limit is {now}"
    );
}

/// The resident memory of a process, in bytes, from `/proc`.
pub fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// The value of the sample line `series` (name and labels) in an OpenMetrics text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of the sample line `series` of `/metrics` on the admin listener, the second address
/// of `gh` (`[admin] listen` after one server listener).
pub fn admin_metric(gh: &Gatehouse, series: &str) -> f64 {
    let text = client()
        .get(format!("http://{}/metrics", gh.addrs[1]))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"))
}

/// A blocking HTTP client that neither follows redirects nor decompresses.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A blocking client that speaks HTTP/2 with prior knowledge (cleartext).
pub fn h2_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// The Python apps the tests serve (`tests/apps`).
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps")
}

/// A fresh temporary directory with a `site/` root holding `files` (path, contents).
pub fn site(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("site");
    std::fs::create_dir_all(&root).expect("mkdir");
    for (path, contents) in files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, contents).expect("write");
    }
    dir
}

/// A config serving `dir/site` at `/` on 127.0.0.1:0, with extra TOML appended to `[server]`'s tail.
pub fn static_config(extra_target: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{extra}\n[targets.site]\nstatic = \"site\"\n{extra_target}\n"
    )
}
