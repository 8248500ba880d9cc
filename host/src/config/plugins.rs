//! `[[plugins]]`: the plugin chain, in order, and `[store]`, the shared key-value store's budget.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::units::{Bytes, Seconds};
use super::{ConfigError, Doc};
use crate::{builtin, sandbox};

/// Most plugins in one chain.
pub const MAX_CHAIN: usize = 64;

/// One plugin of the chain, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// Its name in logs and metrics (`name`, else the built-in name or the file stem).
    pub name: String,
    /// Where its code comes from.
    pub source: PluginSource,
    /// Its `config` table as a JSON document, handed to its `init`.
    pub config_json: String,
    /// Wall-clock budget of one call.
    pub time_limit: Duration,
    /// Linear-memory ceiling of one instance.
    pub memory_limit: u64,
    /// What a failure of this plugin does to the request.
    pub on_error: OnError,
    /// Instance reuse.
    pub isolation: Isolation,
    /// Runs only for these hosts (`example.com`, `*.example.com`); all when empty.
    pub hosts: Vec<String>,
    /// Runs only under these path prefixes; all when empty.
    pub paths: Vec<String>,
    /// Prefix of its keys and counters in the shared store (`kv_namespace`, default its name).
    pub namespace: String,
    /// What its store calls answer while a remote store is unreachable.
    pub store_errors: StoreErrors,
}

/// Where a plugin's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A first-party plugin shipped inside the binary.
    Builtin(String),
    /// A component file.
    File(PathBuf),
}

/// What a plugin failure (trap, panic, timeout, out of memory) does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Answer 500.
    Fail,
    /// Skip the plugin and go on.
    Continue,
}

/// How instances are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Instances are kept and reused across requests (state in a plugin's globals persists).
    Pooled,
    /// A fresh instance for every request (~20 us more per request).
    PerRequest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    #[serde(rename = "use")]
    uses: Spanned<String>,
    name: Option<Spanned<String>>,
    config: Option<toml::Table>,
    time_limit: Option<Spanned<Seconds>>,
    memory_limit: Option<Spanned<Bytes>>,
    on_error: Option<OnError>,
    isolation: Option<Isolation>,
    hosts: Option<Spanned<Vec<String>>>,
    paths: Option<Spanned<Vec<String>>>,
    kv_namespace: Option<String>,
    files: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    store_errors: Option<StoreErrors>,
}

/// What a plugin's store calls answer while a remote store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreErrors {
    /// As if the store were empty and refused writes: reads find nothing, writes and
    /// compare-and-swap report failure, counters read 0 (a rate limit lets requests through, a
    /// cache misses).
    Open,
    /// The request fails with 503.
    Closed,
}

/// The largest file the server reads for a plugin (`files`).
pub const MAX_PLUGIN_FILE: u64 = 1 << 20;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    kv_budget: Option<Bytes>,
    counter_budget: Option<Bytes>,
    backend: Option<Spanned<String>>,
    timeout: Option<Spanned<Seconds>>,
    pool: Option<usize>,
    prefix: Option<String>,
    retry_after: Option<Seconds>,
    threads: Option<Spanned<usize>>,
}

/// `[store]`: the shared key-value store and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Bytes the key-value store may hold; least recently used entries go first (memory backend).
    pub kv_budget: u64,
    /// Bytes the counters may hold; least recently used counters go first (memory backend).
    pub counter_budget: u64,
    /// Where the store lives.
    pub backend: StoreBackend,
    /// Threads per event loop that run plugin calls while the store is remote (their calls wait
    /// on the network, so they run off the event loop).
    pub threads: usize,
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// In the front process.
    Memory,
    /// In a Redis server, shared by every instance that names it.
    Redis(RedisConfig),
}

/// `[store] backend = "redis://..."` and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` (or `rediss://`, `redis+unix:///path`).
    pub url: String,
    /// The longest one call (connecting included) may take.
    pub timeout: Duration,
    /// Idle connections kept.
    pub pool: usize,
    /// Put in front of every key, so several deployments can share one server.
    pub prefix: String,
    /// After a failure, how long calls fail at once before the server is tried again.
    pub retry_after: Duration,
}

impl RawStore {
    pub(super) fn validate(&self, doc: &Doc<'_>, errors: &mut Vec<ConfigError>) -> StoreConfig {
        let backend = match &self.backend {
            None => StoreBackend::Memory,
            Some(b) if b.get_ref() == "memory" => StoreBackend::Memory,
            Some(b)
                if b.get_ref().starts_with("redis://")
                    || b.get_ref().starts_with("rediss://")
                    || b.get_ref().starts_with("redis+unix://") =>
            {
                StoreBackend::Redis(RedisConfig {
                    url: b.get_ref().clone(),
                    timeout: self
                        .timeout
                        .as_ref()
                        .map_or(Duration::from_millis(100), |t| t.get_ref().0),
                    pool: self.pool.unwrap_or(32),
                    prefix: self.prefix.clone().unwrap_or_else(|| "gatehouse:".into()),
                    retry_after: self.retry_after.map_or(Duration::from_secs(1), |s| s.0),
                })
            }
            Some(b) => {
                errors.push(doc.error(
                    b.span(),
                    "store.backend",
                    format!("{:?}: expected \"memory\" or a redis:// URL", b.get_ref()),
                ));
                StoreBackend::Memory
            }
        };
        if let Some(t) = &self.timeout
            && t.get_ref().0.is_zero()
        {
            errors.push(doc.error(t.span(), "store.timeout", "must be more than 0"));
        }
        let threads = match &self.threads {
            Some(t) if *t.get_ref() == 0 || *t.get_ref() > 1024 => {
                errors.push(doc.error(t.span(), "store.threads", "must be between 1 and 1024"));
                16
            }
            Some(t) => *t.get_ref(),
            None => 16,
        };
        StoreConfig {
            kv_budget: self.kv_budget.map_or(sandbox::KV_BUDGET, |b| b.0),
            counter_budget: self.counter_budget.map_or(sandbox::COUNTER_BUDGET, |b| b.0),
            backend,
            threads,
        }
    }
}

impl RawPlugin {
    pub(super) fn validate(
        &self,
        index: usize,
        doc: &Doc<'_>,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<PluginConfig> {
        let key = format!("plugins[{index}]");
        let before = errors.len();
        let uses = self.uses.get_ref();
        let looks_like_path = uses.contains('/') || uses.ends_with(".wasm");
        let source = if looks_like_path {
            let path = base.join(uses);
            if !path.is_file() {
                errors.push(doc.error(
                    self.uses.span(),
                    &format!("{key}.use"),
                    format!("no plugin file at {}", path.display()),
                ));
            }
            PluginSource::File(path)
        } else if builtin::get(uses).is_some() {
            PluginSource::Builtin(uses.clone())
        } else {
            errors.push(doc.error(
                self.uses.span(),
                &format!("{key}.use"),
                format!(
                    "no built-in plugin named {uses:?} (built in: {}); a file path ends in `.wasm`",
                    builtin::names().join(", ")
                ),
            ));
            PluginSource::Builtin(uses.clone())
        };
        let name = match &self.name {
            Some(n) => n.get_ref().clone(),
            None if looks_like_path => Path::new(uses)
                .file_stem()
                .map_or_else(|| uses.clone(), |s| s.to_string_lossy().into_owned()),
            None => uses.clone(),
        };
        let mut table = self.config.clone().unwrap_or_default();
        // A plugin cannot open files: the server reads the ones named here and hands their text
        // over in the config, at start and at every reload.
        if let Some(files) = &self.files {
            let mut texts = toml::Table::new();
            for (entry, path) in files.get_ref() {
                let path = base.join(path);
                let read = std::fs::metadata(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|m| {
                        if m.len() > MAX_PLUGIN_FILE {
                            Err(format!("larger than {MAX_PLUGIN_FILE} bytes"))
                        } else {
                            std::fs::read_to_string(&path).map_err(|e| e.to_string())
                        }
                    });
                match read {
                    Ok(text) => {
                        texts.insert(entry.clone(), toml::Value::String(text));
                    }
                    Err(why) => errors.push(doc.error(
                        files.span(),
                        &format!("{key}.files.{entry}"),
                        format!("cannot read {}: {why}", path.display()),
                    )),
                }
            }
            if table.contains_key("files") {
                errors.push(doc.error(
                    files.span(),
                    &format!("{key}.files"),
                    "the plugin's config already has a `files` key; the files the server reads go there",
                ));
            }
            table.insert("files".into(), toml::Value::Table(texts));
        }
        let config_json = serde_json::to_string(&table).unwrap_or_else(|_| "{}".into());
        let time_limit = match &self.time_limit {
            Some(t) if t.get_ref().0.is_zero() || t.get_ref().0 > sandbox::MAX_TIME_LIMIT => {
                errors.push(doc.error(
                    t.span(),
                    &format!("{key}.time_limit"),
                    "must be between 1ms and 2s: a call holds its event loop, and every connection on it waits",
                ));
                sandbox::TIME_LIMIT
            }
            Some(t) => t.get_ref().0,
            None => sandbox::TIME_LIMIT,
        };
        let memory_limit = match &self.memory_limit {
            Some(m) if m.get_ref().0 < 1 << 20 || m.get_ref().0 > 4 << 30 => {
                errors.push(doc.error(
                    m.span(),
                    &format!("{key}.memory_limit"),
                    "must be between 1MiB and 4GiB",
                ));
                sandbox::MEMORY_LIMIT
            }
            Some(m) => m.get_ref().0,
            None => sandbox::MEMORY_LIMIT,
        };
        if let Some(paths) = &self.paths {
            if let Some(bad) = paths.get_ref().iter().find(|p| !p.starts_with('/')) {
                errors.push(doc.error(
                    paths.span(),
                    &format!("{key}.paths"),
                    format!("a path prefix starts with `/`: {bad:?}"),
                ));
            }
        }
        if let Some(hosts) = &self.hosts {
            if let Some(bad) = hosts.get_ref().iter().find(|h| {
                h.is_empty()
                    || (h.contains('*') && !h.starts_with("*."))
                    || h.matches('*').count() > 1
            }) {
                errors.push(doc.error(
                    hosts.span(),
                    &format!("{key}.hosts"),
                    format!("a host is a name or `*.suffix`: {bad:?}"),
                ));
            }
        }
        if errors.len() > before {
            return None;
        }
        Some(PluginConfig {
            store_errors: self.store_errors.unwrap_or(StoreErrors::Open),
            namespace: self.kv_namespace.clone().unwrap_or_else(|| name.clone()),
            name,
            source,
            config_json,
            time_limit,
            memory_limit,
            on_error: self.on_error.unwrap_or(OnError::Fail),
            isolation: self.isolation.unwrap_or(Isolation::Pooled),
            hosts: self
                .hosts
                .as_ref()
                .map(|h| h.get_ref().iter().map(|s| s.to_ascii_lowercase()).collect())
                .unwrap_or_default(),
            paths: self
                .paths
                .as_ref()
                .map(|p| p.get_ref().clone())
                .unwrap_or_default(),
        })
    }
}
