//! The one normal form of a request's path and host, which plugins' `paths`/`hosts` conditions, the
//! router, the static target and the WSGI environ all read (see docs/http.md, "One view of the
//! request"). Without it `/%61dmin` or `//admin` would skip a plugin scoped to `/admin` while the app
//! still serves `/admin`, and `admin.example.com.` one scoped to `admin.example.com`.
//!
//! Hand-written: the `url` crate normalises for browsers (it resolves `%2e%2e` but keeps `%2F`, `//`
//! and `%61`), and no crate applies the server-side rules nginx and Apache use.

use http::Uri;

/// Why a path or host has no normal form; the request gets a 400 naming it.
pub type Unfit = &'static str;

/// The normal form of an origin-form path, or `None` when it is already normal:
/// - percent-encoded unreserved characters (`%61` -> `a`) are decoded, other escapes upper-cased;
/// - `%2F` and `%5C` (an encoded `/` or `\`) and `%00` are refused, as Apache does by default: the
///   WSGI `PATH_INFO` is decoded, so the app would see a segment boundary that matching did not;
/// - empty segments are merged (`//a` -> `/a`) and dot segments resolved (`/a/../b` -> `/b`), as
///   nginx does; a path that climbs above the root is refused.
pub fn normalise_path(path: &str) -> Result<Option<String>, Unfit> {
    let bytes = path.as_bytes();
    if !needs_work(bytes) {
        return Ok(None);
    }
    // Pass 1: escapes. Decoding only unreserved characters cannot create a `/`, so segments are the
    // same before and after.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b as char);
            i += 1;
            continue;
        }
        let hex = |b: u8| (b as char).to_digit(16);
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err("malformed percent-encoding in the path");
        };
        let value = (hi * 16 + lo) as u8;
        match value {
            b'/' | b'\\' => return Err("encoded / or \\ in the path"),
            0 => return Err("encoded NUL in the path"),
            b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                decoded.push(b as char);
            }
            b => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                decoded.push('%');
                decoded.push(HEX[usize::from(b >> 4)] as char);
                decoded.push(HEX[usize::from(b & 15)] as char);
            }
        }
        i += 3;
    }
    // Pass 2: segments.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut kept: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if kept.pop().is_none() {
                    return Err("the path climbs above the root");
                }
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Ok((out != path).then_some(out))
}

/// Whether a path may be other than normal: an escape, an empty segment or a dot segment. Most
/// paths have none and cost one scan.
fn needs_work(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' || (b == b'/' && matches!(bytes.get(i + 1), Some(b'/' | b'.'))))
}

/// The normal form of a `Host` value or an authority (`name[:port]`), or `None` when already normal:
/// the name lower-cased, one trailing dot dropped (`Example.COM.:80` -> `example.com:80`), an empty
/// port dropped. Names are RFC 3986 reg-names without escapes (letters, digits, `-._~` and the
/// sub-delimiters `!$&'()*+,;=`; no empty label), or an IPv6 literal in brackets; the port is up to
/// five digits. Anything else (`a b`, `a/b`, `user@host`) is refused.
pub fn normalise_host(value: &str) -> Result<Option<String>, Unfit> {
    let (name, port) = split_port(value)?;
    let name_normal = if name.starts_with('[') {
        let inner = &name[1..name.len() - 1];
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 literal in the host");
        }
        name.to_ascii_lowercase()
    } else {
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        let valid = trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b));
        if !valid
            || trimmed.starts_with('.')
            || trimmed.contains("..")
            || (trimmed.is_empty() && !name.is_empty())
        {
            return Err("invalid host");
        }
        trimmed.to_ascii_lowercase()
    };
    let normal = match port {
        Some(p) if !p.is_empty() => format!("{name_normal}:{p}"),
        _ => name_normal,
    };
    Ok((normal != value).then_some(normal))
}

/// `name:port` apart; the port (if any) checked.
fn split_port(value: &str) -> Result<(&str, Option<&str>), Unfit> {
    let (name, port) = if value.starts_with('[') {
        let end = value.find(']').ok_or("invalid IPv6 literal in the host")?;
        match &value[end + 1..] {
            "" => (value, None),
            rest => (
                &value[..=end],
                Some(rest.strip_prefix(':').ok_or("invalid host")?),
            ),
        }
    } else {
        match value.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (value, None),
        }
    };
    if let Some(port) = port {
        if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("invalid port in the host");
        }
    }
    Ok((name, port))
}

/// Rebuilds a URI's path and query, keeping scheme and authority (HTTP/2 and absolute-form); the URI
/// is unchanged when the result does not parse.
pub fn replace_path_and_query(uri: &mut Uri, path: &str, query: Option<&str>) -> Result<(), ()> {
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = std::mem::take(uri).into_parts();
    let old = parts.path_and_query.clone();
    match pq.parse() {
        Ok(pq) => {
            parts.path_and_query = Some(pq);
            *uri = Uri::from_parts(parts).unwrap_or_default();
            Ok(())
        }
        Err(_) => {
            parts.path_and_query = old;
            *uri = Uri::from_parts(parts).unwrap_or_default();
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{normalise_host, normalise_path};

    fn path(p: &str) -> Result<String, &'static str> {
        normalise_path(p).map(|n| n.unwrap_or_else(|| p.to_string()))
    }

    #[test]
    fn paths_have_one_form() {
        for (raw, normal) in [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%41%2d%5f%7E", "/A-_~"),
            ("/a%2fb%zz", "err"),
            ("/a%2Fb", "err"),
            ("/a%5cb", "err"),
            ("/a%00", "err"),
            ("/a%", "err"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("//admin", "/admin"),
            ("/a//b/", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/../admin", "/admin"),
            ("/a/%2e%2e/admin", "/admin"),
            ("/a/.%2E", "/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "err"),
            ("/a/../..", "err"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a..b/c.", "/a..b/c."),
        ] {
            assert_eq!(path(raw).unwrap_or_else(|_| "err".into()), normal, "{raw}");
        }
        assert_eq!(normalise_path("/static/app.css"), Ok(None));
        assert_eq!(normalise_path("/a/"), Ok(None));
    }

    #[test]
    fn hosts_have_one_form() {
        let host = |h: &str| {
            normalise_host(h)
                .map(|n| n.unwrap_or_else(|| h.to_string()))
                .unwrap_or_else(|_| "err".into())
        };
        for (raw, normal) in [
            ("example.com", "example.com"),
            ("Admin.Example.COM.", "admin.example.com"),
            ("admin.example.com.:8080", "admin.example.com:8080"),
            ("example.com:", "example.com"),
            ("[::1]:80", "[::1]:80"),
            ("[::FFFF:1.2.3.4]", "[::ffff:1.2.3.4]"),
            ("127.0.0.1:8000", "127.0.0.1:8000"),
            ("", ""),
            ("0.0.0.0=5000", "0.0.0.0=5000"),
            ("a b", "err"),
            ("a/b", "err"),
            ("a..b", "err"),
            (".a", "err"),
            (".", "err"),
            ("a:x", "err"),
            ("a:123456", "err"),
            ("[zz]", "err"),
            ("[::1", "err"),
            ("[::1]x", "err"),
            ("user@host", "err"),
        ] {
            assert_eq!(host(raw), normal, "{raw:?}");
        }
    }
}
