//! The library against real sockets on 127.0.0.1:0.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard_backend::{FALLBACK_NAME, check, choose_name, health_url, serve};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A backend on 127.0.0.1:0 named `name`, stopped by sending on the
/// returned channel (or dropping it).
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(name: &str) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, name.to_owned(), async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

/// `common::get` off the async runtime.
async fn get(addr: SocketAddr, path: &str) -> common::Answer {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || common::get(addr, &path))
        .await
        .expect("client thread")
        .expect("GET")
}

#[tokio::test]
async fn greets_with_its_name_and_header() {
    let b = start("alpha").await;
    for path in ["/", "/some/path?x=1", "/delay", "/healthz"] {
        let a = get(b.addr, path).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.body, "Hello from alpha\n", "{path}");
        assert_eq!(a.header("x-backend"), Some("alpha"), "{path}");
        assert_eq!(
            a.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn health_answers_ok() {
    let b = start("alpha").await;
    let a = get(b.addr, "/health").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "ok\n");
    assert_eq!(a.header("x-backend"), Some("alpha"));
}

#[tokio::test]
async fn delay_answers_after_the_delay() {
    let b = start("slow").await;
    let t = Instant::now();
    let a = get(b.addr, "/delay/300").await;
    let took = t.elapsed();
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "Hello from slow after 300 ms\n");
    assert_eq!(a.header("x-backend"), Some("slow"));
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");

    let a = get(b.addr, "/delay/soon").await;
    assert_eq!(a.status, 400);
    assert_eq!(a.header("x-backend"), Some("slow"));
}

#[tokio::test]
async fn speaks_h2c_with_prior_knowledge() {
    let b = start("two").await;
    let stream = TcpStream::connect(b.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get(format!("http://{}/", b.addr))
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("x-backend").map(|v| v.as_bytes()),
        Some(&b"two"[..])
    );
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"Hello from two\n");
}

#[tokio::test]
async fn shutdown_refuses_new_connections_and_finishes_in_flight() {
    let mut b = start("draining").await;
    let addr = b.addr;
    let in_flight = tokio::spawn(get(addr, "/delay/600"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _ = b.stop.take().map(|s| s.send(()));

    // New connections are refused as soon as the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let a = in_flight.await.expect("client task");
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "Hello from draining after 600 ms\n");
    let served = tokio::time::timeout(Duration::from_secs(5), b.task)
        .await
        .expect("serve returns once the in-flight request is done")
        .expect("serve task");
    assert!(served.is_ok(), "{served:?}");
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let mut b = start("idle").await;
    // An idle HTTP/1.1 keep-alive connection after one request.
    let stream = TcpStream::connect(b.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("/")
                .header("host", "x")
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("response");
    resp.into_body().collect().await.expect("body");

    let _ = b.stop.take().map(|s| s.send(()));
    let served = tokio::time::timeout(Duration::from_secs(5), b.task)
        .await
        .expect("an idle connection does not hold up shutdown")
        .expect("serve task");
    assert!(served.is_ok(), "{served:?}");
    let _ = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle connection is closed");
}

#[tokio::test]
async fn a_name_that_cannot_be_a_header_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let err = serve(listener, "bad\nname".to_owned(), std::future::pending())
        .await
        .expect_err("a newline cannot go into X-Backend");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn check_passes_on_2xx_and_fails_otherwise() {
    let b = start("checked").await;
    let timeout = Duration::from_secs(2);
    assert_eq!(
        check(&health_url(b.addr), timeout).await,
        Ok(StatusCode::OK)
    );
    let bad = check(&format!("http://{}/delay/x", b.addr), timeout).await;
    assert!(bad.as_ref().is_err_and(|e| e.contains("400")), "{bad:?}");

    // Nothing listening.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let refused = check(&health_url(closed), timeout).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("connect")),
        "{refused:?}"
    );

    // Accepts but never answers: bounded by the timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let t = Instant::now();
    let hung = check(&health_url(silent_addr), Duration::from_millis(300)).await;
    assert!(
        hung.as_ref().is_err_and(|e| e.contains("no answer")),
        "{hung:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    drop(silent);

    let https = check("https://127.0.0.1:1/health", timeout).await;
    assert!(https.is_err(), "{https:?}");
}

#[test]
fn health_url_goes_through_loopback_for_unspecified_addresses() {
    let url = |s: &str| health_url(s.parse().expect("socket address"));
    assert_eq!(url("0.0.0.0:8000"), "http://127.0.0.1:8000/health");
    assert_eq!(url("[::]:8000"), "http://[::1]:8000/health");
    assert_eq!(url("10.1.2.3:81"), "http://10.1.2.3:81/health");
}

#[test]
fn name_comes_from_flag_or_env_then_host_name_then_fallback() {
    assert_eq!(choose_name(Some("a"), Some("h"), Some("e\n")), "a");
    assert_eq!(choose_name(None, Some("h"), Some("e\n")), "h");
    assert_eq!(choose_name(Some(""), Some(" "), Some("e\n")), "e");
    assert_eq!(choose_name(None, None, Some("\n")), FALLBACK_NAME);
    assert_eq!(choose_name(None, None, None), "backend");
}
