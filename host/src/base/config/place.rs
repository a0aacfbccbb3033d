//! Where in the file an error is, and what the parser's messages mean in
//! words: the config text is parsed once more with spans
//! ([`toml::de::DeTable`]), so that every error that names a key
//! (`upstream[0].servers[2].weight`) gets the line and column of what was
//! written there, with the line shown like the TOML parser shows its own
//! errors; and serde's messages, which speak of Rust types (`expected u32`,
//! `expected a duration`), are rewritten to say what is accepted, with
//! examples.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A place in the config file: line and column (from 1) and the line
/// itself, marked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
    /// The line with a gutter and `^` under the spot (three lines,
    /// each starting with a newline).
    snippet: String,
}

impl Location {
    /// The place of the byte range `span` of `text`.
    pub(super) fn of(text: &str, span: Range<usize>) -> Location {
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line_text = text[line_start..line_end].trim_end_matches('\r');
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let end = floor_char_boundary(text, span.end.clamp(start, line_end));
        let width = text[start..end].chars().count().max(1);
        let gutter = " ".repeat(line.to_string().len());
        let snippet = format!(
            "\n{gutter} |\n{line} | {line_text}\n{gutter} | {}{}",
            " ".repeat(column - 1),
            "^".repeat(width)
        );
        Location {
            line,
            column,
            snippet,
        }
    }

    /// The marked line, for after the message.
    pub fn snippet(&self) -> &str {
        &self.snippet
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// One step of a key path: `servers[2]` is the key `servers`, element 2.
fn step(segment: &str) -> (&str, Option<usize>) {
    if let Some(open) = segment.find('[')
        && let Some(index) = segment[open + 1..]
            .strip_suffix(']')
            .and_then(|i| i.parse().ok())
    {
        return (&segment[..open], Some(index));
    }
    (segment, None)
}

/// The byte range of what is written at `key` (a dotted path such as
/// `upstream[0].limit-req.rate`), or of the closest enclosing value that
/// is written when `key` itself is not (a default). A list where a table
/// is expected stands for its first element (`limit-req` written as a list
/// is named `limit-req`, `limit-req[1]`, ...).
pub(super) fn span_of(doc: &Spanned<DeTable<'_>>, key: &str) -> Option<Range<usize>> {
    let mut found = None;
    let mut table: &DeTable<'_> = doc.get_ref();
    for segment in key.split('.') {
        let (name, index) = step(segment);
        let Some((_, mut value)) = table.iter().find(|(k, _)| k.get_ref() == name) else {
            break;
        };
        if let Some(i) = index {
            let DeValue::Array(list) = value.get_ref() else {
                found = Some(value.span());
                break;
            };
            match list.get(i) {
                Some(element) => value = element,
                None => {
                    found = Some(value.span());
                    break;
                }
            }
        }
        found = Some(value.span());
        table = match value.get_ref() {
            DeValue::Table(t) => t,
            DeValue::Array(list) => match list.first().map(Spanned::get_ref) {
                Some(DeValue::Table(t)) => t,
                _ => break,
            },
            _ => break,
        };
    }
    found
}

/// The key path (as [`span_of`] takes it) of the innermost key or value
/// whose span holds `span`, if any. (The span of a `[[table]]` is its
/// header only: every entry is looked into.)
pub(super) fn key_at(doc: &Spanned<DeTable<'_>>, span: &Range<usize>) -> Option<String> {
    in_table(doc.get_ref(), span)
}

fn holds(outer: Range<usize>, span: &Range<usize>) -> bool {
    outer.start <= span.start && span.end <= outer.end
}

fn in_table(table: &DeTable<'_>, span: &Range<usize>) -> Option<String> {
    table.iter().find_map(|(k, v)| {
        let name = k.get_ref();
        if holds(k.span(), span) {
            return Some(name.to_string());
        }
        match in_value(v, span) {
            Some(rest) if rest.is_empty() || rest.starts_with('[') => Some(format!("{name}{rest}")),
            Some(rest) => Some(format!("{name}.{rest}")),
            None => None,
        }
    })
}

/// The rest of the key path below `value` (empty: `value` itself).
fn in_value(value: &Spanned<DeValue<'_>>, span: &Range<usize>) -> Option<String> {
    let inner = match value.get_ref() {
        DeValue::Table(t) => in_table(t, span),
        DeValue::Array(list) => list.iter().enumerate().find_map(|(i, e)| {
            in_value(e, span).map(|rest| match rest.as_str() {
                "" => format!("[{i}]"),
                r if r.starts_with('[') => format!("[{i}]{r}"),
                r => format!("[{i}].{r}"),
            })
        }),
        _ => None,
    };
    inner.or_else(|| holds(value.span(), span).then(String::new))
}

/// A serde or TOML message in words: no Rust type names, and what is
/// accepted, with examples; an unknown key or value gets a "did you mean"
/// for a close allowed one.
pub(super) fn humane(message: &str) -> String {
    let message = message.trim_end();
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            return format!(
                "expected {}, found {}",
                expected_words(expected),
                found_words(found)
            );
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((name, rest)) = rest.split_once('`')
    {
        return unknown("key", name, rest);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some((name, rest)) = rest.split_once('`')
    {
        return unknown("value", name, rest);
    }
    if message == "wanted string or table" {
        // An enum (`plugin-failure`) written as something else.
        return "expected a name in quotes".to_owned();
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("missing key {rest}");
    }
    if let Some(rest) = message.strip_prefix("invalid length ")
        && let Some((n, expected)) = rest.split_once(", expected ")
    {
        return format!("expected {}, found {n} entries", expected_words(expected));
    }
    message.to_owned()
}

/// `unknown field `x`, expected one of `a`, `b`` (or `expected `a` or
/// `b``, or `there are no fields`) as `unknown key `x`; expected one of
/// ...`, with a "did you mean" for a close name.
fn unknown(what: &str, name: &str, rest: &str) -> String {
    let choices: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let mut out = format!("unknown {what} `{name}`");
    if let Some(close) = closest(name, choices.iter().copied()) {
        out.push_str(&format!("; did you mean `{close}`?"));
    }
    match choices.as_slice() {
        [] => {}
        [one] => out.push_str(&format!(" (expected `{one}`)")),
        many => {
            let listed: Vec<String> = many.iter().map(|c| format!("`{c}`")).collect();
            out.push_str(&format!(" (expected one of {})", listed.join(", ")));
        }
    }
    out
}

/// The candidate closest to `name`, if it is close enough to be a typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// What serde's `expected ...` means, in words.
fn expected_words(expected: &str) -> String {
    let words = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number from 0 to 18446744073709551615",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "a borrowed string" | "path string" | "a string key" => "a string in quotes",
        "a character" | "a char" => "a single character in quotes",
        "a sequence" => "a list, e.g. [\"a\", \"b\"]",
        "a map" => "a table, e.g. { key = \"value\" }",
        "a duration" => {
            "a duration in quotes, e.g. \"5s\", \"250ms\" or \"1m 30s\" (units: ms, s, m, h, d)"
        }
        "option" => "a value",
        other if other.starts_with("struct ") => "a table, e.g. { key = \"value\" }",
        other if other.starts_with("enum ") => "one of the documented names, in quotes",
        other => other,
    };
    words.to_owned()
}

/// What serde's `invalid type: X` names, in words.
fn found_words(found: &str) -> String {
    let quoted = |prefix: &str| {
        found
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('`'))
            .and_then(|rest| rest.strip_suffix('`'))
            .map(str::to_owned)
    };
    if let Some(s) = found.strip_prefix("string ") {
        return s.to_owned();
    }
    if let Some(n) = quoted("integer ") {
        return n;
    }
    if let Some(n) = quoted("floating point ") {
        return n;
    }
    if let Some(b) = quoted("boolean ") {
        return b;
    }
    match found {
        "sequence" => "a list".to_owned(),
        "map" => "a table".to_owned(),
        "unit value" => "nothing".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "listen = \"x\"\n\n[[upstream]]\nname = \"a\"\nservers = [\"1\", { address = \"2\", weight = 0 }]\nlimit-req = [{ rate = \"1/s\" }, { rate = \"2/d\" }]\n";

    fn at(key: &str) -> Option<String> {
        let doc = DeTable::parse(TEXT).expect("parses");
        span_of(&doc, key).map(|s| TEXT[s].to_owned())
    }

    #[test]
    fn key_paths_find_what_is_written_there() {
        assert_eq!(at("listen").as_deref(), Some("\"x\""));
        assert_eq!(at("upstream[0].servers[1].weight").as_deref(), Some("0"));
        assert_eq!(at("upstream[0].servers[0]").as_deref(), Some("\"1\""));
        assert_eq!(at("upstream[0].limit-req.rate").as_deref(), Some("\"1/s\""));
        assert_eq!(
            at("upstream[0].limit-req[1].rate").as_deref(),
            Some("\"2/d\"")
        );
        // Not written: the closest enclosing value.
        assert_eq!(
            at("upstream[0].servers[0].weight").as_deref(),
            Some("\"1\"")
        );
        assert_eq!(at("workers"), None);
    }

    #[test]
    fn spans_lead_back_to_their_key() {
        let doc = DeTable::parse(TEXT).expect("parses");
        for key in [
            "listen",
            "upstream[0].servers[1].weight",
            "upstream[0].name",
        ] {
            let span = span_of(&doc, key).expect("written");
            assert_eq!(key_at(&doc, &span).as_deref(), Some(key));
        }
    }

    #[test]
    fn locations_count_lines_and_characters_from_one() {
        let text = "a = 1\nb = \"é\" x\n";
        let start = text.find('x').expect("x");
        let loc = Location::of(text, start..start + 1);
        assert_eq!((loc.line, loc.column), (2, 9));
        assert_eq!(loc.snippet(), "\n  |\n2 | b = \"é\" x\n  |         ^");
    }

    #[test]
    fn messages_name_no_rust_types() {
        for (message, words) in [
            (
                "invalid type: string \"3\", expected u32",
                "expected a whole number from 0 to 4294967295, found \"3\"",
            ),
            (
                "invalid type: integer `1`, expected a boolean",
                "expected true or false, found 1",
            ),
            (
                "invalid value: string \"soon\", expected a duration",
                "expected a duration in quotes, e.g. \"5s\", \"250ms\" or \"1m 30s\" (units: ms, s, m, h, d), found \"soon\"",
            ),
            (
                "invalid type: map, expected a sequence",
                "expected a list, e.g. [\"a\", \"b\"], found a table",
            ),
            (
                "unknown field `plugin`, expected one of `listen`, `plugins`",
                "unknown key `plugin`; did you mean `plugins`? (expected one of `listen`, `plugins`)",
            ),
            (
                "unknown variant `fail-opn`, expected `fail-open` or `fail-closed`",
                "unknown value `fail-opn`; did you mean `fail-open`? (expected one of `fail-open`, `fail-closed`)",
            ),
            ("missing field `name`", "missing key `name`"),
        ] {
            assert_eq!(humane(message), words);
        }
    }
}
