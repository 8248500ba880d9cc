//! Purges by prefix and by tag: records in one store value that every lookup reads (when purging
//! is configured), an entry fetched before a record that matches it counting as absent.
//!
//! Hand-written because the store cannot list its keys: the entries under a prefix or with a tag
//! cannot be found to be deleted, so the purge is remembered instead and checked on use (Varnish's
//! bans work the same way). The list is bounded: past [`MAX_RECORDS`] its records are folded into
//! one that purges everything fetched before the newest of them, which is more than was asked,
//! never less.

use crate::entry::Entry;

/// The store key of the list.
pub const KEY: &str = "purges";

/// Records kept; one more folds them into a purge of everything fetched before the newest.
pub const MAX_RECORDS: usize = 100;

/// How far the clocks of instances sharing a store may disagree: a purge also covers entries
/// fetched this long after it (fetched again: more than asked, never less).
pub const CLOCK_SKEW_MS: u64 = 1000;

/// What a record purges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Every entry.
    All,
    /// Entries whose URL, without its scheme, starts with this (`host/path/`).
    Prefix(String),
    /// Entries whose response named this key in `Surrogate-Key`.
    Tag(String),
}

/// A purge and when it was made (milliseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    at_ms: u64,
    rule: Rule,
}

/// The list of purges.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Purges(Vec<Record>);

impl Purges {
    /// The list from its stored form (lines of `AT KIND VALUE`); lines that are not records are
    /// skipped.
    pub fn decode(bytes: &[u8]) -> Purges {
        let text = String::from_utf8_lossy(bytes);
        let records = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ' ');
                let at_ms = parts.next()?.parse().ok()?;
                let rule = match (parts.next()?, parts.next().unwrap_or("")) {
                    ("a", _) => Rule::All,
                    ("p", value) => Rule::Prefix(value.to_string()),
                    ("t", value) if !value.is_empty() => Rule::Tag(value.to_string()),
                    _ => return None,
                };
                Some(Record { at_ms, rule })
            })
            .collect();
        Purges(records)
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        for record in &self.0 {
            let (kind, value) = match &record.rule {
                Rule::All => ("a", ""),
                Rule::Prefix(p) => ("p", p.as_str()),
                Rule::Tag(t) => ("t", t.as_str()),
            };
            out.push_str(&format!("{} {kind} {value}\n", record.at_ms));
        }
        out.into_bytes()
    }

    /// Adds a purge made at `at_ms`. A full list is folded into one purge of everything fetched
    /// before its newest record, which covers what each of them did.
    pub fn add(&mut self, rule: Rule, at_ms: u64) {
        if self.0.len() >= MAX_RECORDS {
            let newest = self.0.iter().map(|r| r.at_ms).max().unwrap_or(at_ms);
            self.0 = vec![Record {
                at_ms: newest,
                rule: Rule::All,
            }];
        }
        self.0.push(Record { at_ms, rule });
    }

    /// Whether a purge made after `entry` was fetched matches it. The request's time counts,
    /// not the response's: a response on its way while the purge was made is purged too.
    pub fn cover(&self, entry: &Entry) -> bool {
        let url = entry
            .url
            .split_once("://")
            .map_or(entry.url.as_str(), |(_, rest)| rest);
        self.0
            .iter()
            .filter(|r| r.at_ms.saturating_add(CLOCK_SKEW_MS) >= entry.request_time)
            .any(|r| match &r.rule {
                Rule::All => true,
                Rule::Prefix(prefix) => url.starts_with(prefix.as_str()),
                Rule::Tag(tag) => entry.header_all("surrogate-key").any(|keys| {
                    String::from_utf8_lossy(keys)
                        .split_ascii_whitespace()
                        .any(|k| k == tag)
                }),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str, fetched: u64, keys: Option<&str>) -> Entry {
        Entry {
            url: url.into(),
            status: 200,
            headers: keys
                .map(|k| vec![("surrogate-key".to_string(), k.as_bytes().to_vec())])
                .unwrap_or_default(),
            age_value: Some(0),
            request_time: fetched,
            response_time: fetched,
            body: Vec::new(),
        }
    }

    #[test]
    fn prefixes_and_tags_purge_what_was_fetched_before_them() {
        let (t1, t2) = (10_000, 20_000);
        let after = |t: u64| t + CLOCK_SKEW_MS + 1;
        let mut p = Purges::default();
        p.add(Rule::Prefix("example.com/a/".into()), t1);
        p.add(Rule::Tag("news".into()), t2);
        let p = Purges::decode(&p.encode());
        assert!(p.cover(&entry("https://example.com/a/1", t1 - 50, None)));
        assert!(
            p.cover(&entry("http://example.com/a/", t1, None)),
            "same ms"
        );
        assert!(
            p.cover(&entry("http://example.com/a/1", t1 + CLOCK_SKEW_MS, None)),
            "within the clock skew allowed"
        );
        assert!(
            !p.cover(&entry("http://example.com/a/1", after(t1), None)),
            "fetched after"
        );
        assert!(!p.cover(&entry("http://example.com/b", t1 - 50, None)));
        assert!(!p.cover(&entry("http://other.com/a/1", t1 - 50, None)));
        assert!(p.cover(&entry(
            "http://example.com/b",
            after(t1),
            Some("sport news")
        )));
        assert!(!p.cover(&entry(
            "http://example.com/b",
            after(t1),
            Some("newsletter")
        )));
        assert!(!p.cover(&entry("http://example.com/b", after(t2), Some("news"))));
    }

    #[test]
    fn a_full_list_folds_into_one_purge_of_everything_before_its_newest() {
        let mut p = Purges::default();
        for i in 0..MAX_RECORDS as u64 {
            p.add(Rule::Tag(format!("t{i}")), 10_000 + i);
        }
        assert_eq!(p.0.len(), MAX_RECORDS);
        let newest = 10_000 + MAX_RECORDS as u64 - 1;
        p.add(Rule::Tag("one-more".into()), 50_000);
        assert_eq!(
            p.0.len(),
            2,
            "everything before the newest, and the new one"
        );
        assert!(p.cover(&entry("http://x/anything", newest, None)));
        let later = newest + CLOCK_SKEW_MS + 1;
        assert!(!p.cover(&entry("http://x/anything", later, None)));
        assert!(p.cover(&entry("http://x/tagged", later, Some("one-more"))));
        assert_eq!(Purges::decode(b"junk\n12 z y\n"), Purges::default());
    }
}
