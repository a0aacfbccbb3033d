//! One connection to the target, as a worker holds it: TCP, TLS on top for
//! `https://`, and HTTP/1.1 or (`--h2`) HTTP/2 over that, behind one
//! [`Sender`] and one [`Driver`] whatever the combination. Also the words
//! for what went wrong ("connection refused", "TLS handshake failed: ...")
//! that the report counts failures under.

use std::{
    error::Error as StdError,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream, rustls};

use crate::{
    report::{Failure, Reason},
    tls::ALPN_H2,
};

/// The request body: requests carry none.
pub(crate) type Body = Empty<Bytes>;

/// How to reach the target, shared by all workers.
pub(crate) struct Connector {
    /// The target's addresses, tried in turn from `preferred`.
    addrs: Vec<SocketAddr>,
    /// Index in `addrs` of the address that last accepted a connection.
    preferred: AtomicUsize,
    /// TLS client and the name to verify, for `https://`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Speak HTTP/2 rather than HTTP/1.1.
    http2: bool,
}

impl Connector {
    pub(crate) fn new(
        addrs: Vec<SocketAddr>,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        http2: bool,
    ) -> Self {
        Self {
            addrs,
            preferred: AtomicUsize::new(0),
            tls: tls.map(|(config, name)| (TlsConnector::from(config), name)),
            http2,
        }
    }

    /// A new connection, ready for a request.
    pub(crate) async fn open(&self) -> Result<(Sender, Driver), Failure> {
        let tcp = self.tcp().await?;
        let stream = match &self.tls {
            None => Stream::Tcp(tcp),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Failure::Connect(self.handshake_failure(&e)))?;
                if self.http2 && tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
                    return Err(Failure::Connect(Reason::Borrowed(NO_H2)));
                }
                Stream::Tls(Box::new(tls))
            }
        };
        let io = TokioIo::new(stream);
        let connect = |e: hyper::Error| Failure::Connect(describe(&e));
        if self.http2 {
            let (sender, driver) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(connect)?;
            Ok((Sender::Http2(sender), Driver::Http2(Box::pin(driver))))
        } else {
            let (sender, driver) = http1::handshake(io).await.map_err(connect)?;
            Ok((Sender::Http1(sender), Driver::Http1(driver)))
        }
    }

    /// A TCP connection to the first address that accepts, starting with
    /// the one that accepted last.
    async fn tcp(&self) -> Result<TcpStream, Failure> {
        let first = self.preferred.load(Ordering::Relaxed);
        let candidates = self
            .addrs
            .iter()
            .enumerate()
            .cycle()
            .skip(first)
            .take(self.addrs.len());
        let mut failure = Reason::Borrowed("no address to connect to");
        for (index, addr) in candidates {
            let stream = match TcpStream::connect(addr).await {
                Ok(stream) => stream,
                Err(error) => {
                    failure = describe_io(&error);
                    continue;
                }
            };
            if index != first {
                self.preferred.store(index, Ordering::Relaxed);
            }
            // Small requests and responses: do not let Nagle hold them back.
            stream
                .set_nodelay(true)
                .map_err(|e| Failure::Connect(describe_io(&e)))?;
            return Ok(stream);
        }
        Err(Failure::Connect(failure))
    }
}

/// The request half of a connection.
pub(crate) enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Sender {
    /// Waits until the connection can take a request.
    pub(crate) async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Self::Http1(sender) => sender.ready().await,
            Self::Http2(sender) => sender.ready().await,
        }
    }

    /// Sends `request`; the response comes back with its body still to read.
    pub(crate) async fn send(
        &mut self,
        request: Request<Body>,
    ) -> hyper::Result<Response<Incoming>> {
        match self {
            Self::Http1(sender) => sender.send_request(request).await,
            Self::Http2(sender) => sender.send_request(request).await,
        }
    }
}

/// The I/O half of a connection: a future that completes when the
/// connection ends. Polled by the worker that owns the connection.
#[expect(
    clippy::large_enum_variant,
    reason = "HTTP/1.1 is the common case: kept inline, as before HTTP/2 came along"
)]
pub(crate) enum Driver {
    Http1(http1::Connection<TokioIo<Stream>, Body>),
    Http2(Pin<Box<http2::Connection<TokioIo<Stream>, Body, TokioExecutor>>>),
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // How it ended does not matter: the request waiting on it fails.
        match self.get_mut() {
            Self::Http1(conn) => Pin::new(conn).poll(cx).map(drop),
            Self::Http2(conn) => conn.as_mut().poll(cx).map(drop),
        }
    }
}

/// The byte stream under HTTP: plain TCP or TLS over TCP.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

/// The failure of a TLS connection whose server will not speak HTTP/2.
const NO_H2: &str = "the server did not agree to HTTP/2 (ALPN h2); leave out --h2 for HTTP/1.1";

impl Connector {
    /// Why a TLS handshake failed, e.g. `TLS handshake failed: invalid
    /// peer certificate: UnknownIssuer`.
    fn handshake_failure(&self, error: &io::Error) -> Reason {
        match tls_error(error) {
            // A server may refuse outright to speak none of the protocols
            // offered, rather than pick none.
            Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol))
                if self.http2 =>
            {
                Reason::Borrowed(NO_H2)
            }
            // What a plain-HTTP server answers reads as garbage.
            Some(tls @ rustls::Error::InvalidMessage(_)) => Reason::Owned(format!(
                "TLS handshake failed: {tls} (not a TLS port? try http://)"
            )),
            Some(tls) => Reason::Owned(format!("TLS handshake failed: {tls}")),
            None => Reason::Owned(format!("TLS handshake failed: {}", describe_io(error))),
        }
    }
}

/// The rustls error an I/O error carries, if any.
fn tls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// What an I/O error means for a request, in a few words.
pub(crate) fn describe_io(error: &io::Error) -> Reason {
    use io::ErrorKind::*;
    if let Some(tls) = tls_error(error) {
        return Reason::Owned(format!("TLS: {tls}"));
    }
    Reason::Borrowed(match error.kind() {
        ConnectionRefused => "connection refused",
        ConnectionReset => "connection reset",
        ConnectionAborted => "connection aborted",
        BrokenPipe => "connection closed while sending",
        UnexpectedEof => "connection closed",
        HostUnreachable => "host unreachable",
        NetworkUnreachable => "network unreachable",
        AddrNotAvailable => "address not available",
        TimedOut => "connect timed out",
        _ => return Reason::Owned(error.to_string()),
    })
}

/// What a hyper error means for a request, in a few words: the I/O error
/// underneath if there is one ("connection reset"), else hyper's own words
/// and their causes.
pub(crate) fn describe(error: &hyper::Error) -> Reason {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return describe_io(io);
        }
        source = cause.source();
    }
    if error.is_incomplete_message() {
        return Reason::Borrowed("connection closed before the response was complete");
    }
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_parse() {
        // What an HTTP/1.1 client reads from a server that speaks HTTP/2
        // only, or TLS.
        text.push_str(
            ": not an HTTP/1.1 response (for a server that speaks only HTTP/2 try --h2, for a TLS port try https://)",
        );
    }
    Reason::Owned(text)
}
