//! The example strategies of `examples/strategies/` through a real proxy:
//! real sockets, real components built by `host/build.rs`, counting which
//! backend answered.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use switchyard::{Options, Proxy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const P2C: &str = env!("SWITCHYARD_WASM_P2C");
const PEAK_EWMA: &str = env!("SWITCHYARD_WASM_PEAK_EWMA");
const CONSISTENT_HASH: &str = env!("SWITCHYARD_WASM_CONSISTENT_HASH");
const CANARY: &str = env!("SWITCHYARD_WASM_CANARY");

/// A backend that answers "Hello from backend N" after `delay`, every time.
struct SlowBackend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for SlowBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn slow_backend(number: usize, delay: Duration) -> SlowBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        format!("Hello from backend {number}\n"),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    SlowBackend { addr, task }
}

/// `{ address = "a", id = "id" }` entries as a TOML array.
fn servers_with_ids(servers: &[(SocketAddr, &str)]) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(addr, id)| format!("{{ address = \"{addr}\", id = \"{id}\" }}"))
        .collect();
    format!("[{}]", list.join(", "))
}

/// `upstream app` with `strategy`, the given servers array and extra lines.
fn upstream_with(strategy: &str, servers: &str, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"app\"\nstrategy = \"{strategy}\"\nservers = {servers}\n{extra}\n"
    )
}

/// `n` sequential GETs of `/` with `headers`; every one must be a 200.
async fn sequential(
    client: &HttpClient,
    proxy: SocketAddr,
    n: usize,
    headers: &[(&str, &str)],
) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(n);
    for _ in 0..n {
        let reply = get_with(client, proxy, "/", headers)
            .await
            .expect("request");
        assert_eq!(reply.status, 200, "{reply:?}");
        replies.push(reply);
    }
    replies
}

/// `clients` concurrent clients, each sending `each` sequential GETs.
async fn concurrent(proxy: SocketAddr, clients: usize, each: usize) -> Vec<Reply> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(async move { sequential(&client(), proxy, each, &[]).await }))
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.extend(t.await.expect("client task"));
    }
    replies
}

/// Which backend answered for each user, by `x-user` header.
async fn backend_by_user(client: &HttpClient, proxy: SocketAddr, users: &[String]) -> Vec<usize> {
    let mut out = Vec::new();
    for user in users {
        let reply = get_with(client, proxy, "/", &[("x-user", user)])
            .await
            .expect("request");
        out.push(reply.backend().expect("a backend answered"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_sends_few_requests_to_a_backend_that_holds_them() {
    let fast = backends(2).await;
    let slow = slow_backend(3, Duration::from_millis(300)).await;
    let fx = Fixture::new(&[("p2c", P2C)]);
    let servers = format!(
        "[\"{}\", \"{}\", \"{}\"]",
        fast[0].addr, fast[1].addr, slow.addr
    );
    fx.write_config(&upstream_with("p2c", &servers, ""));
    let proxy = fx.start().await;

    // 8 clients, 25 requests each. Round robin would send a third (67) to
    // the slow backend; P2C sends it a request only when it holds no more
    // in flight than the other backend drawn.
    let replies = concurrent(proxy.addr(), 8, 25).await;
    let counts = tally(&replies);
    eprintln!("p2c, backend 3 holds each request 300 ms: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 200, "{counts:?}");
    let slow_share = counts.get(&3).copied().unwrap_or(0);
    assert!(
        slow_share <= 30,
        "the slow backend got {slow_share} of 200: {counts:?}"
    );
    for fast in [1, 2] {
        assert!(
            counts.get(&fast).copied().unwrap_or(0) >= 60,
            "fast backend {fast} underused: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_shares_idle_backends_by_weight() {
    let be = backends(2).await;
    let fx = Fixture::new(&[("p2c", P2C)]);
    let servers = format!(
        "[{{ address = \"{}\", weight = 3 }}, \"{}\"]",
        be[0].addr, be[1].addr
    );
    fx.write_config(&upstream_with("p2c", &servers, ""));
    let proxy = fx.start().await;

    // One client: nothing is in flight at a pick, so the first drawn wins,
    // and draws follow the weights: 3:1, 300 of 400 expected.
    let replies = sequential(&client(), proxy.addr(), 400, &[]).await;
    let counts = tally(&replies);
    eprintln!("p2c, weights 3:1: {counts:?}");
    let heavy = counts.get(&1).copied().unwrap_or(0);
    assert!(
        (260..=340).contains(&heavy),
        "weight 3 of 4 should get ~300 of 400: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_skips_a_dead_backend() {
    let be = backends(2).await;
    let dead = closed_port();
    let fx = Fixture::new(&[("p2c", P2C)]);
    let servers = format!("[\"{}\", \"{dead}\", \"{}\"]", be[0].addr, be[1].addr);
    fx.write_config(&upstream_with("p2c", &servers, ""));
    let proxy = fx.start().await;

    // The dead one fails once, is retried elsewhere and marked down; then
    // every pick must find the two live ones among the usable.
    let replies = sequential(&client(), proxy.addr(), 60, &[]).await;
    let counts = tally(&replies);
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.values().all(|&n| n >= 15), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_moves_traffic_away_from_a_slow_backend() {
    // The slow backend is far slower than anything a loaded test machine
    // adds to a fast backend's answer: a peak EWMA takes a fast backend's
    // worst sample at once, so a 50 ms gap was closed by one scheduling
    // stall in CI (the fast backend then lost to the slow one for a while).
    let fast = backends(2).await;
    let slow = slow_backend(3, Duration::from_millis(500)).await;
    let fx = Fixture::new(&[("peak-ewma", PEAK_EWMA)]);
    let servers = format!(
        "[\"{}\", \"{}\", \"{}\"]",
        fast[0].addr, fast[1].addr, slow.addr
    );
    fx.write_config(&upstream_with("peak-ewma", &servers, ""));
    let proxy = fx.start().await;

    // Round robin would send 50 of 150 to the slow backend. Peak EWMA tries
    // it while it is unmeasured, then its 500 ms costs more than a fast
    // backend with dozens of requests queued. Each fast one wins at least
    // when drawn with the slow one (a third of the pairs, ~50).
    let replies = sequential(&client(), proxy.addr(), 150, &[]).await;
    let counts = tally(&replies);

    // The host's estimate, as the plugin read it through `latency`.
    let latency = status(&proxy)
        .await
        .backend_counts(0, "latency_estimate_ns");
    eprintln!("peak-ewma, backend 3 answers in 500 ms: {counts:?}, estimates (ns) {latency:?}");
    let slow_share = counts.get(&3).copied().unwrap_or(0);
    assert!(
        slow_share <= 8,
        "the slow backend got {slow_share} of 150: {counts:?}, estimates (ns) {latency:?}"
    );
    for fast in [1, 2] {
        assert!(
            counts.get(&fast).copied().unwrap_or(0) >= 25,
            "fast backend {fast} underused: {counts:?}"
        );
    }
    if slow_share > 0 {
        // 500 ms, decayed for the few seconds since its last answer.
        assert!(latency[2] >= 250_000_000, "slow estimate: {latency:?}");
    }
    // Both fast ones answered, so both are measured. Their values are not
    // checked: one scheduling stall on a loaded machine sets a peak EWMA for
    // seconds (tens of ms, 285 ms seen with four test binaries on 2 cores).
    assert!(
        latency[0] > 0 && latency[1] > 0,
        "fast estimates: {latency:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_tries_every_new_backend() {
    let (_be, _fx, proxy) = serve_three(&[("peak-ewma", PEAK_EWMA)], "peak-ewma", "").await;

    // An unmeasured backend costs 0 (`default-latency-ms` = 0): it wins
    // whenever it is drawn, until its first response has been timed.
    let replies = sequential(&client(), proxy.addr(), 30, &[]).await;
    let counts = tally(&replies);
    eprintln!("peak-ewma, equal backends: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    let latency = status(&proxy)
        .await
        .backend_counts(0, "latency_estimate_ns");
    assert!(
        latency.iter().all(|&ns| ns > 0),
        "every backend measured: {latency:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_each_key_on_one_backend_and_spreads_keys() {
    let be = backends(3).await;
    let fx = Fixture::new(&[("consistent-hash", CONSISTENT_HASH)]);
    fx.write_config(&upstream(
        "consistent-hash",
        &be,
        "params = { header = \"x-user\" }",
    ));
    let proxy = fx.start().await;
    let client = client();

    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let first = backend_by_user(&client, proxy.addr(), &users).await;
    for _ in 0..3 {
        let again = backend_by_user(&client, proxy.addr(), &users).await;
        assert_eq!(first, again, "a user changed backend");
    }
    let mut spread: BTreeMap<usize, usize> = BTreeMap::new();
    for b in &first {
        *spread.entry(*b).or_default() += 1;
    }
    assert_eq!(spread.len(), 3, "60 users on: {spread:?}");
    assert!(spread.values().all(|&n| n >= 4), "{spread:?}");

    // Without the header the client address is the key: one backend.
    let replies = sequential(&client, proxy.addr(), 12, &[]).await;
    assert_eq!(tally(&replies).len(), 1, "{:?}", tally(&replies));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_by_cookie() {
    let be = backends(3).await;
    let fx = Fixture::new(&[("consistent-hash", CONSISTENT_HASH)]);
    fx.write_config(&upstream(
        "consistent-hash",
        &be,
        "params = { cookie = \"session\" }",
    ));
    let proxy = fx.start().await;
    let client = client();

    let mut seen = BTreeMap::new();
    for i in 0..30 {
        let cookie = format!("theme=dark; session=s{i}; lang=en");
        let mut on = Vec::new();
        for theme in ["dark", "light"] {
            // Other cookies do not matter, only `session`.
            let cookie = cookie.replace("dark", theme);
            let reply = get_with(&client, proxy.addr(), "/", &[("cookie", &cookie)])
                .await
                .expect("request");
            on.push(reply.backend().expect("a backend answered"));
        }
        assert_eq!(on[0], on[1], "session s{i} changed backend");
        *seen.entry(on[0]).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "30 sessions on: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_removing_a_backend_moves_only_its_keys() {
    let be = backends(4).await;
    let ids = ["b1", "b2", "b3", "b4"];
    let all: Vec<(SocketAddr, &str)> = be.iter().map(|b| b.addr).zip(ids).collect();
    let params = "params = { header = \"x-user\" }";
    let fx = Fixture::new(&[("consistent-hash", CONSISTENT_HASH)]);
    fx.write_config(&upstream_with(
        "consistent-hash",
        &servers_with_ids(&all),
        params,
    ));
    let proxy = fx.start().await;
    let client = client();
    let users: Vec<String> = (0..80).map(|i| format!("user-{i}")).collect();
    let before = backend_by_user(&client, proxy.addr(), &users).await;
    let on_2 = before.iter().filter(|&&b| b == 2).count();
    assert!(on_2 >= 5, "backend 2 should own some users: {before:?}");

    // Backend 2 leaves the config (edited as a user does; the watcher
    // applies it).
    let reload = async |servers: Vec<(SocketAddr, &str)>| {
        let counts = reload_counts(&proxy).await;
        fx.write_config(&upstream_with(
            "consistent-hash",
            &servers_with_ids(&servers),
            params,
        ));
        wait_reload(&proxy, &counts, "config", "ok", Duration::from_secs(10)).await;
        let ids: Vec<&str> = servers.iter().map(|&(_, id)| id).collect();
        assert_eq!(status(&proxy).await.ids(0), ids, "the edit is applied");
    };
    let without: Vec<_> = all.iter().copied().filter(|&(_, id)| id != "b2").collect();
    reload(without).await;
    let after = backend_by_user(&client, proxy.addr(), &users).await;
    for (user, (&was, &is)) in users.iter().zip(before.iter().zip(&after)) {
        if was == 2 {
            assert_ne!(is, 2, "{user} is still on the removed backend");
        } else {
            assert_eq!(was, is, "{user} moved from {was} to {is}");
        }
    }
    // Its users spread over the others, not all onto one neighbour.
    let moved_to: std::collections::BTreeSet<usize> = before
        .iter()
        .zip(&after)
        .filter(|(was, _)| **was == 2)
        .map(|(_, is)| *is)
        .collect();
    assert!(
        moved_to.len() >= 2,
        "backend 2's users went to {moved_to:?}"
    );

    // Back in the config (in another position): every user is home again.
    let mut reordered = all.clone();
    reordered.rotate_left(2);
    reload(reordered).await;
    let back = backend_by_user(&client, proxy.addr(), &users).await;
    assert_eq!(before, back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_header_requests_reach_only_canary_backends() {
    let be = backends(4).await;
    let ids = ["stable-1", "stable-2", "canary-1", "canary-2"];
    let servers: Vec<(SocketAddr, &str)> = be.iter().map(|b| b.addr).zip(ids).collect();
    let fx = Fixture::new(&[("canary", CANARY)]);
    fx.write_config(&upstream_with(
        "canary",
        &servers_with_ids(&servers),
        "params = { canary = [\"canary-1\", \"canary-2\"] }",
    ));
    let proxy = fx.start().await;
    let client = client();

    let mut marked = Vec::new();
    let mut unmarked = Vec::new();
    // Interleaved, as real traffic is; `X-Canary: 0` is not the marker.
    for i in 0..60 {
        match i % 3 {
            0 => marked.extend(sequential(&client, proxy.addr(), 1, &[("x-canary", "1")]).await),
            1 => unmarked.extend(sequential(&client, proxy.addr(), 1, &[]).await),
            _ => unmarked.extend(sequential(&client, proxy.addr(), 1, &[("x-canary", "0")]).await),
        }
    }
    let (marked, unmarked) = (tally(&marked), tally(&unmarked));
    assert_eq!(
        marked.keys().copied().collect::<Vec<_>>(),
        vec![3, 4],
        "{marked:?}"
    );
    assert_eq!(
        unmarked.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "{unmarked:?}"
    );
    assert!(
        marked.values().all(|&n| n >= 5),
        "canary round robin: {marked:?}"
    );
    assert!(
        unmarked.values().all(|&n| n >= 10),
        "stable round robin: {unmarked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_falls_back_to_stable_when_the_canary_is_down() {
    let be = backends(2).await;
    let dead = closed_port();
    let servers = [(be[0].addr, "s1"), (be[1].addr, "s2"), (dead, "c1")];
    let fx = Fixture::new(&[("canary", CANARY)]);
    fx.write_config(&upstream_with(
        "canary",
        &servers_with_ids(&servers),
        "params = { canary = [\"c1\"], header = \"X-Release\", value = \"next\" }",
    ));
    let proxy = fx.start().await;
    let client = client();

    // The first marked request is refused by c1 and retried on stable; c1
    // is then down and marked requests go to stable directly.
    let replies = sequential(&client, proxy.addr(), 20, &[("x-release", "next")]).await;
    assert_eq!(
        tally(&replies).keys().copied().collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_rejects_marked_requests_when_told_to() {
    let be = backends(2).await;
    let servers = [(be[0].addr, "s1"), (be[1].addr, "s2")];
    let fx = Fixture::new(&[("canary", CANARY)]);
    // `c1` is not in the set: the canary pool is empty.
    fx.write_config(&upstream_with(
        "canary",
        &servers_with_ids(&servers),
        "params = { canary = \"c1\", fallback = \"reject\" }",
    ));
    let proxy = fx.start().await;
    let client = client();

    let reply = get_with(&client, proxy.addr(), "/", &[("x-canary", "1")])
        .await
        .expect("request");
    assert_eq!(reply.status, 503, "{reply:?}");
    // Unmarked requests are served as usual.
    let replies = sequential(&client, proxy.addr(), 4, &[]).await;
    assert_eq!(
        tally(&replies).keys().copied().collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_refuse_to_start() {
    let be = backends(1).await;
    for (stem, wasm, params) in [
        ("p2c", P2C, "params = { choices = 3 }"),
        (
            "peak-ewma",
            PEAK_EWMA,
            "params = { default-latency-ms = -1 }",
        ),
        (
            "consistent-hash",
            CONSISTENT_HASH,
            "params = { header = \"a\", cookie = \"b\" }",
        ),
        ("canary", CANARY, "params = { fallback = \"nowhere\" }"),
    ] {
        let fx = Fixture::new(&[(stem, wasm)]);
        fx.write_config(&upstream(stem, &be, params));
        let started = Proxy::start(
            fx.config(),
            Options {
                config_path: None,
                watch: false,
            },
        )
        .await;
        let err = started.err().map(|e| format!("{e:#}"));
        assert!(err.is_some(), "{stem} accepted {params}");
    }
}

/// A pick lends the request head only to a plugin that imports `request`:
/// the reference plugins never read it, the canary (a header) and the
/// consistent hash (a header or cookie, when told to) do. The canary tests
/// above show that what is lent is read.
#[test]
fn only_plugins_that_import_request_are_lent_the_head() {
    let runtime = switchyard::plugin::Runtime::new().expect("runtime");
    for (path, reads) in [
        (env!("SWITCHYARD_WASM_ROUND_ROBIN"), false),
        (env!("SWITCHYARD_WASM_LEAST_CONN"), false),
        (env!("SWITCHYARD_WASM_IP_HASH"), false),
        (CANARY, true),
        (CONSISTENT_HASH, true),
    ] {
        let compiled = runtime
            .compile(std::path::Path::new(path))
            .expect("the plugin compiles");
        assert_eq!(compiled.reads_request(), reads, "{path}");
    }
}
