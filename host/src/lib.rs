//! Switchyard: an HTTP reverse proxy and load balancer whose balancing
//! strategies are WebAssembly components, hot-reloaded from a directory.
//!
//! The crate is built in layers; a module imports only from its own layer
//! or the ones below it (`tests/layers.rs` fails on any other import, and
//! on any import cycle):
//!
//! | layer | module | what lives there |
//! | --- | --- | --- |
//! | 0 | [`base`] | config, the one clock, stats, access log, worker threads |
//! | 1 | [`wire`] | the strict front and own HTTP/1.1 server, heads, forwarding fields, the client body, TLS |
//! | 2 | [`backend`] | backends and their sets, the connection pool, the own HTTP/1.1 client, health, retries, DNS discovery |
//! | 2 | [`limit`] | admission: allow and deny lists, the rate and in-flight limiters the host keeps |
//! | 3 | [`plugin`] | the Wasm strategy runtime (compile, per-thread instances, deadlines, fallback), the built-in strategies |
//! | 4 | [`gateway`] | the running state reloads swap: upstreams, routes, the reloader, the health and discovery loops |
//! | 5 | [`proxy`] | the request path: listeners, the exchange, the response body, tunnels |
//! | 6 | [`admin`], [`simulate`], [`demo`], [`scaffold`] | the admin API and dashboard, offline replay, demo backends, `switchyard new` |
//! | 7 | this file, `main.rs` | starting and stopping a [`Proxy`]; the command line |

#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod base;
pub mod demo;
pub mod gateway;
pub mod limit;
pub mod plugin;
pub mod proxy;
pub mod scaffold;
pub mod simulate;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backend::discovery;
pub use crate::base::config::Config;
pub use crate::gateway::Gateway;
use crate::gateway::{background, reload};
use crate::proxy::listener;

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
        let listener =
            bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let tls_listener = match &config.tls {
            Some(tls) => Some(
                bind(tls.listen)
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
        let discovery = background::Discovery::new(resolver);
        discovery.resolve_all(&gateway).await;
        let discovery = background::spawn(Arc::clone(&gateway), discovery);
        let admin = admin_listener
            .map(|l| {
                let listeners = admin::status::Listeners {
                    http: addr,
                    https: tls_addr,
                };
                admin::Admin::start(l, Arc::clone(&gateway), listeners)
            })
            .transpose()?;
        let reloader = if options.watch {
            Some(reload::spawn(Arc::clone(&gateway), options.config_path)?)
        } else {
            None
        };
        let health = background::spawn(Arc::clone(&gateway), background::Health::new());
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

/// Connections the kernel queues for a client listener until they are
/// accepted (capped by `net.core.somaxconn`, 4096 by default since Linux
/// 5.4). tokio's `TcpListener::bind` asks for 128, like std: a crowd of
/// clients connecting at once (or `client.max-connections` reached) then
/// overflows the queue and waits for SYN retries, a second or more each
/// (examples/bench/HISTORY.md, -c5000). nginx asks for 511, HAProxy for
/// its `maxconn`.
pub const BACKLOG: u32 = 4096;

/// A client listener on `addr` with a [`BACKLOG`] queue (and
/// `SO_REUSEADDR`, as `TcpListener::bind` sets).
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}
