//! The host crate is built in layers (see the table in `src/lib.rs`): a
//! module may import from its own layer and the ones below it, never from a
//! layer above, and no chain of imports may lead from a file back to
//! itself. This test reads every file under `src/` as text, finds what each
//! one takes from the rest of the crate (`use crate::…`, `use super::…`,
//! `use self::…`, and such paths written out in the code; tests inside the
//! files and comments are left out) and fails on any upward import or any
//! cycle, naming the files and the paths that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first: a top-level module of the crate and its layer.
const LAYERS: &[(&str, u8)] = &[
    ("base", 0),
    ("wire", 1),
    ("backend", 2),
    ("limit", 2),
    ("plugin", 3),
    ("gateway", 4),
    ("proxy", 5),
    ("admin", 6),
    ("simulate", 6),
    ("demo", 6),
    ("scaffold", 6),
];

/// The crate root (`lib.rs`) sits on top of everything.
const ROOT_LAYER: u8 = 7;

/// One source file: its module path and what it imports.
struct File {
    path: PathBuf,
    module: Vec<String>,
    /// (line, path as written, resolved to its module path)
    uses: Vec<(usize, String, Vec<String>)>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` -> `[a, b]`, `src/a/mod.rs` -> `[a]`, `src/lib.rs` -> `[]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    match last.as_str() {
        "mod.rs" | "lib.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").to_owned()),
    }
    parts
}

/// `text` with comments, string and character literals blanked out (their
/// newlines kept, so line numbers stay right).
fn code_only(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match skipped(text, i) {
            Some(n) => {
                out.extend(
                    text.as_bytes()[i..i + n]
                        .iter()
                        .map(|&c| if c == b'\n' { b'\n' } else { b' ' }),
                );
                i += n;
            }
            None => {
                out.push(text.as_bytes()[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("blanks are ASCII, the rest is copied whole")
}

/// The length of the comment or literal that starts at `i`, if one does.
fn skipped(text: &str, i: usize) -> Option<usize> {
    let b = text.as_bytes();
    let rest = &b[i..];
    if rest.starts_with(b"//") {
        return Some(rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len()));
    }
    if rest.starts_with(b"/*") {
        let (mut depth, mut j) = (0usize, 0);
        while j < rest.len() {
            if rest[j..].starts_with(b"/*") {
                depth += 1;
                j += 2;
            } else if rest[j..].starts_with(b"*/") {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return Some(j);
                }
            } else {
                j += 1;
            }
        }
        return Some(rest.len());
    }
    let after_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
    if !after_ident {
        // Raw strings: r"…", r#"…"#, br"…".
        let start = if rest.starts_with(b"br") {
            2
        } else if rest.starts_with(b"r") {
            1
        } else {
            0
        };
        let hashes = rest[start..].iter().take_while(|&&c| c == b'#').count();
        if start > 0 && rest.get(start + hashes) == Some(&b'"') {
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let body = start + hashes + 1;
            return Some(
                rest[body..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(rest.len(), |p| body + p + close.len()),
            );
        }
    }
    match rest.first() {
        Some(b'"') => {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            Some((j + 1).min(rest.len()))
        }
        // A character literal ('x', '\n', '\u{…}'), not a lifetime ('a).
        Some(b'\'') if rest.get(1) == Some(&b'\\') => {
            rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
        }
        Some(b'\'') => {
            let len = text[i + 1..].chars().next()?.len_utf8();
            (rest.get(1 + len) == Some(&b'\'')).then_some(len + 2)
        }
        _ => None,
    }
}

/// `code` without the items under `#[cfg(test)]` (test modules and
/// test-only functions: they may use whatever they test against).
fn without_tests(code: &str) -> String {
    let mut out = code.to_owned();
    let mut from = 0;
    while let Some(at) = out[from..].find("#[cfg(test)]").map(|p| p + from) {
        // The item ends at its first `;` at depth 0, or at the `}` that
        // closes its first `{`.
        let bytes = out.as_bytes();
        let mut depth = 0usize;
        let mut end = bytes.len();
        for (k, &c) in bytes.iter().enumerate().skip(at + "#[cfg(test)]".len()) {
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        let blanked: String = out[at..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(at..end, &blanked);
        from = end;
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.split_whitespace().collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// The module paths `path` (as written in `module`) points into.
fn resolve(module: &[String], path: &str) -> Option<Vec<String>> {
    let mut parts = path.split("::").map(str::to_owned);
    let first = parts.next()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" => Vec::new(),
        "self" => module.to_vec(),
        "super" => {
            let mut m = module.to_vec();
            m.pop()?;
            m
        }
        _ => return None,
    };
    let mut rest: Vec<String> = parts.collect();
    // `super::super::x`
    while rest.first().is_some_and(|p| p == "super") {
        rest.remove(0);
        base.pop()?;
    }
    base.extend(rest.into_iter().filter(|p| p != "self" && p != "*"));
    Some(base)
}

fn read_files() -> Vec<File> {
    let mut paths = Vec::new();
    rs_files(&src(), &mut paths);
    paths
        .into_iter()
        // The binary is a crate of its own, on top of the library.
        .filter(|p| !p.ends_with("main.rs"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read source");
            let code = without_tests(&code_only(&text));
            let module = module_of(&path);
            let mut uses = Vec::new();
            for (at, written) in crate_paths(&code) {
                for full in expand(&written) {
                    if let Some(target) = resolve(&module, &full) {
                        uses.push((line_of(&code, at), full, target));
                    }
                }
            }
            File { path, module, uses }
        })
        .collect()
}

/// Every path that starts with `crate::`, `super::` or `self::` in `code`,
/// with its offset; a `use` tree is taken whole (braces included).
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| code[i..].starts_with(**p));
        let boundary = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        match starts {
            Some(_) if boundary => {
                let mut j = i;
                let mut depth = 0usize;
                while j < bytes.len() {
                    let c = bytes[j];
                    let keep = c.is_ascii_alphanumeric()
                        || c == b'_'
                        || c == b':'
                        || c == b'*'
                        || (depth > 0 && (c == b',' || c.is_ascii_whitespace()))
                        || c == b'{'
                        || (c == b'}' && depth > 0);
                    if !keep {
                        break;
                    }
                    match c {
                        b'{' => depth += 1,
                        b'}' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                let written = code[i..j].trim_end_matches(':').to_owned();
                out.push((i, written));
                i = j.max(i + 1);
            }
            _ => i += 1,
        }
    }
    out
}

fn layer_of(module: &[String]) -> Option<u8> {
    match module.first() {
        None => Some(ROOT_LAYER),
        Some(top) => LAYERS.iter().find(|(m, _)| m == top).map(|(_, l)| *l),
    }
}

/// The file of the longest module path `target` starts with.
fn file_of<'a>(
    by_module: &'a BTreeMap<Vec<String>, PathBuf>,
    target: &[String],
) -> Option<&'a PathBuf> {
    (0..=target.len())
        .rev()
        .find_map(|n| by_module.get(&target[..n]))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")))
        .unwrap_or(path)
        .display()
        .to_string()
}

/// file -> (file it imports from -> the first line and path that does it)
type Graph = BTreeMap<PathBuf, BTreeMap<PathBuf, (usize, String)>>;

fn graph(files: &[File]) -> Graph {
    let by_module: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (f.module.clone(), f.path.clone()))
        .collect();
    let mut edges = Graph::new();
    for file in files {
        let out = edges.entry(file.path.clone()).or_default();
        for (line, written, target) in &file.uses {
            let Some(to) = file_of(&by_module, target) else {
                continue;
            };
            if *to != file.path {
                out.entry(to.clone()).or_insert((*line, written.clone()));
            }
        }
    }
    edges
}

#[test]
fn every_module_belongs_to_a_layer() {
    let unplaced: Vec<String> = read_files()
        .iter()
        .filter(|f| layer_of(&f.module).is_none())
        .map(|f| rel(&f.path))
        .collect();
    assert!(
        unplaced.is_empty(),
        "these files are in no layer; add their top-level module to LAYERS in tests/layers.rs \
         (and to the table in src/lib.rs): {unplaced:?}"
    );
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let files = read_files();
    let by_path: BTreeMap<&PathBuf, &File> = files.iter().map(|f| (&f.path, f)).collect();
    let mut upward = Vec::new();
    for (from, tos) in graph(&files) {
        let Some(own) = layer_of(&by_path[&from].module) else {
            continue;
        };
        for (to, (line, written)) in tos {
            let Some(theirs) = layer_of(&by_path[&to].module) else {
                continue;
            };
            if theirs > own {
                upward.push(format!(
                    "{}:{line} (layer {own}) imports `{written}` from {} (layer {theirs})",
                    rel(&from),
                    rel(&to)
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports must point down (see the layers in src/lib.rs):\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_import_cycle() {
    let files = read_files();
    let edges = graph(&files);
    // Depth-first search for a back edge; the cycle is the stack from the
    // file it returns to.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark: BTreeMap<&PathBuf, Mark> = edges.keys().map(|k| (k, Mark::New)).collect();
    let mut cycles: BTreeSet<Vec<String>> = BTreeSet::new();
    fn visit<'a>(
        at: &'a PathBuf,
        edges: &'a Graph,
        mark: &mut BTreeMap<&'a PathBuf, Mark>,
        stack: &mut Vec<&'a PathBuf>,
        cycles: &mut BTreeSet<Vec<String>>,
    ) {
        mark.insert(at, Mark::Open);
        stack.push(at);
        for (to, (line, written)) in edges.get(at).into_iter().flatten() {
            match mark.get(to).copied().unwrap_or(Mark::Done) {
                Mark::New => visit(to, edges, mark, stack, cycles),
                Mark::Open => {
                    let from = stack.iter().position(|p| *p == to).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[from..]
                        .windows(2)
                        .map(|w| {
                            let (l, wr) = &edges[w[0]][w[1]];
                            format!("{}:{l} `{wr}` -> {}", rel(w[0]), rel(w[1]))
                        })
                        .collect();
                    cycle.push(format!("{}:{line} `{written}` -> {}", rel(at), rel(to)));
                    cycles.insert(cycle);
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        mark.insert(at, Mark::Done);
    }
    for file in edges.keys() {
        if mark[file] == Mark::New {
            visit(file, &edges, &mut mark, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles (each line: file:line `path` -> the file it imports from):\n{}",
        cycles
            .iter()
            .map(|c| c.join("\n  "))
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

#[test]
fn the_reader_sees_imports_and_skips_comments_strings_and_tests() {
    let text = r##"
use crate::base::{clock, config::{Config, ServerConfig}};
use super::sibling::Thing;
// use crate::gateway::Gateway;
/// [`crate::proxy::exchange`]
fn f() { let s = "crate::admin::x"; let c = '{'; let r = r#"crate::demo"#; crate::wire::head::host_of(p); }
#[cfg(test)]
mod tests { use crate::simulate::run; }
"##;
    let code = without_tests(&code_only(text));
    let found: Vec<String> = crate_paths(&code)
        .into_iter()
        .flat_map(|(_, w)| expand(&w))
        .collect();
    assert_eq!(
        found,
        [
            "crate::base::clock",
            "crate::base::config::Config",
            "crate::base::config::ServerConfig",
            "super::sibling::Thing",
            "crate::wire::head::host_of",
        ]
    );
    let module = vec!["gateway".to_owned(), "reload".to_owned()];
    assert_eq!(
        resolve(&module, "super::Gateway"),
        Some(vec!["gateway".to_owned(), "Gateway".to_owned()])
    );
}
