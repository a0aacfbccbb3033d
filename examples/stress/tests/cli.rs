//! The `switchyard-stress` binary end to end: flags in, report out on
//! stdout, and an exit status that says whether every request succeeded.

mod support;

use std::{
    process::{Output, Stdio},
    time::Duration,
};

use support::{Backend, Reply, rotating};

fn command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-stress"));
    command.args(args).kill_on_drop(true);
    command
}

async fn output(mut command: tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("finished within 60 s")
        .expect("ran")
}

async fn stress(args: &[&str]) -> Output {
    output(command(args)).await
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("utf-8")
}

/// A URL on which nothing listens: every connection is refused.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}/", listener.local_addr().expect("local addr"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_the_backends_as_text() {
    let backend = Backend::start(|k, _| rotating(k)).await;

    let output = stress(&["-u", &backend.url, "-n", "30", "-c", "3"]).await;

    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert!(
        stdout.contains("backends: {1: 10, 2: 10, 3: 10}"),
        "{stdout}"
    );
    assert!(stdout.contains(": 30 requests in "), "{stdout}");
    assert!(stdout.contains("ok 30 (100.0%), failed 0"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_the_report_as_json() {
    let backend = Backend::start(|k, _| rotating(k)).await;

    let output = stress(&["-u", &backend.url, "-n", "30", "-c", "3", "--json"]).await;

    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["total"], 30);
    assert_eq!(report["successes"], 30);
    assert_eq!(report["failures"]["total"], 0);
    let backends: Vec<(&str, u64)> = report["backends"]
        .as_array()
        .expect("backends array")
        .iter()
        .map(|b| {
            let name = b["name"].as_str().expect("name");
            (name, b["count"].as_u64().expect("count"))
        })
        .collect();
    assert_eq!(backends, [("1", 10), ("2", 10), ("3", 10)]);
    assert!(report["elapsed_s"].as_f64().expect("elapsed") > 0.0);
    assert!(report["latency"]["p99_ms"].as_f64().expect("p99") > 0.0);
    assert!(
        output.stderr.is_empty(),
        "no progress bar when stderr is not a terminal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_the_seed_scripts_spelling_and_a_positional_url() {
    let backend = Backend::start(|k, _| rotating(k)).await;
    let url = backend.url.as_str();

    for args in [
        &["--n", "30", "--c", "3", "--u", url][..],
        &["--number", "30", "--concurrent", "3", "--url", url],
        &[url, "-n", "30", "-c", "3"],
    ] {
        let output = stress(args).await;

        let stdout = text(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stdout}");
        assert!(stdout.contains(": 30 requests in "), "{args:?}: {stdout}");
        assert!(stdout.contains(", 3 connections"), "{args:?}: {stdout}");
        assert!(
            stdout.contains("backends: {1: 10, 2: 10, 3: 10}"),
            "{args:?}: {stdout}"
        );
    }
}

#[tokio::test]
async fn two_urls_are_a_usage_error() {
    let output = stress(&["http://127.0.0.1:1/", "-u", "http://127.0.0.1:2/"]).await;

    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    assert!(output.stdout.is_empty());

    let output = stress(&["-n", "5"]).await;
    assert_eq!(output.status.code(), Some(2), "no URL at all");
    assert!(text(&output.stderr).contains("required"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_fails_with_its_reason_and_no_rate() {
    let url = dead_url();

    let output = stress(&[&url, "-n", "20", "-c", "4"]).await;

    assert_eq!(output.status.code(), Some(1), "requests failed");
    let stdout = text(&output.stdout);
    assert!(!stdout.contains("req/s"), "no rate from failures: {stdout}");
    assert!(
        stdout.contains("no request succeeded; most common failure: connection refused (20 of 20)"),
        "{stdout}"
    );
    assert!(stdout.contains("failed 20 (connect: 20)"), "{stdout}");

    let output = stress(&[&url, "-n", "20", "-c", "4", "--json"]).await;

    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["total"], 20);
    assert_eq!(report["successes"], 0);
    assert_eq!(report["success_rps"], 0.0);
    assert!(
        report["rps"].as_f64().expect("rps") > 0.0,
        "rps counts failures too"
    );
    assert_eq!(report["failures"]["connect"], 20);
    assert_eq!(report["failures"]["reasons"]["connection refused"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_failed_request_exits_1_and_the_rate_counts_successes() {
    let backend = Backend::start(|k, _| {
        if k % 3 == 0 {
            Reply::Status(503)
        } else {
            rotating(k)
        }
    })
    .await;

    let output = stress(&[&backend.url, "-n", "30", "-c", "1"]).await;

    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(" successful req/s, 1 connections"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok 20 (66.7%), failed 10 (503: 10)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_quietly() {
    let backend = Backend::start(|k, _| rotating(k)).await;

    for args in [
        &[backend.url.as_str(), "-n", "30"][..],
        &[backend.url.as_str(), "-n", "30", "--json"],
        &["--help"],
    ] {
        // The reader is gone before the program writes a byte, as when
        // `head` has read its lines and exited.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let mut command = command(args);
        command.stdout(Stdio::from(writer));
        let output = output(command).await;

        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn what_cannot_run_exits_2_with_the_reason() {
    let output = stress(&["https://127.0.0.1:1/", "--ca", "/nonexistent/ca.pem"]).await;

    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot use --ca `/nonexistent/ca.pem`: No such file"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn help_documents_flags_aliases_and_exit_status() {
    let output = stress(&["--help"]).await;

    assert_eq!(output.status.code(), Some(0));
    let help = text(&output.stdout);
    for expected in [
        "[aliases: --n, --number]",
        "[aliases: --c, --concurrent]",
        "[alias: --u]",
        "switchyard-stress [OPTIONS] <URL>",
        "[URL]",
        "--h2",
        "--ca <FILE>",
        "--insecure",
        "Exit status:",
        "0  every request succeeded",
        "1  some request failed",
        "2  nothing was run",
    ] {
        assert!(help.contains(expected), "{expected:?} in:\n{help}");
    }
}
