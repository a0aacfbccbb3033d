//! Backend health, shared by every thread and visible to strategies through
//! the `backends.healthy` / `backends.usable` imports.
//!
//! - Passive, like nginx `max_fails` / `fail_timeout`: when real requests to
//!   a backend fail `max-fails` times, each within `fail-timeout` of the one
//!   before (connect errors, timeouts, broken connections), the backend is
//!   taken out for `fail-timeout`, then tried again. As in nginx, not when
//!   it is the upstream's only backend.
//! - Active: a periodic `GET <path>` to every backend of upstreams that have
//!   a `[upstream.health-check]` table; `fall` consecutive failures take a
//!   backend out, `rise` consecutive successes bring it back.
//!
//! A backend is healthy when neither says otherwise. Each upstream keeps a
//! count of backends marked down and a version bumped on every transition,
//! so a pick tells strategies in O(1) whether anything needs avoiding
//! (`request.avoid`) and whether their cached view of health is stale
//! (`request.health-version`). Passive time-outs run out on their own; the
//! health loop (`crate::gateway::background`) settles them every 100 ms, so
//! the version moves then, and runs the active checks with [`probe`].
//!
//! For people, each backend also keeps why it is down and since when
//! ([`Health::why_down`], [`Health::since_ms`]): the failed probe's path and
//! answer or error for active checks, the failure count and the last error
//! for passive health. These are written only when a backend changes state
//! (a probe fails, a failure takes it out), never on a request that goes
//! well.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::uri::Authority;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::base::clock::{self, now_ms, unix_ms};
use crate::base::config::{ActiveCheck, PassiveHealth};

/// Health figures of one upstream, shared by its backends and kept across
/// reloads.
#[derive(Debug, Default)]
pub struct UpstreamHealth {
    down: AtomicU32,
    version: AtomicU64,
}

impl UpstreamHealth {
    /// Backends marked down. May briefly count one whose passive time-out
    /// has just run out; never fewer than are down.
    pub fn down(&self) -> u32 {
        self.down.load(Ordering::Relaxed)
    }

    /// Bumped on every transition of any backend.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    fn went_down(&self) {
        self.down.fetch_add(1, Ordering::Relaxed);
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    fn came_back(&self) {
        self.down.fetch_sub(1, Ordering::Relaxed);
        self.version.fetch_add(1, Ordering::Relaxed);
    }
}

/// The health of one backend.
#[derive(Debug)]
pub struct Health {
    upstream: Arc<UpstreamHealth>,
    /// Whether this backend is included in `down`.
    counted: AtomicBool,
    active_up: AtomicBool,
    active_streak: AtomicU32,
    fails: AtomicU32,
    last_fail_ms: AtomicU64,
    down_until_ms: AtomicU64,
    /// Wall-clock ms of the last change between up and down (or of the
    /// backend's creation).
    since_ms: AtomicU64,
    /// The last failed probe (active checks), e.g. `GET /health answered
    /// 503`.
    active_why: Mutex<Option<String>>,
    /// What took the backend out passively, e.g. `3 failures in a row
    /// (max-fails 3); last: connect failed: Connection refused`.
    passive_why: Mutex<Option<String>>,
}

/// Why a backend is down: one entry per kind of check that holds it out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DownReason {
    /// `active` (health checks) or `passive` (failures of real requests).
    pub check: &'static str,
    /// What failed, in words.
    pub reason: String,
}

fn wall_ms() -> u64 {
    unix_ms(SystemTime::now())
}

fn read(slot: &Mutex<Option<String>>) -> Option<String> {
    slot.lock().ok().and_then(|s| s.clone())
}

fn write(slot: &Mutex<Option<String>>, why: String) {
    if let Ok(mut s) = slot.lock() {
        *s = Some(why);
    }
}

impl Health {
    /// A healthy backend of `upstream`.
    pub fn new(upstream: Arc<UpstreamHealth>) -> Self {
        Self {
            upstream,
            counted: AtomicBool::new(false),
            active_up: AtomicBool::new(true),
            active_streak: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            last_fail_ms: AtomicU64::new(0),
            down_until_ms: AtomicU64::new(0),
            since_ms: AtomicU64::new(wall_ms()),
            active_why: Mutex::new(None),
            passive_why: Mutex::new(None),
        }
    }

    /// Wall-clock ms (Unix) since which the backend has been in its
    /// current state: down since it went down, up since it came back (or
    /// joined).
    pub fn since_ms(&self) -> u64 {
        self.since_ms.load(Ordering::Relaxed)
    }

    /// Why the backend is down now: what holds it out, each check that
    /// does (empty when up).
    pub fn why_down(&self) -> Vec<DownReason> {
        let mut out = Vec::new();
        if !self.active_up() {
            out.push(DownReason {
                check: "active",
                reason: read(&self.active_why).unwrap_or_else(|| "health check failed".to_owned()),
            });
        }
        if !self.passive_up() {
            out.push(DownReason {
                check: "passive",
                reason: read(&self.passive_why)
                    .unwrap_or_else(|| "too many failed requests".to_owned()),
            });
        }
        out
    }

    /// The last active check that failed, in words (kept for
    /// [`Health::why_down`]); called by the health loop only.
    pub fn probe_failed(&self, why: String) {
        write(&self.active_why, why);
    }

    /// Whether the backend may receive traffic now.
    pub fn healthy(&self) -> bool {
        let up = self.looks_up();
        if up && self.counted.load(Ordering::Relaxed) {
            // A passive time-out ran out, or active checks passed: it is back.
            self.forget();
        }
        up
    }

    /// Whether the backend may take traffic, as [`Health::healthy`] says,
    /// without settling the upstream's down-count: for readers that only
    /// look (the admin API), so that looking does not change what
    /// strategies see (the health task settles it).
    pub fn looks_up(&self) -> bool {
        self.active_up() && self.passive_up()
    }

    /// Whether active checks pass (true when the upstream has none).
    pub fn active_up(&self) -> bool {
        self.active_up.load(Ordering::Relaxed)
    }

    /// Whether passive health lets the backend in (not within a
    /// `fail-timeout` after `max-fails` failures).
    pub fn passive_up(&self) -> bool {
        // 0: not taken out, and no clock read (this runs for every pick).
        let until = self.down_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now_ms() < until {
            return false;
        }
        // The window ran out; a failure that set a new one meanwhile wins.
        let _ = self
            .down_until_ms
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        true
    }

    fn mark_down(&self) {
        if !self.counted.swap(true, Ordering::Relaxed) {
            self.since_ms.store(wall_ms(), Ordering::Relaxed);
            self.upstream.went_down();
        }
    }

    /// Leaves the upstream's down-count (the backend is back, or was removed
    /// from the set).
    pub fn forget(&self) {
        if self.counted.swap(false, Ordering::Relaxed) {
            self.since_ms.store(wall_ms(), Ordering::Relaxed);
            self.upstream.came_back();
        }
    }

    /// A request to the backend failed (connect error, timeout, broken
    /// connection) for the reason `why` (read only when this failure takes
    /// the backend out). Returns true when this failure took it out.
    ///
    /// As in nginx, failures count while each comes within `fail-timeout`
    /// of the one before; successes in between do not wipe the count (a
    /// backend that drops every third connection is still taken out).
    pub fn record_failure(&self, policy: &PassiveHealth, why: &dyn std::fmt::Display) -> bool {
        if policy.max_fails == 0 {
            return false;
        }
        let now = now_ms();
        let window = clock::millis(policy.fail_timeout);
        let last = self.last_fail_ms.swap(now, Ordering::Relaxed);
        let fails = if last == 0 || now.saturating_sub(last) > window {
            self.fails.store(1, Ordering::Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails >= policy.max_fails {
            self.down_until_ms
                .store(now.saturating_add(window), Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
            self.last_fail_ms.store(0, Ordering::Relaxed);
            let count = if fails == 1 {
                "a request failed".to_owned()
            } else {
                format!(
                    "{fails} requests failed, each within {:?} of the one before",
                    policy.fail_timeout
                )
            };
            write(
                &self.passive_why,
                format!(
                    "{count} (max-fails {}), out for {:?}; last: {why}",
                    policy.max_fails, policy.fail_timeout
                ),
            );
            self.mark_down();
            return true;
        }
        false
    }

    /// Forgets passive failures and a passive time-out (the backend became
    /// the only one of its upstream, where passive health does not apply).
    pub fn clear_passive(&self) {
        self.fails.store(0, Ordering::Relaxed);
        self.last_fail_ms.store(0, Ordering::Relaxed);
        self.down_until_ms.store(0, Ordering::Relaxed);
        // Settles the down-count unless active checks keep it out.
        let _ = self.healthy();
    }

    /// Applies one active check result. Returns the new state when it
    /// changed.
    pub fn record_probe(&self, ok: bool, check: &ActiveCheck) -> Option<bool> {
        let up = self.active_up.load(Ordering::Relaxed);
        if ok == up {
            self.active_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.active_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if up { check.fall } else { check.rise };
        if streak < needed {
            return None;
        }
        self.active_streak.store(0, Ordering::Relaxed);
        self.active_up.store(ok, Ordering::Relaxed);
        if ok {
            // `healthy()` settles the down-count once passive health agrees.
            let _ = self.healthy();
        } else {
            self.mark_down();
        }
        Some(ok)
    }
}

/// The HTTP client active checks use (one for the whole proxy).
pub type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// A client for active checks: a few idle connections kept, connect
/// bounded.
pub fn probe_client() -> ProbeClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// Probes the backend at `authority`: a 2xx or 3xx answer within the
/// timeout is a pass; a failure says what happened (`GET /health answered
/// 503 Service Unavailable`, `GET /health: no answer within 2s`,
/// `GET /health: connect failed: ...`).
pub async fn probe(
    client: &ProbeClient,
    authority: &Authority,
    check: &ActiveCheck,
) -> Result<(), String> {
    let path = &check.path;
    let uri = format!("http://{authority}{path}");
    let req = http::Request::get(uri)
        .header(http::header::USER_AGENT, "switchyard-health-check")
        .body(Empty::new())
        .map_err(|e| format!("GET {path}: invalid request: {e}"))?;
    match tokio::time::timeout(check.timeout, client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection() => Ok(()),
        Ok(Ok(resp)) => Err(format!("GET {path} answered {}", resp.status())),
        Ok(Err(e)) => {
            // hyper-util's error says "client error (Connect)"; the cause
            // says what happened.
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                cause = s.to_string();
                source = s.source();
            }
            let what = if e.is_connect() {
                "connect failed"
            } else {
                "request failed"
            };
            Err(format!("GET {path}: {what}: {cause}"))
        }
        Err(_) => Err(format!("GET {path}: no answer within {:?}", check.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::advance;

    use super::*;

    fn policy(max_fails: u32, fail_timeout_ms: u64) -> PassiveHealth {
        PassiveHealth {
            max_fails,
            fail_timeout: Duration::from_millis(fail_timeout_ms),
        }
    }

    fn check(fall: u32, rise: u32) -> ActiveCheck {
        ActiveCheck {
            path: "/".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            fall,
            rise,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn max_fails_within_the_window_take_a_backend_out_for_fail_timeout() {
        let upstream = Arc::new(UpstreamHealth::default());
        let health = Health::new(Arc::clone(&upstream));
        let policy = policy(3, 10_000);
        assert!(!health.record_failure(&policy, &"test"));
        advance(Duration::from_secs(9)).await;
        assert!(!health.record_failure(&policy, &"test"));
        advance(Duration::from_secs(9)).await;
        // The third within 10 s of the one before: out.
        assert!(health.record_failure(&policy, &"test"));
        assert!(!health.healthy());
        assert_eq!(upstream.down(), 1);
        // Out for exactly `fail-timeout`.
        advance(Duration::from_millis(9_999)).await;
        assert!(!health.healthy());
        advance(Duration::from_millis(1)).await;
        assert!(health.healthy());
        assert_eq!(upstream.down(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_after_the_window_starts_the_count_again() {
        let health = Health::new(Arc::default());
        let policy = policy(2, 1_000);
        assert!(!health.record_failure(&policy, &"test"));
        advance(Duration::from_millis(1_001)).await;
        // More than `fail-timeout` after the first: counted as the first.
        assert!(!health.record_failure(&policy, &"test"));
        advance(Duration::from_millis(500)).await;
        assert!(health.record_failure(&policy, &"test"));
        assert!(!health.passive_up());
    }

    #[tokio::test(start_paused = true)]
    async fn max_fails_zero_never_takes_a_backend_out() {
        let health = Health::new(Arc::default());
        for _ in 0..100 {
            assert!(!health.record_failure(&policy(0, 1_000), &"test"));
        }
        assert!(health.healthy());
    }

    #[test]
    fn active_checks_take_fall_failures_to_go_down_and_rise_passes_to_come_back() {
        let upstream = Arc::new(UpstreamHealth::default());
        let health = Health::new(Arc::clone(&upstream));
        let check = check(2, 3);
        assert_eq!(health.record_probe(false, &check), None);
        // A pass in between resets the streak.
        assert_eq!(health.record_probe(true, &check), None);
        assert_eq!(health.record_probe(false, &check), None);
        assert_eq!(health.record_probe(false, &check), Some(false));
        assert!(!health.healthy());
        assert_eq!(upstream.down(), 1);
        let version = upstream.version();
        assert_eq!(health.record_probe(true, &check), None);
        assert_eq!(health.record_probe(true, &check), None);
        assert_eq!(health.record_probe(true, &check), Some(true));
        assert!(health.healthy());
        assert_eq!(upstream.down(), 0);
        assert!(upstream.version() > version);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_down_both_ways_comes_back_only_when_both_agree() {
        let upstream = Arc::new(UpstreamHealth::default());
        let health = Health::new(Arc::clone(&upstream));
        let check = check(1, 1);
        assert!(health.record_failure(&policy(1, 1_000), &"test"));
        assert_eq!(health.record_probe(false, &check), Some(false));
        // Counted once, though down for two reasons.
        assert_eq!(upstream.down(), 1);
        assert_eq!(health.record_probe(true, &check), Some(true));
        assert!(!health.healthy(), "passive time-out still running");
        advance(Duration::from_secs(1)).await;
        assert!(health.healthy());
        assert_eq!(upstream.down(), 0);
    }
}
