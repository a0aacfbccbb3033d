//! Per-thread strategy instances and the pick itself.
//!
//! Each worker thread keeps its own `Store` + instance per live strategy
//! (a `Store` is single-threaded; one behind a lock measured 0.5-0.85x of a
//! single thread, one per thread scales). Instances are created lazily from
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
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use http::request::Parts;
use wasmtime::{Store, Trap};

use super::bindings::{Balancer, Decision, IpAddress, WitRequest};
use super::imports::GuestState;
use super::{Budget, FailureKind, MAX_SNAPSHOT, StateExports, Strategy, wit_backends};
use crate::upstream::BackendSet;

/// A live instance of one strategy, owned by one thread.
pub(super) struct Instance {
    pub(super) strategy_id: u64,
    pub(super) lineage: u64,
    pub(super) set_version: u64,
    pub(super) store: Store<GuestState>,
    pub(super) bindings: Balancer,
    pub(super) wasm: wasmtime::component::Instance,
    /// The component's `state` exports, if it has them.
    pub(super) state: Option<StateExports>,
}

type SnapshotFn = wasmtime::component::TypedFunc<(), (Vec<u8>,)>;
type RestoreFn = wasmtime::component::TypedFunc<(Vec<u8>,), (Result<(), String>,)>;

impl Instance {
    /// Hands the instance `set` if it has not seen it yet.
    pub(super) fn sync(
        &mut self,
        set: &Arc<BackendSet>,
        deadline_ticks: u64,
    ) -> wasmtime::Result<()> {
        if self.set_version == set.version {
            return Ok(());
        }
        self.store.set_epoch_deadline(deadline_ticks);
        self.bindings
            .switchyard_balancer_strategy()
            .call_set_backends(&mut self.store, &wit_backends(set))?;
        self.store.data_mut().set = Arc::clone(set);
        self.set_version = set.version;
        Ok(())
    }

    fn state_funcs(&mut self) -> wasmtime::Result<Option<(SnapshotFn, RestoreFn)>> {
        let Some(state) = self.state else {
            return Ok(None);
        };
        let snapshot = self.wasm.get_typed_func(&mut self.store, state.snapshot)?;
        let restore = self.wasm.get_typed_func(&mut self.store, state.restore)?;
        Ok(Some((snapshot, restore)))
    }

    /// Checks that the `state` exports, if any, have the WIT's types.
    pub(super) fn check_state(&mut self) -> wasmtime::Result<()> {
        self.state_funcs().map(drop)
    }

    /// The guest's state, within `deadline_ticks`; `Ok(None)` when it does
    /// not export `state`.
    fn snapshot(&mut self, deadline_ticks: u64) -> Result<Option<Vec<u8>>, String> {
        let Some((snapshot, _)) = self.state_funcs().map_err(|e| format!("{e:#}"))? else {
            return Ok(None);
        };
        self.store.set_epoch_deadline(deadline_ticks);
        let (bytes,) = snapshot
            .call(&mut self.store, ())
            .map_err(|e| format!("snapshot: {e:#}"))?;
        if bytes.len() > MAX_SNAPSHOT {
            return Err(format!(
                "snapshot is {} bytes, more than the {MAX_SNAPSHOT} allowed",
                bytes.len()
            ));
        }
        Ok(Some(bytes))
    }

    /// Hands `bytes` to the guest's `restore`, within `deadline_ticks`;
    /// `Ok(false)` when it does not export `state`.
    fn restore(&mut self, bytes: Vec<u8>, deadline_ticks: u64) -> Result<bool, String> {
        let Some((_, restore)) = self.state_funcs().map_err(|e| format!("{e:#}"))? else {
            return Ok(false);
        };
        self.store.set_epoch_deadline(deadline_ticks);
        let (result,) = restore
            .call(&mut self.store, (bytes,))
            .map_err(|e| format!("restore: {e:#}"))?;
        result.map_err(|msg| format!("restore refused the snapshot: {msg}"))?;
        Ok(true)
    }
}

struct Entry {
    strategy: Weak<Strategy>,
    instance: Instance,
}

thread_local! {
    static INSTANCES: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// What a pick needs besides the request head.
#[derive(Debug, Clone, Copy)]
pub struct PickInput<'a> {
    /// The upstream's current backend set.
    pub set: &'a Arc<BackendSet>,
    /// Upstream-wide pick number.
    pub sequence: u64,
    /// The client's address (after trusted `X-Forwarded-For`).
    pub client_ip: IpAddr,
    /// Backends this request already tried.
    pub exclude: &'a [u32],
    /// 0 for the first try.
    pub attempt: u32,
}

/// The outcome of a pick, already checked against the backend set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Use this backend.
    Backend(u32),
    /// The plugin failed (counted and logged); the host's round robin chose
    /// this backend. Upstreams that fail closed answer 503 instead.
    Fallback(u32),
    /// Use these, in order (all in range; may include unusable ones).
    Preference(Vec<u32>),
    /// Answer 503 with this reason.
    Reject(String),
}

/// The host's own strategy: round robin over usable backends. Serves picks
/// when a plugin fails, and is the baseline the Wasm overhead is measured
/// against.
pub fn fallback(input: &PickInput<'_>) -> Choice {
    next_usable(input, input.sequence)
}

/// [`fallback`], marked as standing in for a failed plugin.
fn failed_over(input: &PickInput<'_>) -> Choice {
    match fallback(input) {
        Choice::Backend(i) => Choice::Fallback(i),
        other => other,
    }
}

/// The first usable backend at or after position `from` (mod n).
fn next_usable(input: &PickInput<'_>, from: u64) -> Choice {
    let n = input.set.len() as u64;
    if n == 0 {
        return Choice::Reject("the upstream has no backends".into());
    }
    (0..n)
        .map(|k| ((from % n + k) % n) as u32)
        .find(|&i| input.set.usable(i, input.exclude))
        .map_or_else(
            || Choice::Reject("no backend is available".into()),
            Choice::Backend,
        )
}

fn wit_ip(ip: IpAddr) -> IpAddress {
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

impl Strategy {
    /// Asks the plugin for a backend. `parts` is lent to the plugin for the
    /// length of the call (it may read the method, path and headers) and
    /// comes back as it was. Never fails: a plugin failure is counted and
    /// logged, the instance is dropped (a fresh one replaces it on the next
    /// pick) and the host's round robin answers instead.
    pub fn pick(self: &Arc<Self>, input: PickInput<'_>, parts: &mut Parts) -> Choice {
        let clock = &self.runtime.clock;
        let started = clock.raw();
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
        self.stats
            .pick_ns
            .record(clock.delta_as_nanos(started, clock.raw()));
        picked
    }

    fn pick_with(
        self: &Arc<Self>,
        entries: &mut Vec<Entry>,
        input: PickInput<'_>,
        parts: &mut Parts,
    ) -> Choice {
        let ticks = self.deadline_ticks;
        let pos = match entries
            .iter()
            .position(|e| e.instance.strategy_id == self.id)
        {
            Some(pos) => pos,
            None => {
                // This thread's instance of an earlier version of this
                // strategy hands its state over; the rest of the replaced
                // ones are forgotten.
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
                match made {
                    Ok(instance) => {
                        entries.push(Entry {
                            strategy: Arc::downgrade(self),
                            instance,
                        });
                        entries.len() - 1
                    }
                    Err((stage, reason)) => {
                        self.failed(FailureKind::Instantiate, &format!("{stage}: {reason}"));
                        return failed_over(&input);
                    }
                }
            }
        };
        let instance = &mut entries[pos].instance;
        if let Err(e) = instance.sync(input.set, ticks) {
            let kind = classify(&e);
            entries.swap_remove(pos);
            self.failed(kind, &format!("set-backends: {e:#}"));
            return failed_over(&input);
        }

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

        let decision = match result {
            Ok(decision) => decision,
            Err(e) => {
                let kind = classify(&e);
                entries.swap_remove(pos);
                self.failed(kind, &format!("pick: {e:#}"));
                return failed_over(&input);
            }
        };
        let n = input.set.len() as u32;
        let choice = match decision {
            Decision::Backend(i) if i < n => {
                if input.set.usable(i, input.exclude) {
                    Choice::Backend(i)
                } else {
                    // The plugin ignored health or this request's earlier
                    // tries: keep its intent, move to the next usable one.
                    next_usable(&input, u64::from(i))
                }
            }
            Decision::Preference(list) if !list.is_empty() && list.iter().all(|&i| i < n) => {
                Choice::Preference(list)
            }
            Decision::Reject(reason) => Choice::Reject(reason),
            other => {
                entries.swap_remove(pos);
                self.failed(
                    FailureKind::BadAnswer,
                    &format!("pick returned {other:?} but the upstream has {n} backends"),
                );
                return failed_over(&input);
            }
        };
        self.stats.picks.fetch_add(1, Ordering::Relaxed);
        self.stats.succeeded();
        choice
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
    ) -> Result<Instance, (&'static str, String)> {
        if earlier.instance.state.is_none() || fresh.state.is_none() {
            return Ok(fresh);
        }
        let started = Instant::now();
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

    fn handover_failed(&self, reason: &str) {
        self.stats.handover_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            upstream = %self.upstream,
            plugin = %self.compiled.path.display(),
            "strategy state not carried over to the new version on this thread (it starts fresh): {reason}"
        );
    }

    fn failed(&self, kind: FailureKind, detail: &str) {
        self.stats.count(kind);
        if let Some(pause) = self.stats.failed_in_a_row() {
            tracing::warn!(
                upstream = %self.upstream,
                plugin = %self.compiled.path.display(),
                "strategy failed {} times in a row: not called for {pause:?}; the host's round robin serves meanwhile",
                self.stats.consecutive_failures.load(Ordering::Relaxed)
            );
        }
        if self.stats.should_log() {
            let then = if self.shadow {
                "shadow strategy failed (traffic unaffected)"
            } else {
                "strategy failed, request served by host round robin"
            };
            tracing::warn!(
                upstream = %self.upstream,
                plugin = %self.compiled.path.display(),
                kind = kind.as_str(),
                failures = self.stats.failures(),
                "{then}: {detail}"
            );
        }
    }
}

fn classify(e: &wasmtime::Error) -> FailureKind {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FailureKind::Timeout,
        _ => FailureKind::Trap,
    }
}
