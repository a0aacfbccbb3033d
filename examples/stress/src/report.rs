//! Counting outcomes and summing them up. Each worker keeps its own
//! [`Tally`] (no shared counters on the request path); the tallies are merged
//! once at the end into a [`Report`], which prints as compact text or
//! serialises to JSON.

use std::{
    borrow::Cow,
    cmp::Ordering,
    collections::{BTreeMap, HashMap},
    fmt,
    time::Duration,
};

use hdrhistogram::Histogram;
use http::StatusCode;
use serde::{Serialize, Serializer};

use crate::Error;

/// Name under which responses that do not say which backend served them
/// are counted.
pub const UNIDENTIFIED: &str = "(none)";

/// Why a request got no HTTP response, in words for people ("connection
/// refused"): static for the common causes, so counting them allocates
/// nothing.
pub(crate) type Reason = Cow<'static, str>;

/// The reason given for requests that time out.
pub(crate) const TIMED_OUT: &str = "timed out";

/// Why a request got no HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection: refused, unreachable, or the handshake failed.
    Connect(Reason),
    /// No complete response within the per-request timeout.
    Timeout,
    /// The connection broke while the request or response was in transit.
    Io(Reason),
}

/// One worker's counts. Merged into a [`Report`] at the end of the run.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    /// Latency of every HTTP response, in microseconds.
    latency: Histogram<u64>,
    successes: u64,
    client_errors: BTreeMap<u16, u64>,
    server_errors: BTreeMap<u16, u64>,
    connect: u64,
    timeout: u64,
    io: u64,
    /// Requests without a response, by reason.
    reasons: HashMap<Reason, u64>,
    /// Responses per backend name (raw bytes, as they came off the wire).
    backends: HashMap<Box<[u8]>, u64>,
    unidentified: u64,
}

impl Tally {
    /// An empty tally. The histogram resizes itself as latencies come in,
    /// so an idle worker costs a few kilobytes, not a full range's worth.
    pub(crate) fn new() -> Result<Self, Error> {
        Ok(Self {
            latency: Histogram::new(3)?,
            successes: 0,
            client_errors: BTreeMap::new(),
            server_errors: BTreeMap::new(),
            connect: 0,
            timeout: 0,
            io: 0,
            reasons: HashMap::new(),
            backends: HashMap::new(),
            unidentified: 0,
        })
    }

    /// Counts a response served by the backend named `name` (empty: none).
    pub(crate) fn backend(&mut self, name: &[u8]) {
        if name.is_empty() {
            self.unidentified += 1;
        } else if let Some(count) = self.backends.get_mut(name) {
            *count += 1;
        } else {
            self.backends.insert(name.into(), 1);
        }
    }

    /// Counts one finished request: its status, or why it has none.
    pub(crate) fn record(&mut self, outcome: Result<StatusCode, Failure>, latency: Duration) {
        match outcome {
            Ok(status) => {
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                if self.latency.record(micros).is_err() {
                    // Only past u64::MAX µs; clamp rather than lose the sample.
                    self.latency.saturating_record(micros);
                }
                let code = status.as_u16();
                if status.is_server_error() {
                    *self.server_errors.entry(code).or_default() += 1;
                } else if status.is_client_error() {
                    *self.client_errors.entry(code).or_default() += 1;
                } else {
                    self.successes += 1;
                }
            }
            Err(failure) => {
                let reason = match failure {
                    Failure::Connect(reason) => {
                        self.connect += 1;
                        reason
                    }
                    Failure::Timeout => {
                        self.timeout += 1;
                        Cow::Borrowed(TIMED_OUT)
                    }
                    Failure::Io(reason) => {
                        self.io += 1;
                        reason
                    }
                };
                *self.reasons.entry(reason).or_default() += 1;
            }
        }
    }

    /// Adds `other`'s counts to these.
    pub(crate) fn merge(&mut self, other: Self) {
        // Cannot fail: the histogram resizes itself to fit `other`'s range.
        let _ = self.latency.add(&other.latency);
        self.successes += other.successes;
        for (code, count) in other.client_errors {
            *self.client_errors.entry(code).or_default() += count;
        }
        for (code, count) in other.server_errors {
            *self.server_errors.entry(code).or_default() += count;
        }
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.io += other.io;
        for (reason, count) in other.reasons {
            *self.reasons.entry(reason).or_default() += count;
        }
        for (name, count) in other.backends {
            *self.backends.entry(name).or_default() += count;
        }
        self.unidentified += other.unidentified;
    }

    /// The summary of these counts over a run that took `elapsed`.
    pub(crate) fn into_report(self, run: RunInfo, elapsed: Duration) -> Report {
        let failures = Failures {
            total: self.client_errors.values().sum::<u64>()
                + self.server_errors.values().sum::<u64>()
                + self.connect
                + self.timeout
                + self.io,
            client_errors: self.client_errors,
            server_errors: self.server_errors,
            connect: self.connect,
            timeout: self.timeout,
            io: self.io,
            reasons: self
                .reasons
                .into_iter()
                .map(|(reason, count)| (reason.into_owned(), count))
                .collect(),
        };
        let total = self.successes + failures.total;
        let latency = (!self.latency.is_empty()).then(|| Latency::of(&self.latency));

        let mut named: BTreeMap<String, u64> = BTreeMap::new();
        for (name, count) in self.backends {
            // Distinct byte strings can decode to the same lossy text.
            *named
                .entry(String::from_utf8_lossy(&name).into_owned())
                .or_default() += count;
        }
        let mut named: Vec<(String, u64)> = named.into_iter().collect();
        named.sort_by(|(a, _), (b, _)| natural_cmp(a, b));
        if self.unidentified > 0 {
            named.push((UNIDENTIFIED.to_owned(), self.unidentified));
        }
        let responses: u64 = named.iter().map(|(_, count)| count).sum();
        let backends = named
            .into_iter()
            .map(|(name, count)| Backend {
                name,
                count,
                share: percent(count, responses),
            })
            .collect();

        Report {
            url: run.url,
            method: run.method,
            concurrency: run.concurrency,
            rate: run.rate,
            interrupted: run.interrupted,
            total,
            successes: self.successes,
            failures,
            elapsed,
            rps: per_second(total, elapsed),
            success_rps: per_second(self.successes, elapsed),
            latency,
            backends,
        }
    }
}

/// What the report says about how the run was set up.
#[derive(Debug, Clone)]
pub(crate) struct RunInfo {
    pub(crate) url: String,
    pub(crate) method: String,
    pub(crate) concurrency: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) interrupted: bool,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target URL.
    pub url: String,
    /// Request method.
    pub method: String,
    /// Connections used.
    pub concurrency: usize,
    /// Target request rate (requests per second), if one was set.
    pub rate: Option<f64>,
    /// Whether the run was stopped early (Ctrl-C): the figures cover the
    /// requests completed until then.
    pub interrupted: bool,
    /// Requests completed: `successes + failures.total`. Requests abandoned
    /// when the run stopped (duration over, interrupted) are not counted.
    pub total: u64,
    /// Responses with a status below 400 (2xx and 3xx).
    pub successes: u64,
    /// Requests that failed, by kind.
    pub failures: Failures,
    /// Wall-clock time of the run.
    #[serde(rename = "elapsed_s", serialize_with = "seconds")]
    pub elapsed: Duration,
    /// Completed requests per second, failures included (JSON `rps`). The
    /// text report's headline is [`success_rps`](Self::success_rps).
    pub rps: f64,
    /// Successful responses (status below 400) per second: the rate the
    /// target actually served (JSON `success_rps`).
    pub success_rps: f64,
    /// Latency of the HTTP responses (any status); `None` if there were
    /// none. Failures without a response are not included.
    pub latency: Option<Latency>,
    /// Responses per backend, in natural order of the names ("2" before
    /// "10"), with [`UNIDENTIFIED`] last.
    pub backends: Vec<Backend>,
}

/// Failed requests, by kind. Each request is counted under exactly one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Failures {
    /// Sum of all the kinds below.
    pub total: u64,
    /// 4xx responses, by status code.
    pub client_errors: BTreeMap<u16, u64>,
    /// 5xx responses, by status code.
    pub server_errors: BTreeMap<u16, u64>,
    /// Requests that found no connection: refused, unreachable, handshake
    /// failed.
    pub connect: u64,
    /// Requests without a complete response within the timeout.
    pub timeout: u64,
    /// Requests whose connection broke (closed, reset) in transit.
    pub io: u64,
    /// The requests without a response (`connect`, `timeout`, `io`) by
    /// reason, e.g. `"connection refused": 50`, `"timed out": 2`,
    /// `"TLS handshake failed: invalid peer certificate: UnknownIssuer"`.
    pub reasons: BTreeMap<String, u64>,
}

impl Report {
    /// Whether the run went as it should: at least one request succeeded
    /// and none failed. The binary exits 0 exactly when this holds.
    pub fn all_succeeded(&self) -> bool {
        self.successes > 0 && self.failures.total == 0
    }

    /// The most frequent cause of failure and how many requests it failed:
    /// a reason such as `connection refused`, or an error status such as
    /// `HTTP 503 Service Unavailable`. `None` if nothing failed. Ties go to
    /// the reason first in alphabetical order.
    pub fn most_common_failure(&self) -> Option<(String, u64)> {
        let statuses = self
            .failures
            .server_errors
            .iter()
            .chain(&self.failures.client_errors)
            .map(|(&code, &count)| (status_text(code), count));
        let reasons = self
            .failures
            .reasons
            .iter()
            .map(|(reason, &count)| (reason.clone(), count));
        statuses
            .chain(reasons)
            .filter(|&(_, count)| count > 0)
            .min_by(|(a, x), (b, y)| y.cmp(x).then_with(|| a.cmp(b)))
    }
}

/// `HTTP 503 Service Unavailable`, or just `HTTP 599` for a code without a
/// standard reason phrase.
fn status_text(code: u16) -> String {
    match StatusCode::from_u16(code)
        .ok()
        .and_then(|status| status.canonical_reason())
    {
        Some(reason) => format!("HTTP {code} {reason}"),
        None => format!("HTTP {code}"),
    }
}

/// Latency figures in milliseconds, recorded with microsecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Fastest response.
    pub min_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest response.
    pub max_ms: f64,
}

impl Latency {
    fn of(micros: &Histogram<u64>) -> Self {
        #[expect(clippy::cast_precision_loss, reason = "microsecond counts fit in f64")]
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            min_ms: ms(micros.min()),
            mean_ms: micros.mean().round() / 1000.0,
            p50_ms: ms(micros.value_at_quantile(0.50)),
            p90_ms: ms(micros.value_at_quantile(0.90)),
            p99_ms: ms(micros.value_at_quantile(0.99)),
            max_ms: ms(micros.max()),
        }
    }
}

/// One backend's share of the responses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backend {
    /// The backend's name, as the response gave it.
    pub name: String,
    /// Responses it served.
    pub count: u64,
    /// Its percentage of all responses.
    pub share: f64,
}

fn seconds<S: Serializer>(elapsed: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(elapsed.as_secs_f64())
}

#[expect(clippy::cast_precision_loss, reason = "request counts fit in f64")]
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[expect(clippy::cast_precision_loss, reason = "request counts fit in f64")]
fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Compares names the way people number replicas: runs of digits by their
/// numeric value ("2" < "10", "app-9" < "app-10"), everything else byte by
/// byte. Equal only for equal strings ("01" and "1" differ: shorter first).
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (digits_a, rest_a) = split_digits(a);
                let (digits_b, rest_b) = split_digits(b);
                let (value_a, value_b) = (strip_zeros(digits_a), strip_zeros(digits_b));
                let order = value_a
                    .len()
                    .cmp(&value_b.len())
                    .then_with(|| value_a.cmp(value_b))
                    .then_with(|| digits_a.len().cmp(&digits_b.len()));
                if order.is_ne() {
                    return order;
                }
                (a, b) = (rest_a, rest_b);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(s.len());
    s.split_at(end)
}

fn strip_zeros(digits: &[u8]) -> &[u8] {
    let start = digits
        .iter()
        .position(|&c| c != b'0')
        .unwrap_or(digits.len());
    &digits[start..]
}

impl fmt::Display for Report {
    /// A few lines for people: totals, failures by kind, latency, and the
    /// backends as a map and a table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.interrupted {
            writeln!(f, "interrupted: counting the requests completed so far")?;
        }
        write!(
            f,
            "{} {}: {} requests in {:.3} s, ",
            self.method,
            self.url,
            self.total,
            self.elapsed.as_secs_f64(),
        )?;
        // The rate is of successful responses: failures (refused
        // connections above all) come back fast and would inflate it.
        if self.successes > 0 {
            write!(f, "{:.1} successful req/s, ", self.success_rps)?;
        }
        write!(f, "{} connections", self.concurrency)?;
        if let Some(rate) = self.rate {
            write!(f, ", target {rate} req/s")?;
        }
        writeln!(f)?;
        if self.total == 0 {
            writeln!(f, "no request completed")?;
        } else if self.successes == 0 {
            write!(f, "no request succeeded")?;
            if let Some((reason, count)) = self.most_common_failure() {
                write!(
                    f,
                    "; most common failure: {reason} ({count} of {})",
                    self.total
                )?;
            }
            writeln!(f)?;
        }

        write!(
            f,
            "ok {} ({:.1}%), failed {}",
            self.successes,
            percent(self.successes, self.total),
            self.failures.total
        )?;
        let failures = &self.failures;
        let kinds: Vec<String> = failures
            .server_errors
            .iter()
            .chain(&failures.client_errors)
            .map(|(code, count)| format!("{code}: {count}"))
            .chain(
                [
                    ("connect", failures.connect),
                    ("timeout", failures.timeout),
                    ("io", failures.io),
                ]
                .into_iter()
                .filter(|&(_, count)| count > 0)
                .map(|(kind, count)| format!("{kind}: {count}")),
            )
            .collect();
        if !kinds.is_empty() {
            write!(f, " ({})", kinds.join(", "))?;
        }
        writeln!(f)?;
        if !failures.reasons.is_empty() {
            let mut reasons: Vec<(&String, &u64)> = failures.reasons.iter().collect();
            reasons.sort_by(|(a, x), (b, y)| y.cmp(x).then_with(|| a.cmp(b)));
            let reasons: Vec<String> = reasons
                .into_iter()
                .map(|(reason, count)| format!("{reason}: {count}"))
                .collect();
            writeln!(f, "no response: {}", reasons.join(", "))?;
        }

        if let Some(l) = &self.latency {
            write!(
                f,
                "latency ms: min {:.3}, p50 {:.3}, p90 {:.3}, p99 {:.3}, max {:.3}",
                l.min_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            )?;
            if self.rate.is_some() {
                write!(f, " (corrected for coordinated omission)")?;
            }
            writeln!(f)?;
        }

        if self.backends.is_empty() {
            return Ok(());
        }
        let map: Vec<String> = self
            .backends
            .iter()
            .map(|b| format!("{}: {}", b.name, b.count))
            .collect();
        writeln!(f, "\nbackends: {{{}}}", map.join(", "))?;
        let name_width = self
            .backends
            .iter()
            .map(|b| b.name.chars().count())
            .chain([7])
            .max()
            .unwrap_or(7);
        let count_width = self
            .backends
            .iter()
            .map(|b| b.count.to_string().len())
            .chain([9])
            .max()
            .unwrap_or(9);
        writeln!(
            f,
            "  {:<name_width$}  {:>count_width$}   share",
            "backend", "responses"
        )?;
        for b in &self.backends {
            writeln!(
                f,
                "  {:<name_width$}  {:>count_width$}  {:>5.1}%",
                b.name, b.count, b.share
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut names = vec!["10", "2", "app-10", "app-9", "1", "b", "a", "01", "app-09"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            ["1", "01", "2", "10", "a", "app-9", "app-09", "app-10", "b"]
        );
        assert_eq!(natural_cmp("x1y", "x1y"), Ordering::Equal);
    }

    fn tally() -> Tally {
        Tally::new().expect("histogram")
    }

    #[test]
    fn counts_by_kind_and_backend() {
        let ms = Duration::from_millis;
        let mut a = tally();
        for name in ["10", "2", "2", "", "1"] {
            a.backend(name.as_bytes());
            a.record(Ok(StatusCode::OK), ms(1));
        }
        a.record(Ok(StatusCode::SERVICE_UNAVAILABLE), ms(3));
        a.record(Err(Failure::Connect("connection refused".into())), ms(0));
        let mut b = tally();
        b.backend(b"2");
        b.record(Ok(StatusCode::NOT_FOUND), ms(2));
        b.record(Err(Failure::Timeout), ms(0));
        b.record(Err(Failure::Io("connection reset".into())), ms(0));
        b.record(Ok(StatusCode::FOUND), ms(2));
        a.merge(b);

        let run = RunInfo {
            url: "http://h/".into(),
            method: "GET".into(),
            concurrency: 2,
            rate: None,
            interrupted: false,
        };
        let report = a.into_report(run, Duration::from_secs(2));
        assert_eq!((report.total, report.successes), (11, 6));
        assert_eq!(report.failures.total, 5);
        assert_eq!(report.failures.server_errors, BTreeMap::from([(503, 1)]));
        assert_eq!(report.failures.client_errors, BTreeMap::from([(404, 1)]));
        assert_eq!(
            (
                report.failures.connect,
                report.failures.timeout,
                report.failures.io
            ),
            (1, 1, 1)
        );
        assert!((report.rps - 5.5).abs() < 1e-9);
        assert!((report.success_rps - 3.0).abs() < 1e-9);
        assert_eq!(
            report.failures.reasons,
            BTreeMap::from([
                ("connection refused".to_owned(), 1),
                ("connection reset".to_owned(), 1),
                ("timed out".to_owned(), 1),
            ])
        );
        assert!(!report.all_succeeded());
        // Five kinds, one each: the tie goes to the first alphabetically.
        assert_eq!(
            report.most_common_failure(),
            Some(("HTTP 404 Not Found".to_owned(), 1))
        );
        let latency = report.latency.expect("responses were recorded");
        // Three significant digits: 3 ms lands in a 2 µs wide bucket.
        assert_eq!(latency.min_ms, 1.0);
        assert!((latency.max_ms - 3.0).abs() < 0.003, "{latency:?}");

        let backends: Vec<(&str, u64)> = report
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.count))
            .collect();
        assert_eq!(backends, [("1", 1), ("2", 3), ("10", 1), ("(none)", 1)]);
        assert!((report.backends[1].share - 50.0).abs() < 1e-9);

        let text = report.to_string();
        assert!(
            text.contains("backends: {1: 1, 2: 3, 10: 1, (none): 1}"),
            "{text}"
        );
        assert!(
            text.contains("failed 5 (503: 1, 404: 1, connect: 1, timeout: 1, io: 1)"),
            "{text}"
        );
        assert!(
            text.contains(": 11 requests in 2.000 s, 3.0 successful req/s, 2 connections"),
            "{text}"
        );
        assert!(
            text.contains("no response: connection refused: 1, connection reset: 1, timed out: 1"),
            "{text}"
        );
    }

    #[test]
    fn nothing_succeeded_says_why_instead_of_a_rate() {
        let mut a = tally();
        for _ in 0..48 {
            a.record(
                Err(Failure::Connect("connection refused".into())),
                Duration::ZERO,
            );
        }
        a.record(Err(Failure::Timeout), Duration::ZERO);
        a.record(Ok(StatusCode::BAD_GATEWAY), Duration::from_millis(1));
        let run = RunInfo {
            url: "http://h/".into(),
            method: "GET".into(),
            concurrency: 5,
            rate: None,
            interrupted: false,
        };
        let report = a.into_report(run, Duration::from_millis(2));

        assert!(!report.all_succeeded());
        assert_eq!(
            report.most_common_failure(),
            Some(("connection refused".to_owned(), 48))
        );
        let text = report.to_string();
        assert!(!text.contains("req/s"), "{text}");
        assert!(
            text.contains("GET http://h/: 50 requests in 0.002 s, 5 connections\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "no request succeeded; most common failure: connection refused (48 of 50)"
            ),
            "{text}"
        );
    }

    #[test]
    fn nothing_completed_is_said_too() {
        let run = RunInfo {
            url: "http://h/".into(),
            method: "GET".into(),
            concurrency: 1,
            rate: None,
            interrupted: true,
        };
        let report = tally().into_report(run, Duration::from_secs(1));
        assert!(!report.all_succeeded());
        assert_eq!(report.most_common_failure(), None);
        let text = report.to_string();
        assert!(text.contains("no request completed"), "{text}");
        assert!(!text.contains("req/s"), "{text}");
    }
}
