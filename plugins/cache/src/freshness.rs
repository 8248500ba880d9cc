//! How old a stored response is and how long it stays fresh (RFC 9111 sections 4.2.1-4.2.3), for a
//! shared cache.

use crate::directives::{Directives, MAX_DELTA_SECONDS};
use crate::entry::Entry;

/// What freshness needs of the cache's settings.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The fraction of `Date - Last-Modified` used as a heuristic lifetime.
    pub heuristic_fraction: f64,
    /// The longest heuristic lifetime, in seconds.
    pub heuristic_max: u64,
    /// A lifetime for responses that carry no freshness information at all (nginx's
    /// `proxy_cache_valid`), in seconds.
    pub default_ttl: Option<u64>,
    /// This cache's name for `Surrogate-Control` targeting; `None` ignores that field.
    pub surrogate: Option<String>,
}

/// Status codes heuristically cacheable by default (RFC 9110 section 15.1).
pub const HEURISTIC_STATUSES: &[u16] =
    &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Status codes whose caching rules this cache implements (for `must-understand`).
pub const UNDERSTOOD_STATUSES: &[u16] = &[
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 451, 501,
];

/// A response's freshness at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// The freshness lifetime, in milliseconds.
    pub lifetime_ms: u64,
    /// The current age, in milliseconds.
    pub age_ms: u64,
}

impl Freshness {
    /// Whether the response is fresh.
    pub fn is_fresh(&self) -> bool {
        self.lifetime_ms > self.age_ms
    }

    /// How long past its lifetime it is, in milliseconds (0 while fresh).
    pub fn staleness_ms(&self) -> u64 {
        self.age_ms.saturating_sub(self.lifetime_ms)
    }

    /// Seconds of freshness left.
    pub fn ttl_s(&self) -> u64 {
        self.lifetime_ms.saturating_sub(self.age_ms) / 1000
    }
}

/// The response's `Cache-Control`.
pub fn cache_control(entry: &Entry) -> Directives {
    Directives::parse(entry.header_all("cache-control"))
}

/// The `Surrogate-Control` directives meant for this cache (untargeted, or targeted at it).
pub fn surrogate_control(entry: &Entry, policy: &Policy) -> Directives {
    let Some(me) = &policy.surrogate else {
        return Directives::default();
    };
    let all = Directives::parse(entry.header_all("surrogate-control"));
    let mine = all
        .iter()
        .filter(|d| d.target.as_ref().is_none_or(|t| t == me))
        .cloned()
        .collect::<Vec<_>>();
    Directives::from_items(mine)
}

/// A single valid HTTP-date header value, in seconds since the epoch; `None` if absent, `Some(None)`
/// if invalid or given more than once.
pub fn date_header(entry: &Entry, name: &str) -> Option<Option<u64>> {
    let mut values = entry.header_all(name);
    let first = values.next()?;
    if values.next().is_some() {
        return Some(None);
    }
    Some(parse_date(first))
}

/// An HTTP-date (IMF-fixdate, RFC 850 or asctime) in seconds since the epoch.
pub fn parse_date(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let time = httpdate::parse_http_date(text.trim()).ok()?;
    time.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// The `Age` a response arrived with: one non-negative integer, else `None` (the response is then
/// treated as infinitely old); 0 when absent.
pub fn age_value(values: &[Vec<u8>]) -> Option<u64> {
    match values {
        [] => Some(0),
        [one] => {
            let text = std::str::from_utf8(one).ok()?.trim();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(text.parse().unwrap_or(MAX_DELTA_SECONDS))
        }
        _ => None,
    }
}

/// The `Date` of a stored response, or the time it arrived.
pub fn date_value(entry: &Entry) -> u64 {
    match date_header(entry, "date") {
        Some(Some(date)) => date,
        _ => entry.response_time / 1000,
    }
}

/// The freshness lifetime in seconds (RFC 9111 section 4.2.1, and `Surrogate-Control` first).
pub fn lifetime(entry: &Entry, policy: &Policy) -> u64 {
    let surrogate = surrogate_control(entry, policy);
    if let Some(seconds) = surrogate.seconds("max-age") {
        return seconds.unwrap_or(0);
    }
    let cc = cache_control(entry);
    if let Some(seconds) = cc.seconds("s-maxage") {
        return seconds.unwrap_or(0);
    }
    if let Some(seconds) = cc.seconds("max-age") {
        return seconds.unwrap_or(0);
    }
    if let Some(expires) = date_header(entry, "expires") {
        return expires.map_or(0, |e| e.saturating_sub(date_value(entry)));
    }
    let heuristic = HEURISTIC_STATUSES.contains(&entry.status) || cc.has("public");
    if heuristic {
        if let Some(Some(modified)) = date_header(entry, "last-modified") {
            let since = date_value(entry).saturating_sub(modified) as f64;
            return ((since * policy.heuristic_fraction) as u64).min(policy.heuristic_max);
        }
        if let Some(ttl) = policy.default_ttl {
            return ttl;
        }
    }
    0
}

/// Whether the response gives explicit freshness (so it may be stored whatever its status).
pub fn has_explicit_lifetime(entry: &Entry, policy: &Policy) -> bool {
    let cc = cache_control(entry);
    surrogate_control(entry, policy).has("max-age")
        || cc.has("s-maxage")
        || cc.has("max-age")
        || entry.header("expires").is_some()
}

/// The current age in milliseconds at `now_ms` (RFC 9111 section 4.2.3).
pub fn age_ms(entry: &Entry, now_ms: u64) -> u64 {
    let Some(age_value) = entry.age_value else {
        return u64::MAX / 2;
    };
    let apparent = entry
        .response_time
        .saturating_sub(date_value(entry).saturating_mul(1000));
    let delay = entry.response_time.saturating_sub(entry.request_time);
    let corrected = age_value.saturating_mul(1000).saturating_add(delay);
    let initial = apparent.max(corrected);
    initial.saturating_add(now_ms.saturating_sub(entry.response_time))
}

/// Freshness of `entry` at `now_ms`.
pub fn freshness(entry: &Entry, policy: &Policy, now_ms: u64) -> Freshness {
    Freshness {
        lifetime_ms: lifetime(entry, policy).saturating_mul(1000),
        age_ms: age_ms(entry, now_ms),
    }
}

/// Whether a stale copy may never be served without revalidation (RFC 9111 sections 4.2.4,
/// 5.2.2.2, 5.2.2.8, 5.2.2.10).
pub fn must_revalidate(cc: &Directives) -> bool {
    cc.has("must-revalidate")
        || cc.has("proxy-revalidate")
        || cc.has("s-maxage")
        || cc.has("no-cache")
}

/// A delta-seconds directive's seconds when valid.
pub fn valid_seconds(cc: &Directives, name: &str) -> Option<u64> {
    cc.seconds(name).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            heuristic_fraction: 0.1,
            heuristic_max: 86_400,
            default_ttl: None,
            surrogate: Some("gatehouse".into()),
        }
    }

    fn entry(headers: &[(&str, &str)], status: u16) -> Entry {
        Entry {
            url: "http://x/".into(),
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            age_value: Some(0),
            request_time: 1_000_000_000_000,
            response_time: 1_000_000_000_000,
            body: Vec::new(),
        }
    }

    #[test]
    fn lifetimes_in_order_of_precedence() {
        let p = policy();
        assert_eq!(
            lifetime(&entry(&[("cache-control", "max-age=60")], 200), &p),
            60
        );
        assert_eq!(
            lifetime(
                &entry(&[("cache-control", "max-age=60, s-maxage=5")], 200),
                &p
            ),
            5
        );
        assert_eq!(
            lifetime(
                &entry(
                    &[
                        ("cache-control", "max-age=1"),
                        ("surrogate-control", "max-age=100;gatehouse")
                    ],
                    200
                ),
                &p
            ),
            100
        );
        assert_eq!(
            lifetime(
                &entry(&[("surrogate-control", "max-age=100;other")], 200),
                &p
            ),
            0
        );
        let date = "Sun, 09 Sep 2001 01:46:40 GMT"; // 1_000_000_000
        assert_eq!(
            lifetime(
                &entry(
                    &[("date", date), ("expires", "Sun, 09 Sep 2001 01:47:40 GMT")],
                    200
                ),
                &p
            ),
            60
        );
        assert_eq!(lifetime(&entry(&[("expires", "0")], 200), &p), 0);
        // Heuristic: a tenth of the time since the last modification, for cacheable statuses.
        let lm = "Sun, 09 Sep 2001 01:30:00 GMT"; // 1000 s before
        assert_eq!(
            lifetime(&entry(&[("date", date), ("last-modified", lm)], 200), &p),
            100
        );
        assert_eq!(
            lifetime(&entry(&[("date", date), ("last-modified", lm)], 403), &p),
            0
        );
    }

    #[test]
    fn ages_count_the_received_age_and_the_time_since() {
        let mut e = entry(&[], 200);
        e.age_value = Some(10);
        assert_eq!(age_ms(&e, e.response_time + 2_000), 12_000);
        e.age_value = None;
        assert!(age_ms(&e, e.response_time) > 1 << 40);
        assert_eq!(age_value(&[b"5".to_vec()]), Some(5));
        assert_eq!(age_value(&[b"5".to_vec(), b"5".to_vec()]), None);
        assert_eq!(age_value(&[b"-1".to_vec()]), None);
        assert_eq!(age_value(&[b"1.5".to_vec()]), None);
        assert_eq!(age_value(&[]), Some(0));
    }
}
