//! The plugin runtime: compiles strategy components, prepares them for an
//! upstream, and runs picks on long-lived per-thread instances under a
//! deadline, with the host's round robin as the fallback.
//!
//! Shape (after pingora's swap-in selector and wasmtime's `serve`):
//! compiling (`Runtime::compile`, tens of ms) and checking a plugin
//! (`Runtime::prepare`) happen off the request path; the result, a
//! [`Strategy`], is swapped into the upstream atomically. On the request path
//! a worker thread finds its own instance of that strategy (instantiating it
//! once from the shared `InstancePre`, ~15 µs) and calls `pick`.
//!
//! A strategy that exports the optional `state` interface carries its
//! guest-side state across reloads: each thread's instance of the new
//! version is restored from a snapshot of that thread's instance of the old
//! one ([`Strategy::lineage`], `instances.rs`). An upstream may also run a
//! second strategy as a shadow, asked on every request without routing any
//! ([`shadow`]).

mod bindings;
mod imports;
mod instances;
mod sandbox;
pub mod shadow;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use wasmtime::component::{Component, ComponentExportIndex, InstancePre, Linker};
use wasmtime::{Engine, Store};

pub use self::bindings::ParamValue;
use self::bindings::{BalancerIndices, WitBackend};
use self::imports::GuestState;
pub use self::instances::{Choice, PickInput, fallback};
pub use self::shadow::{Shadow, ShadowStats};
use crate::config::PluginLimits;
use crate::stats::{Histogram, PICK_BOUNDS_NS};
use crate::upstream::BackendSet;

/// Why a plugin file could not become a strategy. The message says which file
/// and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file is missing or unreadable.
    #[error("{path}: cannot read: {error}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Zero bytes: usually a copy still in progress.
    #[error("{path}: file is empty (still being copied?)")]
    Empty {
        /// The plugin file.
        path: PathBuf,
    },
    /// Not WebAssembly at all.
    #[error("{path}: not a WebAssembly file (no `\\0asm` header)")]
    NotWasm {
        /// The plugin file.
        path: PathBuf,
    },
    /// A core module where a component is needed.
    #[error(
        "{path}: is a core WebAssembly module, not a component; build it with `cargo build --target wasm32-wasip2` (or `cargo component build`)"
    )]
    CoreModule {
        /// The plugin file.
        path: PathBuf,
    },
    /// Compilation failed (truncated or corrupt file).
    #[error("{path}: invalid component: {reason}")]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// The compiler's reason.
        reason: String,
    },
    /// The component does not fit the `switchyard:balancer` world.
    #[error("{path}: does not match the switchyard:balancer WIT world: {reason}")]
    Mismatch {
        /// The plugin file.
        path: PathBuf,
        /// What is missing or mistyped.
        reason: String,
    },
    /// Instantiating, `init` or `set-backends` failed or trapped.
    #[error("{path}: {stage} failed for upstream `{upstream}`: {reason}")]
    Init {
        /// The plugin file.
        path: PathBuf,
        /// The upstream it was being prepared for.
        upstream: String,
        /// `instantiate`, `init` or `set-backends`.
        stage: &'static str,
        /// The guest's message or the trap.
        reason: String,
    },
}

/// Shared wasmtime state: one engine (with its epoch ticker) and one linker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    ticker_stop: Arc<AtomicBool>,
    /// Times picks for `switchyard_plugin_pick_seconds`: the TSC where it
    /// is invariant (calibrated here, once, off the request path), else the
    /// OS's monotonic clock.
    clock: quanta::Clock,
}

/// Epoch tick used for pick deadlines.
const TICK: Duration = Duration::from_millis(1);

impl Runtime {
    /// A runtime with its epoch ticker running.
    pub fn new() -> anyhow::Result<Arc<Self>> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // The host never runs guests concurrently within a store; without
        // this a call costs ~5x more (wasmtime >= 43).
        config.concurrency_support(false);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        sandbox::add_to_linker(&mut linker)?;
        bindings::Balancer::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |s| s,
        )?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (stop, weak) = (Arc::clone(&ticker_stop), engine.weak());
        std::thread::Builder::new()
            .name("switchyard-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        Ok(Arc::new(Self {
            engine,
            linker,
            ticker_stop,
            clock: quanta::Clock::new(),
        }))
    }

    /// Reads, checks and compiles a plugin file. Blocking and slow (tens of
    /// ms): call it off the request path.
    pub fn compile(&self, path: &Path) -> Result<Arc<Compiled>, PluginError> {
        let bytes = std::fs::read(path).map_err(|error| PluginError::Read {
            path: path.to_owned(),
            error,
        })?;
        self.compile_bytes(path, &bytes)
    }

    /// Like [`Runtime::compile`], from bytes already read.
    pub fn compile_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Arc<Compiled>, PluginError> {
        let path_buf = || path.to_owned();
        if bytes.is_empty() {
            return Err(PluginError::Empty { path: path_buf() });
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(PluginError::NotWasm { path: path_buf() });
        }
        // Preamble: magic, then version (1 for core modules) and layer (0 for
        // core modules, 1 for components).
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(PluginError::CoreModule { path: path_buf() });
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| PluginError::Compile {
            path: path_buf(),
            reason: format!("{e:#}"),
        })?;
        let mismatch = |e: wasmtime::Error| PluginError::Mismatch {
            path: path_buf(),
            reason: format!("{e:#}"),
        };
        // WASI beyond the sandbox (files, sockets, ...) instantiates but
        // traps when called.
        let mut linker = self.linker.clone();
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(mismatch)?;
        let pre = linker.instantiate_pre(&component).map_err(mismatch)?;
        let indices = BalancerIndices::new(&pre).map_err(mismatch)?;
        let state = StateExports::find(&component).map_err(mismatch)?;
        let reads_request = component
            .component_type()
            .imports(&self.engine)
            .any(|(name, _)| name.split('@').next() == Some(REQUEST_INTERFACE));
        Ok(Arc::new(Compiled {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path_buf(),
            hash: content_hash(bytes),
            size: bytes.len(),
            loaded_at: SystemTime::now(),
            pre,
            indices,
            state,
            reads_request,
        }))
    }

    /// Makes a strategy of `compiled` for one upstream: a trial instance runs
    /// `init(params)` and `set-backends`, so a plugin that rejects its
    /// parameters or traps never goes live.
    pub fn prepare(
        self: &Arc<Self>,
        compiled: Arc<Compiled>,
        upstream: &str,
        params: &toml::Table,
        set: &Arc<BackendSet>,
        limits: PluginLimits,
    ) -> Result<Arc<Strategy>, PluginError> {
        self.prepare_after(
            compiled,
            upstream,
            params,
            set,
            limits,
            Succession::default(),
        )
    }

    /// Like [`Runtime::prepare`], for a strategy that takes the place of
    /// `succession.previous` (which then hands its per-thread state over, see
    /// [`Strategy::lineage`]), or that serves as a shadow.
    pub fn prepare_after(
        self: &Arc<Self>,
        compiled: Arc<Compiled>,
        upstream: &str,
        params: &toml::Table,
        set: &Arc<BackendSet>,
        limits: PluginLimits,
        succession: Succession<'_>,
    ) -> Result<Arc<Strategy>, PluginError> {
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
            runtime: Arc::clone(self),
            stats: StrategyStats::default(),
        });
        // The trial instance is dropped: it lives on a blocking thread, and
        // worker threads make their own on first use. Off the request path,
        // so a busy machine gets a generous budget.
        strategy
            .instantiate(set, Budget::Load)
            .map_err(|(stage, reason)| PluginError::Init {
                path: strategy.compiled.path.clone(),
                upstream: upstream.to_owned(),
                stage,
                reason,
            })?;
        Ok(strategy)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// Epoch ticks in one pick deadline (rounded up, plus the tick in
/// progress).
fn deadline_ticks(deadline: Duration) -> u64 {
    u64::try_from(deadline.as_micros().div_ceil(TICK.as_micros())).unwrap_or(u64::MAX - 1) + 1
}

/// Hash identifying a plugin file's content.
pub fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// A compiled plugin file, ready to instantiate.
pub struct Compiled {
    /// File stem (`round-robin`).
    pub name: String,
    /// The file it was compiled from.
    pub path: PathBuf,
    /// Hash of the file's bytes (detects no-op rewrites).
    pub hash: u64,
    /// File size in bytes.
    pub size: usize,
    /// When it was compiled.
    pub loaded_at: SystemTime,
    pre: InstancePre<GuestState>,
    indices: BalancerIndices,
    state: Option<StateExports>,
    /// Whether the component imports the `request` interface: only then is
    /// a pick lent the request head.
    reads_request: bool,
}

impl Compiled {
    /// Whether the plugin exports the optional `state` interface (carries
    /// its state across reloads).
    pub fn stateful(&self) -> bool {
        self.state.is_some()
    }

    /// Whether the plugin imports the `request` interface (can read the
    /// method, host, path, query and headers of the request it picks for).
    pub fn reads_request(&self) -> bool {
        self.reads_request
    }
}

/// The `request` interface, by the name the WIT gives it, without its
/// version (any version the linker serves counts).
const REQUEST_INTERFACE: &str = "switchyard:balancer/request";

/// The optional `state` interface, by the name the WIT gives it.
pub const STATE_INTERFACE: &str = "switchyard:balancer/state@0.1.0";

/// Largest snapshot handed from one version of a strategy to the next; a
/// bigger one is counted as a failed hand-over.
pub const MAX_SNAPSHOT: usize = 1 << 20;

/// Where a component's `state` functions are (looked up once per build).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StateExports {
    snapshot: ComponentExportIndex,
    restore: ComponentExportIndex,
}

impl StateExports {
    /// `None` when the component does not export `state`; an error when it
    /// exports it without both functions.
    fn find(component: &Component) -> wasmtime::Result<Option<Self>> {
        let Some(iface) = component.get_export_index(None, STATE_INTERFACE) else {
            return Ok(None);
        };
        let func = |name: &str| {
            component
                .get_export_index(Some(&iface), name)
                .ok_or_else(|| wasmtime::format_err!("`{STATE_INTERFACE}` exports no `{name}`"))
        };
        Ok(Some(Self {
            snapshot: func("snapshot")?,
            restore: func("restore")?,
        }))
    }
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiled")
            .field("path", &self.path)
            .field("hash", &format_args!("{:016x}", self.hash))
            .finish_non_exhaustive()
    }
}

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
    consecutive_failures: AtomicU32,
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

impl StrategyStats {
    fn count(&self, kind: FailureKind) {
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
    fn paused(&self) -> bool {
        match self.open_until_ms.load(Ordering::Relaxed) {
            0 => false,
            until => crate::health::now_ms() < until,
        }
    }

    /// A pick the plugin answered: failures are no longer consecutive, and
    /// a pause that had ended is cleared.
    fn succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.open_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure in a row; returns the pause it starts, if any.
    fn failed_in_a_row(&self) -> Option<Duration> {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let over = n.checked_sub(BREAKER_AFTER)?;
        let pause = BREAKER_MIN
            .saturating_mul(1 << over.min(16))
            .min(BREAKER_MAX);
        let until = crate::health::now_ms() + pause.as_millis() as u64;
        self.open_until_ms.store(until, Ordering::Relaxed);
        Some(pause)
    }

    /// At most one log line per second per strategy, so a plugin that fails
    /// every call cannot flood the log.
    fn should_log(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.last_log_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 1000
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
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

    /// Creates, initialises and feeds a new instance, each step within
    /// `budget`. Error: (stage, reason).
    fn instantiate(
        &self,
        set: &Arc<BackendSet>,
        budget: Budget,
    ) -> Result<instances::Instance, (&'static str, String)> {
        let ticks = budget.ticks(self.deadline_ticks);
        let mut store = Store::new(
            &self.runtime.engine,
            GuestState::new(
                Arc::clone(set),
                self.limits.memory,
                format!("{}:{}", self.upstream, self.compiled.name),
            ),
        );
        store.limiter(GuestState::limiter);
        store.set_epoch_deadline(ticks);
        let wasm = self
            .compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| ("instantiate", format!("{e:#}")))?;
        let bindings = self
            .compiled
            .indices
            .load(&mut store, &wasm)
            .map_err(|e| ("instantiate", format!("{e:#}")))?;
        store.set_epoch_deadline(ticks);
        bindings
            .switchyard_balancer_strategy()
            .call_init(&mut store, &self.params)
            .map_err(|e| ("init", format!("{e:#}")))?
            .map_err(|msg| ("init", msg))?;
        let mut instance = instances::Instance {
            strategy_id: self.id,
            lineage: self.lineage,
            set_version: 0,
            store,
            bindings,
            wasm,
            state: self.compiled.state,
        };
        instance
            .sync(set, ticks)
            .map_err(|e| ("set-backends", format!("{e:#}")))?;
        if matches!(budget, Budget::Load) {
            // Typed once here, so a mistyped `state` export is refused at
            // load rather than found at the first hand-over.
            instance
                .check_state()
                .map_err(|e| ("state exports", format!("{e:#}")))?;
        }
        self.stats.instances.fetch_add(1, Ordering::Relaxed);
        Ok(instance)
    }
}

/// How long creating an instance (instantiate, `init`, `set-backends`,
/// and a hand-over's `snapshot` and `restore` each) may take.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Budget {
    /// Loading a plugin, off the request path: [`LOAD_DEADLINE`].
    Load,
    /// A worker thread's first pick: [`INSTANCE_DEADLINE_FACTOR`] picks.
    Request,
}

impl Budget {
    /// The budget in epoch ticks, for a strategy whose pick deadline is
    /// `pick_ticks`.
    fn ticks(self, pick_ticks: u64) -> u64 {
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

/// TOML parameters as WIT values.
fn params_to_wit(params: &toml::Table) -> Vec<(String, ParamValue)> {
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

fn wit_backends(set: &BackendSet) -> Vec<WitBackend> {
    set.backends
        .iter()
        .map(|b| WitBackend {
            id: b.id.clone(),
            address: b.address.clone(),
            weight: b.weight,
        })
        .collect()
}

/// Where a plugin for `stem` lives in `dir`.
pub fn plugin_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.wasm"))
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
}
