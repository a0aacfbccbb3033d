//! Switchyard's own HTTP/1.1 client for the common exchange: a request with
//! no body and no upgrade, sent on a kept-alive backend connection, its
//! response streamed back from the connection's read buffer.
//!
//! hyper's client runs each connection as a task of its own, fed through a
//! channel, and turns the response head into a `HeaderMap` and back; under
//! load that was about a third of the proxy's instructions per request
//! (callgrind, session 9). This client does what nginx's upstream module
//! does: the request's task writes the head in one `write`, reads the
//! response into the connection's buffer and parses it once (`httparse`);
//! the head's field lines go on to the client as they came, minus the
//! hop-by-hop ones ([`RawFields`]), and body bytes are slices of that
//! buffer, not copies.
//! Requests with a body, and upgrades (WebSocket), still go through hyper's
//! client (see [`crate::proxy::exchange`]): the body may have to be streamed while
//! the response arrives, and an upgraded connection is handed to a tunnel.
//!
//! The response's framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204
//! and 304; `Transfer-Encoding` ending in `chunked` is decoded (trailers
//! included); otherwise `Content-Length` (several must agree); otherwise
//! the body runs until the backend closes. Interim responses (100, 103) are
//! skipped. A connection goes back to the pool only after a response read
//! to its exact end, on HTTP/1.1 without `Connection: close`, with no stray
//! byte after it in its buffer; bytes that come later are looked for on the
//! socket (one `recv(MSG_PEEK)`) when the pool hands the connection to its
//! next request, and close it (see [`crate::backend::pool`]). While the body is
//! read, each wait on the backend is bounded by the upstream's
//! `read-timeout`, kept by whoever holds the body
//! ([`crate::backend::Lease::poll_silence`]): past it the connection is
//! closed, the body fails and the backend is counted as failed.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::base::workers;
use crate::wire::head::{CarriesFields, Field, INLINE_FIELDS, MAX_HEADERS, Place, RawFields};
use crate::wire::{forwarded, front};
/// Largest response head, and largest trailer section.
pub const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (extensions included).
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 8 * 1024;

/// One backend connection driven by this client.
#[derive(Debug)]
pub struct H1Conn {
    stream: TcpStream,
    /// Bytes read and not used yet.
    buf: BytesMut,
    /// The request head being written (kept for its allocation).
    head: Vec<u8>,
    /// The worker whose event loop the socket is registered with; the
    /// connection is only used there.
    owner: Option<usize>,
}

impl H1Conn {
    /// A connection over `stream`, opened on this thread.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            head: Vec::new(),
            owner: workers::current(),
        }
    }

    /// Whether this thread may use the connection (its socket belongs to
    /// this thread's event loop).
    pub fn usable_here(&self) -> bool {
        self.owner == workers::current()
    }

    /// Whether the backend closed the idle connection (or sent something
    /// unasked, which makes it unusable too), as far as the event loop has
    /// seen: no system call unless it saw the socket become readable. For
    /// checkin and the pool's sweep; checkout looks at the socket itself
    /// (see [`crate::backend::pool`]).
    pub fn is_closed(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                !matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// The socket, for the pool's check before the connection is reused.
    pub fn socket(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(&self.stream)
    }

    /// The socket, for hyper's client (a request this client does not
    /// take). Only an idle connection, with nothing buffered, is handed
    /// over.
    pub fn into_stream(self) -> TcpStream {
        debug_assert!(
            self.buf.is_empty(),
            "an idle connection has nothing buffered"
        );
        self.stream
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }
}

/// Whether this client takes a request: no body and not an upgrade.
pub fn handles<B: http_body::Body>(request: &Request<B>, upgrade: bool) -> bool {
    !upgrade && request.body().is_end_stream()
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the request failed before its first byte left: the request
    /// did not reach the backend.
    #[error("the connection failed before the request was written: {0}")]
    Unsent(io::Error),
    /// Writing the request failed part way.
    #[error("writing the request failed: {0}")]
    Write(io::Error),
    /// The connection ended (closed or reset) before any byte of a
    /// response.
    #[error("the backend closed the connection before responding: {0}")]
    NoResponse(io::Error),
    /// The connection failed in the middle of the response head.
    #[error("the connection failed in the response head: {0}")]
    Head(io::Error),
    /// The response head is not HTTP/1.x.
    #[error("invalid response head: {0}")]
    Invalid(&'static str),
    /// The response head is larger than [`MAX_HEAD`] or has more than 100
    /// fields.
    #[error("response head too large (more than {MAX_HEAD} bytes or 100 fields)")]
    TooLarge,
    /// The connection failed or closed before the body's end.
    #[error("the backend connection failed in the response body: {0}")]
    Body(io::Error),
    /// The chunked body is not valid.
    #[error("invalid chunked response body: {0}")]
    Chunked(&'static str),
}

impl Error {
    /// Whether nothing at all came back: on a reused connection, most
    /// likely the backend closing it as the request went out.
    pub fn no_response(&self) -> bool {
        matches!(self, Error::NoResponse(_))
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")
}

/// Sends `request` (its head only: it has no body) on `conn` and reads the
/// response head. The body streams from the returned response; once it
/// ends it hands its connection back if reusable ([`H1Body::take_end`]).
pub async fn send<B>(
    mut conn: Box<H1Conn>,
    request: &Request<B>,
) -> Result<Response<H1Body>, Error> {
    write_head(&mut conn.head, request);
    let mut written = 0;
    while written < conn.head.len() {
        match conn.stream.write(&conn.head[written..]).await {
            Ok(0) => return Err(Error::Write(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if written == 0 => return Err(Error::Unsent(e)),
            Err(e) => return Err(Error::Write(e)),
        }
    }
    let head_only = request.method() == http::Method::HEAD;
    let mut answered = false;
    loop {
        if !conn.buf.is_empty() {
            answered = true;
            match take_head(&mut conn.buf, head_only)? {
                Some(Head::Interim) => continue,
                Some(Head::Final(head)) => {
                    let mut body = H1Body {
                        conn: Some(conn),
                        framing: head.framing,
                        keep_alive: head.keep_alive,
                        stripped: head.stripped,
                        raw: head.raw,
                        end: None,
                        heard: false,
                    };
                    if body.framing == Framing::Length(0) {
                        // No body: the exchange is over already.
                        body.finish();
                    }
                    return Ok(Response::from_parts(head.parts, body));
                }
                None if conn.buf.len() >= MAX_HEAD => return Err(Error::TooLarge),
                None => {}
            }
        }
        match poll_fn(|cx| conn.poll_fill(cx)).await {
            Ok(0) if answered => return Err(Error::Head(closed())),
            Ok(0) => return Err(Error::NoResponse(closed())),
            Ok(_) => {}
            Err(e) if answered => return Err(Error::Head(e)),
            Err(e) => return Err(Error::NoResponse(e)),
        }
    }
}

/// The request line and fields, as HTTP/1.1.
fn write_head<B>(head: &mut Vec<u8>, request: &Request<B>) {
    head.clear();
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// A response head taken from the buffer.
#[allow(
    clippy::large_enum_variant,
    reason = "made once per response and taken apart at once"
)]
enum Head {
    /// A 1xx other than 101, skipped.
    Interim,
    /// The response.
    Final(Final),
}

/// A final response head.
struct Final {
    parts: http::response::Parts,
    /// How its body is framed.
    framing: Framing,
    /// Whether the connection may carry another request after it.
    keep_alive: bool,
    /// Whether its hop-by-hop fields were left out.
    stripped: bool,
    /// Its fields, when they are passed on unparsed (`parts` has none).
    raw: Option<RawFields>,
}

/// Parses a complete head at the front of `buf` and takes it off; None if
/// the head is not complete yet.
fn take_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Head>, Error> {
    // Where each field is (on the stack for a usual head, not zeroed).
    let mut spans = SmallVec::<[Field; INLINE_FIELDS]>::new();
    let mut said = Said::default();
    // Bit `i` for field `i` (`MAX_HEADERS` fits).
    let mut hop_by_hop = 0u128;
    let (len, code, version, count) = {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Error::TooLarge),
            Err(_) => return Err(Error::Invalid("not an HTTP/1 response")),
        };
        if len > MAX_HEAD {
            return Err(Error::TooLarge);
        }
        for (i, field) in parsed.headers.iter().enumerate() {
            if said.field(field.name, field.value) {
                hop_by_hop |= 1 << i;
            }
            spans.push(Field {
                name: Place::of(buf, field.name.as_bytes()),
                value: Place::of(buf, field.value),
            });
        }
        let code = parsed.code.unwrap_or(0);
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        (len, code, version, parsed.headers.len())
    };
    if (100..200).contains(&code) && code != 101 {
        buf.advance(len);
        return Ok(Some(Head::Interim));
    }
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("status code"))?;
    let (framing, reusable) = framing(status, head_only, &said)?;
    let keep_alive = reusable && version == Version::HTTP_11 && !said.close;
    let head = buf.split_to(len).freeze();
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    // Nearly always, the fields are passed on unparsed, without their
    // hop-by-hop lines. Not when `Connection` names further fields (the
    // proxy strips them all from the map), nor when a `Content-Length`
    // comes with a `Transfer-Encoding` (it must not reach the client).
    let passed =
        !said.names_fields && !(said.encoded && (said.length.is_some() || said.bad_length));
    let head = if passed {
        let fields = &spans[..count];
        match RawFields::new(head, fields, hop_by_hop, said.length, said.dated) {
            Ok(raw) => {
                return Ok(Some(Head::Final(Final {
                    parts: resp.into_parts().0,
                    framing,
                    keep_alive,
                    stripped: true,
                    raw: Some(raw),
                })));
            }
            Err(head) => head,
        }
    } else {
        head
    };
    // The hop-by-hop fields are left out here, as they are met, unless
    // `Connection` names others: then the proxy strips them all later.
    let stripped = !said.names_fields;
    let mut headers = HeaderMap::with_capacity(count);
    for (i, span) in spans[..count].iter().enumerate() {
        if stripped && hop_by_hop & (1 << i) != 0 {
            continue;
        }
        let name = HeaderName::from_bytes(&head[span.name.range()])
            .map_err(|_| Error::Invalid("field name"))?;
        let value = HeaderValue::from_maybe_shared(span.value.slice(&head))
            .map_err(|_| Error::Invalid("field value"))?;
        headers.append(name, value);
    }
    if said.encoded {
        // The body is read as the transfer coding says: a length beside
        // it is not passed on (RFC 9112 §6.3, item 3).
        headers.remove(http::header::CONTENT_LENGTH);
    }
    *resp.headers_mut() = headers;
    Ok(Some(Head::Final(Final {
        parts: resp.into_parts().0,
        framing,
        keep_alive,
        stripped,
        raw: None,
    })))
}

/// What a head's fields say about its body and its connection, gathered
/// as they are parsed (no lookups in the `HeaderMap` afterwards).
#[derive(Debug, Default)]
struct Said {
    /// The `Content-Length`, when every value agrees.
    length: Option<u64>,
    /// A `Content-Length` that is not a number, or values that differ.
    bad_length: bool,
    /// Whether there is a `Transfer-Encoding`.
    encoded: bool,
    /// Whether the last transfer coding is `chunked`.
    chunked: bool,
    /// Whether `Connection` says `close`.
    close: bool,
    /// Whether `Connection` names other fields (hop-by-hop too).
    names_fields: bool,
    /// Whether there is a `Date`.
    dated: bool,
}

impl Said {
    /// Takes note of a field; whether it is hop-by-hop whatever
    /// `Connection` says (those of [`forwarded::strip_hop_by_hop`]).
    fn field(&mut self, name: &str, value: &[u8]) -> bool {
        let tokens = || value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        match name.len() {
            2 => return is("te"),
            4 if is("date") => self.dated = true,
            7 => return is("trailer") || is("upgrade"),
            10 if is("keep-alive") => return true,
            16 => return is("proxy-connection"),
            14 if name.eq_ignore_ascii_case("content-length") => {
                // `5, 5` is one length (RFC 9110 §8.6).
                for token in tokens() {
                    match front::parse_length(token) {
                        Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                        _ => self.bad_length = true,
                    }
                }
            }
            17 if name.eq_ignore_ascii_case("transfer-encoding") => {
                self.encoded = true;
                self.chunked = tokens()
                    .next_back()
                    .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"));
                return true;
            }
            10 if name.eq_ignore_ascii_case("connection") => {
                // The two values nearly every response sends, first.
                if value.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if !value.eq_ignore_ascii_case(b"keep-alive") {
                    self.close |= forwarded::says_close(value);
                    self.names_fields |= !forwarded::names_no_field(value);
                }
                return true;
            }
            _ => {}
        }
        false
    }
}

/// How the body of a response with `status` is delimited, given what its
/// fields `said`, and whether that leaves the connection usable after it.
fn framing(status: StatusCode, head_only: bool, said: &Said) -> Result<(Framing, bool), Error> {
    if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // A 101's connection is never reused (it switched protocols).
        return Ok((
            Framing::Length(0),
            status != StatusCode::SWITCHING_PROTOCOLS,
        ));
    }
    if said.encoded {
        // With a Content-Length too, the message may be a smuggling
        // attempt: read it as chunked, but never reuse the connection
        // (RFC 9112 §6.3, item 3).
        let alone = said.length.is_none() && !said.bad_length;
        return Ok(if said.chunked {
            (Framing::Chunked(Chunk::Size), alone)
        } else {
            (Framing::Close, false)
        });
    }
    if said.bad_length {
        return Err(Error::Invalid("content-length"));
    }
    Ok(match said.length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// Chunked transfer coding, in this state.
    Chunked(Chunk),
    /// When the backend closes the connection.
    Close,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
}

/// A backend's response body, read from its connection's buffer. Once it
/// ends, it says how ([`H1Body::take_end`]): read to its exact end, with
/// its connection when that can carry another request, or broken. One
/// dropped before its end closes the connection.
#[derive(Debug)]
pub struct H1Body {
    /// None once the body has ended.
    conn: Option<Box<H1Conn>>,
    framing: Framing,
    keep_alive: bool,
    /// Whether the head's hop-by-hop fields were left out.
    stripped: bool,
    /// The head's fields, when passed on unparsed.
    raw: Option<RawFields>,
    /// How the body ended, until taken.
    end: Option<End>,
    /// Whether a read got something since [`H1Body::take_heard`].
    heard: bool,
}

/// How a response body ended.
#[derive(Debug)]
pub enum End {
    /// Read to its exact end: the exchange was clean. Its connection, when
    /// it can carry another request (HTTP/1.1, no `Connection: close`,
    /// nothing buffered after the body).
    Clean(Option<Box<H1Conn>>),
    /// The connection failed or the body was invalid: closed.
    Failed,
}

impl CarriesFields for H1Body {
    fn take_raw_fields(&mut self) -> Option<RawFields> {
        self.raw.take()
    }
}

impl H1Body {
    /// Whether the response head came without its hop-by-hop fields
    /// (unless `Connection` named other fields, they are left out as the
    /// head is parsed).
    pub fn hop_by_hop_stripped(&self) -> bool {
        self.stripped
    }

    /// Whether a read from the backend got something since the last call:
    /// the holder's `read-timeout` counts silence between reads, not
    /// between frames (a chunk-size line may take several reads).
    pub fn take_heard(&mut self) -> bool {
        std::mem::take(&mut self.heard)
    }

    /// Gives up on the body (the holder's `read-timeout` ran out): the
    /// connection is closed.
    pub fn abandon(&mut self) {
        self.conn = None;
        self.end = Some(End::Failed);
    }

    /// How the body ended, once it has (taken once).
    pub fn take_end(&mut self) -> Option<End> {
        self.end.take()
    }

    /// The body has been read to its end.
    fn finish(&mut self) {
        let keep_alive = self.keep_alive;
        let conn = self
            .conn
            .take()
            .filter(|conn| keep_alive && conn.buf.is_empty());
        self.end = Some(End::Clean(conn));
    }

    /// The body failed: the connection is closed.
    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.end = Some(End::Failed);
        Poll::Ready(Some(Err(error)))
    }

    /// The next frame (see [`http_body::Body::poll_frame`]).
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Some(conn) = &mut self.conn else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match &mut self.framing {
                Framing::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !buf.is_empty() => {
                    let data = take_at_most(buf, *left);
                    *left -= data.len() as u64;
                    if *left == 0 {
                        // hyper stops polling a body of known length as
                        // soon as it has all of it.
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                }
                Framing::Chunked(state) if !buf.is_empty() => match decode(state, buf) {
                    Ok(Decoded::Again) => continue,
                    Ok(Decoded::More) => {}
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End(trailers)) => {
                        self.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Err(e) => return self.fail(e),
                },
                _ => {}
            }
            let filled = ready!(conn.poll_fill(cx));
            // The backend sent something (or closed): for `read-timeout`,
            // whoever holds the body (see [`H1Body::take_heard`]).
            self.heard = true;
            match filled {
                Ok(0) if self.framing == Framing::Close => {
                    // The end; the connection is done too.
                    self.keep_alive = false;
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return self.fail(Error::Body(closed())),
                Ok(_) => {}
                Err(e) => return self.fail(Error::Body(e)),
            }
        }
    }

    /// Whether the body has ended.
    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing == Framing::Length(0)
    }

    /// What is known of its length.
    pub fn size_hint(&self) -> SizeHint {
        match self.framing {
            _ if self.conn.is_none() => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// The first `at_most` bytes of `buf` (all of it if shorter), taken off.
fn take_at_most(buf: &mut BytesMut, at_most: u64) -> Bytes {
    let n = usize::try_from(at_most)
        .unwrap_or(usize::MAX)
        .min(buf.len());
    buf.split_to(n).freeze()
}

/// One step of the chunked decoder.
enum Decoded {
    /// A state change; decode again.
    Again,
    /// The buffer holds too little; read more.
    More,
    /// Some of a chunk's data.
    Data(Bytes),
    /// The body's end, with its trailers if it had any.
    End(Option<HeaderMap>),
}

/// Decodes from the front of `buf` (not empty).
fn decode(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, Error> {
    match *state {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((used, size))) => {
                buf.advance(used);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
                Ok(Decoded::Again)
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => Ok(Decoded::More),
            _ => Err(Error::Chunked("bad chunk-size line")),
        },
        Chunk::Data(left) => {
            let data = take_at_most(buf, left);
            *state = match left - data.len() as u64 {
                0 => Chunk::DataEnd,
                left => Chunk::Data(left),
            };
            Ok(Decoded::Data(data))
        }
        Chunk::DataEnd => match buf.get(..2) {
            Some(b"\r\n") => {
                buf.advance(2);
                *state = Chunk::Size;
                Ok(Decoded::Again)
            }
            None if buf[0] == b'\r' => Ok(Decoded::More),
            _ => Err(Error::Chunked("chunk data not followed by CRLF")),
        },
        Chunk::Trailers => {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((used, fields))) => {
                    let trailers = (!fields.is_empty())
                        .then(|| {
                            let mut map = HeaderMap::with_capacity(fields.len());
                            for field in fields {
                                let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
                                let value = HeaderValue::from_bytes(field.value).ok()?;
                                map.append(name, value);
                            }
                            Some(map)
                        })
                        .flatten();
                    buf.advance(used);
                    Ok(Decoded::End(trailers))
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Ok(Decoded::More),
                _ => Err(Error::Chunked("bad trailer section")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, head_only: bool) -> Result<Option<Head>, Error> {
        take_head(&mut BytesMut::from(text), head_only)
    }

    /// The head's parts, its fields in the map whether passed on or not.
    fn final_head(text: &str) -> (http::response::Parts, Framing, bool) {
        match head(text, false) {
            Ok(Some(Head::Final(mut h))) => {
                if let Some(raw) = h.raw.take() {
                    raw.into_map(&mut h.parts.headers);
                }
                (h.parts, h.framing, h.keep_alive)
            }
            other => panic!("not a final head: {:?}", other.map(|h| h.is_some())),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let (parts, framing, keep_alive) =
            final_head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n");
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["x-a"], "b");
        assert_eq!((framing, keep_alive), (Framing::Length(5), true));

        let (_, framing, keep_alive) =
            final_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!((framing, keep_alive), (Framing::Chunked(Chunk::Size), true));
        // Both: chunked, and the connection is not reused.
        let (_, framing, keep_alive) = final_head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(
            (framing, keep_alive),
            (Framing::Chunked(Chunk::Size), false)
        );
        let (_, framing, keep_alive) =
            final_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((framing, keep_alive), (Framing::Close, false));
        let (_, framing, keep_alive) = final_head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((framing, keep_alive), (Framing::Close, false));
        let (_, framing, keep_alive) = final_head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((framing, keep_alive), (Framing::Length(0), true));
        let (_, framing, _) = final_head("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n");
        assert_eq!(framing, Framing::Length(0));
        let (_, framing, keep_alive) =
            final_head("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nConnection: close\r\n\r\n");
        assert_eq!((framing, keep_alive), (Framing::Length(4), false));
        let (_, _, keep_alive) = final_head("HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\n");
        assert!(!keep_alive);
        match head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true) {
            Ok(Some(Head::Final(h))) if h.keep_alive => assert_eq!(h.framing, Framing::Length(0)),
            _ => panic!("a HEAD response has no body"),
        }
    }

    #[test]
    fn hop_by_hop_fields_are_left_out_unless_connection_names_others() {
        let h = match head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\
             X-Kept: yes\r\n\r\n",
            false,
        ) {
            Ok(Some(Head::Final(h))) => h,
            _ => panic!("a final head"),
        };
        assert!(h.stripped);
        let mut written = Vec::new();
        h.raw
            .as_ref()
            .expect("passed on")
            .write(&mut written, &HeaderMap::new());
        assert_eq!(written, b"X-Kept: yes\r\n");
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        // Every hop-by-hop name, in any case, and no other.
        for name in forwarded::HOP_BY_HOP.iter().map(HeaderName::as_str) {
            assert!(Said::default().field(name, b"x"), "{name}");
            assert!(
                Said::default().field(&name.to_ascii_uppercase(), b"x"),
                "{name}"
            );
        }
        for name in ["date", "content-length", "x-te", "upgrades", "connectio"] {
            assert!(!Said::default().field(name, b"1"), "{name}");
        }
        // Parsed into the map instead: a bare LF, many hop-by-hop lines,
        // or a `Content-Length` beside a `Transfer-Encoding` (left out).
        for text in [
            "HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTE: a\r\nX-A: 1\r\nTrailer: b\r\nX-B: 2\r\nUpgrade: c\r\n\
             X-C: 3\r\nKeep-Alive: d\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nX-A: 1\r\n\r\n",
        ] {
            let Ok(Some(Head::Final(h))) = head(text, false) else {
                panic!("a final head: {text:?}");
            };
            assert!(h.raw.is_none(), "{text:?}");
            assert_eq!(h.parts.headers["x-a"], "1");
            assert!(!h.parts.headers.contains_key("content-length") || !text.contains("chunked"));
        }
        // A field named by `Connection` is only known by then: all of them
        // are kept for the proxy's strip.
        let h = match head(
            "HTTP/1.1 200 OK\r\nX-Private: a\r\nConnection: x-private\r\nContent-Length: 0\r\n\r\n",
            false,
        ) {
            Ok(Some(Head::Final(h))) => h,
            _ => panic!("a final head"),
        };
        assert!(!h.stripped);
        assert_eq!(h.parts.headers.len(), 3);
    }

    #[test]
    fn a_head_with_many_fields_keeps_them_all() {
        let many: String = (0..60).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let text =
            format!("HTTP/1.1 200 OK\r\n{many}Connection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        let (parts, framing, keep_alive) = final_head(&text);
        assert_eq!((framing, keep_alive), (Framing::Length(0), true));
        assert_eq!(parts.headers.len(), 61);
        assert_eq!(parts.headers["x-59"], "59");
    }

    #[test]
    fn interim_partial_and_bad_heads() {
        let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n");
        assert!(matches!(
            take_head(&mut buf, false),
            Ok(Some(Head::Interim))
        ));
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
        assert!(matches!(take_head(&mut buf, false), Ok(None)));
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(head(bad, false).is_err(), "{bad:?} is refused");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(matches!(
            head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), false),
            Err(Error::TooLarge)
        ));
    }

    fn decode_all(wire: &[u8], split: usize) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut rest = wire;
        loop {
            let step = if buf.is_empty() {
                Decoded::More
            } else {
                decode(&mut state, &mut buf)?
            };
            match step {
                Decoded::More => {
                    let (now, later) = rest.split_at(split.min(rest.len()));
                    assert!(!now.is_empty(), "the decoder wants more than the body");
                    buf.extend_from_slice(now);
                    rest = later;
                }
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::End(trailers) => {
                    assert!(buf.is_empty() && rest.is_empty());
                    return Ok((data, trailers));
                }
                Decoded::Again => {}
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Sum: 16\r\n\r\n";
        for split in [1, 2, 3, 7, wire.len()] {
            let (data, trailers) = decode_all(wire, split).expect("valid");
            assert_eq!(data, b"hello 0123456789");
            assert_eq!(trailers.expect("trailers")["x-sum"], "16");
        }
        let (data, trailers) = decode_all(b"0\r\n\r\n", 1).expect("empty");
        assert!(data.is_empty() && trailers.is_none());
        assert!(decode_all(b"zz\r\n", 4).is_err());
        assert!(decode_all(b"2\r\nabXY", 8).is_err());
    }
}
