//! The proxy's periodic work, in one place (as pingora's `background.rs`):
//! health (passive time-outs settled, active checks, idle backend
//! connections closed) and discovery (host names resolved again).
//!
//! Both run on one skeleton, [`spawn`]: a tick, the current route table
//! loaded on every tick (so reloads that add, change or remove upstreams
//! apply by themselves), and a round over it. An upstream's own work is
//! due when its interval has passed since its last round began ([`clock::due`],
//! with saturating arithmetic: no interval, however large, can panic the
//! loop), and a round never overlaps the one before.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tokio::task::JoinHandle;

use super::Gateway;
use super::router::RouteTable;
use crate::backend::health::{self, ProbeClient};
use crate::base::clock::{self, Instant};

/// Periodic work over the route table.
pub trait Periodic: Send + 'static {
    /// Time between rounds.
    const TICK: Duration;

    /// One round over the current `table`, begun `now`.
    fn round(
        &mut self,
        table: Arc<RouteTable>,
        now: Instant,
    ) -> impl Future<Output = ()> + Send + '_;
}

/// Runs `work` every [`Periodic::TICK`] for as long as the returned handle
/// lives (a round that overruns delays the next tick; ticks are not made
/// up for).
pub fn spawn<P: Periodic>(gateway: Arc<Gateway>, mut work: P) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(P::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let table = arc_swap::Guard::into_inner(gateway.routes());
            work.round(table, clock::now()).await;
        }
    })
}

/// Health: every tick, settles passive time-outs that ran out (so the
/// upstream's health version moves); about once a second, closes idle
/// backend connections past `idle-timeout` and forgets rate-limit keys
/// whose bucket is full again; and for every upstream with a
/// `[upstream.health-check]`, probes all its backends every `interval`.
pub struct Health {
    client: ProbeClient,
    /// Per upstream: when its last round of checks began, and whether it is
    /// still running.
    rounds: HashMap<String, (Instant, Arc<AtomicBool>)>,
    ticks: u64,
}

impl Health {
    /// Health work with no round run yet.
    pub fn new() -> Self {
        Self {
            client: health::probe_client(),
            rounds: HashMap::new(),
            ticks: 0,
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Periodic for Health {
    const TICK: Duration = Duration::from_millis(100);

    fn round(
        &mut self,
        table: Arc<RouteTable>,
        now: Instant,
    ) -> impl Future<Output = ()> + Send + '_ {
        self.ticks = self.ticks.wrapping_add(1);
        let sweep = self.ticks.is_multiple_of(10);
        self.rounds.retain(|name, _| table.upstream(name).is_some());
        for upstream in &table.upstreams {
            let set = upstream.backends.load_full();
            for backend in &set.backends {
                // Settles passive time-outs that ran out.
                backend.healthy();
                if sweep {
                    backend.pool.sweep(upstream.pool.idle_timeout);
                }
            }
            if let Some(gate) = upstream.gate.as_ref().filter(|_| sweep) {
                gate.sweep(clock::ns_at(now));
            }
            let Some(check) = upstream.config.health_check.clone() else {
                continue;
            };
            let running = match self.rounds.get_mut(upstream.name()) {
                Some((last, running)) => {
                    if !clock::due(Some(*last), check.interval, now)
                        || running.load(Ordering::Relaxed)
                    {
                        continue;
                    }
                    *last = now;
                    Arc::clone(running)
                }
                None => {
                    let running = Arc::new(AtomicBool::new(false));
                    self.rounds
                        .insert(upstream.name().to_owned(), (now, Arc::clone(&running)));
                    running
                }
            };
            running.store(true, Ordering::Relaxed);
            let (client, name) = (self.client.clone(), upstream.name().to_owned());
            tokio::spawn(async move {
                let mut probes = tokio::task::JoinSet::new();
                for backend in set.backends.iter().cloned() {
                    let (client, check, name) = (client.clone(), check.clone(), name.clone());
                    probes.spawn(async move {
                        let passed = match health::probe(&client, &backend.authority, &check).await {
                            Ok(()) => true,
                            Err(why) => {
                                backend.health.probe_failed(why);
                                false
                            }
                        };
                        match backend.health.record_probe(passed, &check) {
                            Some(true) => tracing::info!(upstream = name, backend = %backend.address, "health check: backend is up again"),
                            Some(false) => tracing::warn!(upstream = name, backend = %backend.address, path = check.path, "health check: backend is down"),
                            None => {}
                        }
                    });
                }
                // Each probe is bounded by its timeout.
                while probes.join_next().await.is_some() {}
                running.store(false, Ordering::Relaxed);
            });
        }
        std::future::ready(())
    }
}

/// Discovery: every upstream whose host names are due (`resolve-interval`
/// since their last lookup) is resolved again, one after another.
pub struct Discovery {
    resolver: TokioResolver,
}

impl Discovery {
    /// Discovery with `resolver`.
    pub fn new(resolver: TokioResolver) -> Self {
        Self { resolver }
    }

    /// Resolves every upstream's host names once (at start, before the
    /// first request is accepted).
    pub async fn resolve_all(&self, gateway: &Gateway) {
        let table = arc_swap::Guard::into_inner(gateway.routes());
        for upstream in &table.upstreams {
            if !upstream.config.names.is_empty() {
                upstream.rediscover(&self.resolver).await;
            }
        }
    }
}

impl Periodic for Discovery {
    const TICK: Duration = Duration::from_millis(100);

    async fn round(&mut self, table: Arc<RouteTable>, now: Instant) {
        for upstream in table.upstreams.iter().filter(|u| u.discovery_due(now)) {
            upstream.rediscover(&self.resolver).await;
        }
    }
}
