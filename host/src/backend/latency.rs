//! Time from sending a request to a backend to its response head: a
//! histogram for the admin API and a peak EWMA for latency-aware strategies.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::base::clock::{self, Instant};
use crate::base::stats::{Histogram, LATENCY_BOUNDS_US};

/// Time from sending a request to a backend to its response head: the
/// histogram the admin API reads (what this derefs to) and the peak EWMA
/// latency-aware strategies read through the `backends.latency` import.
/// [`ResponseLatency::record`] feeds both, with a few relaxed atomics.
#[derive(Debug)]
pub struct ResponseLatency {
    histogram: Histogram<{ LATENCY_BOUNDS_US.len() }>,
    peak: PeakEwma,
}

impl Default for ResponseLatency {
    fn default() -> Self {
        Self {
            histogram: Histogram::new(&LATENCY_BOUNDS_US),
            peak: PeakEwma::default(),
        }
    }
}

impl ResponseLatency {
    /// Records one response head that came at `now`, `us` microseconds
    /// after the request was sent.
    pub fn record(&self, us: u64, now: Instant) {
        self.histogram.record(us);
        self.peak
            .observe(us.saturating_mul(1_000), clock::ns_at(now));
    }

    /// The peak EWMA now, in nanoseconds; 0 before the first response.
    pub fn peak_ewma_ns(&self) -> u64 {
        self.peak.at(clock::now_ns())
    }
}

impl Deref for ResponseLatency {
    type Target = Histogram<{ LATENCY_BOUNDS_US.len() }>;

    fn deref(&self) -> &Self::Target {
        &self.histogram
    }
}

/// Time constant of [`PeakEwma`], in nanoseconds (10 s, linkerd's default).
const PEAK_EWMA_DECAY_NS: f64 = 10e9;

/// Peak-sensitive EWMA of response latency, after Finagle's `PeakEwma` and
/// linkerd2-proxy / tower's `peak_ewma`: a sample above the estimate
/// replaces it at once; a lower one is blended in with weight
/// `1 - e^(-dt/τ)` (`dt` since the previous sample); read `dt` after the
/// last sample, the estimate has decayed by `e^(-dt/τ)` toward 0, so a
/// backend that was slow once and then avoided is tried again.
///
/// Two relaxed atomics, no lock: concurrent samples may overwrite each
/// other, and a read may pair one sample's value with another's time.
/// Both only blur an estimate that is approximate anyway.
#[derive(Debug, Default)]
struct PeakEwma {
    /// The estimate at `stamp`, in ns; 0 = no sample yet.
    ns: AtomicU64,
    /// [`clock::now_ns`] of the last sample.
    stamp: AtomicU64,
}

impl PeakEwma {
    fn observe(&self, sample_ns: u64, now: u64) {
        let old = self.ns.load(Ordering::Relaxed);
        let then = self.stamp.swap(now, Ordering::Relaxed);
        let next = if old == 0 || sample_ns >= old {
            sample_ns
        } else {
            let w = decay(now.saturating_sub(then));
            (old as f64 * w + sample_ns as f64 * (1.0 - w)) as u64
        };
        // 0 stays reserved for "never answered".
        self.ns.store(next.max(1), Ordering::Relaxed);
    }

    fn at(&self, now: u64) -> u64 {
        match self.ns.load(Ordering::Relaxed) {
            0 => 0,
            ns => {
                let since = now.saturating_sub(self.stamp.load(Ordering::Relaxed));
                ((ns as f64 * decay(since)) as u64).max(1)
            }
        }
    }
}

/// `e^(-dt/τ)` for [`PeakEwma`].
fn decay(dt_ns: u64) -> f64 {
    if dt_ns == 0 {
        1.0
    } else {
        (-(dt_ns as f64) / PEAK_EWMA_DECAY_NS).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        const SEC: u64 = 1_000_000_000;
        let e = PeakEwma::default();
        assert_eq!(e.at(0), 0, "no sample yet");
        e.observe(1_000_000, SEC);
        assert_eq!(e.at(SEC), 1_000_000);
        // A slower response raises it at once.
        e.observe(50_000_000, SEC + 1);
        assert_eq!(e.at(SEC + 1), 50_000_000);
        // Fast responses 1 ms apart pull it down slowly (τ = 10 s) ...
        for k in 2..=1001 {
            e.observe(1_000_000, SEC + k * 1_000_000);
        }
        let after_1s = e.at(2 * SEC);
        assert!((40_000_000..49_000_000).contains(&after_1s), "{after_1s}");
        // ... and with no responses it decays toward 0, never reaching it.
        let idle = e.at(2 * SEC + 30 * SEC);
        assert!(idle < after_1s / 10 && idle > 0, "{idle}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_decays_with_the_clock() {
        let latency = ResponseLatency::default();
        assert_eq!(latency.peak_ewma_ns(), 0, "never answered");
        latency.record(20_000, clock::now());
        assert_eq!(latency.peak_ewma_ns(), 20_000_000);
        assert_eq!(latency.counts().iter().sum::<u64>(), 1);
        // τ = 10 s: after 10 s idle, e^-1 of it is left.
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        let left = latency.peak_ewma_ns() as f64 / 20e6;
        assert!((left - (-1f64).exp()).abs() < 1e-3, "{left}");
    }
}
