//! `GET /status`: every upstream, its strategy and its backends, as JSON,
//! with the listeners and the routes; and the smaller per-second `stats`
//! event of `/events`.
//!
//! Fields added for the dashboard (all times are wall-clock Unix ms):
//!
//! - `listeners`: `[{address, tls}]`, the plain HTTP listener and the
//!   HTTPS one when `[tls]` is on;
//! - `routes`: `[{upstream, hosts, path_prefix}]` in config order (`hosts`
//!   empty: any host; `*.example.com` for a wildcard); a request goes to
//!   the most specific host, then the longest prefix;
//! - per backend: `since_ms` (down since it went down, up since it came
//!   back or joined), `down` (`[{check, reason}]`, empty when up: `check`
//!   is `active` with the failed probe, e.g. `GET /health answered 503
//!   Service Unavailable` or `GET /health: connect failed: Connection
//!   refused`, or `passive` with the failure count and the last error),
//!   `connections` (`{idle, opened}`: kept in the pool now, opened since it
//!   joined; in use is about `in_flight`), `bytes_sent` / `bytes_received`
//!   (request / response body bytes) and `retried` (its failed tries that
//!   were tried again).
//!
//! The `stats` event carries, per upstream and backend, the last second's
//! point of the history (`p50_ms`, `p99_ms`, `responses`; see
//! [`super::history`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde::Serialize;

use super::history::{History, Point};
use crate::backend::health::DownReason;
use crate::backend::{Backend, BackendSet};
use crate::base::clock::unix_ms;
use crate::base::config::HostPattern;
use crate::base::stats::LATENCY_BOUNDS_US;
use crate::gateway::upstream::Upstream;
use crate::gateway::{Gateway, ReloadRecord};
use crate::plugin::{StrategyStats, builtin};

/// The whole `/status` document.
#[derive(Debug, Serialize)]
pub struct Status {
    version: &'static str,
    started_at_ms: u64,
    uptime_secs: f64,
    listen: String,
    /// Where the proxy takes requests.
    listeners: Vec<ListenerStatus>,
    /// Which requests go to which upstream, in config order.
    routes: Vec<RouteStatus>,
    /// Upgraded connections (WebSockets and other tunnels) open now.
    tunnels: usize,
    upstreams: Vec<UpstreamStatus>,
    reloads: Vec<ReloadRecord>,
}

/// One listener of the proxy.
#[derive(Debug, Serialize)]
struct ListenerStatus {
    /// The bound address.
    address: String,
    /// HTTPS (`[tls]`) or plain HTTP.
    tls: bool,
}

/// One upstream's route.
#[derive(Debug, Serialize)]
struct RouteStatus {
    upstream: String,
    /// Host names it serves (`*.example.com` for a wildcard); empty: any.
    hosts: Vec<String>,
    path_prefix: String,
}

/// Where the proxy listens: plain HTTP, and HTTPS when `[tls]` is on.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    /// The plain HTTP listener.
    pub http: SocketAddr,
    /// The HTTPS listener.
    pub https: Option<SocketAddr>,
}

#[derive(Debug, Serialize)]
struct UpstreamStatus {
    name: String,
    strategy: StrategyStatus,
    requests: u64,
    retries: u64,
    in_flight: u32,
    /// Backends the upstream counts as down, as strategies see it
    /// (`request.avoid` is set while this is above 0). Passive time-outs
    /// that ran out leave it within 100 ms, by the health task.
    backends_down: u32,
    backends: Vec<BackendStatus>,
    /// `null` without `shadow = "..."`.
    shadow: Option<ShadowStatus>,
    /// `null` without admission rules (`allow`, `deny`, `limit-req`,
    /// `limit-conn`).
    admission: Option<AdmissionStatus>,
}

/// An upstream's admission verdicts since start, and its limiters now.
#[derive(Debug, Serialize)]
struct AdmissionStatus {
    allowed: u64,
    /// Refused by `deny` or `allow` (403).
    denied: u64,
    /// Refused by `limit-req` or `limit-conn`.
    limited: u64,
    /// Let through by a limit in `dry-run` that would have refused them.
    dry_run: u64,
    limiters: Vec<LimiterStatus>,
    /// `null` without `admission = "..."`.
    plugin: Option<AdmissionPluginStatus>,
}

/// An upstream's admission plugin: its build, its calls and failures, and
/// the limiters it declared.
#[derive(Debug, Serialize)]
struct AdmissionPluginStatus {
    name: String,
    plugin: String,
    /// What the plugin declares itself, `NAME@VERSION` (`null`: it does
    /// not; the `switchyard:plugin` custom section).
    algorithm: Option<String>,
    hash: String,
    loaded_at_ms: u64,
    /// Calls the plugin answered.
    calls: u64,
    failures: Failures,
    instances: u64,
    /// Mean time of a call (the cost it adds to a request).
    call_us_mean: Option<f64>,
    limiters: Vec<PluginLimiterStatus>,
}

#[derive(Debug, Serialize)]
struct PluginLimiterStatus {
    /// As the plugin declared it.
    name: String,
    /// `rate`, `concurrency` or `counter`.
    kind: &'static str,
    keys: usize,
    max_keys: usize,
}

fn admission_plugin(u: &Upstream) -> Option<AdmissionPluginStatus> {
    let admission = u.admission.as_ref()?.load();
    let compiled = &admission.compiled;
    let st = &admission.stats;
    let timed: u64 = st.pick_ns.counts().iter().sum();
    Some(AdmissionPluginStatus {
        name: u.config.admission_plugin.clone().unwrap_or_default(),
        plugin: compiled.path.display().to_string(),
        algorithm: compiled.algorithm(),
        hash: format!("{:016x}", compiled.hash),
        loaded_at_ms: unix_ms(compiled.loaded_at),
        calls: st.picks.load(Ordering::Relaxed),
        failures: failures(st),
        instances: st.instances.load(Ordering::Relaxed),
        call_us_mean: (timed > 0).then(|| st.pick_ns.sum() as f64 / timed as f64 / 1e3),
        limiters: admission
            .registry
            .limiters()
            .into_iter()
            .map(|(name, kind, keys, max_keys)| PluginLimiterStatus {
                name,
                kind,
                keys,
                max_keys,
            })
            .collect(),
    })
}

fn failures(st: &StrategyStats) -> Failures {
    Failures {
        trap: st.traps.load(Ordering::Relaxed),
        timeout: st.timeouts.load(Ordering::Relaxed),
        bad_answer: st.bad_answers.load(Ordering::Relaxed),
        instantiate: st.instantiate_failures.load(Ordering::Relaxed),
        skipped: st.skipped.load(Ordering::Relaxed),
    }
}

#[derive(Debug, Serialize)]
struct LimiterStatus {
    /// `limit-req`, `limit-req[1]`, `limit-conn`, ...
    name: String,
    /// Keys it remembers now.
    keys: usize,
    /// Most keys it remembers (about `limit-keys`).
    max_keys: usize,
}

fn admission(u: &Upstream) -> Option<AdmissionStatus> {
    let gate = u.gate.as_ref()?;
    let tally = &gate.tally;
    Some(AdmissionStatus {
        allowed: tally.total("allowed"),
        denied: tally.total("denied"),
        limited: tally.total("limited"),
        dry_run: tally.total("dry-run"),
        limiters: gate
            .limiters()
            .into_iter()
            .map(|(name, keys, max_keys)| LimiterStatus {
                name,
                keys,
                max_keys,
            })
            .collect(),
        plugin: admission_plugin(u),
    })
}

#[derive(Debug, Serialize)]
struct StrategyStatus {
    name: String,
    plugin: String,
    /// What the plugin declares itself, `NAME@VERSION` (`null`: it does
    /// not): a least-conn build copied over `round-robin.wasm` has `name`
    /// `round-robin` and `algorithm` `least-conn@0.1.0`.
    algorithm: Option<String>,
    hash: String,
    /// The build is the reference copy compiled into the binary.
    builtin: bool,
    loaded_at_ms: u64,
    picks: u64,
    failures: Failures,
    /// Instances made: one per worker thread that picked, plus one for
    /// every instance replaced after a trap or an overrun deadline.
    instances: u64,
    /// Exports `state`: carries its state across reloads.
    stateful: bool,
    /// Threads whose instance continued from the previous version's.
    handovers: u64,
    /// Hand-overs that failed (that thread started fresh).
    handover_failures: u64,
}

/// An upstream's shadow strategy and how it compares with the live one.
#[derive(Debug, Serialize)]
struct ShadowStatus {
    name: String,
    plugin: String,
    /// What the plugin declares itself (`null`: it does not).
    algorithm: Option<String>,
    hash: String,
    loaded_at_ms: u64,
    /// Picks the shadow was asked for: `agreements + disagreements +
    /// failures`.
    picks: u64,
    agreements: u64,
    disagreements: u64,
    failures: u64,
    /// `agreements / (agreements + disagreements)`; `null` before any.
    agreement_ratio: Option<f64>,
    /// Mean time of a shadow pick (the cost it adds to a request).
    pick_us_mean: Option<f64>,
    /// The split it would have produced.
    backends: Vec<ShadowBackend>,
}

#[derive(Debug, Serialize)]
struct ShadowBackend {
    id: String,
    address: String,
    picks: u64,
    share: f64,
}

#[derive(Debug, Serialize)]
struct Failures {
    trap: u64,
    timeout: u64,
    bad_answer: u64,
    instantiate: u64,
    /// Picks served without the plugin while it was paused after failing
    /// again and again.
    skipped: u64,
}

#[derive(Debug, Serialize)]
struct BackendStatus {
    id: String,
    address: String,
    weight: u32,
    healthy: bool,
    health: Health,
    in_flight: u32,
    requests: u64,
    failures: u64,
    responses: Responses,
    latency_ms: Option<Latency>,
    /// What strategies read through `backends.latency`: the peak EWMA of
    /// the time to response head, in nanoseconds; 0 before the first
    /// response.
    latency_estimate_ns: u64,
    share: f64,
    /// Down since (when down), up since (when up).
    since_ms: u64,
    /// Why it is down; empty when up.
    down: Vec<DownReason>,
    connections: Connections,
    /// Request body bytes sent to it.
    bytes_sent: u64,
    /// Response body bytes received from it.
    bytes_received: u64,
    /// Its failed tries that were tried again.
    retried: u64,
}

/// A backend's connections.
#[derive(Debug, Serialize)]
struct Connections {
    /// Kept idle in the pool now.
    idle: usize,
    /// Opened since the backend joined.
    opened: u64,
}

#[derive(Debug, Serialize)]
struct Health {
    active: &'static str,
    passive: &'static str,
}

#[derive(Debug, Serialize)]
struct Responses {
    #[serde(rename = "1xx")]
    c1: u64,
    #[serde(rename = "2xx")]
    c2: u64,
    #[serde(rename = "3xx")]
    c3: u64,
    #[serde(rename = "4xx")]
    c4: u64,
    #[serde(rename = "5xx")]
    c5: u64,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
}

fn up(ok: bool) -> &'static str {
    if ok { "up" } else { "down" }
}

/// The current status of `gateway`, serving on `listen`.
pub fn status(gateway: &Gateway, listen: Listeners) -> Status {
    let table = gateway.routes();
    let started = gateway.started();
    let mut listeners = vec![ListenerStatus {
        address: listen.http.to_string(),
        tls: false,
    }];
    listeners.extend(listen.https.map(|a| ListenerStatus {
        address: a.to_string(),
        tls: true,
    }));
    let routes = table
        .upstreams
        .iter()
        .map(|u| RouteStatus {
            upstream: u.name().to_owned(),
            hosts: u
                .config
                .hosts
                .iter()
                .map(|h| match h {
                    HostPattern::Exact(name) => name.clone(),
                    HostPattern::Suffix(suffix) => format!("*{suffix}"),
                })
                .collect(),
            path_prefix: u.config.path_prefix.clone(),
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        started_at_ms: unix_ms(started),
        uptime_secs: SystemTime::now()
            .duration_since(started)
            .map_or(0.0, |d| d.as_secs_f64()),
        listen: listen.http.to_string(),
        listeners,
        routes,
        tunnels: gateway.tunnels().count(),
        upstreams: table.upstreams.iter().map(|u| upstream(u)).collect(),
        reloads: gateway.reload_history(),
    }
}

fn upstream(u: &Upstream) -> UpstreamStatus {
    let set = u.backends.load();
    // Read before anything below could settle it.
    let backends_down = set.unhealthy();
    let strategy = u.strategy.load();
    let compiled = &strategy.compiled;
    let st = &strategy.stats;
    let recents: Vec<_> = set
        .backends
        .iter()
        .map(|b| b.window.recent(&LATENCY_BOUNDS_US))
        .collect();
    // Share of the recent window; of all requests when the window is idle.
    let window_total: u64 = recents.iter().map(|r| r.requests).sum();
    let all_total: u64 = set.backends.iter().map(|b| b.requests()).sum();
    let checks = u.config.health_check.is_some();
    let backends = set
        .backends
        .iter()
        .zip(&recents)
        .map(|(b, r)| {
            let share = if window_total > 0 {
                r.requests as f64 / window_total as f64
            } else if all_total > 0 {
                b.requests() as f64 / all_total as f64
            } else {
                0.0
            };
            backend(b, checks, r.p50_ms.zip(r.p99_ms), share)
        })
        .collect();
    let builtin = builtin::is_builtin(&compiled.name, compiled.hash);
    UpstreamStatus {
        name: u.name().to_owned(),
        strategy: StrategyStatus {
            name: u.config.strategy.clone(),
            plugin: compiled.path.display().to_string(),
            algorithm: compiled.algorithm(),
            hash: format!("{:016x}", compiled.hash),
            builtin,
            loaded_at_ms: unix_ms(compiled.loaded_at),
            picks: st.picks.load(Ordering::Relaxed),
            failures: failures(st),
            instances: st.instances.load(Ordering::Relaxed),
            stateful: compiled.stateful(),
            handovers: st.handovers.load(Ordering::Relaxed),
            handover_failures: st.handover_failures.load(Ordering::Relaxed),
        },
        requests: all_total,
        retries: u.retries.load(Ordering::Relaxed),
        in_flight: set.in_flight(),
        backends_down,
        backends,
        shadow: shadow(u, &set),
        admission: admission(u),
    }
}

fn shadow(u: &Upstream, set: &BackendSet) -> Option<ShadowStatus> {
    let shadow = u.shadow.as_ref()?;
    let strategy = shadow.strategy.load();
    let compiled = &strategy.compiled;
    let st = &shadow.stats;
    let total: u64 = set.backends.iter().map(|b| b.shadow_picks()).sum();
    let timed: u64 = strategy.stats.pick_ns.counts().iter().sum();
    Some(ShadowStatus {
        name: shadow.name.clone(),
        plugin: compiled.path.display().to_string(),
        algorithm: compiled.algorithm(),
        hash: format!("{:016x}", compiled.hash),
        loaded_at_ms: unix_ms(compiled.loaded_at),
        picks: st.picks.load(Ordering::Relaxed),
        agreements: st.agreements.load(Ordering::Relaxed),
        disagreements: st.disagreements.load(Ordering::Relaxed),
        failures: st.failures.load(Ordering::Relaxed),
        agreement_ratio: st.agreement_ratio(),
        pick_us_mean: (timed > 0).then(|| strategy.stats.pick_ns.sum() as f64 / timed as f64 / 1e3),
        backends: set
            .backends
            .iter()
            .map(|b| ShadowBackend {
                id: b.id.clone(),
                address: b.address.clone(),
                picks: b.shadow_picks(),
                share: if total > 0 {
                    b.shadow_picks() as f64 / total as f64
                } else {
                    0.0
                },
            })
            .collect(),
    })
}

fn backend(b: &Backend, checks: bool, latency: Option<(f64, f64)>, share: f64) -> BackendStatus {
    let [c1, c2, c3, c4, c5] = b.responses.counts();
    let (active, passive) = (b.health.active_up(), b.health.passive_up());
    BackendStatus {
        id: b.id.clone(),
        address: b.address.clone(),
        weight: b.weight,
        healthy: active && passive,
        health: Health {
            active: if checks { up(active) } else { "off" },
            passive: up(passive),
        },
        in_flight: b.in_flight(),
        requests: b.requests(),
        failures: b.failures(),
        responses: Responses { c1, c2, c3, c4, c5 },
        latency_ms: latency.map(|(p50, p99)| Latency { p50, p99 }),
        latency_estimate_ns: b.latency.peak_ewma_ns(),
        share,
        since_ms: b.health.since_ms(),
        down: b.health.why_down(),
        connections: Connections {
            idle: b.pool.idle(),
            opened: b.connects(),
        },
        bytes_sent: b.bytes_sent(),
        bytes_received: b.bytes_received(),
        retried: b.retried(),
    }
}

/// The per-second `stats` event.
#[derive(Debug, Serialize)]
pub struct Stats {
    t_ms: u64,
    upstreams: Vec<UpstreamStats>,
}

#[derive(Debug, Serialize)]
struct UpstreamStats {
    name: String,
    strategy: String,
    rps: f64,
    in_flight: u32,
    #[serde(flatten)]
    last: Option<LastSecond>,
    backends: Vec<BackendStats>,
    shadow: Option<ShadowStatus>,
    admission: Option<AdmissionStatus>,
}

/// The last second's point of the history.
#[derive(Debug, Serialize)]
struct LastSecond {
    /// Time to response head of that second's responses; `null`: none.
    p50_ms: Option<f32>,
    p99_ms: Option<f32>,
    /// Responses in that second, `1xx` first.
    responses: [u32; 5],
}

fn last(p: Option<Point>) -> Option<LastSecond> {
    let finite = |v: f32| v.is_finite().then_some(v);
    p.map(|p| LastSecond {
        p50_ms: finite(p.p50_ms),
        p99_ms: finite(p.p99_ms),
        responses: p.classes,
    })
}

#[derive(Debug, Serialize)]
struct BackendStats {
    id: String,
    address: String,
    rps: f64,
    in_flight: u32,
    healthy: bool,
    requests: u64,
    failures: u64,
    bytes_sent: u64,
    bytes_received: u64,
    retried: u64,
    #[serde(flatten)]
    last: Option<LastSecond>,
}

/// The `stats` event from the latest samples, taken at `t_ms` (Unix ms).
pub fn stats(gateway: &Gateway, history: &History, t_ms: u64) -> Stats {
    let table = gateway.routes();
    let upstreams = table
        .upstreams
        .iter()
        .map(|u| {
            let set = u.backends.load();
            let backends: Vec<BackendStats> = set
                .backends
                .iter()
                .map(|b| BackendStats {
                    id: b.id.clone(),
                    address: b.address.clone(),
                    rps: b.window.recent(&LATENCY_BOUNDS_US).rps,
                    in_flight: b.in_flight(),
                    healthy: b.health.looks_up(),
                    requests: b.requests(),
                    failures: b.failures(),
                    bytes_sent: b.bytes_sent(),
                    bytes_received: b.bytes_received(),
                    retried: b.retried(),
                    last: last(history.latest(u.name(), Some(&b.id))),
                })
                .collect();
            UpstreamStats {
                name: u.name().to_owned(),
                strategy: u.config.strategy.clone(),
                rps: backends.iter().map(|b| b.rps).sum(),
                in_flight: backends.iter().map(|b| b.in_flight).sum(),
                last: last(history.latest(u.name(), None)),
                backends,
                shadow: shadow(u, &set),
                admission: admission(u),
            }
        })
        .collect();
    Stats { t_ms, upstreams }
}
