//! The reloader: watches the plugins directory, the config file and the
//! `[tls]` certificate and key, and applies changes without dropping a
//! request.
//!
//! File events are debounced (50 ms of quiet per path), then the work
//! (reading, compiling, trial-instantiating) runs on a blocking thread and
//! the result is swapped in atomically by the [`Gateway`]. A file that is
//! empty, half-copied, not a component or not of our WIT world is rejected
//! with its name and the reason in the log; the previous build keeps
//! serving, and the next write of the file is tried again.
//!
//! The certificate and key are watched through their directories: any
//! change there whose files' size or modification time moved (following
//! symlinks: certbot renews by repointing them, Kubernetes by swapping a
//! `..data` link) re-reads both. Bytes already served change nothing; a pair
//! that does not parse or match is logged and the old certificate keeps
//! serving ([`crate::wire::tls`]).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{BuildError, Gateway, PluginReload, ReloadKind, ReloadResult};
use crate::base::config::{Config, ConfigError};
use crate::wire::tls::TlsReload;

/// Quiet time before a burst of file events is acted on (the debouncer may
/// batch up to twice this). A half-copied file that slips through is
/// rejected and retried on its next write.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// A running reloader; stops when dropped.
#[derive(Debug)]
pub struct Reloader {
    task: JoinHandle<()>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Watch {
    debouncer: Debouncer<RecommendedWatcher>,
    /// Canonical plugins directory being watched.
    plugins: PathBuf,
    /// Canonical config file, if the proxy was started from one.
    config: Option<PathBuf>,
    /// What each watched file looked like when last read.
    stamps: HashMap<PathBuf, Stamp>,
    /// Canonical directories of the certificate and key.
    tls_dirs: BTreeSet<PathBuf>,
}

/// A file's size and modification time: whether it changed since it was
/// last read, without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

impl Watch {
    /// Whether `path` changed since the last time this said so. Reading a
    /// file raises events of its own (open, access, close): without this,
    /// every reload would trigger the next one.
    fn changed(&mut self, path: &Path) -> bool {
        let now = stamp(path);
        let before = match now {
            Some(now) => self.stamps.insert(path.to_owned(), now),
            None => self.stamps.remove(path),
        };
        before != now
    }
}

fn canonical(path: &Path) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl Watch {
    fn watch_plugins(&mut self, dir: &Path) -> anyhow::Result<()> {
        let dir = canonical(dir)?;
        if dir != self.plugins {
            let _ = self.debouncer.watcher().unwatch(&self.plugins);
            self.debouncer
                .watcher()
                .watch(&dir, RecursiveMode::NonRecursive)?;
            self.plugins = dir;
        }
        Ok(())
    }

    /// Watches the directories of the certificate and key served now
    /// (again: one shared with an old plugins directory may just have been
    /// unwatched). Directories of files no longer used stay watched; events
    /// there only look at the current files.
    fn watch_tls(&mut self, gateway: &Gateway) -> anyhow::Result<()> {
        let Some(tls) = gateway.tls() else {
            return Ok(());
        };
        let (cert, key) = tls.paths();
        for file in [cert, key] {
            let dir = match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                _ => PathBuf::from("."),
            };
            let dir = canonical(&dir)?;
            self.debouncer
                .watcher()
                .watch(&dir, RecursiveMode::NonRecursive)?;
            self.tls_dirs.insert(dir);
            if !self.stamps.contains_key(&file)
                && let Some(s) = stamp(&file)
            {
                self.stamps.insert(file, s);
            }
        }
        Ok(())
    }

    /// Whether the certificate or key changed since last looked at.
    fn tls_changed(&mut self, gateway: &Gateway) -> bool {
        let Some(tls) = gateway.tls() else {
            return false;
        };
        let (cert, key) = tls.paths();
        // Both stamps are brought up to date.
        self.changed(&cert) | self.changed(&key)
    }
}

/// Starts watching. `config_path` is the file the proxy was started from
/// (none for the built-in demo config).
pub fn spawn(gateway: Arc<Gateway>, config_path: Option<PathBuf>) -> anyhow::Result<Reloader> {
    let (tx, mut rx) = mpsc::unbounded_channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(DEBOUNCE, move |res| {
        // The receiver is gone only when the reloader stopped.
        let _ = tx.send(res);
    })?;
    let plugins = canonical(&gateway.plugins_dir())?;
    debouncer
        .watcher()
        .watch(&plugins, RecursiveMode::NonRecursive)?;
    let config = match config_path {
        Some(path) => {
            let path = canonical(&path)?;
            // Watch the directory: editors replace files by renaming.
            if let Some(dir) = path.parent() {
                debouncer
                    .watcher()
                    .watch(dir, RecursiveMode::NonRecursive)?;
            }
            Some(path)
        }
        None => None,
    };
    // What was read at start-up counts as seen.
    let mut stamps = HashMap::new();
    let files = std::fs::read_dir(&plugins)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .chain(config.clone());
    for path in files {
        if let Some(s) = stamp(&path) {
            stamps.insert(path, s);
        }
    }
    let mut watch = Watch {
        debouncer,
        plugins,
        config,
        stamps,
        tls_dirs: BTreeSet::new(),
    };
    watch.watch_tls(&gateway)?;
    let task = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut config_changed = false;
            let mut tls_event = false;
            let mut plugin_files = BTreeSet::new();
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            for result in batch {
                match result {
                    Ok(events) => {
                        for event in events {
                            tls_event |= event
                                .path
                                .parent()
                                .is_some_and(|dir| watch.tls_dirs.contains(dir));
                            if Some(&event.path) == watch.config.as_ref() {
                                config_changed |= watch.changed(&event.path);
                            } else if event.path.parent() == Some(watch.plugins.as_path())
                                && event.path.extension().is_some_and(|e| e == "wasm")
                                && let Some(name) = event.path.file_name()
                                && watch.changed(&event.path)
                            {
                                plugin_files.insert(name.to_owned());
                            }
                        }
                    }
                    Err(e) => tracing::warn!("file watcher error: {e}"),
                }
            }
            if config_changed && let Some(path) = watch.config.clone() {
                let gw = Arc::clone(&gateway);
                let reloaded = tokio::task::spawn_blocking(move || reload_config(&gw, &path)).await;
                if matches!(reloaded, Ok(true)) {
                    if let Err(e) = watch.watch_plugins(&gateway.plugins_dir()) {
                        tracing::error!("cannot watch the new plugins directory: {e:#}");
                    }
                    if let Err(e) = watch.watch_tls(&gateway) {
                        tracing::error!("cannot watch the certificate's directory: {e:#}");
                    }
                }
            }
            if tls_event && watch.tls_changed(&gateway) {
                let gw = Arc::clone(&gateway);
                if let Err(e) = tokio::task::spawn_blocking(move || reload_tls(&gw)).await {
                    tracing::error!("certificate reload task failed: {e}");
                }
            }
            for name in plugin_files {
                let gw = Arc::clone(&gateway);
                let path = gateway.plugins_dir().join(&name);
                let gw2 = Arc::clone(&gateway);
                match tokio::task::spawn_blocking(move || gw.reload_plugin(&path)).await {
                    Ok(outcome) => log_plugin_reload(&gw2, &outcome),
                    Err(e) => tracing::error!("plugin reload task failed: {e}"),
                }
            }
        }
    });
    Ok(Reloader { task })
}

/// What SIGHUP does: re-reads the config file, the certificate and key,
/// and every plugin file in use, exactly as if each had changed. Blocking.
pub fn reload_everything(gateway: &Gateway, config_path: &Path) {
    reload_config(gateway, config_path);
    reload_tls(gateway);
    let config = gateway.config();
    // Strategies and shadows alike.
    let mut files: Vec<PathBuf> = config
        .upstreams
        .iter()
        .flat_map(|u| std::iter::once(&u.strategy).chain(&u.shadow))
        .map(|stem| crate::plugin::plugin_path(&config.plugins, stem))
        .collect();
    files.sort();
    files.dedup();
    for path in files {
        log_plugin_reload(gateway, &gateway.reload_plugin(&path));
    }
}

/// Re-reads the `[tls]` certificate and key and serves them to new
/// connections if they changed and are valid; otherwise the previous
/// certificate keeps serving. Blocking.
pub fn reload_tls(gateway: &Gateway) {
    let Some(tls) = gateway.tls() else {
        return;
    };
    let (cert, key) = tls.paths();
    match tls.reload() {
        TlsReload::Swapped { chain } => {
            tracing::info!(cert = %cert.display(), key = %key.display(), "TLS certificate reloaded ({chain} certificate(s) in the chain); new connections get it");
            let detail = format!("certificate reloaded ({chain} in the chain)");
            gateway.record_reload(ReloadKind::Tls, &cert, ReloadResult::Ok, detail, Vec::new());
        }
        TlsReload::Unchanged => {
            tracing::debug!(cert = %cert.display(), "TLS certificate unchanged");
        }
        TlsReload::Rejected(e) => {
            tracing::error!(
                "TLS certificate reload rejected; the previous certificate keeps serving: {e}"
            );
            gateway.record_reload(
                ReloadKind::Tls,
                &cert,
                ReloadResult::Error,
                e.to_string(),
                Vec::new(),
            );
        }
    }
}

/// Why a changed config file was not applied.
#[derive(Debug, thiserror::Error)]
enum ConfigReloadError {
    /// The file did not read, parse or validate.
    #[error(transparent)]
    Load(#[from] ConfigError),
    /// The new generation could not be built (a plugin, the certificate,
    /// the plugins directory).
    #[error(transparent)]
    Apply(#[from] BuildError),
}

/// Re-reads the config file and applies it. Returns whether it changed.
pub fn reload_config(gateway: &Gateway, path: &Path) -> bool {
    let applied = Config::load(path)
        .map_err(ConfigReloadError::from)
        .and_then(|config| Ok(gateway.apply_config(config)?));
    match applied {
        Ok(false) => {
            tracing::debug!(file = %path.display(), "config unchanged");
            false
        }
        Ok(true) => {
            tracing::info!(file = %path.display(), "config reloaded");
            let upstreams = gateway
                .config()
                .upstreams
                .into_iter()
                .map(|u| u.name)
                .collect();
            gateway.record_reload(
                ReloadKind::Config,
                path,
                ReloadResult::Ok,
                "config reloaded".into(),
                upstreams,
            );
            true
        }
        Err(e) => {
            tracing::error!("config reload rejected; the previous config keeps serving: {e}");
            gateway.record_reload(
                ReloadKind::Config,
                path,
                ReloadResult::Error,
                e.to_string(),
                Vec::new(),
            );
            false
        }
    }
}

fn log_plugin_reload(gateway: &Gateway, outcome: &PluginReload) {
    match outcome {
        PluginReload::Swapped {
            path,
            upstreams,
            algorithm,
        } => {
            let shown = algorithm.as_deref().unwrap_or("undeclared");
            tracing::info!(file = %path.display(), upstreams = ?upstreams, algorithm = shown, "plugin reloaded");
            let detail = match algorithm {
                Some(algorithm) => format!("now serving {} ({algorithm})", upstreams.join(", ")),
                None => format!("now serving {}", upstreams.join(", ")),
            };
            gateway.record_reload(
                ReloadKind::Plugin,
                path,
                ReloadResult::Ok,
                detail,
                upstreams.clone(),
            );
        }
        PluginReload::Unchanged { path } => {
            // A second event for one copy, or a touch: not a reload.
            tracing::debug!(file = %path.display(), "plugin unchanged");
        }
        PluginReload::Unused { path } => {
            tracing::info!(file = %path.display(), "plugin compiled; no upstream uses it");
            let detail = "compiled; no upstream uses it".into();
            gateway.record_reload(
                ReloadKind::Plugin,
                path,
                ReloadResult::Unused,
                detail,
                Vec::new(),
            );
        }
        PluginReload::Removed { path } => {
            tracing::warn!(
                file = %path.display(),
                "plugin file removed; upstreams keep the build they loaded"
            );
            let detail = "file removed; upstreams keep the build they loaded".into();
            gateway.record_reload(
                ReloadKind::Plugin,
                path,
                ReloadResult::Removed,
                detail,
                Vec::new(),
            );
        }
        PluginReload::Rejected { path, error } => {
            tracing::error!("plugin rejected; the previous build keeps serving: {error}");
            gateway.record_reload(
                ReloadKind::Plugin,
                path,
                ReloadResult::Error,
                error.to_string(),
                Vec::new(),
            );
        }
    }
}
