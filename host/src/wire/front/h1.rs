//! Switchyard's own HTTP/1.1 server, for the exchanges nearly all traffic
//! is: a keep-alive client sending requests without a body, one after the
//! other (pipelined or not). hyper's server stays for everything else.
//!
//! Every HTTP/1 connection starts here. Each request head (complete and
//! already checked by the [`Guard`] below, which also keeps the client
//! timeouts) is parsed once, straight into the request the proxy handles,
//! and the response is written by this loop: the head and the first part of
//! the body in one write, the body by its `Content-Length` or chunked. The
//! first head this server does not take (a body, an upgrade, `Expect`,
//! HTTP/1.0, CONNECT, anything it cannot parse) hands the connection to
//! hyper, with the bytes read so far ([`Ended::HandOver`]); hyper then
//! serves it to the end, as it serves every HTTP/2 connection.
//!
//! As hyper's server does, it adds `Date` when the response has none, frames
//! a body of unknown length as chunked, sends no body for HEAD, 1xx, 204 and
//! 304, drops trailers (their `Trailer` field never reaches the client), and
//! closes after a response that says `Connection: close`, a request that
//! asks for it, a body that failed or ended short, or when the worker
//! drains (the last response then says `Connection: close`).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::check::MAX_HEAD;
use super::guard::Guard;
use crate::wire::forwarded;
use crate::wire::head::{CarriesFields, RequestHead};

/// Room made in the read buffer at a time (hyper reads as much).
const READ_SIZE: usize = 8 * 1024;
/// Body data up to this size goes out in the same write as what precedes
/// it; larger data is written on its own, without a copy.
const COALESCE: usize = 16 * 1024;

/// The fields the proxy adds to a request (`X-Real-IP`,
/// `X-Forwarded-For`, `X-Forwarded-Proto`, and one to spare).
const FORWARDING_FIELDS: usize = 4;

/// How a connection left this server.
#[allow(
    clippy::large_enum_variant,
    reason = "made once per connection and taken apart at once"
)]
pub enum Ended<I> {
    /// It is closed (by either side), or failed.
    Closed,
    /// A request this server does not take: hyper serves the connection,
    /// from that request's head on (the guard gives back what was read of
    /// it and after it, [`Guard::unread`]).
    HandOver(Guard<I>),
}

/// Serves requests on `io` until it closes or a request needs hyper.
/// `handle` answers each request; `drain` is cancelled when the worker
/// shuts down.
pub async fn serve<I, F, R, B>(
    mut io: Guard<I>,
    mut handle: F,
    drain: CancellationToken,
) -> Ended<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<()>) -> R,
    R: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes> + CarriesFields,
    B::Error: std::fmt::Display,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let cancelled = drain.cancelled();
    let mut cancelled = pin!(cancelled);
    // Whether `buf` starts with the bytes the guard's last read returned
    // (then the framer's parse of the head they start with serves).
    let mut fresh = false;
    loop {
        let head = loop {
            if !buf.is_empty() {
                let parsed = if fresh {
                    io.with_head_places(|known| parse(&mut buf, known))
                } else {
                    parse(&mut buf, None)
                };
                fresh = false;
                match parsed {
                    Parsed::Request(head) => break head,
                    Parsed::Partial if buf.len() < MAX_HEAD => {}
                    Parsed::Partial | Parsed::NotOurs => {
                        io.unread(buf.freeze());
                        return Ended::HandOver(io);
                    }
                    Parsed::Unusable(head) => {
                        // The head was taken off already; hyper gets it back.
                        io.unread(buf.freeze());
                        io.unread(head);
                        return Ended::HandOver(io);
                    }
                }
            }
            if buf.capacity() - buf.len() < READ_SIZE / 4 {
                buf.reserve(READ_SIZE);
            }
            fresh = buf.is_empty();
            let read = tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => read,
                // Idle (no part of a head read): nothing is lost by closing.
                () = &mut cancelled, if buf.is_empty() => return Ended::Closed,
            };
            match read {
                Ok(0) => return Ended::Closed,
                Ok(_) => {}
                Err(e) => return failed(&e),
            }
        };
        let head_only = head.request.method() == Method::HEAD;
        let Ok(resp) = handle(head.request).await;
        let close = head.close || drain.is_cancelled();
        match respond(&mut io, &mut out, resp, head_only, close).await {
            Ok(Kept::Open) => {}
            Ok(Kept::Closed) => {
                let _ = io.shutdown().await;
                return Ended::Closed;
            }
            Err(e) => return failed(&e),
        }
        // A large response's buffer is not kept for the idle time.
        if out.capacity() > COALESCE * 2 {
            out = Vec::new();
        }
    }
}

fn failed<I>(e: &dyn std::fmt::Display) -> Ended<I> {
    tracing::debug!("client connection ended with error: {e}");
    Ended::Closed
}

/// A request head this server takes, parsed.
struct Head {
    request: Request<()>,
    /// The client asked to close after the response.
    close: bool,
}

enum Parsed {
    Request(Head),
    /// Not complete yet.
    Partial,
    /// For hyper; nothing was taken off the buffer.
    NotOurs,
    /// For hyper, found after the head was taken off the buffer: the head.
    Unusable(Bytes),
}

/// Parses a head at the front of `buf`; takes it off if this server takes
/// the request. `known`: where its parts are, when the guard's framer has
/// parsed it already (in these bytes).
fn parse(buf: &mut BytesMut, known: Option<&RequestHead>) -> Parsed {
    let mut parsed = RequestHead::default();
    let places = match known {
        // The head the guard's framer parsed in these bytes: it ends
        // where it says.
        Some(known) if known.len > 0 && buf.get(known.len - 1) == Some(&b'\n') => known,
        _ => match parsed.parse(buf) {
            Ok(true) => &parsed,
            Ok(false) => return Parsed::Partial,
            Err(_) => return Parsed::NotOurs,
        },
    };
    if places.minor != 1 {
        return Parsed::NotOurs;
    }
    let Ok(method) = Method::from_bytes(places.method.part(buf)) else {
        return Parsed::NotOurs;
    };
    if method == Method::CONNECT {
        return Parsed::NotOurs;
    }
    let mut close = false;
    for (name, value) in places.pairs(buf) {
        match name.len() {
            // A body, or a request to switch protocols or to be told to go
            // on: hyper's.
            14 if name.eq_ignore_ascii_case(b"content-length") => return Parsed::NotOurs,
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Parsed::NotOurs,
            7 if name.eq_ignore_ascii_case(b"upgrade") => return Parsed::NotOurs,
            6 if name.eq_ignore_ascii_case(b"expect") => return Parsed::NotOurs,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                close |= forwarded::says_close(value);
            }
            _ => {}
        }
    }
    let head = buf.split_to(places.len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(places.target.slice(&head)) else {
        return Parsed::Unusable(head);
    };
    // Room for the forwarding fields the proxy adds: growing the map
    // rehashes it.
    let mut headers = HeaderMap::with_capacity(places.fields.len() + FORWARDING_FIELDS);
    for field in &places.fields {
        let name = HeaderName::from_bytes(field.name.part(&head));
        let value = HeaderValue::from_maybe_shared(field.value.slice(&head));
        match (name, value) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => return Parsed::Unusable(head),
        }
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Parsed::Request(Head { request, close })
}

/// Whether the connection may carry another request.
enum Kept {
    Open,
    Closed,
}

/// How the body goes out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// This many bytes left.
    Length(u64),
    Chunked,
}

/// Writes `resp`: its head, then its body. `close`: the connection closes
/// after it (the response then says so).
async fn respond<I, B>(
    io: &mut Guard<I>,
    out: &mut Vec<u8>,
    resp: Response<B>,
    head_only: bool,
    mut close: bool,
) -> io::Result<Kept>
where
    I: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + CarriesFields,
    B::Error: std::fmt::Display,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut length, mut dated, mut said_close) = (None, false, false);
    // A backend's fields as it sent them; the map's replace theirs.
    if let Some(raw) = body.take_raw_fields() {
        raw.write(out, &parts.headers);
        length = raw.length;
        dated = raw.dated;
    }
    for (name, value) in &parts.headers {
        if name == TRANSFER_ENCODING {
            // The framing is this server's to choose.
            continue;
        } else if name == CONTENT_LENGTH {
            length = super::check::parse_length(value.as_bytes());
        } else if name == DATE {
            dated = true;
        } else if name == CONNECTION && forwarded::says_close(value.as_bytes()) {
            close = true;
            said_close = true;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut framing = match (length, body.size_hint().exact()) {
        _ if no_body => Framing::None,
        (Some(n), _) => Framing::Length(n),
        (None, Some(n)) => {
            field(
                out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            );
            Framing::Length(n)
        }
        (None, None) => {
            field(out, b"transfer-encoding", b"chunked");
            Framing::Chunked
        }
    };
    if !dated {
        DATE_NOW.with(|d| field(out, b"date", d.borrow_mut().now()));
    }
    if close && !said_close {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        io.write_all(out).await?;
        return Ok(if close { Kept::Closed } else { Kept::Open });
    }

    let mut body = pin!(body);
    loop {
        // What is ready now goes out with what is waiting; the head leaves
        // before waiting for the body.
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                flush(io, out).await?;
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: not sent (see the module's docs).
                Err(_) => continue,
            },
            Some(Err(e)) => {
                // Whatever was sent, the client cannot tell the response
                // is whole: the connection closes.
                tracing::debug!("response body failed: {e}");
                flush(io, out).await?;
                return Ok(Kept::Closed);
            }
        };
        let data = match &mut framing {
            Framing::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                *left -= n as u64;
                data.slice(..n)
            }
            Framing::Chunked if data.is_empty() => continue,
            Framing::Chunked => {
                let mut size = [0u8; 18];
                let size = chunk_size(&mut size, data.len());
                out.extend_from_slice(size);
                data
            }
            Framing::None => break,
        };
        send(io, out, &data).await?;
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if framing == Framing::Length(0) {
            break;
        }
    }
    let whole = match framing {
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n\r\n");
            true
        }
        Framing::Length(left) => left == 0,
        Framing::None => true,
    };
    flush(io, out).await?;
    Ok(if close || !whole {
        Kept::Closed
    } else {
        Kept::Open
    })
}

/// Appends `name: value` and its line end.
fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `len` in hex and CRLF, a chunk-size line.
fn chunk_size(buf: &mut [u8; 18], len: usize) -> &[u8] {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in buf[..digits].iter_mut().enumerate() {
        let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
        *digit = b"0123456789abcdef"[nibble];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    &buf[..digits + 2]
}

/// Queues `data` after what is waiting in `out`, or writes both when it is
/// large.
async fn send<I: AsyncWrite + Unpin>(
    io: &mut Guard<I>,
    out: &mut Vec<u8>,
    data: &Bytes,
) -> io::Result<()> {
    if out.len() + data.len() <= COALESCE {
        out.extend_from_slice(data);
        return Ok(());
    }
    flush(io, out).await?;
    io.write_all(data).await
}

/// Writes what is waiting in `out`.
async fn flush<I: AsyncWrite + Unpin>(io: &mut Guard<I>, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// `Date` as this thread last wrote it, made again once a second.
struct CachedDate {
    second: u64,
    text: [u8; 29],
}

thread_local! {
    static DATE_NOW: RefCell<CachedDate> = const {
        RefCell::new(CachedDate { second: u64::MAX, text: [b' '; 29] })
    };
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
                self.second = second;
            }
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        let mut buf = [0u8; 18];
        for (len, text) in [
            (1, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (0x1a2b, "1a2b\r\n"),
        ] {
            assert_eq!(chunk_size(&mut buf, len), text.as_bytes());
        }
        assert_eq!(
            chunk_size(&mut buf, usize::MAX).len(),
            usize::BITS as usize / 4 + 2
        );
    }

    /// What `parse` makes of `text` and leaves of it, as text: parsing
    /// it itself, or from the places the guard's framer found first
    /// (the two must agree).
    fn parsed(text: &str) -> (String, String) {
        let outcome = |known: Option<&RequestHead>| {
            let mut buf = BytesMut::from(text);
            let what = match parse(&mut buf, known) {
                Parsed::Request(head) => {
                    let r = head.request;
                    let fields: Vec<_> = r
                        .headers()
                        .iter()
                        .map(|(n, v)| format!("{n}={v:?}"))
                        .collect();
                    format!("{} {} {fields:?} close={}", r.method(), r.uri(), head.close)
                }
                Parsed::Partial => "partial".into(),
                Parsed::NotOurs => "not ours".into(),
                Parsed::Unusable(head) => format!("unusable {head:?}"),
            };
            (what, String::from_utf8_lossy(&buf).into_owned())
        };
        let mut framer = RequestHead::default();
        let alone = outcome(None);
        if framer.parse(text.as_bytes()) == Ok(true) {
            assert_eq!(outcome(Some(&framer)), alone, "{text:?}");
        }
        alone
    }

    #[test]
    fn only_bodiless_http11_heads_are_taken() {
        let taken = |text: &str| !parsed(text).0.starts_with(['p', 'n', 'u']);
        assert!(taken("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(taken(
            "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
        ));
        for hyper in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            "GET / HTTP/1.1\r\nHost x\r\n\r\n",
        ] {
            let (what, left) = parsed(hyper);
            assert_eq!(what, "not ours", "{hyper}");
            assert_eq!(left, hyper, "nothing taken: {hyper}");
        }
        assert_eq!(parsed("GET / HTTP/1.1\r\nHost: x\r\n").0, "partial");
        assert_eq!(
            parsed(
                "GET /p?q HTTP/1.1\r\nHost: x\r\nX-A:  b \r\nConnection: close\r\n\r\nGET /next"
            ),
            (
                r#"GET /p?q ["host=\"x\"", "x-a=\"b\"", "connection=\"close\""] close=true"#
                    .to_owned(),
                "GET /next".to_owned()
            )
        );
        // Places that do not fit what was read (never the case) are not
        // used: the head is parsed again.
        let mut too_long = RequestHead::default();
        assert_eq!(
            too_long.parse(b"GET /long HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(true)
        );
        let mut buf = BytesMut::from("GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(
            parse(&mut buf, Some(&too_long)),
            Parsed::Request(_)
        ));
    }

    #[test]
    fn a_parsed_head_is_the_request_and_what_follows_stays() {
        let mut buf = BytesMut::from(
            "GET /p?q=1 HTTP/1.1\r\nHost: x\r\nX-A: b\r\nX-A: c\r\nConnection: Close\r\n\r\nGET /next",
        );
        let Parsed::Request(head) = parse(&mut buf, None) else {
            panic!("taken");
        };
        assert!(head.close);
        let req = head.request;
        assert_eq!(
            (req.method(), req.uri().to_string().as_str()),
            (&Method::GET, "/p?q=1")
        );
        let all: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(all, ["b", "c"]);
        assert_eq!(&buf[..], b"GET /next");
        // More fields than the parser keeps on the stack: all of them.
        let many: String = (0..60).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\n{many}\r\n").as_str());
        let Parsed::Request(head) = parse(&mut buf, None) else {
            panic!("taken");
        };
        assert_eq!(head.request.headers().len(), 60);
        assert_eq!(head.request.headers()["x-59"], "59");
    }
}
