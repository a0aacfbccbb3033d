//! Switchyard: an HTTP reverse proxy and load balancer whose balancing
//! strategies are WebAssembly components, hot-reloaded from a directory.
//!
//! Where things live:
//! - [`config`]: the TOML file, validated into typed structs;
//! - [`listener`]: accepts client connections (HTTP/1.1, HTTP/2);
//! - [`front`]: the strict HTTP/1.1 front (smuggling vectors, limits);
//! - [`proxy`]: the request path (route, pick, forward);
//! - [`router`]: host and path-prefix routing to upstreams;
//! - [`upstream`]: backends, their live figures, what a request holds;
//! - [`pool`]: keep-alive connections to each backend;
//! - [`upstream_h1`]: the own HTTP/1.1 client for bodiless requests;
//! - [`retry`]: which failed tries are tried again, and the retry budget;
//! - [`health`]: passive and active backend health;
//! - [`discovery`]: servers given as host names, resolved again and again;
//! - [`stats`]: request-path counters and histograms for the admin API;
//! - [`plugin`]: the Wasm strategy runtime (compile, per-thread instances,
//!   deadlines, fallback);
//! - [`reload`]: file watching and hot reload;
//! - [`gateway`]: the running state that reloads swap;
//! - [`forwarded`]: client IP and forwarding/hop-by-hop headers;
//! - [`access`]: the access log;
//! - [`tunnel`]: WebSocket and other upgrades passed through;
//! - [`tls`]: TLS termination (`[tls]`), certificates reloaded on change;
//! - [`admin`]: the admin listener: status, metrics, events, dashboard;
//! - [`demo`]: built-in demo backends;
//! - [`simulate`]: offline replay of a request trace through a strategy.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod body;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod forwarded;
pub mod front;
pub mod gateway;
pub mod head;
pub mod health;
pub mod listener;
pub mod plugin;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod retry;
pub mod router;
pub mod simulate;
pub mod stats;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod upstream_h1;
pub mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::config::Config;
pub use crate::gateway::Gateway;

/// The reference strategies, compiled into the binary so that `demo` works
/// from an empty directory. Built from `plugins/` by `build.rs`.
pub const BUILTIN_PLUGINS: [(&str, &[u8]); 3] = [
    (
        "round-robin",
        include_bytes!(env!("SWITCHYARD_WASM_ROUND_ROBIN")),
    ),
    (
        "least-conn",
        include_bytes!(env!("SWITCHYARD_WASM_LEAST_CONN")),
    ),
    ("ip-hash", include_bytes!(env!("SWITCHYARD_WASM_IP_HASH"))),
];

/// A running proxy: listener, gateway and (optionally) reloader.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    gateway: Arc<Gateway>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    health: JoinHandle<()>,
    discovery: JoinHandle<()>,
    admin: Option<admin::Admin>,
    _reloader: Option<reload::Reloader>,
}

/// How to start a [`Proxy`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The config file, watched for changes when `watch` is set.
    pub config_path: Option<PathBuf>,
    /// Watch the plugins directory (and the config file) and hot-reload.
    pub watch: bool,
}

impl Proxy {
    /// Binds `config.listen` (and `tls.listen`), loads the certificate,
    /// compiles the plugins and starts serving.
    pub async fn start(config: Config, options: Options) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let tls_listener = match &config.tls {
            Some(tls) => Some(
                TcpListener::bind(tls.listen)
                    .await
                    .with_context(|| format!("cannot listen on {} (tls.listen)", tls.listen))?,
            ),
            None => None,
        };
        let tls_addr = tls_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let admin_listener = match config.admin {
            Some(at) => Some(
                TcpListener::bind(at)
                    .await
                    .with_context(|| format!("cannot listen on {at} (admin)"))?,
            ),
            None => None,
        };
        let resolver = discovery::resolver(config.resolver).context("DNS resolver")?;
        let gateway = tokio::task::spawn_blocking(move || Gateway::build(config)).await??;
        // Host names resolve before the first request is accepted.
        discovery::refresh_all(&resolver, &gateway).await;
        let discovery = discovery::spawn(resolver, Arc::clone(&gateway));
        let admin = admin_listener
            .map(|l| admin::Admin::start(l, Arc::clone(&gateway), addr))
            .transpose()?;
        let reloader = if options.watch {
            Some(reload::spawn(Arc::clone(&gateway), options.config_path)?)
        } else {
            None
        };
        let health = health::spawn(Arc::clone(&gateway));
        // The certificate was loaded (and checked) with the gateway.
        let secure = match (tls_listener, gateway.tls()) {
            (Some(listener), Some(tls)) => Some(listener::TlsListener {
                listener,
                tls: Arc::clone(tls),
            }),
            _ => None,
        };
        let server = listener::start(listener, secure, Arc::clone(&gateway))
            .context("cannot start the worker threads")?;
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = rx.await;
            server.shutdown().await;
        });
        Ok(Proxy {
            addr,
            tls_addr,
            gateway,
            shutdown: Some(tx),
            server,
            health,
            discovery,
            admin,
            _reloader: reloader,
        })
    }

    /// The address of the admin API, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(admin::Admin::addr)
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the HTTPS listener, when `[tls]` is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The proxy's state.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Stops accepting, lets open connections finish (up to the drain
    /// deadline) and returns.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
    }
}

impl Drop for Proxy {
    /// A dropped proxy stops accepting and drains in the background.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.health.abort();
        self.discovery.abort();
    }
}
