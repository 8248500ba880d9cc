//! Rate limits by the generic cell rate algorithm (GCRA, what `governor` and Redis' `redis-cell`
//! implement): the arithmetic, and the [`Rule`] a plugin hands the host so that the host limits
//! requests in its place, without a call into the plugin per request.
//!
//! Shared by the host, which keeps each key's state in its store and applies a plugin's rule, and
//! by the plugin SDK, whose test harness applies the same rule the same way. By hand rather than
//! `governor`: `governor` keeps its state in its own memory, where this state lives in the shared
//! store (and with it, in Redis); what is here is the few lines of arithmetic and the rule's
//! wording (its key, its `RateLimit` fields, its refusal).

use std::fmt::Write as _;

/// What one take from a key's allowance decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// Counted: the key's theoretical arrival time now runs this many nanoseconds ahead of now.
    Allowed(u64),
    /// Refused, not counted: a request would pass in this many nanoseconds.
    Limited(u64),
}

/// GCRA: with the key's theoretical arrival time `stored` (ns since the epoch, absent for a new
/// key), a request at `now` passes if that time moved on by `interval` is at most
/// `interval + tolerance` ahead of now; then the new time to store.
pub fn gcra(stored: Option<u64>, now: u64, interval: u64, tolerance: u64) -> (Rate, Option<u64>) {
    let room = interval.saturating_add(tolerance);
    // A stored time further ahead than any take leaves it is from a clock that has since gone
    // back: count from the furthest a take can leave, not from the jump.
    let tat = stored.unwrap_or(now).clamp(now, now.saturating_add(room));
    let new_tat = tat.saturating_add(interval);
    let ahead = new_tat - now;
    if ahead > room {
        (Rate::Limited(ahead - room), None)
    } else {
        (Rate::Allowed(ahead), Some(new_tat))
    }
}

/// The refusal's `Content-Type`.
pub const REFUSAL_TYPE: &str = "text/plain; charset=utf-8";

/// Most parts a rule's key may join.
pub const MAX_KEY_PARTS: usize = 16;

/// One part of a rule's key, read from each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's address as text (`unix` on a Unix-socket listener).
    ClientIp,
    /// The request's host, without the port.
    Host,
    /// The method.
    Method,
    /// The path.
    Path,
    /// The path up to its Nth `/` after the first: `PathSegments(1)` of `/v1/users` is `/v1`.
    PathSegments(u32),
    /// A header's value (lower-case name; empty when absent).
    Header(String),
}

impl KeyPart {
    /// A part as configs write it: `ip`, `host`, `method`, `path`, `path:N`, `header:NAME`.
    pub fn parse(text: &str) -> Result<KeyPart, String> {
        Ok(match text {
            "ip" => KeyPart::ClientIp,
            "host" => KeyPart::Host,
            "method" => KeyPart::Method,
            "path" => KeyPart::Path,
            other => {
                if let Some(n) = other.strip_prefix("path:") {
                    let n = n
                        .parse()
                        .map_err(|_| format!("key part {other:?}: expected path:N, N a number"))?;
                    KeyPart::PathSegments(n)
                } else if let Some(name) = other.strip_prefix("header:") {
                    if !is_token(name) {
                        return Err(format!("key part {other:?} needs a header name"));
                    }
                    KeyPart::Header(name.to_ascii_lowercase())
                } else {
                    return Err(format!(
                        "unknown key part {other:?}: expected ip, host, method, path, path:N or header:NAME"
                    ));
                }
            }
        })
    }
}

/// What a rule reads of a request.
pub trait RequestView {
    /// Appends the client's address as text (`unix` when there is none).
    fn push_client_ip(&self, out: &mut String);
    /// The host without the port.
    fn host(&self) -> Option<&str>;
    /// The method.
    fn method(&self) -> &str;
    /// The path.
    fn path(&self) -> &str;
    /// The first value of the header `name` (lower case).
    fn header(&self, name: &str) -> Option<&[u8]>;
}

/// The `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers) a rule
/// sets on responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    /// The policy's name, quoted in both fields.
    pub name: String,
    /// The whole `RateLimit-Policy` value, the same on every response.
    pub policy: String,
}

/// A rate limit the host applies in a plugin's place: for each request the plugin applies to, the
/// parts of `key` joined (by U+001F) name the bucket; a request that fits goes on (with the
/// fields set for its response), one that does not is answered `status` with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What is limited.
    pub key: Vec<KeyPart>,
    /// Nanoseconds between requests at the steady rate (at least 1).
    pub interval_ns: u64,
    /// How far ahead of now a key's theoretical arrival time may run: the burst, as time.
    pub tolerance_ns: u64,
    /// The refusal's status (4xx or 5xx).
    pub status: u16,
    /// The fields set on every response (and the refusal), if any.
    pub fields: Option<Fields>,
    /// The plugin counter a refusal adds 1 to, if any.
    pub limited_metric: Option<String>,
}

/// What a rule decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It goes on; so many more fit now, and the bucket is whole again in `reset_s` seconds.
    Allowed { remaining: u64, reset_s: u64 },
    /// It is refused; a request would pass in `retry_after_s` seconds (at least 1).
    Limited { retry_after_s: u64 },
}

impl Rule {
    /// Whether the host can apply it as written.
    pub fn check(&self) -> Result<(), String> {
        if self.key.is_empty() || self.key.len() > MAX_KEY_PARTS {
            return Err(format!(
                "a rate rule's key has 1 to {MAX_KEY_PARTS} parts, not {}",
                self.key.len()
            ));
        }
        if let Some(KeyPart::Header(name)) = self
            .key
            .iter()
            .find(|p| matches!(p, KeyPart::Header(n) if !is_token(n) || n.bytes().any(|b| b.is_ascii_uppercase())))
        {
            return Err(format!("{name:?} is not a lower-case header name"));
        }
        let long = |what: &str, text: &str, max: usize| {
            (text.len() > max).then(|| format!("a rate rule's {what} is at most {max} bytes"))
        };
        let texts = self
            .key
            .iter()
            .filter_map(|p| match p {
                KeyPart::Header(name) => Some(("header name", name.as_str(), 256)),
                _ => None,
            })
            .chain(self.fields.iter().flat_map(|f| {
                [
                    ("name", f.name.as_str(), 128),
                    ("policy", f.policy.as_str(), 1024),
                ]
            }))
            .chain(
                self.limited_metric
                    .iter()
                    .map(|m| ("metric", m.as_str(), 128)),
            );
        for (what, text, max) in texts {
            if let Some(e) = long(what, text, max) {
                return Err(e);
            }
        }
        if self.interval_ns == 0 {
            return Err("a rate rule's interval is at least 1 ns".into());
        }
        if !(400..=599).contains(&self.status) {
            return Err(format!(
                "a rate rule refuses with 4xx or 5xx, not {}",
                self.status
            ));
        }
        if let Some(f) = &self.fields
            && ![f.name.as_str(), f.policy.as_str()]
                .iter()
                .all(|v| v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
        {
            return Err("a rate rule's field name and policy are visible ASCII".into());
        }
        Ok(())
    }

    /// Appends the request's key to `out`.
    pub fn key_of(&self, req: &impl RequestView, out: &mut String) {
        for (i, part) in self.key.iter().enumerate() {
            if i > 0 {
                out.push('\u{1f}');
            }
            match part {
                KeyPart::ClientIp => req.push_client_ip(out),
                KeyPart::Host => out.push_str(req.host().unwrap_or("")),
                KeyPart::Method => out.push_str(req.method()),
                KeyPart::Path => out.push_str(req.path()),
                KeyPart::PathSegments(n) => {
                    let path = req.path();
                    let end = path
                        .match_indices('/')
                        .nth(*n as usize)
                        .map_or(path.len(), |(i, _)| i);
                    out.push_str(&path[..end]);
                }
                KeyPart::Header(name) => out.push_str(&String::from_utf8_lossy(
                    req.header(name).unwrap_or_default(),
                )),
            }
        }
    }

    /// The verdict of a take from the key's bucket.
    pub fn verdict(&self, rate: Rate) -> Verdict {
        match rate {
            Rate::Allowed(ahead) => {
                let room = self.tolerance_ns.saturating_add(self.interval_ns);
                Verdict::Allowed {
                    remaining: room.saturating_sub(ahead) / self.interval_ns,
                    reset_s: ahead.div_ceil(1_000_000_000),
                }
            }
            Rate::Limited(wait) => Verdict::Limited {
                retry_after_s: wait.div_ceil(1_000_000_000).max(1),
            },
        }
    }

    /// The `RateLimit` value for a verdict, if the rule sets fields.
    pub fn state(&self, verdict: Verdict) -> Option<String> {
        let f = self.fields.as_ref()?;
        let (remaining, reset_s) = match verdict {
            Verdict::Allowed { remaining, reset_s } => (remaining, reset_s),
            Verdict::Limited { retry_after_s } => (0, retry_after_s),
        };
        let mut out = String::with_capacity(f.name.len() + 24);
        // Writing into a String cannot fail.
        let _ = write!(out, "\"{}\";r={remaining};t={reset_s}", f.name);
        Some(out)
    }

    /// The refusal's body.
    pub fn refusal_body(&self) -> String {
        format!("{} Too Many Requests\n", self.status)
    }
}

/// An HTTP token (RFC 9110 section 5.6.2): what a field name is made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    struct Req<'a> {
        ip: &'a str,
        path: &'a str,
        key: Option<&'a [u8]>,
    }

    impl RequestView for Req<'_> {
        fn push_client_ip(&self, out: &mut String) {
            out.push_str(self.ip)
        }
        fn host(&self) -> Option<&str> {
            Some("example.com")
        }
        fn method(&self) -> &str {
            "GET"
        }
        fn path(&self) -> &str {
            self.path
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            (name == "x-api-key").then_some(self.key).flatten()
        }
    }

    fn rule(key: &[&str]) -> Rule {
        Rule {
            key: key
                .iter()
                .map(|p| KeyPart::parse(p).expect("part"))
                .collect(),
            interval_ns: SECOND / 2,
            tolerance_ns: SECOND,
            status: 429,
            fields: Some(Fields {
                name: "api".into(),
                policy: "\"api\";q=2;w=1".into(),
            }),
            limited_metric: None,
        }
    }

    #[test]
    fn a_burst_then_the_steady_rate_and_a_clock_that_went_back() {
        let (i, t) = (SECOND / 2, SECOND);
        let mut tat = None;
        let mut take = |now: u64| {
            let (rate, new) = gcra(tat, now, i, t);
            if new.is_some() {
                tat = new;
            }
            rate
        };
        // interval + tolerance = 1.5 s of room: three at once, then one per interval.
        assert_eq!(take(0), Rate::Allowed(i));
        assert_eq!(take(0), Rate::Allowed(2 * i));
        assert_eq!(take(0), Rate::Allowed(3 * i));
        assert_eq!(take(0), Rate::Limited(i));
        assert_eq!(take(i), Rate::Allowed(3 * i));
        // A stored time far ahead (the clock went back) counts as a full bucket, not a lockout.
        let (rate, _) = gcra(Some(u64::MAX / 2), 10 * SECOND, i, t);
        assert_eq!(rate, Rate::Limited(i));
    }

    #[test]
    fn keys_join_parts_and_cut_paths_at_segments() {
        let req = Req {
            ip: "192.0.2.1",
            path: "/v1/users/7",
            key: Some(b"k1"),
        };
        let mut out = String::new();
        rule(&["ip", "path:1", "header:X-Api-Key"]).key_of(&req, &mut out);
        assert_eq!(out, "192.0.2.1\u{1f}/v1\u{1f}k1");
        out.clear();
        rule(&["path:0", "path:9", "host", "method"]).key_of(&req, &mut out);
        assert_eq!(out, "\u{1f}/v1/users/7\u{1f}example.com\u{1f}GET");
        let none = Req { key: None, ..req };
        out.clear();
        rule(&["header:x-api-key"]).key_of(&none, &mut out);
        assert_eq!(out, "");
    }

    #[test]
    fn verdicts_give_what_is_left_and_when_to_come_back() {
        let r = rule(&["ip"]);
        let allowed = r.verdict(Rate::Allowed(SECOND / 2));
        assert_eq!(
            allowed,
            Verdict::Allowed {
                remaining: 2,
                reset_s: 1
            }
        );
        assert_eq!(r.state(allowed).as_deref(), Some("\"api\";r=2;t=1"));
        let limited = r.verdict(Rate::Limited(1));
        assert_eq!(limited, Verdict::Limited { retry_after_s: 1 });
        assert_eq!(r.state(limited).as_deref(), Some("\"api\";r=0;t=1"));
        assert_eq!(r.refusal_body(), "429 Too Many Requests\n");
    }

    #[test]
    fn rules_the_host_cannot_apply_are_refused() {
        assert!(rule(&["ip"]).check().is_ok());
        assert!(KeyPart::parse("cookie").is_err());
        assert!(KeyPart::parse("header:").is_err());
        assert!(KeyPart::parse("path:x").is_err());
        let bad = [
            Rule {
                fields: Some(Fields {
                    name: "a".into(),
                    policy: "q".repeat(1025),
                }),
                ..rule(&["ip"])
            },
            Rule {
                limited_metric: Some("m".repeat(129)),
                ..rule(&["ip"])
            },
            Rule {
                key: vec![KeyPart::Header("h".repeat(257))],
                ..rule(&["ip"])
            },
            Rule {
                key: vec![],
                ..rule(&["ip"])
            },
            Rule {
                interval_ns: 0,
                ..rule(&["ip"])
            },
            Rule {
                status: 200,
                ..rule(&["ip"])
            },
            Rule {
                key: vec![KeyPart::Header("X-A".into())],
                ..rule(&["ip"])
            },
            Rule {
                key: vec![KeyPart::Header("a b".into())],
                ..rule(&["ip"])
            },
            Rule {
                fields: Some(Fields {
                    name: "a\nb".into(),
                    policy: String::new(),
                }),
                ..rule(&["ip"])
            },
        ];
        for r in bad {
            assert!(r.check().is_err(), "{r:?}");
        }
    }
}
