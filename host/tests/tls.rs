//! TLS termination: `[tls]` serves the same routes over HTTPS (HTTP/1.1 and
//! HTTP/2 by ALPN), tells backends `X-Forwarded-Proto: https`, and picks up
//! a new certificate written over its files without stopping.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A self-signed certificate for `localhost` with the given common name.
struct Cert {
    pem: String,
    key: String,
    der: CertificateDer<'static>,
}

fn self_signed(name: &str) -> Cert {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, name.to_string());
    let cert = params.self_signed(&key).expect("certificate");
    Cert {
        pem: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

fn write_cert(dir: &Path, cert: &Cert) {
    std::fs::write(dir.join("key.pem"), &cert.key).expect("write key");
    std::fs::write(dir.join("cert.pem"), &cert.pem).expect("write cert");
}

/// A backend answering "Hello from backend N" and the scheme the proxy
/// said the client used.
async fn proto_backend(n: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let proto = req
                        .headers()
                        .get("x-forwarded-proto")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "Hello from backend {n}\nx-forwarded-proto: {proto}\n"
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn tls_proxy(cert: &Cert) -> (Fixture, switchyard::Proxy) {
    tls_proxy_with(cert, "").await
}

/// [`tls_proxy`] with top-level settings `top` added.
async fn tls_proxy_with(cert: &Cert, top: &str) -> (Fixture, switchyard::Proxy) {
    let mut servers = Vec::new();
    for n in 1..=3 {
        servers.push(format!("\"{}\"", proto_backend(n).await));
    }
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    write_cert(fx.dir.path(), cert);
    fx.write_config(&format!(
        "{top}[[upstream]]\nname = \"app\"\nservers = [{}]\n\n[tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        servers.join(", "),
        path_str(&fx.dir.path().join("cert.pem")),
        path_str(&fx.dir.path().join("key.pem")),
    ));
    let proxy = fx.start().await;
    (fx, proxy)
}

/// A client that trusts exactly `certs`, offering `alpn`.
fn connector(certs: &[&Cert], alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert.der.clone()).expect("trust anchor");
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// One HTTPS GET on a new connection: the reply, the certificate the
/// server presented and the protocol ALPN chose.
async fn https_get(
    connector: &TlsConnector,
    addr: SocketAddr,
    path: &str,
) -> Result<(Reply, CertificateDer<'static>, String), String> {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        https_get_on(connector, tcp, path).await
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

/// [`https_get`] on a connection already open.
async fn https_get_on(
    connector: &TlsConnector,
    tcp: tokio::net::TcpStream,
    path: &str,
) -> Result<(Reply, CertificateDer<'static>, String), String> {
    let fut = async {
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        let presented = session
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no certificate")?;
        let alpn = session
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let req = Request::builder()
            .uri(format!("https://localhost{path}"))
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = if alpn == "h2" {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("h2: {e}"))?;
            tokio::spawn(conn);
            sender.send_request(req).await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("h1: {e}"))?;
            tokio::spawn(conn);
            sender.send_request(req).await
        }
        .map_err(|e| format!("request: {e}"))?;
        Ok((Reply::read(resp).await?, presented.into_owned(), alpn))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_same_routes_with_round_robin_and_says_https() {
    let first = self_signed("switchyard test one");
    let (_fx, proxy) = tls_proxy(&first).await;
    let https = proxy.tls_addr().expect("tls listener");
    assert_ne!(https, proxy.addr());
    // /status (and the dashboard) name both listeners.
    let listeners = status(&proxy).await["listeners"].clone();
    assert_eq!(
        listeners,
        serde_json::json!([
            { "address": proxy.addr().to_string(), "tls": false },
            { "address": https.to_string(), "tls": true },
        ])
    );

    let h1 = connector(&[&first], &[b"http/1.1"]);
    let mut order = Vec::new();
    for _ in 0..6 {
        let (reply, presented, alpn) = https_get(&h1, https, "/").await.expect("https");
        assert_eq!(reply.status, 200);
        assert_eq!(presented, first.der);
        assert_eq!(alpn, "http/1.1");
        assert!(
            reply.body.contains("x-forwarded-proto: https"),
            "{}",
            reply.body
        );
        order.push(reply.backend().expect("a backend"));
    }
    assert_eq!(order, [1, 2, 3, 1, 2, 3]);

    // HTTP/2 by ALPN, same rotation.
    let h2 = connector(&[&first], &[b"h2", b"http/1.1"]);
    let (reply, _, alpn) = https_get(&h2, https, "/").await.expect("h2 over tls");
    assert_eq!(alpn, "h2");
    assert_eq!(reply.backend(), Some(1));
    assert!(reply.body.contains("x-forwarded-proto: https"));

    // The plain listener still says http.
    let plain = get(&client(), proxy.addr(), "/").await;
    assert_eq!(plain.backend(), Some(2));
    assert!(plain.body.contains("x-forwarded-proto: http\n"));

    // A client that does not trust the certificate gets no answer.
    let stranger = connector(&[&self_signed("someone else")], &[b"http/1.1"]);
    let refused = https_get(&stranger, https, "/").await;
    assert!(
        refused.as_ref().is_err_and(|e| e.starts_with("handshake")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_served_without_a_restart_and_a_broken_one_is_ignored() {
    let first = self_signed("switchyard test one");
    let second = self_signed("switchyard test two");
    let (fx, proxy) = tls_proxy(&first).await;
    let https = proxy.tls_addr().expect("tls listener");
    let both = connector(&[&first, &second], &[b"h2", b"http/1.1"]);

    // A client loops on new connections for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let looping = tokio::spawn({
        let (both, stop, ok, failures) = (
            both.clone(),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failures),
        );
        async move {
            while !stop.load(Ordering::Relaxed) {
                match https_get(&both, https, "/").await {
                    Ok((reply, _, _)) if reply.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((reply, _, _)) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("status {}", reply.status)),
                    Err(e) => failures.lock().expect("lock").push(e),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    let presented = || async {
        https_get(&both, https, "/")
            .await
            .map(|(_, cert, _)| cert)
            .expect("https")
    };
    assert_eq!(presented().await, first.der);

    write_cert(fx.dir.path(), &second);
    let took = eventually(Duration::from_secs(5), || async {
        presented().await == second.der
    })
    .await;
    assert!(took.is_some(), "the new certificate was never served");
    println!("new certificate served after {took:?}");

    // A broken certificate file: logged, and the last good one serves on.
    let before = reload_counts(&proxy).await;
    std::fs::write(
        fx.dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\ngarbage",
    )
    .expect("write");
    wait_reload(&proxy, &before, "tls", "error", Duration::from_secs(5)).await;
    let noticed = status(&proxy).await;
    let last = noticed.reloads().last().expect("a reload");
    assert!(
        last["detail"]
            .as_str()
            .is_some_and(|d| d.contains("tls.cert")),
        "{last}"
    );
    for _ in 0..3 {
        assert_eq!(presented().await, second.der);
    }
    // So is a key that belongs to another certificate.
    let before = reload_counts(&proxy).await;
    std::fs::write(fx.dir.path().join("cert.pem"), &first.pem).expect("write");
    wait_reload(&proxy, &before, "tls", "error", Duration::from_secs(5)).await;
    assert_eq!(presented().await, second.der);

    stop.store(true, Ordering::Relaxed);
    looping.await.expect("client loop");
    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok.load(Ordering::Relaxed) + failures.len()
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_start_refuse_a_key_that_does_not_match() {
    let first = self_signed("one");
    let second = self_signed("two");
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    let dir = fx.dir.path();
    std::fs::write(dir.join("cert.pem"), &first.pem).expect("write");
    std::fs::write(dir.join("key.pem"), &second.key).expect("write");
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:1\"]\n\n[tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        path_str(&dir.join("cert.pem")),
        path_str(&dir.join("key.pem")),
    ));
    let check = |fx: &Fixture| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["check", "--config"])
            .arg(fx.config_path())
            .output()
            .expect("run switchyard check");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = check(&fx);
    assert!(!ok, "{text}");
    assert!(
        text.contains("does not belong to the certificate"),
        "{text}"
    );
    let started = switchyard::Proxy::start(fx.config(), switchyard::Options::default()).await;
    assert!(started.is_err(), "a proxy started with a mismatched key");

    std::fs::write(dir.join("key.pem"), &first.key).expect("write");
    let (ok, text) = check(&fx);
    assert!(ok, "{text}");
    assert!(text.contains("HTTPS on 127.0.0.1:0"), "{text}");

    std::fs::write(dir.join("cert.pem"), "not pem").expect("write");
    let (ok, text) = check(&fx);
    assert!(!ok, "{text}");
    assert!(text.contains("`tls.cert`"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_connections_passed_to_another_worker_are_handshaken_and_served() {
    let cert = self_signed("switchyard test burst");
    let (_fx, proxy) = tls_proxy_with(&cert, "workers = 2\n").await;
    let https = proxy.tls_addr().expect("tls listener");
    // 20 connections at once, no byte sent yet: one worker accepts most
    // and passes half on before any handshake starts.
    let conns = connect_all(https, 20).await;
    wait_connections(
        &proxy,
        Duration::from_secs(5),
        "all 20 connections taken, at least 6 on each worker",
        |open| open.iter().sum::<usize>() == 20 && open.iter().all(|&n| n >= 6),
    )
    .await;
    let h1 = connector(&[&cert], &[b"http/1.1"]);
    let replies = futures_util::future::join_all(conns.into_iter().map(|tcp| {
        let h1 = h1.clone();
        async move { https_get_on(&h1, tcp, "/").await }
    }))
    .await;
    for r in replies {
        let (reply, presented, _) = r.expect("https on a passed connection");
        assert_eq!(reply.status, 200);
        assert_eq!(presented, cert.der);
        assert!(
            reply.body.contains("x-forwarded-proto: https"),
            "{}",
            reply.body
        );
    }
}
