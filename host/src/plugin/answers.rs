//! Answers a plugin leaves with the host (`request.offer-answer`): the cache plugin's hits, given
//! without calling into the plugin. A call into a wasm component, with the host calls a lookup
//! makes, costs far more than a static file; here a hit is a map lookup, a version check of the
//! store keys it was made from, and a copy of prebuilt headers.
//!
//! The plugin stays the judge: it offers an answer only where it would answer the same itself,
//! names the request fields that need its judgement and those that select the answer (`Vary`),
//! and the store keys its answer was read from. The host answers while the store holds those very writes (so a purge,
//! an invalidation or a new entry ends the answer at once) and the response is fresh by the
//! plugin's own numbers.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::header::AGE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use lru::LruCache;
use prometheus_client::metrics::counter::Counter;

use super::exchange::Exchange;
use crate::body::Body;
use crate::store::SharedStore;

/// Bookkeeping bytes charged per answer on top of its key, fields and body.
const ANSWER_OVERHEAD: usize = 256;

/// Answers one URL keeps that differ by the request fields their `Vary` names.
pub const MAX_VARIANTS: usize = 8;

/// Field names an answer may list to consult the plugin on, and to vary by (each).
pub const MAX_NAMES: usize = 32;

/// Bytes charged per field name an answer holds, on top of its length.
const NAME_OVERHEAD: usize = 48;

/// One answer, ready to send.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// The fields sent, with `content-length`.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the response arrived (ms since the epoch), its age then and its lifetime (ms).
    pub response_time: u64,
    pub initial_age: u64,
    pub lifetime: u64,
    /// Request fields that send a request to the plugin.
    pub consult: Vec<HeaderName>,
    /// Request fields that select it, and the offering request's values of each.
    pub vary: Vec<(HeaderName, Vec<HeaderValue>)>,
    /// Store keys (scoped) and the versions the answer was made from.
    pub depends: Vec<(String, u64)>,
    /// `Cache-Status` without its `ttl`.
    pub cache_status: Option<String>,
    /// The plugin's metric counting answers.
    pub metric: Option<Counter>,
}

impl Answer {
    fn cost(&self, key: &str) -> usize {
        let fields: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let depends: usize = self.depends.iter().map(|(k, _)| k.len() + 32).sum();
        let consult: usize = self
            .consult
            .iter()
            .map(|n| n.as_str().len() + NAME_OVERHEAD)
            .sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(n, values)| {
                n.as_str().len()
                    + NAME_OVERHEAD
                    + values.iter().map(|v| v.len() + 32).sum::<usize>()
            })
            .sum();
        let status = self.cache_status.as_ref().map_or(0, String::len);
        key.len() + fields + depends + consult + vary + status + self.body.len() + ANSWER_OVERHEAD
    }

    /// Whether it could be kept at all within `budget` bytes.
    pub fn fits(&self, key: &str, budget: usize) -> bool {
        self.cost(key) <= budget
    }

    /// Whether the request's values of the `Vary` fields are the offering request's.
    fn selected_by(&self, headers: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, values)| headers.get_all(name).iter().eq(values.iter()))
    }

    /// The response for a request at `now` (ms since the epoch), unless it is no longer fresh.
    fn respond(&self, now: u64) -> Option<Response<Body>> {
        let age = self
            .initial_age
            .saturating_add(now.saturating_sub(self.response_time));
        if age >= self.lifetime {
            return None;
        }
        let mut response = Response::new(Body::full(self.body.clone()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        *headers = self.headers.clone();
        headers.insert(AGE, HeaderValue::from(age / 1000));
        if let Some(status) = &self.cache_status {
            let ttl = (self.lifetime - age) / 1000;
            // Checked when offered: the prefix is a valid value, and digits keep it one.
            if let Ok(value) = HeaderValue::try_from(format!("{status}; ttl={ttl}")) {
                headers.insert(HeaderName::from_static("cache-status"), value);
            }
        }
        if let Some(metric) = &self.metric {
            metric.inc();
        }
        Some(response)
    }
}

/// A plugin's answers, least recently used first out, within a byte budget.
#[derive(Debug)]
pub struct Answers {
    table: Mutex<Table>,
    /// How many there are, read without the lock: a plugin that offers none costs nothing.
    len: AtomicUsize,
    budget: usize,
}

#[derive(Debug)]
struct Table {
    /// Per URL, its answers (several only when they vary by request fields), oldest first.
    map: LruCache<String, Vec<Arc<Answer>>>,
    bytes: usize,
}

impl Table {
    fn cost(key: &str, variants: &[Arc<Answer>]) -> usize {
        variants.iter().map(|a| a.cost(key)).sum()
    }
}

/// Why an offer was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Larger than all the answers may be.
    TooLarge,
}

impl Answers {
    /// Answers within `budget` bytes.
    pub fn new(budget: usize) -> Answers {
        Answers {
            table: Mutex::new(Table {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            len: AtomicUsize::new(0),
            budget,
        }
    }

    /// The bytes all answers may take.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Keeps `answer` for requests with this key (see [`key`]), replacing any before it.
    pub fn offer(&self, key: String, answer: Answer) -> Result<(), Refused> {
        let cost = answer.cost(&key);
        if cost > self.budget {
            return Err(Refused::TooLarge);
        }
        let mut table = lock(&self.table);
        let mut variants = match table.map.pop(&key) {
            Some(old) => {
                table.bytes -= Table::cost(&key, &old);
                old
            }
            None => Vec::new(),
        };
        // One that the new answer replaces: the same selecting values, or other field names.
        variants.retain(|old| {
            let names = old.vary.iter().map(|(n, _)| n);
            names.eq(answer.vary.iter().map(|(n, _)| n))
                && !old.vary.iter().zip(&answer.vary).all(|(a, b)| a.1 == b.1)
        });
        if variants.len() >= MAX_VARIANTS {
            variants.remove(0);
        }
        variants.push(Arc::new(answer));
        let cost = Table::cost(&key, &variants);
        while table.bytes + cost > self.budget {
            match table.map.pop_lru() {
                Some((k, old)) => table.bytes -= Table::cost(&k, &old),
                None => break,
            }
        }
        if cost > self.budget {
            self.len.store(table.map.len(), Ordering::Relaxed);
            return Err(Refused::TooLarge);
        }
        table.bytes += cost;
        table.map.put(key, variants);
        self.len.store(table.map.len(), Ordering::Relaxed);
        Ok(())
    }

    /// The answer to this request at the time `now` reads, if one is kept for it and still
    /// holds. A plugin without answers costs a load: no clock read, no key built.
    pub fn answer(
        &self,
        ex: &Exchange,
        store: &SharedStore,
        now: impl FnOnce() -> u64,
    ) -> Option<Response<Body>> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let key = key(ex)?;
        let headers = &ex.request.headers;
        let answer = lock(&self.table)
            .map
            .get(&key)?
            .iter()
            .find(|a| a.selected_by(headers))
            .cloned()?;
        if answer
            .consult
            .iter()
            .any(|name| ex.request.headers.contains_key(name))
        {
            return None;
        }
        let holds = answer
            .depends
            .iter()
            .all(|(k, version)| store.kv_version(k) == Some(*version));
        let response = holds.then(|| answer.respond(now())).flatten();
        if response.is_none() {
            // Stale, or made from values the store no longer holds: it will never hold again.
            self.forget(&key, &answer);
        }
        response
    }

    fn forget(&self, key: &str, answer: &Arc<Answer>) {
        let mut table = lock(&self.table);
        let Some(variants) = table.map.peek_mut(key) else {
            return;
        };
        // Unless another request has replaced it meanwhile.
        let Some(at) = variants.iter().position(|a| Arc::ptr_eq(a, answer)) else {
            return;
        };
        variants.remove(at);
        let empty = variants.is_empty();
        table.bytes -= answer.cost(key);
        if empty {
            table.map.pop(key);
        }
        self.len.store(table.map.len(), Ordering::Relaxed);
    }
}

/// What an answer is kept under: scheme, host, path and query of a GET or HEAD request.
pub fn key(ex: &Exchange) -> Option<String> {
    if ex.request.method != Method::GET && ex.request.method != Method::HEAD {
        return None;
    }
    let host = ex.host().unwrap_or("");
    let target = ex
        .request
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str());
    let scheme = if ex.tls { "https" } else { "http" };
    let mut key = String::with_capacity(scheme.len() + host.len() + target.len() + 2);
    key.push_str(scheme);
    key.push('\0');
    key.push_str(host);
    key.push('\0');
    key.push_str(target);
    Some(key)
}

/// A poisoned lock means a panic elsewhere while holding it; the table is only ever left whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(method: &str, uri: &str, headers: &[(&str, &str)]) -> Exchange {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "example.com");
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        let (parts, ()) = builder.body(()).expect("a request").into_parts();
        Exchange::new(parts, None, None, false)
    }

    fn answer(store: &SharedStore, body: &str, lifetime: u64) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert("x-cache", HeaderValue::from_static("HIT"));
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Answer {
            status: StatusCode::OK,
            headers,
            body: Bytes::from(body.to_string()),
            response_time: 10_000,
            initial_age: 2_000,
            lifetime,
            consult: vec![HeaderName::from_static("cache-control")],
            vary: Vec::new(),
            depends: vec![("ns\0idx".into(), store.kv_version("ns\0idx").unwrap_or(0))],
            cache_status: Some("gatehouse; hit".into()),
            metric: None,
        }
    }

    fn header<'a>(r: &'a Response<Body>, name: &str) -> &'a str {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[test]
    fn an_answer_holds_while_fresh_and_its_store_key_unchanged() {
        let store = SharedStore::new(1 << 20, 1 << 20);
        store
            .kv_set("ns\0idx".into(), b"entry".to_vec(), None)
            .expect("memory");
        let answers = Answers::new(1 << 20);
        let ex = exchange("GET", "/a?b=1", &[]);
        let key = key(&ex).expect("a GET");
        answers
            .offer(key, answer(&store, "hello", 60_000))
            .expect("fits");

        // 5.5 s after it arrived with an age of 2 s: 7 s old, 53 s to live.
        let r = answers.answer(&ex, &store, || 15_500).expect("an answer");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "age"), "7");
        assert_eq!(header(&r, "cache-status"), "gatehouse; hit; ttl=52");
        assert_eq!(header(&r, "x-cache"), "HIT");
        assert_eq!(header(&r, "content-length"), "5");
        // HEAD shares it; another query, host, scheme or method does not.
        assert!(
            answers
                .answer(&exchange("HEAD", "/a?b=1", &[]), &store, || 15_500)
                .is_some()
        );
        assert!(
            answers
                .answer(&exchange("GET", "/a?b=2", &[]), &store, || 15_500)
                .is_none()
        );
        assert!(
            answers
                .answer(&exchange("GET", "/a", &[]), &store, || 15_500)
                .is_none()
        );
        assert!(
            answers
                .answer(&exchange("POST", "/a?b=1", &[]), &store, || 15_500)
                .is_none()
        );
        let mut tls = exchange("GET", "/a?b=1", &[]);
        tls.tls = true;
        assert!(answers.answer(&tls, &store, || 15_500).is_none());
        // A field the plugin must judge sends the request to it.
        let asks = exchange("GET", "/a?b=1", &[("cache-control", "no-cache")]);
        assert!(answers.answer(&asks, &store, || 15_500).is_none());
        assert!(
            answers.answer(&ex, &store, || 15_500).is_some(),
            "still kept"
        );

        // Stale: gone for good.
        assert!(answers.answer(&ex, &store, || 68_000).is_none());
        assert!(answers.answer(&ex, &store, || 15_500).is_none());
    }

    #[test]
    fn a_new_write_of_a_key_it_was_made_from_ends_it() {
        let store = SharedStore::new(1 << 20, 1 << 20);
        store
            .kv_set("ns\0idx".into(), b"entry".to_vec(), None)
            .expect("memory");
        let answers = Answers::new(1 << 20);
        let ex = exchange("GET", "/", &[]);
        answers
            .offer(key(&ex).expect("a GET"), answer(&store, "x", 60_000))
            .expect("fits");
        assert!(answers.answer(&ex, &store, || 10_000).is_some());
        // The same bytes written again (a revalidation, say) are another write.
        store
            .kv_set("ns\0idx".into(), b"entry".to_vec(), None)
            .expect("memory");
        assert!(answers.answer(&ex, &store, || 10_000).is_none());

        answers
            .offer(key(&ex).expect("a GET"), answer(&store, "x", 60_000))
            .expect("fits");
        assert!(answers.answer(&ex, &store, || 10_000).is_some());
        store.kv_delete("ns\0idx").expect("memory");
        assert!(answers.answer(&ex, &store, || 10_000).is_none(), "purged");
    }

    #[test]
    fn answers_that_vary_are_given_only_to_requests_with_the_same_values() {
        let store = SharedStore::new(1 << 20, 1 << 20);
        let answers = Answers::new(1 << 20);
        let encoding = HeaderName::from_static("accept-encoding");
        let offer = |values: &[&str], body: &str| {
            let mut a = answer(&store, body, 60_000);
            a.vary = vec![(
                encoding.clone(),
                values
                    .iter()
                    .map(|v| HeaderValue::from_str(v).expect("value"))
                    .collect(),
            )];
            let ex = exchange("GET", "/v", &[]);
            answers.offer(key(&ex).expect("a GET"), a).expect("fits");
        };
        offer(&["gzip"], "zipped");
        offer(&[], "plain");
        let body = |headers: &[(&str, &str)]| {
            let r = answers.answer(&exchange("GET", "/v", headers), &store, || 10_000)?;
            Some(header(&r, "content-length").to_string())
        };
        assert_eq!(body(&[("accept-encoding", "gzip")]).as_deref(), Some("6"));
        assert_eq!(
            body(&[]).as_deref(),
            Some("5"),
            "absent is a value of its own"
        );
        assert_eq!(
            body(&[("accept-encoding", "")]),
            None,
            "empty is not absent"
        );
        assert_eq!(body(&[("accept-encoding", "br")]), None);
        // The same values again replace their answer; a ninth set of values drops the oldest.
        offer(&["gzip"], "zipped2");
        assert_eq!(body(&[("accept-encoding", "gzip")]).as_deref(), Some("7"));
        for i in 0..MAX_VARIANTS - 1 {
            offer(&[&format!("x{i}")], "x");
        }
        assert_eq!(body(&[]), None, "the oldest went");
        assert_eq!(body(&[("accept-encoding", "gzip")]).as_deref(), Some("7"));
        // An answer that does not vary replaces them all.
        let ex = exchange("GET", "/v", &[]);
        let plain = answer(&store, "p", 60_000);
        answers
            .offer(key(&ex).expect("a GET"), plain)
            .expect("fits");
        assert_eq!(body(&[("accept-encoding", "gzip")]).as_deref(), Some("1"));
        let table = lock(&answers.table);
        assert_eq!(
            table.map.peek("http\0example.com\0/v").map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn answers_stay_within_their_budget() {
        let store = SharedStore::new(1 << 20, 1 << 20);
        let one = answer(&store, &"x".repeat(1000), 60_000).cost("http\0example.com\0/0");
        let answers = Answers::new(one * 3 + one / 2);
        for i in 0..10 {
            let ex = exchange("GET", &format!("/{i}"), &[]);
            let body = "x".repeat(1000);
            answers
                .offer(key(&ex).expect("a GET"), answer(&store, &body, 60_000))
                .expect("fits");
        }
        let table = lock(&answers.table);
        assert_eq!(table.map.len(), 3);
        assert!(table.bytes <= answers.budget);
        assert!(
            table.map.contains("http\0example.com\0/9"),
            "the newest kept"
        );
        drop(table);
        let huge = answer(&store, &"x".repeat(one * 4), 60_000);
        assert_eq!(
            answers.offer("http\0example.com\0/h".into(), huge),
            Err(Refused::TooLarge)
        );
    }
}
