//! Validating `[targets.NAME]`: static, wsgi and metrics targets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::errors::{ConfigError, Doc};
use super::raw::RawTarget;
use super::types::{StaticConfig, TargetConfig, WsgiConfig};

impl RawTarget {
    pub(super) fn validate(
        &self,
        key: &str,
        span: std::ops::Range<usize>,
        doc: &Doc<'_>,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<TargetConfig> {
        if let Some(list) = &self.forwarded_allow_ips {
            errors.push(doc.error(
                list.span(),
                &format!("{key}.forwarded_allow_ips"),
                "moved to [server] forwarded_allow_ips: the client is resolved once, before plugins \
                 run, for every target (see also [server] forwarded_header)",
            ));
            return None;
        }
        let mount = self.mount(key, doc, errors)?;
        if let Some(m) = &self.metrics {
            let others = self.static_root.is_some()
                || self.wsgi.is_some()
                || self.upstream.is_some()
                || !self.upstream_settings_used().is_empty()
                || !self.wsgi_settings_used().is_empty()
                || self
                    .static_settings()
                    .iter()
                    .any(|(_, span)| span.is_some())
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
        let kinds = [
            ("static", self.static_root.as_ref().map(Spanned::span)),
            ("wsgi", self.wsgi.as_ref().map(Spanned::span)),
            ("upstream", self.upstream.as_ref().map(Spanned::span)),
        ];
        let set: Vec<_> = kinds
            .iter()
            .filter_map(|(name, span)| span.clone().map(|s| (*name, s)))
            .collect();
        if let [_, (second, span), ..] = set.as_slice() {
            errors.push(doc.error(
                span.clone(),
                &format!("{key}.{second}"),
                "a target is one of `static`, `wsgi` or `upstream`, not several",
            ));
            return None;
        }
        let upstream_settings = self.upstream_settings_used();
        if self.upstream.is_none() && !upstream_settings.is_empty() {
            errors.push(doc.error(
                span,
                key,
                format!(
                    "{} belong(s) to `upstream` targets",
                    upstream_settings.join(", ")
                ),
            ));
            return None;
        }
        match (&self.static_root, &self.wsgi, &self.upstream) {
            (Some(root), _, _) => self.validate_static(root, mount, key, doc, base, errors),
            (_, Some(app), _) => self.validate_wsgi(app, mount, key, doc, base, errors),
            (_, _, Some(servers)) => self
                .validate_upstream(servers, key, doc, base, errors)
                .map(TargetConfig::Upstream),
            (None, None, None) => {
                errors.push(doc.error(
                    span,
                    key,
                    "a target needs a kind: `static = \"DIR\"`, `wsgi = \"module:callable\"`, `upstream = [\"http://HOST:PORT\"]` or `metrics = true`",
                ));
                None
            }
        }
    }

    pub(super) fn mount(
        &self,
        key: &str,
        doc: &Doc<'_>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<String> {
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

    pub(super) fn validate_wsgi(
        &self,
        app: &Spanned<String>,
        mount: String,
        key: &str,
        doc: &Doc<'_>,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<TargetConfig> {
        let before = errors.len();
        for (name, span) in self.static_settings() {
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
        let prefetch = match &self.prefetch {
            Some(n) if *n.get_ref() > 64 => {
                errors.push(doc.error(
                    n.span(),
                    &format!("{key}.prefetch"),
                    "must be between 0 and 64",
                ));
                0
            }
            Some(n) => *n.get_ref() as usize,
            None => 4,
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
            prefetch,
            timeout: self.timeout.map_or(Duration::from_secs(30), |t| t.0),
            queue_timeout: self.queue_timeout.map_or(Duration::from_secs(30), |t| t.0),
            response_buffer: self.response_buffer.map_or(1 << 20, |b| b.0),
            response_spool: self.response_spool.map_or(1 << 30, |b| b.0),
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
        }))
    }

    pub(super) fn validate_static(
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
            file_cache: self.file_cache.as_ref().map_or(8 << 20, |b| b.get_ref().0),
            file_cache_valid: self
                .file_cache_valid
                .as_ref()
                .map_or(Duration::from_secs(1), |s| s.get_ref().0),
        }))
    }

    /// The `static`-only settings, each with where it is set (`None`: not set).
    pub(super) fn static_settings(&self) -> [(&'static str, Option<std::ops::Range<usize>>); 6] {
        [
            ("index", self.index.as_ref().map(Spanned::span)),
            ("autoindex", self.autoindex.as_ref().map(Spanned::span)),
            ("show_hidden", self.show_hidden.as_ref().map(Spanned::span)),
            (
                "precompressed",
                self.precompressed.as_ref().map(Spanned::span),
            ),
            ("file_cache", self.file_cache.as_ref().map(Spanned::span)),
            (
                "file_cache_valid",
                self.file_cache_valid.as_ref().map(Spanned::span),
            ),
        ]
    }

    /// The `wsgi`-only settings this (static) target sets.
    pub(super) fn wsgi_settings_used(&self) -> Vec<&'static str> {
        [
            ("workers", self.workers.is_some()),
            ("threads", self.threads.is_some()),
            ("prefetch", self.prefetch.is_some()),
            ("timeout", self.timeout.is_some()),
            ("queue_timeout", self.queue_timeout.is_some()),
            ("response_buffer", self.response_buffer.is_some()),
            ("response_spool", self.response_spool.is_some()),
            ("backlog", self.backlog.is_some()),
            ("max_requests", self.max_requests.is_some()),
            ("max_requests_jitter", self.max_requests_jitter.is_some()),
            ("graceful_timeout", self.graceful_timeout.is_some()),
            ("chdir", self.chdir.is_some()),
            ("pythonpath", self.pythonpath.is_some()),
            ("python", self.python.is_some()),
            ("virtualenv", self.virtualenv.is_some()),
            ("env", self.env.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}
