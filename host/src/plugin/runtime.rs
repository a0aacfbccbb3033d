//! The wasmtime side of plugins: one engine with its epoch ticker (the
//! clock of pick deadlines) and one linker serving the WIT world and the
//! sandbox's WASI, and plugin files compiled into [`Compiled`] components
//! ready to instantiate. Compiling is blocking and slow (tens of ms): it
//! runs at start-up and on reload threads, never on the request path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use wasmtime::Engine;
use wasmtime::component::{Component, ComponentExportIndex, InstancePre, Linker};

use super::bindings::{self, AdmissionIndices, BalancerIndices};
use super::identity::{self, Declared};
use super::imports::GuestState;
use super::sandbox;
use crate::base::clock::Stopwatch;

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
    /// The component does not fit the world it is used for
    /// (`switchyard:balancer/balancer` for a strategy,
    /// `switchyard:balancer/admission` for an admission plugin).
    #[error("{path}: does not match the switchyard:balancer{world} WIT world: {reason}")]
    Mismatch {
        /// The plugin file.
        path: PathBuf,
        /// `""` (a strategy, whose world is the package's first) or
        /// `"/admission"`.
        world: &'static str,
        /// What is missing or mistyped.
        reason: String,
    },
    /// Instantiating, `init` or `set-backends` failed or trapped.
    #[error("{path}: for upstream `{upstream}`: {error}")]
    Init {
        /// The plugin file.
        path: PathBuf,
        /// The upstream it was being prepared for.
        upstream: String,
        /// The step that failed, with the guest's message or the trap.
        error: InstanceError,
    },
}

/// Why an instance could not be made: the step that failed and the guest's
/// message or the trap.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InstanceError {
    /// Instantiating the component failed or trapped.
    #[error("instantiate failed: {0}")]
    Instantiate(String),
    /// `init` refused the parameters, trapped or ran out of time.
    #[error("init failed: {0}")]
    Init(String),
    /// `set-backends` trapped or ran out of time.
    #[error("set-backends failed: {0}")]
    SetBackends(String),
    /// The component exports `state` with the wrong types.
    #[error("state exports: {0}")]
    StateExports(String),
}

/// Shared wasmtime state: one engine (with its epoch ticker) and one linker.
pub struct Runtime {
    pub(super) engine: Engine,
    linker: Linker<GuestState>,
    ticker_stop: Arc<AtomicBool>,
    /// Times picks for `switchyard_plugin_pick_seconds` (calibrated here,
    /// once, off the request path).
    pub(super) stopwatch: Stopwatch,
}

/// Epoch tick used for pick deadlines.
pub(super) const TICK: Duration = Duration::from_millis(1);

impl Runtime {
    /// A runtime with its epoch ticker running.
    pub fn new() -> anyhow::Result<Arc<Self>> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // The host never runs guests concurrently within a store; with
        // concurrency support on, every call pays for it (wasmtime >= 43;
        // the figure is in examples/bench/HISTORY.md).
        config.concurrency_support(false);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        sandbox::add_to_linker(&mut linker)?;
        bindings::Balancer::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |s| s,
        )?;
        // The admission world's own import (`types` and `request` are
        // shared with the balancer world, defined above).
        bindings::limits::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;

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
            stopwatch: Stopwatch::new(),
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
        // A component exporting `gate` is an admission plugin; any other
        // is checked as a strategy.
        let admission = component.get_export_index(None, GATE_INTERFACE).is_some();
        let mismatch = |e: wasmtime::Error| PluginError::Mismatch {
            path: path_buf(),
            world: if admission { ADMISSION_WORLD } else { "" },
            reason: format!("{e:#}"),
        };
        // WASI beyond the sandbox (files, sockets, ...) instantiates but
        // traps when called.
        let mut linker = self.linker.clone();
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(mismatch)?;
        let pre = linker.instantiate_pre(&component).map_err(mismatch)?;
        let (indices, gate, state) = if admission {
            let gate = AdmissionIndices::new(&pre).map_err(mismatch)?;
            (None, Some(gate), None)
        } else {
            let indices = BalancerIndices::new(&pre).map_err(mismatch)?;
            let state = StateExports::find(&component).map_err(mismatch)?;
            (Some(indices), None, state)
        };
        let declared = identity::declared(bytes).unwrap_or_else(|why| {
            tracing::warn!(file = %path.display(), "{why}; the plugin is shown by its file name");
            None
        });
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
            declared,
            pre,
            indices,
            gate,
            state,
            reads_request,
        }))
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
    /// The name and version it declares itself (`None`: shown by its file
    /// stem), see [`super::identity`].
    pub declared: Option<Declared>,
    pub(super) pre: InstancePre<GuestState>,
    /// A strategy's exports (None: an admission plugin).
    pub(super) indices: Option<BalancerIndices>,
    /// An admission plugin's exports (None: a strategy).
    pub(super) gate: Option<AdmissionIndices>,
    pub(super) state: Option<StateExports>,
    /// Whether the component imports the `request` interface: only then is
    /// a pick lent the request head.
    pub(super) reads_request: bool,
}

impl Compiled {
    /// What the plugin declares itself (`least-conn@0.1.0`), if it does.
    pub fn algorithm(&self) -> Option<String> {
        self.declared.as_ref().map(ToString::to_string)
    }

    /// Whether the plugin exports the optional `state` interface (carries
    /// its state across reloads).
    pub fn stateful(&self) -> bool {
        self.state.is_some()
    }

    /// Whether the plugin is an admission plugin (world `admission`).
    pub fn is_admission(&self) -> bool {
        self.gate.is_some()
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

/// The admission plugin's export, by the name the WIT gives it.
pub const GATE_INTERFACE: &str = "switchyard:balancer/gate@0.1.0";

/// How a [`PluginError::Mismatch`] names the admission world.
pub const ADMISSION_WORLD: &str = "/admission";

/// The optional `state` interface, by the name the WIT gives it.
pub const STATE_INTERFACE: &str = "switchyard:balancer/state@0.1.0";

/// Where a component's `state` functions are (looked up once per build).
#[derive(Debug, Clone, Copy)]
pub(super) struct StateExports {
    pub(super) snapshot: ComponentExportIndex,
    pub(super) restore: ComponentExportIndex,
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

/// Where a plugin for `stem` lives in `dir`.
pub fn plugin_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.wasm"))
}
