//! A tiny HTTP backend for the tests, bound to `127.0.0.1:0`: a closure
//! decides how to answer the k-th request (counted from 0 across all
//! connections), so the expected report can be computed exactly. It speaks
//! HTTP/1.1 by default, or HTTP/2, over TCP or TLS ([`Protocol`]), with a
//! self-signed certificate made on the spot ([`Cert`]).

#![allow(dead_code, reason = "each test file uses a different part")]

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode, request::Parts};
use http_body_util::Full;
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use switchyard_stress::{Cli, Options, Report};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    task::JoinHandle,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{ServerConfig, crypto::ring},
};

/// How the test backend answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with `x-upstream: <name>`.
    Upstream(String),
    /// 200 with these headers.
    Headers(Vec<(&'static str, &'static str)>),
    /// 200 with this body and no `x-upstream`.
    Body(String),
    /// This status, with no `x-upstream`.
    Status(u16),
    /// 200 with `x-upstream: <name>` and `connection: close`.
    Close(String),
    /// 200 with `x-upstream: <name>`, after this delay.
    Slow(Duration, String),
    /// Close the connection without answering.
    Drop,
    /// Never answer.
    Stall,
}

/// The usual rotation over three replicas: 1, 2, 3, 1, 2, 3, ...
pub fn rotating(k: u64) -> Reply {
    Reply::Upstream((k % 3 + 1).to_string())
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, its PEM in a
/// file of a temporary directory (removed on drop).
pub struct Cert {
    /// The PEM file: what `--ca` and `SSL_CERT_FILE` take.
    pub pem: std::path::PathBuf,
    der: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    _dir: tempfile::TempDir,
}

impl Cert {
    /// A new key and certificate, `name` its subject (and issuer): two
    /// certificates of different names cannot be taken for each other's
    /// issuer.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("certificate");
        let dir = tempfile::tempdir().expect("temporary directory");
        let pem = dir.path().join("cert.pem");
        std::fs::write(&pem, cert.pem()).expect("write the certificate");
        Self {
            pem,
            der: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            _dir: dir,
        }
    }
}

/// What the test backend speaks.
#[derive(Clone, Default)]
pub enum Protocol {
    /// HTTP/1.1 over TCP.
    #[default]
    Http1,
    /// HTTP/2 over TCP (prior knowledge, no upgrade).
    Http2,
    /// TLS with this certificate, offering these ALPN protocols (`h2`,
    /// `http/1.1`); HTTP/2 if the client agrees to `h2`, else HTTP/1.1.
    Tls(Arc<Cert>, Vec<&'static str>),
}

/// A running test backend; stops (with all its connections) when dropped.
pub struct Backend {
    /// `http://127.0.0.1:<port>/`, or `https://` for [`Protocol::Tls`].
    pub url: String,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Starts an HTTP/1.1 backend answering request `k` with
    /// `reply(k, request)`.
    pub async fn start<F>(reply: F) -> Self
    where
        F: Fn(u64, &Parts) -> Reply + Send + Sync + 'static,
    {
        Self::speaking(Protocol::Http1, reply).await
    }

    /// Starts a backend speaking `protocol`, answering request `k` with
    /// `reply(k, request)`.
    pub async fn speaking<F>(protocol: Protocol, reply: F) -> Self
    where
        F: Fn(u64, &Parts) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let scheme = match protocol {
            Protocol::Tls(..) => "https",
            Protocol::Http1 | Protocol::Http2 => "http",
        };
        let url = format!("{scheme}://{}/", listener.local_addr().expect("local addr"));
        let tls = match &protocol {
            Protocol::Tls(cert, alpn) => Some(tls_acceptor(cert, alpn)),
            Protocol::Http1 | Protocol::Http2 => None,
        };
        let http2 = matches!(protocol, Protocol::Http2);
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let reply = Arc::new(reply);
        let task = tokio::spawn({
            let connections = Arc::clone(&connections);
            let requests = Arc::clone(&requests);
            async move {
                // Dropping the set (when the accept task is aborted) aborts
                // the connections too.
                let mut served = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let requests = Arc::clone(&requests);
                    let reply = Arc::clone(&reply);
                    let service = move |request: Request<Incoming>| {
                        let k = requests.fetch_add(1, Ordering::SeqCst);
                        let (parts, _) = request.into_parts();
                        answer(reply(k, &parts))
                    };
                    let tls = tls.clone();
                    served.spawn(async move {
                        let Some(tls) = tls else {
                            serve(stream, http2, service).await;
                            return;
                        };
                        let Ok(stream) = tls.accept(stream).await else {
                            return;
                        };
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        serve(stream, h2, service).await;
                    });
                    while served.try_join_next().is_some() {}
                }
            }
        });
        Self {
            url,
            connections,
            requests,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, std::io::Error>> + Send>>;

/// Serves one connection, HTTP/2 or HTTP/1.1, until it closes.
async fn serve<S, F>(stream: S, http2: bool, service: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Answer + Clone + Send + Sync + 'static,
{
    let io = TokioIo::new(stream);
    let service = service_fn(service);
    // Errors (a dropped connection) end the connection, as they should.
    if http2 {
        let _ = http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        let _ = http1::Builder::new().serve_connection(io, service).await;
    }
}

fn tls_acceptor(cert: &Cert, alpn: &[&str]) -> TlsAcceptor {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der.clone()],
            PrivateKeyDer::Pkcs8(cert.key.clone_key()),
        )
        .expect("certificate and key");
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    TlsAcceptor::from(Arc::new(config))
}

fn answer(reply: Reply) -> Answer {
    Box::pin(async move {
        let response = Response::builder();
        let response = match reply {
            Reply::Upstream(name) => response.header("x-upstream", name).body("ok".into()),
            Reply::Headers(headers) => headers
                .into_iter()
                .fold(response, |response, (name, value)| {
                    response.header(name, value)
                })
                .body("ok".into()),
            Reply::Body(body) => response.body(body.into()),
            Reply::Slow(delay, name) => {
                tokio::time::sleep(delay).await;
                response.header("x-upstream", name).body("ok".into())
            }
            Reply::Status(status) => response
                .status(StatusCode::from_u16(status).expect("valid status"))
                .body("error".into()),
            Reply::Close(name) => response
                .header("x-upstream", name)
                .header("connection", "close")
                .body("ok".into()),
            // A service error makes hyper close the connection unanswered.
            Reply::Drop => return Err(std::io::Error::other("dropped on purpose")),
            Reply::Stall => match std::future::pending::<Infallible>().await {},
        };
        Ok(response.expect("valid response"))
    })
}

/// Options as the command line `switchyard-stress -u <url> <args>` gives
/// them, without the progress bar.
pub fn options(url: &str, args: &[&str]) -> Options {
    let argv = ["switchyard-stress", "-u", url]
        .into_iter()
        .chain(args.iter().copied());
    let mut options = Options::try_from(Cli::try_parse_from(argv).expect("valid arguments"))
        .expect("a target URL");
    options.progress = false;
    options
}

/// Runs to the end, within a generous bound so a hang fails instead of
/// blocking the suite.
pub async fn run(options: Options) -> Report {
    tokio::time::timeout(Duration::from_secs(60), switchyard_stress::run(options))
        .await
        .expect("the run finished within 60 s")
        .expect("the run started")
}

/// The per-backend counts, in report order.
pub fn backends(report: &Report) -> Vec<(&str, u64)> {
    report
        .backends
        .iter()
        .map(|backend| (backend.name.as_str(), backend.count))
        .collect()
}
