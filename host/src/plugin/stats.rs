//! A strategy's counters (picks, failures by kind, instances, hand-overs,
//! pick time) and its breaker: a plugin that fails again and again is left
//! alone for a while, with a back-off, and the host's round robin serves.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::base::clock;
use crate::base::stats::{Histogram, PICK_BOUNDS_NS};

/// Why a pick did not come from the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest trapped (panic, unreachable, out of memory, ...).
    Trap,
    /// The guest ran past its deadline and was interrupted.
    Timeout,
    /// The guest answered an index outside the backend set.
    BadAnswer,
    /// A new instance could not be created on this thread.
    Instantiate,
}

impl FailureKind {
    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::BadAnswer => "bad_answer",
            FailureKind::Instantiate => "instantiate",
        }
    }
}

/// Counters of one strategy.
#[derive(Debug)]
pub struct StrategyStats {
    /// Time each pick took (nanoseconds), plugin failures included.
    pub pick_ns: Histogram<{ PICK_BOUNDS_NS.len() }>,
    /// Picks answered by the plugin.
    pub picks: AtomicU64,
    /// Traps.
    pub traps: AtomicU64,
    /// Deadline overruns.
    pub timeouts: AtomicU64,
    /// Out-of-range answers.
    pub bad_answers: AtomicU64,
    /// Failed instantiations.
    pub instantiate_failures: AtomicU64,
    /// Instances created (per thread, plus replacements after failures).
    pub instances: AtomicU64,
    /// Picks served by the host's round robin without calling the plugin,
    /// because it kept failing (see [`BREAKER_AFTER`]).
    pub skipped: AtomicU64,
    /// Threads whose instance continued from their instance of the previous
    /// version (`state` snapshot restored).
    pub handovers: AtomicU64,
    /// Hand-overs that failed (snapshot trapped, timed out or was too big,
    /// or restore refused it): that thread's instance started fresh.
    pub handover_failures: AtomicU64,
    pub(super) consecutive_failures: AtomicU32,
    open_until_ms: AtomicU64,
    last_log_ms: AtomicU64,
}

/// Consecutive failures after which a strategy is left alone for a while:
/// picks go to the host's round robin without instantiating or calling the
/// plugin, then it is tried again. The pause starts at [`BREAKER_MIN`] and
/// doubles with every failed retry, up to [`BREAKER_MAX`].
pub const BREAKER_AFTER: u32 = 5;
/// First pause of a failing strategy.
pub const BREAKER_MIN: Duration = Duration::from_millis(100);
/// Longest pause of a failing strategy.
pub const BREAKER_MAX: Duration = Duration::from_secs(30);

impl Default for StrategyStats {
    fn default() -> Self {
        Self {
            pick_ns: Histogram::new(&PICK_BOUNDS_NS),
            picks: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            bad_answers: AtomicU64::new(0),
            instantiate_failures: AtomicU64::new(0),
            instances: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            handovers: AtomicU64::new(0),
            handover_failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            last_log_ms: AtomicU64::new(0),
        }
    }
}

/// Who failed, for the log lines of [`StrategyStats::failure`].
pub(super) struct Failed<'a> {
    /// The upstream it serves.
    pub upstream: &'a str,
    /// Its plugin file.
    pub plugin: &'a std::path::Path,
    /// What it is: `strategy`, `admission plugin`.
    pub what: &'a str,
    /// What answers while it is paused.
    pub meanwhile: &'a str,
    /// What became of the request it failed.
    pub then: &'a str,
}

impl StrategyStats {
    /// Counts a failure of `kind` (the breaker included) and logs it, at
    /// most as often as [`StrategyStats::should_log`] lets, with `detail`;
    /// a pause the breaker starts is always logged.
    pub(super) fn failure(
        &self,
        kind: FailureKind,
        who: &Failed<'_>,
        detail: &dyn std::fmt::Display,
    ) {
        self.count(kind);
        let Failed {
            upstream,
            plugin,
            what,
            meanwhile,
            then,
        } = who;
        let plugin = plugin.display();
        if let Some(pause) = self.failed_in_a_row() {
            tracing::warn!(
                upstream, %plugin,
                "{what} failed {} times in a row: not called for {pause:?}; {meanwhile}",
                self.consecutive_failures.load(Ordering::Relaxed)
            );
        }
        if self.should_log() {
            tracing::warn!(
                upstream, %plugin, kind = kind.as_str(), failures = self.failures(),
                "{what} failed, {then}: {detail}"
            );
        }
    }

    pub(super) fn count(&self, kind: FailureKind) {
        let counter = match kind {
            FailureKind::Trap => &self.traps,
            FailureKind::Timeout => &self.timeouts,
            FailureKind::BadAnswer => &self.bad_answers,
            FailureKind::Instantiate => &self.instantiate_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Total failures of every kind.
    pub fn failures(&self) -> u64 {
        [
            &self.traps,
            &self.timeouts,
            &self.bad_answers,
            &self.instantiate_failures,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    /// Whether the strategy is paused after repeated failures.
    /// Reads the clock only while a pause is set: a strategy that answers
    /// costs one relaxed load here.
    pub(super) fn paused(&self) -> bool {
        match self.open_until_ms.load(Ordering::Relaxed) {
            0 => false,
            until => clock::now_ms() < until,
        }
    }

    /// A pick the plugin answered: failures are no longer consecutive, and
    /// a pause that had ended is cleared.
    pub(super) fn succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.open_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure in a row; returns the pause it starts, if any.
    pub(super) fn failed_in_a_row(&self) -> Option<Duration> {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let over = n.checked_sub(BREAKER_AFTER)?;
        let pause = BREAKER_MIN
            .saturating_mul(1 << over.min(16))
            .min(BREAKER_MAX);
        let until = clock::now_ms().saturating_add(clock::millis(pause));
        self.open_until_ms.store(until, Ordering::Relaxed);
        Some(pause)
    }

    /// At most one log line per second per strategy, so a plugin that fails
    /// every call cannot flood the log.
    pub(super) fn should_log(&self) -> bool {
        let now = clock::now_ms();
        let last = self.last_log_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 1000
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_pauses_after_failures_in_a_row_and_an_answer_clears_it() {
        let stats = StrategyStats::default();
        assert!(!stats.paused());
        for _ in 1..BREAKER_AFTER {
            assert_eq!(stats.failed_in_a_row(), None);
            assert!(!stats.paused());
        }
        assert_eq!(stats.failed_in_a_row(), Some(BREAKER_MIN));
        assert!(stats.paused());
        // Each further failure doubles the pause.
        assert_eq!(stats.failed_in_a_row(), Some(BREAKER_MIN * 2));
        // A later answer (the pause ran out and the plugin was tried again)
        // ends it at once.
        stats.succeeded();
        assert!(!stats.paused());
        assert_eq!(stats.open_until_ms.load(Ordering::Relaxed), 0);
        assert_eq!(stats.failed_in_a_row(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pause_runs_out_on_its_own_and_doubles_up_to_the_cap() {
        let stats = StrategyStats::default();
        for _ in 1..BREAKER_AFTER {
            stats.failed_in_a_row();
        }
        assert_eq!(stats.failed_in_a_row(), Some(BREAKER_MIN));
        tokio::time::advance(BREAKER_MIN - Duration::from_millis(1)).await;
        assert!(stats.paused());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!stats.paused(), "tried again once the pause is over");
        // Failing again and again: the pause doubles, never past the cap.
        let mut last = BREAKER_MIN;
        for _ in 0..20 {
            let pause = stats.failed_in_a_row().expect("paused");
            assert!(pause >= last && pause <= BREAKER_MAX, "{pause:?}");
            last = pause;
        }
        assert_eq!(last, BREAKER_MAX);
        tokio::time::advance(BREAKER_MAX).await;
        assert!(!stats.paused());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_logged_at_most_once_a_second() {
        let stats = StrategyStats::default();
        assert!(stats.should_log());
        assert!(!stats.should_log());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!stats.should_log());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(stats.should_log());
    }
}
