//! The file as serde reads it: every key optional where it has a default, spans kept for errors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::listeners;
use super::plugins;
use super::trusted::ForwardedHeader;
use super::units::{Bytes, Seconds};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    // Names as plain strings: serde reports the path through a `Spanned` key as unknown.
    pub(super) targets: BTreeMap<String, Spanned<RawTarget>>,
    #[serde(default)]
    pub(super) plugins: Vec<plugins::RawPlugin>,
    #[serde(default)]
    pub(super) store: plugins::RawStore,
    pub(super) admin: Option<listeners::RawAdmin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) listeners: Vec<Spanned<listeners::RawListener>>,
    #[serde(default)]
    pub(super) certificates: Vec<Spanned<listeners::RawCertificate>>,
    pub(super) acme: Option<Spanned<listeners::RawAcme>>,
    pub(super) default_target: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    pub(super) shutdown_timeout: Option<Seconds>,
    pub(super) threads: Option<Spanned<u32>>,
    pub(super) plugin_cache_dir: Option<String>,
    pub(super) forwarded_allow_ips: Option<Spanned<Vec<String>>>,
    pub(super) forwarded_header: Option<ForwardedHeader>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) header_read_timeout: Option<Seconds>,
    pub(super) keepalive_timeout: Option<Seconds>,
    pub(super) body_read_timeout: Option<Seconds>,
    pub(super) send_timeout: Option<Seconds>,
    pub(super) tls_handshake_timeout: Option<Seconds>,
    pub(super) max_uri_length: Option<Spanned<Bytes>>,
    pub(super) max_header_size: Option<Spanned<Bytes>>,
    pub(super) max_header_field_size: Option<Spanned<Bytes>>,
    pub(super) max_headers: Option<Spanned<u32>>,
    pub(super) max_body_size: Option<Bytes>,
    pub(super) body_buffer_size: Option<Bytes>,
    pub(super) plugin_body_size: Option<Bytes>,
    pub(super) body_memory_budget: Option<Bytes>,
    pub(super) body_spool_budget: Option<Bytes>,
    pub(super) max_connections: Option<Spanned<u32>>,
    pub(super) max_concurrent_streams: Option<Spanned<u32>>,
    pub(super) send_queue: Option<Spanned<Bytes>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) level: Option<String>,
    pub(super) buffer_lines: Option<Spanned<u32>>,
    pub(super) access_log: Option<AccessLogFormat>,
    pub(super) access_log_path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    #[serde(rename = "static")]
    pub(super) static_root: Option<Spanned<String>>,
    pub(super) mount: Option<Spanned<String>>,
    pub(super) index: Option<Spanned<Vec<String>>>,
    pub(super) autoindex: Option<Spanned<bool>>,
    pub(super) show_hidden: Option<Spanned<bool>>,
    pub(super) precompressed: Option<Spanned<bool>>,
    pub(super) file_cache: Option<Spanned<Bytes>>,
    pub(super) file_cache_valid: Option<Spanned<Seconds>>,
    pub(super) wsgi: Option<Spanned<String>>,
    pub(super) metrics: Option<Spanned<bool>>,
    pub(super) workers: Option<Spanned<u32>>,
    pub(super) threads: Option<Spanned<u32>>,
    pub(super) prefetch: Option<Spanned<u32>>,
    pub(super) timeout: Option<Seconds>,
    pub(super) queue_timeout: Option<Seconds>,
    pub(super) response_buffer: Option<Bytes>,
    pub(super) response_spool: Option<Bytes>,
    pub(super) backlog: Option<u32>,
    pub(super) max_requests: Option<u64>,
    pub(super) max_requests_jitter: Option<u64>,
    pub(super) graceful_timeout: Option<Seconds>,
    pub(super) chdir: Option<String>,
    pub(super) pythonpath: Option<Vec<String>>,
    pub(super) python: Option<String>,
    pub(super) virtualenv: Option<String>,
    pub(super) env: Option<BTreeMap<String, String>>,
    pub(super) forwarded_allow_ips: Option<Spanned<Vec<String>>>,
    pub(super) upstream: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) balance: Option<Spanned<String>>,
    pub(super) hash_key: Option<Spanned<String>>,
    pub(super) connect_timeout: Option<Seconds>,
    pub(super) first_byte_timeout: Option<Seconds>,
    pub(super) read_timeout: Option<Seconds>,
    pub(super) max_connections: Option<u32>,
    pub(super) keepalive: Option<u32>,
    pub(super) keepalive_timeout: Option<Seconds>,
    pub(super) retries: Option<u32>,
    pub(super) retry_budget: Option<Spanned<f64>>,
    pub(super) max_fails: Option<u32>,
    pub(super) fail_timeout: Option<Seconds>,
    pub(super) health_check: Option<Spanned<RawHealthCheck>>,
    pub(super) request_buffering: Option<bool>,
    pub(super) preserve_host: Option<bool>,
    pub(super) via: Option<bool>,
    pub(super) http2: Option<bool>,
    pub(super) tls_ca: Option<Spanned<String>>,
    pub(super) tls_verify: Option<bool>,
}

/// `health_check` of an upstream target.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    pub(super) path: Option<String>,
    pub(super) interval: Option<Seconds>,
    pub(super) timeout: Option<Seconds>,
    pub(super) expect: Option<String>,
    pub(super) fails: Option<u32>,
    pub(super) passes: Option<u32>,
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
