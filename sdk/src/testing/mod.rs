//! Unit-test a filter natively, with plain `cargo test` and no wasm.
//!
//! ```
//! use gatehouse_sdk::testing::{self, TestRequest};
//! use gatehouse_sdk::{Action, Filter, Request};
//!
//! struct Tag;
//! impl Filter for Tag {
//!     type Config = serde_json::Value;
//!     fn new(_: serde_json::Value) -> Result<Self, String> { Ok(Tag) }
//!     fn on_request(&self, req: &mut Request) -> Action {
//!         req.set_header("x-tag", "yes").unwrap();
//!         Action::Continue
//!     }
//! }
//!
//! let tag: Tag = testing::init("{}").unwrap();
//! let mut req = TestRequest::get("/");
//! assert_eq!(testing::on_request(&tag, &mut req), Action::Continue);
//! assert_eq!(req.header("x-tag").as_deref(), Some("yes"));
//! ```
//!
//! Host services ([`crate::kv`], [`crate::counter`], ...) work in memory, one store per test thread;
//! [`logs`], [`metric`] and [`reset`] inspect and clear them.

pub(crate) mod messages;

pub use messages::{TestRequest, TestResponse};

use crate::backend::native::{Exchange, with_exchange};
use crate::http::{Request, Response};
use crate::{Action, Filter, Hook, LogEntry};

/// Builds a filter from a JSON config, as the host's `init` would (config errors included), with no
/// targets configured.
pub fn init<F: Filter>(config_json: &str) -> Result<F, String> {
    init_with_targets(config_json, &[])
}

/// Builds a filter as [`init`] does, with these target names configured ([`crate::targets`]).
pub fn init_with_targets<F: Filter>(config_json: &str, targets: &[&str]) -> Result<F, String> {
    crate::glue::TARGETS
        .with(|t| *t.borrow_mut() = targets.iter().map(|s| s.to_string()).collect());
    // The rule in force is the one this filter hands over, if any.
    backend::STATE.with(|s| s.borrow_mut().rate_rule = None);
    crate::glue::build::<F>(config_json)
}

/// Runs `hook` on `req` (and `resp`) as the host would run it.
fn run(
    req: &mut TestRequest,
    resp: Option<&mut TestResponse>,
    body_readable: bool,
    hook: impl FnOnce(),
) {
    let taken_resp = resp.as_ref().map(|r| (*r).clone());
    let exchange = Exchange {
        req: std::mem::take(req),
        resp: taken_resp,
        body_readable,
    };
    let back = with_exchange(exchange, hook);
    *req = back.req;
    if let (Some(resp), Some(new)) = (resp, back.resp) {
        *resp = new;
    }
}

/// Runs [`Filter::on_request`] (the request body readable only with [`Filter::REQUEST_BODY`]);
/// `Action::Continue` without calling it if [`Filter::hooks`] leaves it out, as the host would.
pub fn on_request<F: Filter>(filter: &F, req: &mut TestRequest) -> Action {
    let mut action = Action::Continue;
    req.waiting = None;
    req.offered = None;
    req.continue_for_client = None;
    req.response_headers.clear();
    // The rule the filter handed over, applied first, as the host applies it.
    let rule = backend::STATE.with(|s| s.borrow().rate_rule.clone());
    if let Some(rule) = rule
        && let Some(refusal) = apply_rate_rule(&rule, req)
    {
        return Action::Respond(refusal);
    }
    if filter.hooks().contains(&Hook::OnRequest) {
        run(req, None, F::REQUEST_BODY, || {
            action = filter.on_request(&mut Request::new(None, None));
        });
    }
    // The host sets the fields left for the response on a local response too.
    if let Action::Respond(local) = &mut action {
        for (name, value) in req.response_headers.drain(..) {
            local.headers.retain(|(n, _)| *n != name);
            local.headers.push((name, value));
        }
    }
    action
}

/// Takes one request from `rule`'s key for `req`: the refusal, or `None` with the rule's fields
/// left for the response.
fn apply_rate_rule(
    rule: &gatehouse_rate::Rule,
    req: &mut TestRequest,
) -> Option<crate::LocalResponse> {
    let mut key = String::new();
    rule.key_of(&*req, &mut key);
    let rate = match backend::rate_take(&key, rule.interval_ns, rule.tolerance_ns) {
        backend::RateVerdict::Allowed(ahead) => gatehouse_rate::Rate::Allowed(ahead),
        backend::RateVerdict::Limited(wait) => gatehouse_rate::Rate::Limited(wait),
    };
    let verdict = rule.verdict(rate);
    let mut fields = Vec::new();
    if let (Some(f), Some(state)) = (&rule.fields, rule.state(verdict)) {
        fields.push((
            "ratelimit-policy".to_string(),
            f.policy.clone().into_bytes(),
        ));
        fields.push(("ratelimit".to_string(), state.into_bytes()));
    }
    let gatehouse_rate::Verdict::Limited { retry_after_s } = verdict else {
        req.response_headers.extend(fields);
        return None;
    };
    if let Some(name) = &rule.limited_metric {
        backend::metric_add(name, 1);
    }
    let mut refusal = crate::LocalResponse::new(rule.status)
        .header("content-type", gatehouse_rate::REFUSAL_TYPE)
        .header("retry-after", retry_after_s.to_string())
        .body(rule.refusal_body());
    refusal.headers.extend(fields);
    Some(refusal)
}

impl gatehouse_rate::RequestView for TestRequest {
    fn push_client_ip(&self, out: &mut String) {
        // As the host keys it: an IPv4-mapped address is IPv4.
        match self.client_ip.as_deref() {
            Some(text) => match text.parse::<std::net::IpAddr>() {
                Ok(ip) => out.push_str(&ip.to_canonical().to_string()),
                Err(_) => out.push_str(text),
            },
            None => out.push_str("unix"),
        }
    }

    fn host(&self) -> Option<&str> {
        self.host_name()
    }

    fn method(&self) -> &str {
        &self.method
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Sets the fields the filter left for the response in `on_request`, then runs
/// [`Filter::on_response`]; false (and not called) if [`Filter::hooks`] leaves it out.
pub fn on_response<F: Filter>(filter: &F, req: &mut TestRequest, resp: &mut TestResponse) -> bool {
    for (name, value) in req.response_headers.drain(..) {
        resp.headers.retain(|(n, _)| *n != name);
        resp.headers.push((name, value));
    }
    if !filter.hooks().contains(&Hook::OnResponse) {
        return false;
    }
    run(req, Some(resp), true, || {
        filter.on_response(&mut Request::new(None, None), &mut Response::new());
    });
    true
}

/// Runs [`Filter::on_log`]; false (and not called) if [`Filter::hooks`] leaves it out.
pub fn on_log<F: Filter>(filter: &F, req: &mut TestRequest, entry: &LogEntry) -> bool {
    if !filter.hooks().contains(&Hook::OnLog) {
        return false;
    }
    run(req, None, true, || {
        filter.on_log(&mut Request::new(None, None), entry)
    });
    true
}

/// Log lines written by the filter on this thread, as `(level, message)`.
pub fn logs() -> Vec<(String, String)> {
    backend::STATE.with(|s| s.borrow().logs.clone())
}

/// Keys the filter notified ([`crate::waits::notify`]) on this thread, in order.
pub fn notified() -> Vec<String> {
    backend::STATE.with(|s| s.borrow().notified.clone())
}

/// A metric's value on this thread.
pub fn metric(name: &str) -> u64 {
    backend::STATE.with(|s| s.borrow().metrics.get(name).copied().unwrap_or(0))
}

/// Moves this thread's clock ([`crate::clock::now_ms`], store TTLs, counter windows) forward.
pub fn advance(by: std::time::Duration) {
    backend::STATE.with(|s| s.borrow_mut().clock_offset_ms += by.as_millis() as u64);
}

/// Clears this thread's store, counters, metrics, logs and clock offset.
pub fn reset() {
    backend::STATE.with(|s| *s.borrow_mut() = backend::State::default());
}

/// The in-memory host services used natively.
#[doc(hidden)]
pub mod backend {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// Log levels, as in the WIT `host` interface.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Level {
        /// trace
        Trace,
        /// debug
        Debug,
        /// info
        Info,
        /// warn
        Warn,
        /// error
        Error,
    }

    /// One test thread's services.
    #[derive(Debug, Default)]
    pub struct State {
        kv: HashMap<String, (Vec<u8>, Option<u64>)>,
        counters: HashMap<(String, u64), (u64, i64)>,
        pub(crate) metrics: HashMap<String, u64>,
        pub(crate) logs: Vec<(String, String)>,
        pub(crate) clock_offset_ms: u64,
        pub(crate) notified: Vec<String>,
        /// The rate rule the filter handed over in `new` ([`crate::rate::enforce`]).
        pub(crate) rate_rule: Option<gatehouse_rate::Rule>,
    }

    thread_local! {
        pub(crate) static STATE: RefCell<State> = RefCell::new(State::default());
    }

    fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
        STATE.with(|s| f(&mut s.borrow_mut()))
    }

    /// See [`crate::waits::notify`].
    pub fn notify(key: &str) {
        with(|s| s.notified.push(key.to_string()));
    }

    /// See [`crate::clock::now_ms`].
    pub fn now_ms() -> u64 {
        let offset = STATE.with(|s| s.borrow().clock_offset_ms);
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            + offset
    }

    // The clock is read before the state is borrowed: it borrows the state itself.
    fn live(entry: &(Vec<u8>, Option<u64>), now: u64) -> bool {
        entry.1.is_none_or(|t| t > now)
    }

    /// See [`crate::kv::get`].
    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        let now = now_ms();
        with(|s| s.kv.get(key).filter(|e| live(e, now)).map(|e| e.0.clone()))
    }

    /// See [`crate::kv::set`].
    pub fn kv_set(key: &str, value: &[u8], ttl: Option<u64>) -> bool {
        let now = now_ms();
        with(|s| {
            s.kv.insert(key.to_string(), (value.to_vec(), ttl.map(|t| now + t)));
        });
        true
    }

    /// See [`crate::kv::delete`].
    pub fn kv_delete(key: &str) -> bool {
        let now = now_ms();
        with(|s| s.kv.remove(key).is_some_and(|e| live(&e, now)))
    }

    /// See [`crate::kv::compare_and_swap`].
    pub fn kv_compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<u64>,
    ) -> bool {
        if kv_get(key).as_deref() != expected {
            return false;
        }
        kv_set(key, new, ttl)
    }

    fn window(window_ms: Option<u64>) -> (u64, u64) {
        match window_ms {
            Some(w) if w > 0 => (w, now_ms() / w),
            _ => (0, 0),
        }
    }

    /// See [`crate::counter::incr`].
    pub fn counter_incr(name: &str, delta: i64, window_ms: Option<u64>) -> i64 {
        let (len, current) = window(window_ms);
        with(|s| {
            let slot = s
                .counters
                .entry((name.to_string(), len))
                .or_insert((current, 0));
            if slot.0 != current {
                *slot = (current, 0);
            }
            slot.1 = slot.1.saturating_add(delta);
            slot.1
        })
    }

    /// The host's `rate-verdict`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum RateVerdict {
        /// Counted: nanoseconds the theoretical arrival time is ahead.
        Allowed(u64),
        /// Refused: nanoseconds until a request would pass.
        Limited(u64),
    }

    /// See [`crate::rate::take`]: the host's algorithm over this thread's store and clock.
    pub fn rate_take(key: &str, interval_ns: u64, tolerance_ns: u64) -> RateVerdict {
        // The host's clock counts nanoseconds: a rate above one a millisecond works as there.
        let offset = STATE.with(|s| s.borrow().clock_offset_ms);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            + offset.saturating_mul(1_000_000);
        let tat = kv_get(key)
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes);
        match gatehouse_rate::gcra(tat, now, interval_ns, tolerance_ns) {
            (gatehouse_rate::Rate::Allowed(ahead), Some(new_tat)) => {
                kv_set(key, &new_tat.to_le_bytes(), Some(ahead.div_ceil(1_000_000)));
                RateVerdict::Allowed(ahead)
            }
            (gatehouse_rate::Rate::Allowed(ahead), None) => RateVerdict::Allowed(ahead),
            (gatehouse_rate::Rate::Limited(wait), _) => RateVerdict::Limited(wait),
        }
    }

    /// See [`crate::rate::enforce`].
    pub fn enforce_rate_rule(rule: gatehouse_rate::Rule) {
        with(|s| s.rate_rule = Some(rule));
    }

    /// See [`crate::counter::get`].
    pub fn counter_get(name: &str, window_ms: Option<u64>) -> i64 {
        let (len, current) = window(window_ms);
        with(|s| match s.counters.get(&(name.to_string(), len)) {
            Some((w, v)) if *w == current => *v,
            _ => 0,
        })
    }

    /// See [`crate::metrics::add`].
    pub fn metric_add(name: &str, delta: u64) {
        with(|s| *s.metrics.entry(name.to_string()).or_default() += delta);
    }

    /// See [`crate::log`].
    pub fn log(level: Level, message: &str) {
        with(|s| {
            s.logs
                .push((format!("{level:?}").to_lowercase(), message.to_string()))
        });
    }

    /// See [`crate::clock::monotonic_ns`].
    pub fn monotonic_ns() -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }

    /// See [`crate::clock::random_u64`]: not cryptographic natively, only varied.
    pub fn random_u64() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(monotonic_ns())
    }
}
