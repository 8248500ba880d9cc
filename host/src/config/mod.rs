//! The one TOML file: parsed with serde, validated once into typed values.
//!
//! Every error names the file, the line and column, the key path, and what was expected. Anything that
//! can be checked before the first request (unknown target names, duplicate listeners, missing
//! directories) is checked here.

mod plugins;
mod trusted;
pub mod units;

pub use trusted::Trusted;

pub use plugins::{Isolation, MAX_CHAIN, OnError, PluginConfig, PluginSource};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use units::{Bytes, Seconds};

/// A validated configuration, ready to serve.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (a path, or `<string>`), for messages.
    pub source: String,
    /// Listeners, limits and shutdown.
    pub server: ServerConfig,
    /// Log level and access log.
    pub log: LogConfig,
    /// Named targets, in name order.
    pub targets: BTreeMap<String, TargetConfig>,
    /// The plugin chain, in order.
    pub plugins: Vec<PluginConfig>,
    /// `[store] kv_budget`: bytes the shared key-value store may hold.
    pub kv_budget: u64,
}

/// `[server]`: listeners, the default target, limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to listen on, each at most once.
    pub listen: Vec<ListenAddr>,
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
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP address, IPv4 or IPv6; port 0 picks a free port.
    Tcp(SocketAddr),
    /// A Unix-domain socket path (`unix:/run/gatehouse.sock`).
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
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
    /// Most client connections open at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(60),
            max_uri_length: 4 * 1024,
            max_header_size: 16 * 1024,
            // Gunicorn's `limit_request_field_size`.
            max_header_field_size: 8190,
            max_headers: 100,
            max_body_size: 10 << 20,
            body_buffer_size: 1 << 20,
            max_connections: 10_000,
            max_concurrent_streams: 128,
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
}

/// Access-log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// Nginx's `combined` format plus request time and target.
    Combined,
    /// One JSON object per line.
    Json,
    /// No access log.
    Off,
}

/// A named target: where a routed request is finally answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetConfig {
    /// Files under a directory.
    Static(StaticConfig),
    /// A Python WSGI application.
    Wsgi(WsgiConfig),
    /// Prometheus metrics of the process (requests, plugin failures, plugin-defined metrics).
    Metrics,
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
    /// Longest a request may run; past it the client gets 504 and the worker is replaced.
    pub timeout: Duration,
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
    /// Peers whose `X-Forwarded-*` / `Forwarded` headers are believed (none by default: Gatehouse is
    /// usually the edge).
    pub forwarded_allow_ips: Trusted,
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
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: `{key}`: {message}")]
pub struct ConfigError {
    /// The file (or `<string>`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, such as `server.limits.max_body_size`.
    pub key: String,
    /// What was wrong and what was expected.
    pub message: String,
}

/// Everything wrong with a config file, or why it could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        /// The path given.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

impl Config {
    /// Reads and validates a config file; relative paths inside it are relative to its directory.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            file: path.display().to_string(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Config::parse(&text, &path.display().to_string(), &base)
    }

    /// Validates config text; relative paths resolve against `base_dir`. Every error is reported,
    /// not just the first: see [`deserialize_all`].
    pub fn parse(text: &str, source: &str, base_dir: &Path) -> Result<Config, LoadError> {
        let doc = Doc { text, file: source };
        let mut errors = Vec::new();
        let parsed = deserialize_all(&doc, &mut errors);
        let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
        let config = parsed.and_then(|(raw, removed)| {
            let shape_errors = errors.len();
            let config = raw.validate(&doc, &base_dir, &mut errors);
            // A key whose value was already wrong gets no second error for its stand-in.
            let mut i = 0;
            errors.retain(|e| {
                i += 1;
                i <= shape_errors || !removed.iter().any(|r| within(&e.key, r))
            });
            config
        });
        errors.sort_by_key(|e| (e.line, e.column));
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(LoadError::Invalid(errors)),
        }
    }
}

/// The default `plugin_cache_dir`: `$XDG_CACHE_HOME/gatehouse` or `~/.cache/gatehouse`.
fn default_plugin_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("gatehouse").join("plugins"))
}

/// Most type and unknown-key errors reported from one file before giving up.
const MAX_SHAPE_ERRORS: usize = 50;

/// Deserializes the document, collecting every type and unknown-key error: serde stops at the
/// first, so each error's entry is taken out of the parsed document (whose values keep their
/// spans in the text) and the rest is deserialized again. A required key taken out gets a
/// stand-in of each basic shape until one fits. A syntax error stops at once (nothing after it can
/// be trusted). Returns the keys taken out with the config, so that their values get no second
/// error from validation.
fn deserialize_all(
    doc: &Doc<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<(RawConfig, Vec<String>)> {
    let mut table = match toml::de::DeTable::parse(doc.text) {
        Ok(table) => table,
        Err(e) => {
            errors.push(doc.toml_error("", &e));
            return None;
        }
    };
    let mut removed: Vec<(String, std::ops::Range<usize>, usize)> = Vec::new();
    for _ in 0..MAX_SHAPE_ERRORS {
        let deserializer = toml::de::Deserializer::from(table.clone());
        let e = match serde_path_to_error::deserialize::<_, RawConfig>(deserializer) {
            Ok(raw) => return Some((raw, removed.into_iter().map(|(k, _, _)| k).collect())),
            Err(e) => e,
        };
        let key = user_key(e.path());
        let message = e.inner().message().trim().to_string();
        let steps = steps(e.path());
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'));
        if let Some(field) = missing {
            let full = join_key(&key, field);
            if let Some((_, span, tried)) = removed.iter_mut().find(|(k, _, _)| *k == full) {
                // Taken out by us: try the next stand-in.
                let value = stand_in(*tried)?;
                *tried += 1;
                let Some(Node::Table(parent)) = walk(table.get_mut(), &steps) else {
                    return None;
                };
                parent.insert(
                    toml::Spanned::new(span.clone(), std::borrow::Cow::Owned(field.to_string())),
                    toml::Spanned::new(span.clone(), value),
                );
                continue;
            }
        }
        let span = e.inner().span().unwrap_or(0..0);
        errors.push(doc.error(span.clone(), &key, message));
        let (last, parents) = steps.split_last()?;
        let taken = match walk(table.get_mut(), parents) {
            Some(Node::Table(t)) => match last {
                Segment::Map { key } => t.remove(key.as_str()).is_some(),
                _ => false,
            },
            Some(Node::Array(a)) => match last {
                Segment::Seq { index } if *index < a.len() => {
                    let old = std::mem::replace(a, toml::de::DeArray::new());
                    for (i, item) in old.iter().enumerate() {
                        if i != *index {
                            a.push(item.clone());
                        }
                    }
                    true
                }
                _ => false,
            },
            None => false,
        };
        if !taken {
            return None;
        }
        removed.push((key, span, 0));
    }
    None
}

use serde_path_to_error::Segment;

/// A value of each basic shape, for a required key whose own value was wrong.
fn stand_in(n: usize) -> Option<toml::de::DeValue<'static>> {
    use toml::de::DeValue;
    Some(match n {
        0 => DeValue::Array(toml::de::DeArray::new()),
        1 => DeValue::Table(toml::de::DeTable::new()),
        2 => DeValue::String(std::borrow::Cow::Borrowed("")),
        3 => DeValue::Boolean(false),
        _ => return None,
    })
}

fn join_key(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

/// The table and array steps of a serde path, without the private fields through which `Spanned`
/// values deserialize.
fn steps(path: &serde_path_to_error::Path) -> Vec<&Segment> {
    path.iter()
        .filter(|s| match s {
            Segment::Map { key } => !key.starts_with("$__"),
            Segment::Seq { .. } => true,
            Segment::Enum { .. } | Segment::Unknown => false,
        })
        .collect()
}

/// A serde path as the user wrote the key: `server.listen[1]`, not
/// `server.listen.$__serde_spanned_private_value`.
fn user_key(path: &serde_path_to_error::Path) -> String {
    let mut key = String::new();
    for segment in steps(path) {
        match segment {
            Segment::Map { key: k } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    key
}

/// A table or an array inside the parsed document.
enum Node<'a, 'i> {
    Table(&'a mut toml::de::DeTable<'i>),
    Array(&'a mut toml::de::DeArray<'i>),
}

/// The table or array at the end of `steps`.
fn walk<'a, 'i>(table: &'a mut toml::de::DeTable<'i>, steps: &[&Segment]) -> Option<Node<'a, 'i>> {
    use toml::de::DeValue;
    let mut node = Node::Table(table);
    for step in steps {
        let value = match (node, step) {
            (Node::Table(t), Segment::Map { key }) => t.get_mut(key.as_str()),
            (Node::Array(a), Segment::Seq { index }) => a.get_mut(*index),
            _ => None,
        };
        node = match value.map(toml::Spanned::get_mut)? {
            DeValue::Table(t) => Node::Table(t),
            DeValue::Array(a) => Node::Array(a),
            _ => return None,
        };
    }
    Some(node)
}

/// Whether `key` is `removed` or inside it.
fn within(key: &str, removed: &str) -> bool {
    key.strip_prefix(removed)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

impl std::str::FromStr for Config {
    type Err = LoadError;

    /// Parses config text with paths relative to the current directory (handy in tests).
    fn from_str(text: &str) -> Result<Config, LoadError> {
        Config::parse(text, "<string>", Path::new("."))
    }
}

/// The text being validated, to turn byte spans into lines and columns.
struct Doc<'a> {
    text: &'a str,
    file: &'a str,
}

impl Doc<'_> {
    fn error(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key: if key.is_empty() || key == "." {
                "(document)".into()
            } else {
                key.to_string()
            },
            message: message.into(),
        }
    }

    fn toml_error(&self, key: &str, error: &toml::de::Error) -> ConfigError {
        self.error(error.span().unwrap_or(0..0), key, error.message().trim())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    // Names as plain strings: serde reports the path through a `Spanned` key as unknown.
    targets: BTreeMap<String, Spanned<RawTarget>>,
    #[serde(default)]
    plugins: Vec<plugins::RawPlugin>,
    #[serde(default)]
    store: plugins::RawStore,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Spanned<Vec<Spanned<String>>>,
    default_target: Option<Spanned<String>>,
    #[serde(default)]
    limits: RawLimits,
    shutdown_timeout: Option<Seconds>,
    threads: Option<Spanned<u32>>,
    plugin_cache_dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_read_timeout: Option<Seconds>,
    keepalive_timeout: Option<Seconds>,
    body_read_timeout: Option<Seconds>,
    max_uri_length: Option<Spanned<Bytes>>,
    max_header_size: Option<Spanned<Bytes>>,
    max_header_field_size: Option<Spanned<Bytes>>,
    max_headers: Option<Spanned<u32>>,
    max_body_size: Option<Bytes>,
    body_buffer_size: Option<Bytes>,
    max_connections: Option<Spanned<u32>>,
    max_concurrent_streams: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    access_log: Option<AccessLogFormat>,
    access_log_path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(rename = "static")]
    static_root: Option<Spanned<String>>,
    mount: Option<Spanned<String>>,
    index: Option<Spanned<Vec<String>>>,
    autoindex: Option<Spanned<bool>>,
    show_hidden: Option<Spanned<bool>>,
    precompressed: Option<Spanned<bool>>,
    wsgi: Option<Spanned<String>>,
    metrics: Option<Spanned<bool>>,
    workers: Option<Spanned<u32>>,
    threads: Option<Spanned<u32>>,
    timeout: Option<Seconds>,
    backlog: Option<u32>,
    max_requests: Option<u64>,
    max_requests_jitter: Option<u64>,
    graceful_timeout: Option<Seconds>,
    chdir: Option<String>,
    pythonpath: Option<Vec<String>>,
    python: Option<String>,
    virtualenv: Option<String>,
    env: Option<BTreeMap<String, String>>,
    forwarded_allow_ips: Option<Spanned<Vec<String>>>,
}

/// Event-loop threads when the config does not say: one per CPU the Python workers leave free,
/// at least one. Workers are busy processes of their own; a front thread more than the free CPUs
/// makes both sides sleep and wake more (measured with 2 CPUs and 2 workers: one front thread
/// served a Flask route 15% faster than two, hello world, where the front is the bottleneck, 5%
/// slower). Set `threads` for front-heavy loads (static files, tiny responses).
fn default_threads(cpus: usize, targets: &BTreeMap<String, TargetConfig>) -> usize {
    let workers: usize = targets
        .values()
        .map(|t| match t {
            TargetConfig::Wsgi(w) => w.workers,
            _ => 0,
        })
        .sum();
    cpus.saturating_sub(workers).max(1)
}

impl RawConfig {
    fn validate(self, doc: &Doc<'_>, base: &Path, errors: &mut Vec<ConfigError>) -> Option<Config> {
        let listen = validate_listen(&self.server.listen, doc, base, errors);
        let limits = self.server.limits.validate(doc, errors);

        let mut targets = BTreeMap::new();
        for (name, target) in &self.targets {
            let key = format!("targets.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                errors.push(doc.error(
                    target.span(),
                    &key,
                    "a target name uses only letters, digits, `_` and `-`",
                ));
            }
            if let Some(t) = target
                .get_ref()
                .validate(&key, target.span(), doc, base, errors)
            {
                targets.insert(name.clone(), t);
            }
        }

        let default_target = match &self.server.default_target {
            Some(name) if self.targets.keys().any(|k| k == name.get_ref()) => {
                Some(name.get_ref().clone())
            }
            Some(name) => {
                let known: Vec<_> = self.targets.keys().map(String::as_str).collect();
                errors.push(doc.error(
                    name.span(),
                    "server.default_target",
                    format!(
                        "no target named {:?} (defined: {})",
                        name.get_ref(),
                        list_or_none(&known)
                    ),
                ));
                None
            }
            None if self.targets.len() == 1 => self.targets.keys().next().cloned(),
            // With plugins, routing is theirs; what nobody routes gets 404.
            None if !self.plugins.is_empty() => None,
            None if self.targets.is_empty() => {
                errors.push(doc.error(
                    0..0,
                    "targets",
                    "no targets defined: add one, e.g. [targets.site] static = \"./public\"",
                ));
                None
            }
            None => {
                errors.push(doc.error(
                    self.server.listen.span(),
                    "server.default_target",
                    "several targets are defined: say which receives requests with server.default_target, or route with the `router` plugin",
                ));
                None
            }
        };

        if self.plugins.len() > MAX_CHAIN {
            errors.push(doc.error(
                0..0,
                "plugins",
                format!("at most {MAX_CHAIN} plugins in a chain"),
            ));
        }
        let plugins: Vec<PluginConfig> = self
            .plugins
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.validate(i, doc, base, errors))
            .collect();
        let plugin_cache_dir = match self.server.plugin_cache_dir.as_deref() {
            Some("") => None,
            Some(dir) => Some(base.join(dir)),
            None => default_plugin_cache_dir(),
        };

        let threads = match &self.server.threads {
            Some(t) if *t.get_ref() == 0 || *t.get_ref() > 1024 => {
                errors.push(doc.error(t.span(), "server.threads", "must be between 1 and 1024"));
                1
            }
            Some(t) => *t.get_ref() as usize,
            None => default_threads(
                std::thread::available_parallelism().map_or(1, usize::from),
                &targets,
            ),
        };
        let log = LogConfig {
            level: self.log.level.unwrap_or_else(|| "info".into()),
            access_log: self.log.access_log.unwrap_or(AccessLogFormat::Combined),
            access_log_path: self.log.access_log_path.map(|p| base.join(p)),
        };
        Some(Config {
            source: doc.file.to_string(),
            server: ServerConfig {
                listen,
                default_target,
                plugin_cache_dir,
                limits,
                shutdown_timeout: self
                    .server
                    .shutdown_timeout
                    .map_or(Duration::from_secs(30), |s| s.0),
                threads,
            },
            log,
            targets,
            plugins,
            kv_budget: self.store.kv_budget(),
        })
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn validate_listen(
    listen: &Spanned<Vec<Spanned<String>>>,
    doc: &Doc<'_>,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Vec<ListenAddr> {
    if listen.get_ref().is_empty() {
        errors.push(doc.error(
            listen.span(),
            "server.listen",
            "at least one address is required, e.g. [\"127.0.0.1:8000\"]",
        ));
    }
    let mut seen = Vec::new();
    for (i, entry) in listen.get_ref().iter().enumerate() {
        let key = format!("server.listen[{i}]");
        let text = entry.get_ref().trim();
        let addr = if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                errors.push(doc.error(
                    entry.span(),
                    &key,
                    "a unix socket needs a path, e.g. \"unix:/run/gatehouse.sock\"",
                ));
                continue;
            }
            ListenAddr::Unix(base.join(path))
        } else {
            match text.parse::<SocketAddr>() {
                Ok(addr) => ListenAddr::Tcp(addr),
                Err(_) => {
                    errors.push(doc.error(
                        entry.span(),
                        &key,
                        format!("{text:?} is not an address: expected IP:PORT (\"127.0.0.1:8000\", \"[::1]:8000\") or \"unix:PATH\""),
                    ));
                    continue;
                }
            }
        };
        let clash = match &addr {
            ListenAddr::Tcp(a) if a.port() != 0 => seen.iter().any(|s| s == &addr),
            ListenAddr::Tcp(_) => false,
            ListenAddr::Unix(_) => seen.contains(&addr),
        };
        if clash {
            errors.push(doc.error(entry.span(), &key, format!("{addr} is listed twice")));
            continue;
        }
        seen.push(addr);
    }
    seen
}

impl RawLimits {
    fn validate(&self, doc: &Doc<'_>, errors: &mut Vec<ConfigError>) -> Limits {
        let d = Limits::default();
        let mut at_least = |value: &Option<Spanned<Bytes>>,
                            key: &str,
                            min: u64,
                            default: usize|
         -> usize {
            match value {
                Some(v) if v.get_ref().0 < min => {
                    errors.push(doc.error(v.span(), key, format!("must be at least {min} bytes")));
                    default
                }
                Some(v) => usize::try_from(v.get_ref().0).unwrap_or(usize::MAX),
                None => default,
            }
        };
        let max_uri_length = at_least(
            &self.max_uri_length,
            "server.limits.max_uri_length",
            64,
            d.max_uri_length,
        );
        let max_header_size = at_least(
            &self.max_header_size,
            "server.limits.max_header_size",
            1024,
            d.max_header_size,
        );
        let max_header_field_size = at_least(
            &self.max_header_field_size,
            "server.limits.max_header_field_size",
            64,
            d.max_header_field_size,
        );
        let mut positive = |value: &Option<Spanned<u32>>, key: &str, default: u32| -> u32 {
            match value {
                Some(v) if *v.get_ref() == 0 => {
                    errors.push(doc.error(v.span(), key, "must be at least 1"));
                    default
                }
                Some(v) => *v.get_ref(),
                None => default,
            }
        };
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Limits {
            header_read_timeout: self
                .header_read_timeout
                .map_or(d.header_read_timeout, |s| s.0),
            keepalive_timeout: self.keepalive_timeout.map_or(d.keepalive_timeout, |s| s.0),
            body_read_timeout: self.body_read_timeout.map_or(d.body_read_timeout, |s| s.0),
            max_uri_length,
            max_header_size,
            max_header_field_size,
            max_headers: positive(
                &self.max_headers,
                "server.limits.max_headers",
                to_u32(d.max_headers),
            ) as usize,
            max_body_size: self.max_body_size.map_or(d.max_body_size, |b| b.0),
            body_buffer_size: self.body_buffer_size.map_or(d.body_buffer_size, |b| b.0),
            max_connections: positive(
                &self.max_connections,
                "server.limits.max_connections",
                to_u32(d.max_connections),
            ) as usize,
            max_concurrent_streams: positive(
                &self.max_concurrent_streams,
                "server.limits.max_concurrent_streams",
                d.max_concurrent_streams,
            ),
        }
    }
}

impl RawTarget {
    fn validate(
        &self,
        key: &str,
        span: std::ops::Range<usize>,
        doc: &Doc<'_>,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<TargetConfig> {
        let mount = self.mount(key, doc, errors)?;
        if let Some(m) = &self.metrics {
            let others = self.static_root.is_some()
                || self.wsgi.is_some()
                || !self.wsgi_settings_used().is_empty()
                || self.index.is_some()
                || self.autoindex.is_some()
                || self.show_hidden.is_some()
                || self.precompressed.is_some()
                || self.mount.is_some();
            if !*m.get_ref() || others {
                errors.push(doc.error(
                    m.span(),
                    &format!("{key}.metrics"),
                    "a metrics target is just `metrics = true` (route to it with the router plugin)",
                ));
                return None;
            }
            return Some(TargetConfig::Metrics);
        }
        match (&self.static_root, &self.wsgi) {
            (Some(_), Some(w)) => {
                errors.push(doc.error(
                    w.span(),
                    &format!("{key}.wsgi"),
                    "a target is either `static` or `wsgi`, not both",
                ));
                None
            }
            (Some(root), None) => self.validate_static(root, mount, key, doc, base, errors),
            (None, Some(app)) => self.validate_wsgi(app, mount, key, doc, base, errors),
            (None, None) => {
                errors.push(doc.error(
                    span,
                    key,
                    "a target needs a kind: `static = \"DIR\"`, `wsgi = \"module:callable\"` or `metrics = true`",
                ));
                None
            }
        }
    }

    fn mount(&self, key: &str, doc: &Doc<'_>, errors: &mut Vec<ConfigError>) -> Option<String> {
        match &self.mount {
            None => Some("/".to_string()),
            Some(m) if m.get_ref().starts_with('/') => {
                let trimmed = m.get_ref().trim_end_matches('/');
                Some(if trimmed.is_empty() {
                    "/".into()
                } else {
                    trimmed.to_string()
                })
            }
            Some(m) => {
                errors.push(doc.error(
                    m.span(),
                    &format!("{key}.mount"),
                    "a mount path starts with `/`, e.g. \"/static\"",
                ));
                None
            }
        }
    }

    fn validate_wsgi(
        &self,
        app: &Spanned<String>,
        mount: String,
        key: &str,
        doc: &Doc<'_>,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<TargetConfig> {
        let before = errors.len();
        for (name, span) in [
            ("index", self.index.as_ref().map(Spanned::span)),
            ("autoindex", self.autoindex.as_ref().map(Spanned::span)),
            ("show_hidden", self.show_hidden.as_ref().map(Spanned::span)),
            (
                "precompressed",
                self.precompressed.as_ref().map(Spanned::span),
            ),
        ] {
            if let Some(span) = span {
                errors.push(doc.error(
                    span,
                    &format!("{key}.{name}"),
                    "only `static` targets have this setting",
                ));
            }
        }
        let text = app.get_ref().trim();
        let valid = text.split_once(':').is_some_and(|(m, c)| {
            let ident = |s: &str| {
                !s.is_empty()
                    && s.split('.').all(|p| {
                        !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_')
                    })
            };
            ident(m) && ident(c.strip_suffix("()").unwrap_or(c))
        });
        if !valid {
            errors.push(doc.error(app.span(), &format!("{key}.wsgi"), format!("{text:?} is not MODULE:CALLABLE (e.g. \"app:app\" or \"mysite.wsgi:application\")")));
        }
        let mut count = |v: &Option<Spanned<u32>>, name: &str, default: u32| match v {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 1024 => {
                errors.push(doc.error(
                    n.span(),
                    &format!("{key}.{name}"),
                    "must be between 1 and 1024",
                ));
                default as usize
            }
            Some(n) => *n.get_ref() as usize,
            None => default as usize,
        };
        let workers = count(&self.workers, "workers", 1);
        let threads = count(&self.threads, "threads", 1);
        let trusted = match &self.forwarded_allow_ips {
            None => Ok(Trusted::default()),
            Some(list) => Trusted::parse(list.get_ref()).map_err(|e| {
                errors.push(doc.error(list.span(), &format!("{key}.forwarded_allow_ips"), e))
            }),
        };
        if errors.len() > before {
            return None;
        }
        let path = |p: &String| base.join(p);
        Some(TargetConfig::Wsgi(WsgiConfig {
            app: text.to_string(),
            mount,
            workers,
            threads,
            timeout: self.timeout.map_or(Duration::from_secs(30), |t| t.0),
            backlog: self.backlog.map_or(1024, |b| b as usize),
            max_requests: self.max_requests.unwrap_or(0),
            max_requests_jitter: self.max_requests_jitter.unwrap_or(0),
            graceful_timeout: self
                .graceful_timeout
                .map_or(Duration::from_secs(30), |t| t.0),
            chdir: self.chdir.as_ref().map_or_else(|| base.to_path_buf(), path),
            pythonpath: self.pythonpath.iter().flatten().map(path).collect(),
            python: self.python.as_ref().map(|p| {
                if p.contains('/') {
                    path(p)
                } else {
                    PathBuf::from(p)
                }
            }),
            virtualenv: self.virtualenv.as_ref().map(path),
            env: self.env.clone().unwrap_or_default(),
            forwarded_allow_ips: trusted.ok()?,
        }))
    }

    fn validate_static(
        &self,
        root: &Spanned<String>,
        mount: String,
        key: &str,
        doc: &Doc<'_>,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<TargetConfig> {
        let misplaced = self.wsgi_settings_used();
        if !misplaced.is_empty() {
            errors.push(doc.error(
                root.span(),
                key,
                format!(
                    "{} belong(s) to `wsgi` targets, not `static` ones",
                    misplaced.join(", ")
                ),
            ));
            return None;
        }
        let root_key = format!("{key}.static");
        if root.get_ref().trim().is_empty() {
            errors.push(doc.error(
                root.span(),
                &root_key,
                "the directory to serve must not be empty",
            ));
            return None;
        }
        let dir = base.join(root.get_ref());
        let dir = match dir.canonicalize() {
            Ok(dir) if dir.is_dir() => dir,
            Ok(_) => {
                errors.push(doc.error(
                    root.span(),
                    &root_key,
                    format!("{} is not a directory", dir.display()),
                ));
                return None;
            }
            Err(e) => {
                errors.push(doc.error(
                    root.span(),
                    &root_key,
                    format!("cannot open {}: {e}", dir.display()),
                ));
                return None;
            }
        };
        Some(TargetConfig::Static(StaticConfig {
            root: dir,
            mount,
            index: self
                .index
                .as_ref()
                .map_or_else(|| vec!["index.html".into()], |i| i.get_ref().clone()),
            autoindex: self.autoindex.as_ref().is_some_and(|a| *a.get_ref()),
            show_hidden: self.show_hidden.as_ref().is_some_and(|a| *a.get_ref()),
            precompressed: self.precompressed.as_ref().is_none_or(|a| *a.get_ref()),
        }))
    }

    /// The `wsgi`-only settings this (static) target sets.
    fn wsgi_settings_used(&self) -> Vec<&'static str> {
        [
            ("workers", self.workers.is_some()),
            ("threads", self.threads.is_some()),
            ("timeout", self.timeout.is_some()),
            ("backlog", self.backlog.is_some()),
            ("max_requests", self.max_requests.is_some()),
            ("max_requests_jitter", self.max_requests_jitter.is_some()),
            ("graceful_timeout", self.graceful_timeout.is_some()),
            ("chdir", self.chdir.is_some()),
            ("pythonpath", self.pythonpath.is_some()),
            ("python", self.python.is_some()),
            ("virtualenv", self.virtualenv.is_some()),
            ("env", self.env.is_some()),
            ("forwarded_allow_ips", self.forwarded_allow_ips.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        match text.parse::<Config>() {
            Err(LoadError::Invalid(e)) => e,
            other => panic!("expected errors, got {other:?}"),
        }
    }

    #[test]
    fn every_shape_error_is_reported_at_once_with_the_key_as_written() {
        let e = errors(
            "[server]\nlisten = 5\nbogus = 1\n[server.limits]\nmax_headers = \"many\"\n[targets.site]\nstatic = \".\"\nworkers = true\ncolour = \"blue\"\n[[plugins]]\nuse = \"router\"\nfoo = 1\n",
        );
        let found: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            found,
            [
                (2, "server.listen"),
                (3, "server.bogus"),
                (5, "server.limits.max_headers"),
                (8, "targets.site.workers"),
                (9, "targets.site.colour"),
                (12, "plugins[0].foo"),
            ],
            "{e:?}"
        );
        assert!(e[0].message.contains("expected a sequence"), "{e:?}");
    }

    #[test]
    fn shape_and_meaning_errors_are_reported_together() {
        let e = errors(
            "[server]\nlisten = [\"127.0.0.1:0\", 7]\ndefault_target = \"nope\"\n[targets.site]\nstatic = \".\"\n",
        );
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["server.listen[1]", "server.default_target"], "{e:?}");
    }

    #[test]
    fn minimal_static_config() {
        let config: Config = "[server]\nlisten = [\"127.0.0.1:0\", \"[::1]:0\", \"unix:gh.sock\"]\n[targets.site]\nstatic = \".\"\n"
            .parse()
            .expect("valid");
        assert_eq!(config.server.default_target.as_deref(), Some("site"));
        assert_eq!(config.server.listen.len(), 3);
        assert!(matches!(config.server.listen[2], ListenAddr::Unix(ref p) if p.is_absolute()));
        assert_eq!(config.server.limits, Limits::default());
        let TargetConfig::Static(s) = &config.targets["site"] else {
            panic!("static")
        };
        assert_eq!(s.mount, "/");
        assert_eq!(s.index, vec!["index.html".to_string()]);
    }

    #[test]
    fn units_and_limits() {
        let config: Config = r#"
[server]
listen = ["127.0.0.1:0"]
shutdown_timeout = "5s"
[server.limits]
header_read_timeout = "500ms"
max_body_size = "1MiB"
max_headers = 20
[targets.site]
static = "."
mount = "/static/"
"#
        .parse()
        .expect("valid");
        assert_eq!(config.server.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(
            config.server.limits.header_read_timeout,
            Duration::from_millis(500)
        );
        assert_eq!(config.server.limits.max_body_size, 1 << 20);
        assert_eq!(config.server.limits.max_headers, 20);
        let TargetConfig::Static(s) = &config.targets["site"] else {
            panic!("static")
        };
        assert_eq!(s.mount, "/static");
    }

    #[test]
    fn unknown_key_names_line_and_path() {
        let e = errors(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[server.limits]\nmax_body = \"1MiB\"\n[targets.a]\nstatic = \".\"\n",
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 4);
        assert_eq!(e[0].key, "server.limits.max_body");
        assert!(
            e[0].message.contains("unknown field `max_body`"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn bad_unit_names_line_column_and_key() {
        let e = errors(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[server.limits]\nkeepalive_timeout = \"5 parsecs\"\n[targets.a]\nstatic = \".\"\n",
        );
        assert_eq!((e[0].line, e[0].column), (4, 21));
        assert_eq!(e[0].key, "server.limits.keepalive_timeout");
        assert!(e[0].message.contains("duration unit"), "{}", e[0].message);
        let text = e[0].to_string();
        assert!(
            text.starts_with("<string>:4:21: `server.limits.keepalive_timeout`: "),
            "{text}"
        );
    }

    #[test]
    fn cross_references_are_checked_at_load() {
        let e = errors(
            "[server]\nlisten = [\"127.0.0.1:8000\", \"127.0.0.1:8000\", \"nonsense\"]\ndefault_target = \"nope\"\n[targets.a]\nstatic = \".\"\n[targets.b]\nstatic = \"/definitely/not/here\"\n",
        );
        let keys: Vec<_> = e.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(keys.contains(&("server.listen[1]", 2)), "{keys:?}");
        assert!(keys.contains(&("server.listen[2]", 2)), "{keys:?}");
        assert!(keys.contains(&("targets.b.static", 7)), "{keys:?}");
        assert!(keys.contains(&("server.default_target", 3)), "{keys:?}");
        assert!(e.iter().any(|e| {
            e.message
                .contains("no target named \"nope\" (defined: a, b)")
        }));
    }

    #[test]
    fn empty_required_fields() {
        let e = errors("[server]\nlisten = []\n[targets.a]\nstatic = \"\"\n");
        assert!(
            e.iter()
                .any(|e| e.key == "server.listen" && e.message.contains("at least one"))
        );
        assert!(
            e.iter()
                .any(|e| e.key == "targets.a.static" && e.message.contains("must not be empty"))
        );
        let e = errors("[server]\nlisten = [\"127.0.0.1:0\"]\n");
        assert!(e.iter().any(|e| e.key == "targets"));
        let e = errors("[targets.a]\nstatic = \".\"\n");
        assert!(e[0].message.contains("missing field `server`"), "{:?}", e);
    }

    #[test]
    fn several_targets_need_a_default() {
        let e = errors(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.a]\nstatic = \".\"\n[targets.b]\nstatic = \".\"\n",
        );
        assert_eq!(e[0].key, "server.default_target");
    }

    #[test]
    fn front_threads_leave_cpus_to_workers() {
        let parse = |text: &str| text.parse::<Config>().expect("valid").targets;
        let static_only =
            parse("[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.s]\nstatic = \".\"\n");
        assert_eq!(default_threads(8, &static_only), 8);
        let two = parse(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ndefault_target = \"a\"\n[targets.a]\nwsgi = \"app:app\"\nworkers = 2\n[targets.b]\nwsgi = \"b:app\"\nworkers = 3\n",
        );
        assert_eq!(default_threads(8, &two), 3);
        assert_eq!(default_threads(2, &two), 1);
        let explicit: Config = "[server]\nlisten = [\"127.0.0.1:0\"]\nthreads = 4\n[targets.a]\nwsgi = \"app:app\"\nworkers = 9\n"
            .parse()
            .expect("valid");
        assert_eq!(explicit.server.threads, 4);
    }

    #[test]
    fn wsgi_target() {
        let config: Config = "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nwsgi = \"mysite.wsgi:application\"\nworkers = 2\nthreads = 4\ntimeout = \"5s\"\nchdir = \"/srv\"\nenv = { A = \"1\" }\n"
            .parse()
            .expect("valid");
        let TargetConfig::Wsgi(w) = &config.targets["app"] else {
            panic!("wsgi")
        };
        assert_eq!(
            (w.workers, w.threads, w.timeout),
            (2, 4, Duration::from_secs(5))
        );
        assert_eq!(w.chdir, PathBuf::from("/srv"));
        assert_eq!(w.env["A"], "1");
        let e = errors(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nwsgi = \"not a module\"\nworkers = 0\nautoindex = true\n",
        );
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert!(
            keys.contains(&"targets.app.wsgi")
                && keys.contains(&"targets.app.workers")
                && keys.contains(&"targets.app.autoindex"),
            "{keys:?}"
        );
        let e = errors(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nstatic = \".\"\nworkers = 2\n",
        );
        assert!(
            e[0].message.contains("workers belong(s) to `wsgi` targets"),
            "{e:?}"
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let e = errors("[server\nlisten = 1\n");
        assert_eq!(e[0].line, 1);
    }
}
