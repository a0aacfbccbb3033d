//! Counters the request path keeps for the admin API: responses by status
//! class and latency histograms, each one or two relaxed atomic additions
//! per request. Windows (RPS, recent p50/p99) are computed off the request
//! path by the admin sampler from snapshots of these counters.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds (inclusive, microseconds) of the backend latency buckets:
/// fine enough for a useful p50/p99 from 100 µs to a minute.
pub const LATENCY_BOUNDS_US: [u64; 30] = [
    100, 250, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000,
    50_000, 75_000, 100_000, 150_000, 200_000, 300_000, 500_000, 750_000, 1_000_000, 1_500_000,
    2_000_000, 3_000_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Upper bounds (nanoseconds) of the plugin pick latency buckets.
pub const PICK_BOUNDS_NS: [u64; 14] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    5_000_000, 10_000_000,
];

/// A fixed-bucket histogram of durations; `N` bounds, plus one overflow
/// bucket. Recording is two relaxed atomic additions.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    /// Per-bucket counts (not cumulative); the last one is the overflow.
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    /// An empty histogram over `bounds` (in the unit `record` is given).
    pub fn new(bounds: &'static [u64; N]) -> Self {
        Self {
            bounds,
            buckets: (0..=N).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn record(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The bucket bounds.
    pub fn bounds(&self) -> &'static [u64; N] {
        self.bounds
    }

    /// Per-bucket counts now (overflow last).
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// Sum of every recorded value.
    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }
}

/// The `q` quantile (0..1) of per-bucket `counts` over `bounds`,
/// interpolated linearly inside the bucket it falls in. None when empty.
pub fn quantile(bounds: &[u64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        if (seen + c) as f64 >= rank {
            let lo = if i == 0 { 0 } else { bounds[i - 1] } as f64;
            // The overflow bucket has no upper bound: report its floor.
            let Some(&hi) = bounds.get(i) else {
                return Some(lo);
            };
            let within = (rank - seen as f64) / c as f64;
            return Some(lo + (hi as f64 - lo) * within.clamp(0.0, 1.0));
        }
        seen += c;
    }
    bounds.last().map(|&b| b as f64)
}

/// Response status classes `1xx` ... `5xx`.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Responses counted by status class.
#[derive(Debug, Default)]
pub struct StatusClasses([AtomicU64; 5]);

impl StatusClasses {
    /// Counts one response.
    pub fn record(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.0[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts per class, `1xx` first.
    pub fn counts(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }

    /// Counters that go on from `counts` (a rebuilt upstream's, so that its
    /// totals never go back).
    pub fn from_counts(counts: [u64; 5]) -> Self {
        Self(counts.map(AtomicU64::new))
    }
}

/// What one backend's traffic looked like over the recent window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recent {
    /// Requests per second over the last sample interval.
    pub rps: f64,
    /// Requests over the whole window.
    pub requests: u64,
    /// Median time to response head, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile time to response head, ms.
    pub p99_ms: Option<f64>,
}

/// How far back [`Window`] looks.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Snapshot {
    at: Instant,
    requests: u64,
    latency: Vec<u64>,
}

/// Snapshots of one backend's counters, one per sampler tick, covering
/// [`WINDOW`]. Touched only by the sampler and the admin API.
#[derive(Debug, Default)]
pub struct Window(Mutex<VecDeque<Snapshot>>);

impl Window {
    /// Takes a snapshot of `requests` and `latency` at `now`.
    pub fn sample<const N: usize>(&self, now: Instant, requests: u64, latency: &Histogram<N>) {
        let Ok(mut snaps) = self.0.lock() else {
            return;
        };
        snaps.push_back(Snapshot {
            at: now,
            requests,
            latency: latency.counts(),
        });
        while snaps
            .front()
            .is_some_and(|s| now.duration_since(s.at) > WINDOW + Duration::from_millis(500))
        {
            snaps.pop_front();
        }
    }

    /// The figures between the oldest and the newest snapshot, with the
    /// rate over the last two.
    pub fn recent(&self, bounds: &[u64]) -> Recent {
        let empty = Recent {
            rps: 0.0,
            requests: 0,
            p50_ms: None,
            p99_ms: None,
        };
        let Ok(snaps) = self.0.lock() else {
            return empty;
        };
        let (Some(first), Some(last)) = (snaps.front(), snaps.back()) else {
            return empty;
        };
        let rps = match snaps.len().checked_sub(2).and_then(|i| snaps.get(i)) {
            Some(prev) => {
                let secs = last.at.duration_since(prev.at).as_secs_f64();
                if secs > 0.0 {
                    last.requests.saturating_sub(prev.requests) as f64 / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        let delta: Vec<u64> = last
            .latency
            .iter()
            .zip(&first.latency)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let ms = |q| quantile(bounds, &delta, q).map(|us| us / 1000.0);
        Recent {
            rps,
            requests: last.requests.saturating_sub(first.requests),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let bounds = [10, 20, 40];
        // 100 values in (10, 20]: the median is half-way.
        assert_eq!(quantile(&bounds, &[0, 100, 0, 0], 0.5), Some(15.0));
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        // 99 fast, 1 in overflow: p99 still fast, p100 the overflow floor.
        let q = quantile(&bounds, &[99, 0, 0, 1], 0.99).expect("some");
        assert!(q <= 10.0, "{q}");
        assert_eq!(quantile(&bounds, &[99, 0, 0, 1], 1.0), Some(40.0));
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let h = Histogram::new(&PICK_BOUNDS_NS);
        h.record(250);
        h.record(251);
        h.record(u64::MAX / 4);
        let c = h.counts();
        assert_eq!((c[0], c[1], c[PICK_BOUNDS_NS.len()]), (1, 1, 1));
    }

    #[test]
    fn a_window_gives_rate_and_recent_quantiles() {
        let w = Window::default();
        let h = Histogram::new(&LATENCY_BOUNDS_US);
        let t0 = Instant::now();
        w.sample(t0, 0, &h);
        for _ in 0..50 {
            h.record(800); // (750, 1000] µs
        }
        w.sample(t0 + Duration::from_secs(1), 50, &h);
        let r = w.recent(&LATENCY_BOUNDS_US);
        assert_eq!(r.requests, 50);
        assert!((r.rps - 50.0).abs() < 1e-9);
        let p50 = r.p50_ms.expect("p50");
        assert!((0.75..=1.0).contains(&p50), "{p50}");
    }
}
