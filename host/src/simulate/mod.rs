//! `switchyard simulate`: replays a request trace through a strategy
//! offline, in virtual time, and reports the split, the simulated latency
//! and how many decisions per second the plugin makes, so a strategy can be
//! compared with another before it is deployed. `--compare A,B,...` runs
//! several strategies one after the other on the same requests (same
//! inputs and seed: the same arrivals, clients and service-time draws) and
//! prints them side by side.
//!
//! The strategy runs exactly as in the proxy: the same [`Runtime`] compiles
//! it, [`Strategy::prepare`] runs its `init` and `set-backends`, and every
//! request is a real [`Strategy::pick`] with the request head and a real
//! [`BackendSet`] whose in-flight counters hold the simulated requests (see
//! `engine`). Only the network is simulated: each backend is a latency
//! distribution and, optionally, a number of service slots (`model`).
//! The trace is the proxy's own access log, trace lines, or generated
//! (`trace`).

mod args;
mod engine;
mod model;
mod picker;
mod report;
mod trace;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};

pub use self::args::Args;
use self::args::{Source, check_numbers, params, pick_deadline, servers, source};
use self::engine::{Behaviour, Model};
pub use self::model::Distribution;
use self::model::{Latency, Rng, STREAM_ARRIVALS, STREAM_SERVICE};
use self::picker::{Picker, compile};
use self::report::Report;
use crate::backend::BackendSet;
use crate::base::config::PluginLimits;
use crate::plugin::{Runtime, Strategy};

/// Runs the simulation `args` describe and writes the report to `out`.
/// Blocking and CPU-bound (one thread): call it off an async runtime.
pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    if !args.compare.is_empty() {
        return compare(args, out);
    }
    let Some(plugin) = &args.plugin else {
        bail!("give a strategy (--plugin FILE) or several (--compare A,B,...)");
    };
    let report = simulate(args, plugin)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(report.text().as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// `--compare`: every strategy on the same requests (same inputs and
/// seed, so the same arrivals, clients and service-time draws), one after
/// the other, side by side.
fn compare(args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    if args.compare.len() < 2 {
        bail!(
            "--compare needs at least two strategies, comma-separated (`--compare round-robin,plugins/mine.wasm`); for one, use --plugin"
        );
    }
    let reports = args
        .compare
        .iter()
        .map(|plugin| {
            simulate(args, plugin)
                .with_context(|| format!("--compare: strategy {}", plugin.display()))
        })
        .collect::<anyhow::Result<Vec<Report>>>()?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report::Comparison::new(&reports))?;
        writeln!(out)?;
    } else {
        out.write_all(report::compare_text(&reports).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn simulate(args: &Args, plugin: &std::path::Path) -> anyhow::Result<Report> {
    check_numbers(args)?;
    let servers = servers(args)?;
    let ids: Vec<String> = servers.iter().map(|s| s.id.clone()).collect();
    let latencies = model::per_backend(
        "--latency",
        &args.latency,
        &ids,
        Latency::Mean(std::time::Duration::from_millis(10)),
        model::parse_latency,
    )?;
    let slots = model::per_backend("--slots", &args.slots, &ids, None, model::parse_slots)?;
    let behaviours: Vec<Behaviour> = latencies
        .iter()
        .zip(&slots)
        .map(|(&latency, &slots)| Behaviour { latency, slots })
        .collect();
    let params = params(&args.params)?;

    // The trace first: a typo in its path should not wait for a compile.
    let source = source(args)?;
    if let Source::Generated(_) = source
        && latencies.contains(&Latency::Recorded)
    {
        bail!("--latency recorded replays the trace's duration_ms; a generated trace has none");
    }

    let runtime = Runtime::new().context("cannot start the plugin runtime")?;
    let (plugin_label, compiled) = compile(&runtime, plugin)?;
    let set = Arc::new(BackendSet::build(&servers, None));
    let limits = PluginLimits {
        pick_deadline: pick_deadline(&args.pick_deadline)?,
        ..PluginLimits::default()
    };
    let strategy = Strategy::prepare(&runtime, compiled, "simulate", &params, &set, limits)?;

    let mut picker = Picker::new(&strategy, &set);
    let model = Model {
        backends: &behaviours,
        distribution: args.distribution,
        sigma: args.sigma,
    };
    let service_rng = Rng::new(args.seed, STREAM_SERVICE);
    let started = Instant::now();
    let outcome = match &source {
        Source::File { loaded, .. } => engine::run(
            loaded.requests.iter().cloned(),
            &set,
            model,
            service_rng,
            |r, seq| picker.pick(r, seq),
        ),
        Source::Generated(generate) => engine::run(
            generate.iter(Rng::new(args.seed, STREAM_ARRIVALS)),
            &set,
            model,
            service_rng,
            |r, seq| picker.pick(r, seq),
        ),
    }?;
    let wall = started.elapsed();

    Ok(Report::new(report::Inputs {
        args,
        plugin: plugin_label,
        source: &source,
        servers: &servers,
        behaviours: &behaviours,
        outcome,
        picker: &picker,
        stats: &strategy.stats,
        wall,
    }))
}
