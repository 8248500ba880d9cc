//! A stored response and its byte form in the host's key-value store.
//!
//! A small length-prefixed layout rather than JSON: header values are bytes (JSON would spell each
//! one as an array of numbers) and the body goes at the end, copied once.

/// A response as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The URL it answers (checked on lookup).
    pub url: String,
    /// The status code.
    pub status: u16,
    /// The header fields to send (without hop-by-hop fields and `Age`).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The `Age` the response arrived with, in seconds (0 if absent); `None` if it was not valid,
    /// which makes the response stale.
    pub age_value: Option<u64>,
    /// When the request that fetched it was sent on, in milliseconds since the epoch.
    pub request_time: u64,
    /// When its response arrived.
    pub response_time: u64,
    /// The body.
    pub body: Vec<u8>,
}

const MAGIC: &[u8; 4] = b"GHC1";

impl Entry {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of a header.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Whether stored bytes are an entry (and not, say, an index of `Vary` names, which are
    /// lower case and so never start with the magic).
    pub fn is_entry(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }

    /// The bytes to store.
    pub fn encode(&self) -> Vec<u8> {
        let meta: usize = self
            .headers
            .iter()
            .map(|(n, v)| 6 + n.len() + v.len())
            .sum();
        let mut out = Vec::with_capacity(64 + self.url.len() + meta + self.body.len());
        out.extend_from_slice(MAGIC);
        put_bytes(&mut out, self.url.as_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&self.age_value.unwrap_or(u64::MAX).to_le_bytes());
        out.extend_from_slice(&self.request_time.to_le_bytes());
        out.extend_from_slice(&self.response_time.to_le_bytes());
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in &self.headers {
            put_bytes(&mut out, name.as_bytes());
            put_bytes(&mut out, value);
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// An entry from stored bytes; `None` if they are not one (another version, a damaged value).
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return None;
        }
        let url = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        let status = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let age = r.u64()?;
        let request_time = r.u64()?;
        let response_time = r.u64()?;
        let count = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let mut headers = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let name = String::from_utf8(r.bytes()?.to_vec()).ok()?;
            let value = r.bytes()?.to_vec();
            headers.push((name, value));
        }
        Some(Entry {
            url,
            status,
            headers,
            age_value: (age != u64::MAX).then_some(age),
            request_time,
            response_time,
            body: bytes[r.at..].to_vec(),
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_store_and_damage_is_refused() {
        let entry = Entry {
            url: "http://x/a?b".into(),
            status: 200,
            headers: vec![
                ("etag".into(), b"\"1\"".to_vec()),
                ("x-bin".into(), vec![0xff, 0]),
            ],
            age_value: None,
            request_time: 1,
            response_time: 2,
            body: b"hello".to_vec(),
        };
        let bytes = entry.encode();
        assert_eq!(Entry::decode(&bytes), Some(entry.clone()));
        assert_eq!(Entry::decode(&bytes[..10]), None);
        assert_eq!(Entry::decode(b"nope"), None);
        let fresh = Entry {
            age_value: Some(5),
            ..entry
        };
        assert_eq!(Entry::decode(&fresh.encode()), Some(fresh));
    }
}
