//! An [`Admission`]: an admission plugin (world `admission`) bound to one
//! upstream's `admission-params` and limiter registry, what an upstream
//! swaps in on reload; and the `admit` call on the request path.
//!
//! It runs as strategies do (see [`super::strategy`]): compiled once by the
//! [`Runtime`], one long-lived instance per worker thread made lazily,
//! every call under the pick deadline and the memory cap, a failing plugin
//! paused by the breaker of its [`StrategyStats`], a failed instance
//! replaced. What differs is the answer: a [`Gated`] verdict, and the
//! host-kept limiters of the `limits` import, which live in the upstream's
//! [`Registry`] rather than in the instance, so a new version (or a
//! replaced instance) continues with them.

use std::cell::RefCell;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode};
use wasmtime::{Store, Trap};

use super::bindings::{AdmissionRequest, AdmissionWorld, ParamValue, WitVerdict};
use super::imports::GuestState;
use super::runtime::{Compiled, InstanceError, PluginError, Runtime};
use super::stats::{Failed, FailureKind, StrategyStats};
use super::strategy::{Budget, deadline_ticks, params_to_wit, wit_ip};
use crate::backend::BackendSet;
use crate::base::config::PluginLimits;
use crate::limit::{Holds, Registry};

static NEXT_ADMISSION_ID: AtomicU64 = AtomicU64::new(1);

/// Most headers one `allow-with` may add.
pub const MAX_ADDED_HEADERS: usize = 32;
/// A refusal's reason is cut to this many bytes.
pub const MAX_REASON: usize = 256;

/// An admission plugin bound to one upstream.
pub struct Admission {
    id: u64,
    upstream: String,
    params: Vec<(String, ParamValue)>,
    limits: PluginLimits,
    deadline_ticks: u64,
    /// The plugin it runs.
    pub compiled: Arc<Compiled>,
    runtime: Arc<Runtime>,
    /// The limiters the plugin declared (the upstream's, carried across
    /// versions).
    pub registry: Arc<Registry>,
    /// Calls (`picks`: answered calls), failures by kind, call time.
    pub stats: StrategyStats,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("upstream", &self.upstream)
            .field("plugin", &self.compiled.name)
            .finish_non_exhaustive()
    }
}

/// What an admission plugin decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Gated {
    /// The request goes on (with the headers it asked for added).
    Allow,
    /// Turned away.
    Deny {
        /// The answer's status (400 ..= 599).
        status: StatusCode,
        /// The plugin's reason (at most [`MAX_REASON`] bytes).
        reason: String,
        /// `Retry-After`, in seconds.
        retry_after: Option<u32>,
    },
    /// The plugin failed (trap, timeout, bad answer, paused by the
    /// breaker): the upstream's `plugin-failure` decides.
    Failed,
}

/// One thread's instance of an admission plugin.
struct GateInstance {
    store: Store<GuestState>,
    bindings: AdmissionWorld,
}

/// An admission plugin's instance on this thread.
struct Entry {
    admission: Weak<Admission>,
    id: u64,
    instance: GateInstance,
}

thread_local! {
    /// This thread's admission instances, one per live [`Admission`].
    static GATES: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// Why a call did not give a verdict.
#[derive(Debug, thiserror::Error)]
enum AdmitError {
    #[error("{0}")]
    Instantiate(InstanceError),
    #[error("admit: {0:#}")]
    Call(wasmtime::Error),
    #[error("admit answered {0}")]
    BadAnswer(String),
}

impl AdmitError {
    fn kind(&self) -> FailureKind {
        match self {
            AdmitError::Instantiate(_) => FailureKind::Instantiate,
            AdmitError::Call(e) => match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => FailureKind::Timeout,
                _ => FailureKind::Trap,
            },
            AdmitError::BadAnswer(_) => FailureKind::BadAnswer,
        }
    }
}

impl Admission {
    /// Makes an admission of `compiled` for `upstream`: a trial instance
    /// runs `init(params)` (declaring its limiters), so a plugin that
    /// refuses its parameters or traps never goes live. `previous` is the
    /// upstream's admission plugin before (a reload): its limiters are
    /// continued by declarations with the same name and settings, when
    /// `keys` (the upstream's `limit-keys`) is the same.
    pub fn prepare(
        runtime: &Arc<Runtime>,
        compiled: Arc<Compiled>,
        upstream: &str,
        params: &toml::Table,
        limits: PluginLimits,
        keys: usize,
        previous: Option<&Admission>,
    ) -> Result<Arc<Admission>, PluginError> {
        if !compiled.is_admission() {
            return Err(PluginError::Mismatch {
                path: compiled.path.clone(),
                world: super::runtime::ADMISSION_WORLD,
                reason: format!(
                    "it does not export `{}`: a strategy, not an admission plugin",
                    super::runtime::GATE_INTERFACE
                ),
            });
        }
        let admission = Arc::new(Admission {
            id: NEXT_ADMISSION_ID.fetch_add(1, Ordering::Relaxed),
            upstream: upstream.to_owned(),
            params: params_to_wit(params),
            deadline_ticks: deadline_ticks(limits.pick_deadline),
            limits,
            compiled,
            runtime: Arc::clone(runtime),
            registry: Arc::new(Registry::new(keys, previous.map(|p| &*p.registry))),
            stats: StrategyStats::default(),
        });
        admission
            .instantiate(Budget::Load)
            .map_err(|error| PluginError::Init {
                path: admission.compiled.path.clone(),
                upstream: upstream.to_owned(),
                error,
            })?;
        Ok(admission)
    }

    /// The sandbox limits its instances run under.
    pub fn limits(&self) -> PluginLimits {
        self.limits
    }

    fn instantiate(&self, budget: Budget) -> Result<GateInstance, InstanceError> {
        let ticks = budget.ticks(self.deadline_ticks);
        let label = format!("{}:{}", self.upstream, self.compiled.name);
        let mut data = GuestState::new(
            Arc::new(BackendSet::build(&[], None)),
            self.limits.memory,
            label,
        );
        data.registry = Some(Arc::clone(&self.registry));
        let mut store = Store::new(&self.runtime.engine, data);
        store.limiter(GuestState::limiter);
        store.set_epoch_deadline(ticks);
        let instantiate = |e: wasmtime::Error| InstanceError::Instantiate(format!("{e:#}"));
        let indices = self
            .compiled
            .gate
            .as_ref()
            .ok_or_else(|| InstanceError::Instantiate("not an admission plugin".into()))?;
        let wasm = self
            .compiled
            .pre
            .instantiate(&mut store)
            .map_err(instantiate)?;
        let bindings = indices.load(&mut store, &wasm).map_err(instantiate)?;
        store.set_epoch_deadline(ticks);
        store.data_mut().declaring = true;
        let init = bindings
            .switchyard_balancer_gate()
            .call_init(&mut store, &self.params);
        store.data_mut().declaring = false;
        init.map_err(|e| InstanceError::Init(format!("{e:#}")))?
            .map_err(InstanceError::Init)?;
        self.stats.instances.fetch_add(1, Ordering::Relaxed);
        Ok(GateInstance { store, bindings })
    }

    /// Asks the plugin whether the request from `client_ip` may go on.
    /// `parts` is lent to it for the call (read through the `request`
    /// import) and gets the headers an `allow-with` adds; what `acquire`
    /// took is added to `holds`. Never fails and never panics: a failure is
    /// counted and logged, the instance dropped, and [`Gated::Failed`]
    /// returned.
    pub fn admit(
        self: &Arc<Self>,
        client_ip: IpAddr,
        parts: &mut Parts,
        holds: &mut Holds,
    ) -> Gated {
        let stopwatch = &self.runtime.stopwatch;
        let started = stopwatch.start();
        if self.stats.paused() {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Gated::Failed;
        }
        let gated = GATES.with(|cell| match cell.try_borrow_mut() {
            Ok(mut entries) => self.admit_with(&mut entries, client_ip, parts, holds),
            Err(_) => Gated::Failed,
        });
        self.stats.pick_ns.record(stopwatch.elapsed_ns(started));
        gated
    }

    fn admit_with(
        self: &Arc<Self>,
        entries: &mut Vec<Entry>,
        client_ip: IpAddr,
        parts: &mut Parts,
        holds: &mut Holds,
    ) -> Gated {
        let pos = match entries.iter().position(|e| e.id == self.id) {
            Some(pos) => pos,
            None => {
                entries.retain(|e| e.admission.strong_count() > 0);
                match self.instantiate(Budget::Request) {
                    Ok(instance) => {
                        entries.push(Entry {
                            admission: Arc::downgrade(self),
                            id: self.id,
                            instance,
                        });
                        entries.len() - 1
                    }
                    Err(e) => {
                        self.failed(&AdmitError::Instantiate(e));
                        return Gated::Failed;
                    }
                }
            }
        };
        let instance = &mut entries[pos].instance;
        let answer = self.ask(instance, client_ip, parts, holds);
        match answer.and_then(|verdict| checked(verdict, parts)) {
            Ok(gated) => {
                self.stats.picks.fetch_add(1, Ordering::Relaxed);
                self.stats.succeeded();
                gated
            }
            Err(e) => {
                entries.swap_remove(pos);
                self.failed(&e);
                Gated::Failed
            }
        }
    }

    /// Calls `admit` with the request head lent to the instance; what it
    /// acquired goes to `holds` whatever it answered (a refused or failed
    /// request drops them at once).
    fn ask(
        &self,
        instance: &mut GateInstance,
        client_ip: IpAddr,
        parts: &mut Parts,
        holds: &mut Holds,
    ) -> Result<WitVerdict, AdmitError> {
        let data = instance.store.data_mut();
        std::mem::swap(&mut data.request, parts);
        data.picking = true;
        instance.store.set_epoch_deadline(self.deadline_ticks);
        let result = instance.bindings.switchyard_balancer_gate().call_admit(
            &mut instance.store,
            AdmissionRequest {
                client_ip: wit_ip(client_ip),
            },
        );
        let data = instance.store.data_mut();
        std::mem::swap(&mut data.request, parts);
        data.picking = false;
        if !data.holds.is_empty() {
            holds.append(std::mem::take(&mut data.holds));
        }
        result.map_err(AdmitError::Call)
    }

    fn failed(&self, error: &AdmitError) {
        let who = Failed {
            upstream: &self.upstream,
            plugin: &self.compiled.path,
            what: "admission plugin",
            meanwhile: "the upstream's plugin-failure policy answers meanwhile",
            then: "the upstream's plugin-failure policy decides",
        };
        self.stats.failure(error.kind(), &who, error);
    }
}

/// The plugin's verdict checked; an `allow-with`'s headers are added to
/// `parts` (all or none).
fn checked(verdict: WitVerdict, parts: &mut Parts) -> Result<Gated, AdmitError> {
    match verdict {
        WitVerdict::Allow => Ok(Gated::Allow),
        WitVerdict::AllowWith(headers) => {
            if headers.len() > MAX_ADDED_HEADERS {
                return Err(AdmitError::BadAnswer(format!(
                    "allow-with {} headers (at most {MAX_ADDED_HEADERS})",
                    headers.len()
                )));
            }
            let mut valid = Vec::with_capacity(headers.len());
            for (name, value) in headers {
                let name = HeaderName::try_from(name.as_str()).map_err(|_| {
                    AdmitError::BadAnswer(format!("allow-with an invalid header name {name:?}"))
                })?;
                let value = HeaderValue::try_from(value.as_str()).map_err(|_| {
                    AdmitError::BadAnswer(format!(
                        "allow-with an invalid value for header `{name}`"
                    ))
                })?;
                valid.push((name, value));
            }
            for (name, value) in valid {
                parts.headers.insert(name, value);
            }
            Ok(Gated::Allow)
        }
        WitVerdict::Deny(refusal) => {
            let status = StatusCode::from_u16(refusal.status)
                .ok()
                .filter(|s| (400..=599).contains(&s.as_u16()))
                .ok_or_else(|| {
                    AdmitError::BadAnswer(format!(
                        "deny with status {} (expected 400 ..= 599)",
                        refusal.status
                    ))
                })?;
            let mut reason = refusal.reason;
            if reason.len() > MAX_REASON {
                let mut cut = MAX_REASON;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
            }
            Ok(Gated::Deny {
                status,
                reason,
                retry_after: refusal.retry_after,
            })
        }
    }
}
