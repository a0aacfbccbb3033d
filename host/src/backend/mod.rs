//! The backends: each server's live, global figures (in flight, requests,
//! failures, health, latency) that strategies read, the connections kept to
//! it, and what a request holds while it uses one ([`Lease`]).
//!
//! - [`h1`]: Switchyard's own HTTP/1.1 client, for bodiless requests;
//! - [`pool`]: keep-alive connections to each backend, per worker thread;
//! - [`health`]: passive and active health of one backend;
//! - [`latency`]: response latency, its histogram and peak EWMA;
//! - [`retry`]: which failed tries may be tried again, and the retry budget;
//! - [`discovery`]: servers given as host names, resolved to addresses.
//!
//! A [`BackendSet`] is immutable; when the set changes a new one is built and
//! swapped in, and [`Backend`]s that survive the change are carried over
//! (same `Arc`), so their counters and health continue.

pub mod discovery;
pub mod h1;
pub mod health;
pub mod latency;
pub mod pool;
pub mod retry;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;

use self::health::{Health, UpstreamHealth};
use self::latency::ResponseLatency;
use self::pool::{ConnPool, PoolSettings, Sender};
use crate::base::access;
use crate::base::config::ServerConfig;
use crate::base::stats::{StatusClasses, Window};
use crate::base::workers;
use crate::limit::Holds;

/// One backend server and its live, global figures.
#[derive(Debug)]
pub struct Backend {
    /// Stable identity (configured `id`, or the address as written).
    pub id: String,
    /// The address as written in the config.
    pub address: String,
    /// Where the proxy connects.
    pub addr: SocketAddr,
    /// `addr` as a URI authority, made once.
    pub authority: Authority,
    /// `id` as a header value (for `backend-header`), made once.
    pub id_header: http::HeaderValue,
    /// Relative weight.
    pub weight: u32,
    /// Passive and active health.
    pub health: Health,
    /// Idle keep-alive connections.
    pub pool: ConnPool,
    /// Responses by status class.
    pub responses: StatusClasses,
    /// Time from sending a request to its response head (µs), and its
    /// peak EWMA.
    pub latency: ResponseLatency,
    /// Recent figures, sampled by the admin task.
    pub window: Window,
    in_flight: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    shadow_picks: AtomicU64,
    /// Request body bytes sent to the backend (shared with the request
    /// bodies on their way there, see [`crate::wire::body::ClientBody`]).
    pub bytes_sent: Arc<AtomicU64>,
    bytes_received: AtomicU64,
    retried: AtomicU64,
    connects: AtomicU64,
}

impl Backend {
    /// A backend with zeroed counters, healthy, reporting its health to
    /// `upstream`.
    pub fn new(server: &ServerConfig, upstream: Arc<UpstreamHealth>) -> Self {
        Self {
            id: server.id.clone(),
            address: server.address.clone(),
            addr: server.addr,
            authority: Authority::try_from(server.addr.to_string().as_str())
                .unwrap_or_else(|_| Authority::from_static("invalid")),
            id_header: http::HeaderValue::from_str(&server.id)
                .unwrap_or_else(|_| http::HeaderValue::from_static("-")),
            weight: server.weight,
            health: Health::new(upstream),
            pool: ConnPool::default(),
            responses: StatusClasses::default(),
            latency: ResponseLatency::default(),
            window: Window::default(),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            shadow_picks: AtomicU64::new(0),
            bytes_sent: Arc::default(),
            bytes_received: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        }
    }

    /// Request body bytes sent to this backend since it joined.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// Response body bytes received from this backend since it joined.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    /// Counts `n` response body bytes received.
    pub fn record_received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Tries of this backend that failed (an error, or a status in
    /// `retry-on-status`) and were tried again.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Counts a failed try of this backend that is tried again.
    pub fn record_retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// New connections opened to this backend since it joined.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Counts a new connection opened.
    pub fn record_connect(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `server` describes this backend exactly (so it can be kept
    /// across a reload).
    pub fn is(&self, server: &ServerConfig) -> bool {
        self.id == server.id
            && self.address == server.address
            && self.addr == server.addr
            && self.weight == server.weight
    }

    /// Requests in flight to this backend now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests to this backend that failed (connect error, timeout, reset).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Whether health checking considers the backend up.
    pub fn healthy(&self) -> bool {
        self.health.healthy()
    }

    /// Marks one request as started; the returned guard ends it when dropped
    /// (when the response body is finished or abandoned).
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Counts a failed request.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Picks the upstream's shadow strategy would have sent here (since
    /// the backend joined, like [`Backend::requests`]).
    pub fn shadow_picks(&self) -> u64 {
        self.shadow_picks.load(Ordering::Relaxed)
    }

    /// Counts a pick of the shadow strategy.
    pub fn record_shadow_pick(&self) {
        self.shadow_picks.fetch_add(1, Ordering::Relaxed);
    }
}

/// A request in flight to a backend; decrements the count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a lease needs from the upstream it was taken for. The upstream
/// lives in a layer above ([`crate::gateway::upstream::Upstream`]) and
/// hands itself over as this.
pub trait Terms: Send + Sync + std::fmt::Debug {
    /// The upstream's name, for the log.
    fn name(&self) -> &str;
    /// How the upstream keeps its backend connections.
    fn pool(&self) -> &PoolSettings;
    /// `read-timeout`: the longest silence of a backend in a response body.
    fn read_timeout(&self) -> Duration;
    /// Counts a failure of `backend` (for the reason `why`) in its totals
    /// and, as the upstream's passive health says, against its health.
    fn backend_failed(&self, backend: &Backend, why: &dyn std::fmt::Display);
}

/// A backend's silence in a response body ran past `read-timeout`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the backend sent nothing for {0:?} in the response body (read-timeout)")]
pub struct ReadTimeout(pub Duration);

/// What a proxied response holds until its body has been sent: the
/// backend's in-flight count and the connection it came on, and the
/// upstream's `read-timeout` while the body is read.
#[derive(Debug)]
pub struct Lease {
    in_flight: InFlight,
    conn: Option<Sender>,
    /// Its pool settings, `read-timeout` and passive health.
    terms: Arc<dyn Terms>,
    /// Written when the lease ends.
    log: Option<Box<access::Entry>>,
    /// The body's read timer: taken from the worker's spares at the first
    /// read that has to wait, moved at each later one (see
    /// [`Lease::poll_silence`]).
    silence: Option<workers::Timer>,
    /// Whether `silence` runs for the wait now on.
    waiting: bool,
    /// The request's `limit-conn` counts, held until the exchange ends.
    holds: Holds,
}

impl Lease {
    /// Holds `in_flight` and `conn` (None: not reusable, e.g. upgraded)
    /// and the access log line until released.
    pub fn new(
        in_flight: InFlight,
        conn: Option<Sender>,
        terms: Arc<dyn Terms>,
        log: Option<Box<access::Entry>>,
    ) -> Self {
        Self {
            in_flight,
            conn,
            terms,
            log,
            silence: None,
            waiting: false,
            holds: Holds::default(),
        }
    }

    /// Keeps the request's `limit-conn` counts until the lease ends.
    pub fn hold(&mut self, holds: Holds) {
        self.holds = holds;
    }

    /// Ends the exchange cleanly and returns `conn` (which the response
    /// body held) to the pool.
    pub fn give_back(mut self, conn: Sender) {
        self.conn = Some(conn);
        self.release(true);
    }

    /// Ends the exchange as the own client's response body ended: a clean
    /// end gives the connection back when it can carry another request.
    pub fn settle(self, end: h1::End) {
        match end {
            h1::End::Clean(Some(conn)) => self.give_back(Sender::H1(conn)),
            h1::End::Clean(None) => self.release(true),
            h1::End::Failed => self.release(false),
        }
    }

    /// Ends the exchange; a `clean` one returns its connection to the pool.
    /// Dropping a lease is an unclean end: the connection is closed.
    pub fn release(mut self, clean: bool) {
        if clean {
            if let Some(sender) = self.conn.take() {
                self.in_flight.0.pool.checkin(sender, self.terms.pool());
            }
            if let Some(log) = &mut self.log {
                log.completed();
            }
        }
    }

    /// Called by a response body whose read of the backend has to wait
    /// (`Poll::Pending`): Ready once the backend has sent nothing for the
    /// upstream's `read-timeout` since the wait began. No timer until a
    /// read waits (a body that came with its head never needs one); then
    /// one per request, moved to the new deadline at each wait. The body
    /// calls [`Lease::heard`] after every read that got something.
    pub fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let after = self.terms.read_timeout();
        if !self.waiting {
            self.waiting = true;
            match &mut self.silence {
                Some(timer) => timer.reset(after),
                None => self.silence = Some(workers::timer(after)),
            }
        }
        match &mut self.silence {
            Some(timer) => std::pin::Pin::new(timer).poll(cx),
            None => Poll::Pending,
        }
    }

    /// The backend sent something: the wait (if any) is over.
    pub fn heard(&mut self) {
        self.waiting = false;
    }

    /// `n` bytes of the response body came from the backend.
    pub fn received(&self, n: usize) {
        self.in_flight.0.record_received(n);
    }

    /// The upstream's `read-timeout` ran out in the response body: counts a
    /// failure of the backend (passive health), logs it, and ends the lease
    /// uncleanly (its connection, if it holds one, is closed; the access
    /// log line says the response was cut).
    pub fn timed_out(self) -> ReadTimeout {
        let (terms, backend) = (&self.terms, &self.in_flight.0);
        let after = terms.read_timeout();
        terms.backend_failed(backend, &ReadTimeout(after));
        tracing::warn!(
            upstream = terms.name(), backend = %backend.address,
            "backend sent nothing for {after:?} in the response body (read-timeout): response cut, connection closed"
        );
        ReadTimeout(after)
    }
}

/// An immutable backend set, as handed to strategies.
#[derive(Debug)]
pub struct BackendSet {
    /// Changes whenever the membership changes; instances resync on change.
    pub version: u64,
    /// The backends; a strategy's `backend-index` indexes this.
    pub backends: Vec<Arc<Backend>>,
    /// The upstream's health figures (shared with its later sets).
    pub health: Arc<UpstreamHealth>,
}

static SET_VERSION: AtomicU64 = AtomicU64::new(1);

impl BackendSet {
    /// A new set, reusing backends of `previous` that are unchanged (with
    /// their counters and health). Building changes nothing shared: see
    /// [`BackendSet::retire`] for what to do once the new set is live.
    pub fn build(servers: &[ServerConfig], previous: Option<&BackendSet>) -> Self {
        let health = previous.map_or_else(Default::default, |p| Arc::clone(&p.health));
        let by_id: HashMap<&str, &Arc<Backend>> = previous
            .map(|p| p.backends.iter().map(|b| (b.id.as_str(), b)).collect())
            .unwrap_or_default();
        let backends = servers
            .iter()
            .map(|s| match by_id.get(s.id.as_str()) {
                Some(b) if b.is(s) => Arc::clone(b),
                _ => Arc::new(Backend::new(s, Arc::clone(&health))),
            })
            .collect();
        Self {
            version: SET_VERSION.fetch_add(1, Ordering::Relaxed),
            backends,
            health,
        }
    }

    /// Called when `next` has replaced this set: backends that did not
    /// carry over leave the upstream's down-count, and a backend left alone
    /// is no longer held out by passive health (see `proxy::backend_failed`).
    pub fn retire(&self, next: &BackendSet) {
        if let [only] = next.backends.as_slice() {
            only.health.clear_passive();
        }
        let kept: HashSet<*const Backend> = next.backends.iter().map(Arc::as_ptr).collect();
        for gone in self
            .backends
            .iter()
            .filter(|b| !kept.contains(&Arc::as_ptr(b)))
        {
            gone.health.forget();
        }
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The backend at `index`, if in range.
    pub fn get(&self, index: u32) -> Option<&Arc<Backend>> {
        self.backends.get(index as usize)
    }

    /// How many backends are marked down (see [`UpstreamHealth::down`]).
    pub fn unhealthy(&self) -> u32 {
        self.health.down()
    }

    /// Whether `index` may be chosen: in range, healthy and not in `exclude`.
    pub fn usable(&self, index: u32, exclude: &[u32]) -> bool {
        self.get(index).is_some_and(|b| b.healthy()) && !exclude.contains(&index)
    }

    /// Requests in flight to all backends now (O(n): for rare decisions
    /// such as the retry budget, not for every request).
    pub fn in_flight(&self) -> u32 {
        self.backends.iter().map(|b| b.in_flight()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::base::config::PassiveHealth;

    fn servers(ports: &[u16]) -> Vec<ServerConfig> {
        ports
            .iter()
            .map(|p| {
                let addr = SocketAddr::from(([127, 0, 0, 1], *p));
                ServerConfig {
                    id: addr.to_string(),
                    address: addr.to_string(),
                    addr,
                    weight: 1,
                }
            })
            .collect()
    }

    #[test]
    fn the_down_count_follows_committed_sets_only() {
        let policy = PassiveHealth {
            max_fails: 1,
            fail_timeout: Duration::from_secs(60),
        };
        let a = BackendSet::build(&servers(&[1, 2]), None);
        assert!(a.backends[0].health.record_failure(&policy, &"test"));
        assert_eq!(a.unhealthy(), 1);
        let version = a.health.version();

        // Backend 1 removed: building alone changes nothing shared (the new
        // config might still be rejected).
        let b = BackendSet::build(&servers(&[2]), Some(&a));
        assert!(
            Arc::ptr_eq(&a.backends[1], &b.backends[0]),
            "kept with its counters"
        );
        assert_eq!(a.unhealthy(), 1);
        // Once b is live, the removed backend leaves the count.
        a.retire(&b);
        assert_eq!(b.unhealthy(), 0);
        assert!(b.health.version() > version);

        // Added back, it is a new, healthy backend.
        let c = BackendSet::build(&servers(&[2, 1]), Some(&b));
        b.retire(&c);
        assert!(c.backends[1].healthy());
        assert_eq!(c.unhealthy(), 0);
    }

    #[test]
    fn a_backend_left_alone_is_no_longer_held_out_by_passive_health() {
        let policy = PassiveHealth {
            max_fails: 1,
            fail_timeout: Duration::from_secs(60),
        };
        let a = BackendSet::build(&servers(&[1, 2]), None);
        assert!(a.backends[0].health.record_failure(&policy, &"test"));
        assert!(!a.backends[0].healthy());
        // DNS now resolves to backend 1 only: it is the lone backend.
        let b = BackendSet::build(&servers(&[1]), Some(&a));
        a.retire(&b);
        assert!(b.backends[0].healthy());
        assert_eq!(b.unhealthy(), 0);
    }
}
