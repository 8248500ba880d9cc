//! The validated configuration: typed values every other layer reads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::listeners::{AcmeConfig, CertificateFiles, Listen, ListenAddr};
use super::plugins::PluginConfig;
use super::raw::AccessLogFormat;
use super::trusted::Forwarding;

/// A validated configuration, ready to serve.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners, limits and shutdown.
    pub server: ServerConfig,
    /// Log level and access log.
    pub log: LogConfig,
    /// Named targets, in name order.
    pub targets: BTreeMap<String, TargetConfig>,
    /// The plugin chain, in order.
    pub plugins: Vec<PluginConfig>,
    /// `[store]`: the shared key-value store and counters.
    pub store: super::plugins::StoreConfig,
    /// `[admin] listen`: where `/healthz`, `/readyz` and `/metrics` are served (off if `None`).
    pub admin: Option<ListenAddr>,
}

/// `[server]`: listeners, the default target, limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to listen on (each at most once) and how.
    pub listen: Vec<Listen>,
    /// Certificates for the TLS listeners, chosen by the name the client asks for (SNI).
    pub certificates: Vec<CertificateFiles>,
    /// Certificates ordered and renewed automatically.
    pub acme: Option<AcmeConfig>,
    /// The target that receives a request no plugin routed elsewhere; with none, such a request
    /// gets 404.
    pub default_target: Option<String>,
    /// Where compiled plugins are cached (`None`: not cached).
    pub plugin_cache_dir: Option<PathBuf>,
    /// Request limits and timeouts.
    pub limits: Limits,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the process exits anyway.
    pub shutdown_timeout: Duration,
    /// Event-loop threads, each serving its share of the connections (nginx's worker processes).
    pub threads: usize,
    /// Whose proxy headers name the client and scheme, for plugins, the access log and the app.
    pub forwarding: Forwarding,
}

/// `[server.limits]`: what one client may ask of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time allowed to send a whole request head (slowloris defence).
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    pub keepalive_timeout: Duration,
    /// Time allowed to send the whole request body.
    pub body_read_timeout: Duration,
    /// How long a response write may make no progress (a client that stops reading) before the
    /// connection is closed, as nginx's `send_timeout`.
    pub send_timeout: Duration,
    /// Time a client has to complete the TLS handshake (and send a PROXY protocol header).
    pub tls_handshake_timeout: Duration,
    /// Longest request target (path and query) in bytes; longer gets 414.
    pub max_uri_length: usize,
    /// Largest request head (request line and all headers) in bytes; larger gets 431.
    pub max_header_size: usize,
    /// Largest single header line (`Name: value` and its CRLF) in bytes; larger gets 431.
    pub max_header_field_size: usize,
    /// Most header fields in one request; more gets 431.
    pub max_headers: usize,
    /// Largest request body in bytes; larger gets 413.
    pub max_body_size: u64,
    /// Bodies larger than this are buffered in a temporary file instead of memory.
    pub body_buffer_size: u64,
    /// The largest request or response body a plugin may read or buffer in memory.
    pub plugin_body_size: u64,
    /// Request-body bytes all requests together may hold in memory; past it, 503.
    pub body_memory_budget: u64,
    /// Request-body bytes all requests together may hold in spool files; past it, 503.
    pub body_spool_budget: u64,
    /// Most client connections open at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Bytes of response data a client's TCP socket may hold not yet sent (`TCP_NOTSENT_LOWAT`;
    /// 0: the kernel's own bound, its autotuned send buffer).
    pub send_queue: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_uri_length: 4 * 1024,
            max_header_size: 16 * 1024,
            // Gunicorn's `limit_request_field_size`.
            max_header_field_size: 8190,
            max_headers: 100,
            max_body_size: 10 << 20,
            // nginx's client_body_buffer_size on 64-bit machines.
            body_buffer_size: 16 << 10,
            plugin_body_size: 1 << 20,
            body_memory_budget: 256 << 20,
            body_spool_budget: 4 << 30,
            max_connections: 10_000,
            max_concurrent_streams: 128,
            // Left to the kernel, a client that reads slowly can pin its whole autotuned send
            // buffer (4 MiB on loopback, tcp_wmem's maximum); 512 KiB still lets sendfile move a
            // 1 MiB file in two calls.
            send_queue: 512 << 10,
        }
    }
}

/// `[log]`: diagnostics and the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `gatehouse=debug`; `RUST_LOG` wins when set.
    pub level: String,
    /// Access-log line format.
    pub access_log: AccessLogFormat,
    /// Where access-log lines go; standard output when absent.
    pub access_log_path: Option<PathBuf>,
    /// Lines the access log and the diagnostics each hold while their output is stalled; past it
    /// lines are dropped (and counted) rather than an event loop blocked.
    pub buffer_lines: usize,
}

/// A named target: where a routed request is finally answered.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetConfig {
    /// Files under a directory.
    Static(StaticConfig),
    /// A Python WSGI application.
    Wsgi(WsgiConfig),
    /// Prometheus metrics of the process (requests, plugin failures, plugin-defined metrics).
    Metrics,
    /// HTTP servers behind Gatehouse, balanced and health-checked.
    Upstream(super::upstream::UpstreamConfig),
}

/// `wsgi = "module:callable"` target options (Gunicorn's settings, same names where they exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsgiConfig {
    /// `module:callable`, or `module:factory()` to call a factory once per worker.
    pub app: String,
    /// URL prefix the app is mounted at; it becomes `SCRIPT_NAME`.
    pub mount: String,
    /// Worker processes.
    pub workers: usize,
    /// Threads per worker (requests one worker runs at once).
    pub threads: usize,
    /// Requests a worker may hold beyond its threads, sent ahead while all its threads are busy
    /// (so it goes from one to the next without waiting on the front); 0: none.
    pub prefetch: usize,
    /// Longest a request may run in the app (to its response head, then between two pieces of
    /// the body); past it the client gets 504 and the worker is replaced.
    pub timeout: Duration,
    /// Longest a request may wait in the front for a free thread; past it, 503.
    pub queue_timeout: Duration,
    /// Response bytes the front holds in memory per response (nginx's `proxy_buffers`), so the
    /// app's thread does not wait on a slow client.
    pub response_buffer: u64,
    /// And past that, in a temporary file (nginx's `proxy_max_temp_file_size`; 0: none).
    pub response_spool: u64,
    /// Requests that may wait for a free thread; beyond that, 503 at once.
    pub backlog: usize,
    /// Recycle a worker after this many requests (0: never), like Gunicorn's `max_requests`.
    pub max_requests: u64,
    /// Up to this many extra requests, at random per worker.
    pub max_requests_jitter: u64,
    /// How long a recycled worker may take to finish its requests before it is killed.
    pub graceful_timeout: Duration,
    /// Directory the workers change to and import from (default: the config file's directory).
    pub chdir: PathBuf,
    /// Extra import paths.
    pub pythonpath: Vec<PathBuf>,
    /// The Python interpreter whose packages the app uses.
    pub python: Option<PathBuf>,
    /// A virtualenv to use (its `bin/python`).
    pub virtualenv: Option<PathBuf>,
    /// Extra environment variables for the workers.
    pub env: BTreeMap<String, String>,
}

/// `static = "DIR"` target options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    /// The directory served, absolute.
    pub root: PathBuf,
    /// URL path prefix the root is served at, without a trailing slash except for `/`.
    pub mount: String,
    /// File names tried for a directory, in order; empty turns index files off.
    pub index: Vec<String>,
    /// Whether a directory without an index file lists its entries.
    pub autoindex: bool,
    /// Whether names starting with `.` are served.
    pub show_hidden: bool,
    /// Whether `.br`/`.gz` siblings are served to clients that accept them.
    pub precompressed: bool,
    /// Bytes of small files kept in memory; 0 turns the file cache off.
    pub file_cache: u64,
    /// How long a file kept in memory is served before it is read again.
    pub file_cache_valid: Duration,
}
