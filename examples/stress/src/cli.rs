//! The command line: flags, defaults and help text, and their conversion
//! into [`Options`]. Values are parsed by clap's value parsers, so a bad URL
//! or header is reported like any other bad flag, before anything runs.

use std::{num::NonZeroUsize, path::PathBuf, time::Duration};

use clap::{ArgGroup, Parser};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::{BackendKey, Error, Options, Target, options::parse_header};

/// What `--help` says after the flags: exit status and examples.
const AFTER_HELP: &str = "\
Exit status:
  0  every request succeeded (status below 400), and at least one completed
  1  some request failed (4xx/5xx status, refused, timed out, broken), or
     none completed; the report is printed all the same
  2  nothing was run: bad command line, unreadable --ca file, host that does
     not resolve (the reason is on stderr)

The headline rate counts successful responses only; when none succeeded
the report says so, with the most common failure, instead of a rate.

Examples:
  switchyard-stress http://127.0.0.1:8080/ -n 3000 -c 50
  switchyard-stress --n 20000 --c 50 --u http://127.0.0.1:8080/
  switchyard-stress https://localhost:8443/ --ca ca.pem --h2 -d 10s";

/// Load-test an HTTP endpoint (typically a Switchyard proxy) and report how
/// many requests each backend served.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "switchyard-stress",
    version,
    about,
    long_about = None,
    after_help = AFTER_HELP,
    override_usage = "switchyard-stress [OPTIONS] <URL>\n       switchyard-stress [OPTIONS] -u <URL>",
    group(ArgGroup::new("target").required(true).args(["url", "url_arg"])),
)]
pub struct Cli {
    /// Target URL, http:// or https://, e.g. http://127.0.0.1:8080/ (or
    /// give it with -u)
    #[arg(value_name = "URL")]
    pub url_arg: Option<Target>,

    /// Total number of requests [default: 1000 unless --duration is given]
    #[arg(
        short = 'n',
        long,
        visible_aliases = ["n", "number"],
        value_name = "N"
    )]
    pub requests: Option<u64>,

    /// Concurrent connections, each with one request in flight
    #[arg(
        short,
        long,
        visible_aliases = ["c", "concurrent"],
        value_name = "C",
        default_value = "10"
    )]
    pub concurrency: NonZeroUsize,

    /// Target URL, as the positional URL (give one or the other)
    #[arg(short, long, visible_alias = "u", value_name = "URL")]
    pub url: Option<Target>,

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

    /// Speak HTTP/2: prior knowledge over http://, ALPN h2 over https://
    #[arg(long)]
    pub h2: bool,

    /// For https://: trust the CA certificates in this PEM file instead of
    /// the system's roots
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// For https://: accept any server certificate, whoever it names and
    /// whoever signed it
    #[arg(short = 'k', long)]
    pub insecure: bool,

    /// Print the final report as JSON instead of text
    #[arg(long)]
    pub json: bool,
}

impl TryFrom<Cli> for Options {
    type Error = Error;

    /// The options the command line asks for. Fails only without a target
    /// URL, which clap has already refused for a parsed command line.
    fn try_from(cli: Cli) -> Result<Self, Error> {
        let target = cli.url.or(cli.url_arg).ok_or(Error::MissingUrl)?;
        let mut headers = HeaderMap::with_capacity(cli.headers.len());
        for (name, value) in cli.headers {
            headers.append(name, value);
        }
        Ok(Self {
            requests: cli.requests,
            duration: cli.duration,
            concurrency: cli.concurrency,
            rate: cli.rate,
            method: cli.method,
            headers,
            timeout: cli.timeout,
            by: cli.by,
            progress: true,
            http2: cli.h2,
            ca: cli.ca,
            insecure: cli.insecure,
            ..Self::new(target)
        })
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

    fn options(args: &[&str]) -> Options {
        let cli = Cli::try_parse_from(["switchyard-stress"].iter().chain(args))
            .expect("valid command line");
        Options::try_from(cli).expect("a target")
    }

    #[test]
    fn defaults() {
        let options = options(&["-u", "http://127.0.0.1:1/"]);
        assert_eq!(options.request_limit(), Some(1000));
        assert_eq!(options.concurrency.get(), 10);
        assert_eq!(options.method, Method::GET);
        assert_eq!(options.timeout, Duration::from_secs(10));
        assert_eq!(options.by.to_string(), "x-upstream,x-backend");
        assert!(options.rate.is_none() && options.duration.is_none());
        assert!(!options.http2 && !options.insecure && options.ca.is_none());
    }

    #[test]
    fn the_seed_scripts_spelling_is_accepted() {
        for args in [
            &["--n", "20000", "--c", "50", "--u", "http://h:8080/"][..],
            &[
                "--number",
                "20000",
                "--concurrent",
                "50",
                "--url",
                "http://h:8080/",
            ],
            &["-n", "20000", "-c", "50", "-u", "http://h:8080/"],
            &["http://h:8080/", "-n", "20000", "-c", "50"],
            &["-n", "20000", "http://h:8080/", "--concurrency", "50"],
            &["--requests", "20000", "-c50", "http://h:8080/"],
        ] {
            let options = options(args);
            assert_eq!(options.request_limit(), Some(20000), "{args:?}");
            assert_eq!(options.concurrency.get(), 50, "{args:?}");
            assert_eq!(options.target.url(), "http://h:8080/", "{args:?}");
        }
    }

    #[test]
    fn one_url_exactly() {
        let both = Cli::try_parse_from(["switchyard-stress", "http://a/", "-u", "http://b/"])
            .expect_err("two URLs");
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        let none = Cli::try_parse_from(["switchyard-stress", "-n", "5"]).expect_err("no URL");
        assert_eq!(none.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn tls_and_http2_flags() {
        let insecure = options(&["http://h/", "-k"]).insecure;
        let options = options(&[
            "https://localhost:8443/",
            "--h2",
            "--ca",
            "ca.pem",
            "--insecure",
        ]);
        assert!(options.target.is_https() && options.http2 && options.insecure);
        assert_eq!(options.ca, Some(PathBuf::from("ca.pem")));
        assert!(insecure);
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
        let options = Options::try_from(cli).expect("a target");
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
        assert_eq!(
            options(&["-u", "http://h/", "-d", "2s"]).request_limit(),
            None
        );
    }

    #[test]
    fn bad_values_are_flag_errors() {
        for args in [
            &["-u", "ftp://h/"][..],
            &["-u", "h:80"],
            &["h:80"],
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
