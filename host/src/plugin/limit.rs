//! A plugin's rate rule (`host.enforce-rate-rule`), applied by the host in the plugin's place: the
//! key read from the request, one take from the store, then the `RateLimit` fields or the refusal,
//! with no call into the plugin (which costs more than the whole limit). The rule's wording (key,
//! fields, refusal) is `gatehouse-rate`'s, which the SDK's test harness applies the same way.

use bytes::Bytes;
use gatehouse_rate::{Rate, RequestView, Rule, Verdict};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;

use super::exchange::Exchange;
use super::host_impl::PluginInfo;
use crate::body::Body;
use crate::config::StoreErrors;
use crate::error::HttpError;
use crate::sandbox::MAX_PLUGIN_METRICS;

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A checked rule, with what its responses need made once.
#[derive(Debug)]
pub(super) struct RateLimit {
    rule: Rule,
    status: StatusCode,
    /// `RateLimit-Policy`, when the rule sets the fields.
    policy: Option<HeaderValue>,
    /// The plugin counter a refusal counts into.
    limited: Option<Counter>,
}

/// What the rule decided for a request.
pub(super) enum Limit {
    /// It goes on, with these fields for its response.
    Pass(HeaderMap),
    /// It is refused with this response.
    Refuse(Response<Body>),
}

impl RateLimit {
    /// The rule `init` handed over (checked then) for the plugin `info` describes.
    pub(super) fn new(rule: Rule, info: &PluginInfo) -> Result<RateLimit, String> {
        let status = StatusCode::from_u16(rule.status)
            .map_err(|_| format!("invalid status {} in a rate rule", rule.status))?;
        let policy = match &rule.fields {
            Some(f) => Some(
                HeaderValue::from_str(&f.policy)
                    .map_err(|_| format!("invalid RateLimit-Policy {:?}", f.policy))?,
            ),
            None => None,
        };
        let limited = rule.limited_metric.as_ref().and_then(|name| {
            info.metrics
                .plugin_counter(&info.name, name, MAX_PLUGIN_METRICS)
        });
        Ok(RateLimit {
            rule,
            status,
            policy,
            limited,
        })
    }

    /// Takes one request from the request's key; the store unreachable, `store_errors` decides
    /// (`open`: it passes as the first request of a full bucket would; `closed`: 503).
    pub(super) fn apply(&self, ex: &Exchange, info: &PluginInfo) -> Result<Limit, HttpError> {
        // The key in the plugin's namespace, as `rate-take` would scope it.
        let mut key = String::with_capacity(info.namespace.len() + 64);
        key.push_str(&info.namespace);
        key.push('\0');
        self.rule.key_of(&View(ex), &mut key);
        let (interval, tolerance) = (self.rule.interval_ns, self.rule.tolerance_ns);
        let rate = match (
            info.store.rate_take(&key, interval, tolerance),
            info.store_errors,
        ) {
            (Ok(rate), _) => rate,
            (Err(_), StoreErrors::Open) => Rate::Allowed(interval),
            // Logged once by the store.
            (Err(_), StoreErrors::Closed) => return Err(HttpError::ServiceUnavailable),
        };
        let verdict = self.rule.verdict(rate);
        let mut fields = HeaderMap::new();
        if let (Some(policy), Some(state)) = (&self.policy, self.rule.state(verdict)) {
            fields.insert(RATELIMIT_POLICY, policy.clone());
            // Checked when handed over: the name is visible ASCII, the rest digits.
            if let Ok(state) = HeaderValue::try_from(state) {
                fields.insert(RATELIMIT, state);
            }
        }
        let Verdict::Limited { retry_after_s } = verdict else {
            return Ok(Limit::Pass(fields));
        };
        if let Some(counter) = &self.limited {
            counter.inc();
        }
        let body = self.rule.refusal_body();
        fields.insert(RETRY_AFTER, HeaderValue::from(retry_after_s));
        fields.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(gatehouse_rate::REFUSAL_TYPE),
        );
        fields.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        let mut response = Response::new(Body::full(Bytes::from(body)));
        *response.status_mut() = self.status;
        *response.headers_mut() = fields;
        Ok(Limit::Refuse(response))
    }
}

/// The request as the rule reads it.
struct View<'a>(&'a Exchange);

impl RequestView for View<'_> {
    fn push_client_ip(&self, out: &mut String) {
        // As `request.client-addr` gives it: an IPv4-mapped address is IPv4.
        match self.0.client {
            Some(ip) => out.push_str(&crate::peer::ip_text(ip.to_canonical())),
            None => out.push_str("unix"),
        }
    }

    fn host(&self) -> Option<&str> {
        self.0.host()
    }

    fn method(&self) -> &str {
        self.0.request.method.as_str()
    }

    fn path(&self) -> &str {
        self.0.request.uri.path()
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.request.headers.get(name).map(HeaderValue::as_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_rate::KeyPart;

    #[test]
    fn clients_are_keyed_as_request_client_addr_gives_them() {
        let rule = Rule {
            key: vec![KeyPart::ClientIp],
            interval_ns: 1,
            tolerance_ns: 0,
            status: 429,
            fields: None,
            limited_metric: None,
        };
        let mut ex = Exchange::placeholder();
        let key = |ex: &Exchange| {
            let mut out = String::new();
            rule.key_of(&View(ex), &mut out);
            out
        };
        ex.client = "::ffff:192.0.2.1".parse().ok();
        assert_eq!(key(&ex), "192.0.2.1", "an IPv4-mapped address is IPv4");
        ex.client = "2001:db8::1".parse().ok();
        assert_eq!(key(&ex), "2001:db8::1");
        ex.client = None;
        assert_eq!(key(&ex), "unix");
    }
}
