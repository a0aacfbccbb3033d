//! A [`Strategy`]: a compiled plugin bound to one upstream's parameters,
//! what an upstream swaps in on reload; and the pick itself.
//!
//! Each worker thread keeps its own `Store` + instance per live strategy
//! (a `Store` is single-threaded; one shared behind a lock was slower with
//! two threads than one, one per thread scales). Instances are created lazily from
//! the strategy's shared `InstancePre` and live until their strategy is
//! replaced or they fail. Global truth (sequence, in-flight, health) comes
//! from the host, so per-thread instances still make global decisions.
//!
//! State across reloads: when a thread makes its instance of a new version
//! of a strategy, the instance it still holds of an earlier version of the
//! same lineage (see [`Strategy::lineage`]) hands its guest-side state over
//! (`state.snapshot`, then `state.restore` on the new instance, after `init`
//! and `set-backends`, before its first pick) and is dropped. Per thread, so
//! every thread continues its own state exactly.

use std::cell::RefCell;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::request::Parts;
use wasmtime::Trap;

use super::bindings::{Decision, IpAddress, ParamValue, WitRequest};
use super::choice::{Choice, PickInput, failed_over, next_usable};
use super::instance::{HandoverError, Instance};
use super::runtime::{Compiled, InstanceError, PluginError, Runtime, TICK};
use super::stats::{Failed, FailureKind, StrategyStats};
use crate::backend::BackendSet;
use crate::base::clock;
use crate::base::config::PluginLimits;

static NEXT_STRATEGY_ID: AtomicU64 = AtomicU64::new(1);

/// How a strategy being prepared relates to the one it replaces.
#[derive(Debug, Clone, Copy, Default)]
pub struct Succession<'a> {
    /// The strategy it replaces in the same place (the upstream's live
    /// strategy, or its shadow). When it runs the same plugin (by name), the
    /// new one continues its lineage and each thread's state is handed over.
    pub previous: Option<&'a Strategy>,
    /// Serves as the upstream's shadow: asked on every request, never routes.
    pub shadow: bool,
}

/// A compiled plugin bound to one upstream's parameters: what an upstream
/// swaps in on reload.
pub struct Strategy {
    id: u64,
    lineage: u64,
    shadow: bool,
    upstream: String,
    params: Vec<(String, ParamValue)>,
    limits: PluginLimits,
    /// Epoch ticks in `limits.pick_deadline`, worked out once.
    deadline_ticks: u64,
    /// The plugin this strategy runs.
    pub compiled: Arc<Compiled>,
    runtime: Arc<Runtime>,
    /// Counters of picks and failures.
    pub stats: StrategyStats,
}

impl fmt::Debug for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Strategy")
            .field("upstream", &self.upstream)
            .field("plugin", &self.compiled.name)
            .finish_non_exhaustive()
    }
}

impl Strategy {
    /// The upstream this strategy serves.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The sandbox limits its instances run under.
    pub fn limits(&self) -> PluginLimits {
        self.limits
    }

    /// Identifies a line of versions of one plugin in one place (an
    /// upstream's live strategy, or its shadow): a strategy prepared after
    /// one of the same plugin continues its lineage. When a worker thread
    /// makes its instance of a new version and still holds its instance of
    /// an earlier version of the same lineage, the old instance's `state`
    /// snapshot is restored into the new one, then the old one is dropped.
    /// Nothing else keeps an old version alive: no `Arc` to it is held, and
    /// a thread holds at most one earlier instance per lineage (the one it
    /// last picked with), however many reloads happened meanwhile.
    pub fn lineage(&self) -> u64 {
        self.lineage
    }

    /// Whether this strategy runs as a shadow.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// Makes a strategy of `compiled` for one upstream: a trial instance runs
    /// `init(params)` and `set-backends`, so a plugin that rejects its
    /// parameters or traps never goes live.
    pub fn prepare(
        runtime: &Arc<Runtime>,
        compiled: Arc<Compiled>,
        upstream: &str,
        params: &toml::Table,
        set: &Arc<BackendSet>,
        limits: PluginLimits,
    ) -> Result<Arc<Strategy>, PluginError> {
        Self::prepare_after(
            runtime,
            compiled,
            upstream,
            params,
            set,
            limits,
            Succession::default(),
        )
    }

    /// Like [`Strategy::prepare`], for a strategy that takes the place of
    /// `succession.previous` (which then hands its per-thread state over, see
    /// [`Strategy::lineage`]), or that serves as a shadow.
    pub fn prepare_after(
        runtime: &Arc<Runtime>,
        compiled: Arc<Compiled>,
        upstream: &str,
        params: &toml::Table,
        set: &Arc<BackendSet>,
        limits: PluginLimits,
        succession: Succession<'_>,
    ) -> Result<Arc<Strategy>, PluginError> {
        if compiled.is_admission() {
            return Err(PluginError::Mismatch {
                path: compiled.path.clone(),
                world: "",
                reason: "it is an admission plugin (it exports `switchyard:balancer/gate`, world `admission`), not a strategy: name it in `admission = ...`".into(),
            });
        }
        let id = NEXT_STRATEGY_ID.fetch_add(1, Ordering::Relaxed);
        // The same plugin (by name) in the same place continues the line;
        // anything else starts a new one.
        let lineage = succession
            .previous
            .filter(|p| {
                p.upstream == upstream
                    && p.compiled.name == compiled.name
                    && p.shadow == succession.shadow
            })
            .map_or(id, |p| p.lineage);
        let strategy = Arc::new(Strategy {
            id,
            lineage,
            shadow: succession.shadow,
            upstream: upstream.to_owned(),
            params: params_to_wit(params),
            deadline_ticks: deadline_ticks(limits.pick_deadline),
            limits,
            compiled,
            runtime: Arc::clone(runtime),
            stats: StrategyStats::default(),
        });
        // The trial instance is dropped: it lives on a blocking thread, and
        // worker threads make their own on first use. Off the request path,
        // so a busy machine gets a generous budget.
        strategy
            .instantiate(set, Budget::Load)
            .map_err(|error| PluginError::Init {
                path: strategy.compiled.path.clone(),
                upstream: upstream.to_owned(),
                error,
            })?;
        Ok(strategy)
    }

    /// Creates, initialises and feeds a new instance, each step within
    /// `budget`.
    fn instantiate(
        &self,
        set: &Arc<BackendSet>,
        budget: Budget,
    ) -> Result<Instance, InstanceError> {
        let instance = Instance::create(
            &self.runtime.engine,
            &self.compiled,
            (self.id, self.lineage),
            &self.params,
            set,
            self.limits.memory,
            format!("{}:{}", self.upstream, self.compiled.name),
            budget.ticks(self.deadline_ticks),
            matches!(budget, Budget::Load),
        )?;
        self.stats.instances.fetch_add(1, Ordering::Relaxed);
        Ok(instance)
    }
}

/// How long creating an instance (instantiate, `init`, `set-backends`,
/// and a hand-over's `snapshot` and `restore` each) may take.
#[derive(Debug, Clone, Copy)]
pub(super) enum Budget {
    /// Loading a plugin, off the request path: [`LOAD_DEADLINE`].
    Load,
    /// A worker thread's first pick: [`INSTANCE_DEADLINE_FACTOR`] picks.
    Request,
}

impl Budget {
    /// The budget in epoch ticks, for a strategy whose pick deadline is
    /// `pick_ticks`.
    pub(super) fn ticks(self, pick_ticks: u64) -> u64 {
        match self {
            Budget::Load => (LOAD_DEADLINE.as_micros() / TICK.as_micros()) as u64,
            Budget::Request => pick_ticks * INSTANCE_DEADLINE_FACTOR,
        }
    }
}

/// Budget of the trial instance made when a plugin is loaded.
pub const LOAD_DEADLINE: Duration = Duration::from_secs(1);

/// A worker's instance may take this many pick deadlines to create
/// (first-touch page faults and cache misses make it slower than a pick).
pub const INSTANCE_DEADLINE_FACTOR: u64 = 5;

/// Epoch ticks in one pick deadline (rounded up, plus the tick in
/// progress).
pub(super) fn deadline_ticks(deadline: Duration) -> u64 {
    u64::try_from(deadline.as_micros().div_ceil(TICK.as_micros())).unwrap_or(u64::MAX - 1) + 1
}

/// TOML parameters as WIT values.
pub(super) fn params_to_wit(params: &toml::Table) -> Vec<(String, ParamValue)> {
    params
        .iter()
        .map(|(k, v)| {
            let value = match v {
                toml::Value::String(s) => ParamValue::Text(s.clone()),
                toml::Value::Integer(i) => ParamValue::Integer(*i),
                toml::Value::Float(f) => ParamValue::Float(*f),
                toml::Value::Boolean(b) => ParamValue::Boolean(*b),
                other => ParamValue::Toml(other.to_string()),
            };
            (k.clone(), value)
        })
        .collect()
}
/// A strategy's instance on this thread.
struct Entry {
    strategy: Weak<Strategy>,
    instance: Instance,
}

thread_local! {
    /// This thread's instances, one per live strategy (and at most one of
    /// an earlier version per lineage, kept to hand its state over).
    static INSTANCES: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// Why a pick did not come from the plugin, with what it said.
#[derive(Debug, thiserror::Error)]
enum PickError {
    /// A new instance could not be made on this thread.
    #[error("{0}")]
    Instantiate(InstanceError),
    /// Feeding the instance the current backend set failed.
    #[error("set-backends: {0:#}")]
    SetBackends(wasmtime::Error),
    /// The pick trapped or ran out of time.
    #[error("pick: {0:#}")]
    Pick(wasmtime::Error),
    /// The plugin answered something out of range.
    #[error("pick returned {answer} but the upstream has {backends} backends")]
    BadAnswer {
        /// The answer, as debug text.
        answer: String,
        /// How many backends there are.
        backends: u32,
    },
}

impl PickError {
    fn kind(&self) -> FailureKind {
        match self {
            PickError::Instantiate(_) => FailureKind::Instantiate,
            PickError::SetBackends(e) | PickError::Pick(e) => match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => FailureKind::Timeout,
                _ => FailureKind::Trap,
            },
            PickError::BadAnswer { .. } => FailureKind::BadAnswer,
        }
    }
}

impl Strategy {
    /// Asks the plugin for a backend. `parts` is lent to the plugin for the
    /// length of the call (it may read the method, path and headers) and
    /// comes back as it was. Never fails: a plugin failure is counted and
    /// logged, the instance is dropped (a fresh one replaces it on the next
    /// pick) and the host's round robin answers instead.
    pub fn pick(self: &Arc<Self>, input: PickInput<'_>, parts: &mut Parts) -> Choice {
        let stopwatch = &self.runtime.stopwatch;
        let started = stopwatch.start();
        if self.stats.paused() {
            // Failing again and again: left alone until the pause ends.
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return failed_over(&input);
        }
        let picked = INSTANCES.with(|cell| match cell.try_borrow_mut() {
            Ok(mut entries) => self.pick_with(&mut entries, input, parts),
            // Unreachable (no pick runs inside another), but never panic.
            Err(_) => failed_over(&input),
        });
        self.stats.pick_ns.record(stopwatch.elapsed_ns(started));
        picked
    }

    /// The pick on this thread's instance: found or made, asked, its answer
    /// checked. A failure drops the instance and falls back.
    fn pick_with(
        self: &Arc<Self>,
        entries: &mut Vec<Entry>,
        input: PickInput<'_>,
        parts: &mut Parts,
    ) -> Choice {
        let pos = match self.instance_on_this_thread(entries, &input) {
            Ok(pos) => pos,
            Err(e) => {
                self.failed(e.kind(), &e.to_string());
                return failed_over(&input);
            }
        };
        let answer = self
            .ask(&mut entries[pos].instance, &input, parts)
            .and_then(|decision| checked(decision, &input));
        match answer {
            Ok(choice) => {
                self.stats.picks.fetch_add(1, Ordering::Relaxed);
                self.stats.succeeded();
                choice
            }
            Err(e) => {
                entries.swap_remove(pos);
                self.failed(e.kind(), &e.to_string());
                failed_over(&input)
            }
        }
    }

    /// Where this thread's instance of this strategy is in `entries`; made
    /// (and continued from the thread's instance of the version before, if
    /// any) on the thread's first pick.
    fn instance_on_this_thread(
        self: &Arc<Self>,
        entries: &mut Vec<Entry>,
        input: &PickInput<'_>,
    ) -> Result<usize, PickError> {
        if let Some(pos) = entries
            .iter()
            .position(|e| e.instance.strategy_id == self.id)
        {
            return Ok(pos);
        }
        // This thread's instance of an earlier version of this strategy
        // hands its state over; the rest of the replaced ones are forgotten.
        let earlier = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| self.follows(&e.instance))
            .max_by_key(|(_, e)| e.instance.strategy_id)
            .map(|(pos, _)| pos);
        let earlier = earlier.map(|pos| entries.swap_remove(pos));
        entries.retain(|e| e.strategy.strong_count() > 0 && !self.follows(&e.instance));
        let made = match (self.instantiate(input.set, Budget::Request), earlier) {
            (Ok(fresh), Some(earlier)) => self.hand_over(earlier, fresh, input.set),
            (Ok(fresh), None) => Ok(fresh),
            (Err(e), earlier) => {
                // Kept for the next try to hand over from.
                entries.extend(earlier);
                Err(e)
            }
        };
        let instance = made.map_err(PickError::Instantiate)?;
        entries.push(Entry {
            strategy: Arc::downgrade(self),
            instance,
        });
        Ok(entries.len() - 1)
    }

    /// Calls the plugin's `pick` on `instance`, after feeding it the current
    /// backend set if it changed.
    fn ask(
        &self,
        instance: &mut Instance,
        input: &PickInput<'_>,
        parts: &mut Parts,
    ) -> Result<Decision, PickError> {
        let ticks = self.deadline_ticks;
        instance
            .sync(input.set, ticks)
            .map_err(PickError::SetBackends)?;
        let request = WitRequest {
            sequence: input.sequence,
            client_ip: wit_ip(input.client_ip),
            avoid: input.set.unhealthy() + input.exclude.len() as u32,
            attempt: input.attempt,
            health_version: input.set.health.version(),
        };
        // A plugin that imports `request` is lent the head: swapped in and
        // back out, the store's own empty head standing in for it
        // meanwhile (nothing is built or allocated per pick). One that
        // does not import it cannot read it, and is spared the moves.
        let lend = self.compiled.reads_request;
        let data = instance.store.data_mut();
        if lend {
            std::mem::swap(&mut data.request, parts);
            data.picking = true;
        }
        data.exclude.clear();
        data.exclude.extend_from_slice(input.exclude);
        instance.store.set_epoch_deadline(ticks);
        let result = instance
            .bindings
            .switchyard_balancer_strategy()
            .call_pick(&mut instance.store, request);
        if lend {
            let data = instance.store.data_mut();
            std::mem::swap(&mut data.request, parts);
            data.picking = false;
        }
        result.map_err(PickError::Pick)
    }

    /// Whether `instance` belongs to an earlier version of this strategy.
    fn follows(&self, instance: &Instance) -> bool {
        instance.lineage == self.lineage && instance.strategy_id < self.id
    }

    /// Continues `fresh` (just made, fed its backend set, never picked)
    /// from `earlier`, this thread's instance of the previous version, when
    /// both export `state`. `earlier` is dropped either way. A failed
    /// hand-over is counted and logged and leaves a fresh instance: `fresh`
    /// itself if `restore` was never called, else a new one (a refused or
    /// trapped restore may have left it half-restored).
    fn hand_over(
        &self,
        mut earlier: Entry,
        mut fresh: Instance,
        set: &Arc<BackendSet>,
    ) -> Result<Instance, InstanceError> {
        if earlier.instance.state.is_none() || fresh.state.is_none() {
            return Ok(fresh);
        }
        let started = clock::now();
        let ticks = Budget::Request.ticks(self.deadline_ticks);
        let bytes = match earlier.instance.snapshot(ticks) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(fresh),
            Err(reason) => {
                self.handover_failed(&reason);
                return Ok(fresh);
            }
        };
        drop(earlier);
        let size = bytes.len();
        match fresh.restore(bytes, ticks) {
            Ok(restored) => {
                if restored {
                    self.stats.handovers.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        upstream = %self.upstream, plugin = %self.compiled.path.display(),
                        bytes = size, took = ?started.elapsed(),
                        "strategy state handed over to the new version on this thread"
                    );
                }
                Ok(fresh)
            }
            Err(reason) => {
                self.handover_failed(&reason);
                drop(fresh);
                self.instantiate(set, Budget::Request)
            }
        }
    }

    fn handover_failed(&self, reason: &HandoverError) {
        self.stats.handover_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            upstream = %self.upstream,
            plugin = %self.compiled.path.display(),
            "strategy state not carried over to the new version on this thread (it starts fresh): {reason}"
        );
    }

    fn failed(&self, kind: FailureKind, detail: &str) {
        let (what, then) = if self.shadow {
            ("shadow strategy", "traffic unaffected")
        } else {
            ("strategy", "request served by host round robin")
        };
        let who = Failed {
            upstream: &self.upstream,
            plugin: &self.compiled.path,
            what,
            meanwhile: "the host's round robin serves meanwhile",
            then,
        };
        self.stats.failure(kind, &who, &detail);
    }
}

/// The plugin's answer as a [`Choice`], checked against the backend set.
fn checked(decision: Decision, input: &PickInput<'_>) -> Result<Choice, PickError> {
    let n = input.set.len() as u32;
    Ok(match decision {
        Decision::Backend(i) if i < n => {
            // Nothing down and nothing tried yet (`request.avoid` was 0):
            // every index in range is usable, and no backend is looked at.
            let nothing_to_avoid = input.exclude.is_empty() && input.set.unhealthy() == 0;
            if nothing_to_avoid || input.set.usable(i, input.exclude) {
                Choice::Backend(i)
            } else {
                // The plugin ignored health or this request's earlier
                // tries: keep its intent, move to the next usable one.
                next_usable(input, u64::from(i))
            }
        }
        Decision::Preference(list) if !list.is_empty() && list.iter().all(|&i| i < n) => {
            Choice::Preference(list)
        }
        Decision::Reject(reason) => Choice::Reject(reason),
        other => {
            return Err(PickError::BadAnswer {
                answer: format!("{other:?}"),
                backends: n,
            });
        }
    })
}

pub(super) fn wit_ip(ip: IpAddr) -> IpAddress {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            IpAddress::Ipv4((a, b, c, d))
        }
        IpAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.segments();
            IpAddress::Ipv6((a, b, c, d, e, f, g, h))
        }
    }
}
