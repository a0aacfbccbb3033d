//! The container files at the top of the repository: `compose.yaml` is
//! valid Compose (checked by Compose itself), and the `Dockerfile` builds
//! what the README builds, the way the README builds it.
//!
//! Needs `docker compose` or `docker-compose` (no Docker engine: `config`
//! only reads files); `.ci/setup compose` installs Debian's
//! `docker-compose` when neither is there. When it cannot, the test fails
//! rather than passing silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

fn read(file: &str) -> String {
    let path = repo().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `docker compose` (v2) when it works, else `docker-compose` (v1),
/// installed by `.ci/setup compose` (as .ci/run does) when neither is.
fn compose() -> Command {
    let setup = repo().join(".ci/setup");
    let installed = Command::new("bash")
        .arg(&setup)
        .arg("compose")
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "`{} compose` could not install docker-compose (see its message above)",
        setup.display()
    );
    if runs("docker", &["compose", "version"]) {
        let mut cmd = Command::new("docker");
        cmd.arg("compose");
        cmd
    } else if runs("docker-compose", &["version"]) {
        Command::new("docker-compose")
    } else {
        panic!(
            "neither `docker compose` nor `docker-compose` is installed, so compose.yaml \
             cannot be validated: `apt-get install -y --no-install-recommends docker-compose`"
        )
    }
}

fn compose_run(args: &[&str]) -> Output {
    let repo = repo();
    let file = repo.join("compose.yaml");
    let file = file.to_str().expect("a UTF-8 path");
    let output = compose()
        .current_dir(&repo)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES")
        .args(["-f", file])
        .args(args)
        .output()
        .expect("run compose");
    assert!(
        output.status.success(),
        "compose {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn compose_file_is_valid() {
    compose_run(&["config", "--quiet"]);
    let services = compose_run(&["config", "--services"]);
    let mut services: Vec<String> = String::from_utf8_lossy(&services.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    services.sort();
    assert_eq!(services, ["backend", "proxy"]);
}

/// The `cargo build` line of the Dockerfile, joined from its continuation
/// lines.
fn docker_build_command(dockerfile: &str) -> String {
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find(|l| l.contains("cargo build"))
        .expect("the Dockerfile runs `cargo build`");
    let from = line.find("cargo build").unwrap_or(0);
    let command = &line[from..];
    let end = command.find("&&").unwrap_or(command.len());
    command[..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn dockerfile_builds_like_the_readme() {
    let dockerfile = read("Dockerfile");
    assert_eq!(
        docker_build_command(&dockerfile),
        "cargo build --release --locked -p switchyard -p switchyard-backend",
        "the image is built with the README's release command"
    );
    assert!(
        dockerfile.contains("rustup target add wasm32-wasip2"),
        "host/build.rs builds the plugins for wasm32-wasip2"
    );

    // The build image is the toolchain rust-toolchain.toml pins.
    let toolchain = read("rust-toolchain.toml");
    let channel = toolchain
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|c| c.trim_matches('"'))
        .expect("rust-toolchain.toml has a channel");
    let minor = channel.rsplit_once('.').map_or(channel, |(mm, _)| mm);
    assert!(
        dockerfile.contains(&format!("FROM rust:{minor}-")),
        "the build stage uses rust:{minor} (rust-toolchain.toml pins {channel})"
    );

    // Both packages exist in the workspace, with the binaries copied out.
    let members = read("Cargo.toml");
    for (member, package) in [
        ("host", "switchyard"),
        ("examples/backend", "switchyard-backend"),
    ] {
        assert!(
            members.contains(&format!("\"{member}\"")),
            "{member} is a workspace member"
        );
        let manifest = read(&format!("{member}/Cargo.toml"));
        assert!(manifest.contains(&format!("name = \"{package}\"")));
        assert!(
            dockerfile.contains(&format!("target/release/{package}")),
            "the image gets the {package} binary"
        );
    }

    // Every reference plugin host/build.rs installs ships in the image.
    let build_rs = read("host/build.rs");
    // `const REFERENCE: [&str; N] = [...];`, on one line or several.
    let reference = build_rs
        .split_once("const REFERENCE")
        .and_then(|(_, rest)| rest.split_once('='))
        .and_then(|(_, rest)| rest.split_once("];"))
        .map(|(list, _)| list)
        .expect("host/build.rs lists the REFERENCE plugins");
    let loop_line = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find(|l| l.contains("for plugin in"))
        .expect("the Dockerfile copies the plugins in a loop");
    let names: Vec<&str> = reference.split('"').skip(1).step_by(2).collect();
    assert!(!names.is_empty());
    for name in names {
        assert!(
            loop_line
                .split(|c: char| c.is_whitespace() || c == ';')
                .any(|w| w == name),
            "plugin {name} (host/build.rs) is not copied into the image"
        );
    }
}

#[test]
fn dockerignore_keeps_what_the_build_needs() {
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for excluded in ["target", ".git"] {
        assert!(patterns.contains(&excluded), "{excluded} is not ignored");
    }
    let needed = [
        "Cargo.toml",
        "Cargo.lock",
        "rust-toolchain.toml",
        "host",
        "wit",
        "plugins",
        "examples",
        "examples/backend",
    ];
    for pattern in &patterns {
        let pattern = pattern.trim_end_matches('/');
        for path in needed {
            assert!(
                pattern != path && !path.starts_with(&format!("{pattern}/")) && pattern != "*",
                ".dockerignore pattern `{pattern}` leaves out `{path}`, which the build needs"
            );
        }
    }
}

#[test]
fn compose_config_matches_the_image() {
    let compose = read("compose.yaml");
    let config = read("examples/compose/switchyard.toml");
    let dockerfile = read("Dockerfile");
    assert!(compose.contains("./plugins:/etc/switchyard/plugins"));
    assert!(compose.contains("./examples/compose:/etc/switchyard/conf:ro"));
    assert!(compose.contains("\"--config\", \"/etc/switchyard/conf/switchyard.toml\""));
    assert!(dockerfile.contains("/etc/switchyard/plugins/"));
    assert!(config.contains("plugins = \"/etc/switchyard/plugins\""));
    assert!(config.contains("listen = \"0.0.0.0:8080\""));
    assert!(compose.contains("\"8080:8080\""));
    assert!(config.contains("servers = [\"backend:8000\"]"));
    assert!(switchyard_backend::DEFAULT_LISTEN.ends_with(":8000"));
}
