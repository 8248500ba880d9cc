//! Request-path helpers shared by the layers that route and serve.

/// The part of `path` below a target's `mount` prefix (`""` or `/` mount everything), or `None` when
/// the path is outside it: `/static` covers `/static` and `/static/x`, not `/staticx`.
pub fn below_mount<'a>(path: &'a str, mount: &str) -> Option<&'a str> {
    if mount.is_empty() || mount == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(mount)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::below_mount;

    #[test]
    fn mount_prefixes() {
        assert_eq!(below_mount("/a/b", "/"), Some("/a/b"));
        assert_eq!(below_mount("/a/b", ""), Some("/a/b"));
        assert_eq!(below_mount("/static", "/static"), Some(""));
        assert_eq!(below_mount("/static/x.css", "/static"), Some("/x.css"));
        assert_eq!(below_mount("/staticx/x.css", "/static"), None);
        assert_eq!(below_mount("/other", "/static"), None);
    }
}
