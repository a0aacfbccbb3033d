//! The arguments of `switchyard simulate`, checked and turned into what a
//! run needs: the servers, the strategy's parameters, the request source.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use http::{HeaderName, HeaderValue};

use super::model::{self, Distribution, Rng, STREAM_ARRIVALS};
use super::trace::{self, Generate, ReadOptions};
use crate::base::config::{MAX_WEIGHT, ServerConfig};

/// The arguments of `switchyard simulate`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["trace", "generate"])))]
#[command(group(clap::ArgGroup::new("strategy").required(true).args(["plugin", "compare"])))]
pub struct Args {
    /// The strategy component (a `.wasm` file), or the name of a reference
    /// strategy built into the binary (`round-robin`, `least-conn`,
    /// `ip-hash`) when no such file exists.
    #[arg(long, value_name = "FILE")]
    pub plugin: Option<PathBuf>,
    /// Run two or more strategies (files or reference names, as
    /// --plugin) on the same requests, seed and model, and print them side
    /// by side: one column per strategy.
    #[arg(long, value_name = "A,B,...", value_delimiter = ',', num_args = 1.., conflicts_with = "by_client")]
    pub compare: Vec<PathBuf>,
    /// Number of backends: ids b1..bN, addresses 10.0.0.1:80, 10.0.0.2:80, ...
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub backends: u32,
    /// Backend weights in order, comma-separated (`5,1,1`); 1 each by default.
    #[arg(long, value_name = "W,W,...")]
    pub weights: Option<String>,
    /// A strategy parameter as in the config's `params`: `key=value` with a
    /// TOML value (`choices=2`, `ratio=0.5`, `sticky=true`); a value that is
    /// not TOML is a string (`mode=fixed`). Repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Replay this trace file: an access log of `switchyard run` (JSON or
    /// text lines; other log lines are skipped) or trace lines (JSON objects
    /// with `at_ms`, `client`, `method`, `path`, `host`, `headers`).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// With --trace: replay only the access-log lines of this upstream.
    #[arg(long, value_name = "NAME", requires = "trace")]
    pub upstream: Option<String>,
    /// Generate this many requests instead of reading a trace.
    #[arg(long, value_name = "N")]
    pub generate: Option<u64>,
    /// With --generate: distinct client addresses (spread over
    /// 172.16.0.0/12), each request from one of them, uniformly.
    #[arg(long, value_name = "K", default_value_t = 100, requires = "generate")]
    pub clients: u32,
    /// With --generate: distinct paths, /p/1 .. /p/P uniformly (1: all `/`).
    #[arg(long, value_name = "P", default_value_t = 1, requires = "generate")]
    pub paths: u32,
    /// With --generate: a request header, `name=v1,v2,...`; each request
    /// gets one of the values, uniformly. Repeatable.
    #[arg(long = "header", value_name = "NAME=V1,V2,...", requires = "generate")]
    pub headers: Vec<String>,
    /// Arrivals per second, a Poisson process. --generate: default 1000.
    /// --trace: replaces the trace's own arrival times (kept by default).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Mean service time of the backends: `20ms` for all, `1=5ms,b3=200ms`
    /// per backend (number or id), or both (`20ms,3=200ms`); `recorded`
    /// replays each request's `duration_ms` from the trace instead.
    #[arg(long, value_name = "SPEC", default_value = "10ms")]
    pub latency: String,
    /// How service times spread around the mean.
    #[arg(long, value_enum, default_value_t = Distribution::Exponential)]
    pub distribution: Distribution,
    /// Shape of `--distribution lognormal`: the standard deviation of the
    /// log of the service time (0.5: p99 about 2.9x the median).
    #[arg(long, value_name = "S", default_value_t = 0.5)]
    pub sigma: f64,
    /// Requests a backend serves at once; more wait in its FIFO queue (and
    /// count as in flight). `8` for all, `2=1` per backend, or `unlimited`.
    #[arg(long, value_name = "SPEC", default_value = "unlimited")]
    pub slots: String,
    /// Wall-clock budget of one pick (1ms..10s). Generous by default so
    /// that a busy machine does not turn slow picks into failures and change
    /// the result; `10ms` is the proxy's default (`plugin-limits`).
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub pick_deadline: String,
    /// Seed of every random draw (arrivals, clients, service times): the
    /// same seed and inputs give the same report, decisions/s aside.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also report how many requests each client address sent to each
    /// backend.
    #[arg(long)]
    pub by_client: bool,
}

/// Most simulated backends (10.0.0.1 ..= 10.0.255.254).
const MAX_BACKENDS: u32 = 65_534;
/// The request source of a run.
pub(super) enum Source {
    File {
        path: PathBuf,
        loaded: trace::Loaded,
    },
    Generated(Generate),
}

pub(super) fn check_numbers(args: &Args) -> anyhow::Result<()> {
    if !(1..=MAX_BACKENDS).contains(&args.backends) {
        bail!("--backends must be 1..={MAX_BACKENDS}");
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of requests per second");
    }
    if !(args.sigma.is_finite() && (0.0..=10.0).contains(&args.sigma)) {
        bail!("--sigma must be 0..=10");
    }
    if args.generate == Some(0) {
        bail!("--generate must be at least 1");
    }
    if !(1..=trace::MAX_CLIENTS).contains(&args.clients) {
        bail!("--clients must be 1..={}", trace::MAX_CLIENTS);
    }
    if args.paths == 0 {
        bail!("--paths must be at least 1");
    }
    Ok(())
}

pub(super) fn pick_deadline(text: &str) -> anyhow::Result<std::time::Duration> {
    let deadline =
        model::parse_duration(text).map_err(|e| anyhow::anyhow!("--pick-deadline: {e}"))?;
    let range = std::time::Duration::from_millis(1)..=std::time::Duration::from_secs(10);
    if !range.contains(&deadline) {
        bail!("--pick-deadline must be 1ms..10s");
    }
    Ok(deadline)
}

/// b1..bN on 10.0.0.1:80, 10.0.0.2:80, ...
pub(super) fn servers(args: &Args) -> anyhow::Result<Vec<ServerConfig>> {
    let n = args.backends as usize;
    let weights: Vec<u32> = match &args.weights {
        None => vec![1; n],
        Some(list) => {
            let weights = list
                .split(',')
                .map(|w| match w.trim().parse::<u32>() {
                    Ok(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(w),
                    _ => Err(anyhow::anyhow!(
                        "--weights: `{}` is not a weight (1..={MAX_WEIGHT})",
                        w.trim()
                    )),
                })
                .collect::<anyhow::Result<Vec<u32>>>()?;
            if weights.len() != n {
                bail!(
                    "--weights has {} values for {n} backends (one per backend, in order)",
                    weights.len()
                );
            }
            weights
        }
    };
    Ok((1..=args.backends)
        .zip(weights)
        .map(|(i, weight)| {
            let addr = SocketAddr::from((Ipv4Addr::from(0x0A00_0000 + i), 80));
            ServerConfig {
                id: format!("b{i}"),
                address: addr.to_string(),
                addr,
                weight,
            }
        })
        .collect())
}

/// `key=value` pairs as the `params` table of a config file.
pub(super) fn params(pairs: &[String]) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--param {pair:?}: expected key=value");
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("--param {pair:?}: the key is empty");
        }
        let value = value.trim();
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        table.insert(key.to_owned(), parsed);
    }
    Ok(table)
}

pub(super) fn source(args: &Args) -> anyhow::Result<Source> {
    match (&args.trace, args.generate) {
        (Some(path), _) => {
            let options = ReadOptions {
                upstream: args.upstream.clone(),
                retimed: args.rate.is_some(),
            };
            let mut loaded = trace::read(path, &options)?;
            if let Some(rate) = args.rate {
                trace::retime(
                    &mut loaded.requests,
                    rate,
                    &mut Rng::new(args.seed, STREAM_ARRIVALS),
                );
            }
            Ok(Source::File {
                path: path.clone(),
                loaded,
            })
        }
        (None, Some(requests)) => Ok(Source::Generated(Generate {
            requests,
            clients: args.clients,
            rate: args.rate.unwrap_or(1000.0),
            paths: args.paths,
            headers: headers(&args.headers)?,
        })),
        (None, None) => bail!("give a trace (--trace FILE) or generate one (--generate N)"),
    }
}

pub(super) fn headers(specs: &[String]) -> anyhow::Result<Vec<(HeaderName, Vec<HeaderValue>)>> {
    specs
        .iter()
        .map(|spec| {
            let Some((name, values)) = spec.split_once('=') else {
                bail!("--header {spec:?}: expected name=value1,value2,...");
            };
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("--header {spec:?}: not a header name"))?;
            let values = values
                .split(',')
                .map(|v| {
                    HeaderValue::from_str(v.trim())
                        .with_context(|| format!("--header {spec:?}: {v:?} is not a header value"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok((name, values))
        })
        .collect()
}
