//! Turning a URL path into a safe path relative to a static root.
//!
//! Decoding happens exactly once, so `%252e%252e` stays the literal name `%2e%2e`. After decoding, any
//! `.` or `..` segment, backslash or NUL ends the request with 404; the kernel (`openat2` with
//! `RESOLVE_BENEATH`) then refuses anything that would leave the root through a symlink.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// Why a URL path cannot name a file under the root.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Traversal, NUL, backslash or other shapes never served.
    Unsafe,
    /// A segment starts with `.` and hidden files are not served.
    Hidden,
}

/// The safe relative path for `url_path` (already stripped of the mount prefix), `.` for the root.
pub fn relative_path(url_path: &str, show_hidden: bool) -> Result<PathBuf, Rejected> {
    let decoded: Vec<u8> = percent_decode_str(url_path).collect();
    if decoded.iter().any(|&b| b == 0 || b == b'\\') {
        return Err(Rejected::Unsafe);
    }
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len());
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" => continue,
            b"." | b".." => return Err(Rejected::Unsafe),
            s if s[0] == b'.' && !show_hidden => return Err(Rejected::Hidden),
            s => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(s);
            }
        }
    }
    if out.is_empty() {
        out.push(b'.');
    }
    Ok(PathBuf::from(OsString::from_vec(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> String {
        relative_path(p, false)
            .expect(p)
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn plain_paths() {
        assert_eq!(ok("/"), ".");
        assert_eq!(ok(""), ".");
        assert_eq!(ok("/a/b.txt"), "a/b.txt");
        assert_eq!(ok("//a///b/"), "a/b");
        assert_eq!(ok("/with%20space.txt"), "with space.txt");
        assert_eq!(ok("/caf%C3%A9"), "café");
        // Decoded once only: the literal name "%2e%2e" is looked up (and will not exist).
        assert_eq!(ok("/%252e%252e/etc"), "%2e%2e/etc");
    }

    #[test]
    fn traversal_shapes_are_refused() {
        for p in [
            "/..",
            "/../etc/passwd",
            "/a/../../etc",
            "/%2e%2e/etc",
            "/%2E%2E/etc",
            "/..%2fetc",
            "/a/..%2f..%2f",
            "/.",
            "/a/./b",
            "/%2e/x",
            "/a\\..\\b",
            "/a%5c..%5cb",
            "/a%00.txt",
            "/a\0b",
        ] {
            assert_eq!(relative_path(p, true), Err(Rejected::Unsafe), "{p}");
        }
    }

    #[test]
    fn dotfiles_hidden_unless_enabled() {
        assert_eq!(relative_path("/.env", false), Err(Rejected::Hidden));
        assert_eq!(
            relative_path("/a/.git/config", false),
            Err(Rejected::Hidden)
        );
        assert_eq!(
            relative_path("/%2egit/config", false),
            Err(Rejected::Hidden)
        );
        assert_eq!(
            relative_path("/.well-known/x", true)
                .expect("shown")
                .to_string_lossy(),
            ".well-known/x"
        );
    }
}
