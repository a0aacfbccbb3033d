//! The library driven in-process against test backends whose answers are
//! known in advance, so every count in the report can be asserted exactly.
//! Timing is only ever asserted as a lower bound.

mod support;

use std::{collections::BTreeMap, time::Duration};

use support::{Backend, Reply, backends, options, rotating, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_sees_the_exact_rotation() {
    let backend = Backend::start(|k, _| rotating(k)).await;

    let report = run(options(&backend.url, &["-n", "300", "-c", "1"])).await;

    assert_eq!(backends(&report), [("1", 100), ("2", 100), ("3", 100)]);
    assert_eq!((report.total, report.successes), (300, 300));
    assert_eq!(report.failures, Default::default());
    assert!(!report.interrupted);
    let latency = report.latency.expect("300 responses have latencies");
    assert!(latency.min_ms > 0.0 && latency.min_ms <= latency.p50_ms);
    assert!(latency.p50_ms <= latency.p90_ms && latency.p99_ms <= latency.max_ms);
    assert_eq!(backend.requests(), 300);
    assert_eq!(backend.connections(), 1, "one keep-alive connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_count_the_same() {
    let backend = Backend::start(|k, _| rotating(k)).await;

    let report = run(options(&backend.url, &["-n", "300", "-c", "8"])).await;

    assert_eq!(backends(&report), [("1", 100), ("2", 100), ("3", 100)]);
    assert_eq!((report.total, report.successes), (300, 300));
    assert_eq!(report.concurrency, 8);
    assert_eq!(backend.requests(), 300);
    assert!(
        backend.connections() <= 8,
        "{} connections",
        backend.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_are_failures_by_code() {
    fn reply(k: u64) -> Reply {
        match k % 10 {
            0 => Reply::Status(503),
            5 => Reply::Status(404),
            7 => Reply::Status(500),
            _ => rotating(k),
        }
    }
    let backend = Backend::start(|k, _| reply(k)).await;

    let report = run(options(&backend.url, &["-n", "300", "-c", "4"])).await;

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for k in 0..300 {
        let name = match reply(k) {
            Reply::Upstream(name) => name,
            _ => "(none)".to_owned(),
        };
        *expected.entry(name).or_default() += 1;
    }
    let expected: Vec<(&str, u64)> = ["1", "2", "3", "(none)"]
        .into_iter()
        .map(|name| (name, expected[name]))
        .collect();
    assert_eq!(backends(&report), expected);
    assert_eq!((report.total, report.successes), (300, 210));
    assert_eq!(report.failures.total, 90);
    assert_eq!(
        report.failures.server_errors,
        BTreeMap::from([(500, 30), (503, 30)])
    );
    assert_eq!(report.failures.client_errors, BTreeMap::from([(404, 30)]));
    let no_response = (
        report.failures.connect,
        report.failures.timeout,
        report.failures.io,
    );
    assert_eq!(no_response, (0, 0, 0));
    assert!(report.latency.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_means_reconnect_not_failure() {
    let backend = Backend::start(|k, _| match rotating(k) {
        Reply::Upstream(name) => Reply::Close(name),
        other => other,
    })
    .await;

    let report = run(options(&backend.url, &["-n", "300", "-c", "3"])).await;

    assert_eq!(backends(&report), [("1", 100), ("2", 100), ("3", 100)]);
    assert_eq!((report.total, report.successes), (300, 300));
    assert_eq!(report.failures, Default::default());
    assert_eq!(backend.connections(), 300, "one connection per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_io_failures() {
    let backend = Backend::start(|k, _| {
        if k % 3 == 2 {
            Reply::Drop
        } else {
            Reply::Upstream("a".to_owned())
        }
    })
    .await;

    let report = run(options(&backend.url, &["-n", "300", "-c", "4"])).await;

    assert_eq!((report.total, report.successes), (300, 200));
    assert_eq!(report.failures.io, 100);
    assert_eq!(report.failures.total, 100);
    assert_eq!(backends(&report), [("a", 200)]);
    assert_eq!(backend.requests(), 300, "no request is retried");
    assert!(
        backend.connections() >= 100,
        "a new connection after each drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_requests_time_out() {
    let backend = Backend::start(|k, _| if k == 1 { Reply::Stall } else { rotating(k) }).await;

    let report = run(options(
        &backend.url,
        &["-n", "3", "-c", "1", "--timeout", "200ms"],
    ))
    .await;

    assert_eq!((report.total, report.successes), (3, 2));
    assert_eq!(report.failures.timeout, 1);
    assert_eq!(report.failures.total, 1);
    assert_eq!(backends(&report), [("1", 1), ("3", 1)]);
    assert!(report.elapsed >= Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_connect_failures() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("local addr"));
    drop(listener);

    let report = run(options(&url, &["-n", "5", "-c", "2"])).await;

    assert_eq!((report.total, report.successes), (5, 0));
    assert_eq!(report.failures.connect, 5);
    assert_eq!(report.failures.total, 5);
    assert!(report.latency.is_none());
    assert!(report.backends.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_named_by_body() {
    // "10" sorts after "2": natural order, not byte order.
    let backend = Backend::start(|k, _| Reply::Body(format!("  {}\n", k % 2 * 8 + 2))).await;

    let by_body = run(options(&backend.url, &["-n", "40", "--by", "body"])).await;
    let by_header = run(options(&backend.url, &["-n", "40"])).await;

    assert_eq!(backends(&by_body), [("2", 20), ("10", 20)]);
    assert_eq!(backends(&by_header), [("(none)", 40)]);
    assert_eq!(by_header.successes, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_headers_by_default_and_by_choice() {
    // Switchyard's demo backends say `x-backend`; `x-upstream` wins when a
    // response has both.
    let backend = Backend::start(|k, _| {
        Reply::Headers(match k % 4 {
            0 => vec![("x-backend", "b")],
            1 => vec![("x-upstream", "u"), ("x-backend", "b")],
            2 => vec![("x-served-by", "s")],
            _ => vec![],
        })
    })
    .await;

    let default = run(options(&backend.url, &["-n", "40", "-c", "1"])).await;
    let chosen = run(options(
        &backend.url,
        &["-n", "40", "-c", "1", "--by", "X-Served-By"],
    ))
    .await;

    assert_eq!(backends(&default), [("b", 10), ("u", 10), ("(none)", 20)]);
    assert_eq!(backends(&chosen), [("s", 10), ("(none)", 30)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_the_method_headers_and_host() {
    let backend = Backend::start(|_, request| {
        let header = |name: &str| {
            request
                .headers
                .get_all(name)
                .iter()
                .map(|value| value.to_str().expect("ascii"))
                .collect::<Vec<_>>()
                .join(",")
        };
        Reply::Upstream(format!(
            "{} {} host={} x-test={}",
            request.method,
            request.uri,
            header("host"),
            header("x-test")
        ))
    })
    .await;
    let url = format!("{}path?q=1", backend.url);
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("authority")
        .to_owned();

    let report = run(options(
        &url,
        &[
            "-n",
            "4",
            "-m",
            "POST",
            "-H",
            "X-Test: a",
            "-H",
            "x-test: b",
        ],
    ))
    .await;

    let expected = format!("POST /path?q=1 host={host} x-test=a,b");
    assert_eq!(backends(&report), [(expected.as_str(), 4)]);
    assert_eq!(report.method, "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_spaces_requests_out() {
    let backend = Backend::start(|k, _| rotating(k)).await;

    let report = run(options(
        &backend.url,
        &["-n", "20", "-c", "4", "--rate", "100"],
    ))
    .await;

    assert_eq!((report.total, report.successes), (20, 20));
    assert_eq!(report.rate, Some(100.0));
    // Request 19 is not due before 190 ms.
    assert!(
        report.elapsed >= Duration::from_millis(150),
        "{:?}",
        report.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_counts_latency_from_the_schedule() {
    // The first answer takes 300 ms; requests 1..19 (due at 10..190 ms)
    // wait for the only connection, and that wait is latency.
    let backend = Backend::start(|k, _| {
        let name = (k % 3 + 1).to_string();
        if k == 0 {
            Reply::Slow(Duration::from_millis(300), name)
        } else {
            Reply::Upstream(name)
        }
    })
    .await;

    let report = run(options(
        &backend.url,
        &["-n", "20", "-c", "1", "--rate", "100"],
    ))
    .await;

    assert_eq!((report.total, report.successes), (20, 20));
    let latency = report.latency.expect("20 responses");
    assert!(latency.p50_ms >= 100.0, "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_and_count_whichever_comes_first() {
    let backend = Backend::start(|k, _| rotating(k)).await;

    let timed = run(options(&backend.url, &["-d", "300ms", "-c", "2"])).await;
    assert!(
        timed.elapsed >= Duration::from_millis(300),
        "{:?}",
        timed.elapsed
    );
    assert!(timed.total > 0 && !timed.interrupted);

    let counted = run(options(&backend.url, &["-n", "50", "-d", "60s"])).await;
    assert_eq!(counted.total, 50);
    assert!(counted.elapsed < Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_count_or_duration_sends_1000() {
    let backend = Backend::start(|k, _| rotating(k)).await;

    let report = run(options(&backend.url, &[])).await;

    assert_eq!(report.total, 1000);
    assert_eq!(backend.requests(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_what_completed() {
    // Ten answers, then nothing: the run can only end by being stopped.
    let backend = Backend::start(|k, _| if k < 10 { rotating(k) } else { Reply::Stall }).await;

    let run = switchyard_stress::run_until(
        options(&backend.url, &["-n", "1000", "-c", "2"]),
        tokio::time::sleep(Duration::from_millis(300)),
    );
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("stopped in time")
        .expect("run started");

    assert!(report.interrupted);
    assert_eq!((report.total, report.successes), (10, 10));
    assert_eq!(
        report.failures,
        Default::default(),
        "stalled requests are not counted"
    );
    assert_eq!(backends(&report), [("1", 4), ("2", 3), ("3", 3)]);
}
