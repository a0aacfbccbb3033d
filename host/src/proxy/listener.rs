//! The client-facing listeners: accept TCP connections on `listen` (plain)
//! and, with `[tls]`, on `tls.listen` (TLS handshake first, within
//! [`tls::HANDSHAKE_TIMEOUT`]), and serve HTTP/1.1 and HTTP/2 on them with
//! hyper (the front tells which from the first bytes:
//! [`front::Guard::poll_protocol`]), handing each request to
//! [`exchange::handle`]. Both serve the same routes. Every worker thread
//! ([`crate::base::workers`]) runs its own accept loop on copies of the same
//! sockets. Stops accepting on shutdown and lets open connections finish, up
//! to the config's `drain-timeout`: in-flight requests complete, keep-alive
//! clients get `Connection: close` on their last response (HTTP/2 clients a
//! GOAWAY), idle and silent connections are closed at once, and open tunnels
//! (WebSockets) may run until the deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{HttpService, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use super::body::ProxyBody;
use super::exchange::{self, Scheme};
use crate::base::workers;
use crate::gateway::Gateway;
use crate::wire::tls::{self, Tls};
use crate::wire::{front, head};

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
/// of worker threads ([`crate::base::workers`]) until [`Server::shutdown`]. Each
/// worker accepts from the same sockets, and serves a connection it accepts
/// to the end on its own thread, unless it already serves clearly more than
/// another worker: then it passes the connection on
/// ([`workers::Connections`]).
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
    // Each worker's inbox of connections passed on to it. Unbounded, but
    // never longer than `max-connections`: each holds a slot.
    let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..config.workers)
        .map(|_| mpsc::unbounded_channel::<Handoff>())
        .unzip();
    let inboxes: Arc<[Inbox]> = inboxes.into();
    let mut sockets = Vec::with_capacity(config.workers);
    for receiver in receivers {
        let secure = match &secure {
            Some((l, tls)) => Some((l.try_clone()?, Arc::clone(tls))),
            None => None,
        };
        sockets.push(std::sync::Mutex::new(Some((
            plain.try_clone()?,
            secure,
            receiver,
        ))));
    }
    drop((plain, secure));
    let (stop, stopped) = watch::channel(false);
    let workers = workers::spawn(config.workers, move |index| {
        let taken = sockets[index].lock().ok().and_then(|mut s| s.take());
        let accepting = Accepting {
            index,
            gateway: Arc::clone(&gateway),
            slots: Arc::clone(&slots),
            inboxes: Arc::clone(&inboxes),
        };
        let mut stopped = stopped.clone();
        async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|&stop| stop).await;
            };
            match taken.map(|(plain, secure, inbox)| (registered(plain, secure), inbox)) {
                Some((Ok((plain, secure)), inbox)) => {
                    accepting.run(plain, secure, inbox, shutdown).await;
                }
                Some((Err(e), _)) => {
                    tracing::error!("worker {index} cannot serve the listener: {e}");
                }
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

/// A connection one worker accepted for another to serve (its TLS
/// handshake, if any, not started).
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    scheme: Scheme,
    held: Held,
}

impl Handoff {
    /// The connection, registered with the runtime of the worker this runs
    /// on (the one it was passed to, or the one that accepted it when the
    /// other no longer takes connections); None, logged, when that fails.
    fn registered(self) -> Option<(TcpStream, SocketAddr, Scheme, Held)> {
        match TcpStream::from_std(self.stream) {
            Ok(stream) => Some((stream, self.peer, self.scheme, self.held)),
            Err(e) => {
                tracing::warn!(peer = %self.peer, "cannot take a connection into this worker: {e}");
                None
            }
        }
    }
}

type Inbox = mpsc::UnboundedSender<Handoff>;

/// What a client connection holds until it ends: its `max-connections`
/// slot and its place in its worker's count.
struct Held {
    _slot: OwnedSemaphorePermit,
    seat: workers::Seat,
}

/// What one worker's accept loop needs.
struct Accepting {
    index: usize,
    gateway: Arc<Gateway>,
    slots: Arc<Semaphore>,
    /// Every worker's inbox, by worker index.
    inboxes: Arc<[Inbox]>,
}

/// This worker's connections in progress, and the signal that tells them to
/// finish.
struct Served {
    http: Arc<Http>,
    tracker: TaskTracker,
    draining: CancellationToken,
}

impl Accepting {
    /// Serves `listener` (and `secure`) and the connections other workers
    /// pass on, until `shutdown` completes; then drains its connections.
    async fn run(
        self,
        listener: TcpListener,
        secure: Option<TlsListener>,
        mut inbox: mpsc::UnboundedReceiver<Handoff>,
        shutdown: impl Future<Output = ()>,
    ) {
        let served = Served {
            http: Arc::new(Http::new()),
            tracker: TaskTracker::new(),
            draining: CancellationToken::new(),
        };
        tokio::pin!(shutdown);
        loop {
            let (stream, peer, scheme, held) = tokio::select! {
                () = &mut shutdown => break,
                Some(handed) = inbox.recv() => match handed.registered() {
                    Some(connection) => connection,
                    None => continue,
                },
                accepted = self.accept(&listener, secure.as_ref()) => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let here = if held.seat.worker() == self.index {
                Some((stream, held))
            } else {
                self.pass_on(stream, peer, scheme, held)
            };
            // None: passed on (or lost, and logged).
            if let Some((stream, held)) = here {
                self.serve(&served, secure.as_ref(), stream, peer, scheme, held);
            }
        }
        drop(listener);
        drop(secure);
        drop(inbox);
        let deadline = self.gateway.config().drain_timeout;
        let tunnels = Arc::clone(self.gateway.tunnels());
        served.draining.cancel();
        served.tracker.close();
        let drained = async {
            served.tracker.wait().await;
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

    /// The next connection on either socket, with its slot and the worker
    /// that is to serve it. A connection takes a slot before it is
    /// accepted, so beyond the cap clients wait in the listen backlog.
    async fn accept(
        &self,
        listener: &TcpListener,
        secure: Option<&TlsListener>,
    ) -> std::io::Result<(TcpStream, SocketAddr, Scheme, Held)> {
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(
                    "client.max-connections ({}) reached; new connections wait until one closes",
                    self.gateway.config().client.max_connections
                );
                match Arc::clone(&self.slots).acquire_owned().await {
                    Ok(slot) => slot,
                    // Closed: never, the semaphore is not closed.
                    Err(_) => return std::future::pending().await,
                }
            }
        };
        let ((stream, peer), scheme) = tokio::select! {
            accepted = listener.accept() => (accepted?, Scheme::Http),
            accepted = accept(secure.map(|s| &s.listener)) => (accepted?, Scheme::Https),
        };
        // Best effort; a failure only costs latency.
        let _ = stream.set_nodelay(true);
        let held = Held {
            _slot: slot,
            seat: self.gateway.connections().assign(self.index),
        };
        Ok((stream, peer, scheme, held))
    }

    /// Hands a connection to the worker its seat is on. If that worker no
    /// longer takes connections (it is shutting down), gives it back,
    /// counted on this worker instead.
    fn pass_on(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        scheme: Scheme,
        held: Held,
    ) -> Option<(TcpStream, Held)> {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, "cannot pass a connection to another worker: {e}");
                return None;
            }
        };
        let to = held.seat.worker();
        let handed = Handoff {
            stream,
            peer,
            scheme,
            held,
        };
        let handed = match self.inboxes.get(to) {
            Some(inbox) => match inbox.send(handed) {
                Ok(()) => return None,
                Err(mpsc::error::SendError(handed)) => handed,
            },
            None => handed,
        };
        // Not taken: served here after all.
        let (stream, _, _, Held { _slot, seat }) = handed.registered()?;
        drop(seat);
        let seat = self.gateway.connections().seat(self.index);
        Some((stream, Held { _slot, seat }))
    }

    /// Serves one connection on this worker: the TLS handshake first for
    /// HTTPS, then HTTP.
    fn serve(
        &self,
        served: &Served,
        secure: Option<&TlsListener>,
        stream: TcpStream,
        peer: SocketAddr,
        scheme: Scheme,
        held: Held,
    ) {
        let drain = served.draining.clone();
        let gateway = Arc::clone(&self.gateway);
        let http = Arc::clone(&served.http);
        match (scheme, secure) {
            (Scheme::Https, Some(secure)) => {
                // The handshake runs in the connection's task, never in the
                // accept loop; the drain waits for it too.
                let acceptor = secure.tls.acceptor();
                served.tracker.spawn(async move {
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
                    connection(http, drain, stream, gateway, peer, Scheme::Https, held).await;
                });
            }
            _ => {
                // Spawned as is, not inside an `async` block that awaits it:
                // that would keep two copies of the connection's state per
                // idle client.
                served.tracker.spawn(connection(
                    http,
                    drain,
                    stream,
                    gateway,
                    peer,
                    Scheme::Http,
                    held,
                ));
            }
        }
    }
}

/// The next connection on `listener`; never, when there is none.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The HTTP/1 and HTTP/2 servers of a worker. A connection gets the one
/// its first bytes call for ([`front::Guard::poll_protocol`]).
struct Http {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Http {
    fn new() -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // The front's guard keeps the client timeouts (head, body,
            // keep-alive) and refuses oversized heads itself.
            .header_read_timeout(None)
            .max_buf_size(front::MAX_HEAD);
        Self {
            h1,
            h2: http2::Builder::new(TokioExecutor::new()),
        }
    }
}

/// Serves HTTP on one accepted (and, for HTTPS, handshaken) connection,
/// holding its `max-connections` slot and its worker's count until it
/// ends; `drain` is cancelled when the worker shuts down.
fn connection<I>(
    http: Arc<Http>,
    drain: CancellationToken,
    io: I,
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    scheme: Scheme,
    held: Held,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(front::Conn::default());
    let io = front::Guard::new(io, Arc::clone(&shared), gateway.client_limits());
    let requests = Requests {
        client: Arc::new(exchange::Client::new(peer, scheme)),
        gateway,
        shared,
    };
    let hyper_requests = requests.clone();
    // hyper writes only a response's `HeaderMap`: the fields a backend's
    // response passes on unparsed go there first.
    let service = service_fn(move |req: Request<Incoming>| {
        let answer = hyper_requests.handle(req.map(Some));
        async move { answer.await.map(head::parsed) }
    });
    Serving {
        stage: Stage::Opening {
            start: Some((io, service, requests)),
        },
        drain: drain.clone().cancelled_owned(),
        token: drain,
        draining: false,
        http,
        peer,
        _held: held,
    }
}

/// What a connection's requests are handed to.
#[derive(Clone)]
struct Requests {
    gateway: Arc<Gateway>,
    client: Arc<exchange::Client>,
    shared: Arc<front::Conn>,
}

impl Requests {
    /// The proxy's answer to `req`, the connection's next request.
    ///
    /// Boxed per request: a connection keeps the future of the request
    /// being served in one place for its whole life (hyper's server, and
    /// the own server's state), so an unboxed (large) future would be
    /// memory every idle keep-alive client holds.
    fn handle(
        &self,
        req: Request<Option<Incoming>>,
    ) -> Pin<
        Box<
            impl Future<Output = Result<Response<front::Tracked<ProxyBody>>, Infallible>> + Send + use<>,
        >,
    > {
        Box::pin(exchange::handle(
            Arc::clone(&self.gateway),
            Arc::clone(&self.client),
            self.shared.begin(),
            req,
        ))
    }
}

/// The own HTTP/1.1 server's loop on a connection, boxed: its type cannot
/// be named in [`Stage`].
type OwnServer<I> = Pin<Box<dyn Future<Output = front::h1::Ended<I>> + Send>>;

pin_project! {
    /// Where a connection is: its first bytes not read yet, served by the
    /// own HTTP/1.1 server, or by hyper's HTTP/1 (with upgrades; from the
    /// first request the own server hands over) or HTTP/2 server.
    #[project = StageProj]
    enum Stage<I, S>
    where
        S: HttpService<Incoming>,
    {
        Opening {
            // Taken when the server for the protocol starts.
            start: Option<(front::Guard<I>, S, Requests)>,
        },
        Own {
            served: OwnServer<I>,
            // For hyper, if the own server hands the connection over.
            service: Option<S>,
        },
        Http1 {
            #[pin]
            conn: http1::UpgradeableConnection<TokioIo<front::Guard<I>>, S>,
        },
        Http2 {
            #[pin]
            conn: http2::Connection<TokioIo<front::Guard<I>>, S, TokioExecutor>,
        },
    }
}

pin_project! {
    /// A client connection being served. A plain struct, not an `async`
    /// block: one copy of the connection's state per client.
    struct Serving<I, S>
    where
        S: HttpService<Incoming>,
    {
        #[pin]
        stage: Stage<I, S>,
        // Watched here for hyper's servers; the own server watches `token`.
        #[pin]
        drain: WaitForCancellationFutureOwned,
        token: CancellationToken,
        draining: bool,
        http: Arc<Http>,
        peer: SocketAddr,
        _held: Held,
    }
}

impl<I, S, B> Future for Serving<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // The own server is left alone: it sees the drain itself, and
        // polling the drain's future on every wake-up costs a lock.
        let own = matches!(this.stage.as_mut().project(), StageProj::Own { .. });
        if !*this.draining && !own && this.drain.as_mut().poll(cx).is_ready() {
            // Shutting down: hyper answers what is in flight (HTTP/1 with
            // `Connection: close`, HTTP/2 with a GOAWAY) and closes; a
            // connection that has sent nothing yet is closed now.
            *this.draining = true;
            match this.stage.as_mut().project() {
                StageProj::Opening { .. } => return Poll::Ready(()),
                StageProj::Own { .. } => {}
                StageProj::Http1 { conn } => conn.graceful_shutdown(),
                StageProj::Http2 { conn } => conn.graceful_shutdown(),
            }
        }
        let ended = loop {
            match this.stage.as_mut().project() {
                StageProj::Opening { start } => {
                    let Some((guard, _, _)) = start.as_mut() else {
                        return Poll::Ready(());
                    };
                    let protocol = match ready!(guard.poll_protocol(cx)) {
                        Ok(protocol) => protocol,
                        Err(e) => return ended_with(this.peer, &e),
                    };
                    let Some((io, service, requests)) = start.take() else {
                        return Poll::Ready(());
                    };
                    this.stage.set(match protocol {
                        front::Protocol::Http1 => {
                            let handle =
                                move |req: Request<()>| requests.handle(req.map(|()| None));
                            Stage::Own {
                                served: Box::pin(front::h1::serve(io, handle, this.token.clone())),
                                service: Some(service),
                            }
                        }
                        front::Protocol::Http2 => Stage::Http2 {
                            conn: this.http.h2.serve_connection(TokioIo::new(io), service),
                        },
                    });
                }
                StageProj::Own { served, service } => match ready!(served.as_mut().poll(cx)) {
                    front::h1::Ended::Closed => return Poll::Ready(()),
                    front::h1::Ended::HandOver(io) => {
                        let Some(service) = service.take() else {
                            return Poll::Ready(());
                        };
                        let io = TokioIo::new(io);
                        this.stage.set(Stage::Http1 {
                            conn: this.http.h1.serve_connection(io, service).with_upgrades(),
                        });
                        if this.token.is_cancelled()
                            && let StageProj::Http1 { conn } = this.stage.as_mut().project()
                        {
                            *this.draining = true;
                            conn.graceful_shutdown();
                        }
                    }
                },
                StageProj::Http1 { conn } => break ready!(conn.poll(cx)),
                StageProj::Http2 { conn } => break ready!(conn.poll(cx)),
            }
        };
        match ended {
            Ok(()) => Poll::Ready(()),
            Err(e) => ended_with(this.peer, &e),
        }
    }
}

/// A connection that ended with an error (the client's, usually).
fn ended_with(peer: &SocketAddr, e: &dyn std::fmt::Display) -> Poll<()> {
    tracing::debug!(%peer, "client connection ended with error: {e}");
    Poll::Ready(())
}
