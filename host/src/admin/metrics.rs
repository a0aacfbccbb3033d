//! `GET /metrics`: the request-path counters in the OpenMetrics text format
//! (which Prometheus scrapes), encoded by `prometheus-client` from a
//! collector that reads the live atomics at scrape time: nothing is
//! registered or looked up on the request path.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::{Registry, Unit};

use crate::base::clock::unix_ms;
use crate::base::stats::{CLASSES, Histogram};
use crate::gateway::Gateway;
use crate::plugin::{Strategy, StrategyStats};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition of `gateway`'s metrics now.
pub fn render(gateway: &Arc<Gateway>) -> Result<String, Error> {
    let mut registry = Registry::with_prefix("switchyard");
    registry.register_collector(Box::new(Metrics(Arc::clone(gateway))));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct Metrics(Arc<Gateway>);

type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

fn counter<S: EncodeLabelSet>(
    enc: &mut MetricEncoder<'_>,
    labels: &S,
    v: u64,
) -> Result<(), Error> {
    enc.encode_family(labels)?
        .encode_counter::<S, _, f64>(&v, None::<&Exemplar<S, f64>>)
}

fn gauge<S: EncodeLabelSet>(enc: &mut MetricEncoder<'_>, labels: &S, v: i64) -> Result<(), Error> {
    enc.encode_family(labels)?.encode_gauge(&v)
}

/// A histogram with buckets in `unit_per_second` units, as seconds.
fn histogram<S: EncodeLabelSet, const N: usize>(
    enc: &mut MetricEncoder<'_>,
    labels: &S,
    h: &Histogram<N>,
    unit_per_second: f64,
) -> Result<(), Error> {
    // Per-bucket counts: the encoder makes them cumulative.
    let counts = h.counts();
    let buckets: Vec<(f64, u64)> = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let bound = h
                .bounds()
                .get(i)
                .map_or(f64::INFINITY, |&b| b as f64 / unit_per_second);
            (bound, c)
        })
        .collect();
    enc.encode_family(labels)?.encode_histogram::<S>(
        h.sum() as f64 / unit_per_second,
        counts.iter().sum(),
        &buckets,
        None,
    )
}

/// An upstream's name, its strategy's configured name, and the strategy.
type StrategyRow = (String, String, Arc<Strategy>);

fn plugin_labels((upstream, plugin, _): &StrategyRow) -> Labels<'_> {
    vec![
        ("upstream", Cow::Borrowed(upstream.as_str())),
        ("plugin", Cow::Borrowed(plugin.as_str())),
    ]
}

/// A counter family with one sample per strategy and `(value, counter)`
/// pair that `counts` lists, labelled `label="value"` (no extra label when
/// `label` is `None`).
fn strategy_counters<const N: usize>(
    enc: &mut DescriptorEncoder<'_>,
    name: &'static str,
    help: &str,
    strategies: &[StrategyRow],
    label: Option<&'static str>,
    counts: impl Fn(&StrategyStats) -> [(&'static str, &AtomicU64); N],
) -> Result<(), Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for row in strategies {
        for (value, n) in counts(&row.2.stats) {
            let mut labels = plugin_labels(row);
            if let Some(label) = label {
                labels.push((label, Cow::Borrowed(value)));
            }
            counter(&mut m, &labels, n.load(Ordering::Relaxed))?;
        }
    }
    Ok(())
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), Error> {
        let gateway = &self.0;
        let table = gateway.routes();
        let backends: Vec<_> = table
            .upstreams
            .iter()
            .flat_map(|u| {
                let set = u.backends.load_full();
                (0..set.backends.len())
                    .map(move |i| (u.name().to_owned(), Arc::clone(&set.backends[i])))
            })
            .collect();
        let backend_labels = |(u, b): &(String, Arc<crate::backend::Backend>)| -> Labels<'static> {
            vec![
                ("upstream", Cow::Owned(u.clone())),
                ("backend", Cow::Owned(b.address.clone())),
            ]
        };

        let mut m = enc.encode_descriptor(
            "requests",
            "Requests (tries) sent to a backend.",
            None,
            MetricType::Counter,
        )?;
        for ub in &backends {
            counter(&mut m, &backend_labels(ub), ub.1.requests())?;
        }

        let mut m = enc.encode_descriptor(
            "responses",
            "Responses by status class; backend=\"\" for answers the proxy made itself (no backend answered).",
            None,
            MetricType::Counter,
        )?;
        for ub in &backends {
            for (class, n) in CLASSES.iter().zip(ub.1.responses.counts()) {
                let mut labels = backend_labels(ub);
                labels.push(("class", Cow::Borrowed(*class)));
                counter(&mut m, &labels, n)?;
            }
        }
        for u in &table.upstreams {
            for (class, n) in CLASSES.iter().zip(u.local_responses.counts()) {
                let labels: Labels<'_> = vec![
                    ("upstream", Cow::Borrowed(u.name())),
                    ("backend", Cow::Borrowed("")),
                    ("class", Cow::Borrowed(*class)),
                ];
                counter(&mut m, &labels, n)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "backend_failures",
            "Tries that failed: connect error, timeout, broken connection.",
            None,
            MetricType::Counter,
        )?;
        for ub in &backends {
            counter(&mut m, &backend_labels(ub), ub.1.failures())?;
        }

        let mut m = enc.encode_descriptor(
            "upstream_response",
            "Time from sending a request to a backend to its response head.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for ub in &backends {
            histogram(&mut m, &backend_labels(ub), &ub.1.latency, 1e6)?;
        }

        let mut m = enc.encode_descriptor(
            "backend_in_flight",
            "Requests in flight to a backend.",
            None,
            MetricType::Gauge,
        )?;
        for ub in &backends {
            gauge(&mut m, &backend_labels(ub), i64::from(ub.1.in_flight()))?;
        }

        let mut m = enc.encode_descriptor(
            "backend_up",
            "1 when health checking lets the backend take traffic.",
            None,
            MetricType::Gauge,
        )?;
        for ub in &backends {
            gauge(&mut m, &backend_labels(ub), i64::from(ub.1.healthy()))?;
        }

        let mut m = enc.encode_descriptor(
            "retries",
            "Tries after the first, on another backend.",
            None,
            MetricType::Counter,
        )?;
        for u in &table.upstreams {
            let labels: Labels<'_> = vec![("upstream", Cow::Borrowed(u.name()))];
            counter(&mut m, &labels, u.retries.load(Ordering::Relaxed))?;
        }

        let strategies: Vec<_> = table
            .upstreams
            .iter()
            .map(|u| {
                (
                    u.name().to_owned(),
                    u.config.strategy.clone(),
                    u.strategy.load_full(),
                )
            })
            .collect();
        let mut m = enc.encode_descriptor(
            "plugin_pick",
            "Time one pick took, plugin call and fallback included.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for us in &strategies {
            histogram(&mut m, &plugin_labels(us), &us.2.stats.pick_ns, 1e9)?;
        }
        strategy_counters(
            &mut enc,
            "plugin_picks",
            "Picks answered by the plugin.",
            &strategies,
            None,
            |st| [("", &st.picks)],
        )?;
        strategy_counters(
            &mut enc,
            "plugin_failures",
            "Plugin failures by kind; each such pick was served by the fallback or answered 503.",
            &strategies,
            Some("kind"),
            |st| {
                [
                    ("trap", &st.traps),
                    ("timeout", &st.timeouts),
                    ("bad_answer", &st.bad_answers),
                    ("instantiate", &st.instantiate_failures),
                ]
            },
        )?;
        strategy_counters(
            &mut enc,
            "plugin_skipped_picks",
            "Picks served by the host's round robin without calling the plugin, paused after failing again and again.",
            &strategies,
            None,
            |st| [("", &st.skipped)],
        )?;
        strategy_counters(
            &mut enc,
            "plugin_handovers",
            "Worker threads whose instance of a new plugin version continued from their instance of the previous one (`state` export), by result.",
            &strategies,
            Some("result"),
            |st| [("ok", &st.handovers), ("failed", &st.handover_failures)],
        )?;

        let shadows: Vec<_> = table
            .upstreams
            .iter()
            .filter_map(|u| u.shadow.as_ref().map(|s| (u, s)))
            .collect();
        let mut m = enc.encode_descriptor(
            "shadow_picks",
            "Picks of the upstream's shadow strategy, by whether it agreed with the live strategy.",
            None,
            MetricType::Counter,
        )?;
        for (u, s) in &shadows {
            for (result, n) in [
                ("agree", &s.stats.agreements),
                ("disagree", &s.stats.disagreements),
                ("failed", &s.stats.failures),
            ] {
                let labels: Labels<'_> = vec![
                    ("upstream", Cow::Borrowed(u.name())),
                    ("plugin", Cow::Borrowed(s.name.as_str())),
                    ("result", Cow::Borrowed(result)),
                ];
                counter(&mut m, &labels, n.load(Ordering::Relaxed))?;
            }
        }
        let mut m = enc.encode_descriptor(
            "shadow_backend_picks",
            "Picks the upstream's shadow strategy would have sent to a backend.",
            None,
            MetricType::Counter,
        )?;
        let shadowed: HashSet<&str> = shadows.iter().map(|(u, _)| u.name()).collect();
        for ub in backends
            .iter()
            .filter(|ub| shadowed.contains(ub.0.as_str()))
        {
            counter(&mut m, &backend_labels(ub), ub.1.shadow_picks())?;
        }

        let mut m = enc.encode_descriptor(
            "reloads",
            "Plugin and config reloads by result.",
            None,
            MetricType::Counter,
        )?;
        for ((kind, result), n) in gateway.reload_counts() {
            let labels: Labels<'_> = vec![
                ("kind", Cow::Borrowed(kind.as_str())),
                ("result", Cow::Borrowed(result.as_str())),
            ];
            counter(&mut m, &labels, n)?;
        }

        let mut m = enc.encode_descriptor(
            "client_connections",
            "Client connections open now, by the worker thread serving them.",
            None,
            MetricType::Gauge,
        )?;
        for (worker, n) in gateway.connections().open().into_iter().enumerate() {
            let labels: Labels<'_> = vec![("worker", Cow::Owned(worker.to_string()))];
            gauge(&mut m, &labels, i64::try_from(n).unwrap_or(i64::MAX))?;
        }

        let mut m = enc.encode_descriptor(
            "start_time",
            "When the proxy started, in seconds since the Unix epoch.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        let labels: Labels<'_> = vec![("version", Cow::Borrowed(env!("CARGO_PKG_VERSION")))];
        let started = i64::try_from(unix_ms(gateway.started()) / 1000).unwrap_or(i64::MAX);
        gauge(&mut m, &labels, started)?;
        Ok(())
    }
}
