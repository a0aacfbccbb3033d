//! Shadow strategies: per upstream, an optional second plugin asked for its
//! choice on every pick, with the live pick's inputs (request head,
//! sequence number, exclusions), without affecting traffic. The admin API
//! shows how often it agrees with the live strategy and the split it would
//! have produced, so a new strategy can be tried on real traffic first.
//!
//! Cost: one extra pick on the request path, under the same deadline and
//! circuit breaker as any pick. A shadow that traps, times out or answers
//! nonsense is only counted (and logged at most once a second); its answer
//! is never used.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use http::request::Parts;

use super::choice::{Choice, PickInput, fallback};
use super::strategy::Strategy;

/// An upstream's shadow strategy and how it compares with the live one.
#[derive(Debug)]
pub struct Shadow {
    /// The plugin's file stem, as configured (`shadow = "..."`).
    pub name: String,
    /// The current build; swapped on plugin reload like the live one.
    pub strategy: ArcSwap<Strategy>,
    /// Agreement counters; carried across config reloads while the shadow
    /// plugin stays the same.
    pub stats: Arc<ShadowStats>,
}

/// How a shadow's picks compared with the live ones. The split it would
/// have produced is counted per backend ([`crate::backend::Backend::shadow_picks`]).
#[derive(Debug, Default)]
pub struct ShadowStats {
    /// Picks the shadow was asked for.
    pub picks: AtomicU64,
    /// Picks where it chose what the live strategy chose.
    pub agreements: AtomicU64,
    /// Picks where it chose another backend, or none.
    pub disagreements: AtomicU64,
    /// Picks it failed (trap, timeout, bad answer, paused after failing).
    pub failures: AtomicU64,
}

impl ShadowStats {
    /// Share of the answered picks that agreed with the live strategy;
    /// `None` before any.
    pub fn agreement_ratio(&self) -> Option<f64> {
        let agree = self.agreements.load(Ordering::Relaxed);
        let answered = agree + self.disagreements.load(Ordering::Relaxed);
        (answered > 0).then(|| agree as f64 / answered as f64)
    }
}

impl Shadow {
    /// A shadow running `strategy`; `previous` (the upstream's shadow before
    /// a config reload) donates its counters when it ran the same plugin.
    pub fn new(name: String, strategy: Arc<Strategy>, previous: Option<&Shadow>) -> Self {
        let stats = previous
            .filter(|p| p.name == name)
            .map_or_else(Arc::default, |p| Arc::clone(&p.stats));
        Self {
            name,
            strategy: ArcSwap::new(strategy),
            stats,
        }
    }

    /// Asks the shadow for the pick the live strategy just answered with
    /// `live`, and counts how they compare. `parts` is lent to the shadow
    /// and handed back. Never fails and never changes the live pick.
    pub fn observe(&self, input: PickInput<'_>, parts: &mut Parts, live: &Choice) {
        let strategy = self.strategy.load();
        let choice = strategy.pick(input, parts);
        let stats = &self.stats;
        stats.picks.fetch_add(1, Ordering::Relaxed);
        if matches!(choice, Choice::Fallback(_)) {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let would = resolve(&input, &choice);
        if let Some(backend) = would.and_then(|i| input.set.get(i)) {
            backend.record_shadow_pick();
        }
        let counter = if would == resolve(&input, live) {
            &stats.agreements
        } else {
            &stats.disagreements
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The backend a choice sends the request to, as the proxy resolves it
/// (first usable of a preference list, else the host's round robin); `None`
/// for a rejection.
fn resolve(input: &PickInput<'_>, choice: &Choice) -> Option<u32> {
    match choice {
        Choice::Backend(i) | Choice::Fallback(i) => Some(*i),
        Choice::Preference(list) => list
            .iter()
            .copied()
            .find(|&i| input.set.usable(i, input.exclude))
            .or_else(|| match fallback(input) {
                Choice::Backend(i) => Some(i),
                _ => None,
            }),
        Choice::Reject(_) => None,
    }
}
