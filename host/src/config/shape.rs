//! Every type and unknown-key error of a file at once, though serde stops at the first.

use serde_path_to_error::Segment;

use super::errors::{ConfigError, Doc};
use super::raw::RawConfig;

/// Most type and unknown-key errors reported from one file before giving up.
pub(super) const MAX_SHAPE_ERRORS: usize = 50;

/// Deserializes the document, collecting every type and unknown-key error: serde stops at the
/// first, so each error's entry is taken out of the parsed document (whose values keep their
/// spans in the text) and the rest is deserialized again. A required key taken out gets a
/// stand-in of each basic shape until one fits. A syntax error stops at once (nothing after it can
/// be trusted). Returns the keys taken out with the config, so that their values get no second
/// error from validation.
pub(super) fn deserialize_all(
    doc: &Doc<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<(RawConfig, Vec<String>)> {
    let mut table = match toml::de::DeTable::parse(doc.text) {
        Ok(table) => table,
        Err(e) => {
            errors.push(doc.toml_error("", &e));
            return None;
        }
    };
    let mut removed: Vec<(String, std::ops::Range<usize>, usize)> = Vec::new();
    for _ in 0..MAX_SHAPE_ERRORS {
        let deserializer = toml::de::Deserializer::from(table.clone());
        let e = match serde_path_to_error::deserialize::<_, RawConfig>(deserializer) {
            Ok(raw) => return Some((raw, removed.into_iter().map(|(k, _, _)| k).collect())),
            Err(e) => e,
        };
        let key = user_key(e.path());
        let message = e.inner().message().trim().to_string();
        let steps = steps(e.path());
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'));
        if let Some(field) = missing {
            let full = join_key(&key, field);
            if let Some((_, span, tried)) = removed.iter_mut().find(|(k, _, _)| *k == full) {
                // Taken out by us: try the next stand-in.
                let value = stand_in(*tried)?;
                *tried += 1;
                let Some(Node::Table(parent)) = walk(table.get_mut(), &steps) else {
                    return None;
                };
                parent.insert(
                    toml::Spanned::new(span.clone(), std::borrow::Cow::Owned(field.to_string())),
                    toml::Spanned::new(span.clone(), value),
                );
                continue;
            }
        }
        let span = e.inner().span().unwrap_or(0..0);
        errors.push(doc.error(span.clone(), &key, message));
        let (last, parents) = steps.split_last()?;
        let taken = match walk(table.get_mut(), parents) {
            Some(Node::Table(t)) => match last {
                Segment::Map { key } => t.remove(key.as_str()).is_some(),
                _ => false,
            },
            Some(Node::Array(a)) => match last {
                Segment::Seq { index } if *index < a.len() => {
                    let old = std::mem::replace(a, toml::de::DeArray::new());
                    for (i, item) in old.iter().enumerate() {
                        if i != *index {
                            a.push(item.clone());
                        }
                    }
                    true
                }
                _ => false,
            },
            None => false,
        };
        if !taken {
            return None;
        }
        removed.push((key, span, 0));
    }
    None
}

/// A value of each basic shape, for a required key whose own value was wrong.
pub(super) fn stand_in(n: usize) -> Option<toml::de::DeValue<'static>> {
    use toml::de::DeValue;
    Some(match n {
        0 => DeValue::Array(toml::de::DeArray::new()),
        1 => DeValue::Table(toml::de::DeTable::new()),
        2 => DeValue::String(std::borrow::Cow::Borrowed("")),
        3 => DeValue::Boolean(false),
        _ => return None,
    })
}

pub(super) fn join_key(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

/// The table and array steps of a serde path, without the private fields through which `Spanned`
/// values deserialize.
pub(super) fn steps(path: &serde_path_to_error::Path) -> Vec<&Segment> {
    path.iter()
        .filter(|s| match s {
            Segment::Map { key } => !key.starts_with("$__"),
            Segment::Seq { .. } => true,
            Segment::Enum { .. } | Segment::Unknown => false,
        })
        .collect()
}

/// A serde path as the user wrote the key: `server.listen[1]`, not
/// `server.listen.$__serde_spanned_private_value`.
pub(super) fn user_key(path: &serde_path_to_error::Path) -> String {
    let mut key = String::new();
    for segment in steps(path) {
        match segment {
            Segment::Map { key: k } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    key
}

/// A table or an array inside the parsed document.
pub(super) enum Node<'a, 'i> {
    Table(&'a mut toml::de::DeTable<'i>),
    Array(&'a mut toml::de::DeArray<'i>),
}

/// The table or array at the end of `steps`.
pub(super) fn walk<'a, 'i>(
    table: &'a mut toml::de::DeTable<'i>,
    steps: &[&Segment],
) -> Option<Node<'a, 'i>> {
    use toml::de::DeValue;
    let mut node = Node::Table(table);
    for step in steps {
        let value = match (node, step) {
            (Node::Table(t), Segment::Map { key }) => t.get_mut(key.as_str()),
            (Node::Array(a), Segment::Seq { index }) => a.get_mut(*index),
            _ => None,
        };
        node = match value.map(toml::Spanned::get_mut)? {
            DeValue::Table(t) => Node::Table(t),
            DeValue::Array(a) => Node::Array(a),
            _ => return None,
        };
    }
    Some(node)
}

/// Whether `key` is `removed` or inside it.
pub(super) fn within(key: &str, removed: &str) -> bool {
    key.strip_prefix(removed)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}
