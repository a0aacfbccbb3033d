//! What a run does: the target, the request, how many and how fast, and how
//! the backend that served each response is recognised. Everything is parsed
//! and validated here, once, so the request loop only clones ready-made parts.

use std::{fmt, num::NonZeroUsize, path::PathBuf, str::FromStr, time::Duration};

use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Uri,
    uri::{Authority, PathAndQuery, Scheme},
};

use crate::Error;

/// Requests sent when neither a count nor a duration is given.
pub const DEFAULT_REQUESTS: u64 = 1000;
/// Connections (one in-flight request each) when none is given.
pub const DEFAULT_CONCURRENCY: NonZeroUsize = NonZeroUsize::new(10).expect("10 is not zero");
/// Per-request timeout when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Response headers naming the backend when `--by` is not given, the first
/// one present winning: `x-upstream`, then `x-backend` (which Switchyard's
/// demo backends and `examples/backend` set).
pub const DEFAULT_BACKEND_HEADERS: &str = "x-upstream,x-backend";

/// A complete description of a run, as [`run`](crate::run) takes it.
///
/// Build one with [`Options::new`] and adjust the public fields, or parse the
/// command line with [`Cli`](crate::Cli) and convert it.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the requests go.
    pub target: Target,
    /// Total requests to send. With neither this nor `duration`,
    /// [`DEFAULT_REQUESTS`].
    pub requests: Option<u64>,
    /// Stop after this long; with `requests` too, whichever comes first.
    /// Requests still in flight then are abandoned and not counted.
    pub duration: Option<Duration>,
    /// Connections, each with one request in flight. Default 10.
    pub concurrency: NonZeroUsize,
    /// Fixed request rate in requests per second (open loop, see
    /// [`Cli::rate`](crate::Cli::rate)); `None` sends each connection's next
    /// request as soon as its previous response is in.
    pub rate: Option<f64>,
    /// Request method. Default `GET`.
    pub method: Method,
    /// Extra request headers. A `host` header here replaces the one derived
    /// from the URL.
    pub headers: HeaderMap,
    /// How long one request may take, connecting included. Default 10 s.
    pub timeout: Duration,
    /// What in a response names the backend that served it.
    pub by: BackendKey,
    /// Draw a progress bar on stderr while running (only if stderr is a
    /// terminal). Default `false`; the command line turns it on.
    pub progress: bool,
    /// Speak HTTP/2: with prior knowledge over `http://`, negotiated by
    /// ALPN (`h2`) over `https://`. Default `false`: HTTP/1.1.
    pub http2: bool,
    /// For `https://`: trust the certificates in this PEM file instead of
    /// the system's roots. Ignored for `http://`.
    pub ca: Option<PathBuf>,
    /// For `https://`: accept any server certificate (the handshake's
    /// signatures are still checked). Ignored for `http://`.
    pub insecure: bool,
}

impl Options {
    /// Options for `target` with every other setting at its default.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            requests: None,
            duration: None,
            concurrency: DEFAULT_CONCURRENCY,
            rate: None,
            method: Method::GET,
            headers: HeaderMap::new(),
            timeout: DEFAULT_TIMEOUT,
            by: BackendKey::default(),
            progress: false,
            http2: false,
            ca: None,
            insecure: false,
        }
    }

    /// The request limit in effect: `requests`, or [`DEFAULT_REQUESTS`] when
    /// no `duration` bounds the run either.
    pub fn request_limit(&self) -> Option<u64> {
        match (self.requests, self.duration) {
            (None, None) => Some(DEFAULT_REQUESTS),
            (requests, _) => requests,
        }
    }
}

/// A parsed `http://` or `https://host[:port][/path][?query]` URL.
#[derive(Debug, Clone)]
pub struct Target {
    url: String,
    tls: bool,
    host: String,
    port: u16,
    host_header: HeaderValue,
    path: PathAndQuery,
}

impl Target {
    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the URL is `https://`: TLS to the target.
    pub fn is_https(&self) -> bool {
        self.tls
    }

    /// Host name or IP address to connect to (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// TCP port to connect to (80 for `http://`, 443 for `https://`, unless
    /// the URL names one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `Host` header sent: the URL's authority without user info.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// The request target sent on the request line (origin form).
    pub fn path_and_query(&self) -> &PathAndQuery {
        &self.path
    }

    /// The URI put on each request: origin form, as HTTP/1.1 sends it to a
    /// server (or proxy) that is not a forward proxy.
    pub(crate) fn origin_form(&self) -> Uri {
        Uri::from(self.path.clone())
    }

    /// The URI put on each HTTP/2 request: absolute form, from which the
    /// `:scheme`, `:authority` and `:path` pseudo-headers are taken.
    /// `authority` is the `Host` header in effect (the URL's, or `-H
    /// Host:`); `None` if that is not a valid authority.
    pub(crate) fn absolute_form(&self, authority: &HeaderValue) -> Option<Uri> {
        let authority = Authority::try_from(authority.as_bytes()).ok()?;
        let scheme = if self.tls {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(self.path.clone())
            .build()
            .ok()
    }
}

/// The URL forms a [`Target`] takes, for error messages.
const EXPECTED_URL: &str = "http://host[:port][/path] or https://...";

impl FromStr for Target {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| {
            invalid(&format!("{e}; expected {EXPECTED_URL}"))
        })?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(invalid(&format!(
                    "unsupported scheme `{other}`, expected http:// or https://"
                )));
            }
            None => {
                return Err(invalid(&format!("missing scheme, expected {EXPECTED_URL}")));
            }
        };
        let authority = uri
            .authority()
            .filter(|authority| !authority.host().is_empty())
            .ok_or_else(|| invalid(&format!("missing host, expected {EXPECTED_URL}")))?;
        let port = match authority.port() {
            None if tls => 443,
            None => 80,
            Some(port) => port
                .as_str()
                .parse()
                .map_err(|_| invalid(&format!("invalid port `{port}`")))?,
        };
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|host| host.strip_suffix(']'))
            .unwrap_or(host);
        let without_userinfo = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, rest)| rest);
        let host_header = HeaderValue::from_str(without_userinfo)
            .map_err(|_| invalid("the host is not a valid Host header"))?;
        let path = match uri.path_and_query() {
            Some(path) if !path.as_str().is_empty() => path.clone(),
            _ => PathAndQuery::from_static("/"),
        };
        Ok(Self {
            url: url.to_owned(),
            tls,
            host: host.to_owned(),
            port,
            host_header,
            path,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// What in a response names the backend that served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKey {
    /// The value of the first of these response headers that the response
    /// has (default `x-upstream`, then `x-backend`).
    Headers(Vec<HeaderName>),
    /// The response body, trimmed of surrounding whitespace (its first
    /// [`MAX_BODY_KEY`] bytes).
    Body,
}

/// How much of a response body `--by body` keeps as the backend's name.
pub const MAX_BODY_KEY: usize = 256;

impl Default for BackendKey {
    fn default() -> Self {
        Self::Headers(vec![
            HeaderName::from_static("x-upstream"),
            HeaderName::from_static("x-backend"),
        ])
    }
}

impl FromStr for BackendKey {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Error> {
        if value.eq_ignore_ascii_case("body") {
            return Ok(Self::Body);
        }
        value
            .split(',')
            .map(|name| HeaderName::from_str(name.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::Headers)
            .map_err(|_| Error::InvalidBy {
                value: value.to_owned(),
            })
    }
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Headers(names) => {
                let names: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
                f.write_str(&names.join(","))
            }
            Self::Body => f.write_str("body"),
        }
    }
}

/// Parses a `Name: value` request header, as `-H` takes it (curl style).
pub fn parse_header(header: &str) -> Result<(HeaderName, HeaderValue), Error> {
    let invalid = |reason: &str| Error::InvalidHeader {
        header: header.to_owned(),
        reason: reason.to_owned(),
    };
    let (name, value) = header
        .split_once(':')
        .ok_or_else(|| invalid("expected `Name: value`"))?;
    let name = HeaderName::from_str(name.trim()).map_err(|_| invalid("invalid header name"))?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| invalid("invalid header value"))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<Target, String> {
        url.parse::<Target>().map_err(|e| e.to_string())
    }

    #[test]
    fn parses_plain_http_urls() {
        let t = target("http://127.0.0.1:8080/a/b?c=d").expect("valid");
        assert_eq!((t.host(), t.port()), ("127.0.0.1", 8080));
        assert_eq!(t.host_header(), "127.0.0.1:8080");
        assert_eq!(t.path_and_query().as_str(), "/a/b?c=d");

        let t = target("http://example.com").expect("valid");
        assert_eq!((t.host(), t.port()), ("example.com", 80));
        assert_eq!(t.host_header(), "example.com");
        assert_eq!(t.path_and_query().as_str(), "/");

        let t = target("http://user:pw@[::1]:81/").expect("valid");
        assert_eq!((t.host(), t.port()), ("::1", 81));
        assert_eq!(t.host_header(), "[::1]:81");
        assert!(!t.is_https());
    }

    #[test]
    fn parses_https_urls() {
        let t = target("https://example.com/x").expect("valid");
        assert!(t.is_https());
        assert_eq!((t.host(), t.port()), ("example.com", 443));
        let t = target("https://127.0.0.1:8443").expect("valid");
        assert_eq!((t.host(), t.port()), ("127.0.0.1", 8443));
        let uri = t.absolute_form(t.host_header()).expect("authority");
        assert_eq!(uri.to_string(), "https://127.0.0.1:8443/");
    }

    #[test]
    fn refuses_what_it_cannot_speak() {
        for (url, expected) in [
            ("ftp://example.com/", "unsupported scheme `ftp`"),
            ("example.com:8080", "missing scheme"),
            ("/just/a/path", "missing scheme"),
            ("http://", "expected http://host"),
            ("http://exa mple.com/", "expected http://host"),
        ] {
            let error = target(url).expect_err(url);
            assert!(error.contains(expected), "{url}: {error}");
        }
    }

    #[test]
    fn parses_headers_and_backend_keys() {
        let (name, value) = parse_header("X-Test:  a b ").expect("valid");
        assert_eq!(
            (name.as_str(), value.to_str().ok()),
            ("x-test", Some("a b"))
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": empty name").is_err());

        assert_eq!("body".parse::<BackendKey>().ok(), Some(BackendKey::Body));
        assert_eq!(
            "X-Backend".parse::<BackendKey>().ok(),
            Some(BackendKey::Headers(vec![HeaderName::from_static(
                "x-backend"
            )]))
        );
        let default: BackendKey = DEFAULT_BACKEND_HEADERS.parse().expect("valid");
        assert_eq!(default, BackendKey::default());
        assert_eq!(default.to_string(), "x-upstream,x-backend");
        assert!("bad header".parse::<BackendKey>().is_err());
        assert!("a,".parse::<BackendKey>().is_err());
    }
}
