//! Serde stops at the first error in a file; this keeps going, so `fieldbridge check` reports a
//! type error or an unknown key together with every other problem of the file.
//!
//! After each serde error, the offending key (with its value and everything under it) is
//! overwritten with spaces in a working copy of the text and the parse is tried again. Blanking
//! keeps every byte offset and line number of the rest of the file, so later errors, and the
//! validation issues of the finally parsed config, are located exactly as in the original file.
//! Issues under a blanked key are consequences of the first error and are dropped.

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

use crate::config::locate::{locate_serde, path_at_offset, Issue, KeyPath, Located, Seg};

/// More serde errors than this in one file are not worth listing one by one.
const MAX_ERRORS: usize = 32;

/// The outcome of parsing with recovery: the value of what remained (if anything parsed),
/// the text it was parsed from (same lines as the input), and the serde problems on the way.
pub struct Recovered<T> {
    pub value: Option<T>,
    pub text: String,
    pub problems: Vec<Located>,
    blanked: Vec<KeyPath>,
}

impl<T> Recovered<T> {
    /// Drops validation issues about keys that were blanked: they only echo a serde problem
    /// already reported (a key that was removed now looks missing or defaulted).
    pub fn keep_independent(&self, issues: Vec<Issue>) -> Vec<Issue> {
        issues
            .into_iter()
            .filter(|i| !self.blanked.iter().any(|b| i.path.0.starts_with(&b.0)))
            .collect()
    }
}

/// Parses `src` as `T`, reporting every serde error it can get past (see the module note).
pub fn parse<T: DeserializeOwned>(src: &str) -> Recovered<T> {
    let mut text = src.to_string();
    let mut problems = Vec::new();
    let mut blanked: Vec<KeyPath> = Vec::new();
    let value = loop {
        let e = match toml::from_str::<T>(&text) {
            Ok(v) => break Some(v),
            Err(e) => e,
        };
        let located = locate_serde(&text, &e);
        let missing = e.message().trim().starts_with("missing field `");
        // A key that had to be blanked is now missing: that was reported with the first error.
        let echo = missing && blanked.iter().any(|b| b.to_string() == located.key);
        if !echo {
            problems.push(located);
        }
        let Some(span) = e.span() else { break None };
        if missing || problems.len() >= MAX_ERRORS {
            break None;
        }
        let path = blankable(path_at_offset(&text, span.start));
        if path.0.is_empty() {
            break None;
        }
        let unknown = e.message().trim().starts_with("unknown field");
        let next = if unknown {
            None
        } else {
            substitute::<T>(&text, &path)
        };
        match next.or_else(|| blank(&text, &path)) {
            Some(next) => {
                text = next;
                blanked.push(path);
            }
            None => break None,
        }
    };
    // Serde reports unknown keys before type errors; the reader wants the file's order.
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    Recovered {
        value,
        text,
        problems,
        blanked,
    }
}

/// The key to remove for an error at `path`: an element of an inline array cannot be cut out
/// and still leave valid TOML, so the whole array goes.
fn blankable(mut path: KeyPath) -> KeyPath {
    while matches!(path.0.last(), Some(Seg::Index(_))) {
        path.0.pop();
    }
    path
}

/// Values of each TOML type, tried in turn in place of a value of the wrong type: a required
/// key keeps a value (so it is not reported missing as well) and parsing gets past it.
const PLACEHOLDERS: [&str; 6] = ["0", "\"\"", "false", "0.0", "[]", "{}"];

/// `src` with the value of the key at `path` replaced by the first placeholder that serde
/// accepts there; `None` if none fits in the place of the old `key = value`.
fn substitute<T: DeserializeOwned>(src: &str, path: &KeyPath) -> Option<String> {
    let doc = DeTable::parse(src).ok()?;
    let (ks, vs) = find(doc.get_ref(), &KeyPath::root(), path)?;
    let key = src.get(ks.clone())?;
    let (start, end) = (ks.start, vs.end.max(ks.end));
    let room = src.get(start..end)?.split('\n').next()?.len();
    for ph in PLACEHOLDERS {
        let head = format!("{key}={ph}");
        if head.len() > room {
            continue;
        }
        let mut bytes = src.as_bytes().to_vec();
        for (i, b) in bytes[start..end].iter_mut().enumerate() {
            if let Some(h) = head.as_bytes().get(i) {
                *b = *h;
            } else if *b != b'\n' {
                *b = b' ';
            }
        }
        let Ok(out) = String::from_utf8(bytes) else {
            continue;
        };
        match toml::from_str::<T>(&out) {
            Ok(_) => return Some(out),
            Err(e) => {
                let again = e
                    .span()
                    .is_some_and(|s| blankable(path_at_offset(&out, s.start)) == *path);
                if !again && toml::from_str::<toml::Table>(&out).is_ok() {
                    return Some(out);
                }
            }
        }
    }
    None
}

/// The key and value spans of the scalar or inline value at `path`.
fn find(
    t: &DeTable,
    at: &KeyPath,
    path: &KeyPath,
) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    for (k, v) in t.iter() {
        let p = at.key(k.get_ref());
        if p == *path {
            // A table's span is its header: nothing to put a value into.
            if matches!(v.get_ref(), DeValue::Table(_)) || v.span().start < k.span().end {
                return None;
            }
            return Some((k.span(), v.span()));
        }
        if !path.0.starts_with(&p.0) {
            continue;
        }
        match v.get_ref() {
            DeValue::Table(inner) => return find(inner, &p, path),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        if let Some(r) = find(inner, &p.index(i), path) {
                            return Some(r);
                        }
                    }
                }
                return None;
            }
            _ => return None,
        }
    }
    None
}

/// `src` with the key at `path`, its value and every key below it overwritten with spaces
/// (newlines kept). `None` when that changes nothing or would leave text that is not TOML.
fn blank(src: &str, path: &KeyPath) -> Option<String> {
    let doc = DeTable::parse(src).ok()?;
    let mut ranges = Vec::new();
    collect(doc.get_ref(), &KeyPath::root(), path, &mut ranges);
    let mut bytes = src.as_bytes().to_vec();
    let mut changed = false;
    for (start, end) in ranges {
        for b in bytes.get_mut(start..end.min(src.len()))? {
            if *b != b'\n' && *b != b' ' {
                *b = b' ';
                changed = true;
            }
        }
    }
    // Every byte of a multi-byte character is blanked together (spans are on character
    // boundaries), so the text stays UTF-8; checked anyway rather than assumed.
    let out = String::from_utf8(bytes).ok()?;
    (changed && toml::from_str::<toml::Table>(&out).is_ok()).then_some(out)
}

/// Byte ranges of `target` and of everything below it, in `t` (whose own path is `at`).
fn collect(t: &DeTable, at: &KeyPath, target: &KeyPath, out: &mut Vec<(usize, usize)>) {
    for (k, v) in t.iter() {
        let p = at.key(k.get_ref());
        let inside = p.0.starts_with(&target.0);
        if !inside && !target.0.starts_with(&p.0) {
            continue;
        }
        if inside {
            let (ks, vs) = (k.span(), v.span());
            out.push((ks.start.min(vs.start), ks.end.max(vs.end)));
        }
        match v.get_ref() {
            DeValue::Table(inner) => collect(inner, &p, target, out),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let ip = p.index(i);
                    if inside {
                        out.push((item.span().start, item.span().end));
                    }
                    if let DeValue::Table(inner) = item.get_ref() {
                        collect(inner, &ip, target, out);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        count: Option<i64>,
        #[serde(default)]
        items: Vec<Item>,
    }
    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        id: i64,
        label: Option<String>,
    }

    #[test]
    fn every_serde_error_of_a_text_is_reported_with_its_line() {
        // (text, the lines reported, whether what remains parses)
        let cases: &[(&str, &[usize], bool)] = &[
            ("name = \"a\"\n", &[], true),
            ("name = \"a\"\ncount = \"x\"\nbogus = 1\n", &[2, 3], true),
            (
                "name = \"a\"\n[[items]]\nid = 1\nlabl = \"x\"\n[[items]]\nid = 2\nlabel = 3\n",
                &[4, 7],
                true,
            ),
            // a required key with the wrong type: reported once, not again as missing, and it
            // keeps a placeholder value so the rest is still parsed
            ("name = 5\ncount = \"x\"\n", &[1, 2], true),
            ("count = 1\n", &[1], false),
            // an unknown table goes with everything in it
            ("name = \"a\"\n[extra]\nx = 1\ny = [1,\n 2]\n", &[2], true),
            (
                "name = \"é\"\n\"nöpe\" = \"ü\"\ncount = 1.5\n",
                &[2, 3],
                true,
            ),
        ];
        for (text, lines, parses) in cases {
            let r = parse::<Doc>(text);
            let got: Vec<usize> = r.problems.iter().filter_map(|p| p.line).collect();
            assert_eq!(&got, lines, "{text:?}: {:#?}", r.problems);
            assert_eq!(r.value.is_some(), *parses, "{text:?}");
            assert_eq!(r.text.lines().count(), text.lines().count(), "{text:?}");
        }
    }
}
