//! Why a run could not start. Failures of individual requests are not errors:
//! they are counted in the [`Report`](crate::Report).

/// A run that could not start: bad options or an unresolvable host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No target URL was given (neither as an argument nor with `-u`).
    #[error("no target URL: give it as the first argument or with -u, e.g. http://127.0.0.1:8080/")]
    MissingUrl,
    /// The target URL is malformed or neither `http://` nor `https://`.
    #[error("invalid URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it and what is expected instead.
        reason: String,
    },
    /// A `-H` header is not of the form `Name: value`.
    #[error("invalid header `{header}`: {reason}")]
    InvalidHeader {
        /// The header as given.
        header: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--by` is neither `body` nor a comma-separated list of header names.
    #[error(
        "invalid --by `{value}`: expected `body` or header names such as `x-upstream,x-backend`"
    )]
    InvalidBy {
        /// The value as given.
        value: String,
    },
    /// `--rate` is zero, negative or not a number.
    #[error("invalid rate `{rate}`: expected a positive number of requests per second")]
    InvalidRate {
        /// The rate as given.
        rate: f64,
    },
    /// The target host name could not be resolved.
    #[error("cannot resolve `{host}`")]
    Resolve {
        /// The host name from the URL.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The target host name resolved to no address at all.
    #[error("`{host}` resolved to no address")]
    NoAddress {
        /// The host name from the URL.
        host: String,
    },
    /// The `--ca` file cannot be read or holds no PEM certificate.
    #[error("cannot use --ca `{path}`: {reason}")]
    Ca {
        /// The file as given.
        path: std::path::PathBuf,
        /// What is wrong with it and what is expected.
        reason: String,
    },
    /// No trusted root certificate was found on the system for an
    /// `https://` target.
    #[error(
        "no trusted root certificates found on this system ({reason}): give the server's CA with --ca FILE, or --insecure"
    )]
    NoRoots {
        /// What the system's certificate store said.
        reason: String,
    },
    /// The TLS client could not be set up.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// For HTTP/2 the `Host` header in effect (`-H Host:`) becomes the
    /// `:authority`, and this one is not a valid authority.
    #[error("invalid Host `{host}` for HTTP/2: expected host[:port]")]
    InvalidAuthority {
        /// The Host header value, as text where possible.
        host: String,
    },
    /// The latency histogram could not be set up (a bug: its bounds are fixed).
    #[error("cannot create the latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
}
