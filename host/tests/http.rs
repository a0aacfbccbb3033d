//! What crosses the proxy: forwarding headers, hop-by-hop stripping, Host,
//! HTTP/2 clients, streamed bodies, routing by host and path prefix.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A backend that answers with the request it saw: the request line, then
/// `name: value` per header, then the body.
async fn echo_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<Incoming>| async move {
                    let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
                    for (name, value) in req.headers() {
                        text.push_str(&format!(
                            "{name}: {}\n",
                            value.to_str().unwrap_or("<binary>")
                        ));
                    }
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    text.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .header("connection", "keep-alive, x-backend-private")
                            .header("x-backend-private", "hop")
                            .header("keep-alive", "timeout=5")
                            .body(Full::new(Bytes::from(text)))
                            .expect("response"),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn header_line<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

async fn echo_proxy(extra: &str) -> (Fixture, switchyard::Proxy) {
    let echo = echo_backend().await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "{extra}\n[[upstream]]\nname = \"echo\"\nservers = [\"{echo}\"]\n"
    ));
    let proxy = fx.start().await;
    (fx, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_stripped() {
    let (_fx, proxy) = echo_proxy("").await;
    let r = get_with(
        &client(),
        proxy.addr(),
        "/path?q=1",
        &[
            ("host", "app.example.com"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("connection", "keep-alive, x-client-private"),
            ("x-client-private", "secret"),
            ("te", "trailers"),
            ("x-custom", "kept"),
        ],
    )
    .await
    .expect("request");
    assert_eq!(r.status, 200);
    let body = &r.body;
    assert!(body.starts_with("GET /path?q=1 HTTP/1.1"), "{body}");
    assert_eq!(header_line(body, "host"), Some("app.example.com"), "{body}");
    assert_eq!(
        header_line(body, "x-real-ip"),
        Some("127.0.0.1"),
        "peer is not trusted: {body}"
    );
    assert_eq!(
        header_line(body, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1"),
        "{body}"
    );
    assert_eq!(
        header_line(body, "x-forwarded-proto"),
        Some("http"),
        "{body}"
    );
    assert_eq!(header_line(body, "x-custom"), Some("kept"));
    for gone in ["x-client-private", "te"] {
        assert_eq!(
            header_line(body, gone),
            None,
            "{gone} must not reach the backend: {body}"
        );
    }
    // Connection-named and hop-by-hop response headers do not reach the client.
    assert!(
        !r.headers.contains_key("x-backend-private"),
        "{:?}",
        r.headers
    );
    assert!(!r.headers.contains_key("keep-alive"), "{:?}", r.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_passes_the_real_client_address() {
    let (_fx, proxy) = echo_proxy("trusted-proxies = [\"127.0.0.0/8\"]").await;
    let r = get_with(
        &client(),
        proxy.addr(),
        "/",
        &[("x-forwarded-for", "198.51.100.4, 127.0.0.9")],
    )
    .await
    .expect("request");
    assert_eq!(
        header_line(&r.body, "x-real-ip"),
        Some("198.51.100.4"),
        "{}",
        r.body
    );
    assert_eq!(
        header_line(&r.body, "x-forwarded-for"),
        Some("198.51.100.4, 127.0.0.9, 127.0.0.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served_and_bodies_stream_both_ways() {
    let (_fx, proxy) = echo_proxy("").await;
    let h2 = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let payload = "x".repeat(256 * 1024);
    let req = http::Request::post(format!("http://{}/upload", proxy.addr()))
        .body(Full::new(Bytes::from(payload.clone())))
        .expect("request");
    let resp = h2.request(req).await.expect("h2 request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf8");
    assert!(body.starts_with("POST /upload HTTP/1.1"), "{}", &body[..80]);
    // :authority became Host for the HTTP/1.1 backend.
    assert_eq!(
        header_line(&body, "host"),
        Some(proxy.addr().to_string().as_str())
    );
    assert!(
        body.ends_with(&format!("body: {payload}\n")),
        "the 256 KiB body arrived whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_are_chosen_by_host_then_longest_path_prefix() {
    let be = backends(3).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "[[upstream]]\nname = \"default\"\nservers = [\"{}\"]\n\
         [[upstream]]\nname = \"api\"\npath-prefix = \"/api\"\nservers = [\"{}\"]\n\
         [[upstream]]\nname = \"shop\"\nhosts = [\"shop.example.com\", \"*.shop.test\"]\nservers = [\"{}\"]\n",
        be[0].addr, be[1].addr, be[2].addr
    ));
    let proxy = fx.start().await;
    let client = client();
    for (host, path, expected) in [
        ("localhost", "/", 1),
        ("localhost", "/api", 2),
        ("localhost", "/api/users", 2),
        ("localhost", "/apix", 1),
        ("shop.example.com", "/", 3),
        ("SHOP.example.com:8080", "/cart", 3),
        ("eu.shop.test", "/", 3),
        ("shop.test", "/", 1),
        // Host specificity wins over path length.
        ("shop.example.com", "/api", 3),
    ] {
        let r = get_with(&client, proxy.addr(), path, &[("host", host)])
            .await
            .expect("request");
        assert_eq!(r.backend(), Some(expected), "{host}{path}: {r:?}");
    }
}

/// A backend that keeps the head of every request it reads, as it arrived,
/// and answers `200 ok`.
async fn recording_backend() -> (common::raw::Raw, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    let raw = common::raw::Raw::start(move |asked| {
        seen.lock().expect("lock").push(asked.head.clone());
        vec![common::raw::write(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )]
    })
    .await;
    (raw, heads)
}

/// A proxy over `backend` alone (round robin).
async fn proxy_to(backend: SocketAddr) -> (Fixture, switchyard::Proxy) {
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "[[upstream]]\nname = \"recorded\"\nservers = [\"{backend}\"]\n"
    ));
    let proxy = fx.start().await;
    (fx, proxy)
}

/// The values of every `name` line of a raw head (names in any case), in
/// order.
fn raw_fields<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

/// Writes `request` on `s` and reads one response: its head and its body
/// (by Content-Length); fails the test after 10 s.
async fn raw_exchange(s: &mut tokio::net::TcpStream, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read = async {
        s.write_all(request.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut byte).await.expect("read");
            assert_eq!(n, 1, "closed mid-head: {}", String::from_utf8_lossy(&got));
            got.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&got).into_owned();
        let length = raw_fields(&head, "content-length")
            .first()
            .map_or(0, |v| v.parse::<usize>().expect("length"));
        let mut body = vec![0; length];
        s.read_exact(&mut body).await.expect("body");
        head + &String::from_utf8_lossy(&body)
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_connection_list_never_removes_the_fields_the_proxy_forwards() {
    let (backend, heads) = recording_backend().await;
    let (_fx, proxy) = proxy_to(backend.addr).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    // Bodiless GETs take the front's own HTTP/1.1 server; a POST with a
    // body, hyper's.
    let lists = [
        "Connection: Host, X-Real-IP, X-Forwarded-For\r\n",
        "Connection: keep-alive, HOST, x-real-ip, X-Forwarded-For, X-Forwarded-Proto, X-Private\r\n",
        "Connection: Keep-Alive\r\nConnection: host ,x-forwarded-for\r\nKeep-Alive: timeout=5\r\n",
    ];
    let mut asked = 0;
    for list in lists {
        for body in ["", "hello"] {
            let method = if body.is_empty() { "GET" } else { "POST" };
            let length = if body.is_empty() {
                String::new()
            } else {
                format!("Content-Length: {}\r\n", body.len())
            };
            let request = format!(
                "{method} /x HTTP/1.1\r\nHost: app.example:8080\r\nX-Forwarded-For: 203.0.113.7\r\n\
                 X-Private: secret\r\n{list}{length}\r\n{body}"
            );
            let response = raw_exchange(&mut s, &request).await;
            assert!(
                response.starts_with("HTTP/1.1 200"),
                "{request}: {response}"
            );
            assert!(response.ends_with("\r\n\r\nok"), "{request}: {response}");
            asked += 1;
            let head = heads.lock().expect("lock").last().cloned();
            let head = head.expect("the request reached the backend");
            assert_eq!(heads.lock().expect("lock").len(), asked, "{request}");
            assert!(
                head.starts_with(&format!("{method} /x HTTP/1.1\r\n")),
                "{head}"
            );
            let field = |name| raw_fields(&head, name);
            assert_eq!(field("host"), ["app.example:8080"], "{request}: {head}");
            assert_eq!(field("x-real-ip"), ["127.0.0.1"], "{request}: {head}");
            assert_eq!(
                field("x-forwarded-for"),
                ["203.0.113.7, 127.0.0.1"],
                "{request}: {head}"
            );
            assert_eq!(field("x-forwarded-proto"), ["http"], "{request}: {head}");
            // What else the list names is still not passed on.
            if list.contains("X-Private") {
                assert!(field("x-private").is_empty(), "{request}: {head}");
            } else {
                assert_eq!(field("x-private"), ["secret"], "{request}: {head}");
            }
            for gone in ["connection", "keep-alive"] {
                assert!(field(gone).is_empty(), "{gone}: {request}: {head}");
            }
            assert_eq!(field("content-length").len(), usize::from(!body.is_empty()));
        }
    }
}

/// An HTTP/2 client (prior knowledge, cleartext), its requests built by
/// the test.
fn h2_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `method /path` with `fields` and `body` over HTTP/2: the status,
/// within 10 s.
async fn h2_send(proxy: SocketAddr, method: &str, fields: &[(String, String)], body: &str) -> u16 {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{proxy}/h2"));
    for (name, value) in fields {
        req = req.header(name, value);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let send = async {
        let resp = h2_client().request(req).await.expect("h2 request");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        Reply::read(resp).await.expect("body").status
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), send)
        .await
        .expect("an answer within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_crumbs_reach_the_backend_as_one_line_and_too_many_fields_get_431() {
    let (backend, heads) = recording_backend().await;
    let (_fx, proxy) = proxy_to(backend.addr).await;
    let addr = proxy.addr();
    let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
    let cookies = [
        pair("cookie", "a=1"),
        pair("x-a", "1"),
        pair("cookie", "b=2"),
    ];
    for (method, body) in [("GET", ""), ("POST", "hello")] {
        assert_eq!(h2_send(addr, method, &cookies, body).await, 200, "{method}");
        let head = heads
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("forwarded");
        assert!(
            head.starts_with(&format!("{method} /h2 HTTP/1.1\r\n")),
            "{head}"
        );
        assert_eq!(
            raw_fields(&head, "cookie"),
            ["a=1; b=2"],
            "{method}: {head}"
        );
        assert_eq!(raw_fields(&head, "x-a"), ["1"], "{method}: {head}");
    }
    // Crumbs count as the one field they become.
    let crumbs: Vec<_> = (0..150)
        .map(|i| pair("cookie", &format!("c{i}=v")))
        .collect();
    assert_eq!(h2_send(addr, "GET", &crumbs, "").await, 200);
    let head = heads
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("forwarded");
    let joined: Vec<_> = (0..150).map(|i| format!("c{i}=v")).collect();
    assert_eq!(raw_fields(&head, "cookie"), [joined.join("; ")]);

    // As over HTTP/1.1: 100 fields are served, 101 are refused before any
    // backend.
    let fields = |n: usize| -> Vec<_> { (0..n).map(|i| pair(&format!("x-f{i}"), "v")).collect() };
    assert_eq!(h2_send(addr, "GET", &fields(100), "").await, 200);
    let forwarded = heads.lock().expect("lock").len();
    for (method, body) in [("GET", ""), ("POST", "hello")] {
        assert_eq!(
            h2_send(addr, method, &fields(101), body).await,
            431,
            "{method}"
        );
    }
    let mut h1 = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let many: String = (0..100).map(|i| format!("X-F{i}: v\r\n")).collect();
    let h1_answer = raw_exchange(
        &mut h1,
        &format!("GET /h1 HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
    )
    .await;
    assert!(h1_answer.starts_with("HTTP/1.1 431"), "{h1_answer}");
    assert_eq!(
        heads.lock().expect("lock").len(),
        forwarded,
        "nothing more reached the backend"
    );
}

/// The client listener queues as many connections as the kernel allows up
/// to `switchyard::BACKLOG` (what `ss -lnt` shows as its Send-Q), not
/// tokio's default 128: a crowd connecting at once is not left to SYN
/// retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_listener_has_a_deep_backlog() {
    let (_be, _fx, proxy) = serve_three(&[("round-robin", ROUND_ROBIN)], "round-robin", "").await;
    let port = proxy.addr().port();
    setup("ss");
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("`ss` (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let backlog: u32 = text
        .split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no listener on port {port} in `ss` output: {text:?}"));
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("somaxconn")
        .trim()
        .parse()
        .expect("a number");
    assert_eq!(backlog, switchyard::BACKLOG.min(somaxconn), "{text}");
}
