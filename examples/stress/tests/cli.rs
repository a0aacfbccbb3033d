//! The `switchyard-stress` binary end to end: flags in, report out on stdout.

mod support;

use std::{process::Output, time::Duration};

use support::{Backend, rotating};

async fn stress(args: &[&str]) -> Output {
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-stress"))
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), command)
        .await
        .expect("finished within 60 s")
        .expect("ran")
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

#[tokio::test]
async fn refuses_https_with_a_clear_message() {
    let output = stress(&["-u", "https://127.0.0.1:1/"]).await;

    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8(output.stderr).expect("utf-8");
    assert!(stderr.contains("https is not supported"), "{stderr}");
}
