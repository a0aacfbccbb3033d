//! The proxy's one clock. Every piece of time-driven logic (passive health's
//! failure windows, active checks' rounds, the plugin breaker's back-off,
//! the peak-EWMA decay, idle connections ageing out) reads it here, so that
//! it can be unit-tested under tokio's paused time
//! (`#[tokio::test(start_paused = true)]` and `tokio::time::advance`), as
//! linkerd2-proxy does, instead of with sleeps.
//!
//! - [`now`]: a monotonic [`Instant`] (tokio's: the OS clock through the
//!   vDSO, no system call; paused and advanced by hand in tests);
//! - [`now_ms`] / [`now_ns`]: that clock as a number, for stamps kept in
//!   atomics (never 0, so 0 can mean "never");
//! - [`unix_ms`]: wall-clock time for what people read (reload history,
//!   the dashboard);
//! - [`Stopwatch`]: the CPU's time-stamp counter, for timing very short
//!   things on the request path (a strategy pick) where two reads of the
//!   OS clock cost more than the thing timed.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use tokio::time::Instant;

/// The monotonic clock now.
pub fn now() -> Instant {
    Instant::now()
}

/// The zero of [`now_ms`] and [`now_ns`]: an hour before the clock was
/// first read, so that every instant the process sees (also a test
/// runtime's paused clock, which may start a moment before the first read)
/// lies after it.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

/// `at` in nanoseconds on the clock of [`now_ns`].
pub fn ns_at(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin()).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// `at` in milliseconds on the clock of [`now_ms`].
pub fn ms_at(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin()).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Nanoseconds on the monotonic clock, never 0.
pub fn now_ns() -> u64 {
    ns_at(now())
}

/// Milliseconds on the monotonic clock, never 0.
pub fn now_ms() -> u64 {
    ms_at(now())
}

/// `d` in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether work last begun at `last` (never: None) is due again `now`,
/// every `every`. Saturating: no interval, however large, and no stamp
/// from the future can overflow.
pub fn due(last: Option<Instant>, every: Duration, now: Instant) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= every)
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Times short intervals with the CPU's time-stamp counter where it is
/// invariant (cheaper to read than the OS clock), else with the OS's
/// monotonic clock. Calibrated when made: make one off
/// the request path and keep it.
#[derive(Debug, Clone)]
pub struct Stopwatch(quanta::Clock);

impl Stopwatch {
    /// A calibrated stopwatch (takes a few milliseconds).
    pub fn new() -> Self {
        Self(quanta::Clock::new())
    }

    /// A reading to measure from.
    pub fn start(&self) -> u64 {
        self.0.raw()
    }

    /// Nanoseconds since `start`.
    pub fn elapsed_ns(&self, start: u64) -> u64 {
        self.0.delta_as_nanos(start, self.0.raw())
    }
}

impl Default for Stopwatch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_paused_time() {
        let (ms, ns) = (now_ms(), now_ns());
        assert!(ms > 0 && ns > 0);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(now_ms() - ms, 10_000);
        assert_eq!(now_ns() - ns, 10_000_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn work_is_due_after_its_interval_and_never_overflows() {
        let start = now();
        let every = Duration::from_secs(5);
        assert!(due(None, every, start));
        assert!(!due(Some(start), every, start));
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(!due(Some(start), every, now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(due(Some(start), every, now()));
        // The largest interval: never due again.
        assert!(!due(Some(start), Duration::MAX, now()));
        // A stamp from the future is not due.
        assert!(!due(Some(now() + Duration::from_secs(60)), every, now()));
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(unix_ms(UNIX_EPOCH), 0);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(5)), 5);
    }
}
