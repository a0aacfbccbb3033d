//! What `switchyard simulate` prints: the split, simulated latency
//! (overall and per backend), rejects and plugin failures, how clients
//! spread, and the plugin's decisions per second. A text table by default,
//! one JSON object with `--json` (same figures, latencies in ms). With
//! `--compare`, one column per strategy (`compare_text`), or every full
//! report under `strategies` as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use super::args::{Args, Source};
use super::engine::{Behaviour, Outcome};
use super::model::Distribution;
use super::picker::Picker;
use crate::base::config::ServerConfig;
use crate::plugin::StrategyStats;

/// Everything a report is made from.
pub(super) struct Inputs<'a> {
    pub(super) args: &'a Args,
    pub(super) plugin: String,
    pub(super) source: &'a Source,
    pub(super) servers: &'a [ServerConfig],
    pub(super) behaviours: &'a [Behaviour],
    pub(super) outcome: Outcome,
    pub(super) picker: &'a Picker<'a>,
    pub(super) stats: &'a StrategyStats,
    pub(super) wall: Duration,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    plugin: String,
    seed: u64,
    trace: TraceSummary,
    model: ModelSummary,
    requests: u64,
    served: u64,
    rejected: u64,
    reject_reasons: BTreeMap<String, u64>,
    plugin_failures: Failures,
    latency_ms: Option<Quantiles>,
    backends: Vec<BackendReport>,
    clients: Clients,
    decisions: Decisions,
    /// Virtual seconds from the first arrival to the last completion.
    virtual_seconds: f64,
    /// Real seconds the simulation took.
    wall_seconds: f64,
}

#[derive(Debug, Serialize)]
struct TraceSummary {
    /// `generated` or `file`.
    source: &'static str,
    file: Option<String>,
    /// Lines by kind (`access-json`, `access-text`, `trace`).
    lines: BTreeMap<&'static str, u64>,
    skipped: BTreeMap<&'static str, u64>,
    /// Arrival times replaced by a Poisson process at this rate.
    poisson_rate: Option<f64>,
    /// Seconds from the first to the last arrival.
    span_seconds: f64,
    /// Requests per second over that span.
    offered_rate: f64,
}

#[derive(Debug, Serialize)]
struct ModelSummary {
    distribution: Distribution,
    sigma: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Failures {
    /// Picks the plugin did not answer (trap, timeout, bad answer, failed
    /// instantiation, or paused after repeated failures); the host's round
    /// robin served them.
    total: u64,
    trap: u64,
    timeout: u64,
    bad_answer: u64,
    instantiate: u64,
    paused: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Quantiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

#[derive(Debug, Serialize)]
struct BackendReport {
    id: String,
    address: String,
    weight: u32,
    /// The mean service time (`20ms`) or `recorded`.
    latency_model: String,
    slots: Option<u32>,
    requests: u64,
    /// Share of all requests (rejected ones included).
    share: f64,
    /// Of `requests`, sent by the host's round robin after a plugin failure.
    fallbacks: u64,
    latency_ms: Option<Quantiles>,
    peak_in_flight: u32,
    /// Requests that waited for a slot, and their mean wait.
    queued: u64,
    mean_queue_ms: f64,
}

#[derive(Debug, Serialize)]
struct Clients {
    distinct: usize,
    /// Clients whose requests went to more than one backend (0 for a
    /// sticky strategy such as ip-hash).
    on_several_backends: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    by_client: Option<Vec<ClientReport>>,
}

#[derive(Debug, Serialize)]
struct ClientReport {
    client: String,
    requests: u64,
    /// Requests per backend id (backends it never reached are left out).
    backends: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct Decisions {
    /// Picks timed (all but the first).
    picks: u64,
    /// Wall-clock picks per second of the plugin (host side of the call
    /// included), from the time spent inside `pick`.
    per_second: f64,
    mean_ns: f64,
    /// The slowest timed pick.
    max_us: f64,
    /// The first pick, which also instantiates the plugin on this thread.
    first_pick_us: f64,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Quantiles {
    /// Nearest-rank quantiles of `sorted` (ascending, nanoseconds), in ms.
    fn of(sorted: &[u64]) -> Option<Quantiles> {
        let last = *sorted.last()?;
        let rank = |q: f64| {
            let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            ms(sorted[i])
        };
        let sum: u128 = sorted.iter().map(|&ns| u128::from(ns)).sum();
        Some(Quantiles {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: ms(last),
            mean: sum as f64 / sorted.len() as f64 / 1e6,
        })
    }
}

impl Report {
    pub(super) fn new(inputs: Inputs<'_>) -> Report {
        let Inputs {
            args,
            plugin,
            source,
            servers,
            behaviours,
            mut outcome,
            picker,
            stats,
            wall,
        } = inputs;
        let requests = outcome.requests;
        let mut all: Vec<u64> = Vec::new();
        let backends: Vec<BackendReport> = servers
            .iter()
            .zip(behaviours)
            .zip(outcome.backends.iter_mut())
            .map(|((server, behaviour), done)| {
                done.latencies_ns.sort_unstable();
                all.extend_from_slice(&done.latencies_ns);
                let count = done.latencies_ns.len() as u64;
                BackendReport {
                    id: server.id.clone(),
                    address: server.address.clone(),
                    weight: server.weight,
                    latency_model: behaviour.latency.to_string(),
                    slots: behaviour.slots,
                    requests: count,
                    share: if requests == 0 {
                        0.0
                    } else {
                        count as f64 / requests as f64
                    },
                    fallbacks: done.fallbacks,
                    latency_ms: Quantiles::of(&done.latencies_ns),
                    peak_in_flight: done.peak_in_flight,
                    queued: done.queued,
                    mean_queue_ms: if done.queued == 0 {
                        0.0
                    } else {
                        done.queue_wait_ns as f64 / done.queued as f64 / 1e6
                    },
                }
            })
            .collect();
        all.sort_unstable();
        let served = all.len() as u64;

        let ids: Vec<&str> = servers.iter().map(|s| s.id.as_str()).collect();
        let on_several_backends = outcome
            .clients
            .values()
            .filter(|counts| counts.iter().filter(|&&c| c > 0).count() > 1)
            .count();
        let by_client = args.by_client.then(|| {
            outcome
                .clients
                .iter()
                .map(|(client, counts)| ClientReport {
                    client: client.to_string(),
                    requests: counts.iter().sum(),
                    backends: ids
                        .iter()
                        .zip(counts)
                        .filter(|(_, c)| **c > 0)
                        .map(|(id, c)| ((*id).to_owned(), *c))
                        .collect(),
                })
                .collect()
        });

        let span_ns = outcome.last_arrival_ns - outcome.first_arrival_ns;
        let span_seconds = span_ns as f64 / 1e9;
        let trace = match source {
            Source::File { path, loaded } => TraceSummary {
                source: "file",
                file: Some(path.display().to_string()),
                lines: loaded.kinds.clone(),
                skipped: loaded.skipped.clone(),
                poisson_rate: args.rate,
                span_seconds,
                offered_rate: rate(requests, span_ns),
            },
            Source::Generated(generate) => TraceSummary {
                source: "generated",
                file: None,
                lines: BTreeMap::new(),
                skipped: BTreeMap::new(),
                poisson_rate: Some(generate.rate),
                span_seconds,
                offered_rate: rate(requests, span_ns),
            },
        };

        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let plugin_failures = Failures {
            total: backends.iter().map(|b| b.fallbacks).sum(),
            trap: load(&stats.traps),
            timeout: load(&stats.timeouts),
            bad_answer: load(&stats.bad_answers),
            instantiate: load(&stats.instantiate_failures),
            paused: load(&stats.skipped),
        };
        let decisions = Decisions {
            picks: picker.picks,
            per_second: if picker.pick_ns == 0 {
                0.0
            } else {
                picker.picks as f64 * 1e9 / picker.pick_ns as f64
            },
            mean_ns: if picker.picks == 0 {
                0.0
            } else {
                picker.pick_ns as f64 / picker.picks as f64
            },
            max_us: picker.max_pick_ns as f64 / 1e3,
            first_pick_us: picker.first_pick_ns.unwrap_or(0) as f64 / 1e3,
        };
        Report {
            plugin,
            seed: args.seed,
            trace,
            model: ModelSummary {
                distribution: args.distribution,
                sigma: (args.distribution == Distribution::Lognormal).then_some(args.sigma),
            },
            requests,
            served,
            rejected: outcome.rejected,
            reject_reasons: picker.rejects.clone(),
            plugin_failures,
            latency_ms: Quantiles::of(&all),
            backends,
            clients: Clients {
                distinct: outcome.clients.len(),
                on_several_backends,
                by_client,
            },
            decisions,
            virtual_seconds: (outcome.end_ns - outcome.first_arrival_ns) as f64 / 1e9,
            wall_seconds: wall.as_secs_f64(),
        }
    }

    /// The human-readable report.
    pub(super) fn text(&self) -> String {
        let mut out = String::new();
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        writeln!(
            out,
            "strategy {} over {} backends, seed {}",
            self.plugin,
            self.backends.len(),
            self.seed
        )?;
        self.write_inputs(out)?;
        self.write_results(out)
    }

    /// The trace and the service-time model.
    fn write_inputs(&self, out: &mut String) -> std::fmt::Result {
        let t = &self.trace;
        match &t.file {
            None => writeln!(
                out,
                "trace: {} generated requests from {} clients, Poisson arrivals at {} req/s",
                self.requests,
                self.clients.distinct,
                t.poisson_rate.unwrap_or_default()
            )?,
            Some(file) => {
                let kinds = list(&t.lines);
                let retimed = t
                    .poisson_rate
                    .map(|r| format!(", re-timed as Poisson arrivals at {r} req/s"))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "trace: {file}: {} requests ({kinds}) from {} clients{retimed}",
                    self.requests, self.clients.distinct
                )?;
                if !t.skipped.is_empty() {
                    writeln!(out, "  skipped: {}", list(&t.skipped))?;
                }
            }
        }
        writeln!(
            out,
            "  {:.3} s of arrivals ({:.1} req/s offered), {:.3} s of virtual time",
            t.span_seconds, t.offered_rate, self.virtual_seconds
        )?;
        let shape = match self.model.sigma {
            Some(sigma) => format!("lognormal (sigma {sigma})"),
            None => format!("{:?}", self.model.distribution).to_lowercase(),
        };
        writeln!(out, "service times: {shape} around each backend's mean")
    }

    fn write_results(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out)?;
        let header = [
            "backend", "address", "weight", "mean", "slots", "requests", "share", "p50 ms",
            "p90 ms", "p99 ms", "max ms", "peak", "queued",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
        for b in &self.backends {
            let mut row = vec![
                b.id.clone(),
                b.address.clone(),
                b.weight.to_string(),
                b.latency_model.clone(),
                b.slots.map_or("-".into(), |s| s.to_string()),
                b.requests.to_string(),
                format!("{:.2}%", b.share * 100.0),
            ];
            row.extend(quantile_cells(b.latency_ms));
            row.push(b.peak_in_flight.to_string());
            row.push(if b.queued == 0 {
                "0".into()
            } else {
                format!("{} ({:.3} ms)", b.queued, b.mean_queue_ms)
            });
            rows.push(row);
        }
        let mut total = vec![
            "all".to_owned(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            self.served.to_string(),
            format!(
                "{:.2}%",
                if self.requests == 0 {
                    0.0
                } else {
                    self.served as f64 * 100.0 / self.requests as f64
                }
            ),
        ];
        total.extend(quantile_cells(self.latency_ms));
        total.extend([String::new(), String::new()]);
        rows.push(total);
        table(out, &rows, &[0, 1, 3])?;
        writeln!(out)?;

        write!(out, "rejected: {}", self.rejected)?;
        if !self.reject_reasons.is_empty() {
            write!(out, " ({})", list(&self.reject_reasons))?;
        }
        writeln!(out)?;
        let f = &self.plugin_failures;
        write!(out, "plugin failures: {}", f.total)?;
        if f.total > 0 {
            write!(
                out,
                " (trap {}, timeout {}, bad answer {}, instantiate {}, paused {}; served by the host's round robin)",
                f.trap, f.timeout, f.bad_answer, f.instantiate, f.paused
            )?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "clients: {} distinct, {} sent requests to more than one backend",
            self.clients.distinct, self.clients.on_several_backends
        )?;
        let d = &self.decisions;
        writeln!(
            out,
            "decisions: {:.0}/s ({:.0} ns per pick over {} picks, slowest {:.0} µs; the first pick, which instantiates the plugin, took {:.0} µs)",
            d.per_second, d.mean_ns, d.picks, d.max_us, d.first_pick_us
        )?;
        writeln!(out, "simulated in {:.3} s", self.wall_seconds)?;

        if let Some(clients) = &self.clients.by_client {
            writeln!(out)?;
            let mut rows = vec![vec![
                "client".to_owned(),
                "requests".to_owned(),
                "backends".to_owned(),
            ]];
            for c in clients {
                let spread: Vec<String> = c
                    .backends
                    .iter()
                    .map(|(id, n)| format!("{id}:{n}"))
                    .collect();
                rows.push(vec![
                    c.client.clone(),
                    c.requests.to_string(),
                    spread.join(" "),
                ]);
            }
            table(out, &rows, &[0, 2])?;
        }
        Ok(())
    }
}

/// `--compare --json`: the full report of every strategy, in the order
/// given.
#[derive(Debug, Serialize)]
pub(super) struct Comparison<'a> {
    strategies: &'a [Report],
}

impl<'a> Comparison<'a> {
    pub(super) fn new(reports: &'a [Report]) -> Self {
        Self {
            strategies: reports,
        }
    }
}

/// A strategy's column title: the file stem or the built-in name.
fn short_name(label: &str) -> String {
    match label.strip_suffix(" (built in)") {
        Some(name) => name.to_owned(),
        None => std::path::Path::new(label)
            .file_stem()
            .map_or_else(|| label.to_owned(), |s| s.to_string_lossy().into_owned()),
    }
}

/// `--compare`: the inputs once (they are the same for every strategy),
/// then one column per strategy: the split per backend, rejects, failures,
/// latency percentiles, stickiness and decisions per second.
pub(super) fn compare_text(reports: &[Report]) -> String {
    let mut out = String::new();
    let _ = write_comparison(&mut out, reports);
    out
}

fn write_comparison(out: &mut String, reports: &[Report]) -> std::fmt::Result {
    let Some(first) = reports.first() else {
        return Ok(());
    };
    let mut names: Vec<String> = reports.iter().map(|r| short_name(&r.plugin)).collect();
    let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
    if distinct.len() < names.len() {
        names = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{}:{n}", i + 1))
            .collect();
    }
    writeln!(
        out,
        "{} strategies over {} backends on the same requests, seed {}",
        reports.len(),
        first.backends.len(),
        first.seed
    )?;
    for (name, r) in names.iter().zip(reports) {
        writeln!(out, "  {name}: {}", r.plugin)?;
    }
    first.write_inputs(out)?;
    writeln!(out)?;

    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = |label: String, cell: &dyn Fn(&Report) -> String| {
        let mut line = vec![label];
        line.extend(reports.iter().map(cell));
        rows.push(line);
    };
    row(String::new(), &|_| String::new());
    for (i, b) in first.backends.iter().enumerate() {
        let slots = b.slots.map(|s| format!(", {s} slots")).unwrap_or_default();
        let weight = if b.weight == 1 {
            String::new()
        } else {
            format!(", weight {}", b.weight)
        };
        row(
            format!("{} ({}{weight}{slots})", b.id, b.latency_model),
            &|r| {
                r.backends.get(i).map_or("-".into(), |b| {
                    format!("{} {:.1}%", b.requests, b.share * 100.0)
                })
            },
        );
    }
    row("rejected".into(), &|r| r.rejected.to_string());
    row("plugin failures".into(), &|r| {
        r.plugin_failures.total.to_string()
    });
    type Pick = fn(&Quantiles) -> f64;
    let quantiles: [(&str, Pick); 5] = [
        ("p50 ms", |q| q.p50),
        ("p90 ms", |q| q.p90),
        ("p99 ms", |q| q.p99),
        ("max ms", |q| q.max),
        ("mean ms", |q| q.mean),
    ];
    for (label, pick) in quantiles {
        row(label.into(), &|r| {
            r.latency_ms
                .as_ref()
                .map_or("-".into(), |q| format!("{:.3}", pick(q)))
        });
    }
    row("clients on >1 backend".into(), &|r| {
        format!("{}/{}", r.clients.on_several_backends, r.clients.distinct)
    });
    row("decisions/s".into(), &|r| {
        format!("{:.0}", r.decisions.per_second)
    });
    row("ns per pick".into(), &|r| {
        format!("{:.0}", r.decisions.mean_ns)
    });
    if let Some(header) = rows.first_mut() {
        for (cell, name) in header.iter_mut().skip(1).zip(&names) {
            cell.clone_from(name);
        }
    }
    table(out, &rows, &[0])?;
    writeln!(out)?;
    writeln!(
        out,
        "same requests, seed and model for every column; decisions/s is wall-clock and varies between runs"
    )
}

fn rate(requests: u64, span_ns: u64) -> f64 {
    if span_ns == 0 {
        0.0
    } else {
        requests.saturating_sub(1) as f64 * 1e9 / span_ns as f64
    }
}

fn list<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn quantile_cells(q: Option<Quantiles>) -> [String; 4] {
    match q {
        Some(q) => [q.p50, q.p90, q.p99, q.max].map(|v| format!("{v:.3}")),
        None => std::array::from_fn(|_| "-".to_owned()),
    }
}

/// Columns padded to their widest cell; `left` columns are left-aligned,
/// the others right-aligned.
fn table(out: &mut String, rows: &[Vec<String>], left: &[usize]) -> std::fmt::Result {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let width = widths[c];
            if left.contains(&c) {
                let _ = write!(line, "{cell:<width$}");
            } else {
                let _ = write!(line, "{cell:>width$}");
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
