//! Layer 4, the running proxy's state: the current [`RouteTable`] (read by
//! every request with one atomic load) of [`upstream`]s, and what is needed
//! to build the next one (the current config and the compiled plugins); the
//! [`reload`]er that builds and swaps generations when files change; and the
//! [`background`] loops (health checks, discovery) that work on the live
//! table.
//!
//! Building is blocking and slow (plugin compilation): it runs at start-up
//! and on reload threads, never on the request path. A new generation is
//! complete and checked before it is swapped in; on any error the old one
//! keeps serving and the error is returned to be logged.

pub mod background;
pub mod reload;
pub mod router;
pub mod upstream;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::broadcast;

use self::router::RouteTable;
use self::upstream::Upstream;
use crate::backend::BackendSet;
use crate::backend::discovery::{self, Discovered};
use crate::base::clock::unix_ms;
use crate::base::config::{ClientLimits, Config, NATIVE_STRATEGY};
use crate::base::workers::{Connections, Tunnels};
use crate::plugin::{
    Admission, Compiled, PluginError, Runtime, Shadow, Strategy, Succession, builtin, content_hash,
    plugin_path,
};
use crate::wire::tls::{Tls, TlsError, TlsFile};

/// Shared state of one proxy.
pub struct Gateway {
    runtime: Arc<Runtime>,
    routes: ArcSwap<RouteTable>,
    reload: Mutex<ReloadState>,
    history: Mutex<History>,
    reloads: broadcast::Sender<ReloadRecord>,
    started: SystemTime,
    /// The HTTPS listener's certificate, when `[tls]` was on at start.
    tls: Option<Arc<Tls>>,
    /// Upgraded connections open now.
    tunnels: Arc<Tunnels>,
    /// Client connections open on each worker.
    connections: Arc<Connections>,
}

/// Reloads kept for the admin API.
pub const HISTORY: usize = 50;

#[derive(Default)]
struct History {
    recent: VecDeque<ReloadRecord>,
    counts: BTreeMap<(ReloadKind, ReloadResult), u64>,
}

/// What a reload read again. Serialised (admin JSON, the `kind` label of
/// `/metrics`) as its lowercase name.
///
/// The variants are in the alphabetical order of their names, so that
/// [`Gateway::reload_counts`] lists them as it did when they were strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadKind {
    /// The config file.
    Config,
    /// A plugin file.
    Plugin,
    /// The `[tls]` certificate and key.
    Tls,
}

impl ReloadKind {
    /// `config`, `plugin` or `tls`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReloadKind::Config => "config",
            ReloadKind::Plugin => "plugin",
            ReloadKind::Tls => "tls",
        }
    }
}

impl std::fmt::Display for ReloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a reload ended. Serialised (admin JSON, the `result` label of
/// `/metrics`) as its lowercase name; in alphabetical order like
/// [`ReloadKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadResult {
    /// Rejected; what was serving keeps serving.
    Error,
    /// Applied.
    Ok,
    /// A plugin file was removed; upstreams keep the build they have.
    Removed,
    /// A plugin file compiled, but no upstream uses it.
    Unused,
}

impl ReloadResult {
    /// `error`, `ok`, `removed` or `unused`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Error => "error",
            ReloadResult::Ok => "ok",
            ReloadResult::Removed => "removed",
            ReloadResult::Unused => "unused",
        }
    }
}

impl std::fmt::Display for ReloadResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reload (a plugin file, the config or the certificate), as the admin
/// API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadRecord {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `plugin`, `config` or `tls`.
    pub kind: ReloadKind,
    /// The file.
    pub target: String,
    /// `ok`, `error`, `unused` or `removed`.
    pub result: ReloadResult,
    /// What happened, or why it was rejected.
    pub detail: String,
    /// Upstreams that switched.
    pub upstreams: Vec<String>,
}

struct ReloadState {
    config: Config,
    /// Compiled plugins by file path; reused across config reloads.
    compiled: HashMap<PathBuf, Arc<Compiled>>,
}

/// Why a generation could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A plugin failed to load for an upstream.
    #[error("upstream `{upstream}`: {error}")]
    Plugin {
        /// The upstream.
        upstream: String,
        /// What went wrong with its plugin.
        error: PluginError,
    },
    /// The wasmtime engine could not be created.
    #[error("plugin runtime: {0:#}")]
    Runtime(anyhow::Error),
    /// The `[tls]` certificate or key was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The `plugins` directory cannot be read.
    #[error("plugins directory `{}`: {error}", path.display())]
    PluginsDirUnreadable {
        /// The directory, as configured.
        path: PathBuf,
        /// Why its metadata could not be read (it does not exist, ...).
        error: std::io::Error,
    },
    /// The `plugins` path names something other than a directory.
    #[error("plugins directory `{}`: not a directory", path.display())]
    PluginsNotADirectory {
        /// The path, as configured.
        path: PathBuf,
    },
    /// A plugin the config names has no file (and no built-in copy).
    #[error("{0}")]
    MissingPlugin(Box<MissingPlugin>),
}

/// A plugin the config names that has no file ([`BuildError::MissingPlugin`]).
#[derive(Debug)]
pub struct MissingPlugin {
    /// The upstream naming it.
    pub upstream: String,
    /// The config key naming it (`upstream[0].strategy`).
    pub key: String,
    /// The name as written.
    pub stem: String,
    /// The file looked for.
    pub path: PathBuf,
    /// Stems of the `*.wasm` files in the plugins directory, sorted.
    pub available: Vec<String>,
    /// The built-in strategies served when their file is missing (none
    /// for an admission plugin: they are strategies).
    pub builtin: Vec<&'static str>,
}

impl BuildError {
    /// The config key the error is about, when it is one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            BuildError::MissingPlugin(missing) => Some(&missing.key),
            BuildError::Tls(TlsError::Read { file, .. } | TlsError::Pem { file, .. }) => {
                Some(match file {
                    TlsFile::Cert => "tls.cert",
                    TlsFile::Key => "tls.key",
                })
            }
            _ => None,
        }
    }
}

/// `upstream `a`: strategy `least-con`: no plugin file
/// plugins/least-con.wasm; did you mean `least-conn`?`, then what there is.
impl std::fmt::Display for MissingPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let MissingPlugin {
            upstream,
            key,
            stem,
            path,
            available,
            builtin,
        } = self;
        let what = key.rsplit('.').next().unwrap_or(key);
        let dir = path.parent().unwrap_or(Path::new("."));
        write!(
            f,
            "upstream `{upstream}`: {what} `{stem}`: no plugin file {}",
            path.display()
        )?;
        let candidates = available
            .iter()
            .map(String::as_str)
            .chain(builtin.iter().copied());
        if let Some(close) = crate::base::config::closest(stem, candidates) {
            write!(f, "; did you mean `{close}`?")?;
        }
        let list = |names: &mut dyn Iterator<Item = &str>| {
            names
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if available.is_empty() {
            write!(f, "\n  {} has no .wasm plugins", dir.display())?;
        } else {
            let files = list(&mut available.iter().map(String::as_str));
            write!(f, "\n  plugins in {}: {files}", dir.display())?;
        }
        if !builtin.is_empty() {
            let names = list(&mut builtin.iter().copied());
            write!(
                f,
                "\n  built in (served when no file of that name exists): {names}"
            )?;
        }
        Ok(())
    }
}

/// Stems of the `*.wasm` files in `dir`, sorted.
fn plugin_stems(dir: &Path) -> Vec<String> {
    let mut stems: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    stems.sort();
    stems
}

/// What a plugin-file change did.
#[derive(Debug)]
pub enum PluginReload {
    /// Upstreams now running the new build.
    Swapped {
        /// The plugin file.
        path: PathBuf,
        /// Upstreams that switched.
        upstreams: Vec<String>,
        /// What the new build declares itself (`least-conn@0.1.0`).
        algorithm: Option<String>,
    },
    /// Same bytes as the loaded build: nothing to do.
    Unchanged {
        /// The plugin file.
        path: PathBuf,
    },
    /// Compiled fine; no upstream uses it (yet).
    Unused {
        /// The plugin file.
        path: PathBuf,
    },
    /// The file was removed; upstreams keep the build they have.
    Removed {
        /// The plugin file.
        path: PathBuf,
    },
    /// The new file was rejected; the old build keeps serving.
    Rejected {
        /// The plugin file.
        path: PathBuf,
        /// The reason, naming the file.
        error: PluginError,
    },
}

impl Gateway {
    /// Compiles every plugin the config names and builds the first
    /// generation. Blocking.
    pub fn build(config: Config) -> Result<Arc<Self>, BuildError> {
        let tls = config.tls.as_ref().map(Tls::new).transpose()?.map(Arc::new);
        let runtime = Runtime::new().map_err(BuildError::Runtime)?;
        let mut compiled = HashMap::new();
        let table = build_table(&runtime, &config, &mut compiled, None)?;
        // Fixed at start, like the worker threads.
        let workers = config.workers;
        Ok(Arc::new(Self {
            runtime,
            routes: ArcSwap::from_pointee(table),
            reload: Mutex::new(ReloadState { config, compiled }),
            history: Mutex::default(),
            reloads: broadcast::channel(64).0,
            started: SystemTime::now(),
            tls,
            tunnels: Arc::default(),
            connections: Arc::new(Connections::new(workers)),
        }))
    }

    /// The HTTPS listener's certificate, when `[tls]` is on.
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.tls.as_ref()
    }

    /// Upgraded connections (WebSockets) open now.
    pub fn tunnels(&self) -> &Arc<Tunnels> {
        &self.tunnels
    }

    /// Client connections open on each worker ([`crate::base::workers`]).
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// When the proxy started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Notes a reload for the admin API and its subscribers.
    pub fn record_reload(
        &self,
        kind: ReloadKind,
        target: &Path,
        result: ReloadResult,
        detail: String,
        upstreams: Vec<String>,
    ) {
        let record = ReloadRecord {
            at_ms: unix_ms(SystemTime::now()),
            kind,
            target: target.display().to_string(),
            result,
            detail,
            upstreams,
        };
        {
            let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
            *history.counts.entry((kind, result)).or_default() += 1;
            if history.recent.len() == HISTORY {
                history.recent.pop_front();
            }
            history.recent.push_back(record.clone());
        }
        // No subscriber is fine.
        let _ = self.reloads.send(record);
    }

    /// The last [`HISTORY`] reloads, oldest first.
    pub fn reload_history(&self) -> Vec<ReloadRecord> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.recent.iter().cloned().collect()
    }

    /// Reloads since start by `(kind, result)`.
    pub fn reload_counts(&self) -> Vec<((ReloadKind, ReloadResult), u64)> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.counts.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Reloads as they happen.
    pub fn subscribe_reloads(&self) -> broadcast::Receiver<ReloadRecord> {
        self.reloads.subscribe()
    }

    /// The current routing generation.
    pub fn routes(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.routes.load()
    }

    /// A copy of the current configuration.
    pub fn config(&self) -> Config {
        self.lock().config.clone()
    }

    /// The current `[client]` limits (read for each new connection).
    pub fn client_limits(&self) -> ClientLimits {
        self.lock().config.client
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadState> {
        // A panic while holding the lock cannot leave the state half-changed
        // (every change is a final assignment), so a poisoned lock is usable.
        self.reload.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Switches to `config`; false when it is the running one already.
    /// Upstreams whose config and plugin did not change are kept as they
    /// are (counters, sequence, instances). Blocking.
    pub fn apply_config(&self, config: Config) -> Result<bool, BuildError> {
        let mut state = self.lock();
        if state.config == config {
            return Ok(false);
        }
        let current = self.routes.load_full();
        let mut compiled = state.compiled.clone();
        let table = build_table(&self.runtime, &config, &mut compiled, Some(&current))?;
        // New certificate files are read and checked before anything
        // changes; the same files are the watcher's business.
        let tls = match (&config.tls, &self.tls) {
            (Some(next), Some(tls)) if tls.paths() != (next.cert.clone(), next.key.clone()) => {
                Some((next, crate::wire::tls::load(&next.cert, &next.key)?))
            }
            (Some(next), None) => {
                crate::wire::tls::load(&next.cert, &next.key)?;
                None
            }
            _ => None,
        };
        if config.listen != state.config.listen {
            tracing::warn!(old = %state.config.listen, new = %config.listen, "`listen` changed: restart the proxy to apply it");
        }
        if config.tls.as_ref().map(|t| t.listen) != state.config.tls.as_ref().map(|t| t.listen) {
            tracing::warn!(
                "`[tls]` added or removed, or `tls.listen` changed: restart the proxy to apply it"
            );
        }
        if config.admin != state.config.admin || config.resolver != state.config.resolver {
            tracing::warn!("`admin` or `resolver` changed: restart the proxy to apply it");
        }
        if config.workers != state.config.workers {
            tracing::warn!(
                old = state.config.workers,
                new = config.workers,
                "`workers` changed: restart the proxy to apply it"
            );
        }
        let table = Arc::new(table);
        self.routes.store(Arc::clone(&table));
        for old in &current.upstreams {
            if let Some(new) = table.upstream(old.name()) {
                old.backends.load().retire(&new.backends.load());
            }
        }
        if let (Some((files, loaded)), Some(current)) = (tls, &self.tls) {
            current.switch(files, loaded);
            tracing::info!(cert = %files.cert.display(), key = %files.key.display(), "TLS certificate switched to the new files");
        }
        state.compiled = compiled;
        state.config = config;
        Ok(true)
    }

    /// The plugins directory of the current config.
    pub fn plugins_dir(&self) -> PathBuf {
        self.lock().config.plugins.clone()
    }

    /// Reacts to a change of the plugin file `path`: recompiles it and swaps
    /// it into every upstream using it (as its strategy, its shadow or its
    /// admission plugin), each new strategy continuing the lineage of the
    /// one it replaces, each admission plugin the limiters of the one it
    /// replaces. Blocking.
    pub fn reload_plugin(&self, path: &Path) -> PluginReload {
        let mut state = self.lock();
        let table = self.routes.load_full();
        let dir = &state.config.plugins;
        // (upstream, as its shadow)
        let mut users: Vec<(&Arc<Upstream>, bool)> = Vec::new();
        // Upstreams running it as their admission plugin.
        let gate_users: Vec<&Arc<Upstream>> = (table.upstreams.iter())
            .filter(|u| {
                u.admission.is_some()
                    && (u.config.admission_plugin.as_deref())
                        .is_some_and(|s| plugin_path(dir, s) == path)
            })
            .collect();
        for u in &table.upstreams {
            if plugin_path(dir, &u.config.strategy) == path {
                users.push((u, false));
            }
            if u.shadow.is_some()
                && (u.config.shadow.as_deref()).is_some_and(|s| plugin_path(dir, s) == path)
            {
                users.push((u, true));
            }
        }
        // A reference strategy's file removed is served from the copy
        // built into the binary again, as at start without the file (so the
        // README's hot swap is undone with `rm`); any other plugin keeps the
        // build it loaded.
        let bytes = match plugin_bytes(path) {
            Ok(Cow::Borrowed(builtin)) => {
                tracing::info!(file = %path.display(), "plugin file removed: serving the built-in copy");
                Cow::Borrowed(builtin)
            }
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return PluginReload::Removed {
                    path: path.to_owned(),
                };
            }
            Err(error) => {
                return PluginReload::Rejected {
                    path: path.to_owned(),
                    error: PluginError::Read {
                        path: path.to_owned(),
                        error,
                    },
                };
            }
        };
        if state
            .compiled
            .get(path)
            .is_some_and(|c| c.hash == content_hash(&bytes))
        {
            return PluginReload::Unchanged {
                path: path.to_owned(),
            };
        }
        let compiled = match self.runtime.compile_bytes(path, &bytes) {
            Ok(c) => c,
            Err(error) => {
                return PluginReload::Rejected {
                    path: path.to_owned(),
                    error,
                };
            }
        };
        // Prepare for every user first, then swap: all or nothing.
        let mut prepared = Vec::with_capacity(users.len());
        for &(upstream, shadow) in &users {
            let set = upstream.backends.load_full();
            let (params, previous) = match &upstream.shadow {
                Some(s) if shadow => (&upstream.config.shadow_params, s.strategy.load_full()),
                _ => (&upstream.config.params, upstream.strategy.load_full()),
            };
            match Strategy::prepare_after(
                &self.runtime,
                Arc::clone(&compiled),
                upstream.name(),
                params,
                &set,
                state.config.plugin_limits,
                Succession {
                    previous: Some(&previous),
                    shadow,
                },
            ) {
                Ok(strategy) => prepared.push((upstream, shadow, strategy)),
                Err(error) => {
                    return PluginReload::Rejected {
                        path: path.to_owned(),
                        error,
                    };
                }
            }
        }
        let mut gates = Vec::with_capacity(gate_users.len());
        for upstream in gate_users {
            let Some(current) = &upstream.admission else {
                continue;
            };
            match Admission::prepare(
                &self.runtime,
                Arc::clone(&compiled),
                upstream.name(),
                &upstream.config.admission_params,
                state.config.plugin_limits,
                upstream.config.admission.limit_keys,
                Some(&current.load()),
            ) {
                Ok(admission) => gates.push((current, admission, upstream.name())),
                Err(error) => {
                    return PluginReload::Rejected {
                        path: path.to_owned(),
                        error,
                    };
                }
            }
        }
        let algorithm = compiled.algorithm();
        state.compiled.insert(path.to_owned(), compiled);
        if prepared.is_empty() && gates.is_empty() {
            return PluginReload::Unused {
                path: path.to_owned(),
            };
        }
        let mut upstreams: Vec<String> = prepared
            .into_iter()
            .map(|(upstream, shadow, strategy)| match &upstream.shadow {
                Some(s) if shadow => {
                    s.strategy.store(strategy);
                    format!("{} (shadow)", upstream.name())
                }
                _ => {
                    upstream.strategy.store(strategy);
                    upstream.name().to_owned()
                }
            })
            .collect();
        for (slot, admission, name) in gates {
            slot.store(admission);
            upstreams.push(format!("{name} (admission)"));
        }
        PluginReload::Swapped {
            path: path.to_owned(),
            upstreams,
            algorithm,
        }
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Reads and compiles the plugin file `path` ([`plugin_bytes`]: a
/// reference strategy whose file is missing, in a fresh checkout or an
/// empty mounted directory, is the copy built into the binary; a file that
/// appears later replaces it like any changed plugin).
fn compile_plugin(
    runtime: &Runtime,
    path: &Path,
    stem: &str,
) -> Result<Arc<Compiled>, PluginError> {
    if stem == NATIVE_STRATEGY {
        // Never called (picks are native); the reference build stands in
        // for the plugin slot so the upstream looks like any other.
        let (_, bytes) = builtin::BUILTIN[0];
        return runtime.compile_bytes(path, bytes);
    }
    match plugin_bytes(path) {
        Ok(bytes) => {
            if matches!(bytes, Cow::Borrowed(_)) {
                tracing::info!(file = %path.display(), "no such plugin file: using the built-in `{stem}`");
            }
            runtime.compile_bytes(path, &bytes)
        }
        Err(error) => Err(PluginError::Read {
            path: path.to_owned(),
            error,
        }),
    }
}

/// The bytes of the plugin file `path`, or, when there is no such file and
/// its stem names a reference strategy, the copy built into the binary
/// (borrowed).
fn plugin_bytes(path: &Path) -> std::io::Result<Cow<'static, [u8]>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Cow::Owned(bytes)),
        Err(error) => {
            let stem = path.file_stem().and_then(|s| s.to_str());
            match stem.and_then(builtin::named) {
                Some(bytes) if error.kind() == std::io::ErrorKind::NotFound => {
                    Ok(Cow::Borrowed(bytes))
                }
                _ => Err(error),
            }
        }
    }
}

/// Whether `dir` can be the plugins directory: it exists and is a
/// directory (the reloader watches it). Checked for every generation, so
/// `check`, start-up (watching or not) and config reloads agree.
fn check_plugins_dir(dir: &Path) -> Result<(), BuildError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(BuildError::PluginsNotADirectory {
            path: dir.to_owned(),
        }),
        Err(error) => Err(BuildError::PluginsDirUnreadable {
            path: dir.to_owned(),
            error,
        }),
    }
}

/// Builds a routing generation for `config`, reusing what `previous` has
/// when nothing changed.
fn build_table(
    runtime: &Arc<Runtime>,
    config: &Config,
    compiled: &mut HashMap<PathBuf, Arc<Compiled>>,
    previous: Option<&RouteTable>,
) -> Result<RouteTable, BuildError> {
    check_plugins_dir(&config.plugins)?;
    let mut upstreams = Vec::with_capacity(config.upstreams.len());
    for (i, uc) in config.upstreams.iter().enumerate() {
        let plugin_err = |error| BuildError::Plugin {
            upstream: uc.name.clone(),
            error,
        };
        let mut compiled_for = |stem: &str, key: &str| -> Result<Arc<Compiled>, BuildError> {
            let path = plugin_path(&config.plugins, stem);
            if let Some(c) = compiled.get(&path) {
                return Ok(Arc::clone(c));
            }
            let c = compile_plugin(runtime, &path, stem).map_err(|error| match error {
                PluginError::Read { path, error }
                    if error.kind() == std::io::ErrorKind::NotFound =>
                {
                    BuildError::MissingPlugin(Box::new(MissingPlugin {
                        upstream: uc.name.clone(),
                        key: format!("upstream[{i}].{key}"),
                        stem: stem.to_owned(),
                        available: plugin_stems(&config.plugins),
                        // The built-in copies stand in for strategies only.
                        builtin: if key == "admission" {
                            Vec::new()
                        } else {
                            builtin::BUILTIN.iter().map(|(name, _)| *name).collect()
                        },
                        path,
                    }))
                }
                error => plugin_err(error),
            })?;
            compiled.insert(path, Arc::clone(&c));
            Ok(c)
        };
        let plugin = compiled_for(&uc.strategy, "strategy")?;
        let shadow_plugin = (uc.shadow.as_deref())
            .map(|s| compiled_for(s, "shadow"))
            .transpose()?;
        let gate_plugin = (uc.admission_plugin.as_deref())
            .map(|s| compiled_for(s, "admission"))
            .transpose()?;
        let prev = previous.and_then(|t| t.upstream(&uc.name));
        if let Some(prev) = prev {
            let strategy = prev.strategy.load();
            let same_shadow = match (&prev.shadow, &shadow_plugin) {
                (None, None) => true,
                (Some(s), Some(p)) => Arc::ptr_eq(&s.strategy.load().compiled, p),
                _ => false,
            };
            let same_admission = match (&prev.admission, &gate_plugin) {
                (None, None) => true,
                (Some(a), Some(p)) => Arc::ptr_eq(&a.load().compiled, p),
                _ => false,
            };
            if prev.config == *uc
                && Arc::ptr_eq(&strategy.compiled, &plugin)
                && same_shadow
                && same_admission
                && strategy.limits() == config.plugin_limits
            {
                upstreams.push(Arc::clone(prev));
                continue;
            }
        }
        let prev_set = prev.map(|p| p.backends.load_full());
        // Host names start from what they last resolved to.
        let discovered = Mutex::new(Discovered::carried(uc, prev.map(|p| &p.discovered)));
        let servers = discovery::expand(uc, &discovered);
        let set = Arc::new(BackendSet::build(&servers, prev_set.as_deref()));
        // The strategies that took the upstream's places so far hand their
        // per-thread state over.
        let prev_strategy = prev.map(|p| p.strategy.load_full());
        let strategy = Strategy::prepare_after(
            runtime,
            plugin,
            &uc.name,
            &uc.params,
            &set,
            config.plugin_limits,
            Succession {
                previous: prev_strategy.as_deref(),
                shadow: false,
            },
        )
        .map_err(plugin_err)?;
        let prev_shadow = prev.and_then(|p| p.shadow.as_ref());
        let shadow = match (&uc.shadow, shadow_plugin) {
            (Some(name), Some(shadow_plugin)) => {
                let prev_strategy = prev_shadow.map(|s| s.strategy.load_full());
                let shadow = Strategy::prepare_after(
                    runtime,
                    shadow_plugin,
                    &uc.name,
                    &uc.shadow_params,
                    &set,
                    config.plugin_limits,
                    Succession {
                        previous: prev_strategy.as_deref(),
                        shadow: true,
                    },
                )
                .map_err(plugin_err)?;
                Some(Shadow::new(name.clone(), shadow, prev_shadow))
            }
            _ => None,
        };
        // Its limiters go on from the upstream's admission plugin before.
        let admission = match gate_plugin {
            Some(gate_plugin) => {
                let previous = prev
                    .and_then(|p| p.admission.as_ref())
                    .map(|a| a.load_full());
                Some(
                    Admission::prepare(
                        runtime,
                        gate_plugin,
                        &uc.name,
                        &uc.admission_params,
                        config.plugin_limits,
                        uc.admission.limit_keys,
                        previous.as_deref(),
                    )
                    .map_err(plugin_err)?,
                )
            }
            None => None,
        };
        let discovered = discovered.into_inner().unwrap_or_else(|p| p.into_inner());
        upstreams.push(Arc::new(
            Upstream::new(uc.clone(), set, strategy, discovered, prev.map(|p| &**p))
                .with_shadow(shadow)
                .with_admission(admission),
        ));
    }
    Ok(RouteTable {
        upstreams,
        trusted_proxies: config.trusted_proxies.clone(),
        access_log: config.access_log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [ReloadKind; 3] = [ReloadKind::Config, ReloadKind::Plugin, ReloadKind::Tls];
    const RESULTS: [ReloadResult; 4] = [
        ReloadResult::Error,
        ReloadResult::Ok,
        ReloadResult::Removed,
        ReloadResult::Unused,
    ];

    #[test]
    fn reload_kinds_and_results_serialise_as_their_lowercase_names_in_their_order() {
        for kind in KINDS {
            let json = serde_json::to_value(kind).expect("serialises");
            assert_eq!(json, kind.as_str());
            assert_eq!(kind.to_string(), kind.as_str());
        }
        for result in RESULTS {
            let json = serde_json::to_value(result).expect("serialises");
            assert_eq!(json, result.as_str());
            assert_eq!(result.to_string(), result.as_str());
        }
        // `reload_counts` (and the `reloads` family of /metrics) lists them
        // in this order, as it did when they were strings.
        assert!(KINDS.is_sorted() && KINDS.is_sorted_by_key(|k| k.as_str()));
        assert!(RESULTS.is_sorted() && RESULTS.is_sorted_by_key(|r| r.as_str()));
        let names: Vec<&str> = KINDS.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, ["config", "plugin", "tls"]);
        let names: Vec<&str> = RESULTS.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, ["error", "ok", "removed", "unused"]);
    }

    #[test]
    fn a_record_serialises_with_the_same_fields_and_strings() {
        let record = ReloadRecord {
            at_ms: 7,
            kind: ReloadKind::Plugin,
            target: "plugins/a.wasm".into(),
            result: ReloadResult::Unused,
            detail: "compiled; no upstream uses it".into(),
            upstreams: Vec::new(),
        };
        assert_eq!(
            serde_json::to_string(&record).expect("serialises"),
            r#"{"at_ms":7,"kind":"plugin","target":"plugins/a.wasm","result":"unused","detail":"compiled; no upstream uses it","upstreams":[]}"#
        );
    }
}
