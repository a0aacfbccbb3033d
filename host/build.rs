//! Builds the plugin components (`plugins/*`: strategies and admission
//! plugins, and the test ones) for
//! `wasm32-wasip2`, exposes their paths to the host as
//! `SWITCHYARD_WASM_<NAME>`, and installs the reference ones as
//! `plugins/<name>.wasm` (atomically, so a running proxy never sees half a
//! file). This is what makes a plain `cargo build` produce a usable
//! `plugins/` directory.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Installed into `plugins/`.
const REFERENCE: [&str; 5] = [
    "round-robin",
    "least-conn",
    "ip-hash",
    "rate-limit",
    "api-key",
];
/// Used by the test suite only.
const TEST_ONLY: [&str; 2] = ["test-strategy", "test-admission"];
/// More strategies under `examples/strategies/`: built and tested with the
/// host, not installed into `plugins/`.
const EXAMPLES: &[&str] = &[
    "smooth-wrr",
    "p2c",
    "peak-ewma",
    "consistent-hash",
    "canary",
];

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("host/ lives in the workspace root")
        .to_path_buf();
    for watched in [
        "wit",
        "Cargo.lock",
        "host/tests/plugins",
        "examples/strategies",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    for name in REFERENCE {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("plugins").join(name).display()
        );
    }

    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root.join(d) })
        .unwrap_or_else(|| root.join("target"))
        .join("plugins");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for name in REFERENCE.iter().chain(TEST_ONLY.iter()).chain(EXAMPLES) {
        cmd.args(["-p", name]);
    }
    // Settings meant for the host build must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PROFILE_RELEASE_LTO",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd
        .output()
        .expect("cannot run cargo to build the strategy plugins");
    if !output.status.success() {
        panic!(
            "building the strategy plugins for wasm32-wasip2 failed.\n\
             Is the target installed? `rustup target add wasm32-wasip2`\n\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let artifacts = target_dir.join("wasm32-wasip2").join("release");
    for name in REFERENCE.iter().chain(TEST_ONLY.iter()).chain(EXAMPLES) {
        let file = artifacts.join(format!("{}.wasm", name.replace('-', "_")));
        let var = name.replace('-', "_").to_uppercase();
        println!("cargo:rustc-env=SWITCHYARD_WASM_{var}={}", file.display());
    }
    let plugins = root.join("plugins");
    for name in REFERENCE {
        let from = artifacts.join(format!("{}.wasm", name.replace('-', "_")));
        install(&from, &plugins.join(format!("{name}.wasm")));
    }
}

/// Copies `from` to `to` via a temporary file and a rename, unless `to`
/// already has the same bytes.
fn install(from: &Path, to: &Path) {
    let bytes = fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    if fs::read(to).is_ok_and(|old| old == bytes) {
        return;
    }
    let tmp = to.with_extension("wasm.tmp");
    fs::write(&tmp, &bytes).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    fs::rename(&tmp, to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
}
