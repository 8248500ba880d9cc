//! The request's header fields, fetched from the host in one call.
//!
//! A lookup reads up to eight request fields (`Cache-Control`, `Pragma`, `Authorization`, the
//! conditionals, `Range`, the `Vary` names); one `headers` call costs less than eight `header`
//! calls, each a trip through the component boundary, even when the client sent many fields.

use gatehouse_sdk::Request;

/// A request's header fields (names in lower case, as the host gives them).
pub struct Fields(Vec<(String, Vec<u8>)>);

impl Fields {
    /// The request's fields as they are now.
    pub fn of(req: &Request) -> Fields {
        Fields(req.headers())
    }

    /// Every value of a field, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of a field.
    pub fn first(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets a field, replacing its values (what a request will carry when forwarded).
    pub fn set(&mut self, name: &str, value: Vec<u8>) {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_string(), value));
    }

    /// Every value of a field, owned.
    pub fn all_owned(&self, name: &str) -> Vec<Vec<u8>> {
        self.all(name).map(<[u8]>::to_vec).collect()
    }
}
