//! Request traces for the simulator: read from a file (the proxy's own
//! access log, as JSON lines or as text, or Switchyard's trace format) or
//! generated (Poisson arrivals from a number of clients).
//!
//! Every line of a file is one of:
//!
//! - an access-log line of `switchyard run --log-format json` (an object
//!   with `"target":"access"`): the request arrived at `timestamp` (when the
//!   line was written, i.e. when the response ended) minus `duration_ms`;
//!   `client`, `method` and `path` (with the query) are replayed, and
//!   `duration_ms` is the recorded latency (`--latency recorded`);
//! - the same line in the text log format (`2026-11-22T03:56:47.353354Z
//!   INFO access: access client=... method=... path=... upstream="..."
//!   ... duration_ms=...`), ANSI colours allowed;
//! - any other log line (another target): skipped and counted;
//! - a trace line: a JSON object with `at_ms` (arrival, milliseconds from
//!   the start of the trace), `client` (an IP address), and optionally
//!   `method` (`GET`), `path` (`/`, may carry `?query`), `host`, `headers`
//!   (an object of name to value) and `duration_ms` (recorded latency);
//!   unknown keys are errors;
//! - a blank line or a `#` comment.
//!
//! Access-log lines name no headers (they are not logged), so strategies
//! that read headers need trace lines.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;

use super::model::Rng;

/// One request of a trace.
#[derive(Debug, Clone)]
pub(crate) struct TraceRequest {
    /// Arrival, nanoseconds after the start of the trace.
    pub(crate) at_ns: u64,
    pub(crate) client: IpAddr,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    /// The latency the trace recorded for it, if any.
    pub(crate) recorded_ns: Option<u64>,
}

impl TraceRequest {
    /// A request at `at_ns` from `client` for `GET /`.
    pub(crate) fn get(at_ns: u64, client: IpAddr) -> Self {
        Self {
            at_ns,
            client,
            method: Method::GET,
            uri: Uri::from_static("/"),
            headers: HeaderMap::new(),
            recorded_ns: None,
        }
    }

    /// The request head a strategy reads through the `request` imports.
    pub(crate) fn parts(&self) -> Parts {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.headers = self.headers.clone();
        parts
    }
}

/// Why a trace file cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TraceError {
    /// The file is missing or unreadable.
    #[error("cannot read trace {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// One line is malformed.
    #[error("{path}:{line}: {error}")]
    Line {
        path: PathBuf,
        line: usize,
        error: LineError,
    },
    /// Nothing to replay.
    #[error("{path}: no requests to replay{}", skipped_summary(skipped))]
    Empty {
        path: PathBuf,
        /// Lines not replayed, by reason.
        skipped: BTreeMap<&'static str, u64>,
    },
}

/// ` (skipped: 3 other log lines, ...)`, or nothing when no line was
/// skipped.
fn skipped_summary(skipped: &BTreeMap<&'static str, u64>) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let counts: Vec<String> = skipped.iter().map(|(k, v)| format!("{v} {k}")).collect();
    format!(" (skipped: {})", counts.join(", "))
}

/// What is wrong with one line of a trace file ([`TraceError::Line`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LineError {
    /// Starts with `{` but does not parse.
    #[error("not valid JSON: {0}")]
    Json(serde_json::Error),
    /// JSON, but not an object.
    #[error("expected a JSON object")]
    NotAnObject,
    /// A JSON object that is neither a log line nor a valid trace line.
    #[error("not a trace line: {0}")]
    TraceLine(serde_json::Error),
    /// Neither JSON nor a log line.
    #[error(
        "not a trace line (expected a JSON object, or a log line starting with an RFC 3339 timestamp)"
    )]
    Unrecognised,
    /// A JSON access-log line without a field the replay needs.
    #[error("access-log line without `{0}`")]
    MissingJsonField(&'static str),
    /// A JSON access-log line whose `duration_ms` is missing or not a
    /// number.
    #[error("access-log line without a numeric `duration_ms`")]
    NoDuration,
    /// A text access-log line without a field the replay needs.
    #[error("access-log line without `{0}=`")]
    MissingTextField(&'static str),
    /// A text access-log line whose `duration_ms=` is not a number.
    #[error("`duration_ms={0}` is not a number")]
    DurationNotANumber(String),
    /// The access-log line's timestamp does not parse.
    #[error(transparent)]
    Timestamp(#[from] TimestampError),
    /// `client` is not an IP address.
    #[error("client {0:?} is not an IP address")]
    Client(String),
    /// `method` is not an HTTP method.
    #[error("method {0:?} is not a method")]
    Method(String),
    /// `path` is not a request target.
    #[error("path {text:?} is not a request target: {error}")]
    Path {
        text: String,
        error: http::uri::InvalidUri,
    },
    /// A trace line's `host` cannot be a header value.
    #[error("`host` {0:?} is not a valid header value")]
    Host(String),
    /// A trace line's `headers` names something that is not a header name.
    #[error("`headers`: {0:?} is not a header name")]
    HeaderName(String),
    /// A trace line's `headers` has a value that cannot be a header value.
    #[error("`headers.{name}`: {value:?} is not a valid header value")]
    HeaderValue { name: String, value: String },
    /// `at_ms` or `duration_ms` is negative, not finite or absurdly large.
    #[error("`{key}` must be a non-negative number of milliseconds, not {ms}")]
    Milliseconds { key: &'static str, ms: f64 },
    /// Trace lines and access-log lines in one file.
    #[error(
        "mixes trace lines (`at_ms`) with access-log lines (line {other} is the other kind): their times cannot be compared"
    )]
    MixedClocks {
        /// The first line of the other kind.
        other: usize,
    },
    /// A trace line without `at_ms`, and no `--rate` to give it one.
    #[error("no `at_ms`: give every trace line an arrival time, or re-time the trace with --rate")]
    NoArrival,
}

/// A timestamp that is not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an RFC 3339 timestamp")]
pub(crate) struct TimestampError {
    /// The text, as found.
    text: String,
}

/// What was read from a trace file.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// In arrival order.
    pub(crate) requests: Vec<TraceRequest>,
    /// Lines by kind: `access-json`, `access-text`, `trace`.
    pub(crate) kinds: BTreeMap<&'static str, u64>,
    /// Lines not replayed, by reason.
    pub(crate) skipped: BTreeMap<&'static str, u64>,
}

/// How to read a trace file.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReadOptions {
    /// Replay only access-log lines of this upstream.
    pub(crate) upstream: Option<String>,
    /// Arrival times will be replaced (`--rate`): lines need no `at_ms`.
    pub(crate) retimed: bool,
}

/// Where a request's arrival time came from; one file uses one clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// Wall-clock time of an access log, nanoseconds since the epoch.
    Log,
    /// `at_ms` offsets of trace lines.
    Offset,
}

struct Parsed {
    at_ns: Option<i128>,
    clock: Clock,
    request: TraceRequest,
}

/// Reads a trace file; errors name the file and the line.
pub(crate) fn read(path: &Path, options: &ReadOptions) -> Result<Loaded, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|error| TraceError::Read {
        path: path.to_owned(),
        error,
    })?;
    parse(&text, path, options)
}

/// Parses the text of a trace file (see the module documentation).
pub(crate) fn parse(text: &str, path: &Path, options: &ReadOptions) -> Result<Loaded, TraceError> {
    let mut loaded = Loaded::default();
    let mut parsed: Vec<Parsed> = Vec::new();
    let mut clock: Option<(Clock, usize)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let fail = |error: LineError| TraceError::Line {
            path: path.to_owned(),
            line,
            error,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let outcome = if trimmed.starts_with('{') {
            parse_json_line(trimmed, options)
        } else {
            parse_text_line(&strip_ansi(trimmed), options)
        }
        .map_err(fail)?;
        match outcome {
            Line::Skip(reason) => *loaded.skipped.entry(reason).or_insert(0) += 1,
            Line::Request(kind, request) => {
                match clock {
                    None => clock = Some((request.clock, line)),
                    Some((first, first_line)) if first != request.clock => {
                        return Err(fail(LineError::MixedClocks { other: first_line }));
                    }
                    Some(_) => {}
                }
                if request.at_ns.is_none() && !options.retimed {
                    return Err(fail(LineError::NoArrival));
                }
                *loaded.kinds.entry(kind).or_insert(0) += 1;
                parsed.push(*request);
            }
        }
    }
    if parsed.is_empty() {
        return Err(TraceError::Empty {
            path: path.to_owned(),
            skipped: loaded.skipped,
        });
    }
    // Access logs are written in completion order: sort by arrival (stable,
    // so equal times keep the file's order).
    if parsed.iter().all(|p| p.at_ns.is_some()) {
        parsed.sort_by_key(|p| p.at_ns);
        let start = parsed.first().and_then(|p| p.at_ns).unwrap_or(0);
        for p in &mut parsed {
            let offset = p.at_ns.unwrap_or(start) - start;
            p.request.at_ns = u64::try_from(offset).unwrap_or(u64::MAX);
        }
    }
    loaded.requests = parsed.into_iter().map(|p| p.request).collect();
    Ok(loaded)
}

enum Line {
    Request(&'static str, Box<Parsed>),
    Skip(&'static str),
}

/// A JSON line: an access-log line, another log line, or a trace line.
fn parse_json_line(line: &str, options: &ReadOptions) -> Result<Line, LineError> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(LineError::Json)?;
    let Some(object) = value.as_object() else {
        return Err(LineError::NotAnObject);
    };
    if let Some(target) = object.get("target") {
        if target != "access" {
            return Ok(Line::Skip("other log lines"));
        }
        let fields = object
            .get("fields")
            .and_then(|f| f.as_object())
            .ok_or(LineError::MissingJsonField("fields"))?;
        let text = |key: &'static str| -> Result<String, LineError> {
            match fields.get(key) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(other) => Ok(other.to_string()),
                None => Err(LineError::MissingJsonField(key)),
            }
        };
        let timestamp = object
            .get("timestamp")
            .and_then(|t| t.as_str())
            .ok_or(LineError::MissingJsonField("timestamp"))?;
        let duration_ms = fields
            .get("duration_ms")
            .and_then(serde_json::Value::as_f64)
            .ok_or(LineError::NoDuration)?;
        let access = Access {
            timestamp,
            client: &text("client")?,
            method: &text("method")?,
            path: &text("path")?,
            upstream: &text("upstream")?,
            duration_ms,
        };
        return access.into_line("access-json", options);
    }
    let line: TraceLine = serde_json::from_value(value).map_err(LineError::TraceLine)?;
    line.into_parsed()
        .map(|p| Line::Request("trace", Box::new(p)))
}

/// A text log line: an access line is replayed, other log lines skipped,
/// anything else is an error.
fn parse_text_line(line: &str, options: &ReadOptions) -> Result<Line, LineError> {
    let mut words = line.split_whitespace();
    let timestamp = words.next().unwrap_or_default();
    if parse_timestamp(timestamp).is_err() {
        return Err(LineError::Unrecognised);
    }
    let Some((_, access)) = line.split_once(" access: ") else {
        return Ok(Line::Skip("other log lines"));
    };
    let fields = text_fields(access);
    let get = |key: &'static str| {
        fields
            .get(key)
            .map(String::as_str)
            .ok_or(LineError::MissingTextField(key))
    };
    let duration = get("duration_ms")?;
    let access = Access {
        timestamp,
        client: get("client")?,
        method: get("method")?,
        path: get("path")?,
        upstream: get("upstream")?,
        duration_ms: duration
            .parse()
            .map_err(|_| LineError::DurationNotANumber(duration.to_owned()))?,
    };
    access.into_line("access-text", options)
}

/// `key=value key="quoted \"value\""` as tracing's text format writes
/// fields (strings quoted with Rust escapes, displayed values bare). The
/// text is untrusted: it is cut only where a character starts.
fn text_fields(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, after_word) = rest.split_at_checked(word_end).unwrap_or((rest, ""));
        let Some((key, _)) = word.split_once('=') else {
            // The message, or a word without a value.
            rest = after_word.trim_start();
            continue;
        };
        let after = rest.get(key.len() + 1..).unwrap_or_default();
        let key = key.to_owned();
        let (value, left) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, 't')) => value.push('\t'),
                        Some((_, other)) => value.push(other),
                        None => {}
                    },
                    other => value.push(other),
                }
            }
            (value, quoted.get(end..).unwrap_or_default())
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            let (value, left) = after.split_at_checked(end).unwrap_or((after, ""));
            (value.to_owned(), left)
        };
        fields.insert(key, value);
        rest = left.trim_start();
    }
    fields
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), which the text log
/// format has when it was written to a terminal.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The fields of an access-log line that a replay uses.
struct Access<'a> {
    timestamp: &'a str,
    client: &'a str,
    method: &'a str,
    path: &'a str,
    upstream: &'a str,
    duration_ms: f64,
}

impl Access<'_> {
    fn into_line(self, kind: &'static str, options: &ReadOptions) -> Result<Line, LineError> {
        if self.upstream.is_empty() {
            return Ok(Line::Skip("requests without an upstream (404)"));
        }
        if options
            .upstream
            .as_deref()
            .is_some_and(|u| u != self.upstream)
        {
            return Ok(Line::Skip("requests of other upstreams"));
        }
        let ended = parse_timestamp(self.timestamp)?;
        let duration = duration_ns(self.duration_ms, "duration_ms")?;
        let request = TraceRequest {
            at_ns: 0,
            client: parse_client(self.client)?,
            method: parse_method(self.method)?,
            uri: parse_path(self.path)?,
            headers: HeaderMap::new(),
            recorded_ns: Some(duration),
        };
        Ok(Line::Request(
            kind,
            Box::new(Parsed {
                at_ns: Some(ended - i128::from(duration)),
                clock: Clock::Log,
                request,
            }),
        ))
    }
}

/// A line of Switchyard's own trace format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceLine {
    at_ms: Option<f64>,
    client: String,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    duration_ms: Option<f64>,
}

impl TraceLine {
    fn into_parsed(self) -> Result<Parsed, LineError> {
        let mut headers = HeaderMap::new();
        if let Some(host) = &self.host {
            let value = HeaderValue::from_str(host).map_err(|_| LineError::Host(host.clone()))?;
            headers.insert(http::header::HOST, value);
        }
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| LineError::HeaderName(name.clone()))?;
            let value = HeaderValue::from_str(value).map_err(|_| LineError::HeaderValue {
                name: name.clone(),
                value: value.clone(),
            })?;
            headers.append(header, value);
        }
        let at_ns = self
            .at_ms
            .map(|ms| duration_ns(ms, "at_ms").map(i128::from))
            .transpose()?;
        Ok(Parsed {
            at_ns,
            clock: Clock::Offset,
            request: TraceRequest {
                at_ns: 0,
                client: parse_client(&self.client)?,
                method: parse_method(self.method.as_deref().unwrap_or("GET"))?,
                uri: parse_path(self.path.as_deref().unwrap_or("/"))?,
                headers,
                recorded_ns: self
                    .duration_ms
                    .map(|ms| duration_ns(ms, "duration_ms"))
                    .transpose()?,
            },
        })
    }
}

fn parse_client(text: &str) -> Result<IpAddr, LineError> {
    text.parse().map_err(|_| LineError::Client(text.to_owned()))
}

fn parse_method(text: &str) -> Result<Method, LineError> {
    Method::from_bytes(text.as_bytes()).map_err(|_| LineError::Method(text.to_owned()))
}

fn parse_path(text: &str) -> Result<Uri, LineError> {
    text.parse().map_err(|error| LineError::Path {
        text: text.to_owned(),
        error,
    })
}

/// Milliseconds (non-negative, finite) as nanoseconds.
fn duration_ns(ms: f64, key: &'static str) -> Result<u64, LineError> {
    if !(ms.is_finite() && (0.0..1e12).contains(&ms)) {
        return Err(LineError::Milliseconds { key, ms });
    }
    Ok((ms * 1e6).round() as u64)
}

/// An RFC 3339 timestamp (`2026-11-22T03:56:47.353354Z`, or with an offset
/// such as `+01:00`) as nanoseconds since the Unix epoch. The text is
/// untrusted: its fixed places are read as bytes or with `get`, never by
/// slicing where a character may not start.
pub(crate) fn parse_timestamp(text: &str) -> Result<i128, TimestampError> {
    let bad = || TimestampError {
        text: text.to_owned(),
    };
    let bytes = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<i64, TimestampError> {
        let part = text.get(range).ok_or_else(bad)?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad());
    }
    if second > 60 {
        return Err(bad());
    }
    let mut rest = text.get(19..).ok_or_else(bad)?;
    let mut nanos: i128 = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        for (i, b) in fraction.bytes().take(digits).enumerate() {
            if i < 9 {
                nanos = nanos * 10 + i128::from(b - b'0');
            }
        }
        nanos *= 10i128.pow(9u32.saturating_sub(digits as u32));
        rest = fraction.get(digits..).ok_or_else(bad)?;
    }
    // Two ASCII digits (a byte of a multi-byte character is never one).
    let two = |tens: u8, ones: u8| {
        (tens.is_ascii_digit() && ones.is_ascii_digit())
            .then(|| i64::from(tens - b'0') * 10 + i64::from(ones - b'0'))
    };
    let offset_s: i64 = match *rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (Some(hours), Some(minutes)) = (two(h1, h2), two(m1, m2)) else {
                return Err(bad());
            };
            if hours > 23 || minutes > 59 {
                return Err(bad());
            }
            let sign = if sign == b'-' { -1 } else { 1 };
            sign * (hours * 3600 + minutes * 60)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Ok(i128::from(seconds) * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`, <http://howardhinnant.github.io/date_algorithms.html>).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Gives the requests new arrival times: Poisson at `rate` per second, in
/// their current order.
pub(crate) fn retime(requests: &mut [TraceRequest], rate: f64, rng: &mut Rng) {
    let mut clock = Poisson::new(rate);
    for r in requests {
        r.at_ns = clock.next(rng);
    }
}

/// Arrival times of a Poisson process (exponential gaps).
#[derive(Debug, Clone)]
struct Poisson {
    mean_gap_ns: f64,
    now: f64,
    first: bool,
}

impl Poisson {
    fn new(rate: f64) -> Self {
        Self {
            mean_gap_ns: 1e9 / rate,
            now: 0.0,
            first: true,
        }
    }

    /// The next arrival; the first is at 0.
    fn next(&mut self, rng: &mut Rng) -> u64 {
        if self.first {
            self.first = false;
        } else {
            self.now += self.mean_gap_ns * rng.exponential();
        }
        self.now.round() as u64
    }
}

/// What `--generate` makes.
#[derive(Debug, Clone)]
pub(crate) struct Generate {
    pub(crate) requests: u64,
    pub(crate) clients: u32,
    pub(crate) rate: f64,
    pub(crate) paths: u32,
    /// Each request gets one of the values of each header, uniformly.
    pub(crate) headers: Vec<(HeaderName, Vec<HeaderValue>)>,
}

/// The address of generated client `k`: distinct for k < 2^20, spread over
/// 172.16.0.0/12 (an odd multiplier is a bijection modulo 2^20), so that
/// neighbouring clients are not in the same /24.
pub(crate) fn client_address(k: u32) -> IpAddr {
    let spread = (k.wrapping_add(1)).wrapping_mul(0x9E37_79B1) & 0xF_FFFF;
    IpAddr::V4(Ipv4Addr::from(0xAC10_0000 | spread))
}

/// Most distinct generated clients.
pub(crate) const MAX_CLIENTS: u32 = 1 << 20;

impl Generate {
    /// The generated requests, one at a time (a long trace is never held in
    /// memory).
    pub(crate) fn iter(&self, rng: Rng) -> impl Iterator<Item = TraceRequest> + '_ {
        let mut clock = Poisson::new(self.rate);
        let mut rng = rng;
        (0..self.requests).map(move |_| {
            let at_ns = clock.next(&mut rng);
            let client = client_address(rng.below(u64::from(self.clients.max(1))) as u32);
            let mut request = TraceRequest::get(at_ns, client);
            if self.paths > 1 {
                let path = format!("/p/{}", rng.below(u64::from(self.paths)) + 1);
                if let Ok(uri) = path.parse() {
                    request.uri = uri;
                }
            }
            for (name, values) in &self.headers {
                let i = rng.below(values.len() as u64) as usize;
                if let Some(value) = values.get(i) {
                    request.headers.append(name.clone(), value.clone());
                }
            }
            request
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, String> {
        parse(text, Path::new("t.log"), &ReadOptions::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn timestamps_are_nanoseconds_since_the_epoch() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_timestamp("2000-03-01T00:00:01.5Z"),
            Ok((951_868_800 + 1) * 1_000_000_000 + 500_000_000)
        );
        assert_eq!(
            parse_timestamp("1970-01-01T01:00:00.000001+01:00"),
            Ok(1_000)
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_timestamps_are_errors_wherever_a_multi_byte_character_falls() {
        let date = "2026-01-01T00:00:00";
        let mut bad = Vec::new();
        // Each character of the offset, and of the fraction before it,
        // replaced by characters of 2, 3 and 4 bytes (a letter, an
        // Arabic-Indic and a fullwidth digit, an emoji), keeping the length
        // in bytes where the rest allows: the parser's fixed places then
        // fall inside the character.
        for tail in ["+01:00", ".5+01:00", "-12:30"] {
            let chars: Vec<char> = tail.chars().collect();
            for at in 0..chars.len() {
                for wide in ['\u{e9}', '\u{663}', '\u{ff10}', '\u{1f600}'] {
                    let covered = wide.len_utf8();
                    let mut offset: String = chars[..at].iter().collect();
                    offset.push(wide);
                    offset.extend(chars.iter().skip(at + covered));
                    bad.push(format!("{date}{offset}"));
                    let mut inserted: String = chars[..at].iter().collect();
                    inserted.push(wide);
                    inserted.extend(&chars[at..]);
                    bad.push(format!("{date}{inserted}"));
                }
            }
        }
        // And in the date and time.
        for at in 0..date.len() {
            let mut text = date.to_owned();
            text.replace_range(at..=at, "\u{e9}");
            bad.push(format!("{text}Z"));
            text.pop();
            bad.push(format!("{text}Z"));
        }
        // Two-digit fields that are not two digits, or out of range.
        for offset in [
            "+01:0", "+01:000", "+0100", "+01-00", "+-1:00", "++1:00", "+1:000", "+24:00",
            "+01:60", "01:00", "Zz", ".", ".Z", ".5",
        ] {
            bad.push(format!("{date}{offset}"));
        }
        for text in &bad {
            assert!(parse_timestamp(text).is_err(), "{text:?} was accepted");
            let line = format!("{text} INFO access: access client=1.2.3.4");
            let err = load(&line).expect_err(text);
            assert!(
                err.starts_with("t.log:1: not a trace line"),
                "{text}: {err}"
            );
        }
        assert_eq!(
            parse_timestamp("1970-01-01T00:00:00-00:30"),
            Ok(1_800_000_000_000)
        );
        assert_eq!(
            parse_timestamp("1970-01-01T00:00:00+23:59"),
            Ok(-86_340_000_000_000)
        );
    }

    #[test]
    fn text_fields_with_multi_byte_characters_anywhere_are_read_whole() {
        let fields = text_fields(
            "access k\u{e9}=v\u{e9} q=\"\u{e9}\\\"\u{663}\" \u{ff10}=\u{1f600} open=\"\u{e9}",
        );
        assert_eq!(fields["k\u{e9}"], "v\u{e9}");
        assert_eq!(fields["q"], "\u{e9}\"\u{663}");
        assert_eq!(fields["\u{ff10}"], "\u{1f600}");
        assert_eq!(fields["open"], "\u{e9}");
        let line = "2026-01-01T00:00:00Z INFO access: access client=\u{e9} method=GET path=/ upstream=\"a\" duration_ms=1";
        assert!(
            load(line)
                .expect_err("client")
                .contains("t.log:1: client \"\u{e9}\"")
        );
    }

    #[test]
    fn access_log_lines_in_both_formats_replay_in_arrival_order() {
        // Written in completion order: the second line arrived first.
        let text = concat!(
            r#"{"timestamp":"2026-11-22T03:56:50.058788Z","level":"INFO","fields":{"message":"switchyard is serving","listen":"127.0.0.1:1"},"target":"switchyard"}"#,
            "\n",
            r#"{"timestamp":"2026-11-22T03:56:51.100000Z","level":"INFO","fields":{"message":"access","client":"10.0.0.7","method":"GET","path":"/a?b=1","upstream":"app","backend":"-","status":200,"duration_ms":50.0,"retries":0,"complete":true},"target":"access"}"#,
            "\n",
            "\u{1b}[2m2026-11-22T03:56:51.080000Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2maccess\u{1b}[0m\u{1b}[2m:\u{1b}[0m access \u{1b}[3mclient\u{1b}[0m\u{1b}[2m=\u{1b}[0m10.0.0.8 method=POST path=/x upstream=\"app\" backend=\"-\" status=200 duration_ms=20.5 retries=0 complete=true\n",
            "2026-11-22T03:56:51.090000Z  INFO access: access client=10.0.0.9 method=GET path=/ upstream=\"\" backend=\"-\" status=404 duration_ms=0.1 retries=0 complete=true\n",
            "\n# a comment\n",
        );
        let loaded = load(text).expect("parses");
        assert_eq!(loaded.requests.len(), 2);
        let first = &loaded.requests[0];
        assert_eq!(first.client.to_string(), "10.0.0.7");
        assert_eq!(first.uri, "/a?b=1");
        assert_eq!(first.at_ns, 0);
        assert_eq!(first.recorded_ns, Some(50_000_000));
        let second = &loaded.requests[1];
        assert_eq!(second.method, Method::POST);
        // Arrived 51.0595 s vs 51.05 s.
        assert_eq!(second.at_ns, 9_500_000);
        assert_eq!(loaded.kinds.get("access-json"), Some(&1));
        assert_eq!(loaded.kinds.get("access-text"), Some(&1));
        assert_eq!(loaded.skipped.get("other log lines"), Some(&1));
        assert_eq!(
            loaded.skipped.get("requests without an upstream (404)"),
            Some(&1)
        );
    }

    #[test]
    fn trace_lines_carry_headers_and_host() {
        let text = r#"{"at_ms": 2.5, "client": "2001:db8::1", "method": "PUT", "path": "/k", "host": "shop.example", "headers": {"x-tenant": "a"}, "duration_ms": 3}
{"at_ms": 1, "client": "192.0.2.1"}"#;
        let loaded = load(text).expect("parses");
        let [first, second] = &loaded.requests[..] else {
            panic!("two requests: {:?}", loaded.requests);
        };
        assert_eq!(first.client.to_string(), "192.0.2.1");
        assert_eq!(first.method, Method::GET);
        assert_eq!(second.at_ns, 1_500_000);
        assert_eq!(second.headers["x-tenant"], "a");
        assert_eq!(second.headers["host"], "shop.example");
        assert_eq!(second.recorded_ns, Some(3_000_000));
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let cases = [
            (
                "{\"at_ms\": 1, \"client\": \"1.2.3.4\"}\n{oops",
                "t.log:2: not valid JSON",
            ),
            (
                "{\"at_ms\": 1, \"client\": \"nobody\"}",
                "t.log:1: client \"nobody\"",
            ),
            (
                "{\"at_ms\": 1, \"client\": \"1.2.3.4\", \"pth\": \"/\"}",
                "unknown field `pth`",
            ),
            ("{\"client\": \"1.2.3.4\"}", "t.log:1: no `at_ms`"),
            (
                "{\"at_ms\": -1, \"client\": \"1.2.3.4\"}",
                "`at_ms` must be",
            ),
            ("GET / HTTP/1.1", "t.log:1: not a trace line"),
            (
                "2026-11-22T03:56:51Z INFO access: access client=1.2.3.4",
                "without `duration_ms=`",
            ),
            ("", "no requests to replay"),
        ];
        for (text, needle) in cases {
            let err = load(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
        let mixed = "{\"at_ms\": 1, \"client\": \"1.2.3.4\"}\n2026-11-22T03:56:51Z INFO access: access client=1.2.3.4 method=GET path=/ upstream=\"a\" duration_ms=1";
        assert!(load(mixed).expect_err("mixed").contains("t.log:2: mixes"));
    }

    #[test]
    fn an_upstream_filter_and_retiming() {
        let text = "2026-11-22T03:56:51Z INFO access: access client=1.2.3.4 method=GET path=/ upstream=\"a\" duration_ms=1\n\
                    2026-11-22T03:56:52Z INFO access: access client=1.2.3.4 method=GET path=/ upstream=\"b\" duration_ms=1\n";
        let options = ReadOptions {
            upstream: Some("b".into()),
            retimed: false,
        };
        let loaded = parse(text, Path::new("t"), &options).expect("parses");
        assert_eq!(loaded.requests.len(), 1);
        assert_eq!(loaded.skipped.get("requests of other upstreams"), Some(&1));

        let untimed = "{\"client\": \"1.2.3.4\"}\n{\"client\": \"1.2.3.5\"}";
        assert!(load(untimed).is_err(), "needs at_ms without --rate");
        let options = ReadOptions {
            upstream: None,
            retimed: true,
        };
        let mut loaded = parse(untimed, Path::new("t"), &options).expect("parses");
        retime(&mut loaded.requests, 10.0, &mut Rng::new(1, 1));
        assert_eq!(loaded.requests[0].at_ns, 0);
        assert!(loaded.requests[1].at_ns > 0);
        assert_eq!(loaded.requests[1].client.to_string(), "1.2.3.5");
    }

    #[test]
    fn generated_traces_are_deterministic_and_use_every_client() {
        let generate = Generate {
            requests: 2000,
            clients: 10,
            rate: 1000.0,
            paths: 3,
            headers: vec![(
                HeaderName::from_static("x-tenant"),
                vec![HeaderValue::from_static("a"), HeaderValue::from_static("b")],
            )],
        };
        let run = |seed| generate.iter(Rng::new(seed, 1)).collect::<Vec<_>>();
        let (a, b) = (run(5), run(5));
        let key = |r: &TraceRequest| (r.at_ns, r.client, r.uri.to_string(), r.headers.clone());
        assert!(
            a.iter().map(key).eq(b.iter().map(key)),
            "same seed, same trace"
        );
        assert!(a.windows(2).all(|w| w[0].at_ns <= w[1].at_ns), "in order");
        let clients: std::collections::BTreeSet<_> = a.iter().map(|r| r.client).collect();
        assert_eq!(clients.len(), 10);
        // 2000 requests at 1000/s span about 2 s.
        let span = a.last().map_or(0, |r| r.at_ns) as f64 / 1e9;
        assert!((1.8..2.2).contains(&span), "{span}");
        assert!(a.iter().any(|r| r.headers["x-tenant"] == "b"));
        assert!(a.iter().any(|r| r.uri == "/p/3"));
        let distinct: std::collections::BTreeSet<_> =
            (0..MAX_CLIENTS).step_by(997).map(client_address).collect();
        assert_eq!(distinct.len(), (0..MAX_CLIENTS).step_by(997).count());
    }
}
