//! `switchyard new`: writes a standalone project for a strategy or an
//! admission plugin of one's own, which builds anywhere with one command
//! and is served, simulated and checked by this binary as it is (Spin's
//! `spin new` is the model).
//!
//! A Rust project is a crate with a `[workspace]` of its own (so an
//! enclosing workspace neither swallows it nor imposes its lints), built as
//! a `cdylib` for `wasm32-wasip2` with the `wit-bindgen` version this
//! repository builds its own plugins with (and a `Cargo.lock` holding its
//! dependencies at this repository's versions), this repository's
//! toolchain file (so rustup installs the same channel and the target), a
//! copy of the WIT contract, a working `src/lib.rs` to change, a
//! `switchyard.toml` that serves the build output, and a README with the
//! build, test and deploy steps. A JavaScript project (`--lang js`) is the
//! same around `strategy.js` or `admission.js`, built by `npm run build`
//! with the jco toolchain `examples/js-strategy` locks. The templates are
//! the files under `templates/`, built into the binary.
//!
//! Nothing is ever overwritten: an existing non-empty directory is refused
//! before anything is written, and every file is created new.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The WIT contract, written as `wit/balancer.wit` of every project.
const WIT: &str = include_str!("../../../wit/balancer.wit");
/// This repository's toolchain file: its channel and the `wasm32-wasip2`
/// target, so rustup installs both on the first build.
const TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");
/// The `wit-bindgen` version this repository's plugins are built with
/// (Cargo.lock; a unit test keeps the two equal).
const WIT_BINDGEN: &str = "0.63.0";

/// The locked jco toolchain of `examples/js-strategy`, and that package's
/// name in it.
const JS_LOCK: &str = include_str!("../../../examples/js-strategy/package-lock.json");
const JS_EXAMPLE: &str = "switchyard-js-strategy";

/// This repository's lock file: a new Rust project's `Cargo.lock` is the
/// part of it that `wit-bindgen` needs (see [`rust_lock`]).
const WORKSPACE_LOCK: &str = include_str!("../../../Cargo.lock");

/// Longest NAME: a file stem and crate name a person types.
const MAX_NAME: usize = 64;

/// The arguments of `switchyard new`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Strategy or admission plugin, and its name.
    #[command(subcommand)]
    pub what: What,
}

/// What kind of plugin to start.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum What {
    /// A load-balancing strategy (world `balancer`): picks a backend for
    /// each request. The skeleton is least-in-flight with ties taken in
    /// turn.
    Strategy(Project),
    /// An admission plugin (world `admission`): lets a request in, adds
    /// headers, or turns it away. The skeleton is a per-client rate limit
    /// on a limiter the proxy keeps.
    Admission(Project),
}

/// Where and in what language.
#[derive(Debug, Clone, clap::Args)]
pub struct Project {
    /// The plugin's name: lower-case letters, digits, `-` and `_`, starting
    /// with a letter (`my-strategy`). It names the crate or package, the
    /// directory, and the plugin file.
    pub name: String,
    /// The language of the project.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// The directory to write (default: ./NAME). It must not exist, or be
    /// empty.
    #[arg(long, value_name = "PATH")]
    pub dir: Option<PathBuf>,
}

/// The language of a new project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with wit-bindgen, `cargo build --release --target wasm32-wasip2`.
    Rust,
    /// JavaScript with jco (QuickJS), `npm install && npm run build`.
    Js,
}

/// Strategy or admission plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Strategy,
    Admission,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Strategy => "strategy",
            Kind::Admission => "admission plugin",
        }
    }
}

/// A project written by [`create`].
#[derive(Debug)]
pub struct Created {
    /// Its directory, as given (or `./NAME`).
    pub dir: PathBuf,
    /// The files written, relative to `dir`.
    pub files: Vec<&'static str>,
    /// What to run next, one command a line, from `dir`.
    pub next: Vec<String>,
    /// One line saying what was made.
    pub summary: String,
}

/// Runs `switchyard new` and writes what it did to `out`.
pub fn run(args: &Args, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let created = create(args)?;
    writeln!(out, "{}", created.summary)?;
    for file in &created.files {
        writeln!(out, "  {}", created.dir.join(file).display())?;
    }
    writeln!(out, "next steps (see README.md):")?;
    writeln!(
        out,
        "  cd {}",
        shell_word(&created.dir.display().to_string())
    )?;
    for line in &created.next {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

/// Writes the project `args` describe.
pub fn create(args: &Args) -> anyhow::Result<Created> {
    let (kind, project) = match &args.what {
        What::Strategy(p) => (Kind::Strategy, p),
        What::Admission(p) => (Kind::Admission, p),
    };
    check_name(&project.name)?;
    let name = project.name.as_str();
    let dir = project.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    let files = files(kind, project.lang, name)?;
    check_dir(&dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (path, text) in &files {
        write_new(&dir.join(path), text)?;
    }
    let stem = stem(name);
    let wasm = match project.lang {
        Lang::Rust => format!("target/wasm32-wasip2/release/{stem}.wasm"),
        Lang::Js => format!("dist/{name}.wasm"),
    };
    let mut next = match project.lang {
        Lang::Rust => vec!["cargo build --release --target wasm32-wasip2".to_owned()],
        Lang::Js => vec!["npm install".to_owned(), "npm run build".to_owned()],
    };
    next.push("switchyard check --config switchyard.toml".to_owned());
    match kind {
        Kind::Strategy => next.push(format!(
            "switchyard simulate --compare round-robin,{wasm} --generate 3000 --rate 300 --latency 10ms,3=50ms"
        )),
        Kind::Admission => next.push("switchyard run --config switchyard.toml".to_owned()),
    }
    let lang = match project.lang {
        Lang::Rust => "Rust",
        Lang::Js => "JavaScript",
    };
    Ok(Created {
        summary: format!(
            "created the {} `{name}` ({lang}) in {}:",
            kind.noun(),
            dir.display()
        ),
        dir,
        files: files.iter().map(|(path, _)| *path).collect(),
        next,
    })
}

/// NAME as a crate name, a package name and a file stem: a lower-case
/// ASCII letter, then lower-case letters, digits, `-` and `_`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let expected = "expected a lower-case letter followed by lower-case letters, digits, `-` or `_`, e.g. `my-strategy`";
    let Some(first) = name.chars().next() else {
        bail!("the NAME is empty: {expected}");
    };
    if !first.is_ascii_lowercase() {
        bail!("`{name}` is not a valid NAME: it starts with `{first}`; {expected}");
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        bail!("`{name}` is not a valid NAME: `{bad}` is not allowed; {expected}");
    }
    if name.len() > MAX_NAME {
        bail!(
            "`{name}` is not a valid NAME: {} characters, at most {MAX_NAME} allowed",
            name.len()
        );
    }
    // Names cargo refuses as a library's name.
    const RESERVED: &[&str] = &[
        "std",
        "core",
        "alloc",
        "proc_macro",
        "test",
        "self",
        "super",
        "crate",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "enum",
        "extern",
        "false",
        "fn",
        "for",
        "if",
        "impl",
        "in",
        "let",
        "loop",
        "match",
        "mod",
        "move",
        "mut",
        "pub",
        "ref",
        "return",
        "static",
        "struct",
        "trait",
        "true",
        "type",
        "unsafe",
        "use",
        "where",
        "while",
        "async",
        "await",
        "dyn",
        "abstract",
        "become",
        "box",
        "do",
        "final",
        "macro",
        "override",
        "priv",
        "typeof",
        "unsized",
        "virtual",
        "yield",
        "try",
        "gen",
    ];
    if RESERVED.contains(&stem(name).as_str()) {
        bail!(
            "`{name}` is not a valid NAME: it is a Rust keyword or a standard crate's name; choose another, e.g. `my-{name}`"
        );
    }
    Ok(())
}

/// The crate's library name, and so the built file's stem: `-` as `_`.
fn stem(name: &str) -> String {
    name.replace('-', "_")
}

/// Refuses a path that is a file, or a directory with anything in it.
fn check_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
        Ok(meta) if !meta.is_dir() => bail!(
            "{} exists and is not a directory; choose another NAME or --dir (nothing was written)",
            dir.display()
        ),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read the directory {}", dir.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty; choose another NAME or --dir, or remove it (nothing was written)",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// Creates `path` (and its directory) with `text`; never replaces a file.
fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The project's files: (path in the project, contents).
fn files(kind: Kind, lang: Lang, name: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{stem}}", &stem(name))
            .replace("{{wit_bindgen}}", WIT_BINDGEN)
            .replace("{{switchyard}}", env!("CARGO_PKG_VERSION"))
    };
    let files = match (lang, kind) {
        (Lang::Rust, _) => {
            let (lib, config, readme) = match kind {
                Kind::Strategy => (
                    include_str!("templates/rust/strategy.rs"),
                    include_str!("templates/rust/strategy.switchyard.toml"),
                    include_str!("templates/rust/strategy.README.md"),
                ),
                Kind::Admission => (
                    include_str!("templates/rust/admission.rs"),
                    include_str!("templates/rust/admission.switchyard.toml"),
                    include_str!("templates/rust/admission.README.md"),
                ),
            };
            vec![
                (
                    "Cargo.toml",
                    fill(include_str!("templates/rust/Cargo.toml")),
                ),
                ("Cargo.lock", rust_lock(name)?),
                ("rust-toolchain.toml", TOOLCHAIN.to_owned()),
                ("src/lib.rs", fill(lib)),
                ("wit/balancer.wit", WIT.to_owned()),
                ("switchyard.toml", fill(config)),
                ("README.md", fill(readme)),
                (".gitignore", fill(include_str!("templates/rust/gitignore"))),
            ]
        }
        (Lang::Js, _) => {
            let (source, code, world, config, readme) = match kind {
                Kind::Strategy => (
                    "strategy.js",
                    include_str!("templates/js/strategy.js"),
                    "balancer",
                    include_str!("templates/js/strategy.switchyard.toml"),
                    include_str!("templates/js/strategy.README.md"),
                ),
                Kind::Admission => (
                    "admission.js",
                    include_str!("templates/js/admission.js"),
                    "admission",
                    include_str!("templates/js/admission.switchyard.toml"),
                    include_str!("templates/js/admission.README.md"),
                ),
            };
            let package = include_str!("templates/js/package.json")
                .replace("{{source}}", source)
                .replace("{{world}}", world)
                .replace("{{noun}}", kind.noun());
            vec![
                ("package.json", fill(&package)),
                ("package-lock.json", js_lock(name)),
                (source, fill(code)),
                ("wit/balancer.wit", WIT.to_owned()),
                ("switchyard.toml", fill(config)),
                ("README.md", fill(readme)),
                (".gitignore", fill(include_str!("templates/js/gitignore"))),
            ]
        }
    };
    Ok(files)
}

/// One `[[package]]` of a Cargo.lock.
struct Locked<'a> {
    name: &'a str,
    version: &'a str,
    source: Option<&'a str>,
    checksum: Option<&'a str>,
    dependencies: Vec<&'a str>,
}

/// The `Cargo.lock` of a new Rust project `name`: `wit-bindgen`
/// [`WIT_BINDGEN`] and everything it depends on, at the versions this
/// repository's lock holds, in Cargo's format. The first build thus uses
/// exactly the crates this repository builds its plugins with, rather than
/// whatever is newest that day, and works offline once they are
/// downloaded. (It may drop a few dependency edges there: this
/// repository's lock also holds those that features enabled by its other
/// crates add; the versions stay.)
fn rust_lock(name: &str) -> anyhow::Result<String> {
    let lock: toml::Table =
        toml::from_str(WORKSPACE_LOCK).context("the built-in Cargo.lock is not TOML")?;
    fn text<'a>(v: &'a toml::Value, key: &str) -> Option<&'a str> {
        v.get(key).and_then(toml::Value::as_str)
    }
    let packages: Vec<Locked<'_>> = lock
        .get("package")
        .and_then(toml::Value::as_array)
        .context("the built-in Cargo.lock has no packages")?
        .iter()
        .map(|p| {
            Ok(Locked {
                name: text(p, "name").context("a locked package without a name")?,
                version: text(p, "version").context("a locked package without a version")?,
                source: text(p, "source"),
                checksum: text(p, "checksum"),
                dependencies: p
                    .get("dependencies")
                    .and_then(toml::Value::as_array)
                    .map(|d| d.iter().filter_map(toml::Value::as_str).collect())
                    .unwrap_or_default(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    // A dependency is written `name`, `name version` or `name version (source)`.
    let find = |dep: &str| {
        let mut words = dep.split(' ');
        let name = words.next().unwrap_or_default();
        let version = words.next();
        packages
            .iter()
            .position(|p| p.name == name && version.is_none_or(|v| p.version == v))
            .with_context(|| format!("the built-in Cargo.lock lacks `{dep}`"))
    };
    let mut needed = std::collections::BTreeSet::new();
    let mut todo = vec![find(&format!("wit-bindgen {WIT_BINDGEN}"))?];
    while let Some(i) = todo.pop() {
        if needed.insert(i) {
            for dep in &packages[i].dependencies {
                todo.push(find(dep)?);
            }
        }
    }
    let root = Locked {
        name,
        version: "0.1.0",
        source: None,
        checksum: None,
        dependencies: Vec::new(),
    };
    let mut kept: Vec<&Locked<'_>> = needed.iter().map(|&i| &packages[i]).collect();
    kept.push(&root);
    let order = |p: &Locked<'_>| (p.name.to_owned(), version_key(p.version));
    kept.sort_by_key(|p| order(p));
    // Cargo writes a dependency's version only where its name is ambiguous.
    let ambiguous = |name: &str| kept.iter().filter(|p| p.name == name).count() > 1;
    let mut out = String::from(
        "# This file is automatically @generated by Cargo.\n# It is not intended for manual editing.\nversion = 4\n",
    );
    for p in &kept {
        let mut deps: Vec<&Locked<'_>> = if std::ptr::eq(*p, &root) {
            vec![&packages[find(&format!("wit-bindgen {WIT_BINDGEN}"))?]]
        } else {
            p.dependencies
                .iter()
                .map(|d| find(d).map(|i| &packages[i]))
                .collect::<anyhow::Result<_>>()?
        };
        deps.sort_by_key(|d| order(d));
        let _ = write!(
            out,
            "\n[[package]]\nname = \"{}\"\nversion = \"{}\"\n",
            p.name, p.version
        );
        if let Some(source) = p.source {
            let _ = writeln!(out, "source = \"{source}\"");
        }
        if let Some(checksum) = p.checksum {
            let _ = writeln!(out, "checksum = \"{checksum}\"");
        }
        if !deps.is_empty() {
            out.push_str("dependencies = [\n");
            for d in deps {
                if ambiguous(d.name) {
                    let _ = writeln!(out, " \"{} {}\",", d.name, d.version);
                } else {
                    let _ = writeln!(out, " \"{}\",", d.name);
                }
            }
            out.push_str("]\n");
        }
    }
    Ok(out)
}

/// `1.0.104` as numbers, for ordering versions as Cargo does (a
/// pre-release part, rare among these, compares as text).
fn version_key(version: &str) -> Vec<(u64, String)> {
    version
        .split(['.', '-', '+'])
        .map(|part| (part.parse().unwrap_or(u64::MAX), part.to_owned()))
        .collect()
}

/// The lock file of `examples/js-strategy` (the jco toolchain its build
/// and tests use), as the lock of package `name`.
fn js_lock(name: &str) -> String {
    JS_LOCK.replace(
        &format!("\"name\": \"{JS_EXAMPLE}\""),
        &format!("\"name\": \"{name}\""),
    )
}

/// `text` quoted for a POSIX shell when it needs to be.
fn shell_word(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_bindgen_is_the_version_this_repository_builds_its_plugins_with() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
            .expect("read Cargo.lock");
        let manifest =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
                .expect("read Cargo.toml");
        let lock: toml::Table = toml::from_str(&lock).expect("Cargo.lock is TOML");
        let manifest: toml::Table = toml::from_str(&manifest).expect("Cargo.toml is TOML");
        let wanted = manifest["workspace"]["dependencies"]["wit-bindgen"]["version"]
            .as_str()
            .expect("workspace wit-bindgen version");
        let wanted = semver_prefix(wanted);
        let locked: Vec<&str> = lock["package"]
            .as_array()
            .expect("packages")
            .iter()
            .filter(|p| p["name"].as_str() == Some("wit-bindgen"))
            .filter_map(|p| p["version"].as_str())
            .filter(|v| v.starts_with(&wanted))
            .collect();
        assert_eq!(
            locked,
            vec![WIT_BINDGEN],
            "scaffold::WIT_BINDGEN must be the locked wit-bindgen of the workspace ({wanted})"
        );
    }

    /// `0.63` -> `0.63.`, so that `0.63.0` matches and `0.630.0` does not.
    fn semver_prefix(version: &str) -> String {
        format!("{}.", version.trim_start_matches(['^', '=']))
    }

    #[test]
    fn the_lock_holds_what_wit_bindgen_needs_at_this_repositorys_versions() {
        let text = rust_lock("my-plugin").expect("a lock");
        let lock: toml::Table = toml::from_str(&text).expect("TOML");
        let packages = lock["package"].as_array().expect("packages");
        let find = |name: &str| {
            packages
                .iter()
                .find(|p| p["name"].as_str() == Some(name))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        assert_eq!(find("wit-bindgen")["version"].as_str(), Some(WIT_BINDGEN));
        assert_eq!(
            find("my-plugin")["dependencies"],
            toml::Value::Array(vec!["wit-bindgen".into()])
        );
        find("wit-bindgen-rust-macro");
        for p in packages {
            let name = p["name"].as_str().expect("name");
            assert!(
                name != "wasmtime" && name != "switchyard",
                "{name} is not needed"
            );
        }
        assert!(text.starts_with("# This file is automatically @generated by Cargo."));
    }

    #[test]
    fn names() {
        for good in ["my-strategy", "a", "gate_2", "x-1-y"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "My", "1st", "-a", "a b", "a.b", "é", "fn", "std", "test",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn every_placeholder_is_filled() {
        let projects = [
            (Kind::Strategy, Lang::Rust),
            (Kind::Admission, Lang::Rust),
            (Kind::Strategy, Lang::Js),
            (Kind::Admission, Lang::Js),
        ];
        for (what, lang) in projects {
            for (path, text) in files(what, lang, "my-plugin").expect("files") {
                assert!(!text.contains("{{"), "{path}: {text}");
                assert!(!text.contains(JS_EXAMPLE), "{path}: {text}");
            }
        }
    }

    #[test]
    fn the_js_toolchain_is_the_one_the_example_locks() {
        let example: serde_json::Value =
            serde_json::from_str(include_str!("../../../examples/js-strategy/package.json"))
                .expect("the example's package.json");
        let ours: serde_json::Value = serde_json::from_str(
            &files(Kind::Strategy, Lang::Js, "my-plugin").expect("files")[0].1,
        )
        .expect("package.json is JSON");
        assert_eq!(ours["devDependencies"], example["devDependencies"]);
        let lock: serde_json::Value =
            serde_json::from_str(&js_lock("my-plugin")).expect("the lock is JSON");
        assert_eq!(lock["name"], "my-plugin");
        assert_eq!(lock["packages"][""]["name"], "my-plugin");
        assert_eq!(
            lock["packages"][""]["devDependencies"],
            example["devDependencies"]
        );
    }
}
