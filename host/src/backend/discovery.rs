//! DNS discovery: servers given as `host:port` are resolved by the proxy at
//! start and again every `resolve-interval`, and every address becomes a
//! backend (`docker compose up --scale backend=5`, a Kubernetes headless
//! service). When the addresses change, a new backend set is swapped in
//! (backends that stay keep their counters, health and connections) and
//! strategies get the new list through `set-backends`.
//!
//! A lookup that fails or times out keeps the last addresses that resolved:
//! a DNS hiccup never empties an upstream. Resolution uses the system
//! configuration (`/etc/resolv.conf`, `/etc/hosts`) or the `resolver` of
//! the config file, with record TTLs capped at one second so that
//! `resolve-interval` decides how fresh the answer is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::proto::op::ResponseCode;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::{Resolver, TokioResolver};

use crate::base::clock::{self, Instant};
use crate::base::config::{NamedServer, ServerConfig, UpstreamConfig};

/// Budget of one lookup.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// The addresses each host name of an upstream resolved to last.
#[derive(Debug, Default)]
pub struct Discovered {
    addrs: BTreeMap<String, Vec<SocketAddr>>,
    at: Option<Instant>,
}

impl Discovered {
    /// The addresses of `previous` for the names `config` still lists.
    pub fn carried(config: &UpstreamConfig, previous: Option<&Mutex<Discovered>>) -> Discovered {
        let Some(previous) = previous.and_then(|p| p.lock().ok()) else {
            return Discovered::default();
        };
        Discovered {
            addrs: config
                .names
                .iter()
                .filter_map(|n| Some((n.address.clone(), previous.addrs.get(&n.address)?.clone())))
                .collect(),
            at: previous.at,
        }
    }
}

/// The servers of `config` with every host name replaced by the addresses
/// it resolved to (one backend each, identified by its address).
pub fn expand(config: &UpstreamConfig, discovered: &Mutex<Discovered>) -> Vec<ServerConfig> {
    let mut servers = config.servers.clone();
    let Ok(discovered) = discovered.lock() else {
        return servers;
    };
    for name in &config.names {
        for addr in discovered.addrs.get(&name.address).into_iter().flatten() {
            let id = addr.to_string();
            if servers.iter().any(|s| s.id == id) {
                continue;
            }
            servers.push(ServerConfig {
                id: id.clone(),
                address: id,
                addr: *addr,
                weight: name.weight,
            });
        }
    }
    servers
}

/// A resolver for `server` (None: the system's configuration).
pub fn resolver(server: Option<SocketAddr>) -> anyhow::Result<TokioResolver> {
    let mut builder = match server {
        Some(at) => {
            let mut ns = NameServerConfig::udp_and_tcp(at.ip());
            for connection in &mut ns.connections {
                connection.port = at.port();
            }
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => Resolver::builder_tokio()?,
    };
    let options = builder.options_mut();
    options.timeout = LOOKUP_TIMEOUT;
    options.attempts = 1;
    options.positive_max_ttl = Some(Duration::from_secs(1));
    options.negative_max_ttl = Some(Duration::from_secs(1));
    Ok(builder.build()?)
}

/// Why a host name of the config did not resolve. The message names the
/// server as configured (`host:port`).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The resolver did not answer within [`LOOKUP_TIMEOUT`].
    #[error("`{address}` does not resolve: no answer within {after:?}")]
    Timeout {
        /// The server as configured (`host:port`).
        address: String,
        /// How long the lookup waited.
        after: Duration,
    },
    /// The resolver answered with an error (no such name, refused, ...).
    #[error("`{address}` does not resolve: {}", in_words(error, address))]
    Failed {
        /// The server as configured (`host:port`).
        address: String,
        /// What the resolver said.
        error: NetError,
    },
}

/// What a resolver error means, in a sentence (the resolver's own
/// messages print its query structures).
fn in_words(error: &NetError, address: &str) -> String {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    match error {
        NetError::Dns(DnsError::NoRecordsFound(none))
            if none.response_code == ResponseCode::NXDomain =>
        {
            format!("DNS has no name `{host}`")
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => {
            format!("DNS has no IPv4 or IPv6 address for `{host}`")
        }
        NetError::Dns(DnsError::ResponseCode(code)) => {
            format!("the DNS server answered `{code}` for `{host}`")
        }
        NetError::Timeout => format!("the DNS server did not answer in time for `{host}`"),
        NetError::NoConnections => "no DNS server could be reached".to_owned(),
        NetError::Io(e) => format!("cannot reach the DNS server: {e}"),
        other => other.to_string(),
    }
}

/// The addresses `name` resolves to now, sorted.
pub async fn lookup(
    resolver: &TokioResolver,
    name: &NamedServer,
) -> Result<Vec<SocketAddr>, LookupError> {
    let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(name.host.as_str()))
        .await
        .map_err(|_| LookupError::Timeout {
            address: name.address.clone(),
            after: LOOKUP_TIMEOUT,
        })?
        .map_err(|error| LookupError::Failed {
            address: name.address.clone(),
            error,
        })?;
    let mut addrs: Vec<SocketAddr> = lookup
        .iter()
        .map(|ip| SocketAddr::new(ip, name.port))
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Resolves every host name of `config` into `discovered`; true when an
/// address list changed (the caller then builds a new backend set). Names
/// that fail keep their last addresses.
pub async fn resolve(
    resolver: &TokioResolver,
    config: &UpstreamConfig,
    discovered: &Mutex<Discovered>,
) -> bool {
    let mut changed = false;
    for name in &config.names {
        let result = lookup(resolver, name).await;
        let Ok(mut discovered) = discovered.lock() else {
            return false;
        };
        let known = discovered.addrs.get(&name.address);
        match result {
            Ok(addrs) if addrs.is_empty() => {
                tracing::warn!(
                    upstream = config.name,
                    server = name.address,
                    "resolves to no address; keeping the last known ones"
                );
            }
            Ok(addrs) if known != Some(&addrs) => {
                tracing::info!(
                    upstream = config.name,
                    server = name.address,
                    "resolves to {} address(es): {}",
                    addrs.len(),
                    addrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                discovered.addrs.insert(name.address.clone(), addrs);
                changed = true;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                upstream = config.name,
                server = name.address,
                "{e}; keeping the last known addresses"
            ),
        }
        discovered.at = Some(clock::now());
    }
    changed
}

/// Whether `config`'s host names are due a lookup `now`.
pub fn due(config: &UpstreamConfig, discovered: &Mutex<Discovered>, now: Instant) -> bool {
    !config.names.is_empty()
        && discovered
            .lock()
            .is_ok_and(|d| clock::due(d.at, config.resolve_interval, now))
}
