//! `read-timeout`: a backend that starts a response and then goes silent
//! does not hold the client and the backend connection forever. After
//! `read-timeout` without a byte the proxy cuts the client's response (a
//! `Content-Length` body arrives short and the connection closes; a
//! chunked one never gets its last chunk), closes the backend connection,
//! and counts a failure of the backend, which `/status` shows. Bodiless
//! requests take the proxy's own client, requests with a body hyper's.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::raw::{Asked, Raw, Step, write};
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The upstream's `read-timeout` in these tests.
const READ_TIMEOUT: Duration = Duration::from_millis(300);

/// The start of a response and then nothing: the backend reads no further
/// request, and notices when the proxy closes the connection.
fn stalls(asked: &Asked) -> Vec<Step> {
    match asked.target.as_str() {
        "/length" => vec![write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")],
        "/chunked" => vec![write(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )],
        // Not even a head.
        _ => vec![],
    }
}

/// A proxy over `raw` alone, `read-timeout = "300ms"`, the default
/// `response-timeout` (60 s) and, unless `extra` says otherwise, the
/// default passive health (one failure takes the backend out).
async fn proxy_over(raw: &Raw, extra: &str) -> (Fixture, switchyard::Proxy) {
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "workers = 1\n[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\nread-timeout = \"{}ms\"\n{extra}\n",
        raw.addr,
        READ_TIMEOUT.as_millis()
    ));
    let proxy = fx.start().await;
    (fx, proxy)
}

/// Sends `request` on a new connection and reads until the proxy closes
/// it; what came, and how long that took. Fails the test after 10 s (the
/// proxy hung).
async fn until_closed(proxy: SocketAddr, request: &str) -> (String, Duration) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let start = Instant::now();
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let took = start.elapsed();
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(
        read.is_ok(),
        "the connection was still open after 10 s: {got:?}"
    );
    (got, took)
}

/// The upstream's only backend in `/status`.
async fn backend_status(proxy: &switchyard::Proxy) -> Value {
    let admin = proxy.admin_addr().expect("admin is on");
    let r = get(&client(), admin, "/status").await;
    assert_eq!(r.status, 200);
    let s: Value = serde_json::from_str(&r.body).expect("status is JSON");
    s["upstreams"][0]["backends"][0].clone()
}

/// `method /path` (with a body when `body` is not empty) against a backend
/// that stalls in the body: the client gets the head and a cut body, then
/// a closed connection, about `read-timeout` after the backend's last
/// byte; the backend connection is closed and its failure counted.
async fn cut_after_read_timeout(method: &str, path: &str, body: &str) {
    let raw = Raw::start(stalls).await;
    let (_fx, proxy) = proxy_over(&raw, "").await;
    let request = if body.is_empty() {
        format!("{method} {path} HTTP/1.1\r\nHost: app\r\n\r\n")
    } else {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let (got, took) = until_closed(proxy.addr(), &request).await;
    let what = format!("{method} {path}");

    // The head, then part of the body, then the end of the connection.
    let (head, rest) = got
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no response head: {got:?}"));
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{what}: {head:?}");
    if path == "/length" {
        assert!(head.contains("content-length: 100"), "{what}: {head:?}");
        assert_eq!(rest, "hello", "{what}: fewer than 100 bytes, then closed");
    } else {
        assert!(
            head.contains("transfer-encoding: chunked"),
            "{what}: {head:?}"
        );
        assert!(rest.contains("hello"), "{what}: {rest:?}");
        assert!(
            !rest.contains("0\r\n\r\n"),
            "{what}: a cut chunked body must not end: {rest:?}"
        );
    }
    // Cut by the timeout (not at once), and long before anything else
    // would have (`response-timeout` is 60 s).
    assert!(
        took >= READ_TIMEOUT - Duration::from_millis(20) && took < Duration::from_secs(5),
        "{what}: closed after {took:?}"
    );

    // The backend's connection is closed, and the failure is counted
    // against the backend (as the upstream's only backend, passive health
    // does not take it out: nginx ignores max_fails for a lone server).
    let closed = eventually(Duration::from_secs(5), || async {
        raw.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        closed.is_some(),
        "{what}: the backend connection stayed open"
    );
    let backend = backend_status(&proxy).await;
    assert_eq!(backend["failures"], 1, "{what}: {backend}");
    assert_eq!(backend["healthy"], true, "{what}: {backend}");
    assert_eq!(backend["in_flight"], 0, "{what}: {backend}");
    assert_eq!(
        raw.requests.load(Ordering::SeqCst),
        1,
        "{what}: not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_body_that_stalls_is_cut_after_read_timeout() {
    cut_after_read_timeout("GET", "/length", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_that_stalls_is_cut_after_read_timeout() {
    cut_after_read_timeout("GET", "/chunked", "").await;
}

/// A request with a body goes through hyper's client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_body_that_stalls_is_cut_after_read_timeout_with_a_body() {
    cut_after_read_timeout("POST", "/length", "payload").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_that_stalls_is_cut_after_read_timeout_with_a_body() {
    cut_after_read_timeout("POST", "/chunked", "payload").await;
}

/// `read-timeout` bounds the wait for the head too, as nginx's
/// `proxy_read_timeout` does: with the default `response-timeout` of 60 s,
/// a backend that never answers gets 504 after 300 ms. (`max-fails = 0`:
/// the backend stays in for the second request.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_bounds_the_wait_for_the_head_too() {
    let raw = Raw::start(stalls).await;
    let (_fx, proxy) = proxy_over(&raw, "max-fails = 0").await;
    for (method, body) in [("GET", ""), ("POST", "payload")] {
        let start = Instant::now();
        let reply = send(proxy.addr(), method, "/silent", body).await;
        let took = start.elapsed();
        assert_eq!(reply.status, 504, "{method}: {reply:?}");
        assert!(
            took >= READ_TIMEOUT - Duration::from_millis(20) && took < Duration::from_secs(5),
            "{method}: 504 after {took:?}"
        );
    }
    let backend = backend_status(&proxy).await;
    assert_eq!(backend["in_flight"], 0, "{backend}");
    assert_eq!(backend["failures"], 2, "{backend}");
}
