//! Small files kept in memory for a moment (nginx's `open_file_cache`, holding the bytes).
//!
//! Serving a file from disk costs four system calls before the first byte is sent (`openat2`,
//! `statx`, `read`, `close`); nginx keeps descriptors open and hands them to `sendfile`. Hyper writes
//! bytes, not descriptors, so this cache keeps the *contents* of small files instead, for at most
//! `file_cache_valid`: a file changed on disk is served in its new version after that at the latest
//! (nginx's `open_file_cache_valid`, default 60 s there). Entries are only ever made from a file
//! that was opened beneath the root, so a hit decides nothing the miss did not decide first.
//! `quick_cache` bounds the total by weight (the bytes held) and evicts by its S3-FIFO policy.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quick_cache::Equivalent;

use super::validators::Version;

/// What a cache entry answers: one file (or its precompressed sibling) as a client with that
/// `Accept-Encoding` gets it.
#[derive(Debug)]
pub(super) struct Cached {
    /// The whole file.
    pub bytes: Bytes,
    /// Its length and modification time, for validators and ranges.
    pub version: Version,
    /// `Content-Type`.
    pub mime: &'static str,
    /// `Content-Encoding` of a precompressed sibling.
    pub encoding: Option<&'static str>,
    made: Instant,
}

/// A URL path below the mount (as the request spelt it, after the front normalised it) and which
/// precompressed codings the client accepts: two clients that differ in neither get the same file.
#[derive(Debug, PartialEq, Eq)]
struct Key {
    path: Box<str>,
    accepts: u8,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        KeyRef(&self.path, self.accepts).hash(state);
    }
}

/// The borrowed form a lookup uses, so a hit allocates nothing.
#[derive(Hash)]
struct KeyRef<'a>(&'a str, u8);

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *key.path == *self.0 && key.accepts == self.1
    }
}

/// Weight of an entry: its bytes plus what the entry itself and its key cost.
#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<Key, Arc<Cached>> for Weight {
    fn weight(&self, key: &Key, val: &Arc<Cached>) -> u64 {
        (val.bytes.len() + key.path.len() + ENTRY_OVERHEAD) as u64
    }
}

/// Bytes an entry costs besides the file: the map slot, the `Arc`, the key's box.
const ENTRY_OVERHEAD: usize = 160;

/// The largest file kept is this fraction of the whole cache, so one file never evicts most of it.
const LARGEST_FILE_SHARE: u64 = 8;

/// The cache of one `static` target.
pub(super) struct FileCache {
    map: quick_cache::sync::Cache<Key, Arc<Cached>, Weight>,
    valid: Duration,
    largest: u64,
}

impl std::fmt::Debug for FileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCache")
            .field("entries", &self.map.len())
            .field("bytes", &self.map.weight())
            .field("valid", &self.valid)
            .finish()
    }
}

impl FileCache {
    /// A cache of at most `capacity` bytes whose entries live `valid`; `None` when either is zero.
    pub(super) fn new(capacity: u64, valid: Duration) -> Option<FileCache> {
        if capacity == 0 || valid.is_zero() {
            return None;
        }
        // A guess at the number of entries only sizes the map up front; the weight is the bound.
        let estimated = (capacity / 8192).clamp(16, 65_536) as usize;
        Some(FileCache {
            map: quick_cache::sync::Cache::with_weighter(estimated, capacity, Weight),
            valid,
            largest: capacity / LARGEST_FILE_SHARE,
        })
    }

    /// Whether a file of `len` bytes is small enough to keep.
    pub(super) fn fits(&self, len: u64) -> bool {
        len <= self.largest
    }

    /// The entry for `path` and `accepts`, if it is still fresh.
    pub(super) fn get(&self, path: &str, accepts: u8) -> Option<Arc<Cached>> {
        let hit = self.map.get(&KeyRef(path, accepts))?;
        (hit.made.elapsed() < self.valid).then_some(hit)
    }

    /// Keeps a file just read; returns the entry to answer from.
    pub(super) fn insert(
        &self,
        path: &str,
        accepts: u8,
        bytes: Bytes,
        version: Version,
        mime: &'static str,
        encoding: Option<&'static str>,
    ) -> Arc<Cached> {
        let entry = Arc::new(Cached {
            bytes,
            version,
            mime,
            encoding,
            made: Instant::now(),
        });
        self.map.insert(
            Key {
                path: path.into(),
                accepts,
            },
            Arc::clone(&entry),
        );
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(len: u64) -> Version {
        Version { len, mtime: 1 }
    }

    #[test]
    fn entries_expire_and_the_weight_is_bounded() {
        let cache = FileCache::new(64 * 1024, Duration::from_millis(50)).expect("enabled");
        assert!(cache.fits(8 * 1024) && !cache.fits(8 * 1024 + 1));
        cache.insert(
            "/a",
            0,
            Bytes::from_static(b"a"),
            version(1),
            "text/plain",
            None,
        );
        assert!(cache.get("/a", 0).is_some());
        assert!(
            cache.get("/a", 1).is_none(),
            "another Accept-Encoding is another entry"
        );
        assert!(cache.get("/b", 0).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            cache.get("/a", 0).is_none(),
            "past `valid` an entry is not used"
        );

        let piece = Bytes::from(vec![0u8; 8 * 1024]);
        for i in 0..100 {
            cache.insert(
                &format!("/f{i}"),
                0,
                piece.clone(),
                version(8192),
                "x/y",
                None,
            );
        }
        assert!(cache.map.weight() <= 64 * 1024, "{}", cache.map.weight());
    }

    #[test]
    fn zero_turns_it_off() {
        assert!(FileCache::new(0, Duration::from_secs(1)).is_none());
        assert!(FileCache::new(1024, Duration::ZERO).is_none());
    }
}
