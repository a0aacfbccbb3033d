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
//! Idle connections the backend closed are skipped at checkout (hyper's
//! task notices the close; for the own client, the event loop's readiness
//! says so without a system call); ones idle longer than `idle-timeout`
//! are dropped at checkout and by [`ConnPool::sweep`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
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
    /// The sending half of a hyper client connection.
    Hyper(http1::SendRequest<ClientBody>),
}

/// What an idle connection can do for a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Take a request.
    Ready,
    /// Nothing now (a response just ended, or the connection belongs to
    /// another worker's event loop); may later.
    Busy,
    /// Nothing ever: the backend closed it.
    Closed,
}

impl Sender {
    fn state(&self) -> State {
        match self {
            Sender::H1(conn) if !conn.usable_here() => State::Busy,
            Sender::H1(conn) if conn.is_closed() => State::Closed,
            Sender::H1(_) => State::Ready,
            Sender::Hyper(sender) if sender.is_closed() => State::Closed,
            Sender::Hyper(sender) if sender.is_ready() => State::Ready,
            Sender::Hyper(_) => State::Busy,
        }
    }

    /// Whether the backend closed it, as far as can be told from any
    /// thread (the own client's connections are checked at checkout).
    fn closed_anywhere(&self) -> bool {
        match self {
            Sender::H1(conn) => conn.usable_here() && conn.is_closed(),
            Sender::Hyper(sender) => sender.is_closed(),
        }
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

/// Hands `stream` (a new or idle connection) to hyper's client.
pub async fn handshake(stream: TcpStream) -> Result<http1::SendRequest<ClientBody>, ConnectError> {
    let addr = stream.peer_addr().ok();
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
    Ok(sender)
}
