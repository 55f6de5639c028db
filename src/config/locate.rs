//! Maps between key paths (`devices[1].points[0].address`) and lines of the TOML source.
//!
//! Validation works on plain structs and knows only key paths; serde errors know only byte
//! offsets. Both are turned into "file:line: key" messages here, from one spanned parse of the
//! same source text, so neither side has to carry spans around.

use std::fmt;
use std::path::PathBuf;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path into the configuration document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// 1-based line number of a byte offset.
pub fn line_of_offset(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The line where `path` is written: the key itself for a key, or the table header for an
/// array element. Falls back to the deepest existing ancestor, so a missing key points at the
/// table that should hold it.
pub fn line_of_path(src: &str, path: &KeyPath) -> Option<usize> {
    let doc = DeTable::parse(src).ok()?;
    line_in(src, doc.get_ref(), path)
}

/// `line_of_path` in an already parsed document (one parse for all issues of a file).
fn line_in(src: &str, doc: &DeTable, path: &KeyPath) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut table: Option<&DeTable> = Some(doc);
    let mut value: Option<&Spanned<DeValue>> = None;
    for seg in &path.0 {
        match seg {
            Seg::Key(k) => {
                let t = match (table, value) {
                    (Some(t), None) => t,
                    (_, Some(v)) => match v.get_ref() {
                        DeValue::Table(t) => t,
                        _ => break,
                    },
                    _ => break,
                };
                let Some((key, v)) = t.iter().find(|(key, _)| key.get_ref().as_ref() == k) else {
                    break;
                };
                best = Some(key.span().start);
                table = None;
                value = Some(v);
            }
            Seg::Index(i) => {
                let Some(DeValue::Array(items)) = value.map(|v| v.get_ref()) else {
                    break;
                };
                let Some(item) = items.get(*i) else { break };
                best = Some(item.span().start);
                value = Some(item);
            }
        }
    }
    best.map(|o| line_of_offset(src, o))
}

/// The key path of the most specific key whose key or value covers `offset` (used to name the
/// key of a serde error, which only knows its byte range). Spans of array-of-table items cover
/// only their `[[header]]`, so the whole tree is flattened and the narrowest match wins.
pub fn path_at_offset(src: &str, offset: usize) -> KeyPath {
    let Ok(doc) = DeTable::parse(src) else {
        return KeyPath::root();
    };
    let mut entries = Vec::new();
    flatten(doc.get_ref(), &KeyPath::root(), &mut entries);
    entries
        .into_iter()
        .filter(|(_, start, end)| *start <= offset && offset < *end)
        .min_by_key(|(_, start, end)| end - start)
        .map(|(p, _, _)| p)
        .unwrap_or_default()
}

fn flatten(t: &DeTable, path: &KeyPath, out: &mut Vec<(KeyPath, usize, usize)>) {
    for (k, v) in t.iter() {
        let p = path.key(k.get_ref());
        let (ks, vs) = (k.span(), v.span());
        out.push((p.clone(), ks.start.min(vs.start), ks.end.max(vs.end)));
        match v.get_ref() {
            DeValue::Table(inner) => flatten(inner, &p, out),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let ip = p.index(i);
                    out.push((ip.clone(), item.span().start, item.span().end));
                    if let DeValue::Table(inner) = item.get_ref() {
                        flatten(inner, &ip, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// One problem found in a config, before it is located in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub path: KeyPath,
    pub message: String,
}

/// A problem with its place in the file.
#[derive(Debug, Clone)]
pub struct Located {
    /// Set when the problem is in another file than the config (a device profile).
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

pub fn locate_all(src: &str, issues: Vec<Issue>) -> Vec<Located> {
    let doc = DeTable::parse(src).ok();
    issues
        .into_iter()
        .map(|i| Located {
            file: None,
            line: doc
                .as_ref()
                .and_then(|d| line_in(src, d.get_ref(), &i.path)),
            key: i.path.to_string(),
            message: i.message,
        })
        .collect()
}

/// Problems as a reader goes through the files: the config's own first, by line, then each
/// profile file's, by line. Problems without a line come last in their file.
pub fn in_line_order(mut all: Vec<Located>) -> Vec<Located> {
    all.sort_by(|a, b| {
        (&a.file, a.line.unwrap_or(usize::MAX)).cmp(&(&b.file, b.line.unwrap_or(usize::MAX)))
    });
    all
}

pub fn locate_serde(src: &str, e: &toml::de::Error) -> Located {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let mut key = path_at_offset(src, span.start).to_string();
            // "missing field `x`": the span covers the table that lacks it; name the full key.
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
            {
                key = if key.is_empty() {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
            }
            Located {
                file: None,
                line: Some(line_of_offset(src, span.start)),
                key,
                message,
            }
        }
        None => Located {
            file: None,
            line: None,
            key: String::new(),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "[gateway]\nid = \"gw\"\n\n[[devices]]\nname = \"a\"\n\n[[devices]]\nname = \"b\"\nport = 70000\n\n[[devices.points]]\nname = \"p\"\naddress = 5\n";

    #[test]
    fn key_paths_resolve_to_the_line_that_writes_them() {
        let cases: &[(KeyPath, Option<usize>)] = &[
            (KeyPath::root().key("gateway").key("id"), Some(2)),
            (KeyPath::root().key("devices").index(1).key("port"), Some(9)),
            (
                KeyPath::root()
                    .key("devices")
                    .index(1)
                    .key("points")
                    .index(0)
                    .key("address"),
                Some(13),
            ),
            // a missing key points at the [[header]] of the table that should hold it
            (KeyPath::root().key("devices").index(0).key("host"), Some(4)),
            (KeyPath::root().key("nothing"), None),
        ];
        for (path, line) in cases {
            assert_eq!(line_of_path(SRC, path), *line, "{path}");
        }
    }

    #[test]
    fn an_offset_inside_a_value_names_its_key_path() {
        let off = SRC.find("70000").unwrap();
        assert_eq!(path_at_offset(SRC, off).to_string(), "devices[1].port");
        let off = SRC.find("address").unwrap();
        assert_eq!(
            path_at_offset(SRC, off).to_string(),
            "devices[1].points[0].address"
        );
    }

    #[test]
    fn key_paths_display_like_toml_dotted_keys_with_indices() {
        let p = KeyPath::root().key("devices").index(2).key("name");
        assert_eq!(p.to_string(), "devices[2].name");
    }
}
