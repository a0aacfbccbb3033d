//! Upstreams and their backends: the live figures strategies read (in-flight,
//! health), the global pick sequence, each backend's keep-alive connections
//! and what a request holds while it uses a backend ([`Lease`]).
//!
//! A [`BackendSet`] is immutable; when the set changes a new one is built and
//! swapped in, and [`Backend`]s that survive the change are carried over
//! (same `Arc`), so their counters and health continue.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Authority;

use crate::config::{NATIVE_STRATEGY, ServerConfig, UpstreamConfig};
use crate::discovery::Discovered;
use crate::health::{Health, UpstreamHealth};
use crate::plugin::{Shadow, Strategy};
use crate::pool::{ConnPool, PoolSettings, Sender};
use crate::retry::RetryBudget;
use crate::stats::{Histogram, LATENCY_BOUNDS_US, StatusClasses, Window};
use crate::{access, proxy, workers};

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
        }
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

/// Time from sending a request to a backend to its response head: the
/// histogram the admin API reads (what this derefs to) and the peak EWMA
/// latency-aware strategies read through the `backends.latency` import.
/// [`ResponseLatency::record`] feeds both, with a few relaxed atomics.
#[derive(Debug)]
pub struct ResponseLatency {
    histogram: Histogram<{ LATENCY_BOUNDS_US.len() }>,
    peak: PeakEwma,
}

impl Default for ResponseLatency {
    fn default() -> Self {
        Self {
            histogram: Histogram::new(&LATENCY_BOUNDS_US),
            peak: PeakEwma::default(),
        }
    }
}

impl ResponseLatency {
    /// Records one response head that came at `now`, `us` microseconds
    /// after the request was sent.
    pub fn record(&self, us: u64, now: Instant) {
        self.histogram.record(us);
        self.peak.observe(us.saturating_mul(1_000), ns_at(now));
    }

    /// The peak EWMA now, in nanoseconds; 0 before the first response.
    pub fn peak_ewma_ns(&self) -> u64 {
        self.peak.at(now_ns())
    }
}

impl Deref for ResponseLatency {
    type Target = Histogram<{ LATENCY_BOUNDS_US.len() }>;

    fn deref(&self) -> &Self::Target {
        &self.histogram
    }
}

/// Time constant of [`PeakEwma`], in nanoseconds (10 s, linkerd's default).
const PEAK_EWMA_DECAY_NS: f64 = 10e9;

/// Nanoseconds on a process-wide monotonic clock (vDSO, no system call).
fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// `at` on the clock of [`now_ns`].
fn ns_at(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
}

/// Peak-sensitive EWMA of response latency, after Finagle's `PeakEwma` and
/// linkerd2-proxy / tower's `peak_ewma`: a sample above the estimate
/// replaces it at once; a lower one is blended in with weight
/// `1 - e^(-dt/τ)` (`dt` since the previous sample); read `dt` after the
/// last sample, the estimate has decayed by `e^(-dt/τ)` toward 0, so a
/// backend that was slow once and then avoided is tried again.
///
/// Two relaxed atomics, no lock: concurrent samples may overwrite each
/// other, and a read may pair one sample's value with another's time.
/// Both only blur an estimate that is approximate anyway.
#[derive(Debug, Default)]
struct PeakEwma {
    /// The estimate at `stamp`, in ns; 0 = no sample yet.
    ns: AtomicU64,
    /// [`now_ns`] of the last sample.
    stamp: AtomicU64,
}

impl PeakEwma {
    fn observe(&self, sample_ns: u64, now: u64) {
        let old = self.ns.load(Ordering::Relaxed);
        let then = self.stamp.swap(now, Ordering::Relaxed);
        let next = if old == 0 || sample_ns >= old {
            sample_ns
        } else {
            let w = decay(now.saturating_sub(then));
            (old as f64 * w + sample_ns as f64 * (1.0 - w)) as u64
        };
        // 0 stays reserved for "never answered".
        self.ns.store(next.max(1), Ordering::Relaxed);
    }

    fn at(&self, now: u64) -> u64 {
        match self.ns.load(Ordering::Relaxed) {
            0 => 0,
            ns => {
                let since = now.saturating_sub(self.stamp.load(Ordering::Relaxed));
                ((ns as f64 * decay(since)) as u64).max(1)
            }
        }
    }
}

/// `e^(-dt/τ)` for [`PeakEwma`].
fn decay(dt_ns: u64) -> f64 {
    if dt_ns == 0 {
        1.0
    } else {
        (-(dt_ns as f64) / PEAK_EWMA_DECAY_NS).exp()
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

/// What a proxied response holds until its body has been sent: the
/// backend's in-flight count and the connection it came on, and the
/// upstream's `read-timeout` while the body is read.
#[derive(Debug)]
pub struct Lease {
    in_flight: InFlight,
    conn: Option<Sender>,
    /// Its pool settings, `read-timeout` and passive health.
    upstream: Arc<Upstream>,
    /// Written when the lease ends.
    log: Option<Box<access::Entry>>,
    /// The body's read timer: taken from the worker's spares at the first
    /// read that has to wait, moved at each later one (see
    /// [`Lease::poll_silence`]).
    silence: Option<workers::Timer>,
    /// Whether `silence` runs for the wait now on.
    waiting: bool,
}

impl Lease {
    /// Holds `in_flight` and `conn` (None: not reusable, e.g. upgraded)
    /// and the access log line until released.
    pub fn new(
        in_flight: InFlight,
        conn: Option<Sender>,
        upstream: Arc<Upstream>,
        log: Option<Box<access::Entry>>,
    ) -> Self {
        Self {
            in_flight,
            conn,
            upstream,
            log,
            silence: None,
            waiting: false,
        }
    }

    /// Ends the exchange cleanly and returns `conn` (which the response
    /// body held) to the pool.
    pub fn give_back(mut self, conn: Sender) {
        self.conn = Some(conn);
        self.release(true);
    }

    /// Ends the exchange; a `clean` one returns its connection to the pool.
    /// Dropping a lease is an unclean end: the connection is closed.
    pub fn release(mut self, clean: bool) {
        if clean {
            if let Some(sender) = self.conn.take() {
                self.in_flight.0.pool.checkin(sender, &self.upstream.pool);
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
        let after = self.upstream.config.read_timeout;
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

    /// The upstream's `read-timeout` ran out in the response body: counts a
    /// failure of the backend (passive health), logs it, and ends the lease
    /// uncleanly (its connection, if it holds one, is closed; the access
    /// log line says the response was cut). Returns the timeout.
    pub fn timed_out(self) -> Duration {
        let (upstream, backend) = (&self.upstream, &self.in_flight.0);
        let after = upstream.config.read_timeout;
        proxy::backend_failed(upstream, backend);
        tracing::warn!(
            upstream = upstream.name(), backend = %backend.address,
            "backend sent nothing for {after:?} in the response body (read-timeout): response cut, connection closed"
        );
        after
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
    /// carry over leave the upstream's down-count.
    pub fn retire(&self, next: &BackendSet) {
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

/// One upstream: its backends, its strategy and its connection pool.
pub struct Upstream {
    /// The validated config this upstream was built from.
    pub config: UpstreamConfig,
    /// The current backend set.
    pub backends: ArcSwap<BackendSet>,
    /// The current strategy; swapped on plugin reload.
    pub strategy: ArcSwap<Strategy>,
    /// How backend connections are opened and kept.
    pub pool: PoolSettings,
    /// Retries in flight, against `config.retry`'s budget.
    pub retry_budget: RetryBudget,
    /// Tries after the first, since start.
    pub retries: AtomicU64,
    /// Answers the proxy made itself (no backend answered), by class.
    pub local_responses: StatusClasses,
    /// What the upstream's host names resolved to.
    pub discovered: Mutex<Discovered>,
    /// `strategy = "host:round-robin"`: picks never call the plugin.
    pub native: bool,
    /// `shadow = "..."`: asked on every pick, never routes.
    pub shadow: Option<Shadow>,
    sequence: AtomicU64,
}

impl Upstream {
    /// Builds an upstream; `previous` (same name) donates its pick
    /// sequence (its backends are carried over by [`BackendSet::build`]).
    pub fn new(
        config: UpstreamConfig,
        set: Arc<BackendSet>,
        strategy: Arc<Strategy>,
        discovered: Discovered,
        previous: Option<&Upstream>,
    ) -> Self {
        Self {
            pool: PoolSettings {
                connect_timeout: config.connect_timeout,
                idle_timeout: config.idle_timeout,
                max_idle: config.keepalive,
            },
            retry_budget: RetryBudget::default(),
            retries: AtomicU64::new(0),
            local_responses: StatusClasses::default(),
            discovered: Mutex::new(discovered),
            native: config.strategy == NATIVE_STRATEGY,
            config,
            backends: ArcSwap::new(set),
            strategy: ArcSwap::new(strategy),
            shadow: None,
            sequence: AtomicU64::new(previous.map_or(0, |p| p.sequence.load(Ordering::Relaxed))),
        }
    }

    /// The upstream with `shadow` as its shadow strategy.
    pub fn with_shadow(mut self, shadow: Option<Shadow>) -> Self {
        self.shadow = shadow;
        self
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The next global pick number.
    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::PassiveHealth;

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
    fn peak_ewma_jumps_up_and_decays_down() {
        const SEC: u64 = 1_000_000_000;
        let e = PeakEwma::default();
        assert_eq!(e.at(0), 0, "no sample yet");
        e.observe(1_000_000, SEC);
        assert_eq!(e.at(SEC), 1_000_000);
        // A slower response raises it at once.
        e.observe(50_000_000, SEC + 1);
        assert_eq!(e.at(SEC + 1), 50_000_000);
        // Fast responses 1 ms apart pull it down slowly (τ = 10 s) ...
        for k in 2..=1001 {
            e.observe(1_000_000, SEC + k * 1_000_000);
        }
        let after_1s = e.at(2 * SEC);
        assert!((40_000_000..49_000_000).contains(&after_1s), "{after_1s}");
        // ... and with no responses it decays toward 0, never reaching it.
        let idle = e.at(2 * SEC + 30 * SEC);
        assert!(idle < after_1s / 10 && idle > 0, "{idle}");
    }

    #[test]
    fn the_down_count_follows_committed_sets_only() {
        let policy = PassiveHealth {
            max_fails: 1,
            fail_timeout: Duration::from_secs(60),
        };
        let a = BackendSet::build(&servers(&[1, 2]), None);
        assert!(a.backends[0].health.record_failure(&policy));
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
}
