//! The sans-I/O half of the [`Guard`](super::Guard): follows an HTTP/1
//! request stream as it is read, message by message, and says which bytes
//! may go on to hyper.
//!
//! A head is held back until it is complete and [checked](super::check_fields);
//! a body is passed through as it arrives while its framing (a length, or
//! chunks whose sizes and extensions are validated here) is followed, so the
//! framer always knows where the next head starts. Nothing is copied on the
//! common path (a read that holds whole heads and body bytes passes as is);
//! only a head split across reads is buffered, up to [`MAX_HEAD`].

use std::cell::RefCell;
use std::ops::Range;

use http::{StatusCode, Version};

use super::check::{Checked, Framing, MAX_HEAD, Refusal, check_fields, refuse, too_large};
use crate::wire::head::RequestHead;

/// What HTTP/2 with prior knowledge (and after ALPN `h2`) starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Most chunk-extension bytes after one chunk size.
const MAX_EXTENSION: usize = 4096;

/// Where in the stream a refusal falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedAt {
    /// A head: it was held back, so hyper has not seen it.
    Head,
    /// A body: hyper has seen its head and part of it.
    Body,
}

/// What to do with one read.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// A held-back head this read completed: goes on before `pass`.
    pub released: Option<Vec<u8>>,
    /// The bytes of the read that go on, in order.
    pub pass: Range<usize>,
    /// The stream is refused after those bytes.
    pub refused: Option<(Refusal, RefusedAt)>,
}

impl Fed {
    /// The whole read of `n` bytes goes on as it is.
    pub fn is_whole(&self, n: usize) -> bool {
        self.released.is_none() && self.refused.is_none() && self.pass == (0..n)
    }
}

/// What the stream is waiting for, for the client timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The next request (nothing of it seen).
    Idle,
    /// The rest of a head whose first bytes arrived.
    Head,
    /// More of a request body.
    Body,
    /// Not followed: HTTP/2, an upgraded connection, or after a refusal.
    Nothing,
}

/// Follows one connection's request stream.
#[derive(Debug)]
pub struct Framer {
    max_body: Option<u64>,
    state: State,
    /// A head split across reads, held back until complete.
    head: Vec<u8>,
    /// Nothing read yet: the stream may be HTTP/2.
    fresh: bool,
    /// Heads checked and passed on.
    heads: u64,
    /// When the last input fed started with a whole head: where that
    /// thread's [`FIRST_HEAD`] is, and the number of its places there.
    first: Option<(usize, u64)>,
}

thread_local! {
    /// The places of the whole head the last input fed to a framer on this
    /// thread started with, and their number. One per thread, not per
    /// connection (they would be a third of an idle connection's
    /// memory): a connection's read and the parse of what it read happen
    /// in one poll of its task, with no other connection's read between.
    static FIRST_HEAD: RefCell<(u64, RequestHead)> = const { RefCell::new((0, RequestHead::new())) };
}

#[derive(Debug)]
enum State {
    /// Between messages, or inside a held-back head.
    Idle,
    /// This many body bytes left.
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunked),
    /// Upgraded (or about to be): bytes pass unchecked.
    Passthrough,
    /// HTTP/2: bytes pass unchecked (hyper reads the frames); the
    /// connection is idle whenever nothing arrives.
    Http2,
    /// Refused: nothing more passes.
    Refused,
}

impl Framer {
    /// A framer for a new connection; bodies over `max_body` are refused.
    pub fn new(max_body: Option<u64>) -> Self {
        Self {
            max_body,
            state: State::Idle,
            head: Vec::new(),
            fresh: true,
            heads: 0,
            first: None,
        }
    }

    /// Runs `f` with where the parts of the head the last input fed
    /// started with lie in it, if it started with a whole head (once).
    pub fn with_first_head<R>(&mut self, mut f: impl FnMut(Option<&RequestHead>) -> R) -> R {
        if let Some((at, number)) = self.first.take() {
            // This thread's record, and still this framer's.
            let ran = FIRST_HEAD.try_with(|record| match record.try_borrow() {
                Ok(first) if first.0 == number && address(record) == at => Some(f(Some(&first.1))),
                _ => None,
            });
            if let Ok(Some(result)) = ran {
                return result;
            }
        }
        f(None)
    }

    /// What the stream waits for now.
    pub fn waiting(&self) -> Waiting {
        match self.state {
            State::Idle if self.head.iter().any(|b| !matches!(b, b'\r' | b'\n')) => Waiting::Head,
            State::Idle | State::Http2 => Waiting::Idle,
            State::Length(_) | State::Chunked(_) => Waiting::Body,
            State::Passthrough | State::Refused => Waiting::Nothing,
        }
    }

    /// How many heads have been checked and passed on.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Nothing has been read yet.
    pub fn is_fresh(&self) -> bool {
        self.fresh && self.head.is_empty()
    }

    /// Not yet known whether the stream is HTTP/2: nothing read, or only a
    /// part of the HTTP/2 preface.
    pub fn is_undecided(&self) -> bool {
        self.fresh
    }

    /// Bytes are no longer followed, nor timed: the connection was
    /// upgraded (the tunnel times itself).
    pub fn is_passthrough(&self) -> bool {
        matches!(self.state, State::Passthrough)
    }

    /// The connection speaks HTTP/2: bytes are no longer followed, only
    /// the keep-alive time is kept.
    pub fn is_http2(&self) -> bool {
        matches!(self.state, State::Http2)
    }

    /// Follows `input`, the next bytes read from the client.
    pub fn feed(&mut self, input: &[u8]) -> Fed {
        self.first = None;
        let n = input.len();
        let mut fed = Fed {
            released: None,
            pass: 0..n,
            refused: None,
        };
        match self.state {
            State::Passthrough | State::Http2 => return fed,
            State::Refused => {
                fed.pass = 0..0;
                return fed;
            }
            _ => {}
        }
        let mut i = 0;
        if self.fresh {
            let seen = self.head.len();
            let want = (PREFACE.len() - seen).min(n);
            if PREFACE[seen..seen + want] == input[..want] {
                if seen + want < PREFACE.len() {
                    self.head.extend_from_slice(input);
                    fed.pass = 0..0;
                    return fed;
                }
                // HTTP/2: hyper takes it from here.
                self.fresh = false;
                self.state = State::Http2;
                if seen > 0 {
                    fed.released = Some(std::mem::take(&mut self.head));
                }
                return fed;
            }
            self.fresh = false;
        }
        if !self.head.is_empty() {
            let old = self.head.len();
            self.head.extend_from_slice(input);
            match parse_head(&self.head, self.max_body, &mut RequestHead::default()) {
                Ok(None) => {
                    fed.pass = 0..0;
                    return fed;
                }
                Err(refusal) => {
                    self.refuse();
                    fed.pass = 0..0;
                    fed.refused = Some((refusal, RefusedAt::Head));
                    return fed;
                }
                Ok(Some((len, checked))) => {
                    // The head was incomplete without this read, so it ends
                    // inside it.
                    self.head.truncate(len);
                    fed.released = Some(std::mem::take(&mut self.head));
                    i = len - old;
                    fed.pass.start = i;
                    self.begin(checked);
                }
            }
        }
        while i < n {
            match &mut self.state {
                State::Passthrough | State::Http2 => break,
                State::Refused => unreachable!("refusals return at once"),
                State::Idle => {
                    // The places of the head the input starts with are
                    // kept (the own server's request is built from them).
                    let at_start = i == 0 && fed.released.is_none();
                    let (parsed, number) = if at_start {
                        parse_first(&input[i..], self.max_body)
                    } else {
                        let parsed =
                            parse_head(&input[i..], self.max_body, &mut RequestHead::default());
                        (parsed, None)
                    };
                    match parsed {
                        Ok(Some((len, checked))) => {
                            if number.is_some() {
                                self.first = number;
                            }
                            i += len;
                            self.begin(checked);
                        }
                        Ok(None) => {
                            self.head.extend_from_slice(&input[i..]);
                            fed.pass.end = i;
                            break;
                        }
                        Err(refusal) => {
                            self.refuse();
                            fed.pass.end = i;
                            fed.refused = Some((refusal, RefusedAt::Head));
                            break;
                        }
                    }
                }
                State::Length(left) => {
                    let take = (*left).min((n - i) as u64);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        self.state = State::Idle;
                    }
                }
                State::Chunked(chunked) => match chunked.advance(input, i, self.max_body) {
                    Ok((next, done)) => {
                        i = next;
                        if done {
                            self.state = State::Idle;
                        }
                    }
                    Err((at, refusal)) => {
                        self.refuse();
                        fed.pass.end = at;
                        fed.refused = Some((refusal, RefusedAt::Body));
                        break;
                    }
                },
            }
        }
        fed
    }

    /// A checked head was read: follow its body.
    fn begin(&mut self, checked: Checked) {
        self.heads += 1;
        self.state = if checked.upgrade {
            // A 101 turns the rest into another protocol; if the backend
            // declines, the proxy closes the connection (see `proxy`).
            State::Passthrough
        } else {
            match checked.framing {
                Framing::None => State::Idle,
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::Chunked(Chunked::default()),
            }
        };
    }

    fn refuse(&mut self) {
        self.state = State::Refused;
        self.head = Vec::new();
    }
}

/// Where a thread's [`FIRST_HEAD`] is: unique among the threads alive.
fn address(record: &RefCell<(u64, RequestHead)>) -> usize {
    std::ptr::from_ref(record).addr()
}

/// [`parse_head`] into the thread's [`FIRST_HEAD`], numbered anew, and
/// where that record is with that number (`None` if it could not be used:
/// the thread is ending).
fn parse_first(bytes: &[u8], max_body: Option<u64>) -> (Parsed, Option<(usize, u64)>) {
    let recorded = FIRST_HEAD.try_with(|record| {
        let mut first = record.try_borrow_mut().ok()?;
        first.0 += 1;
        let parsed = parse_head(bytes, max_body, &mut first.1);
        Some((parsed, (address(record), first.0)))
    });
    match recorded {
        Ok(Some((parsed, number))) => (parsed, Some(number)),
        _ => (
            parse_head(bytes, max_body, &mut RequestHead::default()),
            None,
        ),
    }
}

/// A head's length and what it says, `None` while incomplete; or why it
/// is refused.
type Parsed = Result<Option<(usize, Checked)>, Refusal>;

/// Parses and checks one head at the start of `bytes` into `head`.
fn parse_head(bytes: &[u8], max_body: Option<u64>, head: &mut RequestHead) -> Parsed {
    let too_big = refuse(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "request head too large",
    );
    match head.parse(bytes) {
        Ok(true) if head.len > MAX_HEAD => Err(too_big),
        Ok(true) => {
            let version = match head.minor {
                0 => Version::HTTP_10,
                _ => Version::HTTP_11,
            };
            let checked = check_fields(
                version,
                head.target.range().len(),
                head.pairs(bytes),
                max_body,
            )?;
            Ok(Some((head.len, checked)))
        }
        Ok(false) if bytes.len() > MAX_HEAD => Err(too_big),
        Ok(false) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many header fields",
        )),
        Err(_) => Err(refuse(StatusCode::BAD_REQUEST, "malformed request head")),
    }
}

/// Position inside a chunked body (RFC 9112 7.1).
#[derive(Debug, Default)]
struct Chunked {
    phase: Phase,
    /// The size being read, then the data left of the chunk.
    size: u64,
    digits: u8,
    /// Extension bytes of the current chunk.
    extension: usize,
    /// Trailer bytes so far.
    trailers: usize,
    /// Data bytes so far.
    total: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Hex digits of the size.
    #[default]
    Size,
    /// Whitespace after the size.
    SizeSpace,
    /// After `;`: whitespace, then an extension name.
    NameStart,
    Name,
    NameSpace,
    /// After `=`: whitespace, then a token or a quoted string.
    ValueStart,
    Token,
    Quoted,
    Escape,
    ValueSpace,
    /// After the CR ending the size line.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line or the final empty line.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

impl Phase {
    /// Inside a chunk extension (after the `;`).
    fn in_extension(self) -> bool {
        matches!(
            self,
            Phase::NameStart
                | Phase::Name
                | Phase::NameSpace
                | Phase::ValueStart
                | Phase::Token
                | Phase::Quoted
                | Phase::Escape
                | Phase::ValueSpace
        )
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl Chunked {
    /// Follows `input[from..]`: where it stopped and whether the body ended
    /// there, or the offset of the offending byte and why.
    fn advance(
        &mut self,
        input: &[u8],
        from: usize,
        max_body: Option<u64>,
    ) -> Result<(usize, bool), (usize, Refusal)> {
        let bad = |at, reason| Err((at, refuse(StatusCode::BAD_REQUEST, reason)));
        let mut i = from;
        while i < input.len() {
            if self.phase == Phase::Data {
                let take = self.size.min((input.len() - i) as u64);
                self.size -= take;
                i += take as usize;
                if self.size == 0 {
                    self.phase = Phase::DataCr;
                }
                continue;
            }
            let b = input[i];
            if self.phase.in_extension() {
                self.extension += 1;
                if self.extension > MAX_EXTENSION {
                    return bad(i, "chunk extension too long");
                }
            }
            self.phase = match (self.phase, b) {
                (Phase::Size, _) if b.is_ascii_hexdigit() => {
                    if self.digits == 16 {
                        return bad(i, "chunk size too large");
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                    Phase::Size
                }
                (Phase::Size, _) if self.digits == 0 => return bad(i, "invalid chunk size"),
                (Phase::Size | Phase::SizeSpace, b' ' | b'\t') => Phase::SizeSpace,
                (Phase::Size | Phase::SizeSpace, b';') => Phase::NameStart,
                (
                    Phase::Size
                    | Phase::SizeSpace
                    | Phase::Name
                    | Phase::NameSpace
                    | Phase::Token
                    | Phase::ValueSpace,
                    b'\r',
                ) => Phase::SizeLf,
                (Phase::Size | Phase::SizeSpace, _) => return bad(i, "invalid chunk size"),
                (Phase::NameStart, _) if is_space(b) => Phase::NameStart,
                (Phase::NameStart | Phase::Name, _) if is_tchar(b) => Phase::Name,
                (Phase::Name | Phase::NameSpace, _) if is_space(b) => Phase::NameSpace,
                (Phase::Name | Phase::NameSpace, b'=') => Phase::ValueStart,
                (Phase::Name | Phase::NameSpace | Phase::Token | Phase::ValueSpace, b';') => {
                    Phase::NameStart
                }
                (Phase::ValueStart, _) if is_space(b) => Phase::ValueStart,
                (Phase::ValueStart, b'"') => Phase::Quoted,
                (Phase::ValueStart | Phase::Token, _) if is_tchar(b) => Phase::Token,
                (Phase::Token | Phase::ValueSpace, _) if is_space(b) => Phase::ValueSpace,
                (Phase::Quoted, b'"') => Phase::ValueSpace,
                (Phase::Quoted, b'\\') => Phase::Escape,
                (Phase::Quoted, _) if b == b'\t' || (b >= b' ' && b != 0x7f) => Phase::Quoted,
                (Phase::Escape, _) if b == b'\t' || (b >= b' ' && b != 0x7f) => Phase::Quoted,
                (Phase::SizeLf, b'\n') if self.size == 0 => Phase::TrailerStart,
                (Phase::SizeLf, b'\n') => {
                    self.total = self.total.saturating_add(self.size);
                    if max_body.is_some_and(|max| self.total > max) {
                        return Err((i, too_large()));
                    }
                    self.extension = 0;
                    Phase::Data
                }
                (Phase::SizeLf, _) => return bad(i, "chunk size line must end in CRLF"),
                (Phase::DataCr, b'\r') => Phase::DataLf,
                (Phase::DataLf, b'\n') => {
                    self.digits = 0;
                    Phase::Size
                }
                (Phase::DataCr | Phase::DataLf, _) => {
                    return bad(i, "chunk data must end in CRLF");
                }
                (Phase::TrailerStart, b'\r') => Phase::EndLf,
                (Phase::EndLf, b'\n') => {
                    *self = Self::default();
                    return Ok((i + 1, true));
                }
                (Phase::TrailerStart, _) if is_space(b) || b == b'\n' => {
                    return bad(i, "invalid trailer line");
                }
                (Phase::Trailer, b'\r') => Phase::TrailerLf,
                (Phase::TrailerStart | Phase::Trailer, b'\n') => {
                    return bad(i, "trailer line must end in CRLF");
                }
                (Phase::TrailerStart | Phase::Trailer, _) => {
                    self.trailers += 1;
                    if self.trailers > MAX_HEAD {
                        return bad(i, "trailers too large");
                    }
                    Phase::Trailer
                }
                (Phase::TrailerLf, b'\n') => Phase::TrailerStart,
                (Phase::TrailerLf | Phase::EndLf, _) => {
                    return bad(i, "trailer line must end in CRLF");
                }
                (Phase::Data, _) => unreachable!("data is skipped above"),
                // Every other phase has its last arm above.
                (phase, _) => {
                    debug_assert!(phase.in_extension());
                    return bad(i, "invalid chunk extension");
                }
            };
            i += 1;
        }
        Ok((i, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the bytes that went
    /// on and the refusal, if any.
    fn run(
        max_body: Option<u64>,
        input: &[u8],
        step: usize,
    ) -> (Vec<u8>, Option<(Refusal, RefusedAt)>) {
        let mut framer = Framer::new(max_body);
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            let fed = framer.feed(piece);
            if let Some(released) = fed.released {
                out.extend_from_slice(&released);
            }
            out.extend_from_slice(&piece[fed.pass]);
            if fed.refused.is_some() {
                return (out, fed.refused);
            }
        }
        (out, None)
    }

    const PIPELINE: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
        POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;name=value;q=\"a \\\"b\\\"\"\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
        GET /d HTTP/1.0\r\n\r\n";

    #[test]
    fn a_valid_pipeline_passes_unchanged_however_it_is_split() {
        for step in [1, 2, 3, 7, 16, 64, PIPELINE.len()] {
            let (out, refused) = run(None, PIPELINE, step);
            assert_eq!(refused, None, "step {step}");
            assert_eq!(out, PIPELINE, "step {step}");
        }
        let mut framer = Framer::new(None);
        assert!(
            framer.feed(PIPELINE).is_whole(PIPELINE.len()),
            "no copy when whole"
        );
        assert_eq!(framer.waiting(), Waiting::Idle);
    }

    #[test]
    fn a_partial_head_is_held_back_until_complete() {
        let mut framer = Framer::new(None);
        let fed = framer.feed(b"GET / HTTP/1.1\r\nHo");
        assert_eq!(fed.pass, 0..0);
        assert_eq!(framer.waiting(), Waiting::Head);
        let fed = framer.feed(b"st: x\r\n\r\nGET");
        assert_eq!(
            fed.released.as_deref(),
            Some(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..])
        );
        assert_eq!(fed.pass, 9..9, "the next head's start is held back");
        assert_eq!(framer.waiting(), Waiting::Head);
        // Blank lines between requests are not a head yet.
        let mut framer = Framer::new(None);
        framer.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n");
        assert_eq!(framer.waiting(), Waiting::Idle);
    }

    #[test]
    fn the_http2_preface_switches_to_passthrough() {
        for step in [1, 5, 100] {
            let input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04garbage";
            let (out, refused) = run(None, input, step);
            assert_eq!(refused, None);
            assert_eq!(out, input);
        }
        // Only the idle time is followed from then on.
        let mut framer = Framer::new(None);
        framer.feed(PREFACE);
        assert!(framer.is_http2() && !framer.is_passthrough());
        assert_eq!(framer.waiting(), Waiting::Idle);
        // Something that merely starts like it is parsed as HTTP/1.
        let (_, refused) = run(None, b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n", 3);
        assert_eq!(refused, None);
        let (_, refused) = run(None, b"PRX\r\n\r\n", 1);
        assert!(refused.is_some());
    }

    #[test]
    fn smuggling_heads_are_refused_before_any_of_them_passes() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            let mut input = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
            input.extend_from_slice(head);
            for step in [1, 9, input.len()] {
                let (out, refused) = run(None, &input, step);
                let (refusal, at) = refused.expect("refused");
                assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
                assert_eq!(at, RefusedAt::Head);
                assert_eq!(out, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n", "only the good request passed");
            }
        }
    }

    #[test]
    fn bad_chunks_are_refused_where_they_go_wrong() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        for (body, why) in [
            (&b"zz\r\nhello\r\n0\r\n\r\n"[..], "invalid chunk size"),
            (b"5;=v\r\nhello\r\n0\r\n\r\n", "invalid chunk extension"),
            (b"5;a b\r\nhello\r\n0\r\n\r\n", "invalid chunk extension"),
            (b"5;a=\"x\r\nhello\r\n0\r\n\r\n", "invalid chunk extension"),
            (b"5\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (
                b"5\r\rhello\r\n0\r\n\r\n",
                "chunk size line must end in CRLF",
            ),
            (b"5\r\nhello!\r\n0\r\n\r\n", "chunk data must end in CRLF"),
            (b"11111111111111111\r\n", "chunk size too large"),
            (b"0\r\nX: 1\n\r\n", "trailer line must end in CRLF"),
        ] {
            for step in [1, 4, 1000] {
                let mut input = head.to_vec();
                input.extend_from_slice(body);
                let (out, refused) = run(None, &input, step);
                let (refusal, at) = refused.unwrap_or_else(|| panic!("{why}: accepted"));
                assert_eq!(refusal.reason, why);
                assert_eq!(at, RefusedAt::Body);
                assert!(out.starts_with(head) && out.len() < input.len(), "{why}");
            }
        }
    }

    #[test]
    fn bodies_over_the_limit_are_refused() {
        let (out, refused) = run(
            Some(4),
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            100,
        );
        assert_eq!(
            refused.map(|r| (r.0.status, r.1)),
            Some((StatusCode::PAYLOAD_TOO_LARGE, RefusedAt::Head))
        );
        assert!(out.is_empty());
        let chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n";
        let (_, refused) = run(Some(4), chunked, 5);
        assert_eq!(
            refused.map(|r| (r.0.status, r.1)),
            Some((StatusCode::PAYLOAD_TOO_LARGE, RefusedAt::Body))
        );
        let (out, refused) = run(Some(6), chunked, 5);
        assert_eq!((out.as_slice(), refused), (&chunked[..], None));
    }

    #[test]
    fn oversized_heads_get_431_and_long_targets_414() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let (_, refused) = run(None, big.as_bytes(), 4096);
        assert_eq!(
            refused.map(|r| r.0.status),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let many: String = (0..=crate::wire::head::MAX_HEADERS)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let (_, refused) = run(
            None,
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
            512,
        );
        assert_eq!(
            refused.map(|r| r.0.status),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
        let (_, refused) = run(None, long.as_bytes(), 1000);
        assert_eq!(refused.map(|r| r.0.status), Some(StatusCode::URI_TOO_LONG));
    }

    #[test]
    fn an_upgrade_stops_the_following() {
        let input = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello not http";
        let (out, refused) = run(None, input, 7);
        assert_eq!((out.as_slice(), refused), (&input[..], None));
    }
}
