//! Keep-alive connections to one backend, kept idle between requests:
//! connections of Switchyard's own HTTP/1.1 client ([`crate::backend::h1`],
//! for requests without a body) and hyper's `client::conn` connections
//! (one task each; requests with a body, upgrades). A new connection starts
//! as the former; one that a request with a body checks out is handed to
//! hyper, and stays with hyper.
//!
//! Idle connections are kept per worker thread ([`crate::base::workers`]), like
//! nginx's `keepalive` per worker process: a connection's task runs on the
//! thread that opened it, so a request only reuses connections of its own
//! thread and never wakes the other core. `keepalive` (most idle) applies
//! per worker.
//!
//! A request checks a connection out (or opens one), sends on it and, when
//! the response body has been read to its end, checks it back in (see
//! [`crate::proxy::body::ProxyBody`]). A response abandoned half-way closes its
//! connection; nothing is reused in an unknown state.
//!
//! A request that never left (the pooled connection was already closing)
//! comes back intact and can go elsewhere, whatever its method and body
//! (hyper's `try_send_request`, or a write that failed at its first byte).
//! Ones idle longer than `idle-timeout` are dropped at checkout and by
//! [`ConnPool::sweep`].
//!
//! What is checked before an idle connection is reused:
//!
//! - at checkin and in [`ConnPool::sweep`], without a system call: for the
//!   own client, the event loop's readiness (a read only if it saw the
//!   socket become readable); for hyper's, whether its task has ended
//!   (it reads an idle connection, and ends it on EOF or on any byte);
//! - at checkout, of the connection about to be reused (and of any closed
//!   one skipped on the way), one non-blocking `recv(MSG_PEEK)` of a byte
//!   on its socket, whichever client it belongs to: a byte (a backend that
//!   wrote a body after a HEAD, 204 or 304 answer, or more than its
//!   `Content-Length`, a moment after the response) or the connection's
//!   end (FIN, reset) closes it, and the request takes another or a new
//!   one. The readiness and hyper's task only know what the event loop's
//!   last turn saw; bytes that came since (while the worker parsed the
//!   request and ran the strategy) would be read as the next request's
//!   response, often another client's. A reused connection costs this one
//!   system call; a new one none.
//!
//! Bytes that come after the check (the backend writes them as the request
//! goes out) cannot be told from the response to it, by this proxy or any
//! other that reuses connections.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use socket2::{SockRef, Socket};
use tokio::net::TcpStream;

use crate::backend::h1::H1Conn;
use crate::base::clock::{self, Instant};
use crate::wire::body::ClientBody;

/// One backend connection, as a request uses it.
#[derive(Debug)]
pub enum Sender {
    /// Driven by Switchyard's own client, by the request's task. Boxed:
    /// a connection moves with each request through the response and its
    /// body, and a pointer is cheaper to move than the socket and buffers.
    H1(Box<H1Conn>),
    /// The sending half of a hyper client connection, and its socket (a
    /// duplicate of the descriptor its task reads, for the check at
    /// checkout; see [`handshake`]).
    Hyper(http1::SendRequest<ClientBody>, Socket),
}

/// What an idle connection can do for a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Take a request.
    Ready,
    /// Nothing now (a response just ended, or the connection belongs to
    /// another worker's event loop); may later.
    Busy,
    /// Nothing ever: the backend closed it, or sent something unasked.
    Closed,
}

impl Sender {
    /// Its state at checkout: a connection that could take a request is
    /// looked at on its socket (one system call; see the module's doc).
    fn state(&self) -> State {
        match self {
            Sender::H1(conn) if !conn.usable_here() => State::Busy,
            Sender::H1(conn) => quiet(conn.socket()),
            Sender::Hyper(sender, _) if sender.is_closed() => State::Closed,
            Sender::Hyper(sender, socket) if sender.is_ready() => quiet(SockRef::from(socket)),
            Sender::Hyper(..) => State::Busy,
        }
    }

    /// Whether the backend closed it, as far as can be told from any
    /// thread (the own client's connections are checked at checkout).
    fn closed_anywhere(&self) -> bool {
        match self {
            Sender::H1(conn) => conn.usable_here() && conn.is_closed(),
            Sender::Hyper(sender, _) => sender.is_closed(),
        }
    }
}

/// Ready if nothing waits on an idle connection's socket; Closed if a byte
/// does (one the backend should not have sent) or its end (FIN, reset).
/// One non-blocking `recv(MSG_PEEK)` (the socket is non-blocking, as every
/// tokio socket): it sees what reached the socket up to now, not what the
/// event loop last saw.
fn quiet(socket: SockRef<'_>) -> State {
    let mut byte = [MaybeUninit::uninit()];
    match socket.peek(&mut byte) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => State::Ready,
        _ => State::Closed,
    }
}

/// How an upstream keeps its backend connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Budget for the TCP connect.
    pub connect_timeout: Duration,
    /// How long a connection may sit idle before it is closed.
    pub idle_timeout: Duration,
    /// Most idle connections kept per backend and worker thread; 0 closes
    /// every connection after its request.
    pub max_idle: usize,
}

/// A connection checked out for one request.
#[derive(Debug)]
pub struct Conn {
    /// Where the request is sent.
    pub sender: Sender,
    /// Whether it served an earlier request (a failure on a reused
    /// connection may be the backend closing it just as it was picked).
    pub reused: bool,
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

/// The idle connections of one backend.
#[derive(Debug)]
pub struct ConnPool {
    // One list per worker thread, and one for every other thread (health
    // checks and tests run there). Oldest at the front; checkout takes the
    // newest ready one (warm, and lets the oldest age out).
    idle: Box<[Mutex<VecDeque<Idle>>]>,
}

impl Default for ConnPool {
    fn default() -> Self {
        // Workers beyond the number of cores share lists (correct, only
        // slower for them).
        let lists = crate::base::config::default_workers() + 1;
        ConnPool {
            idle: (0..lists).map(|_| Mutex::default()).collect(),
        }
    }
}

/// Why no connection could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect did not finish within `connect-timeout`.
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    /// Refused, unreachable, reset.
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// hyper refused the connection (not expected for HTTP/1).
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

impl ConnPool {
    /// An idle connection that can take a request `now`, if there is one.
    /// Drops closed and timed-out connections on the way.
    pub fn checkout(&self, settings: &PoolSettings, now: Instant) -> Option<Conn> {
        let mut idle = self.local().lock().ok()?;
        while idle
            .front()
            .is_some_and(|c| now.duration_since(c.since) >= settings.idle_timeout)
        {
            idle.pop_front();
        }
        // A connection whose last response just ended may not be ready for
        // the next request yet; leave it for a later checkout.
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            match idle[i].sender.state() {
                State::Closed => {
                    idle.remove(i);
                }
                State::Ready => {
                    return idle.remove(i).map(|c| Conn {
                        sender: c.sender,
                        reused: true,
                    });
                }
                State::Busy => {}
            }
        }
        None
    }

    /// Returns a connection whose exchange ended cleanly.
    pub fn checkin(&self, sender: Sender, settings: &PoolSettings) {
        if settings.max_idle == 0 || sender.closed_anywhere() {
            return;
        }
        let Ok(mut idle) = self.local().lock() else {
            return;
        };
        if idle.len() >= settings.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle {
            sender,
            since: clock::now(),
        });
    }

    /// Closes connections idle for `idle_timeout` or more, and ones the
    /// backend closed.
    pub fn sweep(&self, idle_timeout: Duration) {
        let now = clock::now();
        for list in &self.idle {
            if let Ok(mut idle) = list.lock() {
                idle.retain(|c| {
                    now.duration_since(c.since) < idle_timeout && !c.sender.closed_anywhere()
                });
            }
        }
    }

    /// Idle connections held now, over all threads.
    pub fn idle(&self) -> usize {
        self.idle
            .iter()
            .map(|list| list.lock().map_or(0, |idle| idle.len()))
            .sum()
    }

    /// This thread's list.
    fn local(&self) -> &Mutex<VecDeque<Idle>> {
        let at = crate::base::workers::current().map_or(0, |w| w + 1) % self.idle.len();
        &self.idle[at]
    }
}

/// Opens a new connection to `addr`, for the own client.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::TimedOut(timeout))??;
    stream.set_nodelay(true)?;
    Ok(Conn {
        sender: Sender::H1(Box::new(H1Conn::new(stream))),
        reused: false,
    })
}

/// Hands `stream` (a new or idle connection) to hyper's client; returns
/// its sending half and a duplicate of its socket's descriptor (one `dup`
/// per connection), which the pool peeks at before each reuse. The
/// duplicate keeps the connection open until it is dropped too: it goes
/// with the sending half, in the pool or in the request using it (one
/// whose task ended is dropped at the next checkout or sweep).
pub async fn handshake(
    stream: TcpStream,
) -> Result<(http1::SendRequest<ClientBody>, Socket), ConnectError> {
    let addr = stream.peer_addr().ok();
    let socket = SockRef::from(&stream).try_clone()?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        // Ends when the connection closes; errors reach the request that
        // was on it, so there is nothing more to say here.
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(?addr, "backend connection ended: {e}");
        }
    });
    Ok((sender, socket))
}
