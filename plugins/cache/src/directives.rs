//! `Cache-Control` and `Surrogate-Control` field values: comma-separated directives, each a token
//! with an optional `=` and a token or quoted-string value (RFC 9111 section 5.2, RFC 9110
//! section 5.6), over all the field's lines.
//!
//! Parsed strictly, because the lenient reading is the unsafe one: `max-age` inside another
//! directive's quoted value is not a `max-age`, `max-age = 5` (spaces) and `max-age='5'` are not
//! valid values, and a directive given twice with different values counts as invalid (the response
//! is then treated as stale, which RFC 9111 section 4.2.1 allows).

/// One directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The name, in lower case.
    pub name: String,
    /// The value.
    pub value: Value,
    /// `;device` after the value (Surrogate-Control's targeting), if any.
    pub target: Option<String>,
}

/// A directive's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// No `=`.
    None,
    /// A token or the contents of a quoted string.
    Text(String),
    /// Something that is neither (stray spaces, characters after the value).
    Malformed,
}

/// The directives of one field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    items: Vec<Directive>,
}

/// The largest delta-seconds value kept (RFC 9111 section 1.2.2: 2^31, for larger values too).
pub const MAX_DELTA_SECONDS: u64 = 2_147_483_648;

impl Directives {
    /// Parses every line of a field.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Directives {
        let mut items = Vec::new();
        for line in lines {
            parse_line(line, &mut items);
        }
        Directives { items }
    }

    /// Directives already parsed (a subset of another field's).
    pub fn from_items(items: Vec<Directive>) -> Directives {
        Directives { items }
    }

    /// Whether a directive is present (any value).
    pub fn has(&self, name: &str) -> bool {
        self.items.iter().any(|d| d.name == name)
    }

    /// The directives, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Directive> {
        self.items.iter()
    }

    /// A delta-seconds directive (`max-age=60`): `None` if absent; `Some(None)` if its value is
    /// not valid, or it is given twice with different values.
    pub fn seconds(&self, name: &str) -> Option<Option<u64>> {
        seconds_of(self.items.iter().filter(|d| d.name == name))
    }

    /// Whether there are no directives.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The seconds of some occurrences of one directive; see [`Directives::seconds`].
pub fn seconds_of<'a>(mut found: impl Iterator<Item = &'a Directive>) -> Option<Option<u64>> {
    let first = found.next()?;
    let value = delta_seconds(&first.value);
    for other in found {
        if delta_seconds(&other.value) != value {
            return Some(None);
        }
    }
    Some(value)
}

/// `1*DIGIT`, capped at [`MAX_DELTA_SECONDS`].
fn delta_seconds(value: &Value) -> Option<u64> {
    let Value::Text(text) = value else {
        return None;
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: u64 = 0;
    for b in text.bytes() {
        n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
        if n > MAX_DELTA_SECONDS {
            return Some(MAX_DELTA_SECONDS);
        }
    }
    Some(n)
}

/// A token character (RFC 9110 section 5.6.2).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn parse_line(line: &[u8], items: &mut Vec<Directive>) {
    let mut i = 0;
    let n = line.len();
    while i < n {
        while i < n && (is_ows(line[i]) || line[i] == b',') {
            i += 1;
        }
        if i >= n {
            break;
        }
        let start = i;
        while i < n && is_tchar(line[i]) {
            i += 1;
        }
        if i == start {
            // Not a directive: skip to the next comma outside a quoted string.
            i = skip_element(line, i);
            continue;
        }
        let name = String::from_utf8_lossy(&line[start..i]).to_ascii_lowercase();
        let mut value = Value::None;
        if i < n && line[i] == b'=' {
            i += 1;
            if i < n && line[i] == b'"' {
                match quoted(line, i) {
                    Some((text, end)) => {
                        value = Value::Text(text);
                        i = end;
                    }
                    None => {
                        value = Value::Malformed;
                        i = n;
                    }
                }
            } else {
                let vstart = i;
                while i < n && is_tchar(line[i]) {
                    i += 1;
                }
                value = if i == vstart {
                    Value::Malformed
                } else {
                    Value::Text(String::from_utf8_lossy(&line[vstart..i]).into_owned())
                };
            }
        }
        let mut target = None;
        if i < n && line[i] == b';' {
            let tstart = i + 1;
            let mut j = tstart;
            while j < n && is_tchar(line[j]) {
                j += 1;
            }
            target = Some(String::from_utf8_lossy(&line[tstart..j]).to_ascii_lowercase());
            i = j;
        }
        // Only optional whitespace may follow, up to the comma.
        let mut j = i;
        while j < n && is_ows(line[j]) {
            j += 1;
        }
        if j < n && line[j] != b',' {
            value = Value::Malformed;
            j = skip_element(line, j);
        }
        i = j;
        items.push(Directive {
            name,
            value,
            target,
        });
    }
}

/// The contents of the quoted string starting at `line[start]` (a `"`), unescaped, and the index
/// after its closing quote; `None` if it never closes.
fn quoted(line: &[u8], start: usize) -> Option<(String, usize)> {
    let mut out = Vec::new();
    let mut i = start + 1;
    while i < line.len() {
        match line[i] {
            b'"' => return Some((String::from_utf8_lossy(&out).into_owned(), i + 1)),
            b'\\' if i + 1 < line.len() => {
                out.push(line[i + 1]);
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    None
}

/// The index of the next comma at or after `i` that is not inside a quoted string.
fn skip_element(line: &[u8], mut i: usize) -> usize {
    while i < line.len() && line[i] != b',' {
        if line[i] == b'"' {
            match quoted(line, i) {
                Some((_, end)) => i = end,
                None => return line.len(),
            }
        } else {
            i += 1;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(lines: &[&str]) -> Directives {
        Directives::parse(lines.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn tokens_quoted_strings_and_case() {
        let d = cc(&["MaX-AgE=003600, no-cache=\"set-cookie, a\"", "public"]);
        assert_eq!(d.seconds("max-age"), Some(Some(3600)));
        assert!(d.has("no-cache") && d.has("public"));
        assert_eq!(d.seconds("s-maxage"), None);
    }

    #[test]
    fn max_age_inside_a_quoted_value_is_not_a_directive() {
        let d = cc(&["extension=\"max-age=3600\", max-age=1"]);
        assert_eq!(d.seconds("max-age"), Some(Some(1)));
        let d = cc(&["max-age=\"1\", extension=\"max-age=3600\""]);
        assert_eq!(d.seconds("max-age"), Some(Some(1)));
    }

    #[test]
    fn bad_values_are_invalid() {
        assert_eq!(cc(&["max-age='3600'"]).seconds("max-age"), Some(None));
        assert_eq!(cc(&["max-age=-1"]).seconds("max-age"), Some(None));
        assert_eq!(cc(&["max-age =100"]).seconds("max-age"), Some(None));
        assert_eq!(cc(&["max-age= 100"]).seconds("max-age"), Some(None));
        assert_eq!(cc(&["max-age=1.5"]).seconds("max-age"), Some(None));
        assert_eq!(
            cc(&["max-age=1", "max-age=3600"]).seconds("max-age"),
            Some(None)
        );
        assert_eq!(
            cc(&["max-age=5, max-age=5"]).seconds("max-age"),
            Some(Some(5))
        );
    }

    #[test]
    fn huge_values_are_capped() {
        assert_eq!(
            cc(&["max-age=99999999999"]).seconds("max-age"),
            Some(Some(MAX_DELTA_SECONDS))
        );
    }

    #[test]
    fn surrogate_targets() {
        let d = cc(&["max-age=3600;gatehouse, no-store;other"]);
        let items: Vec<_> = d.iter().collect();
        assert_eq!(items[0].target.as_deref(), Some("gatehouse"));
        assert_eq!(items[1].name, "no-store");
        assert_eq!(items[1].target.as_deref(), Some("other"));
    }
}
