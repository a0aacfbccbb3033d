//! Per-thread strategy instances and the pick itself.
//!
//! Each worker thread keeps its own `Store` + instance per live strategy
//! (a `Store` is single-threaded; one behind a lock measured 0.5-0.85x of a
//! single thread, one per thread scales). Instances are created lazily from
//! the strategy's shared `InstancePre` and live until their strategy is
//! replaced or they fail. Global truth (sequence, in-flight, health) comes
//! from the host, so per-thread instances still make global decisions.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use http::request::Parts;
use wasmtime::{Store, Trap};

use super::bindings::{Balancer, Decision, IpAddress, WitRequest};
use super::imports::GuestState;
use super::{Budget, FailureKind, Strategy, wit_backends};
use crate::upstream::BackendSet;

/// A live instance of one strategy, owned by one thread.
pub(super) struct Instance {
    pub(super) strategy_id: u64,
    pub(super) set_version: u64,
    pub(super) store: Store<GuestState>,
    pub(super) bindings: Balancer,
}

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
    /// Asks the plugin for a backend. Never fails: a plugin failure is
    /// counted and logged, the instance is dropped (a fresh one replaces it on
    /// the next pick) and the host's round robin answers instead.
    pub fn pick(self: &Arc<Self>, input: PickInput<'_>, parts: Parts) -> (Choice, Parts) {
        let started = Instant::now();
        if self.stats.paused() {
            // Failing again and again: left alone until the pause ends.
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return (failed_over(&input), parts);
        }
        let picked = INSTANCES.with(|cell| match cell.try_borrow_mut() {
            Ok(mut entries) => self.pick_with(&mut entries, input, parts),
            // Unreachable (no pick runs inside another), but never panic.
            Err(_) => (failed_over(&input), parts),
        });
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.pick_ns.record(ns);
        picked
    }

    fn pick_with(
        self: &Arc<Self>,
        entries: &mut Vec<Entry>,
        input: PickInput<'_>,
        parts: Parts,
    ) -> (Choice, Parts) {
        let ticks = self.deadline_ticks();
        let pos = match entries
            .iter()
            .position(|e| e.instance.strategy_id == self.id)
        {
            Some(pos) => pos,
            None => {
                // Forget instances of strategies that were replaced.
                entries.retain(|e| e.strategy.strong_count() > 0);
                match self.instantiate(input.set, Budget::Request) {
                    Ok(instance) => {
                        entries.push(Entry {
                            strategy: Arc::downgrade(self),
                            instance,
                        });
                        entries.len() - 1
                    }
                    Err((stage, reason)) => {
                        self.failed(FailureKind::Instantiate, &format!("{stage}: {reason}"));
                        return (failed_over(&input), parts);
                    }
                }
            }
        };
        let instance = &mut entries[pos].instance;
        if let Err(e) = instance.sync(input.set, ticks) {
            let kind = classify(&e);
            entries.swap_remove(pos);
            self.failed(kind, &format!("set-backends: {e:#}"));
            return (failed_over(&input), parts);
        }

        let request = WitRequest {
            sequence: input.sequence,
            client_ip: wit_ip(input.client_ip),
            avoid: input.set.unhealthy() + input.exclude.len() as u32,
            attempt: input.attempt,
            health_version: input.set.health.version(),
        };
        let data = instance.store.data_mut();
        data.request = Some(parts);
        data.exclude.clear();
        data.exclude.extend_from_slice(input.exclude);
        instance.store.set_epoch_deadline(ticks);
        let result = instance
            .bindings
            .switchyard_balancer_strategy()
            .call_pick(&mut instance.store, request);
        let parts = instance
            .store
            .data_mut()
            .request
            .take()
            .unwrap_or_else(|| http::Request::new(()).into_parts().0);

        let decision = match result {
            Ok(decision) => decision,
            Err(e) => {
                let kind = classify(&e);
                entries.swap_remove(pos);
                self.failed(kind, &format!("pick: {e:#}"));
                return (failed_over(&input), parts);
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
                return (failed_over(&input), parts);
            }
        };
        self.stats.picks.fetch_add(1, Ordering::Relaxed);
        self.stats.succeeded();
        (choice, parts)
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
            tracing::warn!(
                upstream = %self.upstream,
                plugin = %self.compiled.path.display(),
                kind = kind.as_str(),
                failures = self.stats.failures(),
                "strategy failed, request served by host round robin: {detail}"
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
