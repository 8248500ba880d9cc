//! Validating `[server]`, `[log]` and the whole document's cross-references.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::errors::{ConfigError, Doc};
use super::plugins::{MAX_CHAIN, PluginConfig};
use super::raw::{AccessLogFormat, RawConfig, RawLimits};
use super::trusted::{Forwarding, Trusted};
use super::types::{Config, Limits, LogConfig, ServerConfig, TargetConfig};
use super::units::Bytes;

/// The smallest `server.limits.send_queue` besides 0: below it a response wakes its connection
/// every few kilobytes.
const MIN_SEND_QUEUE: u32 = 16 << 10;

/// The default `plugin_cache_dir`: `$XDG_CACHE_HOME/gatehouse` or `~/.cache/gatehouse`.
pub(super) fn default_plugin_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("gatehouse").join("plugins"))
}

/// Event-loop threads when the config does not say: one per CPU the Python workers leave free,
/// at least one. Workers are busy processes of their own; a front thread more than the free CPUs
/// makes both sides sleep and wake more (measured with 2 CPUs and 2 workers: one front thread
/// served a Flask route 15% faster than two, hello world, where the front is the bottleneck, 5%
/// slower). Set `threads` for front-heavy loads (static files, tiny responses).
pub(super) fn default_threads(cpus: usize, targets: &BTreeMap<String, TargetConfig>) -> usize {
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
    pub(super) fn validate(
        self,
        doc: &Doc<'_>,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Config> {
        let listening = super::listeners::validate(
            self.server.listen.as_ref(),
            &self.server.listeners,
            &self.server.certificates,
            self.server.acme.as_ref(),
            doc,
            base,
            errors,
        );
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
                    self.server.listen.as_ref().map_or(0..0, Spanned::span),
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
        let buffer_lines = match &self.log.buffer_lines {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 1 << 20 => {
                errors.push(doc.error(
                    n.span(),
                    "log.buffer_lines",
                    "must be between 1 and 1048576",
                ));
                0
            }
            Some(n) => *n.get_ref() as usize,
            None => 16 * 1024,
        };
        let trusted = match &self.server.forwarded_allow_ips {
            None => Trusted::default(),
            Some(list) => Trusted::parse(list.get_ref()).unwrap_or_else(|e| {
                errors.push(doc.error(list.span(), "server.forwarded_allow_ips", e));
                Trusted::default()
            }),
        };
        let forwarding = Forwarding {
            trusted,
            header: self.server.forwarded_header.unwrap_or_default(),
        };
        let log = LogConfig {
            buffer_lines,
            level: self.log.level.unwrap_or_else(|| "info".into()),
            access_log: self.log.access_log.unwrap_or(AccessLogFormat::Combined),
            access_log_path: self.log.access_log_path.map(|p| base.join(p)),
        };
        let admin = self
            .admin
            .as_ref()
            .and_then(|a| a.validate(&listening.listen, doc, base, errors));
        Some(Config {
            admin,
            server: ServerConfig {
                listen: listening.listen,
                certificates: listening.certificates,
                acme: listening.acme,
                default_target,
                plugin_cache_dir,
                limits,
                shutdown_timeout: self
                    .server
                    .shutdown_timeout
                    .map_or(Duration::from_secs(30), |s| s.0),
                threads,
                forwarding,
            },
            log,
            targets,
            plugins,
            store: self.store.validate(doc, errors),
        })
    }
}

pub(super) fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

impl RawLimits {
    pub(super) fn validate(&self, doc: &Doc<'_>, errors: &mut Vec<ConfigError>) -> Limits {
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
            send_timeout: self.send_timeout.map_or(d.send_timeout, |s| s.0),
            tls_handshake_timeout: self
                .tls_handshake_timeout
                .map_or(d.tls_handshake_timeout, |s| s.0),
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
            plugin_body_size: self.plugin_body_size.map_or(d.plugin_body_size, |b| b.0),
            body_memory_budget: self
                .body_memory_budget
                .map_or(d.body_memory_budget, |b| b.0),
            body_spool_budget: self.body_spool_budget.map_or(d.body_spool_budget, |b| b.0),
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
            send_queue: match &self.send_queue {
                Some(v) => match u32::try_from(v.get_ref().0) {
                    Ok(n) if n == 0 || n >= MIN_SEND_QUEUE => Ok(n),
                    Ok(_) => Err("must be 0 (the kernel's) or at least 16 KiB: below that a \
                                  response wakes its connection every few kilobytes"),
                    Err(_) => Err("must be below 4 GiB"),
                }
                .unwrap_or_else(|why| {
                    errors.push(doc.error(v.span(), "server.limits.send_queue", why));
                    d.send_queue
                }),
                None => d.send_queue,
            },
        }
    }
}
