//! The last 15 minutes of every upstream and backend, one point a second,
//! kept by the admin sampler so that a dashboard opened now starts with the
//! whole picture (`GET /history`), not an empty chart.
//!
//! The sampler ([`History::record`]) reads the counters the request path
//! keeps anyway (requests, responses by class, the latency histogram) and
//! stores the differences since its last tick: requests per second,
//! responses per class, p50/p99 of the responses of that second, and
//! whether the backend was up. The request path is not touched: no lock,
//! no extra counter. An upstream's point is made from its backends'
//! differences (its latency quantiles from their summed histograms).
//!
//! Series are keyed by upstream name and backend id, so a config reload
//! that keeps an upstream or a backend keeps its history; ones that are
//! gone are dropped at the next tick. A backend rebuilt under the same id
//! (its counters start again) continues its series after one skipped tick.
//!
//! Memory is bounded: each series is a ring of [`SPAN`] points of
//! [`POINT_BYTES`] bytes, about 43 KB per backend and per upstream (plus the
//! last tick's latency counts, 248 bytes), so 3 backends in 1 upstream take
//! about 175 KB and 100 backends in 4 upstreams about 4.5 MB.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use crate::backend::Backend;
use crate::base::clock::{Instant, unix_ms};
use crate::base::stats::{LATENCY_BOUNDS_US, quantile};
use crate::gateway::router::RouteTable;

/// Points kept per series: 15 minutes at one a second.
pub const SPAN: usize = 900;

/// One second of one upstream or backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Wall-clock time of the sample (Unix ms).
    pub t_ms: u64,
    /// Requests per second since the previous sample.
    pub rps: f32,
    /// Median time to response head of that second's responses (ms); NaN
    /// when none came.
    pub p50_ms: f32,
    /// 99th percentile, as `p50_ms`.
    pub p99_ms: f32,
    /// Responses of that second by status class, `1xx` first.
    pub classes: [u32; 5],
    /// Backends: up at the sample. Upstreams: all of its backends were up.
    pub healthy: bool,
}

/// The size of one stored point.
pub const POINT_BYTES: usize = std::mem::size_of::<Point>();
const _: () = assert!(
    POINT_BYTES <= 48,
    "the memory figures above assume 48 bytes"
);

/// The counters at the last tick, to take differences from.
#[derive(Debug)]
struct Prev {
    at: Instant,
    /// Which backend these counters belong to (its address: a rebuilt one
    /// starts over; only compared, never followed).
    backend: usize,
    requests: u64,
    classes: [u64; 5],
    latency: Vec<u64>,
}

#[derive(Debug, Default)]
struct Series {
    points: VecDeque<Point>,
    prev: Option<Prev>,
}

impl Series {
    fn push(&mut self, p: Point) {
        if self.points.capacity() == 0 {
            self.points.reserve_exact(SPAN);
        }
        if self.points.len() >= SPAN {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }
}

#[derive(Debug, Default)]
struct UpstreamSeries {
    total: Series,
    backends: HashMap<String, Series>,
}

/// The history of every upstream and backend; written once a second by
/// the admin sampler, read by `/history` and the `stats` event.
#[derive(Debug, Default)]
pub struct History(Mutex<HashMap<String, UpstreamSeries>>);

/// A backend's differences over one tick.
struct Delta {
    secs: f64,
    requests: u64,
    classes: [u64; 5],
    latency: Vec<u64>,
}

fn delta(series: &mut Series, b: &Arc<Backend>, now: Instant) -> Option<Delta> {
    let requests = b.requests();
    let classes = b.responses.counts();
    let latency = b.latency.counts();
    let prev = series.prev.replace(Prev {
        at: now,
        backend: Arc::as_ptr(b).addr(),
        requests,
        classes,
        latency: latency.clone(),
    })?;
    if prev.backend != Arc::as_ptr(b).addr() || requests < prev.requests {
        return None;
    }
    let secs = now.saturating_duration_since(prev.at).as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    Some(Delta {
        secs,
        requests: requests - prev.requests,
        classes: std::array::from_fn(|i| classes[i].saturating_sub(prev.classes[i])),
        latency: latency
            .iter()
            .zip(&prev.latency)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
    })
}

fn point(t_ms: u64, d: &Delta, healthy: bool) -> Point {
    let ms =
        |q| quantile(&LATENCY_BOUNDS_US, &d.latency, q).map_or(f32::NAN, |us| (us / 1e3) as f32);
    Point {
        t_ms,
        rps: (d.requests as f64 / d.secs) as f32,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        classes: d.classes.map(|c| u32::try_from(c).unwrap_or(u32::MAX)),
        healthy,
    }
}

impl History {
    /// Takes one sample of every upstream and backend in `table`, `now`;
    /// forgets the series of those no longer in it. Returns the sample's
    /// wall-clock time (Unix ms), which the `stats` event of the same tick
    /// carries too.
    pub fn record(&self, table: &RouteTable, now: Instant) -> u64 {
        let t_ms = unix_ms(SystemTime::now());
        let Ok(mut all) = self.0.lock() else {
            return t_ms;
        };
        all.retain(|name, _| table.upstream(name).is_some());
        for upstream in &table.upstreams {
            let set = upstream.backends.load();
            let ups = all.entry(upstream.name().to_owned()).or_default();
            // By set, not by scanning the backends for each series: O(n)
            // a tick at 10 000 backends.
            let ids: HashSet<&str> = set.backends.iter().map(|b| b.id.as_str()).collect();
            ups.backends.retain(|id, _| ids.contains(id.as_str()));
            let mut sum: Option<Delta> = None;
            let mut all_up = true;
            for b in &set.backends {
                let series = ups.backends.entry(b.id.clone()).or_default();
                let healthy = b.health.looks_up();
                all_up &= healthy;
                let Some(d) = delta(series, b, now) else {
                    continue;
                };
                series.push(point(t_ms, &d, healthy));
                match &mut sum {
                    None => sum = Some(d),
                    Some(s) => {
                        s.secs = s.secs.max(d.secs);
                        s.requests += d.requests;
                        for (a, b) in s.classes.iter_mut().zip(d.classes) {
                            *a += b;
                        }
                        for (a, b) in s.latency.iter_mut().zip(&d.latency) {
                            *a += b;
                        }
                    }
                }
            }
            if let Some(d) = sum {
                ups.total.push(point(t_ms, &d, all_up));
            }
        }
        t_ms
    }

    /// The latest point of `upstream` (with `backend`: of that backend).
    pub fn latest(&self, upstream: &str, backend: Option<&str>) -> Option<Point> {
        let all = self.0.lock().ok()?;
        let ups = all.get(upstream)?;
        let series = match backend {
            Some(id) => ups.backends.get(id)?,
            None => &ups.total,
        };
        series.points.back().copied()
    }

    /// Everything kept, for `GET /history`: upstreams and backends in the
    /// order of `table`.
    pub fn snapshot(&self, table: &RouteTable) -> HistoryDoc {
        let all = self.0.lock().ok();
        let upstreams = table
            .upstreams
            .iter()
            .map(|u| {
                let kept = all.as_ref().and_then(|a| a.get(u.name()));
                let set = u.backends.load();
                UpstreamHistory {
                    name: u.name().to_owned(),
                    series: SeriesDoc::of(kept.map(|k| &k.total), false),
                    backends: set
                        .backends
                        .iter()
                        .map(|b| BackendHistory {
                            id: b.id.clone(),
                            series: SeriesDoc::of(kept.and_then(|k| k.backends.get(&b.id)), true),
                        })
                        .collect(),
                }
            })
            .collect();
        HistoryDoc {
            interval_ms: 1000,
            span_secs: SPAN as u64,
            upstreams,
        }
    }
}

/// `GET /history`: for every upstream, its series and its backends'.
#[derive(Debug, Serialize)]
pub struct HistoryDoc {
    /// Time between points.
    interval_ms: u64,
    /// How far back the series go at most.
    span_secs: u64,
    upstreams: Vec<UpstreamHistory>,
}

#[derive(Debug, Serialize)]
struct UpstreamHistory {
    name: String,
    series: SeriesDoc,
    backends: Vec<BackendHistory>,
}

#[derive(Debug, Serialize)]
struct BackendHistory {
    id: String,
    series: SeriesDoc,
}

/// One series as parallel arrays (oldest first), one element per point.
#[derive(Debug, Serialize, Default)]
struct SeriesDoc {
    t_ms: Vec<u64>,
    rps: Vec<f32>,
    /// `null` for a second without responses.
    p50_ms: Vec<Option<f32>>,
    p99_ms: Vec<Option<f32>>,
    /// Responses per class (`1xx` ... `5xx`) in each second.
    responses: HashMap<&'static str, Vec<u32>>,
    /// Backends only: whether it was up.
    #[serde(skip_serializing_if = "Option::is_none")]
    healthy: Option<Vec<bool>>,
}

impl SeriesDoc {
    fn of(series: Option<&Series>, backend: bool) -> Self {
        let none = VecDeque::new();
        let points = series.map_or(&none, |s| &s.points);
        let finite = |v: f32| v.is_finite().then_some(v);
        let classes = crate::base::stats::CLASSES;
        SeriesDoc {
            t_ms: points.iter().map(|p| p.t_ms).collect(),
            rps: points.iter().map(|p| p.rps).collect(),
            p50_ms: points.iter().map(|p| finite(p.p50_ms)).collect(),
            p99_ms: points.iter().map(|p| finite(p.p99_ms)).collect(),
            responses: classes
                .iter()
                .enumerate()
                .map(|(i, c)| (*c, points.iter().map(|p| p.classes[i]).collect()))
                .collect(),
            healthy: backend.then(|| points.iter().map(|p| p.healthy).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_small_and_a_series_is_bounded() {
        let mut s = Series::default();
        let p = Point {
            t_ms: 0,
            rps: 0.0,
            p50_ms: f32::NAN,
            p99_ms: f32::NAN,
            classes: [0; 5],
            healthy: true,
        };
        for i in 0..(SPAN as u64 + 50) {
            s.push(Point { t_ms: i, ..p });
        }
        assert_eq!(s.points.len(), SPAN);
        assert_eq!(s.points.front().map(|p| p.t_ms), Some(50));
        assert!(s.points.capacity() < SPAN * 2);
    }
}
