//! `switchyard new` as a new user runs it: the real binary writes a
//! strategy and an admission plugin into a directory outside this
//! repository, each is built with the command its README gives
//! (`cargo build --release --target wasm32-wasip2`), and the result is
//! checked, simulated and served by the real binary from the project
//! directory with the `switchyard.toml` it wrote.
//!
//! The builds use the `cargo` on PATH, as a user would (rustup reads the
//! project's own `rust-toolchain.toml`). Each project's `target/` is a link
//! into this workspace's `target/scaffold/`, so reruns are incremental;
//! the first run downloads and compiles wit-bindgen. The JavaScript
//! project needs Node.js 20 or newer with npm (the test fails, never
//! skips, without them) and npm's registry or its cache.

#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::process::Running;
use common::*;
use serde_json::Value;

/// Runs the binary with `args` in `dir`.
fn switchyard(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "error")
        .output()
        .expect("run switchyard")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Where the projects' builds are kept between runs.
fn build_cache(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("scaffold").join(name);
    std::fs::create_dir_all(&dir).expect("create the build cache");
    dir
}

/// `switchyard new <args>` in `cwd`; asserts it succeeds and returns stdout.
fn new(cwd: &Path, args: &[&str]) -> String {
    let mut all = vec!["new"];
    all.extend_from_slice(args);
    let out = switchyard(cwd, &all);
    assert!(
        out.status.success(),
        "switchyard {all:?} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Builds the project in `dir` as its README says, with `target/` linked to
/// a cache under this workspace's target directory.
fn build(dir: &Path, cache: &str) {
    std::os::unix::fs::symlink(build_cache(cache), dir.join("target")).expect("link target/");
    let mut cargo = Command::new("cargo");
    cargo
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir);
    // What `cargo test` sets for this workspace is not the user's.
    for var in [
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "CARGO_MANIFEST_DIR",
    ] {
        cargo.env_remove(var);
    }
    let out = cargo.output().expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build --release --target wasm32-wasip2 in {} failed:\n{}",
        dir.display(),
        text(&out.stderr)
    );
}

/// `switchyard check --config switchyard.toml` in `dir`: its stdout.
fn check(dir: &Path) -> String {
    let out = switchyard(dir, &["check", "--config", "switchyard.toml"]);
    assert!(
        out.status.success(),
        "switchyard check in {} failed: {}{}",
        dir.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn a_new_strategy_builds_alone_checks_and_simulates() {
    let root = tempfile::tempdir().expect("tempdir");
    let said = new(root.path(), &["strategy", "my-strategy"]);
    let dir = root.path().join("my-strategy");
    assert!(
        said.contains("created the strategy `my-strategy` (Rust)"),
        "{said}"
    );
    assert!(
        said.contains("cargo build --release --target wasm32-wasip2"),
        "{said}"
    );
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "rust-toolchain.toml",
        "src/lib.rs",
        "wit/balancer.wit",
        "switchyard.toml",
        "README.md",
        ".gitignore",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing; said {said}");
        assert!(said.contains(file), "{file} not listed: {said}");
    }
    let wit = std::fs::read_to_string(dir.join("wit/balancer.wit")).expect("wit");
    let ours =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/balancer.wit"))
            .expect("repo wit");
    assert_eq!(wit, ours, "the project's WIT is this repository's");

    build(&dir, "strategy");
    let wasm = dir.join("target/wasm32-wasip2/release/my_strategy.wasm");
    assert!(wasm.is_file(), "the build wrote no {}", wasm.display());
    // It built with the crates this repository builds its plugins with.
    let locked = |path: &Path| -> Vec<(String, String)> {
        let text = std::fs::read_to_string(path).expect("read a Cargo.lock");
        let lock: toml::Table = toml::from_str(&text).expect("Cargo.lock is TOML");
        lock["package"]
            .as_array()
            .expect("packages")
            .iter()
            .filter(|p| p.get("source").is_some())
            .map(|p| {
                let field = |k: &str| p[k].as_str().expect("name and version").to_owned();
                (field("name"), field("version"))
            })
            .collect()
    };
    let ours = locked(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"));
    let theirs = locked(&dir.join("Cargo.lock"));
    assert!(theirs.iter().any(|(n, _)| n == "wit-bindgen"), "{theirs:?}");
    for package in &theirs {
        assert!(
            ours.contains(package),
            "{package:?} is not in this repository's Cargo.lock"
        );
    }

    let ok = check(&dir);
    assert!(
        ok.contains(
            "switchyard.toml: configuration OK; upstreams: app (3 servers, strategy my_strategy)"
        ),
        "{ok}"
    );

    // The README's test step: b3 five times slower.
    let (report, split) = simulated(&dir, "target/wasm32-wasip2/release/my_strategy.wasm");
    assert_eq!(split.iter().sum::<u64>(), 3000, "{report:#}");
    assert!(
        split.iter().all(|&n| n > 0),
        "every backend gets requests: {split:?}"
    );
    // Least in flight: the slow backend holds its requests longer and gets
    // fewer of them.
    assert!(split[2] < split[0] && split[2] < split[1], "{split:?}");
    assert_eq!(report["plugin_failures"]["total"], 0, "{report:#}");
    assert_eq!(report["rejected"], 0, "{report:#}");

    // Its parameter, as the README says.
    let out = switchyard(
        &dir,
        &[
            "simulate",
            "--plugin",
            "target/wasm32-wasip2/release/my_strategy.wasm",
            "--generate",
            "10",
            "--param",
            "max-in-flight=0",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("my-strategy: unknown or invalid parameter `max-in-flight = 0`"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_admission_plugin_builds_alone_checks_and_limits_live_traffic() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("projects/gate");
    let said = new(
        root.path(),
        &["admission", "my-gate", "--dir", "projects/gate"],
    );
    assert!(
        said.contains("created the admission plugin `my-gate` (Rust) in projects/gate"),
        "{said}"
    );
    let dir_in = dir.clone();
    tokio::task::spawn_blocking(move || build(&dir_in, "admission"))
        .await
        .expect("build");
    assert!(
        dir.join("target/wasm32-wasip2/release/my_gate.wasm")
            .is_file()
    );
    let ok = check(&dir);
    assert!(ok.contains("switchyard.toml: configuration OK"), "{ok}");
    // `check` runs the plugin's `init` with the config's admission-params.
    let config = std::fs::read_to_string(dir.join("switchyard.toml")).expect("config");
    let bad = config.replace("{ rate = 10, burst = 20 }", "{ rate = 0, burst = 20 }");
    assert_ne!(bad, config);
    std::fs::write(dir.join("bad.toml"), bad).expect("write config");
    let out = switchyard(&dir, &["check", "--config", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("my-gate: `rate = 0`: expected an integer in 1..=1000000"),
        "{}",
        text(&out.stderr)
    );

    limits_live_traffic(&dir, "my-gate", "my-gate").await;
}

/// Serves the admission project in `dir` from its directory with its own
/// config, only the addresses changed (free ports, real backends) and a
/// small burst, and checks that plugin `name` lets the burst in and then
/// answers 429 with its reason and `Retry-After`; the plugin declares
/// itself as `declared` (version 0.1.0) in the metrics, or not at all
/// (`""`).
async fn limits_live_traffic(dir: &Path, name: &str, declared: &str) {
    let live = backends(3).await;
    let config = std::fs::read_to_string(dir.join("switchyard.toml"))
        .expect("config")
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("admin = \"127.0.0.1:9090\"", "admin = \"127.0.0.1:0\"")
        .replace("{ rate = 10, burst = 20 }", "{ rate = 1, burst = 5 }")
        .replace(
            "[\"127.0.0.1:5001\", \"127.0.0.1:5002\", \"127.0.0.1:5003\"]",
            &servers_toml(&live),
        );
    assert!(
        config.contains("burst = 5") && config.contains("127.0.0.1:0"),
        "{config}"
    );
    std::fs::write(dir.join("test.toml"), config).expect("write config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .args(["run", "--config", "test.toml"])
        .current_dir(dir)
        .env("RUST_LOG", "info");
    let proxy = Running::spawn(command);

    let client = client();
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..60 {
        let reply = get_with(&client, proxy.addr, "/", &[])
            .await
            .expect("a reply");
        statuses.push(reply.status);
        if reply.status == 429 {
            refused = Some(reply);
            break;
        }
    }
    assert_eq!(
        statuses[..5],
        [200; 5],
        "the burst goes through: {statuses:?}"
    );
    let refused = refused.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert!(
        refused
            .body
            .contains(&format!("too many requests from your address ({name})")),
        "{refused:?}"
    );
    assert!(refused.headers.contains_key("retry-after"), "{refused:?}");
    // Every answer was the plugin's own: none was a failure the proxy
    // covered for (`fail-open` would let a bad answer through).
    let admin = proxy.admin.expect("the admin API is on");
    let metrics = admin_get_at(admin, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let calls: f64 = samples(&metrics.body, "switchyard_admission_plugin_calls_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    let failures: f64 = samples(&metrics.body, "switchyard_admission_plugin_failures_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert_eq!(calls, statuses.len() as f64, "{}", metrics.body);
    assert_eq!(failures, 0.0, "{}", metrics.body);
    let info = samples(&metrics.body, "switchyard_plugin_info");
    let admission = info
        .iter()
        .find(|(l, _)| l["role"] == "admission")
        .unwrap_or_else(|| panic!("no admission plugin in {}", metrics.body));
    assert_eq!(admission.0["algorithm"], declared, "{}", metrics.body);
    let version = if declared.is_empty() { "" } else { "0.1.0" };
    assert_eq!(admission.0["version"], version, "{}", metrics.body);
    drop(proxy);
}

#[test]
fn a_bad_name_or_an_existing_directory_is_refused_and_nothing_is_written() {
    let root = tempfile::tempdir().expect("tempdir");
    for (name, why) in [
        ("My", "it starts with `M`"),
        ("my strategy", "` ` is not allowed"),
        ("1st", "it starts with `1`"),
        ("fn", "Rust keyword"),
    ] {
        let out = switchyard(root.path(), &["new", "strategy", name]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("`{name}` is not a valid NAME")),
            "{err}"
        );
        assert!(err.contains(why), "{err}");
        assert!(
            err.contains("expected a lower-case letter") || why == "Rust keyword",
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read_dir(root.path()).expect("read").count(),
        0,
        "nothing written"
    );

    let taken = root.path().join("taken");
    std::fs::create_dir(&taken).expect("mkdir");
    std::fs::write(taken.join("notes.txt"), "mine").expect("write");
    for kind in ["strategy", "admission"] {
        let out = switchyard(root.path(), &["new", kind, "taken"]);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(
            err.contains("taken already exists and is not empty; choose another NAME or --dir"),
            "{err}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&taken).expect("read").collect();
    assert_eq!(left.len(), 1, "the directory is untouched");
    assert_eq!(
        std::fs::read_to_string(taken.join("notes.txt")).expect("read"),
        "mine"
    );

    // An empty directory is used.
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    new(root.path(), &["strategy", "fine", "--dir", "empty"]);
    assert!(empty.join("src/lib.rs").is_file());
}

/// Runs `npm <args>` in `dir`; fails the test, with what to install, when
/// npm is missing or the command fails.
fn npm(dir: &Path, args: &[&str]) {
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run npm ({e}): the JavaScript template needs Node.js 20 or newer with npm \
                 (Debian/Ubuntu: `apt-get install nodejs npm`, or https://nodejs.org)"
            )
        });
    assert!(
        out.status.success(),
        "npm {args:?} in {} failed:\n{}{}",
        dir.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn a_new_javascript_strategy_builds_with_npm_checks_and_simulates() {
    let root = tempfile::tempdir().expect("tempdir");
    let said = new(root.path(), &["strategy", "my-js", "--lang", "js"]);
    assert!(
        said.contains("created the strategy `my-js` (JavaScript)"),
        "{said}"
    );
    let dir = root.path().join("my-js");
    for file in [
        "package.json",
        "package-lock.json",
        "strategy.js",
        "wit/balancer.wit",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing; said {said}");
    }
    // The README's build step (the npm cache makes reruns quick).
    npm(&dir, &["install", "--no-audit", "--no-fund"]);
    npm(&dir, &["run", "build"]);
    assert!(dir.join("dist/my-js.wasm").is_file());

    let ok = check(&dir);
    assert!(
        ok.contains(
            "switchyard.toml: configuration OK; upstreams: app (3 servers, strategy my-js)"
        ),
        "{ok}"
    );
    let (report, split) = simulated(&dir, "dist/my-js.wasm");
    assert_eq!(split.iter().sum::<u64>(), 3000, "{report:#}");
    assert!(split.iter().all(|&n| n > 0), "{split:?}");
    assert!(split[2] < split[0] && split[2] < split[1], "{split:?}");
    assert_eq!(report["plugin_failures"]["total"], 0, "{report:#}");

    let out = switchyard(
        &dir,
        &[
            "simulate",
            "--plugin",
            "dist/my-js.wasm",
            "--generate",
            "10",
            "--param",
            "colour=1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("my-js: unknown or invalid parameter `colour`"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_javascript_admission_plugin_builds_with_npm_checks_and_limits_live_traffic() {
    let root = tempfile::tempdir().expect("tempdir");
    let said = new(root.path(), &["admission", "my-js-gate", "--lang", "js"]);
    assert!(
        said.contains("created the admission plugin `my-js-gate` (JavaScript)"),
        "{said}"
    );
    let dir = root.path().join("my-js-gate");
    assert!(dir.join("admission.js").is_file(), "{said}");
    let at = dir.clone();
    tokio::task::spawn_blocking(move || {
        npm(&at, &["install", "--no-audit", "--no-fund"]);
        npm(&at, &["run", "build"]);
    })
    .await
    .expect("npm");
    assert!(dir.join("dist/my-js-gate.wasm").is_file());
    let ok = check(&dir);
    assert!(ok.contains("switchyard.toml: configuration OK"), "{ok}");
    limits_live_traffic(&dir, "my-js-gate", "").await;
}

/// The README's test step on `plugin` (in `dir`): 3000 requests, b3 five
/// times slower. The JSON report and the requests per backend.
fn simulated(dir: &Path, plugin: &str) -> (Value, Vec<u64>) {
    let out = switchyard(
        dir,
        &[
            "simulate",
            "--plugin",
            plugin,
            "--generate",
            "3000",
            "--rate",
            "300",
            "--latency",
            "10ms,3=50ms",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "simulate failed: {}",
        text(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let split = report["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["requests"].as_u64().expect("requests"))
        .collect();
    (report, split)
}
