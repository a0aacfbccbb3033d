//! The `switchyard` binary as a user runs it: `check` accepts the shipped
//! example and rejects broken files with a message naming the key.

use std::path::Path;
use std::process::Command;

fn switchyard(args: &[&str]) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(root)
        .env("RUST_LOG", "error")
        .output()
        .expect("run switchyard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_accepts_the_example_config() {
    let (ok, out) = switchyard(&["check", "--config", "examples/switchyard.toml"]);
    assert!(ok, "{out}");
    assert!(out.contains("configuration OK"), "{out}");
}

#[test]
fn check_rejects_bad_files_naming_the_key_and_the_expected_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let cases = [
        ("plugin = \"x\"\n", "unknown field `plugin`"),
        (
            "listen = \"nowhere\"\n[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n",
            "`listen`",
        ),
        (
            "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\", { address = \"127.0.0.1:2\", weight = -1 }]\n",
            "weight",
        ),
        (
            "[[upstream]]\nname = \"a\"\nstrategy = \"nope\"\nservers = [\"127.0.0.1:1\"]\n",
            "nope.wasm",
        ),
    ];
    for (i, (body, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        let text = format!("plugins = {:?}\n{body}", plugins.display().to_string());
        std::fs::write(&path, text).expect("write");
        let (ok, out) = switchyard(&["check", "--config", &path.display().to_string()]);
        assert!(!ok, "must fail: {body}");
        assert!(out.contains(needle), "expected `{needle}` in: {out}");
        assert!(
            out.contains(&format!("bad{i}.toml")),
            "names the file: {out}"
        );
    }
}
