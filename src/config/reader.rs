//! Span-aware reading of one TOML section into typed values.
//!
//! Every getter either returns a value or records a [`ConfigProblem`] naming the dotted key and
//! the 1-based line of the offending key or value, then returns `None` so the caller keeps the
//! default and carries on: one pass reports every problem in the file. Lines come from the byte
//! spans `toml_edit::ImDocument` keeps; a missing span falls back to the section's line.

use std::borrow::Cow;
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use toml_edit::{Item, TableLike};

use super::ConfigProblem;

/// The longest duration any key accepts; beyond a day is certainly a typo ("10d" for "10s").
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The problems found so far, and the text their spans point into.
pub(super) struct Problems<'t> {
    text: &'t str,
    list: Vec<ConfigProblem>,
}

impl<'t> Problems<'t> {
    /// An empty list over `text`.
    pub(super) fn new(text: &'t str) -> Self {
        Problems {
            text,
            list: Vec::new(),
        }
    }

    /// The 1-based line of a byte span's start, if there is a span.
    pub(super) fn line_at(&self, span: Option<Range<usize>>) -> Option<usize> {
        let start = span?.start.min(self.text.len());
        let newlines = self.text.as_bytes()[..start]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        Some(newlines + 1)
    }

    /// Records one problem.
    pub(super) fn add(&mut self, line: usize, key: String, problem: impl Into<String>) {
        self.list.push(ConfigProblem {
            line,
            key,
            problem: problem.into(),
        });
    }

    /// Every problem, ordered by line (stable, so problems on one line keep their order).
    pub(super) fn into_sorted(mut self) -> Vec<ConfigProblem> {
        self.list.sort_by_key(|p| p.line);
        self.list
    }
}

/// One section (`[server]`, `server = { .. }` or absent) being read.
pub(super) struct Section<'a> {
    name: Cow<'static, str>,
    table: Option<&'a dyn TableLike>,
    line: usize,
}

impl<'a> Section<'a> {
    /// A section named `name`, read from `table` (None: absent, every key takes its default);
    /// `line` is where its header is, used when a problem has no more precise place.
    pub(super) fn new(
        name: impl Into<Cow<'static, str>>,
        table: Option<&'a dyn TableLike>,
        line: usize,
    ) -> Self {
        Section {
            name: name.into(),
            table,
            line,
        }
    }

    /// The dotted key, e.g. `cache.ttl`.
    pub(super) fn dotted(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    /// Whether the file sets `key` in this section.
    pub(super) fn has(&self, key: &str) -> bool {
        self.item(key).is_some()
    }

    /// The line of `key`'s value (or of the key itself), else the section's line.
    pub(super) fn line(&self, p: &Problems<'_>, key: &str) -> usize {
        let Some((k, item)) = self.table.and_then(|t| t.get_key_value(key)) else {
            return self.line;
        };
        p.line_at(item.span())
            .or_else(|| p.line_at(k.span()))
            .unwrap_or(self.line)
    }

    /// Records a problem about `key`, at its line.
    pub(super) fn fail(&self, p: &mut Problems<'_>, key: &str, problem: impl Into<String>) {
        let line = self.line(p, key);
        p.add(line, self.dotted(key), problem);
    }

    /// Reports every key of this section that is not in `known`.
    pub(super) fn reject_unknown(&self, p: &mut Problems<'_>, known: &[&str]) {
        let Some(table) = self.table else { return };
        for (key, item) in table.iter() {
            if known.contains(&key) || item.is_none() {
                continue;
            }
            let span = table
                .key(key)
                .and_then(|k| k.span())
                .or_else(|| item.span());
            let line = p.line_at(span).unwrap_or(self.line);
            p.add(line, self.dotted(key), unknown("key", key, known));
        }
    }

    fn item(&self, key: &str) -> Option<&'a Item> {
        self.table?.get(key).filter(|item| !item.is_none())
    }

    /// A string, or a problem if `key` holds anything else.
    pub(super) fn string(&self, p: &mut Problems<'_>, key: &str) -> Option<&'a str> {
        let item = self.item(key)?;
        let found = item.as_str();
        if found.is_none() {
            self.fail(p, key, "expected a string");
        }
        found
    }

    /// A boolean, or a problem.
    pub(super) fn boolean(&self, p: &mut Problems<'_>, key: &str) -> Option<bool> {
        let item = self.item(key)?;
        let found = item.as_bool();
        if found.is_none() {
            self.fail(p, key, "expected true or false");
        }
        found
    }

    /// An integer within `range`, or a problem that states the range.
    pub(super) fn integer<T: TryFrom<i64>>(
        &self,
        p: &mut Problems<'_>,
        key: &str,
        range: RangeInclusive<i64>,
    ) -> Option<T> {
        let item = self.item(key)?;
        let Some(n) = item.as_integer() else {
            self.fail(p, key, "expected an integer");
            return None;
        };
        let in_range = range.contains(&n).then(|| T::try_from(n).ok()).flatten();
        if in_range.is_none() {
            let (low, high) = (range.start(), range.end());
            self.fail(p, key, format!("{n} is out of range {low}..={high}"));
        }
        in_range
    }

    /// A humantime duration (`"10s"`, `"5m"`); zero only when `zero_ok`, at most a day.
    pub(super) fn duration(
        &self,
        p: &mut Problems<'_>,
        key: &str,
        zero_ok: bool,
    ) -> Option<Duration> {
        let item = self.item(key)?;
        let Some(d) = item
            .as_str()
            .and_then(|s| humantime::parse_duration(s).ok())
        else {
            self.fail(p, key, "expected a duration like \"10s\"");
            return None;
        };
        if d.is_zero() && !zero_ok {
            self.fail(p, key, "must be greater than 0s");
            return None;
        }
        if d > MAX_DURATION {
            self.fail(p, key, "must be at most 1day");
            return None;
        }
        Some(d)
    }

    /// An array of strings, each with its own line, or a problem.
    pub(super) fn strings(&self, p: &mut Problems<'_>, key: &str) -> Option<Vec<(&'a str, usize)>> {
        let item = self.item(key)?;
        let all = item.as_array().and_then(|array| {
            array
                .iter()
                .map(|v| Some((v.as_str()?, p.line_at(v.span()).unwrap_or(self.line))))
                .collect::<Option<Vec<_>>>()
        });
        if all.is_none() {
            self.fail(p, key, "expected an array of strings");
        }
        all
    }

    /// An array of tables (`[[edge.route]]`, or an array of inline tables), each with the line
    /// of its header, or a problem.
    pub(super) fn tables(
        &self,
        p: &mut Problems<'_>,
        key: &str,
    ) -> Option<Vec<(&'a dyn TableLike, usize)>> {
        let item = self.item(key)?;
        let at = |span| p.line_at(span).unwrap_or(self.line);
        let all: Option<Vec<(&'a dyn TableLike, usize)>> = match item {
            Item::ArrayOfTables(array) => Some(
                array
                    .iter()
                    .map(|t| (t as &dyn TableLike, at(t.span())))
                    .collect(),
            ),
            Item::Value(v) => v.as_array().and_then(|array| {
                array
                    .iter()
                    .map(|v| Some((v.as_inline_table()? as &dyn TableLike, at(v.span()))))
                    .collect()
            }),
            _ => None,
        };
        if all.is_none() {
            self.fail(p, key, "expected an array of tables");
        }
        all
    }
}

/// "unknown key", with the closest known name when one is a small typo away.
pub(super) fn unknown(what: &str, name: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d);
    match closest {
        Some((_, k)) => format!("unknown {what}; did you mean \"{k}\"?"),
        None => format!("unknown {what}"),
    }
}

/// Levenshtein distance over chars; keys are short, so the O(n*m) row is fine.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("ttl", "ttl"), 0);
        assert_eq!(edit_distance("tll", "ttl"), 1);
        assert_eq!(edit_distance("capacty", "capacity"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn unknown_suggests_only_close_names() {
        assert_eq!(
            unknown("key", "capacty", &["ttl", "capacity"]),
            "unknown key; did you mean \"capacity\"?"
        );
        assert_eq!(
            unknown("key", "colour", &["ttl", "capacity"]),
            "unknown key"
        );
    }
}
