//! The strict front, with a raw-socket client: ambiguous or oversized
//! request heads get 400/414/431 and a closed connection, nothing reaches
//! the backend, and a client's broken body never counts against the backend.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes; returns what the proxy answered and whether it closed
/// the connection (within 3 s).
async fn exchange_closing(addr: std::net::SocketAddr, request: &str) -> (String, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
        .await
        .is_ok_and(|r| r.is_ok());
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    exchange_closing(addr, request).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_vectors_and_oversized_heads_are_refused_before_the_backend() {
    let be = backends(1).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&upstream("round-robin", &be, ""));
    let proxy = fx.start().await;
    let backend = || {
        std::sync::Arc::clone(
            &proxy.gateway().routes().upstreams[0]
                .backends
                .load()
                .backends[0],
        )
    };

    let many_headers: String = (0..120).map(|i| format!("X-{i}: v\r\n")).collect();
    let cases = [
        ("two different Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_string(), 400),
        ("Transfer-Encoding on two lines", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("chunked not last", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n".into(), 400),
        ("chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("Transfer-Encoding on HTTP/1.0", "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n".into(), 400),
        ("HTTP/1.1 without Host", "GET / HTTP/1.1\r\n\r\n".into(), 400),
        ("two Host headers", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(), 400),
        ("URI over 8 KiB", format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000)), 414),
        ("head over 32 KiB", format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(40_000)), 431),
        ("over 100 headers", format!("GET / HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n"), 431),
    ];
    for (what, request, status) in cases {
        let (answer, closed) = exchange_closing(proxy.addr(), &request).await;
        let line = answer.lines().next().unwrap_or("<nothing>");
        assert!(
            line.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {line}"
        );
        assert!(
            closed,
            "{what}: the connection must be closed after the answer"
        );
    }
    assert_eq!(backend().requests(), 0, "nothing reached the backend");

    // A well-formed request on the same proxy still works.
    let answer = exchange(
        proxy.addr(),
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Hello from backend 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_request_body_is_the_clients_fault_not_the_backends() {
    let be = backends(1).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&upstream("round-robin", &be, "max-fails = 1"));
    let proxy = fx.start().await;
    let answer = exchange(
        proxy.addr(),
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let backend = std::sync::Arc::clone(
        &proxy.gateway().routes().upstreams[0]
            .backends
            .load()
            .backends[0],
    );
    assert_eq!(backend.failures(), 0);
    assert!(
        backend.healthy(),
        "a client must not be able to take a backend out"
    );
    let r = get(&client(), proxy.addr(), "/").await;
    assert_eq!(r.status, 200);
}
