//! The client-facing listeners: accept TCP connections on `listen` (plain)
//! and, with `[tls]`, on `tls.listen` (TLS handshake first, within
//! [`tls::HANDSHAKE_TIMEOUT`]), and serve HTTP/1.1 and HTTP/2 on them with
//! hyper, handing each request to [`proxy::handle`]. Both serve the same
//! routes. Every worker thread ([`crate::workers`]) runs its own accept loop
//! on copies of the same sockets. Stops accepting on shutdown and lets open
//! connections finish, up to the config's `drain-timeout`: in-flight
//! requests complete, keep-alive clients get `Connection: close` on their
//! last response, and open tunnels (WebSockets) may run until the deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::gateway::Gateway;
use crate::proxy::Scheme;
use crate::tls::{self, Tls};
use crate::{front, proxy, workers};

/// The HTTPS listener and the certificate it serves.
#[derive(Debug)]
pub struct TlsListener {
    /// Bound to `tls.listen`.
    pub listener: TcpListener,
    /// The current certificate (swapped on reload).
    pub tls: Arc<Tls>,
}

/// The listeners being served by the worker threads.
#[derive(Debug)]
pub struct Server {
    stop: watch::Sender<bool>,
    workers: Vec<workers::Worker>,
}

impl Server {
    /// Stops accepting, lets open connections finish (up to the config's
    /// `drain-timeout`) and returns once every worker is done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for worker in self.workers {
            worker.finished().await;
        }
    }
}

/// Serves `listener` (and `secure`, when TLS is on) on the config's number
/// of worker threads ([`crate::workers`]) until [`Server::shutdown`]. Each
/// worker accepts from the same sockets: whichever is free takes the next
/// connection, and serves it to the end on its own thread.
pub fn start(
    listener: TcpListener,
    secure: Option<TlsListener>,
    gateway: Arc<Gateway>,
) -> std::io::Result<Server> {
    let plain = listener.into_std()?;
    let secure = secure
        .map(|s| s.listener.into_std().map(|l| (l, s.tls)))
        .transpose()?;
    let config = gateway.config();
    // `client.max-connections` counts over all workers.
    let slots = Arc::new(Semaphore::new(config.client.max_connections));
    let mut sockets = Vec::with_capacity(config.workers);
    for _ in 0..config.workers {
        let secure = match &secure {
            Some((l, tls)) => Some((l.try_clone()?, Arc::clone(tls))),
            None => None,
        };
        sockets.push(std::sync::Mutex::new(Some((plain.try_clone()?, secure))));
    }
    drop((plain, secure));
    let (stop, stopped) = watch::channel(false);
    let workers = workers::spawn(config.workers, move |index| {
        let taken = sockets[index].lock().ok().and_then(|mut s| s.take());
        let gateway = Arc::clone(&gateway);
        let slots = Arc::clone(&slots);
        let mut stopped = stopped.clone();
        async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|&stop| stop).await;
            };
            match taken.map(|(plain, secure)| registered(plain, secure)) {
                Some(Ok((plain, secure))) => worker(plain, secure, gateway, slots, shutdown).await,
                Some(Err(e)) => tracing::error!("worker {index} cannot serve the listener: {e}"),
                None => tracing::error!("worker {index} has no listener"),
            }
        }
    })?;
    Ok(Server { stop, workers })
}

/// The worker's copies of the listening sockets, registered with its own
/// runtime.
fn registered(
    plain: std::net::TcpListener,
    secure: Option<(std::net::TcpListener, Arc<Tls>)>,
) -> std::io::Result<(TcpListener, Option<TlsListener>)> {
    let plain = TcpListener::from_std(plain)?;
    let secure = match secure {
        Some((listener, tls)) => Some(TlsListener {
            listener: TcpListener::from_std(listener)?,
            tls,
        }),
        None => None,
    };
    Ok((plain, secure))
}

/// One worker's accept loop: serves `listener` (and `secure`) until
/// `shutdown` completes, then drains its connections.
async fn worker(
    listener: TcpListener,
    secure: Option<TlsListener>,
    gateway: Arc<Gateway>,
    slots: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The front's guard keeps the client timeouts (head, body,
        // keep-alive) and refuses oversized heads itself.
        .header_read_timeout(None)
        .max_buf_size(front::MAX_HEAD);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A connection takes a slot before it is accepted, so beyond the
        // cap clients wait in the listen backlog.
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(
                    "client.max-connections ({}) reached; new connections wait until one closes",
                    gateway.config().client.max_connections
                );
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (accepted, scheme) = tokio::select! {
            accepted = listener.accept() => (accepted, Scheme::Http),
            accepted = accept(secure.as_ref().map(|s| &s.listener)) => (accepted, Scheme::Https),
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Best effort; a failure only costs latency.
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let gateway = Arc::clone(&gateway);
        let builder = Arc::clone(&builder);
        match (scheme, &secure) {
            (Scheme::Https, Some(secure)) => {
                // The handshake runs in the connection's task, never in the
                // accept loop; its watcher holds the drain until it is done.
                let acceptor = secure.tls.acceptor();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        tls::HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out after {:?}", tls::HANDSHAKE_TIMEOUT);
                            return;
                        }
                    };
                    connection(
                        &builder,
                        watcher,
                        stream,
                        gateway,
                        peer,
                        Scheme::Https,
                        slot,
                    )
                    .await;
                });
            }
            _ => {
                // Spawned as is, not inside an `async` block that awaits it:
                // that would keep two copies of the connection's state
                // (4 KiB instead of 2 per idle client).
                tokio::spawn(connection(
                    &builder,
                    watcher,
                    stream,
                    gateway,
                    peer,
                    Scheme::Http,
                    slot,
                ));
            }
        }
    }
    drop(listener);
    drop(secure);
    let deadline = gateway.config().drain_timeout;
    let tunnels = Arc::clone(gateway.tunnels());
    let drained = async {
        graceful.shutdown().await;
        if tunnels.count() > 0 {
            tracing::info!(
                "waiting for {} open tunnel(s) (WebSockets) to close",
                tunnels.count()
            );
        }
        tunnels.all_closed().await;
    };
    tokio::select! {
        () = drained => tracing::info!("all connections closed"),
        () = tokio::time::sleep(deadline) => tracing::warn!("drain-timeout ({deadline:?}) passed; closing remaining connections"),
    }
}

/// The next connection on `listener`; never, when there is none.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves HTTP on one accepted (and, for HTTPS, handshaken) connection,
/// holding its `max-connections` slot until it ends.
fn connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    scheme: Scheme,
    slot: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(front::Conn::default());
    let client = Arc::new(proxy::Client::new(peer, scheme));
    let io = front::Guard::new(io, Arc::clone(&shared), gateway.client_limits());
    let service = service_fn(move |req| {
        let gateway = Arc::clone(&gateway);
        let shared = Arc::clone(&shared);
        let client = Arc::clone(&client);
        // Boxed per request: hyper keeps a connection's service future in
        // one allocation for the connection's life, so an unboxed (large)
        // future would be memory every idle keep-alive client holds.
        Box::pin(async move {
            let in_flight = shared.begin();
            let resp = proxy::handle(&gateway, &client, &in_flight, req).await;
            Ok::<_, Infallible>(resp.map(|body| front::Tracked::new(body, in_flight)))
        })
    });
    Serving {
        conn: watcher.watch(
            builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned(),
        ),
        peer,
        _slot: slot,
    }
}

pin_project! {
    /// A client connection being served. A plain struct, not an `async`
    /// block: one copy of hyper's connection state per client.
    struct Serving<F> {
        #[pin]
        conn: F,
        peer: SocketAddr,
        _slot: OwnedSemaphorePermit,
    }
}

impl<F, E> Future for Serving<F>
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if let Err(e) = std::task::ready!(this.conn.poll(cx)) {
            tracing::debug!(peer = %this.peer, "client connection ended with error: {e}");
        }
        Poll::Ready(())
    }
}
