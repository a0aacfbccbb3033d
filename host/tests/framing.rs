//! What a backend may answer over HTTP/1.1, byte for byte, and what the
//! client gets: every way a response body can be framed (length, chunked
//! with trailers, until close, none), interim responses, bodies that stop
//! half-way, heads that are not HTTP, and which connections are reused.
//! Bodiless requests take the proxy's own upstream client
//! (`upstream_h1`); a request with a body takes hyper's, on the same pool.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::raw::{Asked, Raw, Step, write};
use common::*;

/// A proxy over `raw` alone, with `extra` upstream settings. One worker:
/// idle backend connections are kept per worker, and the tests count
/// them.
async fn proxy_over(raw: &Raw, extra: &str) -> (Fixture, switchyard::Proxy) {
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "workers = 1\n[[upstream]]\nname = \"raw\"\nservers = [\"{}\"]\n{extra}\n",
        raw.addr
    ));
    let proxy = fx.start().await;
    (fx, proxy)
}

/// The next request after `path` is served as usual.
async fn still_served(client: &HttpClient, addr: std::net::SocketAddr, path: &str) {
    let next = get(client, addr, "/length").await;
    assert_eq!(
        (next.status, next.body.as_str()),
        (200, "hello"),
        "after {path}"
    );
}

fn pause(ms: u64) -> Step {
    Step::Pause(Duration::from_millis(ms))
}

/// 1 MiB of a pattern the client can check.
fn large_body() -> Vec<u8> {
    (0..1 << 20).map(|i: u32| (i % 251) as u8).collect()
}

fn answers(asked: &Asked) -> Vec<Step> {
    match asked.target.as_str() {
        "/length" => vec![write(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kind: length\r\n\r\nhello",
        )],
        // Chunk boundaries and pauses in the middle of sizes, data and
        // CRLFs; an extension; trailers.
        "/chunked" => vec![
            write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel"),
            pause(20),
            write("lo\r"),
            pause(20),
            write("\n1"),
            pause(20),
            write("\r\n \r\nA\r\n0123456789\r\n0\r\nX-Sum: 16\r\n\r\n"),
        ],
        "/close" => vec![
            write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil "),
            pause(20),
            write("close"),
            Step::Close,
        ],
        "/no-content" => vec![write("HTTP/1.1 204 No Content\r\n\r\n")],
        "/not-modified" => vec![write("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")],
        "/head" if asked.method == "HEAD" => {
            vec![write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")]
        }
        "/interim" => vec![
            write("HTTP/1.1 100 Continue\r\n\r\n"),
            pause(20),
            write("HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"),
            write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ],
        // Hop-by-hop fields, which end at the proxy.
        "/hop" => vec![write(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\
             X-Kept: yes\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )],
        "/hop-named" => vec![write(
            "HTTP/1.1 200 OK\r\nX-Private: a\r\nConnection: x-private\r\n\
             Keep-Alive: timeout=5\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
        )],
        // Fields a client must get as they are: repeated, odd spacing, the
        // backend's own `Date`; and one the proxy sets itself.
        "/fields" => vec![write(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nConnection: keep-alive\r\n\
             Keep-Alive: timeout=5\r\nX-Served-By: the-backend\r\nSet-Cookie: b=2\r\n\
             X-Spaced:   v  \r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
        )],
        "/large" => {
            let body = large_body();
            let mut steps = vec![write(&format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ))];
            steps.extend(body.chunks(100_000).map(|c| Step::Write(c.to_vec())));
            steps
        }
        "/large-chunked" => {
            let body = large_body();
            let mut steps = vec![write(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            )];
            for c in body.chunks(70_000) {
                let mut chunk = format!("{:x}\r\n", c.len()).into_bytes();
                chunk.extend_from_slice(c);
                chunk.extend_from_slice(b"\r\n");
                steps.push(Step::Write(chunk));
            }
            steps.push(write("0\r\n\r\n"));
            steps
        }
        "/asks-to-close" => vec![write(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye",
        )],
        "/http10" => vec![write("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold")],
        "/stray" => vec![write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")],
        "/cut-length" => vec![
            write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"),
            pause(20),
            Step::Close,
        ],
        "/cut-chunked" => vec![
            write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
            pause(20),
            Step::Close,
        ],
        "/bad-chunk" => vec![write(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )],
        "/not-http" => vec![write("SSH-2.0-OpenSSH_9.2\r\n\r\n"), Step::Close],
        "/lengths-differ" => vec![write(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        )],
        "/huge-head" => vec![
            write(&format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n",
                "a".repeat(70_000)
            )),
            Step::Close,
        ],
        "/silent" => vec![Step::Close],
        "/unasked-101" => vec![write(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        )],
        _ => vec![write("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_framing_reaches_the_client_whole_on_one_kept_connection() {
    let raw = Raw::start(answers).await;
    let (_fx, proxy) = proxy_over(&raw, "").await;
    let addr = proxy.addr();
    let client = client();

    let length = get(&client, addr, "/length").await;
    assert_eq!((length.status, length.body.as_str()), (200, "hello"));
    assert_eq!(length.headers["x-kind"], "length");
    assert_eq!(length.headers["content-length"], "5");

    let chunked = get(&client, addr, "/chunked").await;
    assert_eq!(
        (chunked.status, chunked.body.as_str()),
        (200, "hello 0123456789")
    );
    assert!(!chunked.headers.contains_key("content-length"));

    let none = get(&client, addr, "/no-content").await;
    assert_eq!((none.status, none.body.as_str()), (204, ""));
    let not_modified = get(&client, addr, "/not-modified").await;
    assert_eq!((not_modified.status, not_modified.body.as_str()), (304, ""));
    assert_eq!(not_modified.headers["etag"], "\"x\"");

    let head = send(addr, "HEAD", "/head", "").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.headers["content-length"], "10");

    // 100 and 103 are the backend's business: the client gets the 200.
    let interim = get(&client, addr, "/interim").await;
    assert_eq!((interim.status, interim.body.as_str()), (200, "ok"));

    for path in ["/large", "/large-chunked"] {
        let resp = client
            .get(format!("http://{addr}{path}").parse().expect("uri"))
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("whole body")
            .to_bytes();
        assert!(
            body[..] == large_body()[..],
            "{path}: the body arrives intact"
        );
    }

    // Every answer so far ended where its framing said: one connection
    // carried them all.
    assert_eq!(raw.requests.load(Ordering::SeqCst), 8);
    assert_eq!(
        raw.connections.load(Ordering::SeqCst),
        1,
        "the backend connection is reused"
    );

    // A body that runs until the backend closes: whole, and the next
    // request needs a new connection.
    let close = get(&client, addr, "/close").await;
    assert_eq!((close.status, close.body.as_str()), (200, "until close"));
    let after = get(&client, addr, "/length").await;
    assert_eq!(after.body, "hello");
    assert_eq!(raw.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_of_a_response_end_at_the_proxy() {
    let raw = Raw::start(answers).await;
    let (_fx, proxy) = proxy_over(&raw, "").await;
    let addr = proxy.addr();
    let client = client();
    for path in ["/hop", "/hop-named"] {
        let resp = get(&client, addr, path).await;
        assert_eq!((resp.status, resp.body.as_str()), (200, "ok"), "{path}");
        assert_eq!(resp.headers["x-kept"], "yes", "{path}");
        for gone in ["keep-alive", "proxy-connection", "trailer", "x-private"] {
            assert!(
                !resp.headers.contains_key(gone),
                "{path}: {gone} reached the client: {:?}",
                resp.headers
            );
        }
    }
    still_served(&client, addr, "/hop-named").await;
    assert_eq!(
        raw.connections.load(Ordering::SeqCst),
        1,
        "the fields do not change how the connection is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_reaches_http1_and_http2_clients_as_the_backend_sent_it() {
    let raw = Raw::start(answers).await;
    let (_fx, proxy) = proxy_over(&raw, "backend-header = \"x-served-by\"").await;
    let addr = proxy.addr();
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{addr}/fields").parse().expect("uri");
    let h2_resp = h2.get(uri).await.expect("h2 request");
    assert_eq!(h2_resp.version(), http::Version::HTTP_2);
    let h2_reply = Reply::read(h2_resp).await.expect("h2 body");
    let h1_reply = get(&client(), addr, "/fields").await;
    for (version, resp) in [("HTTP/1.1", h1_reply), ("HTTP/2", h2_reply)] {
        assert_eq!((resp.status, resp.body.as_str()), (200, "ok"), "{version}");
        let all = |name: &str| -> Vec<&str> {
            let values = resp.headers.get_all(name).iter();
            values.map(|v| v.to_str().expect("text")).collect()
        };
        assert_eq!(all("set-cookie"), ["a=1", "b=2"], "{version}");
        assert_eq!(all("x-spaced"), ["v"], "{version}");
        assert_eq!(all("date"), ["Mon, 01 Jan 2024 00:00:00 GMT"], "{version}");
        // The proxy's own field replaces the backend's of that name.
        assert_eq!(all("x-served-by"), [raw.addr.to_string()], "{version}");
        assert!(
            all("keep-alive").is_empty(),
            "{version}: {:?}",
            resp.headers
        );
        if version == "HTTP/1.1" {
            assert_eq!(all("content-length"), ["2"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_cannot_carry_another_request_are_not_reused() {
    let raw = Raw::start(answers).await;
    let (_fx, proxy) = proxy_over(&raw, "").await;
    let addr = proxy.addr();
    let client = client();
    // A kept connection for the first of them.
    assert_eq!(get(&client, addr, "/length").await.body, "hello");
    // Each of these is answered in full, on the kept connection, but that
    // connection is done: `Connection: close`, HTTP/1.0, bytes after the
    // body.
    for (path, body) in [
        ("/asks-to-close", "bye"),
        ("/http10", "old"),
        ("/stray", "ok"),
    ] {
        let before = raw.connections.load(Ordering::SeqCst);
        let resp = get(&client, addr, path).await;
        assert_eq!((resp.status, resp.body.as_str()), (200, body), "{path}");
        still_served(&client, addr, path).await;
        assert_eq!(
            raw.connections.load(Ordering::SeqCst),
            before + 1,
            "{path}: the request after it opened a new connection"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_fails_the_client_response_and_the_next_request_is_served() {
    let raw = Raw::start(answers).await;
    let (_fx, proxy) = proxy_over(&raw, "max-fails = 0").await;
    let addr = proxy.addr();
    let client = client();
    for path in ["/cut-length", "/cut-chunked", "/bad-chunk"] {
        // The client's connection breaks: in the body, or before the head
        // when the body fails at once (as nginx does once it has sent a
        // head).
        if let Ok(reply) = get_with(&client, addr, path, &[]).await {
            panic!("{path}: a cut body must not look complete: {reply:?}");
        }
        still_served(&client, addr, path).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_speak_http_gets_502_and_nothing_is_lost() {
    let raw = Raw::start(answers).await;
    // No retries: each try is seen on its own.
    let (_fx, proxy) = proxy_over(&raw, "max-fails = 0\nretries = 0").await;
    let addr = proxy.addr();
    let client = client();
    for path in [
        "/not-http",
        "/lengths-differ",
        "/huge-head",
        "/silent",
        "/unasked-101",
    ] {
        let resp = get(&client, addr, path).await;
        assert_eq!(resp.status, 502, "{path}: {}", resp.body);
        still_served(&client, addr, path).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_the_backend_closed_are_not_used() {
    // The backend closes every connection 50 ms after its answer, without
    // saying so: the proxy must notice before sending on it.
    let raw = Raw::start(|_| {
        vec![
            write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            Step::Pause(Duration::from_millis(50)),
            Step::Close,
        ]
    })
    .await;
    let (_fx, proxy) = proxy_over(&raw, "max-fails = 0\nretries = 0").await;
    let addr = proxy.addr();
    let client = client();
    for i in 0..5 {
        let resp = get(&client, addr, "/").await;
        assert_eq!(
            (resp.status, resp.body.as_str()),
            (200, "ok"),
            "request {i}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(raw.connections.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_and_without_bodies_share_the_backend_connections() {
    let echo = Raw::start(|asked| {
        let body = format!(
            "{} {} {}",
            asked.method,
            asked.target,
            String::from_utf8_lossy(&asked.body)
        );
        vec![write(&format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))]
    })
    .await;
    let (_fx, proxy) = proxy_over(&echo, "").await;
    let addr = proxy.addr();
    let client = client();
    let first = get(&client, addr, "/a").await;
    assert_eq!(first.body, "GET /a ");
    // A request with a body goes through hyper's client, on the idle
    // connection the bodiless one left; then a bodiless one again.
    let posted = send(addr, "POST", "/b", "payload").await;
    assert_eq!(posted.body, "POST /b payload");
    let again = get(&client, addr, "/c").await;
    assert_eq!(again.body, "GET /c ");
    let empty_post = send(addr, "POST", "/d", "").await;
    assert_eq!(empty_post.body, "POST /d ");
    assert_eq!(echo.requests.load(Ordering::SeqCst), 4);
    // The POST took over the first connection; a connection whose
    // response has just ended may not be ready for the next request at
    // once, so hyper's side may have opened one more.
    let opened = echo.connections.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&opened),
        "{opened} connections for 4 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_backend_drops_on_a_kept_connection_is_sent_again_only_if_idempotent() {
    // The backend closes a kept connection when the first GET /drop and
    // the first POST /drop-post arrive (as a server closing an idle
    // connection just as the request goes out), and answers otherwise.
    let dropped = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = std::sync::Arc::clone(&dropped);
    let raw = Raw::start(move |asked| {
        let mut seen = seen.lock().expect("lock");
        let key = format!("{} {}", asked.method, asked.target);
        if asked.target.starts_with("/drop") && !seen.contains(&key) {
            seen.push(key);
            return vec![Step::Close];
        }
        vec![write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]
    })
    .await;
    // One backend and no retries: what happens is the connection's doing.
    let (_fx, proxy) = proxy_over(&raw, "max-fails = 0\nretries = 0").await;
    let addr = proxy.addr();
    let client = client();

    assert_eq!(get(&client, addr, "/first").await.body, "ok");
    let get_dropped = get(&client, addr, "/drop").await;
    assert_eq!((get_dropped.status, get_dropped.body.as_str()), (200, "ok"));
    // /first, /drop dropped, /drop again on a new connection.
    assert_eq!(raw.requests.load(Ordering::SeqCst), 3);
    assert_eq!(raw.connections.load(Ordering::SeqCst), 2);

    // A POST may have had its effect: not sent twice.
    assert_eq!(send(addr, "POST", "/ready", "").await.body, "ok");
    let post_dropped = send(addr, "POST", "/drop-post", "").await;
    assert_eq!(post_dropped.status, 502, "{}", post_dropped.body);
    assert_eq!(raw.requests.load(Ordering::SeqCst), 5);
}
