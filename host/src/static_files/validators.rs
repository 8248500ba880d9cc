//! Cache validators (`ETag`, `Last-Modified`), conditional requests and single byte ranges.

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, RANGE};

/// What identifies one version of a file: its length and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// File length in bytes.
    pub len: u64,
    /// Modification time, whole seconds since the epoch (HTTP dates have no finer grain).
    pub mtime: u64,
}

impl Version {
    /// From file metadata.
    pub fn of(meta: &std::fs::Metadata) -> Version {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Version {
            len: meta.len(),
            mtime,
        }
    }

    /// A strong ETag in nginx's shape: `"mtime-len"` in hex.
    pub fn etag(&self) -> String {
        format!("\"{:x}-{:x}\"", self.mtime, self.len)
    }

    /// The `Last-Modified` value.
    pub fn last_modified(&self) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(self.mtime))
    }

    /// Whether the client's cached copy is current (`If-None-Match`, else `If-Modified-Since`).
    pub fn not_modified(&self, headers: &HeaderMap) -> bool {
        if let Some(inm) = headers.get(IF_NONE_MATCH) {
            let etag = self.etag();
            let Ok(list) = inm.to_str() else { return false };
            return list
                .split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag);
        }
        match headers
            .get(IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .map(httpdate::parse_http_date)
        {
            Some(Ok(since)) => UNIX_EPOCH + std::time::Duration::from_secs(self.mtime) <= since,
            _ => false,
        }
    }

    /// `If-Range` holds when it names this version exactly (strong ETag or the exact date).
    fn if_range_holds(&self, value: &str) -> bool {
        let value = value.trim();
        if value.starts_with('"') {
            return value == self.etag();
        }
        httpdate::parse_http_date(value)
            .is_ok_and(|d: SystemTime| d == UNIX_EPOCH + std::time::Duration::from_secs(self.mtime))
    }
}

/// What the `Range` header asks of a file of a given length.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// Send the whole file (no range, an unparseable or multi-range header, or a stale `If-Range`).
    Full,
    /// Send bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// Nothing of the file lies in the range: 416.
    Unsatisfiable,
}

/// Reads `Range` and `If-Range` for a file of this version.
pub fn range(headers: &HeaderMap, version: &Version) -> RangeRequest {
    let Some(value) = headers.get(RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeRequest::Full;
    };
    if let Some(if_range) = headers.get(IF_RANGE) {
        if !if_range.to_str().is_ok_and(|v| version.if_range_holds(v)) {
            return RangeRequest::Full;
        }
    }
    parse_range(value, version.len)
}

/// Parses one `bytes=` range against a length; multiple ranges are answered with the whole file.
pub fn parse_range(value: &str, len: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (first, last) = (first.trim(), last.trim());
    match (digits(first), digits(last)) {
        // bytes=-N: the last N bytes.
        (false, true) if first.is_empty() => match last.parse::<u64>() {
            Ok(0) => RangeRequest::Unsatisfiable,
            Ok(n) if len > 0 => RangeRequest::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            Ok(_) => RangeRequest::Unsatisfiable,
            Err(_) => RangeRequest::Full,
        },
        (true, _) if last.is_empty() || digits(last) => {
            let Ok(start) = first.parse::<u64>() else {
                return RangeRequest::Full;
            };
            let end = if last.is_empty() {
                Ok(u64::MAX)
            } else {
                last.parse::<u64>()
            };
            match end {
                Ok(end) if end < start => RangeRequest::Full,
                Ok(_) if start >= len => RangeRequest::Unsatisfiable,
                Ok(end) => RangeRequest::Partial {
                    start,
                    end: end.min(len - 1),
                },
                // An end too large to parse still means "to the end of the file".
                Err(_) if start < len => RangeRequest::Partial {
                    start,
                    end: len - 1,
                },
                Err(_) => RangeRequest::Unsatisfiable,
            }
        }
        _ => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range("bytes=90-", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=90-500", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-500", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=a-b", 100), Full);
        assert_eq!(parse_range("bytes=-", 100), Full);
    }

    #[test]
    fn conditionals() {
        let v = Version {
            len: 10,
            mtime: 1_700_000_000,
        };
        let mut h = HeaderMap::new();
        assert!(!v.not_modified(&h));
        h.insert(
            IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", {}", v.etag())).expect("ascii"),
        );
        assert!(v.not_modified(&h));
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        h.insert(
            IF_MODIFIED_SINCE,
            HeaderValue::from_str(&v.last_modified()).expect("ascii"),
        );
        assert!(
            !v.not_modified(&h),
            "If-None-Match wins over If-Modified-Since"
        );
        h.remove(IF_NONE_MATCH);
        assert!(v.not_modified(&h));
        h.insert(
            IF_MODIFIED_SINCE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert!(!v.not_modified(&h));
    }

    #[test]
    fn if_range() {
        let v = Version {
            len: 100,
            mtime: 1_700_000_000,
        };
        let mut h = HeaderMap::new();
        h.insert(RANGE, HeaderValue::from_static("bytes=0-4"));
        h.insert(IF_RANGE, HeaderValue::from_str(&v.etag()).expect("ascii"));
        assert_eq!(range(&h, &v), RangeRequest::Partial { start: 0, end: 4 });
        h.insert(IF_RANGE, HeaderValue::from_static("\"stale\""));
        assert_eq!(range(&h, &v), RangeRequest::Full);
        h.insert(
            IF_RANGE,
            HeaderValue::from_str(&v.last_modified()).expect("ascii"),
        );
        assert_eq!(range(&h, &v), RangeRequest::Partial { start: 0, end: 4 });
    }
}
