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

/// One demo backend behind upstream `app` (round robin, with `extra`
/// settings), and the `[client]` settings `client`.
async fn serve_one(extra: &str, client: &str) -> Served {
    serve_with(1, &[("round-robin", ROUND_ROBIN)], |be| {
        format!(
            "{}\n[client]\n{client}\n",
            upstream("round-robin", be, extra)
        )
    })
    .await
}

/// The first backend of the first upstream, as `/status` shows it now.
struct FirstBackend {
    address: String,
    requests: u64,
    failures: u64,
    healthy: bool,
}

async fn first_backend(proxy: &switchyard::Proxy) -> FirstBackend {
    let s = status(proxy).await;
    FirstBackend {
        address: s.addresses(0)[0].clone(),
        requests: s.requests(0)[0],
        failures: s.failures(0)[0],
        healthy: s.healthy(0)[0],
    }
}

async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    exchange_closing(addr, request).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_vectors_and_oversized_heads_are_refused_before_the_backend() {
    let (_be, _fx, proxy) = serve_one("", "").await;

    let many_headers: String = (0..120).map(|i| format!("X-{i}: v\r\n")).collect();
    let cases = [
        ("two different Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_string(), 400),
        ("two equal Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".into(), 400),
        ("Content-Length then Transfer-Encoding", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("Transfer-Encoding then Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".into(), 400),
        ("Content-Length not digits", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello".into(), 400),
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
    assert_eq!(
        first_backend(&proxy).await.requests,
        0,
        "nothing reached the backend"
    );

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
    let (_be, _fx, proxy) = serve_one("max-fails = 1", "").await;
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
    let backend = first_backend(&proxy).await;
    assert_eq!(backend.failures, 0);
    assert!(
        backend.healthy,
        "a client must not be able to take a backend out"
    );
    let r = get(&client(), proxy.addr(), "/").await;
    assert_eq!(r.status, 200);
}

/// Reads one response head and body (by Content-Length) off `s`.
async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    let head = read_head(s).await;
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().expect("length"))
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    s.read_exact(&mut body).await.expect("body");
    head + &String::from_utf8_lossy(&body)
}

/// A response head, read byte by byte (nothing after it is consumed).
async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await {
            Ok(Ok(1)) => out.push(byte[0]),
            other => panic!(
                "connection ended mid-response ({other:?}): {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the proxy closes `s` (EOF, no bytes) within `limit`.
async fn closes_quietly(s: &mut tokio::net::TcpStream, limit: Duration) -> Result<(), String> {
    let mut rest = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut rest)).await {
        Ok(Ok(_)) if rest.is_empty() => Ok(()),
        Ok(Ok(_)) => Err(format!("sent bytes: {}", String::from_utf8_lossy(&rest))),
        Ok(Err(e)) => Err(format!("read error {e}")),
        Err(_) => Err(format!("still open after {limit:?}")),
    }
}

/// A header field's value in a raw response head (names in any case).
fn field_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_pipelined_gets_then_a_body_then_a_close() {
    let (_be, _fx, proxy) = serve_one("", "").await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    // Three bodiless requests in one write (the own HTTP/1.1 server).
    s.write_all(
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\
          HEAD /b HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /c HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    )
    .await
    .expect("write");
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(first.ends_with("Hello from backend 1\n"), "{first}");
    assert!(field_of(&first, "date").is_some(), "{first}");
    assert_eq!(field_of(&first, "connection"), None, "{first}");
    // HEAD: the length a GET would have, and no body (the next response
    // follows the head at once).
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        field_of(&head, "content-length"),
        field_of(&first, "content-length")
    );
    let third = read_response(&mut s).await;
    assert!(third.ends_with("Hello from backend 1\n"), "{third}");

    // A body: hyper's server takes the connection over, from this request.
    s.write_all(b"POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz")
        .await
        .expect("write");
    let posted = read_response(&mut s).await;
    assert!(posted.starts_with("HTTP/1.1 200"), "{posted}");
    // The client asks to close: it is told so, and the connection ends.
    s.write_all(b"GET /e HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let last = read_response(&mut s).await;
    assert!(last.ends_with("Hello from backend 1\n"), "{last}");
    assert_eq!(field_of(&last, "connection"), Some("close"), "{last}");
    closes_quietly(&mut s, Duration::from_secs(3))
        .await
        .expect("closed after the response");
    assert_eq!(first_backend(&proxy).await.requests, 5);

    // The same close on a connection the own server still serves.
    let (answer, closed) = exchange_closing(
        proxy.addr(),
        "GET /f HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(field_of(&answer, "connection"), Some("close"), "{answer}");
    assert!(closed, "the connection ends after the response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_a_smuggling_head_ends_them() {
    let be = backends(2).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&upstream("round-robin", &be, ""));
    let proxy = fx.start().await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    s.write_all(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
          POST /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /4 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .expect("write");
    let first = read_response(&mut s).await;
    let second = read_response(&mut s).await;
    let third = read_response(&mut s).await;
    assert!(
        first.starts_with("HTTP/1.1 200") && first.contains("Hello from backend 1"),
        "{first}"
    );
    assert!(
        second.starts_with("HTTP/1.1 200") && second.contains("Hello from backend 2"),
        "{second}"
    );
    assert!(third.starts_with("HTTP/1.1 400"), "{third}");
    assert!(
        third.contains("both Content-Length and Transfer-Encoding"),
        "{third}"
    );
    assert!(
        third.to_ascii_lowercase().contains("connection: close"),
        "{third}"
    );
    closes_quietly(&mut s, Duration::from_secs(3))
        .await
        .expect("closed after the refusal");
    let served: u64 = status(&proxy).await.requests(0).iter().sum();
    assert_eq!(
        served, 2,
        "neither the refused request nor the one after it reached a backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_extensions_and_oversized_bodies_are_refused() {
    let (_be, _fx, proxy) = serve_one("max-fails = 1", "max-body-size = 10").await;

    // Announced too large: refused before anything is sent upstream.
    let (answer, closed) = exchange_closing(
        proxy.addr(),
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(closed);
    assert_eq!(first_backend(&proxy).await.requests, 0);

    // Chunked past the limit, and a malformed chunk extension: the body is
    // cut where it goes wrong; the client gets the reason, the backend's
    // connection is dropped and the backend is not blamed.
    for (body, status, reason) in [
        (
            "6\r\nhello \r\n6\r\nworld!\r\n0\r\n\r\n",
            "413",
            "max-body-size",
        ),
        (
            "5;a b\r\nhello\r\n0\r\n\r\n",
            "400",
            "invalid chunk extension",
        ),
        (
            "5;q=\"x\r\nhello\r\n0\r\n\r\n",
            "400",
            "invalid chunk extension",
        ),
    ] {
        let (answer, closed) = exchange_closing(
            proxy.addr(),
            &format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}"),
        )
        .await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{body:?}: {answer}"
        );
        assert!(answer.contains(reason), "{body:?}: {answer}");
        assert!(closed, "{body:?}");
    }
    let backend = first_backend(&proxy).await;
    assert_eq!(backend.failures, 0);
    assert!(backend.healthy);

    // Within the limit, chunked with valid extensions: served.
    let (answer, _) = exchange_closing(
        proxy.addr(),
        "POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b;c=\"d e\"\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_get_408_and_idle_keep_alive_connections_are_closed() {
    let (be, fx, proxy) = serve_one(
        "",
        "header-timeout = \"400ms\"\nbody-timeout = \"400ms\"\nkeepalive-timeout = \"1200ms\"",
    )
    .await;
    let connect = || tokio::net::TcpStream::connect(proxy.addr());

    // A head that stops half way: 408, closed, nothing upstream.
    let mut s = connect().await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow:")
        .await
        .expect("write");
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    closes_quietly(&mut s, Duration::from_secs(3))
        .await
        .expect("closed after 408");
    assert_eq!(first_backend(&proxy).await.requests, 0);

    // A body that stops: 408 (the head had been sent upstream, to a backend
    // that waits for the whole body; that connection is dropped, the
    // backend not blamed).
    let patient = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let patient_addr = patient.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = patient.accept().await {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = conn.read_to_end(&mut sink).await;
            });
        }
    });
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{patient_addr}\"]\n\n[client]\nheader-timeout = \"400ms\"\nbody-timeout = \"400ms\"\nkeepalive-timeout = \"1200ms\"\n"
    ));
    let patient_at = patient_addr.to_string();
    wait_status(
        &proxy,
        Duration::from_secs(5),
        "the config naming the patient backend is applied",
        |s| s.addresses(0) == [patient_at.as_str()],
    )
    .await;
    let mut s = connect().await.expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .expect("write");
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("client.body-timeout"), "{answer}");
    closes_quietly(&mut s, Duration::from_secs(3))
        .await
        .expect("closed after 408");
    let patient_backend = first_backend(&proxy).await;
    assert_eq!(patient_backend.address, patient_at);
    assert_eq!(patient_backend.failures, 0);
    assert!(patient_backend.healthy);
    fx.write_config(&format!(
        "{}\n[client]\nheader-timeout = \"400ms\"\nbody-timeout = \"400ms\"\nkeepalive-timeout = \"1200ms\"\n",
        upstream("round-robin", &be, "")
    ));
    wait_status(
        &proxy,
        Duration::from_secs(5),
        "the config naming the demo backend again is applied",
        |s| s.addresses(0) == [be[0].addr.to_string()],
    )
    .await;

    // Keep-alive: idle longer than the head timeout is fine (the head
    // timeout starts at a head's first byte), and a response slower than
    // the keep-alive timeout is not cut.
    let mut s = connect().await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.write_all(b"GET /delay/1500 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let slow = read_response(&mut s).await;
    assert!(slow.starts_with("HTTP/1.1 200"), "{slow}");

    // Then idle with nothing in flight: closed quietly after the
    // keep-alive timeout.
    let idle = std::time::Instant::now();
    closes_quietly(&mut s, Duration::from_secs(5))
        .await
        .expect("idle connection closed");
    assert!(
        idle.elapsed() >= Duration::from_millis(1000),
        "closed after {:?}",
        idle.elapsed()
    );

    // A connection that never sends a byte is closed after the head timeout.
    let mut s = connect().await.expect("connect");
    closes_quietly(&mut s, Duration::from_secs(3))
        .await
        .expect("silent connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_wait_for_a_free_slot() {
    let (_be, _fx, proxy) = serve_one("", "max-connections = 2").await;
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut first = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let mut second = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    for s in [&mut first, &mut second] {
        s.write_all(request).await.expect("write");
        assert!(read_response(s).await.starts_with("HTTP/1.1 200"));
    }
    // The kernel completes the third handshake, but the proxy does not
    // take the connection while two are open.
    let mut third = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    third.write_all(request).await.expect("write");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the third connection was served while two were open: {early:?}"
    );
    drop(first);
    let answer = read_response(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A backend for large responses: `/endless` gets a body that never ends
/// (it writes until the proxy drops the connection), anything else
/// `BULK_SIZE` bytes; one request per connection (`Connection: close`).
/// Counts the `/endless` connections that were closed on it.
async fn bulk_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&cut);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let cut = std::sync::Arc::clone(&counter);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let endless = head.starts_with(b"GET /endless ");
                let size: u64 = if endless { 1 << 40 } else { BULK_SIZE };
                let chunk = vec![b'x'; 64 << 10];
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
                )
                .into_bytes();
                let mut left = size;
                loop {
                    if conn.write_all(&out).await.is_err() {
                        cut.fetch_add(usize::from(endless), std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    if left == 0 {
                        break;
                    }
                    let n = left.min(chunk.len() as u64);
                    out = chunk[..n as usize].to_vec();
                    left -= n;
                }
            });
        }
    });
    (addr, cut)
}

const BULK_SIZE: u64 = 32 << 20;

/// A connection on which `GET path` was sent and a 200 head read.
async fn get_head(proxy: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_send_timeout_and_a_slow_one_is_not() {
    let (addr, cut) = bulk_backend().await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{addr}\"]\n\n[client]\nsend-timeout = \"500ms\"\n"
    ));
    let proxy = fx.start().await;

    // A client that reads, but pauses for less than the timeout between
    // reads (each time taking all that arrived), gets the whole body.
    let s = get_head(proxy.addr(), "/big").await;
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    // The pauses as this client had them (ms): a failure shows whether the
    // client itself was held up longer than it meant to be.
    let mut gaps = Vec::new();
    let mut last = std::time::Instant::now();
    for _ in 0..100 {
        if got >= BULK_SIZE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        gaps.push(last.elapsed().as_millis());
        loop {
            match s.try_read(&mut buf) {
                Ok(0) => panic!("slow reader cut after {got} bytes; gaps {gaps:?}"),
                Ok(n) => got += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("slow reader cut after {got} bytes: {e}; gaps {gaps:?}"),
            }
        }
        last = std::time::Instant::now();
    }
    assert_eq!(got, BULK_SIZE);

    // A client that stops reading: once the socket buffers are full, the
    // proxy waits `send-timeout`, then closes the connection and the
    // backend's (which is not blamed for it).
    let mut s = get_head(proxy.addr(), "/endless").await;
    let closed = eventually(Duration::from_secs(10), || async {
        cut.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    assert!(closed.is_some(), "the backend connection was not closed");
    let released = wait_status(
        &proxy,
        Duration::from_secs(5),
        "the cut request is no longer in flight",
        |s| s.in_flight(0) == [0],
    )
    .await;
    assert_eq!(released.failures(0), [0]);
    // What was buffered drains, then the connection ends (the body never
    // would).
    let mut drained = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => drained += n as u64,
            Err(_) => panic!("the client connection is still open after {drained} bytes"),
        }
    }
    assert!(drained < 1 << 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_after_keepalive_timeout_but_slow_streams_are_not_cut() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (_be, _fx, proxy) = serve_one("", "keepalive-timeout = \"1200ms\"").await;
    let stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);

    // A stream slower than the keep-alive timeout, with nothing else
    // arriving meanwhile, is answered in full.
    let req = http::Request::get(format!("http://{}/delay/1500", proxy.addr()))
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("slow h2 response");
    let reply = Reply::read(resp).await.expect("body");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.backend(), Some(1), "{}", reply.body);

    // Then idle: the proxy ends the connection.
    let idle = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "idle HTTP/2 connection still open after 5 s");
    assert!(
        idle.elapsed() >= Duration::from_millis(1000),
        "closed after {:?}",
        idle.elapsed()
    );
    assert!(sender.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_and_silent_connections_and_lets_streams_in_flight_finish() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (_be, _fx, proxy) = serve_one("", "").await;
    let addr = proxy.addr();
    let get = move |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(Empty::<bytes::Bytes>::new())
            .expect("request")
    };
    // Connected, nothing sent yet.
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // HTTP/1.1, one request served, idle in keep-alive.
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut idle, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    let idle_conn = tokio::spawn(conn);
    let head = http::Request::get("/")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let reply = Reply::read(idle.send_request(head).await.expect("h1 response"))
        .await
        .expect("body");
    assert_eq!(reply.status, 200);
    // HTTP/2 (prior knowledge), a slow stream in flight.
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let h2_conn = tokio::spawn(conn);
    let slow = tokio::spawn(async move {
        let resp = h2.send_request(get("/delay/700")).await?;
        Ok::<_, hyper::Error>(Reply::read(resp).await)
    });
    wait_status(
        &proxy,
        Duration::from_secs(5),
        "the HTTP/2 stream reaches the backend",
        |s| s.in_flight(0) == [1],
    )
    .await;

    let start = std::time::Instant::now();
    let stopped = tokio::spawn(proxy.shutdown());
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the silent connection is closed at once: {read:?}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(2), idle_conn).await;
    assert!(
        ended.is_ok(),
        "the idle HTTP/1.1 connection is closed at once"
    );
    let reply = slow
        .await
        .expect("join")
        .expect("the HTTP/2 stream is answered")
        .expect("body");
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("after 700 ms"), "{}", reply.body);
    let ended = tokio::time::timeout(Duration::from_secs(3), h2_conn).await;
    assert!(ended.is_ok(), "the HTTP/2 connection ends after its stream");
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the drain ends when the connections do, not at drain-timeout")
        .expect("join");
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
}

/// Opens `n` connections to `addr` at once, as a load generator does, and
/// waits until the proxy has taken all of them.
async fn burst(proxy: &switchyard::Proxy, n: usize) -> Vec<tokio::net::TcpStream> {
    let conns = connect_all(proxy.addr(), n).await;
    wait_connections(
        proxy,
        Duration::from_secs(5),
        &format!("the proxy takes all {n} connections"),
        |open| open.iter().sum::<usize>() == n,
    )
    .await;
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_clients_is_spread_over_the_workers_and_every_one_is_served() {
    let (_be, _fx, proxy) = serve_with(1, &[("round-robin", ROUND_ROBIN)], |be| {
        format!("workers = 2\n{}", upstream("round-robin", be, ""))
    })
    .await;
    // All 40 arrive together: the first worker awake accepts them (without
    // the hand-over, 40:0, 38:2 or 33:7), and passes on what would leave it
    // with 2 more than the other. Both may decide at once, hence the slack.
    let conns = burst(&proxy, 40).await;
    let open = client_connections(&proxy).await;
    assert!(open.iter().all(|&n| (16..=24).contains(&n)), "{open:?}");

    // Each is served, by whichever worker took it; then closes.
    let answers = futures_util::future::join_all(conns.into_iter().map(|mut s| async move {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("answered in time")
            .expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }))
    .await;
    for a in &answers {
        assert!(
            a.starts_with("HTTP/1.1 200") && a.contains("Hello from backend 1"),
            "{a}"
        );
    }
    wait_connections(
        &proxy,
        Duration::from_secs(5),
        "every connection closed",
        |open| open == [0, 0],
    )
    .await;
}
