//! A tiny HTTP/1.1 backend for the tests, bound to `127.0.0.1:0`: a closure
//! decides how to answer the k-th request (counted from 0 across all
//! connections), so the expected report can be computed exactly.

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
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use switchyard_stress::{Cli, Options, Report};
use tokio::{net::TcpListener, task::JoinHandle};

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

/// A running test backend; stops (with all its connections) when dropped.
pub struct Backend {
    /// `http://127.0.0.1:<port>/`
    pub url: String,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Starts a backend answering request `k` with `reply(k, request)`.
    pub async fn start<F>(reply: F) -> Self
    where
        F: Fn(u64, &Parts) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("local addr"));
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
                    let service = service_fn(move |request: Request<Incoming>| {
                        let k = requests.fetch_add(1, Ordering::SeqCst);
                        let (parts, _) = request.into_parts();
                        answer(reply(k, &parts))
                    });
                    served.spawn(
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                    );
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
