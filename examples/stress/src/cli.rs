//! The command line: flags, defaults and help text, and their conversion
//! into [`Options`]. Values are parsed by clap's value parsers, so a bad URL
//! or header is reported like any other bad flag, before anything runs.

use std::{num::NonZeroUsize, time::Duration};

use clap::Parser;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::{BackendKey, Error, Options, Target, options::parse_header};

/// Load-test an HTTP endpoint (typically a Switchyard proxy) and report how
/// many requests each backend served.
///
/// Example: switchyard-stress -u http://127.0.0.1:8080/ -n 3000 -c 50
#[derive(Debug, Clone, Parser)]
#[command(name = "switchyard-stress", version, about, long_about = None)]
pub struct Cli {
    /// Total number of requests [default: 1000 unless --duration is given]
    #[arg(short = 'n', long, value_name = "N")]
    pub requests: Option<u64>,

    /// Concurrent connections, each with one request in flight
    #[arg(short, long, value_name = "C", default_value = "10")]
    pub concurrency: NonZeroUsize,

    /// Target URL (plain http:// only), e.g. http://127.0.0.1:8080/
    #[arg(short, long, value_name = "URL")]
    pub url: Target,

    /// Stop after this long, e.g. 10s or 1m30s; with -n, whichever comes
    /// first
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Send at a fixed rate of R requests per second (open loop)
    ///
    /// Request i is due at start + i/R whether or not earlier responses have
    /// come back. When it goes out late because every connection was still
    /// busy, its latency is measured from the scheduled time, not from when
    /// a connection became free (as wrk2 does): a server that stalls shows
    /// up in the latency percentiles instead of silently lowering the
    /// request rate ("coordinated omission"). Use enough connections (-c)
    /// to keep up with R.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Request method
    #[arg(short, long, value_name = "METHOD", default_value = "GET")]
    pub method: Method,

    /// Extra request header, e.g. -H "Accept: text/plain" (repeatable)
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,

    /// Per-request timeout, connecting included, e.g. 500ms or 10s
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Response header naming the backend (several: comma-separated, first
    /// present wins), or `body` for the trimmed response body
    ///
    /// Responses without it (or with it empty) are counted under "(none)".
    #[arg(
        long,
        value_name = "HEADER[,HEADER..]|body",
        default_value = crate::options::DEFAULT_BACKEND_HEADERS
    )]
    pub by: BackendKey,

    /// Print the final report as JSON instead of text
    #[arg(long)]
    pub json: bool,
}

impl From<Cli> for Options {
    fn from(cli: Cli) -> Self {
        let mut headers = HeaderMap::with_capacity(cli.headers.len());
        for (name, value) in cli.headers {
            headers.append(name, value);
        }
        Self {
            requests: cli.requests,
            duration: cli.duration,
            concurrency: cli.concurrency,
            rate: cli.rate,
            method: cli.method,
            headers,
            timeout: cli.timeout,
            by: cli.by,
            progress: true,
            ..Self::new(cli.url)
        }
    }
}

fn parse_duration(value: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(value)
}

fn parse_rate(value: &str) -> Result<f64, Box<dyn std::error::Error + Send + Sync>> {
    let rate: f64 = value.parse()?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(Error::InvalidRate { rate }.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["switchyard-stress", "-u", "http://127.0.0.1:1/"])
            .expect("valid command line");
        let options = Options::from(cli);
        assert_eq!(options.request_limit(), Some(1000));
        assert_eq!(options.concurrency.get(), 10);
        assert_eq!(options.method, Method::GET);
        assert_eq!(options.timeout, Duration::from_secs(10));
        assert_eq!(options.by.to_string(), "x-upstream,x-backend");
        assert!(options.rate.is_none() && options.duration.is_none());
    }

    #[test]
    fn every_flag() {
        let cli = Cli::try_parse_from([
            "switchyard-stress",
            "-n",
            "5",
            "-c",
            "2",
            "-u",
            "http://localhost:8080/x",
            "-d",
            "1m 30s",
            "--rate",
            "12.5",
            "-m",
            "POST",
            "-H",
            "A: 1",
            "-H",
            "a: 2",
            "--timeout",
            "250ms",
            "--by",
            "body",
            "--json",
        ])
        .expect("valid command line");
        assert!(cli.json);
        let options = Options::from(cli);
        assert_eq!(options.request_limit(), Some(5));
        assert_eq!(options.duration, Some(Duration::from_secs(90)));
        assert_eq!(options.rate, Some(12.5));
        assert_eq!(options.method, Method::POST);
        assert_eq!(options.headers.get_all("a").iter().count(), 2);
        assert_eq!(options.timeout, Duration::from_millis(250));
        assert_eq!(options.by, BackendKey::Body);
    }

    #[test]
    fn duration_alone_lifts_the_default_request_count() {
        let cli = Cli::try_parse_from(["switchyard-stress", "-u", "http://h/", "-d", "2s"])
            .expect("valid command line");
        assert_eq!(Options::from(cli).request_limit(), None);
    }

    #[test]
    fn bad_values_are_flag_errors() {
        for args in [
            &["-u", "https://h/"][..],
            &["-u", "h:80"],
            &["-u", "http://h/", "-c", "0"],
            &["-u", "http://h/", "--rate", "0"],
            &["-u", "http://h/", "--rate", "-3"],
            &["-u", "http://h/", "-H", "no-colon"],
            &["-u", "http://h/", "-d", "soon"],
            &["-u", "http://h/", "--by", "not a header"],
        ] {
            let parsed = Cli::try_parse_from(["switchyard-stress"].iter().chain(args));
            assert!(parsed.is_err(), "{args:?} should be refused");
        }
    }
}
