//! `https://` and HTTP/2 targets: TLS with a self-signed certificate made
//! in the test (trusted by `--ca`, by the system roots through
//! `SSL_CERT_FILE`, or not at all with `--insecure`), HTTP/2 by ALPN over
//! TLS and by prior knowledge over TCP. The backend puts the HTTP version
//! it saw into the name it answers with, so the per-backend counts show
//! both that attribution works and which protocol was spoken.

mod support;

use std::{process::Output, sync::Arc, time::Duration};

use http::request::Parts;
use support::{Backend, Cert, Protocol, Reply, backends, options, run};

/// Names replicas 1, 2, 3 in turn, with the version and (HTTP/2)
/// authority the request came with: "1 HTTP/2.0 127.0.0.1:4321".
fn versioned(k: u64, request: &Parts) -> Reply {
    let authority = request
        .uri
        .authority()
        .map(|authority| format!(" {authority}"))
        .unwrap_or_default();
    Reply::Upstream(format!("{} {:?}{authority}", k % 3 + 1, request.version))
}

/// The per-backend counts with only the replica number and version.
fn replicas(report: &switchyard_stress::Report) -> Vec<(String, u64)> {
    backends(report)
        .into_iter()
        .map(|(name, count)| {
            let short: Vec<&str> = name.split(' ').take(2).collect();
            (short.join(" "), count)
        })
        .collect()
}

fn expected(version: &str) -> Vec<(String, u64)> {
    (1..=3).map(|n| (format!("{n} {version}"), 10)).collect()
}

fn tls(cert: &Arc<Cert>, alpn: &[&'static str]) -> Protocol {
    Protocol::Tls(Arc::clone(cert), alpn.to_vec())
}

async fn stress(args: &[&str], env: &[(&str, &std::path::Path)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-stress"));
    command
        .args(args)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("finished within 60 s")
        .expect("ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_ca_given() {
    let cert = Arc::new(Cert::new("switchyard test"));
    let backend = Backend::speaking(tls(&cert, &["http/1.1"]), versioned).await;
    let ca = cert.pem.to_str().expect("utf-8 path");

    let report = run(options(&backend.url, &["-n", "30", "-c", "3", "--ca", ca])).await;

    assert!(backend.url.starts_with("https://"));
    assert_eq!((report.total, report.successes), (30, 30), "{report:?}");
    assert_eq!(replicas(&report), expected("HTTP/1.1"));
    assert!(
        backend.connections() <= 3,
        "{} connections",
        backend.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_http2_by_alpn() {
    let cert = Arc::new(Cert::new("switchyard test"));
    let backend = Backend::speaking(tls(&cert, &["h2", "http/1.1"]), versioned).await;
    let ca = cert.pem.to_str().expect("utf-8 path");

    let h2 = run(options(
        &backend.url,
        &["-n", "30", "-c", "3", "--ca", ca, "--h2"],
    ))
    .await;
    let h1 = run(options(&backend.url, &["-n", "30", "-c", "3", "--ca", ca])).await;

    assert_eq!((h2.total, h2.successes), (30, 30), "{h2:?}");
    assert_eq!(replicas(&h2), expected("HTTP/2.0"));
    assert_eq!(replicas(&h1), expected("HTTP/1.1"));
    // HTTP/2 names the host in :authority, as the URL gives it.
    let authority = backend
        .url
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let name = &h2.backends[0].name;
    assert_eq!(name, &format!("1 HTTP/2.0 {authority}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_over_tcp() {
    let backend = Backend::speaking(Protocol::Http2, versioned).await;

    let report = run(options(&backend.url, &["-n", "30", "-c", "3", "--h2"])).await;
    let by_body = run(options(&backend.url, &["-n", "30", "--h2", "--by", "body"])).await;
    let host = run(options(
        &backend.url,
        &["-n", "3", "-c", "1", "--h2", "-H", "Host: example.test:81"],
    ))
    .await;

    assert_eq!((report.total, report.successes), (30, 30), "{report:?}");
    assert_eq!(replicas(&report), expected("HTTP/2.0"));
    assert_eq!(
        backends(&by_body),
        [("ok", 30)],
        "the body names the backend"
    );
    assert_eq!(
        backends(&host),
        [
            ("1 HTTP/2.0 example.test:81", 1),
            ("2 HTTP/2.0 example.test:81", 1),
            ("3 HTTP/2.0 example.test:81", 1)
        ],
        "-H Host: becomes the :authority"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_only_server_refuses_h2_with_a_reason() {
    let cert = Arc::new(Cert::new("switchyard test"));
    let backend = Backend::speaking(tls(&cert, &["http/1.1"]), versioned).await;
    let ca = cert.pem.to_str().expect("utf-8 path");

    let report = run(options(
        &backend.url,
        &["-n", "4", "-c", "2", "--ca", ca, "--h2"],
    ))
    .await;

    assert_eq!((report.total, report.successes), (4, 0));
    assert_eq!(report.failures.connect, 4);
    let (reason, count) = report.most_common_failure().expect("failures");
    assert_eq!(count, 4);
    assert!(reason.contains("did not agree to HTTP/2"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_roots_decide_without_ca() {
    let cert = Arc::new(Cert::new("switchyard test"));
    let stranger = Cert::new("someone else");
    let backend = Backend::speaking(tls(&cert, &["http/1.1"]), versioned).await;
    let args = [backend.url.as_str(), "-n", "5", "-c", "1"];

    // rustls-native-certs reads the system's roots from SSL_CERT_FILE when
    // it is set: first roots that do not include the server's certificate.
    let untrusted = stress(&args, &[("SSL_CERT_FILE", &stranger.pem)]).await;
    let trusted = stress(&args, &[("SSL_CERT_FILE", &cert.pem)]).await;
    assert!(
        String::from_utf8_lossy(&trusted.stdout)
            .contains("backends: {1 HTTP/1.1: 2, 2 HTTP/1.1: 2, 3 HTTP/1.1: 1}"),
        "{trusted:?}"
    );
    let insecure = stress(
        &[&args[..], &["--insecure"]].concat(),
        &[("SSL_CERT_FILE", &stranger.pem)],
    )
    .await;

    let stdout = String::from_utf8_lossy(&untrusted.stdout);
    assert_eq!(untrusted.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "no request succeeded; most common failure: TLS handshake failed: invalid peer certificate: UnknownIssuer (5 of 5)"
        ),
        "{stdout}"
    );
    for (output, what) in [(&trusted, "trusted"), (&insecure, "--insecure")] {
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{what}: {stdout}");
        assert!(
            stdout.contains("ok 5 (100.0%), failed 0"),
            "{what}: {stdout}"
        );
        // The backend counts on across runs: only the first run's split is
        // known, but every response names its replica.
        assert!(
            stdout.contains("backends: {1 HTTP/1.1: "),
            "{what}: {stdout}"
        );
        assert!(!stdout.contains("(none)"), "{what}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_without_certificates_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");

    let mut options = options("https://127.0.0.1:1/", &["-n", "1"]);
    options.ca = Some(empty.clone());
    let error = switchyard_stress::run(options)
        .await
        .expect_err("no trust anchor");

    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "cannot use --ca `{}`: no certificate in it",
            empty.display()
        )),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_port_fails_per_request() {
    let cert = Arc::new(Cert::new("switchyard test"));
    let backend = Backend::speaking(tls(&cert, &["http/1.1"]), versioned).await;
    let url = backend.url.replacen("https://", "http://", 1);

    let report = run(options(&url, &["-n", "3", "-c", "1", "--timeout", "5s"])).await;

    assert_eq!((report.total, report.successes), (3, 0), "{report:?}");
    let reasons = &report.failures.reasons;
    assert!(
        reasons.keys().any(|reason| reason.contains("try https://")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_to_an_http2_only_server_suggests_h2() {
    let backend = Backend::speaking(Protocol::Http2, versioned).await;

    let report = run(options(&backend.url, &["-n", "3", "-c", "1"])).await;

    assert_eq!((report.total, report.successes), (3, 0), "{report:?}");
    let reasons = &report.failures.reasons;
    assert!(
        reasons.keys().any(
            |reason| reason.contains("not an HTTP/1.1 response") && reason.contains("try --h2")
        ),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plain_http_port_suggests_http() {
    let backend = Backend::speaking(Protocol::Http1, versioned).await;
    let url = backend.url.replacen("http://", "https://", 1);

    let report = run(options(&url, &["-n", "3", "-c", "1", "--insecure"])).await;

    assert_eq!((report.total, report.successes), (3, 0), "{report:?}");
    assert_eq!(report.failures.connect, 3);
    let (reason, count) = report.most_common_failure().expect("failures");
    assert_eq!(count, 3);
    assert!(reason.starts_with("TLS handshake failed: "), "{reason}");
    assert!(
        reason.ends_with("(not a TLS port? try http://)"),
        "{reason}"
    );
}
