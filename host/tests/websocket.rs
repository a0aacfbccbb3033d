//! WebSocket (HTTP/1.1 Upgrade) through the proxy: real WebSocket backends
//! (hyper upgrade + tungstenite) and a real WebSocket client.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A backend that serves `GET /` with "Hello from backend N", upgrades
/// `/ws` to a WebSocket that greets with "backend N" and echoes every
/// message, answers `/refuse` with 403 even to an upgrade, and keeps the
/// request heads it saw.
struct WsBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

async fn ws_backend(n: usize) -> WsBackend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen2);
            tokio::spawn(async move {
                let service = service_fn(move |mut req: Request<Incoming>| {
                    seen.lock().expect("lock").push(req.headers().clone());
                    async move {
                        let upgrade = req
                            .headers()
                            .get("upgrade")
                            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
                        let resp = match (req.uri().path(), upgrade) {
                            ("/ws", true) => {
                                let key = req
                                    .headers()
                                    .get("sec-websocket-key")
                                    .map(|k| derive_accept_key(k.as_bytes()))
                                    .unwrap_or_default();
                                let on = hyper::upgrade::on(&mut req);
                                tokio::spawn(async move {
                                    let Ok(io) = on.await else { return };
                                    let mut ws = WebSocketStream::from_raw_socket(
                                        TokioIo::new(io),
                                        Role::Server,
                                        None,
                                    )
                                    .await;
                                    let _ = ws.send(Message::text(format!("backend {n}"))).await;
                                    while let Some(Ok(msg)) = ws.next().await {
                                        if msg.is_text() || msg.is_binary() {
                                            let _ = ws.send(msg).await;
                                        }
                                    }
                                });
                                Response::builder()
                                    .status(StatusCode::SWITCHING_PROTOCOLS)
                                    .header("connection", "Upgrade")
                                    .header("upgrade", "websocket")
                                    .header("sec-websocket-accept", key)
                                    .body(Full::new(Bytes::new()))
                            }
                            ("/refuse", _) => Response::builder()
                                .status(StatusCode::FORBIDDEN)
                                .body(Full::new(Bytes::from_static(b"no websockets here\n"))),
                            _ => Response::builder()
                                .body(Full::new(Bytes::from(format!("Hello from backend {n}\n")))),
                        };
                        Ok::<_, Infallible>(resp.expect("response"))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    WsBackend { addr, seen }
}

async fn ws_proxy(n: usize, extra: &str) -> (Fixture, switchyard::Proxy, Vec<WsBackend>) {
    let mut backends = Vec::new();
    for i in 1..=n {
        backends.push(ws_backend(i).await);
    }
    let servers: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "access-log = true\n[[upstream]]\nname = \"ws\"\nservers = [{}]\n{extra}\n",
        servers.join(", ")
    ));
    let proxy = fx.start().await;
    (fx, proxy, backends)
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(proxy: SocketAddr, path: &str) -> Ws {
    let mut request = format!("ws://{proxy}{path}")
        .into_client_request()
        .expect("request");
    // A hop-by-hop header that must not reach the backend.
    request
        .headers_mut()
        .insert("keep-alive", "timeout=5".parse().expect("value"));
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("handshake within 10 s")
    .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    ws
}

async fn next_text(ws: &mut Ws) -> String {
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// In-flight count of each backend, in config order.
async fn in_flight(proxy: &switchyard::Proxy) -> Vec<u64> {
    status(proxy).await.in_flight(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_echo_both_ways_and_the_socket_is_in_flight_until_closed() {
    let (_fx, proxy, backends) = ws_proxy(1, "").await;
    let mut ws = connect(proxy.addr(), "/ws").await;
    assert_eq!(next_text(&mut ws).await, "backend 1");
    for text in ["hello", "world", &"x".repeat(100_000)] {
        ws.send(Message::text(text)).await.expect("send");
        assert_eq!(next_text(&mut ws).await, text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => assert_eq!(&b[..], &[0u8, 1, 2, 255]),
        other => panic!("expected the binary echo, got {other:?}"),
    }

    // The backend saw an upgrade request, with forwarding headers and
    // without the other hop-by-hop headers.
    {
        let seen = backends[0].seen.lock().expect("lock");
        let head = seen.last().expect("a request");
        assert_eq!(head["upgrade"], "websocket");
        assert!(
            head["connection"]
                .to_str()
                .expect("text")
                .eq_ignore_ascii_case("upgrade")
        );
        assert!(head.contains_key("sec-websocket-key"));
        assert!(!head.contains_key("keep-alive"), "hop-by-hop: {head:?}");
        assert_eq!(head["x-forwarded-proto"], "http");
        assert_eq!(head["x-forwarded-for"], "127.0.0.1");
    }

    // A WebSocket is a long request: in flight while open...
    let open = status(&proxy).await;
    assert_eq!(open.in_flight(0), [1]);
    assert_eq!(open.tunnels(), 1);
    ws.close(None).await.expect("close");
    drop(ws);
    // ...and not once closed.
    wait_status(
        &proxy,
        Duration::from_secs(5),
        "the closed socket is neither in flight nor a tunnel",
        |s| s.in_flight(0) == [0] && s.tunnels() == 0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_websockets_and_plain_requests_still_work() {
    let (_fx, proxy, backends) = ws_proxy(3, "").await;
    let mut sockets = Vec::new();
    let mut greeted = Vec::new();
    for _ in 0..6 {
        let mut ws = connect(proxy.addr(), "/ws").await;
        greeted.push(next_text(&mut ws).await);
        sockets.push(ws);
    }
    assert_eq!(
        greeted,
        [
            "backend 1",
            "backend 2",
            "backend 3",
            "backend 1",
            "backend 2",
            "backend 3"
        ]
    );
    assert_eq!(in_flight(&proxy).await, [2, 2, 2]);

    // Each socket talks to its own backend, interleaved.
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("message {i}")))
            .await
            .expect("send");
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        assert_eq!(next_text(ws).await, format!("message {i}"));
    }

    // Plain requests on the same proxy, while the sockets are open: the
    // rotation goes on, and an `Upgrade: h2c` is not an upgrade here.
    let http = client();
    let r = get(&http, proxy.addr(), "/").await;
    assert_eq!((r.status, r.backend()), (200, Some(1)));
    let r = get_with(
        &http,
        proxy.addr(),
        "/",
        &[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
    )
    .await
    .expect("request");
    assert_eq!((r.status, r.backend()), (200, Some(2)));
    {
        let seen = backends[1].seen.lock().expect("lock");
        let head = seen.last().expect("a request");
        for gone in ["upgrade", "connection", "http2-settings"] {
            assert!(!head.contains_key(gone), "{gone} reached the backend");
        }
    }

    for mut ws in sockets {
        ws.close(None).await.expect("close");
    }
    wait_status(&proxy, Duration::from_secs(5), "nothing in flight", |s| {
        s.in_flight(0) == [0, 0, 0]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_an_ordinary_answer() {
    let (_fx, proxy, _backends) = ws_proxy(1, "").await;
    let request = format!("ws://{}/refuse", proxy.addr())
        .into_client_request()
        .expect("request");
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        }
        other => panic!("expected 403, got {other:?}"),
    }
    wait_status(&proxy, Duration::from_secs(5), "nothing in flight", |s| {
        s.in_flight(0) == [0]
    })
    .await;
    // The connection to the backend was an ordinary exchange: a plain
    // request still works.
    let r = get(&client(), proxy.addr(), "/").await;
    assert_eq!((r.status, r.backend()), (200, Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_tunnel_idle_timeout() {
    let (_fx, proxy, _backends) = ws_proxy(1, "tunnel-idle-timeout = \"400ms\"").await;
    let mut ws = connect(proxy.addr(), "/ws").await;
    assert_eq!(next_text(&mut ws).await, "backend 1");
    // Traffic keeps it open past the timeout...
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ws.send(Message::text(format!("ping {i}")))
            .await
            .expect("send");
        assert_eq!(next_text(&mut ws).await, format!("ping {i}"));
    }
    // ...silence closes it.
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(
            end,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_))))
        ),
        "expected the proxy to close the socket, got {end:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    wait_status(&proxy, Duration::from_secs(5), "nothing in flight", |s| {
        s.in_flight(0) == [0]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_cannot_connect_through_the_proxy() {
    let (_fx, proxy, backends) = ws_proxy(1, "").await;
    let stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method("CONNECT")
        .uri(format!("{}", backends[0].addr))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answer within 10 s")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(backends[0].seen.lock().expect("lock").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_to_a_request_that_did_not_ask_is_a_502() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backend that switches protocols whatever it is asked.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: surprise\r\n\r\n",
                    )
                    .await;
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "[[upstream]]\nname = \"odd\"\nservers = [\"{addr}\"]\nretries = 0\n"
    ));
    let proxy = fx.start().await;
    let r = get(&client(), proxy.addr(), "/").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(status(&proxy).await.tunnels(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_works_through_the_tls_listener() {
    use rustls_pki_types::ServerName;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

    let certs = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let (cert_path, key_path) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let (_fx, proxy, backends) = ws_proxy(
        1,
        &format!(
            "\n[tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
            path_str(&cert_path),
            path_str(&key_path)
        ),
    )
    .await;

    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).expect("trust anchor");
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(proxy.tls_addr().expect("tls listener"))
        .await
        .expect("connect");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls handshake");
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async("wss://localhost/ws", tls),
    )
    .await
    .expect("handshake within 10 s")
    .expect("websocket handshake over tls");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let greeting = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    assert!(
        matches!(&greeting, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "backend 1"),
        "{greeting:?}"
    );
    ws.send(Message::text("over tls")).await.expect("send");
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    assert!(
        matches!(&echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "over tls"),
        "{echo:?}"
    );
    assert_eq!(
        backends[0]
            .seen
            .lock()
            .expect("lock")
            .last()
            .expect("a request")["x-forwarded-proto"],
        "https"
    );
    assert_eq!(in_flight(&proxy).await, [1]);
    ws.close(None).await.expect("close");
    drop(ws);
    wait_status(&proxy, Duration::from_secs(5), "nothing in flight", |s| {
        s.in_flight(0) == [0]
    })
    .await;
}
