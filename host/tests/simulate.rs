//! `switchyard simulate` as a strategy author runs it: the real binary,
//! the real reference plugins, traces generated, written as trace lines, or
//! recorded as the access log of a real proxy run.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::Running;
use common::*;
use serde_json::Value;

/// Runs `switchyard simulate <args>`: (exit code, stdout, stderr).
fn simulate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("simulate")
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run switchyard simulate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs it with `--json` and parses the report; fails the test on an error.
fn report(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, stdout, stderr) = simulate(&all);
    assert_eq!(code, 0, "{args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Requests per backend id, in backend order.
fn split(report: &Value) -> Vec<u64> {
    report["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["requests"].as_u64().expect("requests"))
        .collect()
}

fn p99(report: &Value) -> f64 {
    report["latency_ms"]["p99"].as_f64().expect("p99")
}

#[test]
fn round_robin_splits_3000_generated_requests_exactly() {
    let r = report(&[
        "--plugin",
        ROUND_ROBIN,
        "--backends",
        "3",
        "--generate",
        "3000",
    ]);
    assert_eq!(split(&r), vec![1000, 1000, 1000], "{r:#}");
    assert_eq!(r["requests"], 3000);
    assert_eq!(r["served"], 3000);
    assert_eq!(r["rejected"], 0);
    assert_eq!(r["plugin_failures"]["total"], 0);
    assert_eq!(r["backends"][0]["id"], "b1");
    assert_eq!(r["backends"][0]["address"], "10.0.0.1:80");
    assert!((r["backends"][1]["share"].as_f64().expect("share") - 1.0 / 3.0).abs() < 1e-9);
    // 10 ms exponential service times: p50 ln 2 x 10 ms, p99 ln 100 x 10 ms.
    let p50 = r["latency_ms"]["p50"].as_f64().expect("p50");
    assert!((5.5..8.5).contains(&p50), "{p50}");
    assert!((35.0..60.0).contains(&p99(&r)), "{}", p99(&r));
    assert!(r["decisions"]["per_second"].as_f64().expect("rate") > 1000.0);
    assert_eq!(r["decisions"]["picks"], 2999, "all but the first are timed");
}

#[test]
fn weights_and_the_built_in_plugins_by_name() {
    let r = report(&[
        "--plugin",
        "round-robin",
        "--weights",
        "5,1,1",
        "--generate",
        "700",
    ]);
    assert_eq!(split(&r), vec![500, 100, 100]);
    assert_eq!(r["plugin"], "round-robin (built in)");
}

#[test]
fn least_conn_sends_fewer_requests_to_the_slow_backend_than_round_robin() {
    // b3 takes 20x longer; at 300 req/s it holds many requests in flight.
    let args = |plugin| {
        report(&[
            "--plugin",
            plugin,
            "--generate",
            "3000",
            "--rate",
            "300",
            "--latency",
            "10ms,3=200ms",
            "--seed",
            "7",
        ])
    };
    let lc = args(LEAST_CONN);
    let rr = args(ROUND_ROBIN);
    let [fast1, fast2, slow] = split(&lc)[..] else {
        panic!("three backends: {lc:#}");
    };
    assert_eq!(fast1 + fast2 + slow, 3000);
    assert!(
        slow * 4 < fast1.min(fast2),
        "least-conn avoids the slow backend: {fast1} {fast2} {slow}"
    );
    assert_eq!(split(&rr), vec![1000, 1000, 1000]);
    assert!(
        p99(&lc) < p99(&rr),
        "least-conn has the lower tail: {} vs {}",
        p99(&lc),
        p99(&rr)
    );
    assert!(lc["backends"][2]["peak_in_flight"].as_u64() > Some(1));
}

#[test]
fn slots_make_requests_queue() {
    // One backend, one slot, 10 ms fixed, 200 req/s offered: 2x overload.
    let r = report(&[
        "--plugin",
        ROUND_ROBIN,
        "--backends",
        "1",
        "--generate",
        "200",
        "--rate",
        "200",
        "--latency",
        "10ms",
        "--distribution",
        "fixed",
        "--slots",
        "1",
    ]);
    let b = &r["backends"][0];
    assert_eq!(b["slots"], 1);
    assert!(b["queued"].as_u64() > Some(100), "{b}");
    assert!(b["mean_queue_ms"].as_f64() > Some(10.0), "{b}");
    assert_eq!(
        r["latency_ms"]["p50"].as_f64().map(|v| v >= 10.0),
        Some(true)
    );
    // 200 requests of 10 ms each, back to back: at least 2 s of virtual time.
    assert!(r["virtual_seconds"].as_f64() >= Some(2.0), "{r:#}");
}

#[test]
fn ip_hash_keeps_every_client_of_a_trace_on_one_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trace.jsonl");
    let mut lines = String::from("# 10 clients, 30 requests each, interleaved\n");
    for i in 0..300 {
        lines.push_str(&format!(
            "{{\"at_ms\": {}, \"client\": \"203.0.113.{}\", \"path\": \"/cart/{i}\"}}\n",
            i * 2,
            i % 10 + 1
        ));
    }
    std::fs::write(&path, lines).expect("write trace");
    let r = report(&[
        "--plugin",
        IP_HASH,
        "--trace",
        &path.display().to_string(),
        "--by-client",
    ]);
    assert_eq!(r["requests"], 300);
    assert_eq!(r["trace"]["lines"]["trace"], 300);
    assert_eq!(r["clients"]["distinct"], 10);
    assert_eq!(r["clients"]["on_several_backends"], 0, "{r:#}");
    let clients = r["clients"]["by_client"].as_array().expect("by_client");
    assert_eq!(clients.len(), 10);
    let mut used = std::collections::BTreeSet::new();
    for c in clients {
        let backends = c["backends"].as_object().expect("backends");
        assert_eq!(backends.len(), 1, "one backend per client: {c}");
        assert_eq!(c["requests"], 30);
        used.extend(backends.keys().cloned());
    }
    assert!(used.len() > 1, "10 clients spread over backends: {used:?}");

    // Round robin, for contrast, moves every client around.
    let rr = report(&[
        "--plugin",
        ROUND_ROBIN,
        "--trace",
        &path.display().to_string(),
    ]);
    assert_eq!(rr["clients"]["on_several_backends"], 10);
}

#[test]
fn trace_lines_reach_the_strategy_with_their_headers() {
    // test-strategy `echo-header` picks the backend named by a header.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trace.jsonl");
    let lines: String = (0..30)
        .map(|i| {
            format!(
                "{{\"at_ms\": {i}, \"client\": \"192.0.2.1\", \"headers\": {{\"x-pick\": \"{}\"}}}}\n",
                i % 3
            )
        })
        .collect();
    std::fs::write(&path, lines).expect("write trace");
    let r = report(&[
        "--plugin",
        TEST_STRATEGY,
        "--param",
        "mode=echo-header",
        "--trace",
        &path.display().to_string(),
    ]);
    assert_eq!(r["plugin_failures"]["total"], 0, "{r:#}");
    assert_eq!(split(&r), vec![10, 10, 10], "{r:#}");
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let run = |seed: &str| {
        let mut r = report(&[
            "--plugin",
            LEAST_CONN,
            "--generate",
            "2000",
            "--rate",
            "500",
            "--latency",
            "5ms,2=50ms",
            "--distribution",
            "lognormal",
            "--sigma",
            "1",
            "--seed",
            seed,
        ]);
        // Only the wall-clock figures may differ.
        r["decisions"] = Value::Null;
        r["wall_seconds"] = Value::Null;
        r
    };
    let a = run("3");
    assert_eq!(a, run("3"));
    assert_ne!(a["latency_ms"], run("4")["latency_ms"]);
}

#[test]
fn the_text_report_is_a_table() {
    let (code, out, err) = simulate(&["--plugin", ROUND_ROBIN, "--generate", "30"]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "backend",
        "p99 ms",
        "b1",
        "10.0.0.3:80",
        "33.33%",
        "rejected: 0",
        "decisions:",
    ] {
        assert!(out.contains(needle), "`{needle}` in:\n{out}");
    }
}

#[test]
fn rejects_and_plugin_failures_are_counted() {
    let r = report(&[
        "--plugin",
        TEST_STRATEGY,
        "--param",
        "mode=reject",
        "--generate",
        "50",
    ]);
    assert_eq!(r["rejected"], 50);
    assert_eq!(r["served"], 0);
    assert_eq!(r["reject_reasons"]["test-strategy rejects everything"], 50);

    // A plugin that traps after 10 picks: the host's round robin serves
    // the rest, as it would live.
    let r = report(&[
        "--plugin",
        TEST_STRATEGY,
        "--param",
        "mode=\"trap\"",
        "--param",
        "after=10",
        "--generate",
        "50",
    ]);
    assert_eq!(r["served"], 50, "{r:#}");
    let failures = r["plugin_failures"]["total"].as_u64().expect("failures");
    assert!(failures >= 1, "{r:#}");
    assert!(r["plugin_failures"]["trap"].as_u64() >= Some(1), "{r:#}");
}

#[test]
fn bad_input_is_a_clear_error_and_exit_code_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.log");
    let malformed = dir.path().join("bad.jsonl");
    std::fs::write(
        &malformed,
        "{\"at_ms\": 0, \"client\": \"192.0.2.1\"}\n{\"at_ms\": 1, \"client\": \"192.0.2.1\"\n",
    )
    .expect("write");
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not wasm at all").expect("write");
    let (missing_s, malformed_s, garbage_s) = (
        missing.display().to_string(),
        malformed.display().to_string(),
        garbage.display().to_string(),
    );
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--plugin", ROUND_ROBIN, "--trace", &missing_s],
            format!("cannot read trace {missing_s}"),
        ),
        (
            vec!["--plugin", ROUND_ROBIN, "--trace", &malformed_s],
            format!("{malformed_s}:2: not valid JSON"),
        ),
        (
            vec!["--plugin", &garbage_s, "--generate", "10"],
            "not a WebAssembly file".into(),
        ),
        (
            vec!["--plugin", &missing_s, "--generate", "10"],
            "cannot read".into(),
        ),
        (
            vec![
                "--plugin",
                TEST_STRATEGY,
                "--param",
                "mode=fail-init",
                "--generate",
                "10",
            ],
            "test-strategy refuses to start".into(),
        ),
        (
            vec![
                "--plugin",
                LEAST_CONN,
                "--param",
                "choices=1",
                "--generate",
                "10",
            ],
            "choices".into(),
        ),
        (
            vec![
                "--plugin",
                ROUND_ROBIN,
                "--generate",
                "10",
                "--latency",
                "4=1ms",
            ],
            "--latency: `4` is not a backend".into(),
        ),
        (
            vec![
                "--plugin",
                ROUND_ROBIN,
                "--generate",
                "10",
                "--weights",
                "1,2",
            ],
            "--weights has 2 values for 3 backends".into(),
        ),
        (
            vec![
                "--plugin",
                ROUND_ROBIN,
                "--generate",
                "10",
                "--pick-deadline",
                "20s",
            ],
            "--pick-deadline must be 1ms..10s".into(),
        ),
        (
            vec![
                "--plugin",
                ROUND_ROBIN,
                "--generate",
                "10",
                "--latency",
                "recorded",
            ],
            "a generated trace has none".into(),
        ),
    ];
    for (args, needle) in cases {
        let (code, stdout, stderr) = simulate(&args);
        assert_eq!(code, 1, "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(&needle),
            "{args:?}: `{needle}` in: {stderr}"
        );
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
}

#[test]
fn a_timestamp_with_a_multi_byte_offset_is_an_error_naming_the_line_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = "2026-01-01T00:00:00Z INFO access: access client=192.0.2.1 method=GET path=/ upstream=\"app\" duration_ms=1\n";
    // Offsets of the six bytes the parser expects, but not six characters:
    // a multi-byte letter, an Arabic-Indic and a fullwidth digit.
    for (i, offset) in ["+0\u{e9}:0", "+00\u{e9}0", "+0\u{663}:0", "+\u{ff10}:0"]
        .into_iter()
        .enumerate()
    {
        assert_eq!(offset.len(), 6, "{offset}");
        let timestamp = format!("2026-01-01T00:00:00{offset}");
        let lines = [
            format!(
                "{timestamp} INFO access: access client=192.0.2.1 method=GET path=/ upstream=\"app\" duration_ms=1"
            ),
            format!(
                r#"{{"timestamp":"{timestamp}","level":"INFO","fields":{{"message":"access","client":"192.0.2.1","method":"GET","path":"/","upstream":"app","duration_ms":1.0}},"target":"access"}}"#
            ),
        ];
        for (kind, line) in ["text", "json"].into_iter().zip(lines) {
            let trace = dir.path().join(format!("{kind}-{i}.log"));
            std::fs::write(&trace, format!("{good}{line}\n")).expect("write");
            let path = trace.display().to_string();
            let (code, stdout, stderr) = simulate(&["--plugin", ROUND_ROBIN, "--trace", &path]);
            assert_eq!(code, 1, "{kind} {offset}: {stdout}{stderr}");
            assert!(!stderr.contains("panicked"), "{kind} {offset}: {stderr}");
            let reason = if kind == "text" {
                "not a trace line".to_owned()
            } else {
                format!("{timestamp:?} is not an RFC 3339 timestamp")
            };
            assert!(
                stderr.starts_with(&format!("error: {path}:2: {reason}")),
                "{kind} {offset}: {stderr}"
            );
        }
    }
}

/// Access-log lines the proxy wrote so far (JSON or text).
fn access_lines(proxy: &Running) -> usize {
    proxy
        .lines
        .lock()
        .expect("lock")
        .iter()
        .filter(|l| l.contains("\"target\":\"access\"") || l.contains(" access: "))
        .count()
}

/// Serves `requests` through a real proxy with the access log on, and
/// writes everything it logged to `log`.
async fn record_access_log(log_format: &str, requests: usize, log: &Path) {
    let be = backends(3).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "access-log = true\n{}",
        upstream("round-robin", &be, "")
    ));
    let proxy = Running::start(&fx, &["--no-watch", "--log-format", log_format]);
    let client = client();
    for i in 0..requests {
        let path = match i % 3 {
            0 => "/".to_owned(),
            1 => format!("/item/{i}?q=1"),
            _ => "/delay/5".to_owned(),
        };
        assert_eq!(get(&client, proxy.addr, &path).await.status, 200);
    }
    let logged = eventually(Duration::from_secs(5), || {
        let n = access_lines(&proxy);
        async move { n == requests }
    })
    .await;
    assert!(logged.is_some(), "{} access lines", access_lines(&proxy));
    let text = proxy.lines.lock().expect("lock").join("\n");
    std::fs::write(log, text).expect("write log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_json_access_log_replays_every_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.jsonl");
    record_access_log("json", 30, &log).await;
    let log_s = log.display().to_string();

    let r = report(&["--plugin", ROUND_ROBIN, "--trace", &log_s]);
    assert_eq!(r["requests"], 30, "{r:#}");
    assert_eq!(r["trace"]["lines"]["access-json"], 30);
    assert!(
        r["trace"]["skipped"]["other log lines"].as_u64() >= Some(1),
        "the proxy's other log lines are skipped: {r:#}"
    );
    assert_eq!(split(&r), vec![10, 10, 10]);
    assert_eq!(r["clients"]["distinct"], 1);
    // The recorded durations as service times: the /delay/5 requests took
    // at least 5 ms through the real proxy.
    let recorded = report(&[
        "--plugin",
        ROUND_ROBIN,
        "--trace",
        &log_s,
        "--latency",
        "recorded",
    ]);
    assert!(
        recorded["latency_ms"]["max"].as_f64() >= Some(5.0),
        "{recorded:#}"
    );
    // Only one upstream's lines, and re-timed arrivals.
    let other = simulate(&[
        "--plugin",
        ROUND_ROBIN,
        "--trace",
        &log_s,
        "--upstream",
        "other",
    ]);
    assert_eq!(other.0, 1);
    assert!(other.2.contains("no requests to replay"), "{}", other.2);
    let retimed = report(&[
        "--plugin",
        ROUND_ROBIN,
        "--trace",
        &log_s,
        "--upstream",
        "app",
        "--rate",
        "10",
    ]);
    assert_eq!(retimed["requests"], 30);
    let span = retimed["trace"]["span_seconds"].as_f64().expect("span");
    assert!(
        (1.0..10.0).contains(&span),
        "29 gaps of 0.1 s on average: {span}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_text_access_log_replays_every_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    record_access_log("text", 12, &log).await;
    let r = report(&["--plugin", IP_HASH, "--trace", &log.display().to_string()]);
    assert_eq!(r["requests"], 12, "{r:#}");
    assert_eq!(r["trace"]["lines"]["access-text"], 12);
    assert_eq!(r["clients"]["on_several_backends"], 0);
}

/// The cells of the `--compare` table row that starts with `label`.
fn row<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    let line = text
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no row {label:?} in:\n{text}"));
    line[label.len()..]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn compare_prints_one_column_per_strategy_on_the_same_requests() {
    let pair = format!("{ROUND_ROBIN},{LEAST_CONN}");
    let common = [
        "--generate",
        "3000",
        "--rate",
        "300",
        "--latency",
        "10ms,3=200ms",
        "--seed",
        "7",
    ];
    let mut args = vec!["--compare", pair.as_str()];
    args.extend(common);
    let (code, text, stderr) = simulate(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        text.starts_with("2 strategies over 3 backends on the same requests, seed 7\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("  round_robin: {ROUND_ROBIN}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("  least_conn: {LEAST_CONN}\n")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["round_robin", "least_conn"])),
        "a title row with one column per strategy: {text}"
    );
    // Round robin's column: the exact split; least-conn's: the slow b3 avoided.
    for b in ["b1 (10ms)", "b2 (10ms)"] {
        assert_eq!(row(&text, b)[0], "1000 33.3%", "{text}");
    }
    let slow = row(&text, "b3 (200ms)");
    assert_eq!(slow[0], "1000 33.3%", "{text}");
    let least: u64 = slow[1]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count: {text}"));
    assert!(least < 500, "{text}");
    for label in ["rejected", "plugin failures"] {
        assert_eq!(row(&text, label), ["0", "0"], "{text}");
    }
    for label in ["p50 ms", "p99 ms", "decisions/s", "ns per pick"] {
        assert_eq!(row(&text, label).len(), 2, "{label}: {text}");
    }

    // The same runs as --plugin gives, one after the other.
    let mut json = args.clone();
    json.push("--json");
    let (code, out, stderr) = simulate(&json);
    assert_eq!(code, 0, "{stderr}");
    let both: Value = serde_json::from_str(&out).expect("JSON");
    let reports = both["strategies"].as_array().expect("strategies");
    assert_eq!(reports.len(), 2, "{both:#}");
    assert_eq!(reports[0]["plugin"], ROUND_ROBIN);
    assert_eq!(reports[1]["plugin"], LEAST_CONN);
    assert_eq!(split(&reports[0]), vec![1000, 1000, 1000]);
    assert_eq!(
        reports[0]["trace"], reports[1]["trace"],
        "the same requests"
    );
    let mut alone = vec!["--plugin", LEAST_CONN];
    alone.extend(common);
    assert_eq!(split(&reports[1]), split(&report(&alone)));
    assert_eq!(split(&reports[1])[2], least);
}

#[test]
fn compare_needs_two_strategies_that_all_load() {
    let (code, _, stderr) = simulate(&["--compare", ROUND_ROBIN, "--generate", "10"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--compare needs at least two strategies"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.wasm").display().to_string();
    let pair = format!("round-robin,{missing}");
    let (code, _, stderr) = simulate(&["--compare", &pair, "--generate", "10"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("--compare: strategy {missing}")),
        "{stderr}"
    );

    let (code, _, stderr) = simulate(&["--generate", "10"]);
    assert_eq!(code, 2, "clap's usage error");
    assert!(
        stderr.contains("--plugin <FILE>|--compare <A,B,...>"),
        "{stderr}"
    );
}
