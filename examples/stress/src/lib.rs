//! `switchyard-stress`: a load-test client for Switchyard (or any HTTP/1.1
//! or HTTP/2 server, plain or over TLS) that reports which backend served
//! each response, e.g. `backends: {1: 333, 2: 333, 3: 334}` behind a
//! round-robin upstream.
//!
//! The `switchyard-stress` binary is a thin wrapper around [`run_until`];
//! tests can drive the same code in-process:
//!
//! ```no_run
//! # async fn example() -> Result<(), switchyard_stress::Error> {
//! use switchyard_stress::{Options, run};
//!
//! let mut options = Options::new("http://127.0.0.1:8080/".parse()?);
//! options.requests = Some(300);
//! let report = run(options).await?;
//! for backend in &report.backends {
//!     println!("{}: {}", backend.name, backend.count);
//! }
//! # Ok(())
//! # }
//! ```

mod cli;
mod conn;
mod error;
mod load;
mod options;
mod progress;
mod report;
mod tls;

pub use cli::Cli;
pub use error::Error;
pub use options::{
    BackendKey, DEFAULT_BACKEND_HEADERS, DEFAULT_CONCURRENCY, DEFAULT_REQUESTS, DEFAULT_TIMEOUT,
    MAX_BODY_KEY, Options, Target, parse_header,
};
pub use report::{Backend, Failures, Latency, Report, UNIDENTIFIED};

/// Runs the load described by `options` to the end (its request count or
/// duration) and reports what happened.
///
/// Fails only if the run cannot start (the host does not resolve, the rate is
/// not positive); failed requests are counted in the [`Report`].
pub async fn run(options: Options) -> Result<Report, Error> {
    run_until(options, std::future::pending()).await
}

/// Like [`run`], but stops early when `shutdown` completes (the binary passes
/// Ctrl-C). Requests in flight then are abandoned; the report covers those
/// completed and says it was [interrupted](Report::interrupted).
pub async fn run_until(
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, Error> {
    load::run(options, shutdown).await
}
