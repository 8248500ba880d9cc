//! Answering a client's conditional and range requests from a stored response (RFC 9110
//! sections 13 and 14).

use crate::entry::Entry;
use crate::freshness::{date_value, parse_date};

/// Whether an `If-None-Match` list (all its lines) matches `etag`, by weak comparison.
pub fn none_match(lines: &[Vec<u8>], etag: Option<&[u8]>) -> bool {
    for line in lines {
        let text = String::from_utf8_lossy(line);
        for tag in split_tags(&text) {
            if tag == "*" {
                return true;
            }
            if let Some(etag) = etag
                && opaque(tag) == opaque(&String::from_utf8_lossy(etag))
            {
                return true;
            }
        }
    }
    false
}

/// Entity tags in a list: commas inside quoted tags do not split.
fn split_tags(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(text[start..].trim());
    out.retain(|t| !t.is_empty());
    out
}

/// An entity tag without its weakness mark.
fn opaque(tag: &str) -> &str {
    tag.trim().strip_prefix("W/").unwrap_or(tag.trim())
}

/// Whether the client's conditionals say it has `entry` already (304): `If-None-Match` when sent,
/// else `If-Modified-Since` against `Last-Modified` (or `Date`).
pub fn not_modified(inm: &[Vec<u8>], ims: Option<&[u8]>, entry: &Entry) -> bool {
    if !inm.is_empty() {
        return none_match(inm, entry.header("etag"));
    }
    let Some(since) = ims.and_then(parse_date) else {
        return false;
    };
    let modified = entry
        .header("last-modified")
        .and_then(parse_date)
        .unwrap_or_else(|| date_value(entry));
    modified <= since
}

/// Header fields a `304` carries from the stored response (RFC 9110 section 15.4.5).
pub const NOT_MODIFIED_FIELDS: &[&str] = &[
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
    "last-modified",
];

/// A single byte range of a body `len` long, as `(first, last)` inclusive; `None` for anything
/// else (several ranges, another unit, a malformed header: the whole body is sent).
/// `Some(Err(()))` for a range that cannot be satisfied.
pub fn byte_range(header: &[u8], len: u64) -> Option<Result<(u64, u64), ()>> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let spec = text.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if first.is_empty() {
        if !digits(last) {
            return None;
        }
        let suffix: u64 = last.parse().ok()?;
        if suffix == 0 || len == 0 {
            return Some(Err(()));
        }
        return Some(Ok((len.saturating_sub(suffix), len - 1)));
    }
    if !digits(first) || !(last.is_empty() || digits(last)) {
        return None;
    }
    let first: u64 = first.parse().ok()?;
    let last: u64 = if last.is_empty() {
        u64::MAX
    } else {
        last.parse().ok()?
    };
    if last < first {
        return None;
    }
    if first >= len {
        return Some(Err(()));
    }
    Some(Ok((first, last.min(len - 1))))
}

/// Whether `If-Range` lets a range be served from `entry`: a strong entity tag equal to its
/// `ETag`, or a date equal to its `Last-Modified`.
pub fn if_range_holds(value: &[u8], entry: &Entry) -> bool {
    let text = String::from_utf8_lossy(value);
    let text = text.trim();
    if text.starts_with('"') {
        return entry
            .header("etag")
            .is_some_and(|etag| etag == text.as_bytes());
    }
    match (
        parse_date(value),
        entry.header("last-modified").and_then(parse_date),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_tags_match_weakly_in_lists() {
        let lines = vec![b"\"a\", W/\"b\"".to_vec()];
        assert!(none_match(&lines, Some(b"\"b\"")));
        assert!(none_match(&lines, Some(b"W/\"a\"")));
        assert!(!none_match(&lines, Some(b"\"c\"")));
        assert!(none_match(&[b"*".to_vec()], Some(b"\"x\"")));
        assert!(!none_match(&lines, None));
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range(b"bytes=0-1", 11), Some(Ok((0, 1))));
        assert_eq!(byte_range(b"bytes=5-", 11), Some(Ok((5, 10))));
        assert_eq!(byte_range(b"bytes=-3", 11), Some(Ok((8, 10))));
        assert_eq!(byte_range(b"bytes=2-100", 11), Some(Ok((2, 10))));
        assert_eq!(byte_range(b"bytes=20-30", 11), Some(Err(())));
        assert_eq!(byte_range(b"bytes=0-1,3-4", 11), None);
        assert_eq!(byte_range(b"items=0-1", 11), None);
        assert_eq!(byte_range(b"bytes=3-1", 11), None);
    }
}
