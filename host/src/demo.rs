//! Built-in demo backends: small HTTP servers that answer
//! `Hello from backend N`, the role the three Flask replicas play in the
//! classic nginx setup. Also used by the test suite.
//!
//! Routes: `/health` answers `ok`; `/delay/<ms>` answers after `ms`
//! milliseconds (at most 60 s), to show least-connections at work; anything
//! else answers the greeting. Every answer carries `X-Backend: N`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running demo backend. Dropping it kills it: the listener closes and
/// open connections are cut, like a crashed process.
#[derive(Debug)]
pub struct DemoBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its number, as in `Hello from backend N`.
    pub number: usize,
    task: JoinHandle<()>,
    kill: watch::Sender<bool>,
}

impl Drop for DemoBackend {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.kill.send(true);
    }
}

async fn answer(number: usize, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let body = if path == "/health" {
        "ok\n".to_string()
    } else if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        format!("Hello from backend {number} after {ms} ms\n")
    } else {
        format!("Hello from backend {number}\n")
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert("x-backend", number.into());
    resp
}

/// Starts demo backend `number` on `addr` (port 0 picks a free port).
pub async fn spawn(addr: SocketAddr, number: usize) -> std::io::Result<DemoBackend> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (kill, killed) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let mut killed = killed.clone();
            tokio::spawn(async move {
                let service =
                    service_fn(
                        move |req| async move { Ok::<_, Infallible>(answer(number, req).await) },
                    );
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    _ = killed.wait_for(|k| *k) => {}
                }
            });
        }
    });
    Ok(DemoBackend {
        addr,
        number,
        task,
        kill,
    })
}
