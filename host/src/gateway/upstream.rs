//! One upstream as it runs: its current backend set and strategy (each
//! swapped whole on reload or discovery), its shadow, how its connections
//! are kept, its retry budget and the global pick sequence.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;

use crate::backend::discovery::{self, Discovered};
use crate::backend::pool::PoolSettings;
use crate::backend::retry::RetryBudget;
use crate::backend::{Backend, BackendSet, Terms};
use crate::base::clock::Instant;
use crate::base::config::{NATIVE_STRATEGY, UpstreamConfig};
use crate::base::stats::StatusClasses;
use crate::limit::Gate;
use crate::plugin::{Admission, Shadow, Strategy};

/// One upstream: its backends, its strategy and its connection pool.
pub struct Upstream {
    /// The validated config this upstream was built from.
    pub config: UpstreamConfig,
    /// The current backend set.
    pub backends: ArcSwap<BackendSet>,
    /// The current strategy; swapped on plugin reload.
    pub strategy: ArcSwap<Strategy>,
    /// How backend connections are opened and kept.
    pub pool: PoolSettings,
    /// Retries in flight, against `config.retry`'s budget.
    pub retry_budget: RetryBudget,
    /// Tries after the first, since start.
    pub retries: AtomicU64,
    /// Answers the proxy made itself (no backend answered), by class.
    pub local_responses: StatusClasses,
    /// What the upstream's host names resolved to.
    pub discovered: Mutex<Discovered>,
    /// `strategy = "host:round-robin"`: picks never call the plugin.
    pub native: bool,
    /// `shadow = "..."`: asked on every pick, never routes.
    pub shadow: Option<Shadow>,
    /// Its admission rules (`allow`, `deny`, `limit-req`, `limit-conn`);
    /// None when it has none.
    pub gate: Option<Gate>,
    /// `admission = "..."`: the admission plugin asked after `gate`,
    /// swapped on plugin reload.
    pub admission: Option<ArcSwap<Admission>>,
    sequence: AtomicU64,
}

impl Upstream {
    /// Builds an upstream; `previous` (same name) donates its pick
    /// sequence (its backends are carried over by [`BackendSet::build`]).
    pub fn new(
        config: UpstreamConfig,
        set: Arc<BackendSet>,
        strategy: Arc<Strategy>,
        discovered: Discovered,
        previous: Option<&Upstream>,
    ) -> Self {
        Self {
            pool: PoolSettings {
                connect_timeout: config.connect_timeout,
                idle_timeout: config.idle_timeout,
                max_idle: config.keepalive,
            },
            retry_budget: RetryBudget::default(),
            // A rebuilt upstream's totals go on from the previous one's.
            retries: AtomicU64::new(previous.map_or(0, |p| p.retries.load(Ordering::Relaxed))),
            local_responses: previous
                .map(|p| StatusClasses::from_counts(p.local_responses.counts()))
                .unwrap_or_default(),
            discovered: Mutex::new(discovered),
            native: config.strategy == NATIVE_STRATEGY,
            backends: ArcSwap::new(set),
            strategy: ArcSwap::new(strategy),
            shadow: None,
            admission: None,
            // An admission plugin's verdicts are counted in the gate's tally.
            gate: (!config.admission.is_open() || config.admission_plugin.is_some()).then(|| {
                Gate::new(
                    &config.admission,
                    previous.and_then(|p| p.gate.as_ref()),
                    config.admission_plugin.is_some(),
                )
            }),
            sequence: AtomicU64::new(previous.map_or(0, |p| p.sequence.load(Ordering::Relaxed))),
            config,
        }
    }

    /// The upstream with `shadow` as its shadow strategy.
    pub fn with_shadow(mut self, shadow: Option<Shadow>) -> Self {
        self.shadow = shadow;
        self
    }

    /// The upstream with `admission` as its admission plugin.
    pub fn with_admission(mut self, admission: Option<Arc<Admission>>) -> Self {
        self.admission = admission.map(ArcSwap::new);
        self
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Resolves the upstream's host names again and, when an address list
    /// changed, swaps in a new backend set (backends that stay are carried
    /// over with their counters, health and connections).
    pub async fn rediscover(&self, resolver: &TokioResolver) {
        if discovery::resolve(resolver, &self.config, &self.discovered).await {
            let servers = discovery::expand(&self.config, &self.discovered);
            let current = self.backends.load_full();
            let next = Arc::new(BackendSet::build(&servers, Some(&current)));
            self.backends.store(Arc::clone(&next));
            current.retire(&next);
        }
    }

    /// Whether the upstream's host names are due a lookup `now`.
    pub fn discovery_due(&self, now: Instant) -> bool {
        discovery::due(&self.config, &self.discovered, now)
    }

    /// The next global pick number.
    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }
}

impl Terms for Upstream {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn pool(&self) -> &PoolSettings {
        &self.pool
    }

    fn read_timeout(&self) -> Duration {
        self.config.read_timeout
    }

    /// Counts a request the backend failed (connect error, timeout, broken
    /// connection, `read-timeout` in the body), in its totals and against
    /// its passive health. As nginx does for a group of one server, a lone
    /// backend is never taken out (there is nowhere else to send): what
    /// counts is the current set, which DNS discovery may shrink or grow.
    fn backend_failed(&self, backend: &Backend, why: &dyn std::fmt::Display) {
        backend.record_failure();
        if self.backends.load().len() < 2 {
            return;
        }
        let policy = &self.config.passive;
        if backend.health.record_failure(policy, why) {
            tracing::warn!(
                upstream = self.name(), backend = %backend.address,
                "backend taken out for {:?} after {} failure(s) (max-fails)",
                policy.fail_timeout, policy.max_fails
            );
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}
