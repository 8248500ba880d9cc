//! The sandbox's defaults and fixed limits, in one place.

use std::time::Duration;

/// Default wall-clock budget of one plugin call (`time_limit`).
pub const TIME_LIMIT: Duration = Duration::from_millis(100);

/// Default linear-memory ceiling of one plugin instance (`memory_limit`).
pub const MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

/// How often the epoch advances: the resolution of `time_limit`.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Largest body a plugin may produce (a local response or a replaced body); more is a plugin error.
pub const MAX_PLUGIN_BODY: usize = 16 * 1024 * 1024;

/// Default byte budget of the shared key-value store.
pub const KV_BUDGET: u64 = 64 * 1024 * 1024;

/// Default byte budget of the counters (names plus bookkeeping): about 200,000 per-IP counters.
pub const COUNTER_BUDGET: u64 = 16 * 1024 * 1024;

/// Longest `time_limit` allowed: a call holds its event loop (every connection on that thread
/// waits), so a plugin may not take it for longer than this.
pub const MAX_TIME_LIMIT: Duration = Duration::from_secs(2);

/// Header bytes (names and values) plugins may set on one exchange, request and response
/// together; past it setting more is `too-many-headers`.
pub const MAX_PLUGIN_HEADER_BYTES: usize = 1024 * 1024;

/// Entries in a request's context, and their bytes; past either `context-set` traps.
pub const MAX_CONTEXT_ENTRIES: usize = 64;
/// See [`MAX_CONTEXT_ENTRIES`].
pub const MAX_CONTEXT_BYTES: usize = 64 * 1024;

/// Elements of one instance's tables (function references): more fails the instantiation.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Most instances of one plugin kept warm in its pool; more concurrent calls than event-loop
/// threads never happen, so this only bounds what a burst of replacements leaves behind.
pub const POOL_MAX: usize = 64;

/// Lines of stdout and stderr one plugin may write to the host's log per second; more are
/// dropped and counted.
pub const STDIO_LINES_PER_SECOND: u32 = 100;

/// Longest line of a plugin's stdout or stderr kept for the log; the rest of the line is cut.
pub const STDIO_LINE_MAX: usize = 1024;

/// Most counters one plugin may define (`metrics::add` names); adding to another is dropped with a
/// warning: each is a series `/metrics` shows for the life of the process.
pub const MAX_PLUGIN_METRICS: usize = 100;

/// Most header fields a plugin may leave on a request or response, or put in a local response;
/// more is the plugin's error.
pub const MAX_PLUGIN_HEADERS: usize = 1000;

/// Epoch ticks for a time limit: rounded up, plus one because the current tick is already partly
/// spent when the deadline is set.
pub fn deadline_ticks(limit: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    (limit.as_nanos().div_ceil(tick) as u64).max(1) + 1
}

/// The longest a plugin may hold a request with `request.wait-for`.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// How many times one request may wait (`request.wait-for`); later calls are ignored.
pub const MAX_WAITS: u8 = 3;

/// Store reads one hook call remembers the versions of, for an answer it offers
/// (`request.offer-answer`): an answer made from more keys is refused.
pub const MAX_ANSWER_READS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up() {
        assert_eq!(deadline_ticks(Duration::from_millis(100)), 21);
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 2);
        assert_eq!(deadline_ticks(Duration::ZERO), 2);
    }
}
