//! The configuration file: TOML -> raw serde structs that reject unknown keys
//! -> a typed, validated [`Config`] (socket addresses, durations, CIDRs).
//!
//! Every error names the file and the key, and, where the key is written,
//! its line and column with the line shown ([`place`]); messages say what
//! is accepted, with examples, never a Rust type. Without `-c`, `run` and
//! `check` read the first of [`DEFAULT_PATHS`] that exists.
//!
//! Nothing on the request path reads TOML: the proxy is built from the typed
//! config, and a reload is a comparison of two typed configs. Every key and
//! its default is documented in the README's configuration reference; keep
//! the two in step.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;
use toml::de::DeTable;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

mod admission;
mod place;

pub use admission::{
    Admission, DEFAULT_LIMIT_KEYS, LimitConn, LimitKey, LimitReq, MAX_LIMIT_KEYS, Rate,
};
use admission::{RawAdmission, RawLimitConn, RawLimitReq, RawLimits, Written};
pub use place::{Location, closest};

/// `strategy = "host:round-robin"`: the host's own round robin, no plugin
/// (the baseline the Wasm overhead is measured against).
pub const NATIVE_STRATEGY: &str = "host:round-robin";

/// Upper bound of a server `weight` (nginx has none; HAProxy caps at 256).
pub const MAX_WEIGHT: u32 = 1000;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Address of the admin API and dashboard; None when `admin = "off"`.
    pub admin: Option<SocketAddr>,
    /// DNS server used to resolve server host names; None: the system's
    /// (`/etc/resolv.conf`, `/etc/hosts`).
    pub resolver: Option<SocketAddr>,
    /// Directory watched for `*.wasm` strategies.
    pub plugins: PathBuf,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Sandbox limits for every strategy instance.
    pub plugin_limits: PluginLimits,
    /// How long open connections may finish after SIGTERM/SIGINT.
    pub drain_timeout: Duration,
    /// Threads serving client connections, each with its own event loop
    /// (nginx's `worker_processes`); default: one per core.
    pub workers: usize,
    /// Write one `access` log line per request.
    pub access_log: bool,
    /// What one client connection may take (`[client]`).
    pub client: ClientLimits,
    /// The HTTPS listener, when `[tls]` is present.
    pub tls: Option<TlsConfig>,
    /// Upstreams, in file order (the order breaks routing ties).
    pub upstreams: Vec<UpstreamConfig>,
}

/// `[tls]`: an HTTPS listener next to the plain one, serving the same
/// routes. The files are read by [`crate::wire::tls`] (at start, by `check`, and
/// again whenever they change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Address of the HTTPS listener.
    pub listen: SocketAddr,
    /// PEM file with the certificate chain, leaf first (`fullchain.pem`).
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[client]`: timeouts and limits of client connections, enforced by the
/// strict front ([`crate::wire::front`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// A request head must be complete this long after its first byte, or
    /// the client gets 408 and the connection is closed.
    pub header_timeout: Duration,
    /// Longest silence while a request body is being read (408).
    pub body_timeout: Duration,
    /// An idle keep-alive connection (no request, nothing in flight) is
    /// closed after this.
    pub keepalive_timeout: Duration,
    /// Longest a write to the client may wait for the client to read
    /// (nginx's `send_timeout`): past it the connection is closed, and the
    /// backend connection of the response with it.
    pub send_timeout: Duration,
    /// Largest request body, in bytes (413); `None`: no limit.
    pub max_body_size: Option<u64>,
    /// Most client connections served at once; further ones wait in the
    /// listen backlog until one closes.
    pub max_connections: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
            max_body_size: Some(10 << 20),
            max_connections: 20_000,
        }
    }
}

/// Limits applied to every plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Wall-clock budget of one `pick` (and of `init`/`set-backends`).
    pub pick_deadline: Duration,
    /// Largest linear memory an instance may grow to, in bytes.
    pub memory: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            pick_deadline: Duration::from_millis(10),
            memory: 16 << 20,
        }
    }
}

/// One `[[upstream]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Unique name, used in logs and the admin API.
    pub name: String,
    /// File stem of the strategy plugin in the plugins directory.
    pub strategy: String,
    /// Parameters handed to the strategy's `init`.
    pub params: toml::Table,
    /// `shadow`: file stem of a second strategy asked on every request
    /// without affecting traffic (its agreement with `strategy` is shown by
    /// the admin API). Default: none.
    pub shadow: Option<String>,
    /// `shadow-params`: parameters handed to the shadow's `init`. Default:
    /// empty.
    pub shadow_params: toml::Table,
    /// `admission`: file stem of an admission plugin (world `admission`)
    /// asked after the built-in admission rules, before the pick. Default:
    /// none.
    pub admission_plugin: Option<String>,
    /// `admission-params`: parameters handed to the admission plugin's
    /// `init`. Default: empty.
    pub admission_params: toml::Table,
    /// The backend servers given as IP addresses.
    pub servers: Vec<ServerConfig>,
    /// The backend servers given as host names: resolved by the proxy at
    /// start and every `resolve_interval`; every address is a backend.
    pub names: Vec<NamedServer>,
    /// How often `names` are resolved again.
    pub resolve_interval: Duration,
    /// Host names this upstream serves; empty means any host.
    pub hosts: Vec<HostPattern>,
    /// Path prefix this upstream serves (longest prefix wins).
    pub path_prefix: String,
    /// Budget for opening a TCP connection to a backend.
    pub connect_timeout: Duration,
    /// Budget from sending the request to receiving the response head
    /// (the shorter of it and `read_timeout` applies).
    pub response_timeout: Duration,
    /// Longest silence of the backend while its response is read (nginx's
    /// `proxy_read_timeout`): between two reads of the body, and, as the
    /// shorter bound with `response_timeout`, before the head.
    pub read_timeout: Duration,
    /// How long a backend connection may sit idle in the pool.
    pub idle_timeout: Duration,
    /// How long an upgraded connection (WebSocket) may pass no byte either
    /// way before the proxy closes it.
    pub tunnel_idle_timeout: Duration,
    /// Most idle connections kept per backend.
    pub keepalive: usize,
    /// When and how often a failed try is tried again.
    pub retry: RetryPolicy,
    /// Passive health (nginx `max_fails` / `fail_timeout`).
    pub passive: PassiveHealth,
    /// Active health checks, when configured.
    pub health_check: Option<ActiveCheck>,
    /// What a plugin failure means for the request.
    pub plugin_failure: FailurePolicy,
    /// Response header naming the backend that answered (e.g. `x-upstream`).
    pub backend_header: Option<http::HeaderName>,
    /// Who is let in, how many and how fast (`allow`, `deny`, `limit-req`,
    /// `limit-conn`, `limit-keys`; the top level's where not written here).
    pub admission: Admission,
}

/// What happens to a request whose pick failed (trap, deadline, bad answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Serve it with the host's round robin over usable backends.
    #[default]
    FailOpen,
    /// Answer 503.
    FailClosed,
}

/// Passive health: failures of real requests take a backend out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Failures within `fail_timeout` that take a backend out; 0 disables.
    pub max_fails: u32,
    /// The failure window, and how long a backend stays out.
    pub fail_timeout: Duration,
}

/// Active health checks: a periodic GET of `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    /// Path probed on every backend.
    pub path: String,
    /// Time between rounds.
    pub interval: Duration,
    /// Budget of one probe.
    pub timeout: Duration,
    /// Consecutive failures that take a backend out.
    pub fall: u32,
    /// Consecutive successes that bring it back.
    pub rise: u32,
}

/// One backend server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Stable identity handed to strategies (defaults to `address`).
    pub id: String,
    /// The address as written (`127.0.0.1:5001`, `app:8000`).
    pub address: String,
    /// Where the proxy connects.
    pub addr: SocketAddr,
    /// Relative weight, 1..=[`MAX_WEIGHT`].
    pub weight: u32,
}

/// A server given as `host:port`, expanded to one backend per address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedServer {
    /// The host name.
    pub host: String,
    /// The port every address is reached on.
    pub port: u16,
    /// The weight of each backend it expands to.
    pub weight: u32,
    /// As written (`backend:8000`).
    pub address: String,
}

/// A `hosts` entry: an exact name or a `*.example.com` wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Matches this name exactly (case-insensitive, stored lower-case).
    Exact(String),
    /// `*.example.com`: matches any name ending in `.example.com`
    /// (stored as `.example.com`).
    Suffix(String),
}

impl HostPattern {
    /// Whether `host` (lower-case, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// An upstream's retry settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries after the first; 0 disables retries.
    pub retries: u32,
    /// Response statuses that are retried like errors.
    pub on_status: Vec<u16>,
    /// Share of in-flight requests that may be retries, in percent.
    pub budget_percent: u32,
    /// Retries always allowed at once, whatever the share.
    pub budget_min: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 2,
            on_status: Vec::new(),
            budget_percent: 20,
            budget_min: 3,
        }
    }
}

impl RetryPolicy {
    /// Whether a response with `status` asks for a retry.
    pub fn retries_status(&self, status: http::StatusCode) -> bool {
        self.on_status.contains(&status.as_u16())
    }
}

/// Why a configuration was rejected. The message names the file, the line
/// and column where the error has a place, the key, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// No `-c/--config` and none of the [`DEFAULT_PATHS`] exists.
    #[error(
        "no config file: neither {} nor ./{} exists; name one with `-c <file>` (e.g. `switchyard check -c examples/switchyard.toml`)",
        DEFAULT_PATHS[0],
        DEFAULT_PATHS[1]
    )]
    NoFile,
    /// TOML syntax, a wrong type or an unknown key.
    #[error("{path}{}: {}{message}{}", place(at), named(key), snippet(at))]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where, when the parser said.
        at: Option<Location>,
        /// Dotted path of the key the error is at, when known.
        key: Option<String>,
        /// What is wrong and what is expected, in words.
        message: String,
    },
    /// A value of the right type but not acceptable.
    #[error("{path}{}: `{key}`: {message}{}", place(at), snippet(at))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where the key is written (None: it is not, a default is wrong).
        at: Option<Location>,
        /// Dotted path of the offending key (`upstream[0].servers[2]`).
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

fn place(at: &Option<Location>) -> String {
    at.as_ref().map(|a| format!(":{a}")).unwrap_or_default()
}

fn snippet(at: &Option<Location>) -> &str {
    at.as_ref().map_or("", Location::snippet)
}

fn named(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default()
}

/// Where `key` (`upstream[0].strategy`) is written in the config `text`,
/// for errors found after validation (a plugin file that is missing).
pub fn locate(text: &str, key: &str) -> Option<Location> {
    let doc = DeTable::parse(text).ok()?;
    place::span_of(&doc, key).map(|s| Location::of(text, s))
}

/// Where `run` and `check` look for the config file when not given one
/// (`-c`), first that exists: the system's, then the working directory's.
pub const DEFAULT_PATHS: [&str; 2] = ["/etc/switchyard/switchyard.toml", "switchyard.toml"];

/// The config file to read: `given` (`-c`), else the first of
/// [`DEFAULT_PATHS`] that exists.
pub fn config_path(given: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    if let Some(path) = given {
        return Ok(path);
    }
    DEFAULT_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or(ConfigError::NoFile)
}

// ---------------------------------------------------------------------------
// Raw file format.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_admin")]
    admin: String,
    #[serde(default)]
    resolver: Option<String>,
    #[serde(default = "default_plugins")]
    plugins: PathBuf,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    plugin_limits: RawPluginLimits,
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    drain_timeout: Duration,
    #[serde(default)]
    workers: Option<i64>,
    #[serde(default)]
    access_log: bool,
    #[serde(default)]
    client: RawClient,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Option<Vec<String>>,
    #[serde(default)]
    limit_req: Option<RawLimits<RawLimitReq>>,
    #[serde(default)]
    limit_conn: Option<RawLimits<RawLimitConn>>,
    #[serde(default)]
    limit_keys: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawClient {
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    header_timeout: Duration,
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    body_timeout: Duration,
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    keepalive_timeout: Duration,
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    send_timeout: Duration,
    #[serde(default = "default_max_body_size")]
    max_body_size: toml::Value,
    #[serde(default = "default_max_connections")]
    max_connections: i64,
}

impl Default for RawClient {
    fn default() -> Self {
        Self {
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            send_timeout: default_send_timeout(),
            max_body_size: default_max_body_size(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_header_timeout() -> Duration {
    ClientLimits::default().header_timeout
}

fn default_body_timeout() -> Duration {
    ClientLimits::default().body_timeout
}

fn default_keepalive_timeout() -> Duration {
    ClientLimits::default().keepalive_timeout
}

fn default_send_timeout() -> Duration {
    ClientLimits::default().send_timeout
}

fn default_max_body_size() -> toml::Value {
    toml::Value::String("10m".into())
}

fn default_max_connections() -> i64 {
    ClientLimits::default().max_connections as i64
}

/// A size as nginx writes it: bytes (`1048576`), or a number with `k`, `m`
/// or `g` (powers of 1024, case-insensitive: `"512k"`, `"10m"`).
fn parse_size(value: &toml::Value) -> Option<u64> {
    match value {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(s) => {
            let s = s.trim();
            let (digits, shift) = match s.as_bytes().last()?.to_ascii_lowercase() {
                b'k' => (&s[..s.len() - 1], 10),
                b'm' => (&s[..s.len() - 1], 20),
                b'g' => (&s[..s.len() - 1], 30),
                _ => (s, 0),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse::<u64>().ok()?.checked_mul(1 << shift)
        }
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTls {
    #[serde(default = "default_tls_listen")]
    listen: String,
    cert: PathBuf,
    key: PathBuf,
}

fn default_tls_listen() -> String {
    "127.0.0.1:8443".into()
}

/// Longest timeout accepted: deadlines are added to the clock, and a
/// timeout of centuries would overflow it.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 86_400);

/// Most `workers` accepted.
const MAX_WORKERS: usize = 256;

/// One worker per core the process may run on (asked once: the answer
/// comes from cgroup files, and every backend's pool asks).
pub fn default_workers() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_admin() -> String {
    "127.0.0.1:9090".into()
}

fn default_plugins() -> PathBuf {
    "plugins".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPluginLimits {
    #[serde(default = "default_pick_deadline", with = "humantime_serde")]
    pick_deadline: Duration,
    #[serde(default = "default_memory_mib")]
    memory_mib: u32,
}

impl Default for RawPluginLimits {
    fn default() -> Self {
        Self {
            pick_deadline: default_pick_deadline(),
            memory_mib: default_memory_mib(),
        }
    }
}

fn default_pick_deadline() -> Duration {
    PluginLimits::default().pick_deadline
}

fn default_memory_mib() -> u32 {
    (PluginLimits::default().memory >> 20) as u32
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawUpstream {
    name: String,
    #[serde(default = "default_strategy")]
    strategy: String,
    #[serde(default)]
    shadow: Option<String>,
    #[serde(default)]
    shadow_params: toml::Table,
    #[serde(default)]
    admission: Option<String>,
    #[serde(default)]
    admission_params: toml::Table,
    #[serde(default)]
    params: toml::Table,
    servers: Vec<RawServer>,
    #[serde(default = "default_resolve_interval", with = "humantime_serde")]
    resolve_interval: Duration,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default = "default_prefix")]
    path_prefix: String,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    response_timeout: Duration,
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    read_timeout: Duration,
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(default = "default_tunnel_idle_timeout", with = "humantime_serde")]
    tunnel_idle_timeout: Duration,
    #[serde(default = "default_keepalive")]
    keepalive: usize,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default)]
    retry_on_status: Vec<u16>,
    #[serde(default = "default_retry_budget_percent")]
    retry_budget_percent: u32,
    #[serde(default = "default_retry_budget_min")]
    retry_budget_min: u32,
    #[serde(default = "default_max_fails")]
    max_fails: u32,
    #[serde(default = "default_fail_timeout", with = "humantime_serde")]
    fail_timeout: Duration,
    #[serde(default)]
    health_check: Option<RawActiveCheck>,
    #[serde(default)]
    plugin_failure: FailurePolicy,
    #[serde(default)]
    backend_header: Option<String>,
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Option<Vec<String>>,
    #[serde(default)]
    limit_req: Option<RawLimits<RawLimitReq>>,
    #[serde(default)]
    limit_conn: Option<RawLimits<RawLimitConn>>,
    #[serde(default)]
    limit_keys: Option<i64>,
}

fn default_resolve_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

/// An hour, like HAProxy's usual `timeout tunnel`: WebSockets that are
/// quiet for a while (no application pings) stay open, a vanished peer is
/// still noticed eventually.
fn default_tunnel_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

fn default_keepalive() -> usize {
    128
}

fn default_retries() -> u32 {
    RetryPolicy::default().retries
}

fn default_retry_budget_percent() -> u32 {
    RetryPolicy::default().budget_percent
}

fn default_retry_budget_min() -> u32 {
    RetryPolicy::default().budget_min
}

/// Most tries after the first that `retries` accepts.
pub const MAX_RETRIES: u32 = 10;

fn default_max_fails() -> u32 {
    1
}

fn default_fail_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawActiveCheck {
    #[serde(default = "default_check_path")]
    path: String,
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_fall")]
    fall: u32,
    #[serde(default = "default_rise")]
    rise: u32,
}

fn default_check_path() -> String {
    "/health".into()
}

fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_fall() -> u32 {
    3
}

fn default_rise() -> u32 {
    2
}

fn default_strategy() -> String {
    "round-robin".into()
}

fn default_prefix() -> String {
    "/".into()
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(60)
}

/// nginx's `proxy_read_timeout`, and what HAProxy's `timeout server` is
/// usually set to.
fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}

/// A server: either `"host:port"` or `{ address = "host:port", weight = 2,
/// id = "a" }`.
struct RawServer {
    address: String,
    weight: u32,
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTable {
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    id: Option<String>,
}

fn default_weight() -> u32 {
    1
}

impl<'de> Deserialize<'de> for RawServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ServerVisitor;
        impl<'de> Visitor<'de> for ServerVisitor {
            type Value = RawServer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"host:port\" or a table { address = \"host:port\", weight = N, id = \"name\" }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawServer, E> {
                Ok(RawServer {
                    address: v.to_owned(),
                    weight: default_weight(),
                    id: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawServer, A::Error> {
                let t = RawServerTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawServer {
                    address: t.address,
                    weight: t.weight,
                    id: t.id,
                })
            }
        }
        d.deserialize_any(ServerVisitor)
    }
}

// ---------------------------------------------------------------------------
// Loading and validation.

impl Config {
    /// Reads and validates a configuration file. Host names in server
    /// addresses are resolved here (blocking), never on the request path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is only used in
    /// messages.
    ///
    /// The README's minimal config:
    ///
    /// ```
    /// use std::path::Path;
    /// use switchyard::Config;
    ///
    /// let text = r#"
    /// listen = "127.0.0.1:8080"
    /// plugins = "plugins"
    ///
    /// [[upstream]]
    /// name = "app"
    /// strategy = "round-robin"
    /// servers = ["127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:5003"]
    /// "#;
    /// let config = Config::parse(text, Path::new("switchyard.toml")).unwrap();
    /// assert_eq!(config.upstreams[0].servers.len(), 3);
    /// assert_eq!(config.upstreams[0].passive.max_fails, 1);
    ///
    /// let err = Config::parse(&text.replace("servers", "server"), Path::new("x.toml")).unwrap_err();
    /// assert!(err.to_string().contains("unknown key `server`"));
    /// ```
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error, doc: Option<&Spanned<DeTable<'_>>>| {
            let span = e.span();
            let key = doc
                .zip(span.clone())
                .and_then(|(doc, s)| place::key_at(doc, &s));
            let mut message = place::humane(e.message());
            if key.as_deref() == Some("upstream") && message.ends_with("found a table") {
                message = "each upstream is written `[[upstream]]`, with two brackets (an entry of the list of upstreams)".to_owned();
            }
            ConfigError::Parse {
                path: path.to_owned(),
                at: span.map(|s| Location::of(text, s)),
                key,
                message,
            }
        };
        let doc = DeTable::parse(text).map_err(|e| parse_error(e, None))?;
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(e, Some(&doc)))?;
        Validator {
            path,
            text,
            doc: &doc,
        }
        .config(raw)
    }

    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    doc: &'a Spanned<DeTable<'a>>,
}

impl Validator<'_> {
    /// The error of `key`, at the line where it is written.
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let key = key.into();
        ConfigError::Invalid {
            path: self.path.to_owned(),
            at: place::span_of(self.doc, &key).map(|s| Location::of(self.text, s)),
            key,
            message: message.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = raw.listen.parse::<SocketAddr>().map_err(|_| {
            self.err(
                "listen",
                format!("`{}` is not an IP:port address (expected e.g. \"127.0.0.1:8080\" or \"[::]:80\")", raw.listen),
            )
        })?;
        let admin = match raw.admin.as_str() {
            "off" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|_| {
                self.err(
                    "admin",
                    format!("`{text}` is not an IP:port address or \"off\" (expected e.g. \"127.0.0.1:9090\")"),
                )
            })?),
        };
        if admin.is_some_and(|a| a == listen && a.port() != 0) {
            // Often `listen` moved onto the admin API's default port.
            return Err(if place::span_of(self.doc, "admin").is_some() {
                self.err("admin", "must differ from `listen`")
            } else {
                self.err(
                    "listen",
                    format!("{listen} is where the admin API listens by default (`admin`); choose another address, or set `admin` to another one or to \"off\""),
                )
            });
        }
        let tls = raw.tls.map(|t| self.tls(t, listen, admin)).transpose()?;
        let resolver = match &raw.resolver {
            None => None,
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        self.err(
                            "resolver",
                            format!("`{text}` is not a DNS server address (expected e.g. \"10.0.0.2\" or \"127.0.0.1:5353\")"),
                        )
                    })?,
            ),
        };
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, s)| parse_cidr(s).ok_or_else(|| {
                self.err(
                    format!("trusted-proxies[{i}]"),
                    format!("`{s}` is not an IP address or CIDR (expected e.g. \"10.0.0.0/8\" or \"127.0.0.1\")"),
                )
            }))
            .collect::<Result<Vec<_>, _>>()?;
        let limits = &raw.plugin_limits;
        if limits.pick_deadline < Duration::from_millis(1)
            || limits.pick_deadline > Duration::from_secs(10)
        {
            return Err(self.err(
                "plugin-limits.pick-deadline",
                "must be between 1ms and 10s (e.g. \"10ms\")",
            ));
        }
        if !(1..=4096).contains(&limits.memory_mib) {
            return Err(self.err(
                "plugin-limits.memory-mib",
                "must be between 1 and 4096 (MiB)",
            ));
        }
        let client = self.client(&raw.client)?;
        let workers = match raw.workers {
            None => default_workers(),
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_WORKERS).contains(n))
                .ok_or_else(|| {
                    self.err(
                        "workers",
                        format!("must be between 1 and {MAX_WORKERS} (threads serving clients; leave it out for one per core)"),
                    )
                })?,
        };
        if raw.upstream.is_empty() {
            return Err(self.err(
                "upstream",
                "at least one [[upstream]] is required (with `name` and `servers`)",
            ));
        }
        let defaults = self.admission(
            "",
            RawAdmission {
                allow: raw.allow,
                deny: raw.deny,
                limit_req: raw.limit_req,
                limit_conn: raw.limit_conn,
                limit_keys: raw.limit_keys,
            },
        )?;
        let mut upstreams = Vec::with_capacity(raw.upstream.len());
        for (i, u) in raw.upstream.into_iter().enumerate() {
            let up = self.upstream(i, u, &defaults)?;
            if let Some(prev) = upstreams
                .iter()
                .position(|p: &UpstreamConfig| p.name == up.name)
            {
                return Err(self.err(
                    format!("upstream[{i}].name"),
                    format!(
                        "`{}` is already the name of upstream[{prev}]; names must be unique",
                        up.name
                    ),
                ));
            }
            if let Some(prev) = upstreams.iter().position(|p: &UpstreamConfig| {
                p.hosts == up.hosts && p.path_prefix == up.path_prefix
            }) {
                return Err(self.err(
                    format!("upstream[{i}]"),
                    format!(
                        "routes the same hosts and path-prefix `{}` as upstream[{prev}] (`{}`); one of them would never be used",
                        up.path_prefix, upstreams[prev].name
                    ),
                ));
            }
            upstreams.push(up);
        }
        Ok(Config {
            listen,
            admin,
            resolver,
            plugins: raw.plugins,
            trusted_proxies,
            plugin_limits: PluginLimits {
                pick_deadline: limits.pick_deadline,
                memory: (limits.memory_mib as usize) << 20,
            },
            drain_timeout: raw.drain_timeout,
            workers,
            access_log: raw.access_log,
            client,
            tls,
            upstreams,
        })
    }

    fn client(&self, c: &RawClient) -> Result<ClientLimits, ConfigError> {
        for (key, value) in [
            ("client.header-timeout", c.header_timeout),
            ("client.body-timeout", c.body_timeout),
            ("client.keepalive-timeout", c.keepalive_timeout),
            ("client.send-timeout", c.send_timeout),
        ] {
            if value.is_zero() {
                return Err(self.err(key, "must be more than 0 (e.g. \"10s\")"));
            }
            if value > MAX_TIMEOUT {
                return Err(self.err(key, "must be at most a year (e.g. \"10s\")"));
            }
        }
        let max_body_size = parse_size(&c.max_body_size).ok_or_else(|| {
            self.err(
                "client.max-body-size",
                format!(
                    "{} is not a size (expected a whole number of bytes, or a number with k, m or g in quotes, e.g. \"512k\", \"10m\", \"1g\"; 0 for no limit)",
                    c.max_body_size
                ),
            )
        })?;
        let max_connections = usize::try_from(c.max_connections)
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| self.err("client.max-connections", "must be between 1 and 1000000"))?;
        Ok(ClientLimits {
            header_timeout: c.header_timeout,
            body_timeout: c.body_timeout,
            keepalive_timeout: c.keepalive_timeout,
            send_timeout: c.send_timeout,
            max_body_size: (max_body_size > 0).then_some(max_body_size),
            max_connections,
        })
    }

    fn tls(
        &self,
        t: RawTls,
        listen: SocketAddr,
        admin: Option<SocketAddr>,
    ) -> Result<TlsConfig, ConfigError> {
        let at = t.listen.parse::<SocketAddr>().map_err(|_| {
            self.err(
                "tls.listen",
                format!(
                    "`{}` is not an IP:port address (expected e.g. \"0.0.0.0:443\")",
                    t.listen
                ),
            )
        })?;
        if at.port() != 0 && (at == listen || admin == Some(at)) {
            return Err(self.err("tls.listen", "must differ from `listen` and `admin`"));
        }
        for (k, p) in [("tls.cert", &t.cert), ("tls.key", &t.key)] {
            if p.as_os_str().is_empty() {
                return Err(self.err(k, "must name a PEM file"));
            }
        }
        Ok(TlsConfig {
            listen: at,
            cert: t.cert,
            key: t.key,
        })
    }

    fn upstream(
        &self,
        i: usize,
        u: RawUpstream,
        defaults: &Written,
    ) -> Result<UpstreamConfig, ConfigError> {
        let key = |k: &str| format!("upstream[{i}].{k}");
        if u.name.is_empty()
            || !u
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(self.err(
                key("name"),
                format!(
                    "`{}` must be non-empty and use only letters, digits, `-`, `_` and `.`",
                    u.name
                ),
            ));
        }
        if u.strategy != NATIVE_STRATEGY && !is_plugin_stem(&u.strategy) {
            return Err(self.err(
                key("strategy"),
                format!("`{}` must be a plugin file stem such as \"round-robin\" (letters, digits, `-`, `_`, `.`; no path, no `.wasm`)", u.strategy),
            ));
        }
        if let Some(shadow) = u.shadow.as_deref().filter(|s| !is_plugin_stem(s)) {
            return Err(self.err(
                key("shadow"),
                format!("`{shadow}` must be a plugin file stem such as \"ip-hash\" (letters, digits, `-`, `_`, `.`; no path, no `.wasm`)"),
            ));
        }
        if u.shadow.is_none() && !u.shadow_params.is_empty() {
            return Err(self.err(
                key("shadow-params"),
                "is only used with `shadow = \"<plugin>\"`",
            ));
        }
        if let Some(plugin) = u.admission.as_deref().filter(|s| !is_plugin_stem(s)) {
            return Err(self.err(
                key("admission"),
                format!("`{plugin}` must be a plugin file stem such as \"rate-limit\" (letters, digits, `-`, `_`, `.`; no path, no `.wasm`)"),
            ));
        }
        if u.admission.is_none() && !u.admission_params.is_empty() {
            return Err(self.err(
                key("admission-params"),
                "is only used with `admission = \"<plugin>\"`",
            ));
        }
        if u.servers.is_empty() {
            return Err(self.err(
                key("servers"),
                "must list at least one server, e.g. [\"127.0.0.1:5001\"]",
            ));
        }
        let mut servers: Vec<ServerConfig> = Vec::with_capacity(u.servers.len());
        let mut names: Vec<NamedServer> = Vec::new();
        for (j, s) in u.servers.into_iter().enumerate() {
            let skey = key(&format!("servers[{j}]"));
            if !(1..=MAX_WEIGHT).contains(&s.weight) {
                return Err(self.err(
                    format!("{skey}.weight"),
                    format!("{} is out of range (expected 1 to {MAX_WEIGHT})", s.weight),
                ));
            }
            match parse_server(&s.address).map_err(|why| self.err(skey.clone(), why.to_string()))? {
                Target::Ip(addr) => {
                    let id = s.id.unwrap_or_else(|| s.address.clone());
                    if servers.iter().any(|p| p.id == id) {
                        return Err(self.err(
                            skey,
                            format!(
                                "`{id}` appears twice; give each server a distinct address or `id`"
                            ),
                        ));
                    }
                    servers.push(ServerConfig {
                        id,
                        address: s.address,
                        addr,
                        weight: s.weight,
                    });
                }
                Target::Name(host, port) => {
                    if s.id.is_some() {
                        return Err(self.err(
                            format!("{skey}.id"),
                            format!("`{}` is a host name: each address it resolves to is a backend, identified by that address, so it cannot take an `id`", s.address),
                        ));
                    }
                    if names.iter().any(|n| n.host == host && n.port == port) {
                        return Err(self.err(skey, format!("`{}` appears twice", s.address)));
                    }
                    names.push(NamedServer {
                        host,
                        port,
                        weight: s.weight,
                        address: s.address,
                    });
                }
            }
        }
        if u.resolve_interval < Duration::from_millis(100) {
            return Err(self.err(
                key("resolve-interval"),
                "must be at least 100ms (e.g. \"5s\")",
            ));
        }
        let hosts = u
            .hosts
            .iter()
            .enumerate()
            .map(|(j, h)| {
                parse_host_pattern(h).ok_or_else(|| {
                    self.err(
                        key(&format!("hosts[{j}]")),
                        format!("`{h}` is not a host name or `*.domain` wildcard"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !u.path_prefix.starts_with('/') {
            return Err(self.err(
                key("path-prefix"),
                format!("`{}` must start with `/`", u.path_prefix),
            ));
        }
        for (k, d) in [
            ("connect-timeout", u.connect_timeout),
            ("response-timeout", u.response_timeout),
            ("read-timeout", u.read_timeout),
            ("idle-timeout", u.idle_timeout),
            ("tunnel-idle-timeout", u.tunnel_idle_timeout),
            ("fail-timeout", u.fail_timeout),
        ] {
            if d.is_zero() {
                return Err(self.err(key(k), "must be greater than zero (e.g. \"5s\")"));
            }
            if d > MAX_TIMEOUT {
                return Err(self.err(key(k), "must be at most a year (e.g. \"5s\")"));
            }
        }
        if u.retries > MAX_RETRIES {
            return Err(self.err(
                key("retries"),
                format!(
                    "{} is too many (expected 0 to {MAX_RETRIES}: tries after the first)",
                    u.retries
                ),
            ));
        }
        if let Some((j, code)) = u
            .retry_on_status
            .iter()
            .enumerate()
            .find(|(_, c)| !(400..=599).contains(*c))
        {
            return Err(self.err(
                key(&format!("retry-on-status[{j}]")),
                format!("{code} is not an error status (expected 400 to 599, e.g. 502, 503)"),
            ));
        }
        if u.retry_budget_percent > 100 {
            return Err(self.err(
                key("retry-budget-percent"),
                format!(
                    "{} is not a percentage (expected 0 to 100)",
                    u.retry_budget_percent
                ),
            ));
        }
        let backend_header = match &u.backend_header {
            None => None,
            Some(name) => Some(http::HeaderName::try_from(name.as_str()).map_err(|_| {
                self.err(
                    key("backend-header"),
                    format!("`{name}` is not a header name (e.g. \"x-upstream\")"),
                )
            })?),
        };
        let health_check = match u.health_check {
            None => None,
            Some(c) => Some(self.active_check(i, c)?),
        };
        let admission = self
            .admission(
                &format!("upstream[{i}]."),
                RawAdmission {
                    allow: u.allow,
                    deny: u.deny,
                    limit_req: u.limit_req,
                    limit_conn: u.limit_conn,
                    limit_keys: u.limit_keys,
                },
            )?
            .over(defaults);
        Ok(UpstreamConfig {
            name: u.name,
            strategy: u.strategy,
            params: u.params,
            shadow: u.shadow,
            shadow_params: u.shadow_params,
            admission_plugin: u.admission,
            admission_params: u.admission_params,
            servers,
            names,
            resolve_interval: u.resolve_interval,
            hosts,
            path_prefix: u.path_prefix,
            connect_timeout: u.connect_timeout,
            response_timeout: u.response_timeout,
            read_timeout: u.read_timeout,
            idle_timeout: u.idle_timeout,
            tunnel_idle_timeout: u.tunnel_idle_timeout,
            keepalive: u.keepalive,
            retry: RetryPolicy {
                retries: u.retries,
                on_status: u.retry_on_status,
                budget_percent: u.retry_budget_percent,
                budget_min: u.retry_budget_min,
            },
            passive: PassiveHealth {
                max_fails: u.max_fails,
                fail_timeout: u.fail_timeout,
            },
            health_check,
            plugin_failure: u.plugin_failure,
            backend_header,
            admission,
        })
    }
}

impl Validator<'_> {
    fn active_check(&self, i: usize, c: RawActiveCheck) -> Result<ActiveCheck, ConfigError> {
        let key = |k: &str| format!("upstream[{i}].health-check.{k}");
        if !c.path.starts_with('/') || c.path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(self.err(
                key("path"),
                format!("`{}` must be a path starting with `/`", c.path),
            ));
        }
        for (k, d) in [("interval", c.interval), ("timeout", c.timeout)] {
            if d.is_zero() {
                return Err(self.err(key(k), "must be greater than zero (e.g. \"2s\")"));
            }
            if d > MAX_TIMEOUT {
                return Err(self.err(key(k), "must be at most a year (e.g. \"2s\")"));
            }
        }
        for (k, n) in [("fall", c.fall), ("rise", c.rise)] {
            if n == 0 {
                return Err(self.err(key(k), "must be at least 1"));
            }
        }
        Ok(ActiveCheck {
            path: c.path,
            interval: c.interval,
            timeout: c.timeout,
            fall: c.fall,
            rise: c.rise,
        })
    }
}

/// Whether `s` can name a plugin file `<s>.wasm` in the plugins directory.
pub fn is_plugin_stem(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn parse_host_pattern(h: &str) -> Option<HostPattern> {
    let h = h.to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
    };
    match h.strip_prefix("*.") {
        Some(rest) if valid(rest) => Some(HostPattern::Suffix(format!(".{rest}"))),
        Some(_) => None,
        None if valid(&h) => Some(HostPattern::Exact(h)),
        None => None,
    }
}

/// `ip:port`, or `name:port` resolved now to its first address.
enum Target {
    Ip(SocketAddr),
    Name(String, u16),
}

/// Why a server address was refused (the message of
/// [`ConfigError::Invalid`] for `upstream[i].servers[j]`).
#[derive(Debug, thiserror::Error)]
enum AddressError {
    /// No `:port` at all.
    #[error("`{address}` has no port ({SERVER_FORMS})")]
    NoPort {
        /// The address as written.
        address: String,
    },
    /// The part after the last `:` is not a port.
    #[error(
        "`{address}`: `{port}` is not a port (a port is a number from 1 to 65535; {SERVER_FORMS})"
    )]
    BadPort {
        /// The address as written.
        address: String,
        /// What stands where the port should.
        port: String,
    },
    /// The part before the port is neither an IP address nor a host name.
    #[error("`{address}`: `{host}` is not an IP address or a host name ({SERVER_FORMS})")]
    BadHost {
        /// The address as written.
        address: String,
        /// What stands where the host should.
        host: String,
    },
}

/// What a server address may look like, for messages.
const SERVER_FORMS: &str = "expected \"ip:port\" or \"hostname:port\", e.g. \"127.0.0.1:5001\"";

/// `ip:port`, or `host:port` with a syntactically valid host name (it is
/// resolved later, by the proxy).
fn parse_server(address: &str) -> Result<Target, AddressError> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(Target::Ip(addr));
    }
    // An IPv6 address alone has colons but no port.
    let (Some((host, port)), false) = (
        address.rsplit_once(':'),
        address.parse::<std::net::IpAddr>().is_ok(),
    ) else {
        return Err(AddressError::NoPort {
            address: address.to_owned(),
        });
    };
    let Some(port) = port.parse::<u16>().ok().filter(|p| *p != 0) else {
        return Err(AddressError::BadPort {
            address: address.to_owned(),
            port: port.to_owned(),
        });
    };
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid_host {
        return Err(AddressError::BadHost {
            address: address.to_owned(),
            host: host.to_owned(),
        });
    }
    Ok(Target::Name(host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    const MINIMAL: &str = r#"
listen = "127.0.0.1:8080"
plugins = "plugins"

[[upstream]]
name = "app"
strategy = "round-robin"
servers = ["127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:5003"]
"#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(c.plugin_limits, PluginLimits::default());
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.workers, default_workers());
        assert_eq!(c.client, ClientLimits::default());
        assert_eq!(c.client.max_body_size, Some(10 << 20));
        let u = &c.upstreams[0];
        assert_eq!(u.path_prefix, "/");
        assert!(u.hosts.is_empty());
        assert_eq!(u.connect_timeout, Duration::from_secs(5));
        assert_eq!(u.response_timeout, Duration::from_secs(60));
        assert_eq!(u.read_timeout, Duration::from_secs(60));
        assert_eq!(u.tunnel_idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.tls, None);
        assert_eq!(
            u.passive,
            PassiveHealth {
                max_fails: 1,
                fail_timeout: Duration::from_secs(10)
            }
        );
        assert_eq!(u.health_check, None);
        assert_eq!(u.plugin_failure, FailurePolicy::FailOpen);
        assert_eq!(u.servers.len(), 3);
        assert_eq!(u.servers[1].id, "127.0.0.1:5002");
        assert_eq!(u.servers[1].weight, 1);
    }

    #[test]
    fn client_limits_take_nginx_sizes_and_reject_nonsense() {
        let with = |table: &str| parse(&format!("{MINIMAL}\n[client]\n{table}\n"));
        let c = with(
            "header-timeout = \"2s\"\nsend-timeout = \"5s\"\nmax-body-size = \"512k\"\nmax-connections = 3",
        )
        .expect("valid");
        assert_eq!(c.client.send_timeout, Duration::from_secs(5));
        assert_eq!(c.client.header_timeout, Duration::from_secs(2));
        assert_eq!(c.client.max_body_size, Some(512 << 10));
        assert_eq!(c.client.max_connections, 3);
        assert_eq!(c.client.body_timeout, Duration::from_secs(30));
        assert_eq!(
            with("max-body-size = 0")
                .expect("valid")
                .client
                .max_body_size,
            None
        );
        assert_eq!(
            with("max-body-size = \"1G\"")
                .expect("valid")
                .client
                .max_body_size,
            Some(1 << 30)
        );
        for (table, key) in [
            ("max-body-size = \"ten\"", "client.max-body-size"),
            ("max-body-size = \"m\"", "client.max-body-size"),
            ("max-body-size = -1", "client.max-body-size"),
            ("max-connections = 0", "client.max-connections"),
            ("keepalive-timeout = \"0s\"", "client.keepalive-timeout"),
            ("send-timeout = \"0s\"", "client.send-timeout"),
        ] {
            let err = with(table).expect_err(table).to_string();
            assert!(err.contains(key), "{table}: {err}");
        }
        assert!(with("max-body = 1").is_err(), "unknown keys are refused");
    }

    #[test]
    fn servers_take_tables_with_weight_and_id() {
        let c = parse(
            r#"
[[upstream]]
name = "app"
servers = ["127.0.0.1:5001", { address = "127.0.0.1:5002", weight = 3, id = "big" }]
hosts = ["Example.com", "*.example.org"]
path-prefix = "/api"
params = { answer = 42 }
health-check = { interval = "500ms" }
"#,
        )
        .expect("valid");
        let u = &c.upstreams[0];
        assert_eq!(u.strategy, "round-robin");
        assert_eq!(u.servers[1].weight, 3);
        assert_eq!(u.servers[1].id, "big");
        assert!(u.hosts[0].matches("example.com"));
        assert!(u.hosts[1].matches("a.example.org"));
        assert!(!u.hosts[1].matches("example.org"));
        assert_eq!(
            u.params.get("answer").and_then(|v| v.as_integer()),
            Some(42)
        );
    }

    fn error_of(text: &str) -> String {
        parse(text).expect_err("must be rejected").to_string()
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = error_of(&MINIMAL.replace("plugins = \"plugins\"", "plugin = \"plugins\""));
        assert!(e.contains("unknown key `plugin`"), "{e}");
        let e = error_of(&format!("{MINIMAL}wieght = 2\n"));
        assert!(e.contains("wieght"), "{e}");
        let e = error_of(&MINIMAL.replace(
            "\"127.0.0.1:5003\"",
            "{ address = \"127.0.0.1:5003\", wieght = 2 }",
        ));
        assert!(e.contains("unknown key `wieght`"), "{e}");
    }

    #[test]
    fn workers_is_taken_as_given() {
        let c = parse(&format!("workers = 3\n{MINIMAL}")).expect("valid");
        assert_eq!(c.workers, 3);
    }

    #[test]
    fn bad_values_name_the_key_and_the_expected_form() {
        let cases = [
            (MINIMAL.replace("127.0.0.1:8080", "localhost"), "`listen`"),
            (format!("workers = 0\n{MINIMAL}"), "`workers`"),
            (
                format!("{MINIMAL}response-timeout = \"400days\"\n"),
                "`upstream[0].response-timeout`",
            ),
            (
                format!("{MINIMAL}read-timeout = \"400days\"\n"),
                "`upstream[0].read-timeout`",
            ),
            (
                format!("{MINIMAL}read-timeout = \"0s\"\n"),
                "`upstream[0].read-timeout`",
            ),
            (
                MINIMAL.replace(
                    "[[upstream]]",
                    "[client]\nheader-timeout = \"1000years\"\n\n[[upstream]]",
                ),
                "`client.header-timeout`",
            ),
            (format!("workers = -2\n{MINIMAL}"), "`workers`"),
            (format!("workers = 100000\n{MINIMAL}"), "`workers`"),
            (
                MINIMAL.replace("127.0.0.1:5002", "127.0.0.1"),
                "`upstream[0].servers[1]`",
            ),
            (
                MINIMAL.replace("127.0.0.1:5002", "127.0.0.1:99999"),
                "`upstream[0].servers[1]`",
            ),
            (
                MINIMAL.replace("round-robin", "../evil"),
                "`upstream[0].strategy`",
            ),
            (
                MINIMAL.replace(
                    "\"127.0.0.1:5003\"",
                    "{ address = \"127.0.0.1:5003\", weight = 0 }",
                ),
                "`upstream[0].servers[2].weight`",
            ),
            (
                format!("{MINIMAL}path-prefix = \"api\"\n"),
                "`upstream[0].path-prefix`",
            ),
            (
                MINIMAL.replace("\"127.0.0.1:5003\"", "\"127.0.0.1:5001\""),
                "appears twice",
            ),
            (
                format!("trusted-proxies = [\"10.0.0.0/33\"]\n{MINIMAL}"),
                "`trusted-proxies[0]`",
            ),
            (
                format!(
                    "{MINIMAL}\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:1\"]\nhosts = [\"a\"]\n"
                ),
                "already the name",
            ),
            (
                format!("{MINIMAL}\n[[upstream]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n"),
                "would never be used",
            ),
            ("listen = \"127.0.0.1:1\"\n".to_string(), "`upstream`"),
            (
                format!("{MINIMAL}health-check = {{ path = \"health\" }}\n"),
                "`upstream[0].health-check.path`",
            ),
            (
                format!("{MINIMAL}health-check = {{ rise = 0 }}\n"),
                "`upstream[0].health-check.rise`",
            ),
            (
                format!("{MINIMAL}fail-timeout = \"0s\"\n"),
                "`upstream[0].fail-timeout`",
            ),
            (
                format!("{MINIMAL}tunnel-idle-timeout = \"0s\"\n"),
                "`upstream[0].tunnel-idle-timeout`",
            ),
            (
                format!("{MINIMAL}\n[tls]\nlisten = \"8443\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n"),
                "`tls.listen`",
            ),
            (
                format!(
                    "{MINIMAL}\n[tls]\nlisten = \"127.0.0.1:8080\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n"
                ),
                "`tls.listen`",
            ),
        ];
        for (text, needle) in cases {
            let e = error_of(&text);
            assert!(e.contains(needle), "expected {needle} in: {e}");
        }
    }

    #[test]
    fn tls_takes_a_listen_address_and_two_files() {
        // `[tls]` is a table: it goes after the top-level keys.
        let c = parse(&format!(
            "{MINIMAL}tunnel-idle-timeout = \"90s\"\n\n[tls]\ncert = \"certs/fullchain.pem\"\nkey = \"certs/key.pem\"\n"
        ))
        .expect("valid");
        let tls = c.tls.expect("tls on");
        assert_eq!(tls.listen, "127.0.0.1:8443".parse().expect("addr"));
        assert_eq!(tls.cert, Path::new("certs/fullchain.pem"));
        assert_eq!(tls.key, Path::new("certs/key.pem"));
        assert_eq!(c.upstreams[0].tunnel_idle_timeout, Duration::from_secs(90));
        let e = error_of(&format!("{MINIMAL}\n[tls]\ncert = \"c.pem\"\n"));
        assert!(e.contains("`tls`: missing key `key`"), "{e}");
    }

    #[test]
    fn type_errors_come_with_line_and_key() {
        let e = error_of(&MINIMAL.replace("\"127.0.0.1:5001\", ", "5001, "));
        assert!(
            e.starts_with("test.toml:8:12: `upstream[0].servers[0]`: "),
            "{e}"
        );
        let e = error_of(&format!("{MINIMAL}connect-timeout = \"soon\"\n"));
        assert!(
            e.starts_with("test.toml:9:19: `upstream[0].connect-timeout`: expected a duration"),
            "{e}"
        );
    }
}
