//! `GET /metrics`: the request-path counters in the OpenMetrics text format
//! (which Prometheus scrapes), encoded by `prometheus-client` from a
//! collector that reads the live atomics at scrape time: nothing is
//! registered or looked up on the request path.
//!
//! The families are one table, `FAMILIES`: a name, a help text, a unit
//! and a function from one `Scrape` (the route table and counters read
//! once) to the family's labelled values, whose type is the family's type.

use std::borrow::Cow;
use std::fmt::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::backend::Backend;
use crate::base::clock::unix_ms;
use crate::base::stats::{CLASSES, Histogram};
use crate::gateway::router::RouteTable;
use crate::gateway::upstream::Upstream;
use crate::gateway::{Gateway, ReloadKind, ReloadResult};
use crate::plugin::{Admission, Strategy, StrategyStats};

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

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), Error> {
        let scrape = Scrape::new(&self.0);
        for family in FAMILIES {
            family.encode(&mut enc, &scrape)?;
        }
        Ok(())
    }
}

/// Every metric family, in the order of the exposition: adding a metric is
/// adding an entry. Names are without the `switchyard_` prefix and the
/// suffixes the encoder adds (`_total` for counters, `_seconds` for
/// [`Unit::Seconds`]).
const FAMILIES: &[Family] = &[
    Family {
        name: "requests",
        help: "Requests (tries) sent to a backend.",
        unit: None,
        samples: Samples::Counter(|s| s.per_backend(|b| b.requests())),
    },
    Family {
        name: "responses",
        help: "Responses by status class; backend=\"\" for answers the proxy made itself (no backend answered).",
        unit: None,
        samples: Samples::Counter(|s| {
            let answered = s.backends.iter().flat_map(|row| {
                let counts = CLASSES.iter().zip(row.backend.responses.counts());
                counts.map(|(class, n)| (with(row.labels(), "class", class), n))
            });
            let local = s.table.upstreams.iter().flat_map(|u| {
                let counts = CLASSES.iter().zip(u.local_responses.counts());
                counts.map(|(class, n)| {
                    let pairs = [("upstream", u.name()), ("backend", ""), ("class", class)];
                    (labels(pairs), n)
                })
            });
            answered.chain(local).collect()
        }),
    },
    Family {
        name: "backend_failures",
        help: "Tries that failed: connect error, timeout, broken connection.",
        unit: None,
        samples: Samples::Counter(|s| s.per_backend(|b| b.failures())),
    },
    Family {
        name: "upstream_response",
        help: "Time from sending a request to a backend to its response head.",
        unit: Some(Unit::Seconds),
        samples: Samples::Histogram(|s| s.per_backend(|b| Buckets::of(&b.latency, 1e6))),
    },
    Family {
        name: "backend_in_flight",
        help: "Requests in flight to a backend.",
        unit: None,
        samples: Samples::Gauge(|s| s.per_backend(|b| i64::from(b.in_flight()))),
    },
    Family {
        name: "backend_up",
        help: "1 when health checking lets the backend take traffic.",
        unit: None,
        samples: Samples::Gauge(|s| s.per_backend(|b| i64::from(b.healthy()))),
    },
    Family {
        name: "backend_retries",
        help: "Tries of a backend that failed (an error, or a status in retry-on-status) and were tried again.",
        unit: None,
        samples: Samples::Counter(|s| s.per_backend(|b| b.retried())),
    },
    Family {
        name: "backend_sent_bytes",
        help: "Request body bytes sent to a backend.",
        unit: None,
        samples: Samples::Counter(|s| s.per_backend(|b| b.bytes_sent())),
    },
    Family {
        name: "backend_received_bytes",
        help: "Response body bytes received from a backend.",
        unit: None,
        samples: Samples::Counter(|s| s.per_backend(|b| b.bytes_received())),
    },
    Family {
        name: "backend_connections_opened",
        help: "New connections opened to a backend.",
        unit: None,
        samples: Samples::Counter(|s| s.per_backend(|b| b.connects())),
    },
    Family {
        name: "backend_connections_idle",
        help: "Keep-alive connections to a backend idle in the pool now.",
        unit: None,
        samples: Samples::Gauge(|s| {
            s.per_backend(|b| i64::try_from(b.pool.idle()).unwrap_or(i64::MAX))
        }),
    },
    Family {
        name: "retries",
        help: "Tries after the first, on another backend.",
        unit: None,
        samples: Samples::Counter(|s| {
            let retries = |u: &Arc<Upstream>| u.retries.load(Ordering::Relaxed);
            s.table
                .upstreams
                .iter()
                .map(|u| (labels([("upstream", u.name())]), retries(u)))
                .collect()
        }),
    },
    Family {
        name: "admission",
        help: "Requests by the upstream's admission verdict (allowed, denied, limited, dry-run: would have been limited) and the rule behind it (deny, allow, limit-req, limit-conn; plugin: the admission plugin denied it; plugin-failure: the plugin failed and the upstream fails closed); only upstreams with admission rules or an admission plugin.",
        unit: None,
        samples: Samples::Counter(|s| {
            s.table
                .upstreams
                .iter()
                .filter_map(|u| Some((u.name(), u.gate.as_ref()?)))
                .flat_map(|(upstream, gate)| {
                    gate.tally.rows().map(move |(verdict, reason, n)| {
                        let pairs = [
                            ("upstream", upstream),
                            ("verdict", verdict),
                            ("reason", reason),
                        ];
                        (labels(pairs), n)
                    })
                })
                .collect()
        }),
    },
    Family {
        name: "limiter_keys",
        help: "Keys a limiter remembers now (at most the upstream's `limit-keys`).",
        unit: None,
        samples: Samples::Gauge(|s| {
            s.limiter_keys(|u| {
                let gate = u.gate.as_ref()?;
                Some(
                    gate.limiters()
                        .into_iter()
                        .map(|(name, keys, _)| (name, keys))
                        .collect(),
                )
            })
        }),
    },
    Family {
        name: "admission_plugin_calls",
        help: "Calls of the upstream's admission plugin it answered (allow or deny).",
        unit: None,
        samples: Samples::Counter(|s| s.per_plugin(&s.admissions, None, |st| [("", &st.picks)])),
    },
    Family {
        name: "admission_plugin_failures",
        help: "Admission plugin failures by kind (skipped: not called while paused after failing again and again); each such request went on (fail-open) or was answered 503 (fail-closed).",
        unit: None,
        samples: Samples::Counter(|s| {
            s.per_plugin(&s.admissions, Some("kind"), |st| {
                [
                    ("trap", &st.traps),
                    ("timeout", &st.timeouts),
                    ("bad_answer", &st.bad_answers),
                    ("instantiate", &st.instantiate_failures),
                    ("skipped", &st.skipped),
                ]
            })
        }),
    },
    Family {
        name: "admission_plugin_limiter_keys",
        help: "Keys a limiter an admission plugin declared remembers now.",
        unit: None,
        samples: Samples::Gauge(|s| {
            s.limiter_keys(|u| {
                let limiters = u.admission.as_ref()?.load().registry.limiters();
                Some(
                    limiters
                        .into_iter()
                        .map(|(name, _, keys, _)| (name, keys))
                        .collect(),
                )
            })
        }),
    },
    Family {
        name: "plugin_pick",
        help: "Time one pick took, plugin call and fallback included.",
        unit: Some(Unit::Seconds),
        samples: Samples::Histogram(|s| {
            let pick = |row: &StrategyRow| Buckets::of(&row.strategy.stats.pick_ns, 1e9);
            s.strategies
                .iter()
                .map(|row| (row.labels(), pick(row)))
                .collect()
        }),
    },
    Family {
        name: "plugin_info",
        help: "1 for each plugin an upstream runs (role strategy, shadow or admission), with the name and version it declares itself (empty when it does not).",
        unit: None,
        samples: Samples::Gauge(|s| s.plugin_info()),
    },
    Family {
        name: "plugin_picks",
        help: "Picks answered by the plugin.",
        unit: None,
        samples: Samples::Counter(|s| s.per_plugin(&s.strategies, None, |st| [("", &st.picks)])),
    },
    Family {
        name: "plugin_failures",
        help: "Plugin failures by kind; each such pick was served by the fallback or answered 503.",
        unit: None,
        samples: Samples::Counter(|s| {
            s.per_plugin(&s.strategies, Some("kind"), |st| {
                [
                    ("trap", &st.traps),
                    ("timeout", &st.timeouts),
                    ("bad_answer", &st.bad_answers),
                    ("instantiate", &st.instantiate_failures),
                ]
            })
        }),
    },
    Family {
        name: "plugin_skipped_picks",
        help: "Picks served by the host's round robin without calling the plugin, paused after failing again and again.",
        unit: None,
        samples: Samples::Counter(|s| s.per_plugin(&s.strategies, None, |st| [("", &st.skipped)])),
    },
    Family {
        name: "plugin_handovers",
        help: "Worker threads whose instance of a new plugin version continued from their instance of the previous one (`state` export), by result.",
        unit: None,
        samples: Samples::Counter(|s| {
            s.per_plugin(&s.strategies, Some("result"), |st| {
                [("ok", &st.handovers), ("failed", &st.handover_failures)]
            })
        }),
    },
    Family {
        name: "shadow_picks",
        help: "Picks of the upstream's shadow strategy, by whether it agreed with the live strategy.",
        unit: None,
        samples: Samples::Counter(|s| {
            s.table
                .upstreams
                .iter()
                .filter_map(|u| Some((u.name(), u.shadow.as_ref()?)))
                .flat_map(|(upstream, shadow)| {
                    let counts = [
                        ("agree", &shadow.stats.agreements),
                        ("disagree", &shadow.stats.disagreements),
                        ("failed", &shadow.stats.failures),
                    ];
                    counts.map(|(result, n)| {
                        let pairs = [
                            ("upstream", upstream),
                            ("plugin", shadow.name.as_str()),
                            ("result", result),
                        ];
                        (labels(pairs), n.load(Ordering::Relaxed))
                    })
                })
                .collect()
        }),
    },
    Family {
        name: "shadow_backend_picks",
        help: "Picks the upstream's shadow strategy would have sent to a backend.",
        unit: None,
        samples: Samples::Counter(|s| {
            s.backends
                .iter()
                .filter(|row| row.upstream.shadow.is_some())
                .map(|row| (row.labels(), row.backend.shadow_picks()))
                .collect()
        }),
    },
    Family {
        name: "reloads",
        help: "Plugin and config reloads by result.",
        unit: None,
        samples: Samples::Counter(|s| {
            let label = |(kind, result): (ReloadKind, ReloadResult)| {
                labels([("kind", kind.as_str()), ("result", result.as_str())])
            };
            s.reloads.iter().map(|&(key, n)| (label(key), n)).collect()
        }),
    },
    Family {
        name: "client_connections",
        help: "Client connections open now, by the worker thread serving them.",
        unit: None,
        samples: Samples::Gauge(|s| {
            let label = |worker: usize| vec![("worker", Cow::Owned(worker.to_string()))];
            let open = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            s.connections
                .iter()
                .enumerate()
                .map(|(worker, &n)| (label(worker), open(n)))
                .collect()
        }),
    },
    Family {
        name: "start_time",
        help: "When the proxy started, in seconds since the Unix epoch.",
        unit: Some(Unit::Seconds),
        samples: Samples::Gauge(|s| {
            let version = labels([("version", env!("CARGO_PKG_VERSION"))]);
            vec![(version, s.started)]
        }),
    },
];

/// One metric family: its descriptor and where its samples come from.
struct Family {
    /// Without the `switchyard_` prefix and the encoder's suffixes.
    name: &'static str,
    /// The `# HELP` text.
    help: &'static str,
    /// `# UNIT`, also a suffix of the name.
    unit: Option<Unit>,
    /// The type, and the samples of one scrape.
    samples: Samples,
}

/// A family's type (the `# TYPE` line) and how its labelled values are read
/// from a [`Scrape`].
enum Samples {
    Counter(fn(&Scrape) -> Vec<(Labels<'_>, u64)>),
    Gauge(fn(&Scrape) -> Vec<(Labels<'_>, i64)>),
    Histogram(fn(&Scrape) -> Vec<(Labels<'_>, Buckets)>),
}

impl Family {
    fn encode(&self, enc: &mut DescriptorEncoder<'_>, scrape: &Scrape) -> Result<(), Error> {
        let metric_type = match self.samples {
            Samples::Counter(_) => MetricType::Counter,
            Samples::Gauge(_) => MetricType::Gauge,
            Samples::Histogram(_) => MetricType::Histogram,
        };
        let mut m = enc.encode_descriptor(self.name, self.help, self.unit.as_ref(), metric_type)?;
        match self.samples {
            Samples::Counter(samples) => {
                for (labels, v) in samples(scrape) {
                    m.encode_family(&labels)?
                        .encode_counter::<Labels<'_>, _, f64>(&v, None)?;
                }
            }
            Samples::Gauge(samples) => {
                for (labels, v) in samples(scrape) {
                    m.encode_family(&labels)?.encode_gauge(&v)?;
                }
            }
            Samples::Histogram(samples) => {
                for (labels, h) in samples(scrape) {
                    m.encode_family(&labels)?
                        .encode_histogram::<Labels<'_>>(h.sum, h.count, &h.buckets, None)?;
                }
            }
        }
        Ok(())
    }
}

type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// `name="value"` pairs as a label set.
fn labels<'a, const N: usize>(pairs: [(&'static str, &'a str); N]) -> Labels<'a> {
    pairs
        .into_iter()
        .map(|(name, value)| (name, Cow::Borrowed(value)))
        .collect()
}

/// `labels` and one more.
fn with<'a>(mut labels: Labels<'a>, name: &'static str, value: &'a str) -> Labels<'a> {
    labels.push((name, Cow::Borrowed(value)));
    labels
}

/// A histogram's sample: per-bucket counts (the encoder makes them
/// cumulative) with their upper bounds, and the sum, in seconds.
struct Buckets {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl Buckets {
    /// `h`, whose bounds and sum are in `unit_per_second` units.
    fn of<const N: usize>(h: &Histogram<N>, unit_per_second: f64) -> Buckets {
        let counts = h.counts();
        let buckets = counts
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
        Buckets {
            sum: h.sum() as f64 / unit_per_second,
            count: counts.iter().sum(),
            buckets,
        }
    }
}

/// What one scrape reads, gathered once so that every family sees the same
/// routing generation and the same strategies.
struct Scrape {
    table: Arc<RouteTable>,
    /// Every backend, upstream by upstream.
    backends: Vec<BackendRow>,
    /// Every upstream's live strategy.
    strategies: Vec<StrategyRow>,
    /// Every upstream's admission plugin, where it has one.
    admissions: Vec<AdmissionRow>,
    /// Reloads since start by `(kind, result)`.
    reloads: Vec<((ReloadKind, ReloadResult), u64)>,
    /// Client connections open on each worker.
    connections: Vec<usize>,
    /// When the proxy started, in seconds since the Unix epoch.
    started: i64,
}

/// A backend and the upstream it serves.
struct BackendRow {
    upstream: Arc<Upstream>,
    backend: Arc<Backend>,
}

impl BackendRow {
    /// `upstream="...",backend="<address>"`.
    fn labels(&self) -> Labels<'_> {
        labels([
            ("upstream", self.upstream.name()),
            ("backend", self.backend.address.as_str()),
        ])
    }
}

/// An upstream and its live strategy.
struct StrategyRow {
    upstream: Arc<Upstream>,
    strategy: Arc<Strategy>,
}

impl StrategyRow {
    /// `upstream="...",plugin="<strategy as configured>"`.
    fn labels(&self) -> Labels<'_> {
        labels([
            ("upstream", self.upstream.name()),
            ("plugin", self.upstream.config.strategy.as_str()),
        ])
    }
}

/// An upstream and its admission plugin.
struct AdmissionRow {
    upstream: Arc<Upstream>,
    admission: Arc<Admission>,
}

/// A row of plugin counters: a strategy or an admission plugin.
trait PluginRow {
    /// `upstream="...",plugin="<as configured>"`.
    fn labels(&self) -> Labels<'_>;
    /// Its counters.
    fn stats(&self) -> &StrategyStats;
}

impl PluginRow for StrategyRow {
    fn labels(&self) -> Labels<'_> {
        StrategyRow::labels(self)
    }

    fn stats(&self) -> &StrategyStats {
        &self.strategy.stats
    }
}

impl PluginRow for AdmissionRow {
    fn labels(&self) -> Labels<'_> {
        let plugin = self.upstream.config.admission_plugin.as_deref();
        labels([
            ("upstream", self.upstream.name()),
            ("plugin", plugin.unwrap_or("")),
        ])
    }

    fn stats(&self) -> &StrategyStats {
        &self.admission.stats
    }
}

impl Scrape {
    fn new(gateway: &Gateway) -> Scrape {
        let table = arc_swap::Guard::into_inner(gateway.routes());
        let backends = table
            .upstreams
            .iter()
            .flat_map(|u| {
                let set = u.backends.load_full();
                (0..set.backends.len()).map(move |i| BackendRow {
                    upstream: Arc::clone(u),
                    backend: Arc::clone(&set.backends[i]),
                })
            })
            .collect();
        let strategies = table
            .upstreams
            .iter()
            .map(|u| StrategyRow {
                upstream: Arc::clone(u),
                strategy: u.strategy.load_full(),
            })
            .collect();
        let admissions = table
            .upstreams
            .iter()
            .filter_map(|u| {
                Some(AdmissionRow {
                    upstream: Arc::clone(u),
                    admission: u.admission.as_ref()?.load_full(),
                })
            })
            .collect();
        Scrape {
            backends,
            strategies,
            admissions,
            table,
            reloads: gateway.reload_counts(),
            connections: gateway.connections().open(),
            started: i64::try_from(unix_ms(gateway.started()) / 1000).unwrap_or(i64::MAX),
        }
    }

    /// One sample per backend, labelled with its upstream and address.
    fn per_backend<V>(&self, value: impl Fn(&Backend) -> V) -> Vec<(Labels<'_>, V)> {
        let backends = self.backends.iter();
        backends
            .map(|row| (row.labels(), value(&row.backend)))
            .collect()
    }

    /// One sample per plugin an upstream runs: its role, its file stem and
    /// what it declares itself. Strategies and admission plugins as this
    /// scrape gathered them; shadows from its table.
    fn plugin_info(&self) -> Vec<(Labels<'_>, i64)> {
        let strategies = self.strategies.iter().map(|row| {
            let stem = row.upstream.config.strategy.as_str();
            (
                &row.upstream,
                "strategy",
                stem,
                Arc::clone(&row.strategy.compiled),
            )
        });
        let shadows = self.table.upstreams.iter().filter_map(|u| {
            let shadow = u.shadow.as_ref()?;
            let compiled = Arc::clone(&shadow.strategy.load().compiled);
            Some((u, "shadow", shadow.name.as_str(), compiled))
        });
        let admissions = self.admissions.iter().map(|row| {
            let stem = row
                .upstream
                .config
                .admission_plugin
                .as_deref()
                .unwrap_or("");
            (
                &row.upstream,
                "admission",
                stem,
                Arc::clone(&row.admission.compiled),
            )
        });
        strategies
            .chain(shadows)
            .chain(admissions)
            .map(|(upstream, role, stem, compiled)| {
                let declared = compiled.declared.as_ref();
                let name = declared.map_or(String::new(), |d| d.name.clone());
                let version = declared.and_then(|d| d.version.clone()).unwrap_or_default();
                let mut set = labels([
                    ("upstream", upstream.name()),
                    ("plugin", stem),
                    ("role", role),
                ]);
                set.push(("algorithm", Cow::Owned(name)));
                set.push(("version", Cow::Owned(version)));
                (set, 1)
            })
            .collect()
    }

    /// One sample per plugin of `rows` and `(value, counter)` pair that
    /// `counts` lists, labelled with the upstream, the plugin and
    /// `label="value"` (no extra label when `label` is `None`).
    fn per_plugin<'r, R: PluginRow, const N: usize>(
        &self,
        rows: &'r [R],
        label: Option<&'static str>,
        counts: impl Fn(&StrategyStats) -> [(&'static str, &AtomicU64); N],
    ) -> Vec<(Labels<'r>, u64)> {
        let mut samples = Vec::new();
        for row in rows {
            for (value, n) in counts(row.stats()) {
                let labels = match label {
                    Some(label) => with(row.labels(), label, value),
                    None => row.labels(),
                };
                samples.push((labels, n.load(Ordering::Relaxed)));
            }
        }
        samples
    }

    /// One sample per limiter that `limiters` lists for an upstream (`None`:
    /// the upstream has none of that kind): the keys it holds, labelled with
    /// the upstream and the limiter's name.
    fn limiter_keys(
        &self,
        limiters: impl Fn(&Upstream) -> Option<Vec<(String, usize)>>,
    ) -> Vec<(Labels<'_>, i64)> {
        let mut samples = Vec::new();
        for u in &self.table.upstreams {
            for (name, keys) in limiters(u).unwrap_or_default() {
                let labels = vec![
                    ("upstream", Cow::Borrowed(u.name())),
                    ("limiter", Cow::Owned(name)),
                ];
                samples.push((labels, i64::try_from(keys).unwrap_or(i64::MAX)));
            }
        }
        samples
    }
}
