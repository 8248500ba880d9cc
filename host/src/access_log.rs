//! One access-log line per request, written by a background thread so request threads never block on
//! the terminal or the disk: past `log.buffer_lines` queued lines (an output that stalls) a line is
//! dropped and counted, never waited for.

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime};

use crate::config::{AccessLogFormat, LogConfig};

/// Where access-log lines go.
#[derive(Debug, Clone)]
pub struct AccessLog {
    format: AccessLogFormat,
    tx: Option<mpsc::SyncSender<String>>,
    dropped: Arc<AtomicU64>,
}

/// Waits for the writer thread to write every queued line.
#[derive(Debug)]
pub struct Flusher(Option<std::thread::JoinHandle<()>>);

impl Flusher {
    /// Blocks until all lines sent so far (by now-dropped loggers) are written.
    pub fn finish(mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

/// What a line says about one request.
#[derive(Debug)]
pub struct Entry {
    /// Client address (as resolved for the request); `None` on a Unix socket.
    pub client: Option<IpAddr>,
    /// When the request head arrived.
    pub started: SystemTime,
    /// Method, target and version, as received.
    pub method: String,
    /// The request target, as received.
    pub uri: String,
    /// `HTTP/1.1`, `HTTP/2.0`, ...
    pub version: &'static str,
    /// Referer header, if any.
    pub referer: Option<String>,
    /// User-Agent header, if any.
    pub user_agent: Option<String>,
    /// Status sent.
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// Time from head received to last byte handed to the connection.
    pub duration: Duration,
    /// The target that answered, or `-` when the request was refused before routing.
    pub target: String,
}

impl AccessLog {
    /// Starts the writer thread for a log config.
    pub fn start(config: &LogConfig) -> std::io::Result<(AccessLog, Flusher)> {
        if config.access_log == AccessLogFormat::Off {
            return Ok((
                AccessLog {
                    format: config.access_log,
                    tx: None,
                    dropped: Arc::default(),
                },
                Flusher(None),
            ));
        }
        let out: Box<dyn Write + Send> = match &config.access_log_path {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = mpsc::sync_channel::<String>(config.buffer_lines);
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok((
            AccessLog {
                format: config.access_log,
                tx: Some(tx),
                dropped: Arc::default(),
            },
            Flusher(Some(handle)),
        ))
    }

    /// Whether lines are wanted at all (so callers can skip collecting them).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one line.
    pub fn record(&self, entry: &Entry) {
        let Some(tx) = &self.tx else { return };
        let line = match self.format {
            AccessLogFormat::Json => json_line(entry),
            _ => combined_line(entry),
        };
        if let Err(mpsc::TrySendError::Full(_)) = tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped so far because the output did not keep up.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_lines(rx: mpsc::Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        // Flush once the queue is drained, so lines appear promptly but are batched under load.
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// nginx `combined` plus `rt=SECONDS target=NAME`.
fn combined_line(e: &Entry) -> String {
    let mut line = String::with_capacity(160);
    match e.client {
        Some(ip) => {
            let _ = write!(line, "{ip}");
        }
        None => line.push_str("unix"),
    }
    let time = time::OffsetDateTime::from(e.started);
    let _ = write!(
        line,
        " - - [{}] \"",
        time.format(time::macros::format_description!(
            "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
        ))
        .unwrap_or_default()
    );
    escape_into(&mut line, &e.method);
    line.push(' ');
    escape_into(&mut line, &e.uri);
    let _ = write!(line, " {}\" {} {} \"", e.version, e.status, e.bytes);
    escape_into(&mut line, e.referer.as_deref().unwrap_or("-"));
    line.push_str("\" \"");
    escape_into(&mut line, e.user_agent.as_deref().unwrap_or("-"));
    let _ = writeln!(
        line,
        "\" rt={:.6} target={}",
        e.duration.as_secs_f64(),
        e.target
    );
    line
}

fn json_line(e: &Entry) -> String {
    let time = time::OffsetDateTime::from(e.started)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut line = serde_json::json!({
        "time": time,
        "client": e.client.map(|ip| ip.to_string()),
        "method": e.method,
        "uri": e.uri,
        "protocol": e.version,
        "status": e.status,
        "bytes": e.bytes,
        "duration_s": e.duration.as_secs_f64(),
        "target": e.target,
        "referer": e.referer,
        "user_agent": e.user_agent,
    })
    .to_string();
    line.push('\n');
    line
}

/// Like nginx: printable ASCII as is, `"` and `\` and everything else as `\xHH`.
fn escape_into(out: &mut String, text: &str) {
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            client: Some("127.0.0.1".parse().expect("addr")),
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_072_000),
            method: "GET".into(),
            uri: "/a\"b".into(),
            version: "HTTP/1.1",
            referer: None,
            user_agent: Some("curl/8.0 \u{e9}".into()),
            status: 200,
            bytes: 1024,
            duration: Duration::from_micros(1500),
            target: "site".into(),
        }
    }

    #[test]
    fn combined_format() {
        assert_eq!(
            combined_line(&entry()),
            "127.0.0.1 - - [25/Nov/2025:12:00:00 +0000] \"GET /a\\x22b HTTP/1.1\" 200 1024 \"-\" \"curl/8.0 \\xC3\\xA9\" rt=0.001500 target=site\n"
        );
    }

    #[test]
    fn json_format() {
        let v: serde_json::Value = serde_json::from_str(&json_line(&entry())).expect("json");
        assert_eq!(v["status"], 200);
        assert_eq!(v["uri"], "/a\"b");
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["target"], "site");
    }
}
