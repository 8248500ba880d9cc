//! The one TOML file: parsed with serde, validated once into typed values.
//!
//! Every error names the file, the line and column, the key path, and what was expected. Anything that
//! can be checked before the first request (unknown target names, duplicate listeners, missing
//! directories) is checked here.

mod errors;
mod listeners;
mod plugins;
mod raw;
mod server;
mod shape;
mod targets;
mod trusted;
mod types;
pub use gatehouse_units as units;
mod upstream;

pub use errors::{ConfigError, LoadError};
pub use listeners::{AcmeChallenge, AcmeConfig, CertificateFiles, Listen, ListenAddr, TlsListen};
pub use raw::AccessLogFormat;
#[cfg(test)]
pub use trusted::Trusted;
pub use trusted::{ForwardedHeader, Forwarding};
pub use types::*;
pub use upstream::{Balance, Endpoint, HashKey, HealthCheck, UpstreamConfig, UpstreamServer};

use errors::Doc;
use shape::{deserialize_all, within};

pub use plugins::{
    Isolation, MAX_CHAIN, OnError, PluginConfig, PluginSource, RedisConfig, StoreBackend,
    StoreConfig, StoreErrors,
};

use std::path::{Path, PathBuf};

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
            let mut checked = Vec::new();
            let config = raw.validate(&doc, &base_dir, &mut checked);
            // A key whose value was already wrong gets no second error for its stand-in.
            checked.retain(|e| !removed.iter().any(|r| within(&e.key, r)));
            errors.append(&mut checked);
            config
        });
        errors.sort_by_key(|e| (e.line, e.column));
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(LoadError::Invalid(errors)),
        }
    }
}

impl std::str::FromStr for Config {
    type Err = LoadError;

    /// Parses config text with paths relative to the current directory (handy in tests).
    fn from_str(text: &str) -> Result<Config, LoadError> {
        Config::parse(text, "<string>", Path::new("."))
    }
}

#[cfg(test)]
mod tests {
    use super::server::default_threads;
    use super::*;
    use std::time::Duration;

    fn errors(text: &str) -> Vec<ConfigError> {
        match text.parse::<Config>() {
            Err(LoadError::Invalid(e)) => e,
            other => panic!("expected errors, got {other:?}"),
        }
    }

    #[test]
    fn a_plugin_may_not_hold_its_event_loop_for_long() {
        let e = errors(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.a]\nstatic = \".\"\n[[plugins]]\nuse = \"router\"\ntime_limit = \"3s\"\n",
        );
        assert_eq!(e[0].key, "plugins[0].time_limit", "{e:?}");
        assert!(e[0].message.contains("2s"), "{}", e[0].message);
    }

    #[test]
    fn forwarded_allow_ips_lives_in_server_and_names_its_new_place_elsewhere() {
        let config: Config =
            "[server]\nlisten = [\"127.0.0.1:0\"]\nforwarded_allow_ips = [\"10.0.0.0/8\"]\nforwarded_header = \"forwarded\"\n[targets.a]\nstatic = \".\"\n"
                .parse()
                .expect("valid");
        assert!(
            config
                .server
                .forwarding
                .trusted
                .contains("10.1.2.3".parse().expect("ip"))
        );
        assert_eq!(config.server.forwarding.header, ForwardedHeader::Forwarded);
        let e = errors(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.app]\nwsgi = \"a:b\"\nforwarded_allow_ips = [\"*\"]\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "targets.app.forwarded_allow_ips");
        assert!(
            e[0].message.contains("moved to [server]"),
            "{}",
            e[0].message
        );
        let e = errors(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nforwarded_header = \"x-real-ip\"\n[targets.a]\nstatic = \".\"\n",
        );
        assert_eq!(e[0].key, "server.forwarded_header");
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
        assert!(matches!(config.server.listen[2].addr, ListenAddr::Unix(ref p) if p.is_absolute()));
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
    fn send_queue_is_0_for_the_kernel_or_16_kib_to_4_gib() {
        let with = |v: &str| {
            format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\n[server.limits]\nsend_queue = {v}\n[targets.a]\nstatic = \".\"\n"
            )
        };
        let config: Config = with("\"64KiB\"").parse().expect("valid");
        assert_eq!(config.server.limits.send_queue, 64 << 10);
        let config: Config = with("0").parse().expect("valid");
        assert_eq!(config.server.limits.send_queue, 0);
        let e = errors(&with("\"5GiB\""));
        assert_eq!((e.len(), e[0].line), (1, 4));
        assert_eq!(e[0].key, "server.limits.send_queue");
        assert!(e[0].message.contains("below 4 GiB"), "{}", e[0].message);
        let e = errors(&with("\"1KiB\""));
        assert_eq!(e[0].key, "server.limits.send_queue");
        assert!(e[0].message.contains("at least 16 KiB"), "{}", e[0].message);
        let config: Config = with("\"16KiB\"").parse().expect("valid");
        assert_eq!(config.server.limits.send_queue, 16 << 10);
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
    fn files_for_plugins_are_read_by_the_server_into_their_config() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("users"), "alice:$2b$...\n").expect("write");
        let text = "[server]\nlisten = [\"127.0.0.1:0\"]\n[[plugins]]\nuse = \"router\"\nfiles = { htpasswd = \"users\" }\n[plugins.config]\nroutes = []\n";
        let config = Config::parse(text, "g.toml", dir.path()).expect("valid");
        let json: serde_json::Value =
            serde_json::from_str(&config.plugins[0].config_json).expect("json");
        assert_eq!(json["files"]["htpasswd"], "alice:$2b$...\n");
        assert_eq!(json["routes"], serde_json::json!([]));
        let missing = text.replace("\"users\"", "\"nowhere\"");
        match Config::parse(&missing, "g.toml", dir.path()) {
            Err(LoadError::Invalid(e)) => {
                assert_eq!(e[0].key, "plugins[0].files.htpasswd");
                assert!(e[0].message.contains("cannot read"), "{e:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_error_has_position() {
        let e = errors("[server\nlisten = 1\n");
        assert_eq!(e[0].line, 1);
    }
}
