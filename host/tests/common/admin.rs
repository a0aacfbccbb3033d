//! A running proxy as its user sees it: the admin API (`/status` and
//! `/metrics`, on the admin listener every [`super::Fixture`] config turns
//! on at `127.0.0.1:0`). Tests read the proxy's state only through these,
//! never through its internals, so that a restructure of the host breaks no
//! test; and they wait for a state with [`wait_status`] or [`wait_for`]
//! (bounded, failing with what was last seen) rather than sleeping.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard::Proxy;

use super::{Reply, client, get};

/// How often the waits below look again.
pub const POLL: Duration = Duration::from_millis(10);

/// The admin listener of `proxy`.
pub fn admin_addr(proxy: &Proxy) -> SocketAddr {
    proxy
        .admin_addr()
        .expect("the admin listener is on (the fixture's config turns it on)")
}

/// GET `path` from the admin listener at `admin`.
pub async fn admin_get_at(admin: SocketAddr, path: &str) -> Reply {
    get(&client(), admin, path).await
}

/// GET `path` from `proxy`'s admin listener.
pub async fn admin_get(proxy: &Proxy, path: &str) -> Reply {
    admin_get_at(admin_addr(proxy), path).await
}

/// `GET /status` from the admin listener at `admin`.
pub async fn status_at(admin: SocketAddr) -> Status {
    let r = admin_get_at(admin, "/status").await;
    assert_eq!(r.status, 200, "/status: {r:?}");
    Status(serde_json::from_str(&r.body).expect("/status is JSON"))
}

/// `GET /status` from `proxy`.
pub async fn status(proxy: &Proxy) -> Status {
    status_at(admin_addr(proxy)).await
}

/// The `/status` document, with typed readers for what tests look at
/// (`u` indexes the upstreams, `i` the backends of one, in config order).
/// Derefs to the JSON for anything else; prints as pretty JSON.
#[derive(Clone)]
pub struct Status(pub Value);

impl Deref for Status {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.0
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string_pretty(&self.0) {
            Ok(text) => f.write_str(&text),
            Err(_) => write!(f, "{}", self.0),
        }
    }
}

/// `v` as a count, or a panic naming `what`.
pub fn count(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a count in /status: {v}"))
}

impl Status {
    /// How many upstreams there are.
    pub fn upstream_count(&self) -> usize {
        self["upstreams"].as_array().map_or(0, Vec::len)
    }

    /// Upstream `u`.
    pub fn upstream(&self, u: usize) -> &Value {
        let v = &self["upstreams"][u];
        assert!(v.is_object(), "no upstream {u} in /status: {self:?}");
        v
    }

    /// Upstream `u`'s live strategy.
    pub fn strategy(&self, u: usize) -> &Value {
        &self.upstream(u)["strategy"]
    }

    /// The content hash of upstream `u`'s live plugin build.
    pub fn strategy_hash(&self, u: usize) -> &str {
        self.strategy(u)["hash"]
            .as_str()
            .unwrap_or_else(|| panic!("no strategy hash for upstream {u}: {self:?}"))
    }

    /// Counter `name` of upstream `u`'s live strategy (`picks`,
    /// `instances`, `handovers`, `handover_failures`).
    pub fn strategy_count(&self, u: usize, name: &str) -> u64 {
        count(&self.strategy(u)[name], name)
    }

    /// Failures of upstream `u`'s live strategy by kind (`trap`,
    /// `timeout`, `bad_answer`, `instantiate`, `skipped`).
    pub fn strategy_failures(&self, u: usize, kind: &str) -> u64 {
        count(&self.strategy(u)["failures"][kind], kind)
    }

    /// Failed picks of upstream `u`'s live strategy (each was served by
    /// the fallback or answered 503): traps, time-outs, bad answers and
    /// failed instantiations; not the picks skipped while it was paused.
    pub fn strategy_failed_picks(&self, u: usize) -> u64 {
        ["trap", "timeout", "bad_answer", "instantiate"]
            .iter()
            .map(|kind| self.strategy_failures(u, kind))
            .sum()
    }

    /// Tries after the first made by upstream `u`.
    pub fn retries(&self, u: usize) -> u64 {
        count(&self.upstream(u)["retries"], "retries")
    }

    /// Backends upstream `u` counts as down (what strategies see).
    pub fn backends_down(&self, u: usize) -> u64 {
        count(&self.upstream(u)["backends_down"], "backends_down")
    }

    /// The backends of upstream `u`.
    pub fn backends(&self, u: usize) -> &[Value] {
        self.upstream(u)["backends"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("no backends for upstream {u}: {self:?}"))
    }

    /// Backend `i` of upstream `u`.
    pub fn backend(&self, u: usize, i: usize) -> &Value {
        self.backends(u)
            .get(i)
            .unwrap_or_else(|| panic!("no backend {i} in upstream {u}: {self:?}"))
    }

    /// Field `name` of every backend of upstream `u`, as counts.
    pub fn backend_counts(&self, u: usize, name: &str) -> Vec<u64> {
        self.backends(u)
            .iter()
            .map(|b| count(&b[name], name))
            .collect()
    }

    /// Requests in flight to each backend of upstream `u`.
    pub fn in_flight(&self, u: usize) -> Vec<u64> {
        self.backend_counts(u, "in_flight")
    }

    /// Requests (tries) sent to each backend of upstream `u`.
    pub fn requests(&self, u: usize) -> Vec<u64> {
        self.backend_counts(u, "requests")
    }

    /// Failed tries of each backend of upstream `u`.
    pub fn failures(&self, u: usize) -> Vec<u64> {
        self.backend_counts(u, "failures")
    }

    /// Whether each backend of upstream `u` may take traffic.
    pub fn healthy(&self, u: usize) -> Vec<bool> {
        self.backends(u)
            .iter()
            .map(|b| b["healthy"].as_bool().expect("healthy is a boolean"))
            .collect()
    }

    /// The address of each backend of upstream `u`.
    pub fn addresses(&self, u: usize) -> Vec<String> {
        self.backend_strings(u, "address")
    }

    /// The id of each backend of upstream `u`.
    pub fn ids(&self, u: usize) -> Vec<String> {
        self.backend_strings(u, "id")
    }

    fn backend_strings(&self, u: usize, name: &str) -> Vec<String> {
        self.backends(u)
            .iter()
            .map(|b| b[name].as_str().expect("a string").to_owned())
            .collect()
    }

    /// The last reloads, oldest first.
    pub fn reloads(&self) -> &[Value] {
        self["reloads"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("no reloads in /status: {self:?}"))
    }

    /// Tunnels (upgraded connections) open now.
    pub fn tunnels(&self) -> u64 {
        count(&self["tunnels"], "tunnels")
    }
}

/// Polls `/status` every [`POLL`] until `done` holds, and returns that
/// status; fails the test with `what` and the last status after `limit`.
pub async fn wait_status(
    proxy: &Proxy,
    limit: Duration,
    what: &str,
    done: impl Fn(&Status) -> bool,
) -> Status {
    wait_status_at(admin_addr(proxy), limit, what, done).await
}

/// [`wait_status`] for the admin listener at `admin`.
pub async fn wait_status_at(
    admin: SocketAddr,
    limit: Duration,
    what: &str,
    done: impl Fn(&Status) -> bool,
) -> Status {
    let start = Instant::now();
    loop {
        let s = status_at(admin).await;
        if done(&s) {
            return s;
        }
        if start.elapsed() > limit {
            panic!("not within {limit:?}: {what}; /status: {s:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The content hash `/status` shows for the plugin build `bytes`.
pub fn build_hash(bytes: &[u8]) -> String {
    format!("{:016x}", switchyard::plugin::content_hash(bytes))
}

/// Waits until upstream `u` runs the plugin build whose bytes are `bytes`;
/// returns how long that took. Fails the test after `limit`.
pub async fn wait_for_build(proxy: &Proxy, u: usize, bytes: &[u8], limit: Duration) -> Duration {
    let hash = build_hash(bytes);
    let start = Instant::now();
    wait_status(
        proxy,
        limit,
        &format!("upstream {u} runs build {hash}"),
        |s| s.strategy_hash(u) == hash,
    )
    .await;
    start.elapsed()
}

/// Polls `check` every [`POLL`] until it answers `Ok`, and returns what it
/// answered; fails the test with `what` and its last `Err` after `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(done) => return done,
            Err(last) if start.elapsed() > limit => {
                panic!("not within {limit:?}: {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// `GET /metrics` from `proxy`.
pub async fn metrics(proxy: &Proxy) -> String {
    let r = admin_get(proxy, "/metrics").await;
    assert_eq!(r.status, 200, "/metrics: {r:?}");
    r.body
}

/// The value of the sample written exactly `series` (name and labels as
/// exposed, e.g. `switchyard_retries_total{upstream="app"}`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// Every sample of metric `name` (e.g. `switchyard_reloads_total`): its
/// labels and value.
pub fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((labels, value.split(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// Client connections open now on each worker thread, from `/metrics`.
pub async fn client_connections(proxy: &Proxy) -> Vec<usize> {
    let text = metrics(proxy).await;
    let mut by_worker: Vec<(usize, usize)> = samples(&text, "switchyard_client_connections")
        .into_iter()
        .map(|(labels, n)| {
            let worker = labels
                .get("worker")
                .and_then(|w| w.parse().ok())
                .expect("a worker label");
            (worker, n as usize)
        })
        .collect();
    by_worker.sort_unstable();
    assert!(
        by_worker.iter().enumerate().all(|(i, (w, _))| i == *w),
        "one sample per worker: {by_worker:?}"
    );
    by_worker.into_iter().map(|(_, n)| n).collect()
}

/// Polls [`client_connections`] until `done` holds, and returns them;
/// fails the test with `what` and the last counts after `limit`.
pub async fn wait_connections(
    proxy: &Proxy,
    limit: Duration,
    what: &str,
    done: impl Fn(&[usize]) -> bool,
) -> Vec<usize> {
    let done = &done;
    wait_for(limit, what, || async move {
        let open = client_connections(proxy).await;
        if done(&open) {
            Ok(open)
        } else {
            Err(format!("open per worker {open:?}"))
        }
    })
    .await
}

/// Reloads since start by `(kind, result)`, from `/metrics`.
pub async fn reload_counts(proxy: &Proxy) -> BTreeMap<(String, String), u64> {
    let text = metrics(proxy).await;
    samples(&text, "switchyard_reloads_total")
        .into_iter()
        .map(|(labels, n)| {
            let label = |k: &str| labels.get(k).cloned().expect("kind and result labels");
            ((label("kind"), label("result")), n as u64)
        })
        .collect()
}

/// Waits until `proxy` has recorded one more reload of `kind` with
/// `result` than `before` (from [`reload_counts`]) says; fails the test
/// after `limit`.
pub async fn wait_reload(
    proxy: &Proxy,
    before: &BTreeMap<(String, String), u64>,
    kind: &str,
    result: &str,
    limit: Duration,
) {
    let key = (kind.to_owned(), result.to_owned());
    let was = before.get(&key).copied().unwrap_or(0);
    let key = &key;
    wait_for(
        limit,
        &format!("a {kind} reload with result {result}"),
        || async move {
            let now = reload_counts(proxy).await;
            if now.get(key).copied().unwrap_or(0) > was {
                Ok(())
            } else {
                Err(format!("reloads {now:?}"))
            }
        },
    )
    .await;
}
