//! The `static` target: files under a root directory, served the way nginx serves them.
//!
//! GET and HEAD; MIME type by extension; `ETag`/`Last-Modified` and 304s; one `Range`; index files;
//! optional listings; precompressed `.br`/`.gz` siblings. Every file is opened relative to the root's
//! directory handle with `openat2(RESOLVE_BENEATH)`, so neither `..` nor a symlink can leave the root.

mod cache;
mod listing;
mod path;
mod validators;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, LAST_MODIFIED, LOCATION, VARY,
};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::body::{Body, FileChunks};
use crate::config::StaticConfig;
use crate::error::HttpError;
use crate::sendfile::Delivery;
use cache::FileCache;
use validators::{RangeRequest, Version};

/// Header room reserved in a file response: the six or seven set here plus a few a plugin or the
/// server may add, so adding them does not grow (rehash) the map.
const RESPONSE_HEADERS: usize = 12;

/// A static directory, opened once at start.
#[derive(Debug)]
pub struct StaticFiles {
    root: OwnedFd,
    root_path: PathBuf,
    mount: String,
    index: Vec<String>,
    autoindex: bool,
    show_hidden: bool,
    precompressed: bool,
    beneath: Resolver,
    cache: Option<FileCache>,
}

/// The precompressed siblings tried, in order of preference: coding, file extension, and the bit
/// standing for "the client accepts it" in a cache key.
const SIBLINGS: [(&str, &str, u8); 2] = [("br", "br", 1), ("gzip", "gz", 2)];

/// Where a response's bytes come from.
enum Content {
    /// An open file, streamed.
    File(File),
    /// The whole file, already in memory (the file cache).
    Memory(bytes::Bytes),
}

/// How paths are resolved under the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolver {
    /// `openat2` with `RESOLVE_BENEATH`: symlinks inside the root work, escaping ones fail.
    Openat2,
    /// Kernels without `openat2` (before 5.6, or filtered by seccomp): every component is opened
    /// with `O_NOFOLLOW`, so no symlink is followed at all. Stricter, never looser.
    NoFollow,
}

impl StaticFiles {
    /// Whether the directory is still there.
    pub fn readiness(&self) -> Result<String, String> {
        if self.root_path.is_dir() {
            Ok(format!("{} is a directory", self.root_path.display()))
        } else {
            Err(format!("{} is gone", self.root_path.display()))
        }
    }

    /// Opens the root directory of a `static` target.
    pub fn open(config: &StaticConfig) -> std::io::Result<StaticFiles> {
        let root = rustix::fs::open(
            &config.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let beneath = match rustix::fs::openat2(
            &root,
            ".",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            beneath_flags(),
        ) {
            Ok(_) => Resolver::Openat2,
            Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => {
                Resolver::NoFollow
            }
            Err(e) => return Err(e.into()),
        };
        Ok(StaticFiles {
            root,
            root_path: config.root.clone(),
            mount: config.mount.clone(),
            index: config.index.clone(),
            autoindex: config.autoindex,
            show_hidden: config.show_hidden,
            precompressed: config.precompressed,
            beneath,
            cache: FileCache::new(config.file_cache, config.file_cache_valid),
        })
    }

    /// Answers one request, whose connection sends files as `delivery` says.
    pub fn serve(
        &self,
        req: &Parts,
        mount: Option<&str>,
        delivery: Delivery,
    ) -> Result<Response<Body>, HttpError> {
        if req.method != Method::GET && req.method != Method::HEAD {
            return Err(HttpError::MethodNotAllowed("GET, HEAD"));
        }
        let url_path = req.uri.path();
        let mount = mount.unwrap_or(&self.mount);
        let rest = crate::path::below_mount(url_path, mount).ok_or(HttpError::NotFound)?;
        let accepts = self.accepted_siblings(req);
        if let Some(hit) = self
            .cache
            .as_ref()
            .and_then(|c| c.get(rest, accepts))
            .filter(|hit| kept_in_memory(delivery, hit.version.len))
        {
            let content = Content::Memory(hit.bytes.clone());
            return self.respond(
                req,
                Path::new(rest),
                hit.version,
                hit.mime,
                hit.encoding,
                content,
            );
        }
        let rel = path::relative_path(rest, self.show_hidden).map_err(|_| HttpError::NotFound)?;
        let found = Found {
            rest,
            accepts,
            delivery,
        };

        let file = self.open_beneath(&self.root, &rel)?;
        let meta = file
            .metadata()
            .map_err(|e| internal(&self.root_path, &rel, &e))?;
        if meta.is_dir() {
            if !url_path.ends_with('/') {
                return Ok(redirect_to_dir(req));
            }
            for name in &self.index {
                match self.open_beneath(&file, Path::new(name)) {
                    Ok(index) => {
                        let meta = index
                            .metadata()
                            .map_err(|e| internal(&self.root_path, &rel, &e))?;
                        if meta.is_file() {
                            return self.file_response(req, &found, &rel.join(name), index, meta);
                        }
                    }
                    Err(HttpError::NotFound) => continue,
                    Err(e) => return Err(e),
                }
            }
            if self.autoindex {
                return listing::render(req, file, url_path, self.show_hidden)
                    .map_err(|e| internal(&self.root_path, &rel, &e));
            }
            return Err(HttpError::Forbidden);
        }
        if !meta.is_file() {
            return Err(HttpError::NotFound);
        }
        self.file_response(req, &found, &rel, file, meta)
    }

    /// Builds the response for a regular file, preferring a precompressed sibling the client accepts,
    /// and keeps the file in the cache when it is small enough.
    fn file_response(
        &self,
        req: &Parts,
        found: &Found<'_>,
        rel: &Path,
        file: File,
        meta: std::fs::Metadata,
    ) -> Result<Response<Body>, HttpError> {
        let mime = mime_guess::from_path(rel)
            .first_raw()
            .unwrap_or("application/octet-stream");
        let (mut file, meta, encoding) = match self.precompressed_sibling(found.accepts, rel)? {
            Some((f, m, enc)) => (f, m, Some(enc)),
            None => (file, meta, None),
        };
        let version = Version::of(&meta);
        let content = match &self.cache {
            Some(cache)
                if cache.fits(version.len) && kept_in_memory(found.delivery, version.len) =>
            {
                match read_whole(&mut file, version.len) {
                    Ok(Some(bytes)) => {
                        let entry =
                            cache.insert(found.rest, found.accepts, bytes, version, mime, encoding);
                        Content::Memory(entry.bytes.clone())
                    }
                    // Changed while being read: served from the file (which ends short if it shrank).
                    Ok(None) => {
                        file.rewind()
                            .map_err(|e| internal(&self.root_path, rel, &e))?;
                        Content::File(file)
                    }
                    Err(e) => return Err(internal(&self.root_path, rel, &e)),
                }
            }
            _ => Content::File(file),
        };
        self.respond(req, rel, version, mime, encoding, content)
    }

    /// The response for one version of a file: validators, 304, range, headers and body.
    fn respond(
        &self,
        req: &Parts,
        rel: &Path,
        version: Version,
        mime: &'static str,
        encoding: Option<&'static str>,
        content: Content,
    ) -> Result<Response<Body>, HttpError> {
        let mut builder = Response::builder();
        if let Some(headers) = builder.headers_mut() {
            headers.reserve(RESPONSE_HEADERS);
        }
        builder = builder
            .header(ETAG, version.etag())
            .header(LAST_MODIFIED, version.last_modified());
        if self.precompressed {
            builder = builder.header(VARY, "Accept-Encoding");
        }
        if version.not_modified(&req.headers) {
            return builder
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::Empty)
                .map_err(|_| HttpError::Internal);
        }
        builder = builder
            .header(CONTENT_TYPE, HeaderValue::from_static(mime))
            .header(ACCEPT_RANGES, "bytes");
        if let Some(encoding) = encoding {
            builder = builder.header(CONTENT_ENCODING, encoding);
        }
        let (status, start, len) = match validators::range(&req.headers, &version) {
            RangeRequest::Full => (StatusCode::OK, 0, version.len),
            RangeRequest::Partial { start, end } => {
                builder = builder.header(
                    CONTENT_RANGE,
                    format!("bytes {start}-{end}/{}", version.len),
                );
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            RangeRequest::Unsatisfiable => return Err(HttpError::RangeNotSatisfiable(version.len)),
        };
        let body = if req.method == Method::HEAD || len == 0 {
            Body::Empty
        } else {
            match content {
                // The range was checked against `version.len`, which is the length of these bytes.
                Content::Memory(bytes) => {
                    Body::full(bytes.slice(start as usize..(start + len) as usize))
                }
                Content::File(mut file) => {
                    if start > 0 {
                        file.seek(SeekFrom::Start(start))
                            .map_err(|e| internal(&self.root_path, rel, &e))?;
                    }
                    Body::File(FileChunks::new(file, len))
                }
            }
        };
        builder
            .status(status)
            .header(CONTENT_LENGTH, len)
            .body(body)
            .map_err(|_| HttpError::Internal)
    }

    /// The precompressed codings this client accepts, as cache-key bits ([`SIBLINGS`]); 0 when
    /// precompressed siblings are off.
    fn accepted_siblings(&self, req: &Parts) -> u8 {
        if !self.precompressed {
            return 0;
        }
        let Some(accept) = req
            .headers
            .get(ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
        else {
            return 0;
        };
        SIBLINGS
            .iter()
            .filter(|(coding, _, _)| accepts(accept, coding))
            .fold(0, |bits, (_, _, bit)| bits | bit)
    }

    /// A `.br` or `.gz` sibling of `rel` the client accepts (`accepted`: [`SIBLINGS`] bits), if present.
    fn precompressed_sibling(
        &self,
        accepted: u8,
        rel: &Path,
    ) -> Result<Option<(File, std::fs::Metadata, &'static str)>, HttpError> {
        for (coding, ext, bit) in SIBLINGS {
            if accepted & bit == 0 {
                continue;
            }
            let mut name = rel.as_os_str().to_owned();
            name.push(".");
            name.push(ext);
            match self.open_beneath(&self.root, Path::new(&name)) {
                Ok(f) => {
                    let meta = f
                        .metadata()
                        .map_err(|e| internal(&self.root_path, rel, &e))?;
                    if meta.is_file() {
                        return Ok(Some((f, meta, coding)));
                    }
                }
                Err(HttpError::NotFound) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Opens `rel` under `dir` without ever leaving the root.
    fn open_beneath(&self, dir: &impl std::os::fd::AsFd, rel: &Path) -> Result<File, HttpError> {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let opened = match self.beneath {
            Resolver::Openat2 => {
                rustix::fs::openat2(dir, rel, flags, Mode::empty(), beneath_flags())
            }
            Resolver::NoFollow => open_nofollow(dir, rel, flags),
        };
        match opened {
            Ok(fd) => Ok(File::from(fd)),
            Err(e) if is_not_found(e) => Err(HttpError::NotFound),
            Err(e) => Err(internal(&self.root_path, rel, &e.into())),
        }
    }
}

/// Files larger than this are not kept in memory for a connection that sends files with
/// `sendfile`: past a few pages the kernel's send from its page cache costs less than our copy
/// from memory, though it costs opening the file.
const SENDFILE_ABOVE: u64 = 32 * 1024;

/// Whether a file of `len` bytes is answered from (and kept in) memory for a connection that
/// sends files as `delivery` says.
fn kept_in_memory(delivery: Delivery, len: u64) -> bool {
    delivery == Delivery::Bytes || len <= SENDFILE_ABOVE
}

/// What the cache needs to know of a request that missed it, to key the file it finds.
struct Found<'a> {
    /// The URL path below the mount.
    rest: &'a str,
    /// [`SIBLINGS`] bits of the codings the client accepts.
    accepts: u8,
    /// How its connection sends files.
    delivery: Delivery,
}

/// All of a file of `len` bytes, or `None` when it changed length while being read.
fn read_whole(file: &mut File, len: u64) -> std::io::Result<Option<bytes::Bytes>> {
    let Ok(want) = usize::try_from(len) else {
        return Ok(None);
    };
    let mut buf = Vec::with_capacity(want);
    // One byte more than expected tells a file that grew from one that did not.
    file.take(len + 1).read_to_end(&mut buf)?;
    Ok((buf.len() == want).then(|| buf.into()))
}

fn beneath_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

fn open_nofollow(
    dir: &impl std::os::fd::AsFd,
    rel: &Path,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    let mut components = rel.components().peekable();
    let mut current: Option<OwnedFd> = None;
    while let Some(component) = components.next() {
        let last = components.peek().is_none();
        let f = if last {
            flags | OFlags::NOFOLLOW
        } else {
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        let next = match &current {
            Some(fd) => rustix::fs::openat(fd, component.as_os_str(), f, Mode::empty())?,
            None => rustix::fs::openat(dir, component.as_os_str(), f, Mode::empty())?,
        };
        current = Some(next);
    }
    current.ok_or(rustix::io::Errno::NOENT)
}

/// Failures that mean "nothing servable here": missing, not a directory, a symlink escaping the root
/// (`EXDEV`), a symlink loop or refused symlink (`ELOOP`), or no permission.
fn is_not_found(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    [
        Errno::NOENT,
        Errno::NOTDIR,
        Errno::XDEV,
        Errno::LOOP,
        Errno::ACCESS,
        Errno::NAMETOOLONG,
        Errno::PERM,
    ]
    .contains(&e)
}

fn internal(root: &Path, rel: &Path, e: &std::io::Error) -> HttpError {
    tracing::error!(root = %root.display(), path = %rel.display(), error = %e, "static file error");
    HttpError::Internal
}

/// Whether an `Accept-Encoding` value allows `coding` (a `q=0` refuses it).
fn accepts(header: &str, coding: &str) -> bool {
    header.split(',').any(|item| {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case(coding) && name != "*" {
            return false;
        }
        parts.all(|p| {
            let p = p.trim();
            match p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                Some(q) => q.trim().parse::<f32>().is_ok_and(|q| q > 0.0),
                None => true,
            }
        })
    })
}

/// nginx answers a directory requested without its trailing slash with a 301 to the slashed URL.
fn redirect_to_dir(req: &Parts) -> Response<Body> {
    let mut location = format!("{}/", req.uri.path());
    if let Some(q) = req.uri.query() {
        location.push('?');
        location.push_str(q);
    }
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::accepts;

    #[test]
    fn accept_encoding() {
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("gzip;q=0.5", "gzip"));
        assert!(!accepts("gzip;q=0", "gzip"));
        assert!(!accepts("gzip", "br"));
        assert!(accepts("*", "br"));
        assert!(!accepts("identity", "gzip"));
    }
}
