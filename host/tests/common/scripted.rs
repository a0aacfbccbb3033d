//! A backend whose behaviour the test scripts per connection and per
//! request: answer, answer 5xx, close without answering, stall, or drop the
//! connection at accept. It records what reached it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the backend does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// 200 `Hello from backend N`.
    Answer,
    /// This status, body `error`.
    Status(u16),
    /// Read the request, then close the connection without a response.
    Close,
    /// Read the request and never answer.
    Stall,
}

/// What a request looked like when it arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body: String,
}

type Script = dyn Fn(usize) -> Act + Send + Sync;

/// A running scripted backend; stops when dropped.
pub struct Scripted {
    pub addr: SocketAddr,
    /// Connections accepted (dropped ones included).
    pub connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    /// Requests that reached the backend, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// Starts backend `number`. `act(k)` decides request k (0-based, over
    /// all connections). `drop_conn(c)` says whether connection c is closed
    /// at once, before reading anything. `keep_alive: false` closes every
    /// connection after one exchange (one connection per request, as nginx
    /// does upstream by default).
    pub async fn start(
        number: usize,
        keep_alive: bool,
        drop_conn: impl Fn(usize) -> bool + Send + Sync + 'static,
        act: impl Fn(usize) -> Act + Send + Sync + 'static,
    ) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let act: Arc<Script> = Arc::new(act);
        let (conns, seen2) = (Arc::clone(&connections), Arc::clone(&seen));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let c = conns.fetch_add(1, Ordering::SeqCst);
                if drop_conn(c) {
                    drop(stream);
                    continue;
                }
                let (act, seen, requests) =
                    (Arc::clone(&act), Arc::clone(&seen2), Arc::clone(&requests));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (act, seen, requests) =
                            (Arc::clone(&act), Arc::clone(&seen), Arc::clone(&requests));
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            seen.lock().expect("lock").push(Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                body: body
                                    .as_ref()
                                    .map(|b| String::from_utf8_lossy(b).into_owned())
                                    .unwrap_or_default(),
                            });
                            let k = requests.fetch_add(1, Ordering::SeqCst);
                            match act(k) {
                                Act::Answer => Ok(Response::new(Full::new(Bytes::from(format!(
                                    "Hello from backend {number}\n"
                                ))))),
                                Act::Status(code) => {
                                    let mut resp = Response::new(Full::new(Bytes::from("error\n")));
                                    *resp.status_mut() =
                                        http::StatusCode::from_u16(code).expect("status");
                                    Ok(resp)
                                }
                                Act::Close => Err("scripted close"),
                                Act::Stall => {
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                    Err("stalled")
                                }
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Scripted {
            addr,
            connections,
            seen,
            task,
        }
    }
}
