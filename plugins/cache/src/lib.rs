//! `cache`: a shared HTTP cache (RFC 9111) in front of any target, over the host's key-value store.
//!
//! ```toml
//! [[plugins]]
//! use = "cache"
//! [plugins.config]
//! max_entry_size = "1MiB"      # larger responses pass through unstored
//! default_ttl = "10m"          # for responses with no freshness information (off by default)
//! keep_stale = "10m"           # how long past its freshness an entry is kept for revalidation
//! store_set_cookie = false     # store responses carrying Set-Cookie (off: nginx's default)
//! store_authorized = false     # store responses to requests with Authorization regardless
//! purge_from = ["127.0.0.1/32", "::1/128"]   # clients allowed to send PURGE (a URL, a
//!                                             # prefix: /path/*, or tags: Surrogate-Key)
//! stale_if_unreachable = true  # a stale copy answers when the target cannot be reached (502/504)
//! collapse = true              # concurrent misses of a URL wait for the first one's response
//! collapse_timeout = "5s"      # ... for at most this long (10s at most), then go on themselves
//! ```
//!
//! A request is answered from the store on its head (no body is read, the target is not called)
//! when a fresh response is stored for its method-independent URL and the request header fields
//! that response's `Vary` names. A stale one is revalidated with `If-None-Match` /
//! `If-Modified-Since` and a `304` refreshes it; `stale-while-revalidate` serves the stale copy
//! while one request revalidates (nginx's `proxy_cache_use_stale updating`), `stale-if-error`
//! serves it when the target fails. Unsafe methods invalidate the URL and their `Location` /
//! `Content-Location`. Every response says what happened in `Cache-Status` (RFC 9211) and
//! `X-Cache` (nginx's `$upstream_cache_status` words).

mod conditional;
mod directives;
mod entry;
mod fields;
mod freshness;
mod purges;

use std::net::IpAddr;
use std::time::Duration;

use gatehouse_sdk::{
    Action, Answer, Filter, Hook, LocalResponse, Request, Response, clock, kv, metrics, units,
    waits,
};
use serde::Deserialize;

use directives::Directives;
use entry::Entry;
use fields::Fields;
use freshness::{Freshness, Policy};
use purges::{Purges, Rule};

/// The plugin's `config` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    default_ttl: Option<units::Seconds>,
    max_entry_size: Option<units::Bytes>,
    keep_stale: Option<units::Seconds>,
    heuristic_fraction: Option<f64>,
    heuristic_max: Option<units::Seconds>,
    #[serde(default)]
    store_set_cookie: bool,
    #[serde(default)]
    store_authorized: bool,
    #[serde(default)]
    ignore_query: bool,
    surrogate_name: Option<String>,
    #[serde(default)]
    purge_from: Vec<String>,
    purge_method: Option<String>,
    status_headers: Option<bool>,
    stale_if_unreachable: Option<bool>,
    collapse: Option<bool>,
    collapse_timeout: Option<units::Seconds>,
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    policy: Policy,
    max_entry_size: usize,
    keep_stale_ms: u64,
    store_set_cookie: bool,
    store_authorized: bool,
    ignore_query: bool,
    purge_from: Vec<ipnet::IpNet>,
    purge_method: String,
    status_headers: bool,
    stale_if_unreachable: bool,
    /// Concurrent misses of one URL wait for the first one's response (`None`: off).
    collapse_timeout: Option<Duration>,
}

/// How long one request may hold the right to revalidate an entry while others are served stale.
const UPDATE_LOCK: Duration = Duration::from_secs(30);

/// The field a forwarded request announces the cache's surrogate abilities in.
const SURROGATE_CAPABILITY: &str = "surrogate-capability";

/// Per-request context keys.
const STATE: &str = "cache.state";
const URL: &str = "cache.url";
const KEY: &str = "cache.key";
const SENT_AT: &str = "cache.sent";
const FWD: &str = "cache.fwd";
const CLIENT_INM: &str = "cache.inm";
const CLIENT_IMS: &str = "cache.ims";
const LOCKED: &str = "cache.lock";
const NO_STORE: &str = "cache.no-store";
const FILLING: &str = "cache.filling";
const WAITED: &str = "cache.waited";

/// How long a URL whose response could not be stored skips collapsing (Varnish's hit-for-miss):
/// its requests then go to the target side by side instead of one after another.
const PASS_FOR: Duration = Duration::from_secs(10);

/// Fields never stored (hop-by-hop, and `Age`, which is computed on use).
const NOT_STORED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authentication-info",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "age",
    "cache-status",
    "x-cache",
];

/// Request fields that need the plugin's judgement (and so the host's answers leave to it):
/// the client's own cache directives, credentials, conditionals and ranges.
const CONSULT: &[&str] = &[
    "cache-control",
    "pragma",
    "authorization",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "range",
    "if-range",
];

/// Fields a `304` does not update (they describe the stored body, RFC 9111 section 3.2).
const NOT_UPDATED: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-range",
    "content-md5",
    "etag",
    "transfer-encoding",
];

/// What became of a request, for the status headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Fresh from the store.
    Hit,
    /// Stale from the store, allowed by the client's `max-stale`.
    StaleHit,
    /// Stale from the store while another request revalidates it.
    Updating,
    /// Stale from the store because the target failed (`stale-if-error`).
    StaleOnError,
    /// Revalidated with the target, which said it had not changed.
    Revalidated,
}

impl Outcome {
    fn x_cache(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::StaleHit | Outcome::StaleOnError => "STALE",
            Outcome::Updating => "UPDATING",
            Outcome::Revalidated => "REVALIDATED",
        }
    }
}

impl Filter for Cache {
    type Config = Config;
    const HOOKS: &'static [Hook] = &[Hook::OnRequest, Hook::OnResponse];
    const REQUEST_HEAD: bool = true;
    const RESPONSE_BODY: bool = true;

    fn new(config: Config) -> Result<Self, String> {
        let fraction = config.heuristic_fraction.unwrap_or(0.1);
        if !(0.0..=1.0).contains(&fraction) {
            return Err(format!(
                "heuristic_fraction must be between 0 and 1, not {fraction}"
            ));
        }
        let purge_from = config
            .purge_from
            .iter()
            .map(|text| parse_net(text))
            .collect::<Result<Vec<_>, _>>()?;
        let surrogate = match config.surrogate_name {
            Some(name) if name.is_empty() => None,
            Some(name) => {
                if !name.bytes().all(directives::is_tchar) {
                    return Err(format!("surrogate_name {name:?} must be a token"));
                }
                Some(name.to_ascii_lowercase())
            }
            None => Some("gatehouse".to_string()),
        };
        let max_entry_size = config.max_entry_size.map_or(1 << 20, |b| b.0);
        Ok(Cache {
            policy: Policy {
                heuristic_fraction: fraction,
                heuristic_max: config.heuristic_max.map_or(86_400, |s| s.0.as_secs()),
                default_ttl: config.default_ttl.map(|s| s.0.as_secs()),
                surrogate,
            },
            max_entry_size: usize::try_from(max_entry_size).unwrap_or(usize::MAX),
            keep_stale_ms: config
                .keep_stale
                .map_or(600_000, |s| s.0.as_millis() as u64),
            store_set_cookie: config.store_set_cookie,
            store_authorized: config.store_authorized,
            ignore_query: config.ignore_query,
            purge_from,
            purge_method: config
                .purge_method
                .unwrap_or_else(|| "PURGE".to_string())
                .to_ascii_uppercase(),
            status_headers: config.status_headers.unwrap_or(true),
            stale_if_unreachable: config.stale_if_unreachable.unwrap_or(true),
            collapse_timeout: config.collapse.unwrap_or(true).then(|| {
                config
                    .collapse_timeout
                    .map_or(Duration::from_secs(5), |s| s.0)
                    .min(Duration::from_secs(10))
            }),
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        let method = req.method().to_string();
        match method.as_str() {
            "GET" | "HEAD" => self.lookup(req),
            "OPTIONS" | "TRACE" => Action::Continue,
            m if m == self.purge_method && !self.purge_from.is_empty() => self.purge(req),
            _ => {
                // An unsafe method: the URL is invalidated once the target has answered it
                // successfully (RFC 9111 section 4.4).
                let url = self.url(req);
                req.set_context(STATE, "invalidate");
                req.set_context(URL, &url);
                Action::Continue
            }
        }
    }

    fn on_response(&self, req: &mut Request, resp: &mut Response) {
        match req.context(STATE).as_deref() {
            Some("fetch") => self.fetched(req, resp),
            Some("invalidate") => self.invalidate_after(req, resp),
            _ => {}
        }
    }
}

gatehouse_sdk::export_filter!(Cache);

fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("purge_from: {text:?} is not an address or CIDR block"))
}

impl Cache {
    /// The method-independent key URL: scheme, host, path and (unless ignored) query.
    fn url(&self, req: &Request) -> String {
        let mut url = format!(
            "{}://{}{}",
            req.scheme(),
            req.host_name().unwrap_or(""),
            req.path()
        );
        if !self.ignore_query
            && let Some(query) = req.query()
        {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// GET and HEAD: answer from the store, or send the request on (to fetch or revalidate).
    /// A hit sets nothing on the request: the per-request state is written only for a request
    /// that goes on to the target.
    fn lookup(&self, req: &mut Request) -> Action {
        let now = clock::now_ms();
        let url = self.url(req);
        let mut fields = Fields::of(req);
        if let Some(value) = self.surrogate_capability() {
            fields.set(SURROGATE_CAPABILITY, value.into_bytes());
        }
        let req_cc = Directives::parse(fields.all("cache-control"));
        let pragma_no_cache = req_cc.is_empty()
            && fields.all("pragma").any(|v| {
                String::from_utf8_lossy(v)
                    .to_ascii_lowercase()
                    .contains("no-cache")
            });
        let client_no_cache = req_cc.has("no-cache") || pragma_no_cache;
        let only_if_cached = req_cc.has("only-if-cached");

        let (key, stored) = match self.stored_variant(&fields, &url) {
            Ok(found) => found,
            Err(fwd) => {
                if only_if_cached {
                    return self.gateway_timeout();
                }
                // A miss's state, also for a request about to wait: the host ignores a wait past
                // its limit of waits per request (other plugins may have used them), and the
                // request then goes on as a miss.
                self.forward(req, &url, &req_cc, now);
                req.set_context(FWD, fwd);
                if let Some(timeout) = self.collapse_timeout
                    && req.method() == "GET"
                    && req.context(WAITED).is_none()
                    && kv::get(&pass_key(&url)).is_none()
                {
                    // One miss goes to the target; the others wait for it, then find its
                    // response.
                    if kv::compare_and_swap(&fill_key(&url), None, b"1", Some(timeout)) {
                        req.set_context(FILLING, "1");
                    } else {
                        req.set_context(WAITED, "1");
                        metrics::add("collapsed", 1);
                        req.wait_for(&fill_key(&url), timeout);
                        return Action::Continue;
                    }
                }
                metrics::add("miss", 1);
                return Action::Continue;
            }
        };
        let resp_cc = freshness::cache_control(&stored);
        if fields.first("authorization").is_some() && !self.authorized_reuse(&resp_cc) {
            self.forward(req, &url, &req_cc, now);
            req.set_context(KEY, &key);
            req.set_context(FWD, "bypass");
            return Action::Continue;
        }
        let f = freshness::freshness(&stored, &self.policy, now);
        let revalidate_always = resp_cc.has("no-cache")
            || freshness::surrogate_control(&stored, &self.policy).has("no-cache");
        let mut acceptable = f.is_fresh() && !revalidate_always && !client_no_cache;
        if let Some(max_age) = freshness::valid_seconds(&req_cc, "max-age")
            && f.age_ms > max_age.saturating_mul(1000)
        {
            acceptable = false;
        }
        if let Some(min_fresh) = freshness::valid_seconds(&req_cc, "min-fresh")
            && f.lifetime_ms.saturating_sub(f.age_ms) < min_fresh.saturating_mul(1000)
        {
            acceptable = false;
        }
        if acceptable {
            if req.context(WAITED).is_none()
                && CONSULT.iter().all(|name| fields.first(name).is_none())
            {
                return self.serve_and_offer(req, &url, key, stored, f);
            }
            return self.serve(req, &fields, stored, f, Outcome::Hit);
        }
        let stale_allowed = !f.is_fresh()
            && !revalidate_always
            && !client_no_cache
            && !freshness::must_revalidate(&resp_cc);
        if stale_allowed && req_cc.has("max-stale") {
            let within = match req_cc.seconds("max-stale") {
                None | Some(None) => true,
                Some(Some(limit)) => f.staleness_ms() <= limit.saturating_mul(1000),
            };
            if within {
                return self.serve(req, &fields, stored, f, Outcome::StaleHit);
            }
        }
        if only_if_cached {
            return self.gateway_timeout();
        }
        let mut locked = false;
        if stale_allowed
            && let Some(window) = freshness::valid_seconds(&resp_cc, "stale-while-revalidate")
            && f.staleness_ms() <= window.saturating_mul(1000)
        {
            if kv::compare_and_swap(&lock_key(&key), None, b"1", Some(UPDATE_LOCK)) {
                locked = true;
            } else {
                return self.serve(req, &fields, stored, f, Outcome::Updating);
            }
        }
        self.forward(req, &url, &req_cc, now);
        req.set_context(KEY, &key);
        if locked {
            req.set_context(LOCKED, "1");
        }
        req.set_context(FWD, if client_no_cache { "request" } else { "stale" });
        metrics::add("revalidate", 1);
        self.add_validators(req, &fields, &stored);
        Action::Continue
    }

    /// The state `on-response` needs for a request that goes on to the target.
    fn forward(&self, req: &mut Request, url: &str, req_cc: &Directives, now: u64) {
        if req_cc.has("no-store") {
            req.set_context(NO_STORE, "1");
        }
        req.set_context(URL, url);
        req.set_context(STATE, "fetch");
        req.set_context(SENT_AT, &now.to_string());
        if let Some(value) = self.surrogate_capability() {
            let _ = req.set_header(SURROGATE_CAPABILITY, value);
        }
    }

    /// The `Surrogate-Capability` a forwarded request carries. A lookup counts it among the
    /// request's fields, as the stored response's `Vary` may name it.
    fn surrogate_capability(&self) -> Option<String> {
        let name = self.policy.surrogate.as_ref()?;
        Some(format!("{name}=\"Surrogate/1.0\""))
    }

    /// The stored response for this request's URL and `Vary`-selected header values, with the
    /// key it is stored under, or why there is none (`Cache-Status`' `fwd`). A URL's index holds
    /// the entry itself when the response has no `Vary` (a hit is one store read), else the
    /// `Vary` names that select a variant stored under a key of its own.
    fn stored_variant(&self, fields: &Fields, url: &str) -> Result<(String, Entry), &'static str> {
        let key = index_key(url);
        let bytes = kv::get(&key).ok_or("uri-miss")?;
        let (key, bytes) = if Entry::is_entry(&bytes) {
            (key, bytes)
        } else {
            let names = String::from_utf8(bytes).map_err(|_| "uri-miss")?;
            let key = variant_key(url, &names, fields);
            let bytes = kv::get(&key).ok_or("vary-miss")?;
            (key, bytes)
        };
        let entry = Entry::decode(&bytes)
            .filter(|e| e.url == url)
            .ok_or("uri-miss")?;
        if self.purged(&entry) {
            return Err("uri-miss");
        }
        Ok((key, entry))
    }

    /// Whether a purge by prefix or tag covers the entry. Such purges are only possible with
    /// `purge_from`; without it their list is not read.
    fn purged(&self, entry: &Entry) -> bool {
        !self.purge_from.is_empty()
            && kv::get(purges::KEY).is_some_and(|list| Purges::decode(&list).cover(entry))
    }

    /// Whether a response stored for a request with `Authorization` may be reused (RFC 9111
    /// section 3.5).
    fn authorized_reuse(&self, cc: &Directives) -> bool {
        self.store_authorized || cc.has("public") || cc.has("must-revalidate") || cc.has("s-maxage")
    }

    /// Puts the stored validators on the request (keeping the client's own conditionals aside, to
    /// answer them from the refreshed entry).
    fn add_validators(&self, req: &mut Request, fields: &Fields, stored: &Entry) {
        let inm: Vec<_> = fields
            .all("if-none-match")
            .map(String::from_utf8_lossy)
            .collect();
        if !inm.is_empty() {
            req.set_context(CLIENT_INM, &inm.join(", "));
        }
        if let Some(ims) = fields.first("if-modified-since") {
            req.set_context(CLIENT_IMS, &String::from_utf8_lossy(ims));
        }
        for name in [
            "if-none-match",
            "if-modified-since",
            "if-match",
            "if-unmodified-since",
            "if-range",
        ] {
            if fields.first(name).is_some() {
                req.remove_header(name);
            }
        }
        if let Some(etag) = stored.header("etag") {
            let _ = req.set_header("if-none-match", etag);
        }
        if let Some(modified) = stored.header("last-modified") {
            let _ = req.set_header("if-modified-since", modified);
        }
    }

    /// Answers from a stored response: `304` to a client that has it, a byte range, or the whole.
    fn serve(
        &self,
        req: &mut Request,
        fields: &Fields,
        stored: Entry,
        f: Freshness,
        outcome: Outcome,
    ) -> Action {
        metrics::add(metric_name(outcome), 1);
        if req.context(WAITED).is_some() {
            // Back from waiting for another request's miss, with a miss's state set before the
            // wait: this response is not one to store.
            req.set_context(STATE, "served");
        }
        let inm = fields.all_owned("if-none-match");
        let ims = fields.first("if-modified-since");
        let mut response = if conditional::not_modified(&inm, ims, &stored) {
            let mut headers = stored.headers;
            headers.retain(|(name, _)| conditional::NOT_MODIFIED_FIELDS.contains(&name.as_str()));
            LocalResponse {
                status: 304,
                headers,
                body: Vec::new(),
            }
        } else {
            self.full_or_range(req, fields, stored)
        };
        response = self.with_age_and_status(response, outcome, f);
        if self.status_headers {
            response = response.header("x-cache", outcome.x_cache());
        }
        Action::Respond(response)
    }

    /// The fields a response from the store gets each time it is used: `Age` and (with status
    /// headers) `Cache-Status`.
    fn with_age_and_status(
        &self,
        response: LocalResponse,
        outcome: Outcome,
        f: Freshness,
    ) -> LocalResponse {
        let response = response.header("age", (f.age_ms / 1000).to_string());
        if self.status_headers {
            response.header("cache-status", cache_status(outcome, None, Some(f)))
        } else {
            response
        }
    }

    /// A plain hit (nothing for the plugin to judge on the request): answered as
    /// [`Cache::serve`] would, and the same answer left with the host for the requests after it
    /// (with the same values of the fields the response's `Vary` names), which then never enter
    /// the plugin while the entry stays fresh and unchanged.
    fn serve_and_offer(
        &self,
        req: &mut Request,
        url: &str,
        key: String,
        stored: Entry,
        f: Freshness,
    ) -> Action {
        metrics::add(metric_name(Outcome::Hit), 1);
        let vary: Vec<String> = vary_names(&stored)
            .unwrap_or_default()
            .split('\n')
            .filter(|name| !name.is_empty())
            .map(str::to_string)
            .collect();
        let initial_age_ms = freshness::age_ms(&stored, stored.response_time);
        let response_time_ms = stored.response_time;
        let mut headers = stored.headers;
        headers.retain(|(name, _)| name != "content-length");
        let mut response = LocalResponse {
            status: stored.status,
            headers,
            body: stored.body,
        };
        if self.status_headers {
            response = response.header("x-cache", Outcome::Hit.x_cache());
        }
        // The URL's index (the entry itself, or the `Vary` names that led to it) and the variant.
        let mut depends_on = vec![index_key(url)];
        if key != depends_on[0] {
            depends_on.push(key);
        }
        if !self.purge_from.is_empty() {
            depends_on.push(purges::KEY.to_string());
        }
        let answer = Answer {
            response,
            response_time_ms,
            initial_age_ms,
            lifetime_ms: f.lifetime_ms,
            consult_if_present: CONSULT.iter().map(|name| name.to_string()).collect(),
            vary,
            depends_on,
            cache_status: self
                .status_headers
                .then(|| cache_status(Outcome::Hit, None, None)),
            metric: Some(metric_name(Outcome::Hit).to_string()),
        };
        req.offer_answer(&answer);
        Action::Respond(self.with_age_and_status(answer.response, Outcome::Hit, f))
    }

    /// The stored response, or the byte range the client asked for. The entry's fields and body
    /// move into the response: a hit copies neither again.
    fn full_or_range(&self, req: &Request, fields: &Fields, stored: Entry) -> LocalResponse {
        let len = stored.body.len() as u64;
        let range = match (fields.first("range"), req.method()) {
            (Some(range), "GET") if stored.status == 200 => {
                let allowed = fields
                    .first("if-range")
                    .is_none_or(|v| conditional::if_range_holds(v, &stored));
                if allowed {
                    conditional::byte_range(range, len)
                } else {
                    None
                }
            }
            _ => None,
        };
        let mut headers = stored.headers;
        headers.retain(|(name, _)| name != "content-length");
        match range {
            Some(Ok((first, last))) => LocalResponse {
                status: 206,
                headers,
                body: stored.body[first as usize..=last as usize].to_vec(),
            }
            .header("content-range", format!("bytes {first}-{last}/{len}")),
            Some(Err(())) => LocalResponse::new(416)
                .header("content-range", format!("bytes */{len}"))
                .text("416 Range Not Satisfiable\n"),
            None => LocalResponse {
                status: stored.status,
                headers,
                body: stored.body,
            },
        }
    }

    fn gateway_timeout(&self) -> Action {
        let mut r = LocalResponse::new(504)
            .text("504 Gateway Timeout: not in the cache (only-if-cached)\n");
        if self.status_headers {
            r = r.header("cache-status", "gatehouse; fwd=miss; detail=only-if-cached");
        }
        Action::Respond(r)
    }

    /// The target answered a request this cache sent on: refresh, store, or fall back to stale.
    fn fetched(&self, req: &mut Request, resp: &mut Response) {
        let now = clock::now_ms();
        let status = resp.status();
        let key = req.context(KEY);
        let stored = key
            .as_deref()
            .and_then(kv::get)
            .and_then(|b| Entry::decode(&b));
        if req.context(LOCKED).is_some()
            && let Some(key) = &key
        {
            kv::delete(&lock_key(key));
        }
        let fwd = req.context(FWD).unwrap_or_else(|| "miss".into());
        if let (Some(key), Some(stored)) = (&key, &stored) {
            if status == 304 {
                self.refresh(req, resp, key, stored.clone(), now);
                return;
            }
            if status >= 500
                && self.stale_on_error(req, stored, status, now)
                && !self.purged(stored)
            {
                let f = freshness::freshness(stored, &self.policy, now);
                self.replace_response(req, resp, stored, f, Outcome::StaleOnError);
                return;
            }
        }
        let stored_now = req.method() == "GET" && self.store(req, resp, now);
        metrics::add(if stored_now { "stored" } else { "not-stored" }, 1);
        if req.context(FILLING).is_some()
            && let Some(url) = req.context(URL)
        {
            if !stored_now {
                kv::set(&pass_key(&url), b"1", Some(PASS_FOR));
            }
            kv::delete(&fill_key(&url));
            waits::notify(&fill_key(&url));
        }
        if self.status_headers {
            let detail = format!(
                "{}{}",
                if stored_now { "; stored" } else { "" },
                if fwd == "stale" {
                    format!("; fwd-status={status}")
                } else {
                    String::new()
                }
            );
            let _ = resp.set_header("cache-status", format!("gatehouse; fwd={fwd}{detail}"));
            let word = if fwd == "stale" { "EXPIRED" } else { "MISS" };
            let word = if fwd == "bypass" { "BYPASS" } else { word };
            let _ = resp.set_header("x-cache", word);
        }
    }

    /// Whether a stale entry may answer for a failed target: `stale-if-error` (RFC 5861), or a
    /// target the host could not reach or that timed out (502, 504: the cache is disconnected,
    /// RFC 9111 section 4.2.4; nginx's `proxy_cache_use_stale error timeout`).
    fn stale_on_error(&self, req: &Request, stored: &Entry, status: u16, now: u64) -> bool {
        let resp_cc = freshness::cache_control(stored);
        if freshness::must_revalidate(&resp_cc) {
            return false;
        }
        if self.stale_if_unreachable && matches!(status, 502 | 504) {
            return true;
        }
        let req_cc = Directives::parse(req.header_all("cache-control").iter().map(Vec::as_slice));
        let window = freshness::valid_seconds(&req_cc, "stale-if-error")
            .or_else(|| freshness::valid_seconds(&resp_cc, "stale-if-error"));
        let f = freshness::freshness(stored, &self.policy, now);
        window.is_some_and(|w| f.staleness_ms() <= w.saturating_mul(1000))
    }

    /// A `304` from the target: the stored response, with the `304`'s header fields, is fresh
    /// again; the client gets it (or its own `304`).
    fn refresh(&self, req: &mut Request, resp: &mut Response, key: &str, stored: Entry, now: u64) {
        let fresh = resp.headers();
        let mut headers: Vec<(String, Vec<u8>)> = stored
            .headers
            .into_iter()
            .filter(|(name, _)| {
                NOT_UPDATED.contains(&name.as_str()) || !fresh.iter().any(|(n, _)| n == name)
            })
            .collect();
        for (name, value) in &fresh {
            if !NOT_UPDATED.contains(&name.as_str()) && !NOT_STORED.contains(&name.as_str()) {
                headers.push((name.clone(), value.clone()));
            }
        }
        let sent = req
            .context(SENT_AT)
            .and_then(|t| t.parse().ok())
            .unwrap_or(now);
        let refreshed = Entry {
            headers,
            age_value: freshness::age_value(&resp.header_all("age")),
            request_time: sent,
            response_time: now,
            ..stored
        };
        let ttl = self.store_ttl(&refreshed, now);
        kv::set(key, &refreshed.encode(), Some(ttl));
        metrics::add("revalidated", 1);
        let f = freshness::freshness(&refreshed, &self.policy, now);
        self.replace_response(req, resp, &refreshed, f, Outcome::Revalidated);
    }

    /// Turns the response on its way into one made from `stored`, answering the client's own
    /// conditionals (kept aside when the cache revalidated).
    fn replace_response(
        &self,
        req: &Request,
        resp: &mut Response,
        stored: &Entry,
        f: Freshness,
        outcome: Outcome,
    ) {
        let inm: Vec<Vec<u8>> = req
            .context(CLIENT_INM)
            .map(|v| vec![v.into_bytes()])
            .unwrap_or_default();
        let ims = req.context(CLIENT_IMS).map(String::into_bytes);
        let not_modified = conditional::not_modified(&inm, ims.as_deref(), stored);
        for (name, _) in resp.headers() {
            resp.remove_header(&name);
        }
        let _ = resp.set_status(if not_modified { 304 } else { stored.status });
        for (name, value) in &stored.headers {
            if name == "content-length" {
                continue;
            }
            if not_modified && !conditional::NOT_MODIFIED_FIELDS.contains(&name.as_str()) {
                continue;
            }
            let _ = resp.append_header(name, value);
        }
        let _ = resp.set_header("age", (f.age_ms / 1000).to_string());
        if self.status_headers {
            let _ = resp.set_header("cache-status", cache_status(outcome, Some(304), Some(f)));
            let _ = resp.set_header("x-cache", outcome.x_cache());
        }
        let _ = resp.set_body(if not_modified {
            &[][..]
        } else {
            &stored.body[..]
        });
    }

    /// Stores the response (to a GET, or to a POST that says it is the URL's representation) if
    /// it may be; true if it was.
    fn store(&self, req: &Request, resp: &Response, now: u64) -> bool {
        if req.context(NO_STORE).is_some() {
            return false;
        }
        let status = resp.status();
        if status < 200 || status == 206 || status == 304 || status > 999 {
            return false;
        }
        let headers: Vec<(String, Vec<u8>)> = resp
            .headers()
            .into_iter()
            .filter(|(name, _)| !NOT_STORED.contains(&name.as_str()))
            .collect();
        let url = match req.context(URL) {
            Some(url) => url,
            None => return false,
        };
        let candidate = Entry {
            url,
            status,
            headers,
            age_value: freshness::age_value(&resp.header_all("age")),
            request_time: req
                .context(SENT_AT)
                .and_then(|t| t.parse().ok())
                .unwrap_or(now),
            response_time: now,
            body: Vec::new(),
        };
        if !self.storable(req, &candidate) {
            return false;
        }
        let Ok(body) = resp.body() else {
            // Larger than a plugin may buffer: it streams on, unstored.
            return false;
        };
        if body.len() > self.max_entry_size {
            return false;
        }
        let Some(names) = vary_names(&candidate) else {
            return false;
        };
        let entry = Entry { body, ..candidate };
        let ttl = self.store_ttl(&entry, now);
        let index = index_key(&entry.url);
        if names.is_empty() {
            return kv::set(&index, &entry.encode(), Some(ttl));
        }
        let key = variant_key(&entry.url, &names, &Fields::of(req));
        if !kv::set(&key, &entry.encode(), Some(ttl)) {
            return false;
        }
        kv::set(&index, names.as_bytes(), Some(ttl));
        true
    }

    /// Whether a response may be stored (RFC 9111 section 3, for a shared cache).
    fn storable(&self, req: &Request, entry: &Entry) -> bool {
        let cc = freshness::cache_control(entry);
        let surrogate = freshness::surrogate_control(entry, &self.policy);
        if surrogate.has("no-store") {
            return false;
        }
        // A surrogate's own lifetime overrides what Cache-Control says to other caches.
        let surrogate_fresh = surrogate.has("max-age");
        let understood = freshness::UNDERSTOOD_STATUSES.contains(&entry.status);
        if cc.has("must-understand") {
            if !understood {
                return false;
            }
        } else if cc.has("no-store") && !surrogate_fresh {
            return false;
        }
        if cc.has("private") && !surrogate_fresh {
            return false;
        }
        if req.header("authorization").is_some() && !self.authorized_reuse(&cc) {
            return false;
        }
        if !self.store_set_cookie && entry.header("set-cookie").is_some() {
            return false;
        }
        let allowed = freshness::has_explicit_lifetime(entry, &self.policy)
            || cc.has("public")
            || freshness::HEURISTIC_STATUSES.contains(&entry.status);
        if !allowed {
            return false;
        }
        // Worth keeping only if it can be used fresh or revalidated.
        freshness::lifetime(entry, &self.policy) > 0
            || entry.header("etag").is_some()
            || entry.header("last-modified").is_some()
    }

    /// How long the store keeps an entry: its freshness, then `keep_stale` for revalidation.
    fn store_ttl(&self, entry: &Entry, now: u64) -> Duration {
        let f = freshness::freshness(entry, &self.policy, now);
        let left = f.lifetime_ms.saturating_sub(f.age_ms);
        let cc = freshness::cache_control(entry);
        let windows = ["stale-while-revalidate", "stale-if-error"]
            .iter()
            .filter_map(|d| freshness::valid_seconds(&cc, d))
            .max()
            .unwrap_or(0)
            .saturating_mul(1000);
        Duration::from_millis(
            left.saturating_add(windows.max(self.keep_stale_ms))
                .max(1000),
        )
    }

    /// After an unsafe method: a successful answer invalidates the URL, and the `Location` and
    /// `Content-Location` URLs on the same host.
    fn invalidate_after(&self, req: &mut Request, resp: &Response) {
        let status = resp.status();
        if !(200..400).contains(&status) {
            return;
        }
        let Some(url) = req.context(URL) else {
            return;
        };
        kv::delete(&index_key(&url));
        for field in ["location", "content-location"] {
            if let Some(target) = resp.header(field)
                && let Some(other) = self.same_host_url(req, &target)
            {
                kv::delete(&index_key(&other));
            }
        }
        metrics::add("invalidated", 1);
        // A POST response that says it is the URL's current representation (Content-Location
        // naming the URL itself) with explicit freshness answers later GETs (RFC 9110 section
        // 9.3.3).
        let representation = req.method() == "POST"
            && matches!(status, 200 | 203)
            && resp
                .header("content-location")
                .and_then(|cl| self.same_host_url(req, &cl))
                .is_some_and(|cl| cl == url);
        if representation {
            req.set_context(SENT_AT, &clock::now_ms().to_string());
            let explicit =
                resp.header("cache-control").is_some() || resp.header("expires").is_some();
            if explicit {
                self.store(req, resp, clock::now_ms());
            }
        }
    }

    /// The key URL of a `Location`-style reference, if it is on the request's host.
    fn same_host_url(&self, req: &Request, reference: &str) -> Option<String> {
        let host = req.host_name().unwrap_or("");
        let (scheme, rest) = match reference.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None if reference.starts_with('/') => {
                return Some(self.url_of(req.scheme(), host, reference));
            }
            None => return None,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let name = if authority.starts_with('[') {
            authority
                .find(']')
                .map_or(authority, |end| &authority[..=end])
        } else {
            authority
                .rsplit_once(':')
                .map_or(authority, |(name, _)| name)
        };
        if !name.eq_ignore_ascii_case(host) {
            return None;
        }
        Some(self.url_of(&scheme, host, path))
    }

    fn url_of(&self, scheme: &str, host: &str, path_and_query: &str) -> String {
        let path_and_query = path_and_query.split('#').next().unwrap_or("");
        let kept = if self.ignore_query {
            path_and_query.split('?').next().unwrap_or("")
        } else {
            path_and_query
        };
        format!("{scheme}://{host}{kept}")
    }

    /// `PURGE` from an allowed client: the URL is dropped from the cache; with a path ending in
    /// `*`, every URL of the host below that prefix; with `Surrogate-Key`, every response that
    /// named one of its keys.
    fn purge(&self, req: &mut Request) -> Action {
        let allowed = req
            .client_addr()
            .is_some_and(|ip| self.purge_from.iter().any(|net| net.contains(&ip)));
        if !allowed {
            return LocalResponse::new(403)
                .text("403 Forbidden: purging is not allowed from this address\n")
                .into();
        }
        let tags: Vec<String> = req
            .header_all("surrogate-key")
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v)
                    .split_ascii_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        let prefix = req
            .path()
            .strip_suffix('*')
            .filter(|p| p.starts_with('/'))
            .map(|p| format!("{}{p}", req.host_name().unwrap_or("")));
        let rules: Vec<Rule> = prefix
            .map(Rule::Prefix)
            .into_iter()
            .chain(tags.into_iter().map(Rule::Tag))
            .collect();
        if rules.is_empty() {
            let url = self.url(req);
            let found = kv::delete(&index_key(&url));
            metrics::add("purged", u64::from(found));
            let (status, text) = if found {
                (200, "purged\n")
            } else {
                (404, "not in the cache\n")
            };
            return LocalResponse::new(status).text(text).into();
        }
        let text = rules
            .iter()
            .map(|r| match r {
                Rule::Prefix(p) => format!("purged every URL below {p}\n"),
                Rule::Tag(t) => format!("purged every response tagged {t}\n"),
                Rule::All => "purged everything\n".to_string(),
            })
            .collect::<String>();
        if !add_purges(rules) {
            return LocalResponse::new(503)
                .text("503 Service Unavailable: the purge list kept changing; try again\n")
                .into();
        }
        metrics::add("purged", 1);
        LocalResponse::new(200).text(text).into()
    }
}

/// Adds purges to the list in the store (a read-modify-write that retries if another request
/// changed it meanwhile); false if it kept changing.
fn add_purges(rules: Vec<Rule>) -> bool {
    let now = clock::now_ms();
    for _ in 0..8 {
        let current = kv::get(purges::KEY);
        let mut list = current.as_deref().map(Purges::decode).unwrap_or_default();
        for rule in rules.iter().cloned() {
            list.add(rule, now);
        }
        if kv::compare_and_swap(purges::KEY, current.as_deref(), &list.encode(), None) {
            return true;
        }
    }
    false
}

fn metric_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Hit => "hit",
        Outcome::StaleHit | Outcome::StaleOnError => "stale",
        Outcome::Updating => "updating",
        Outcome::Revalidated => "revalidated",
    }
}

/// `Cache-Status` (RFC 9211) for a response from the store.
fn cache_status(outcome: Outcome, fwd_status: Option<u16>, f: Option<Freshness>) -> String {
    let ttl = f.map(|f| {
        if f.is_fresh() {
            format!("; ttl={}", f.ttl_s())
        } else {
            format!("; ttl=-{}", f.staleness_ms() / 1000)
        }
    });
    let ttl = ttl.unwrap_or_default();
    match outcome {
        Outcome::Hit => format!("gatehouse; hit{ttl}"),
        Outcome::StaleHit => format!("gatehouse; hit{ttl}; detail=max-stale"),
        Outcome::Updating => format!("gatehouse; hit{ttl}; detail=stale-while-revalidate"),
        Outcome::StaleOnError => format!("gatehouse; hit{ttl}; detail=stale-if-error"),
        Outcome::Revalidated => format!(
            "gatehouse; fwd=stale; fwd-status={}{ttl}",
            fwd_status.unwrap_or(304)
        ),
    }
}

fn index_key(url: &str) -> String {
    format!("idx:{url}")
}

fn lock_key(variant: &str) -> String {
    format!("upd:{variant}")
}

fn fill_key(url: &str) -> String {
    format!("fill:{url}")
}

fn pass_key(url: &str) -> String {
    format!("pass:{url}")
}

/// The field names a response's `Vary` lists, lower case, sorted and joined by `\n`; `None` for
/// `Vary: *` (never reusable, so not stored).
fn vary_names(entry: &Entry) -> Option<String> {
    let mut names = Vec::new();
    for line in entry.header_all("vary") {
        for name in String::from_utf8_lossy(line).split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name == "*" {
                return None;
            }
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort();
    Some(names.join("\n"))
}

/// The key of the variant of `url` that `req`'s values of the `Vary` fields select. Values are
/// normalised: the field's lines combined, list members trimmed; an absent field differs from
/// an empty one.
fn variant_key(url: &str, names: &str, fields: &Fields) -> String {
    let mut key = format!("ent:{url}");
    for name in names.split('\n').filter(|n| !n.is_empty()) {
        key.push('\n');
        key.push_str(name);
        let mut values = fields.all(name).peekable();
        if values.peek().is_none() {
            key.push('\u{1}');
            continue;
        }
        key.push('=');
        let mut members: Vec<String> = values
            .flat_map(|line| {
                String::from_utf8_lossy(line)
                    .split(',')
                    .map(|m| m.split_whitespace().collect::<String>())
                    .collect::<Vec<_>>()
            })
            .collect();
        // Language tags are case-insensitive lists (RFC 9110 section 12.5.4): order and case do
        // not select another variant.
        if name == "accept-language" {
            for member in &mut members {
                member.make_ascii_lowercase();
            }
            members.sort();
        }
        key.push_str(&members.join(","));
    }
    key
}

#[cfg(test)]
mod tests;
