//! The admin listener: a separate address (default `127.0.0.1:9090`), off
//! the data path, serving
//!
//! - `GET /` the live dashboard (one embedded page, no CDN);
//! - `GET /status` every upstream, strategy and backend as JSON
//!   ([`status`]);
//! - `GET /metrics` the OpenMetrics/Prometheus exposition ([`metrics`]);
//! - `GET /history` the last 15 minutes of every upstream and backend, one
//!   point a second ([`history`]), so a new dashboard starts full;
//! - `GET /events` Server-Sent Events: `status` once on connect, `stats`
//!   every second, `reload` on every plugin or config reload (then a fresh
//!   `status`).
//!
//! A sampler task snapshots every backend's counters once a second; RPS,
//! recent latency quantiles and the history come from those snapshots, so
//! the request path only ever increments atomics.

pub mod history;
pub mod metrics;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use self::history::History;
use self::status::Listeners;
use crate::gateway::Gateway;

const DASHBOARD: &str = include_str!("dashboard.html");

/// How often backends are sampled and `stats` events sent.
pub const TICK: Duration = Duration::from_secs(1);

/// A running admin listener; stops when dropped.
#[derive(Debug)]
pub struct Admin {
    addr: SocketAddr,
    server: JoinHandle<()>,
    sampler: JoinHandle<()>,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.server.abort();
        self.sampler.abort();
    }
}

impl Admin {
    /// Serves the admin API on `listener` for the proxy listening on
    /// `proxy`.
    pub fn start(
        listener: TcpListener,
        gateway: Arc<Gateway>,
        proxy: Listeners,
    ) -> std::io::Result<Admin> {
        let addr = listener.local_addr()?;
        let (stats_tx, _) = broadcast::channel::<Bytes>(4);
        let history = Arc::new(History::default());
        let sampler = tokio::spawn(sample(
            Arc::clone(&gateway),
            Arc::clone(&history),
            stats_tx.clone(),
        ));
        let shared = Arc::new(Shared {
            gateway,
            stats: stats_tx,
            proxy,
            history,
        });
        let server = tokio::spawn(serve(listener, shared));
        Ok(Admin {
            addr,
            server,
            sampler,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Samples every backend each [`TICK`], keeps the history and publishes
/// the `stats` event.
async fn sample(gateway: Arc<Gateway>, history: Arc<History>, stats: broadcast::Sender<Bytes>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let table = gateway.routes();
        for upstream in &table.upstreams {
            for b in &upstream.backends.load().backends {
                b.window.sample(now, b.requests(), &b.latency);
            }
        }
        let t_ms = history.record(&table, crate::base::clock::now());
        drop(table);
        if stats.receiver_count() > 0 {
            let _ = stats.send(event("stats", &status::stats(&gateway, &history, t_ms)));
        }
    }
}

/// What every admin request needs.
struct Shared {
    gateway: Arc<Gateway>,
    stats: broadcast::Sender<Bytes>,
    /// Where the proxy listens (bound addresses).
    proxy: Listeners,
    /// The last 15 minutes, for `/history`.
    history: Arc<History>,
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("admin: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(route(&shared, req)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type AdminBody = Either<Full<Bytes>, EventStream>;

fn route(shared: &Shared, req: Request<Incoming>) -> Response<AdminBody> {
    let gateway = &shared.gateway;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/" | "/index.html" => full(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        "/status" => match serde_json::to_string_pretty(&status::status(gateway, shared.proxy)) {
            Ok(json) => full(StatusCode::OK, "application/json", json),
            Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
        },
        "/metrics" => match metrics::render(gateway) {
            Ok(text) => full(StatusCode::OK, metrics::CONTENT_TYPE, text),
            Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
        },
        "/history" => {
            let doc = shared.history.snapshot(&gateway.routes());
            match serde_json::to_string(&doc) {
                Ok(json) => full(StatusCode::OK, "application/json", json),
                Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            }
        }
        "/events" => events(shared),
        _ => plain(
            StatusCode::NOT_FOUND,
            "admin: GET /, /status, /metrics, /history or /events\n",
        ),
    }
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AdminBody> {
    let mut resp = Response::new(Either::Left(Full::new(body.into())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn plain(status: StatusCode, text: &str) -> Response<AdminBody> {
    full(status, "text/plain; charset=utf-8", text.to_owned())
}

/// One Server-Sent Event.
fn event(name: &str, data: &impl serde::Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// `/events`: a task per subscriber forwards events into a small channel;
/// a subscriber that cannot keep up misses `stats` ticks, never blocks
/// anything.
fn events(shared: &Shared) -> Response<AdminBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let mut stats = shared.stats.subscribe();
    let mut reloads = shared.gateway.subscribe_reloads();
    let (gateway, proxy) = (Arc::clone(&shared.gateway), shared.proxy);
    tokio::spawn(async move {
        let hello = event("status", &status::status(&gateway, proxy));
        if tx.send(hello).await.is_err() {
            return;
        }
        loop {
            let next = tokio::select! {
                s = stats.recv() => match s {
                    Ok(bytes) => vec![bytes],
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                r = reloads.recv() => match r {
                    Ok(record) => vec![event("reload", &record), event("status", &status::status(&gateway, proxy))],
                    Err(broadcast::error::RecvError::Lagged(_)) => vec![event("status", &status::status(&gateway, proxy))],
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tx.closed() => return,
            };
            for bytes in next {
                if tx.send(bytes).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut resp = Response::new(Either::Right(EventStream(rx)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The body of `/events`.
#[derive(Debug)]
pub struct EventStream(mpsc::Receiver<Bytes>);

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|bytes| bytes.map(|b| Ok(Frame::data(b))))
    }
}
