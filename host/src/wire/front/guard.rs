//! The I/O half of the strict front: a client connection as hyper reads it,
//! with every byte first followed by a [`Framer`], and the client timeouts.
//!
//! - A refused head is replaced by a stand-in head (hyper never sees the
//!   original); the service answers it with [`Conn::refusal`] and closes.
//! - A refused body (bad chunk, over the size limit, silent too long) ends
//!   with a read error, so hyper fails the body; the proxy answers with the
//!   refusal if no response has started and drops the upstream connection.
//! - `client.header-timeout` runs from a head's first byte to its end (408);
//!   `client.body-timeout` is the longest silence inside a body (408);
//!   `client.keepalive-timeout` closes a connection with nothing in flight
//!   and nothing arriving ([`Conn`] counts the responses in flight, so a
//!   slow response is never cut). On an HTTP/2 connection, whose frames
//!   hyper reads unchecked, only the keep-alive time is kept: it ends (at
//!   the end of the stream, without a GOAWAY) when no stream has been open
//!   and no frame has arrived for that long.
//! - `client.send-timeout` is the longest a write may wait for the client
//!   to read (nginx's `send_timeout`, also for an upgraded connection): the
//!   write then fails, hyper closes the connection and drops the response,
//!   and the response's backend connection is closed with it.
//!
//! Timers cost nothing while bytes flow: the read timer is only set when a
//! read finds nothing to do, the send timer when a write finds the socket
//! full.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker, ready};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::check::{Refusal, refuse};
use super::framer::{Framer, RefusedAt, Waiting};
use crate::base::config::ClientLimits;
use crate::wire::head::{CarriesFields, RawFields, RequestHead};

/// What hyper reads in place of a refused head: a request the service
/// recognises by [`Admitted::refusal`], never by its content.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nHost: refused.invalid\r\nConnection: close\r\n\r\n";

/// State one client connection shares between its [`Guard`] and the
/// requests served on it.
#[derive(Debug, Default)]
pub struct Conn {
    /// Requests begun on the connection (HTTP/1: in order).
    requests: AtomicU64,
    /// Requests whose response has not been sent yet.
    in_flight: AtomicU32,
    /// The refused request's number (counted like `requests`), and why.
    refusal: OnceLock<(u64, Refusal)>,
}

impl Conn {
    /// A request starts; its response holds the returned token.
    pub fn begin(self: &Arc<Self>) -> Admitted {
        let number = self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Admitted {
            conn: Arc::clone(self),
            number,
        }
    }

    /// With nothing in flight, the number of requests so far (the same
    /// mark later means the connection stayed idle in between).
    fn mark(&self) -> Option<u64> {
        (self.in_flight.load(Ordering::Relaxed) == 0).then(|| self.requests.load(Ordering::Relaxed))
    }
}

/// One request of a connection, until its response has been sent.
#[derive(Debug)]
pub struct Admitted {
    conn: Arc<Conn>,
    /// Its place on the connection: 0, 1, ...
    number: u64,
}

impl Admitted {
    /// Why the front refused this request (its head, then served as a
    /// stand-in, or its body), if it did.
    pub fn refusal(&self) -> Option<Refusal> {
        match self.conn.refusal.get() {
            Some(&(number, refusal)) if number == self.number => Some(refusal),
            _ => None,
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// A response body that keeps its request counted in flight on its
    /// connection until hyper is done with it.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        in_flight: Admitted,
    }
}

impl<B> Tracked<B> {
    /// `inner`, counted until dropped.
    pub fn new(inner: B, in_flight: Admitted) -> Self {
        Self { inner, in_flight }
    }
}

impl<B: CarriesFields> CarriesFields for Tracked<B> {
    fn take_raw_fields(&mut self) -> Option<RawFields> {
        self.inner.take_raw_fields()
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What comes after the bytes queued for hyper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Read,
    /// End of stream: hyper closes an idle connection.
    Eof,
    /// Nothing more, ever: hyper answers the stand-in (which asks to close)
    /// and closes. (An end of stream would make hyper drop the connection
    /// before answering.)
    Hold,
    Fail(io::ErrorKind),
}

/// Largest first read of a connection (hyper's first read is as large).
const FIRST_READ: usize = 8 * 1024;

/// The protocol a client connection speaks, as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x (also a connection closed or refused before it said).
    Http1,
    /// HTTP/2 with prior knowledge (or ALPN `h2`): it opened with the
    /// connection preface.
    Http2,
}

/// A client connection read through the strict front.
#[derive(Debug)]
pub struct Guard<I> {
    io: I,
    conn: Arc<Conn>,
    framer: Framer,
    limits: ClientLimits,
    /// Checked bytes waiting for hyper (a head completed across reads, or
    /// the stand-in head), and what follows them.
    queued: Bytes,
    then: Then,
    /// When the head being read started.
    head_since: Option<Instant>,
    /// When the current silence started (body, keep-alive).
    quiet_since: Option<Instant>,
    /// [`Conn::mark`] when the keep-alive wait began.
    idle_mark: Option<u64>,
    timer: Option<Timer>,
    /// When writes began to wait for the client to read.
    blocked_since: Option<Instant>,
    send_timer: Option<Timer>,
    /// Whether the bytes the last read returned start with the framer's
    /// first head ([`Framer::with_first_head`]).
    placed: bool,
}

impl<I> Guard<I> {
    /// Guards `io`, sharing `conn` with the requests served on it.
    pub fn new(io: I, conn: Arc<Conn>, limits: ClientLimits) -> Self {
        Self {
            io,
            conn,
            framer: Framer::new(limits.max_body_size),
            limits,
            queued: Bytes::new(),
            then: Then::Read,
            head_since: None,
            quiet_since: None,
            idle_mark: None,
            timer: None,
            blocked_since: None,
            send_timer: None,
            placed: false,
        }
    }

    /// Runs `f` with where the parts of the head the last read's bytes
    /// start with lie in them, as the framer parsed it (checked), if they
    /// start with a whole head: the own server then builds its request
    /// without parsing again. Once per read.
    pub fn with_head_places<R>(&mut self, mut f: impl FnMut(Option<&RequestHead>) -> R) -> R {
        if std::mem::take(&mut self.placed) {
            self.framer.with_first_head(f)
        } else {
            f(None)
        }
    }

    /// Refuses the stream: a head is answered through the stand-in, a body
    /// fails.
    fn refuse(&mut self, refusal: Refusal, at: RefusedAt, queued: Vec<u8>) {
        // The stand-in comes after every head passed so far; a body belongs
        // to the last of them.
        let heads = self.framer.heads();
        let number = match at {
            RefusedAt::Head => heads,
            RefusedAt::Body => heads.saturating_sub(1),
        };
        let _ = self.conn.refusal.set((number, refusal));
        let mut queued = queued;
        self.then = match at {
            RefusedAt::Head => {
                queued.extend_from_slice(STAND_IN);
                Then::Hold
            }
            RefusedAt::Body => Then::Fail(if refusal.status.as_u16() == 408 {
                io::ErrorKind::TimedOut
            } else {
                io::ErrorKind::InvalidData
            }),
        };
        self.queued = Bytes::from(queued);
    }

    /// Nothing to read: runs the timeout that applies. `Ready` when it
    /// expired and the stream has been refused or ended.
    fn poll_timeout(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let waiting = self.framer.waiting();
            let (limit, since) = match waiting {
                Waiting::Head => (
                    self.limits.header_timeout,
                    *self.head_since.get_or_insert_with(Instant::now),
                ),
                Waiting::Body => (
                    self.limits.body_timeout,
                    *self.quiet_since.get_or_insert_with(Instant::now),
                ),
                // A new connection gets as long for its first bytes as for
                // a head.
                Waiting::Idle if self.framer.is_fresh() => (
                    self.limits.header_timeout,
                    *self.quiet_since.get_or_insert_with(Instant::now),
                ),
                Waiting::Idle => {
                    if self.quiet_since.is_none() {
                        self.idle_mark = self.conn.mark();
                    }
                    (
                        self.limits.keepalive_timeout,
                        *self.quiet_since.get_or_insert_with(Instant::now),
                    )
                }
                Waiting::Nothing => return Poll::Pending,
            };
            ready!(Timer::poll_until(&mut self.timer, since + limit, cx));
            match waiting {
                Waiting::Head => self.refuse(
                    refuse(
                        http::StatusCode::REQUEST_TIMEOUT,
                        "request head not received within client.header-timeout",
                    ),
                    RefusedAt::Head,
                    Vec::new(),
                ),
                Waiting::Body => self.refuse(
                    refuse(
                        http::StatusCode::REQUEST_TIMEOUT,
                        "request body stalled for client.body-timeout",
                    ),
                    RefusedAt::Body,
                    Vec::new(),
                ),
                // Idle the whole time (nothing in flight when the wait
                // began, no request since): end it quietly, as nginx does.
                // Otherwise a response was still on its way: the idle time
                // starts now.
                Waiting::Idle
                    if self.framer.is_fresh()
                        || self.conn.mark().is_some_and(|m| Some(m) == self.idle_mark) =>
                {
                    self.then = Then::Eof;
                }
                Waiting::Idle => {
                    self.quiet_since = None;
                    continue;
                }
                Waiting::Nothing => unreachable!("no timer runs then"),
            }
            self.timer = None;
            return Poll::Ready(());
        }
    }
}

/// A connection's reusable timer. Every request moves the keep-alive
/// deadline later, and resetting and polling a tokio `Sleep` each time
/// showed in the instructions per request; so a later deadline is
/// only applied when the earlier one set goes off, and the timer is not
/// polled again while it is registered with the same task.
#[derive(Debug)]
struct Timer {
    sleep: Pin<Box<Sleep>>,
    /// The waker the armed `sleep` will wake.
    armed_for: Option<Waker>,
}

impl Timer {
    /// Ready once `deadline` has passed; otherwise makes sure the task is
    /// woken at or before it. Made the first time it is needed.
    fn poll_until(timer: &mut Option<Timer>, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let t = timer.get_or_insert_with(|| Timer {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed_for: None,
        });
        // Twice at most: once for an earlier deadline that went off, once
        // for `deadline` (tokio's timer goes off at or after the deadline,
        // so a second pass finds it passed).
        for _ in 0..2 {
            if t.sleep.deadline() > deadline || t.sleep.is_elapsed() {
                t.sleep.as_mut().reset(deadline);
                t.armed_for = None;
            } else if t
                .armed_for
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                // Goes off at or before `deadline`, and wakes this task.
                return Poll::Pending;
            }
            // Outside tokio's task budget: a `Sleep` polled by a task that has
            // used its budget (a body read in a loop) answers Pending without
            // registering, and the check above would then trust a timer that
            // never goes off.
            match Pin::new(&mut tokio::task::coop::unconstrained(t.sleep.as_mut())).poll(cx) {
                Poll::Pending => {
                    t.armed_for = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(()) if Instant::now() >= deadline => {
                    t.armed_for = None;
                    return Poll::Ready(());
                }
                // An earlier deadline went off: the loop sets this one.
                Poll::Ready(()) => {}
            }
        }
        t.armed_for = None;
        Poll::Ready(())
    }
}

impl<I> Guard<I> {
    /// Gives `read` back: the next reads return it first (before anything
    /// given back earlier). For bytes read through this guard (and so
    /// already checked), when the server that read them hands the
    /// connection to another.
    pub fn unread(&mut self, read: Bytes) {
        if self.queued.is_empty() {
            self.queued = read;
        } else if !read.is_empty() {
            let mut all = BytesMut::with_capacity(read.len() + self.queued.len());
            all.put_slice(&read);
            all.put_slice(&self.queued);
            self.queued = all.freeze();
        }
    }
}

impl<I: AsyncRead + Unpin> Guard<I> {
    /// Reads until the first bytes tell which protocol the connection
    /// speaks, and keeps them for the server that reads it next.
    ///
    /// hyper-util's automatic server reads the first 24 bytes itself and
    /// hands them to hyper alone: hyper then receives a head in two reads
    /// and grows its read buffer from 8 to 16 KiB, copying it, for the
    /// connection's whole life (more resident memory per idle client).
    /// Here the whole first head reaches hyper in its first read.
    pub fn poll_protocol(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Protocol>> {
        if self.framer.is_undecided() && self.queued.is_empty() && self.then == Then::Read {
            // The framer decides on the first bytes (a partial preface is
            // held back until it is complete or broken), so one read that
            // returns anything decides. As large as hyper's first read, so
            // that a head arriving at once is read from the socket at once.
            let mut first = [MaybeUninit::<u8>::uninit(); FIRST_READ];
            let mut buf = ReadBuf::uninit(&mut first);
            ready!(Pin::new(&mut *self).poll_read(cx, &mut buf))?;
            let read = buf.filled();
            if !read.is_empty() {
                let mut all = BytesMut::with_capacity(read.len() + self.queued.len());
                all.put_slice(read);
                all.put_slice(&self.queued);
                self.queued = all.freeze();
            }
        }
        Poll::Ready(Ok(if self.framer.is_http2() {
            Protocol::Http2
        } else {
            Protocol::Http1
        }))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guard<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.placed = false;
        loop {
            if !this.queued.is_empty() {
                let n = this.queued.len().min(buf.remaining());
                buf.put_slice(&this.queued.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match this.then {
                Then::Read => {}
                Then::Eof => return Poll::Ready(Ok(())),
                Then::Hold => return Poll::Pending,
                Then::Fail(kind) => {
                    return Poll::Ready(Err(io::Error::new(kind, "request refused by the front")));
                }
            }
            if this.framer.is_passthrough() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let start = buf.filled().len();
            match Pin::new(&mut this.io).poll_read(cx, buf) {
                Poll::Pending => {
                    ready!(this.poll_timeout(cx));
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let n = buf.filled().len() - start;
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            this.quiet_since = None;
            if this.framer.is_http2() {
                return Poll::Ready(Ok(()));
            }
            let was_head = this.framer.waiting() == Waiting::Head;
            let fed = this.framer.feed(&buf.filled()[start..]);
            match this.framer.waiting() {
                Waiting::Head if !was_head || fed.released.is_some() => {
                    this.head_since = Some(Instant::now());
                }
                Waiting::Head => {}
                _ => this.head_since = None,
            }
            if fed.is_whole(n) {
                this.placed = start == 0;
                return Poll::Ready(Ok(()));
            }
            let pass = start + fed.pass.start..start + fed.pass.end;
            if fed.released.is_none() && fed.pass.start == 0 && fed.refused.is_none() {
                // Only a trailing partial head is held back.
                buf.set_filled(pass.end);
                if pass.end > start {
                    this.placed = start == 0;
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut queued = fed.released.unwrap_or_default();
            queued.extend_from_slice(&buf.filled()[pass]);
            buf.set_filled(start);
            match fed.refused {
                Some((refusal, at)) => this.refuse(refusal, at, queued),
                None => this.queued = Bytes::from(queued),
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> Guard<I> {
    /// Runs one write-side operation on the client's stream, timing how
    /// long the client leaves it waiting (`client.send-timeout`, from the
    /// first operation that had to wait since the last one that did not).
    fn sending<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut I>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let polled = op(Pin::new(&mut self.io), cx);
        if polled.is_ready() {
            self.blocked_since = None;
            return polled;
        }
        let since = *self.blocked_since.get_or_insert_with(Instant::now);
        ready!(Timer::poll_until(
            &mut self.send_timer,
            since + self.limits.send_timeout,
            cx
        ));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read for client.send-timeout",
        )))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().sending(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .sending(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().sending(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().sending(cx, |io, cx| io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    /// A guarded connection whose client writes `pieces`, pausing between
    /// them so that each arrives in a read of its own, then goes silent.
    async fn opened_with(pieces: &[&'static [u8]]) -> (Guard<DuplexStream>, Protocol) {
        let (server, mut client) = duplex(1 << 16);
        let mut guard = Guard::new(server, Arc::default(), ClientLimits::default());
        let pieces = pieces.to_vec();
        tokio::spawn(async move {
            for piece in pieces {
                client.write_all(piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Keep the stream open: an end of stream is a case of its own.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let protocol = protocol_of(&mut guard).await;
        (guard, protocol)
    }

    /// What `guard`'s first bytes say.
    async fn protocol_of<I: AsyncRead + Unpin>(guard: &mut Guard<I>) -> Protocol {
        poll_fn(|cx| guard.poll_protocol(cx))
            .await
            .expect("protocol")
    }

    /// A request head of a little more than `cookie` bytes.
    fn long_head(cookie: usize) -> &'static [u8] {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: example\r\nCookie: {}\r\n\r\n",
            "c".repeat(cookie)
        );
        head.into_bytes().leak()
    }

    /// A stream that counts the reads that returned bytes.
    struct Counted {
        inner: DuplexStream,
        reads: Arc<AtomicU32>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            if buf.filled().len() > before {
                self.reads.fetch_add(1, Ordering::Relaxed);
            }
            polled
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// What one read of an 8 KiB buffer (hyper's first) gets.
    async fn first_read<I: AsyncRead + Unpin>(guard: &mut Guard<I>) -> Vec<u8> {
        let mut buf = vec![0; 8192];
        let n = guard.read(&mut buf).await.expect("read");
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn a_timer_armed_by_a_task_out_of_budget_still_goes_off() {
        // The task spends its budget on every poll, as a response body read
        // from a socket in a loop does, before it arms the timer.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..1_000 {
            tx.send(i).expect("send");
        }
        let mut timer = None;
        let deadline = Instant::now() + Duration::from_millis(50);
        let fired = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| {
                while let Poll::Ready(Some(_)) = rx.poll_recv(cx) {}
                Timer::poll_until(&mut timer, deadline, cx)
            }),
        )
        .await;
        assert!(fired.is_ok(), "the timer never woke the task");
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test]
    async fn an_http1_head_split_across_reads_reaches_the_server_whole_in_one_read() {
        let head: &[u8] = b"GET /a HTTP/1.1\r\nHost: example\r\nUser-Agent: test\r\n\r\n";
        let (mut guard, protocol) = opened_with(&[&head[..2], &head[2..30], &head[30..]]).await;
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(first_read(&mut guard).await, head);
    }

    #[tokio::test]
    async fn a_read_that_starts_with_a_whole_head_comes_with_its_places() {
        let pieces: [&'static [u8]; 4] = [
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /2 HTTP/1.1\r\nHost: b\r\nX-Y: z\r\n\r\nGET /3 HTTP/1.1\r\nHost: c\r\n\r\n",
            b"GET /4 HTTP/1.1\r\nHo",
            b"st: d\r\n\r\n",
        ];
        let (mut guard, _) = opened_with(&pieces).await;
        let read = async |guard: &mut Guard<DuplexStream>| {
            let mut buf = BytesMut::new();
            guard.read_buf(&mut buf).await.expect("read");
            let places = guard.with_head_places(|h| {
                h.map(|h| {
                    let fields: Vec<_> = h
                        .pairs(&buf)
                        .map(|(n, v)| {
                            format!(
                                "{}={}",
                                String::from_utf8_lossy(n),
                                String::from_utf8_lossy(v)
                            )
                        })
                        .collect();
                    let target = String::from_utf8_lossy(h.target.part(&buf)).into_owned();
                    (h.len, target, fields)
                })
            });
            (buf, places)
        };
        // The first head came with the bytes that told the protocol.
        let (buf, places) = read(&mut guard).await;
        assert_eq!(&buf[..], pieces[0]);
        assert_eq!(places, None);
        // Two heads: the places of the first.
        let (buf, places) = read(&mut guard).await;
        assert_eq!(&buf[..], pieces[1]);
        let len = pieces[1].len() - "GET /3 HTTP/1.1\r\nHost: c\r\n\r\n".len();
        assert_eq!(
            places,
            Some((
                len,
                "/2".to_owned(),
                vec!["Host=b".to_owned(), "X-Y=z".to_owned()]
            ))
        );
        // A head split across reads is given whole, from the framer's
        // copy: no places.
        let (buf, places) = read(&mut guard).await;
        assert_eq!(&buf[..], b"GET /4 HTTP/1.1\r\nHost: d\r\n\r\n");
        assert_eq!(places, None);
    }

    #[tokio::test]
    async fn a_head_sent_at_once_is_read_from_the_socket_once() {
        let head = long_head(3000);
        let (server, mut client) = duplex(1 << 16);
        client.write_all(head).await.expect("write");
        let reads = Arc::new(AtomicU32::new(0));
        let counted = Counted {
            inner: server,
            reads: Arc::clone(&reads),
        };
        let mut guard = Guard::new(counted, Arc::default(), ClientLimits::default());
        assert_eq!(protocol_of(&mut guard).await, Protocol::Http1);
        assert_eq!(
            reads.load(Ordering::Relaxed),
            1,
            "socket reads for the first head"
        );
        assert_eq!(first_read(&mut guard).await, head);
        drop(client);
    }

    #[tokio::test]
    async fn a_head_longer_than_the_first_read_is_not_cut() {
        let head = long_head(20_000);
        let (mut guard, protocol) = opened_with(&[head]).await;
        assert_eq!(protocol, Protocol::Http1);
        let mut got = Vec::new();
        while got.len() < head.len() {
            let more = first_read(&mut guard).await;
            assert!(!more.is_empty(), "ended after {} bytes", got.len());
            got.extend(more);
        }
        assert_eq!(got, head);
    }

    #[tokio::test]
    async fn the_http2_preface_in_pieces_is_http2_and_nothing_is_lost() {
        let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let settings: &[u8] = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        let (mut guard, protocol) = opened_with(&[&preface[..5], &preface[5..], settings]).await;
        assert_eq!(protocol, Protocol::Http2);
        let mut got = first_read(&mut guard).await;
        while got.len() < preface.len() + settings.len() {
            got.extend(first_read(&mut guard).await);
        }
        assert_eq!(got, [preface, settings].concat());
    }

    #[tokio::test]
    async fn a_connection_closed_before_a_byte_is_http1_at_its_end() {
        let (server, client) = duplex(64);
        drop(client);
        let mut guard = Guard::new(server, Arc::default(), ClientLimits::default());
        assert_eq!(protocol_of(&mut guard).await, Protocol::Http1);
        assert!(first_read(&mut guard).await.is_empty());
    }
}
