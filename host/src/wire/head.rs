//! Where the parts of an HTTP/1 head parsed in place lie in their buffer,
//! so that the head can be taken off the buffer whole and each part
//! sliced from it without a copy (the request heads the front's own server
//! reads, the response heads the own upstream client reads); and a
//! backend's response fields passed to the client as they came
//! ([`RawFields`]).

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Buf, Bytes};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use smallvec::SmallVec;

/// Most header fields in one head, request or response (hyper's default
/// too): a request with more is refused with 431, a response with more is
/// the backend's failure.
pub const MAX_HEADERS: usize = 100;

/// The request's host without port: `Host` header, else the URI authority
/// (HTTP/2 `:authority`). Empty when neither is present or valid.
pub fn host_of(parts: &Parts) -> &str {
    let raw = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    strip_port(raw)
}

/// `host` without its `:port`, if it has one.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop `:port`.
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// How many field places a parser keeps on the stack; a head with more
/// spills them to the heap.
pub const INLINE_FIELDS: usize = 16;

/// A part's place in its head: where it starts, and its length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Place {
    start: u32,
    len: u32,
}

/// Where one field's name and value are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Field {
    /// The field name, as sent.
    pub name: Place,
    /// The value, without the spaces around it.
    pub value: Place,
}

impl Place {
    /// Where `part`, a slice of `head`, lies in it. A part from anywhere
    /// else (never the case) is an empty place.
    pub fn of(head: &[u8], part: &[u8]) -> Place {
        let start = (part.as_ptr() as usize).checked_sub(head.as_ptr() as usize);
        match start.and_then(|s| Some((u32::try_from(s).ok()?, u32::try_from(part.len()).ok()?))) {
            Some((start, len)) if start as usize + len as usize <= head.len() => {
                Place { start, len }
            }
            _ => Place::default(),
        }
    }

    /// The part itself, in `head` (empty if out of it).
    pub fn part(self, head: &[u8]) -> &[u8] {
        head.get(self.range()).unwrap_or_default()
    }

    /// Its byte range in the head.
    pub fn range(self) -> Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }

    /// The part itself, from the head taken off the buffer it was
    /// measured in (empty if out of it).
    pub fn slice(self, head: &Bytes) -> Bytes {
        let range = self.range();
        if range.end <= head.len() {
            head.slice(range)
        } else {
            Bytes::new()
        }
    }
}

/// Where the parts of a request head lie in the bytes it was parsed from:
/// the strict front parses each head once, and the own server builds its
/// request from these places (see [`crate::wire::front::Guard::with_head_places`]).
#[derive(Debug, Default)]
pub struct RequestHead {
    /// The head's length, its empty last line included.
    pub len: usize,
    /// The method, as sent.
    pub method: Place,
    /// The request target, as sent.
    pub target: Place,
    /// The `x` of HTTP/1.x.
    pub minor: u8,
    /// The fields, in order.
    pub fields: SmallVec<[Field; INLINE_FIELDS]>,
}

impl RequestHead {
    /// No head yet.
    pub const fn new() -> Self {
        let nowhere = Place { start: 0, len: 0 };
        RequestHead {
            len: 0,
            method: nowhere,
            target: nowhere,
            minor: 0,
            fields: SmallVec::new_const(),
        }
    }

    /// Parses the request head at the start of `bytes` into `self`, with
    /// httparse's default (strict) rules: true once complete, false while
    /// more bytes are needed. Every place is within `bytes[..self.len]`.
    pub fn parse(&mut self, bytes: &[u8]) -> Result<bool, httparse::Error> {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let len = match request.parse_with_uninit_headers(bytes, &mut fields)? {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => return Ok(false),
        };
        let head = &bytes[..len];
        self.len = len;
        self.method = Place::of(head, request.method.unwrap_or("").as_bytes());
        self.target = Place::of(head, request.path.unwrap_or("").as_bytes());
        self.minor = request.version.unwrap_or(0);
        self.fields.clear();
        self.fields.extend(request.headers.iter().map(|f| Field {
            name: Place::of(head, f.name.as_bytes()),
            value: Place::of(head, f.value),
        }));
        Ok(true)
    }

    /// The head's fields, as (name, value), from the bytes it was parsed
    /// from (a field out of them, never the case, is empty).
    pub fn pairs<'a>(&'a self, bytes: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.fields
            .iter()
            .map(|f| (f.name.part(bytes), f.value.part(bytes)))
    }
}

/// Most lines a passed-on head may leave out. A response with more
/// hop-by-hop fields (never seen in practice: `Connection`, `Keep-Alive`
/// and `Transfer-Encoding` are the usual ones) is parsed into a
/// `HeaderMap` instead.
const MAX_CUTS: usize = 3;

/// The field lines of a backend's response head, passed on to the client
/// as the backend sent them, minus its hop-by-hop lines: nothing on the
/// proxy's path reads more of a response than its status and framing, so
/// the fields are not parsed into a `HeaderMap` only to be written out
/// again (that map and its encoding were a large share of the proxy's
/// instructions per request: examples/bench/HISTORY.md).
///
/// httparse has checked every name and value (the same rules as
/// `HeaderName` and `HeaderValue`), and [`RawFields::new`] that each line
/// ends in CRLF. A server that writes a `Response` also writes these lines
/// ([`RawFields::write`]); one that only knows the `HeaderMap` (hyper's)
/// gets them there first ([`parsed`]).
#[derive(Debug)]
pub struct RawFields {
    /// The field lines, each with its CRLF (not the status line, nor the
    /// empty line that ends the head).
    lines: Bytes,
    /// The lines left out, in order, as ranges of `lines`.
    cuts: [Place; MAX_CUTS],
    cut: u8,
    /// The body's length, as the lines' `Content-Length` says it.
    pub length: Option<u64>,
    /// Whether a `Date` line is among them.
    pub dated: bool,
}

impl RawFields {
    /// The lines of `head` (a whole response head) holding `fields`,
    /// leaving out field `i` when bit `i` of `left_out` is set; `head` back
    /// when they cannot be passed on as they are: a line ending in a bare
    /// LF, or more than `MAX_CUTS` lines to leave out.
    pub fn new(
        mut head: Bytes,
        fields: &[Field],
        left_out: u128,
        length: Option<u64>,
        dated: bool,
    ) -> Result<RawFields, Bytes> {
        let mut cuts = [Place::default(); MAX_CUTS];
        let mut cut = 0;
        let Some(first) = fields.first() else {
            let lines = Bytes::new();
            return Ok(RawFields {
                lines,
                cuts,
                cut: 0,
                length,
                dated,
            });
        };
        let start = first.name.start;
        let end = u32::try_from(head.len().saturating_sub(2)).unwrap_or(0);
        if !head.ends_with(b"\r\n") || end < start {
            return Err(head);
        }
        // Where the line after field `i` starts (`end` after the last).
        let next = |i: usize| fields.get(i + 1).map_or(end, |f| f.name.start);
        for i in 0..fields.len() {
            // Past the name: the line has at least a colon.
            let next = next(i) as usize;
            if next < 2 || head.get(next - 2) != Some(&b'\r') {
                return Err(head);
            }
        }
        // The fields to leave out, lowest first.
        let mut bits = left_out;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let Some(field) = fields.get(i) else {
                break;
            };
            if cut == MAX_CUTS {
                return Err(head);
            }
            let (from, to) = (field.name.start - start, next(i) - start);
            match cut.checked_sub(1).map(|last| &mut cuts[last]) {
                // Next to the previous cut: one cut.
                Some(last) if last.start + last.len == from => last.len += to - from,
                _ => {
                    cuts[cut] = Place {
                        start: from,
                        len: to - from,
                    };
                    cut += 1;
                }
            }
        }
        head.truncate(end as usize);
        head.advance(start as usize);
        let cut = cut as u8;
        Ok(RawFields {
            lines: head,
            cuts,
            cut,
            length,
            dated,
        })
    }

    /// The runs of lines between the cuts.
    fn runs(&self) -> impl Iterator<Item = &[u8]> {
        let cuts = &self.cuts[..usize::from(self.cut)];
        let starts = std::iter::once(0).chain(cuts.iter().map(|c| c.range().end));
        let ends = cuts
            .iter()
            .map(|c| c.range().start)
            .chain([self.lines.len()]);
        starts.zip(ends).map(|(s, e)| &self.lines[s..e])
    }

    /// Each line passed on, with its CRLF, and its name (what comes
    /// before the colon).
    fn kept(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.runs()
            .flat_map(|run| run.split_inclusive(|&b| b == b'\n'))
            .map(|line| (line.split(|&b| b == b':').next().unwrap_or(line), line))
    }

    /// Appends the lines passed on to `out`, but those with a name
    /// `replaced` has (fields the proxy set itself).
    pub fn write(&self, out: &mut Vec<u8>, replaced: &HeaderMap) {
        if replaced.is_empty() {
            for run in self.runs() {
                out.extend_from_slice(run);
            }
            return;
        }
        for (name, line) in self.kept() {
            if !replaced
                .keys()
                .any(|k| k.as_str().as_bytes().eq_ignore_ascii_case(name))
            {
                out.extend_from_slice(line);
            }
        }
    }

    /// The lines passed on as fields of `map`, before those `map` has,
    /// which replace lines of their name.
    pub fn into_map(self, map: &mut HeaderMap) {
        let replaced = std::mem::take(map);
        let mut fields = HeaderMap::with_capacity(replaced.len() + self.kept().count());
        for (name, line) in self.kept() {
            // After the name: its colon, the value, its spaces and CRLF.
            let Some(rest) = line.get(name.len() + 1..) else {
                continue;
            };
            let value = self.lines.slice_ref(rest.trim_ascii());
            let name = HeaderName::from_bytes(name);
            // Checked by httparse already: never skipped in practice.
            if let (Ok(name), Ok(value)) = (name, HeaderValue::from_maybe_shared(value)) {
                fields.append(name, value);
            }
        }
        fields.extend(replaced);
        *map = fields;
    }
}

/// A response body that may carry its head's fields unparsed.
pub trait CarriesFields {
    /// The fields passed on as the backend sent them, if the body has
    /// them; taken once.
    fn take_raw_fields(&mut self) -> Option<RawFields>;
}

/// `resp` with its body's raw fields (if any) in its `HeaderMap`, for a
/// server that writes only the map (hyper's).
pub fn parsed<B: CarriesFields>(resp: Response<B>) -> Response<B> {
    let (mut parts, mut body) = resp.into_parts();
    if let Some(raw) = body.take_raw_fields() {
        raw.into_map(&mut parts.headers);
    }
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn a_place_finds_its_part_again_and_a_stranger_is_empty() {
        let head = Bytes::from_static(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        let place = Place::of(&head, &head[4..6]);
        assert_eq!(place.slice(&head), "/x");
        assert_eq!(Place::of(&head, b"elsewhere"), Place::default());
        assert_eq!(Place::of(&head[..4], &head[2..8]), Place::default());
    }

    /// The fields of `head`, found as httparse finds them.
    fn fields_of(head: &[u8]) -> Vec<Field> {
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut fields);
        assert!(parsed.parse(head).expect("a head").is_complete());
        parsed
            .headers
            .iter()
            .map(|f| Field {
                name: Place::of(head, f.name.as_bytes()),
                value: Place::of(head, f.value),
            })
            .collect()
    }

    fn raw(text: &'static str, left_out: u128) -> Result<RawFields, Bytes> {
        let head = Bytes::from_static(text.as_bytes());
        let fields = fields_of(&head);
        RawFields::new(head, &fields, left_out, None, false)
    }

    fn written(raw: &RawFields, replaced: &HeaderMap) -> String {
        let mut out = Vec::new();
        raw.write(&mut out, replaced);
        String::from_utf8(out).expect("text")
    }

    #[test]
    fn raw_fields_pass_on_their_lines_but_the_cut_ones() {
        let text = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\
                    X-A:  1 \r\nTE: x\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nUpgrade: y\r\n\r\n";
        // The first two cuts are next to each other: one cut.
        let fields = raw(text, 0b100_1011).expect("passed on");
        assert_eq!(fields.cut, 3);
        let none = HeaderMap::new();
        assert_eq!(
            written(&fields, &none),
            "X-A:  1 \r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        );
        // The proxy's own fields replace the backend's of their name.
        let mut mine = HeaderMap::new();
        mine.insert("x-a", HeaderValue::from_static("mine"));
        assert_eq!(
            written(&fields, &mine),
            "Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        );
        fields.into_map(&mut mine);
        let cookies: Vec<_> = mine.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(mine.get_all("x-a").iter().collect::<Vec<_>>(), ["mine"]);
        assert_eq!(mine.len(), 3);
        // Nothing cut, nothing at all.
        let all = raw("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n", 0).expect("passed on");
        assert_eq!(written(&all, &none), "A: 1\r\nB: 2\r\n");
        let empty = raw("HTTP/1.1 204 No Content\r\n\r\n", 0).expect("passed on");
        assert_eq!(written(&empty, &none), "");
        let mut map = HeaderMap::new();
        empty.into_map(&mut map);
        assert!(map.is_empty());
    }

    #[test]
    fn raw_fields_refuse_bare_line_feeds_and_many_cuts() {
        for bare in [
            "HTTP/1.1 200 OK\r\nA: 1\nB: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\n",
            "HTTP/1.1 200 OK\nA: 1\nB: 2\n\n",
        ] {
            assert!(raw(bare, 0).is_err(), "{bare:?}");
        }
        let text =
            "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\n\r\n";
        assert!(raw(text, 0b101_0101).is_err(), "four cuts");
        let three = raw(text, 0b001_0101).expect("three cuts");
        assert_eq!(
            written(&three, &HeaderMap::new()),
            "B: 2\r\nD: 4\r\nF: 6\r\nG: 7\r\n"
        );
        let beyond = raw(text, 1 << 100).expect("no field there");
        assert_eq!(beyond.cut, 0);
        let merged = raw(text, 0b111_1111).expect("one cut");
        assert_eq!(written(&merged, &HeaderMap::new()), "");
    }
}
