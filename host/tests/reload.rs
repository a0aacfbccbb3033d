//! Hot reload through the file system, as a user does it: copy a `.wasm`
//! into the watched directory or edit the config, while a client keeps
//! sending requests. Nothing may fail, and the new behaviour must show
//! promptly (the time is printed; benchmarks, not tests, judge speed).

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::Running;
use common::*;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

/// Every reply with the time it arrived.
type Log = Vec<(Instant, Result<Reply, String>)>;

/// A client that loops until stopped, recording every reply with its time.
struct Loop {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Loop {
    fn start(addr: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (Arc::clone(&stop), Arc::clone(&log));
        let task = tokio::spawn(async move {
            let client = client();
            while !s.load(Ordering::Relaxed) {
                let r = get_with(&client, addr, "/", &[]).await;
                l.lock().await.push((Instant::now(), r));
            }
        });
        Self { stop, log, task }
    }

    /// Waits (up to 10 s) until the loop has `n` replies.
    async fn wait_for_replies(&self, n: usize) {
        wait_for(
            Duration::from_secs(10),
            &format!("{n} replies to the looping client"),
            || async {
                let got = self.log.lock().await.len();
                if got >= n {
                    Ok(())
                } else {
                    Err(format!("{got} replies"))
                }
            },
        )
        .await;
    }

    /// Waits (up to 10 s, without failing) until the replies since `since`
    /// have settled on `backend` (see [`settled_on`]).
    async fn wait_until_settled_on(&self, since: Instant, backend: usize) {
        eventually(Duration::from_secs(10), || async {
            settled_on(&self.log.lock().await, since, backend).is_some()
        })
        .await;
    }

    async fn finish(self) -> Log {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("client loop");
        Arc::try_unwrap(self.log).expect("sole owner").into_inner()
    }
}

fn assert_no_failures(log: &[(Instant, Result<Reply, String>)]) {
    let failed: Vec<_> = log
        .iter()
        .filter(|(_, r)| !matches!(r, Ok(reply) if reply.status == 200))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        log.len(),
        &failed[..failed.len().min(5)]
    );
}

/// What `/status` shows of the running config: each upstream's name,
/// strategy and plugin build, and its backends' addresses and weights.
fn running_config(s: &Status) -> Vec<Value> {
    (0..s.upstream_count())
        .map(|u| {
            let upstream = s.upstream(u);
            let backends: Vec<Value> = s
                .backends(u)
                .iter()
                .map(|b| json!([b["address"], b["weight"]]))
                .collect();
            json!({
                "name": upstream["name"],
                "strategy": upstream["strategy"]["name"],
                "build": upstream["strategy"]["hash"],
                "backends": backends,
            })
        })
        .collect()
}

/// After `since`, how long until every reply came from `backend`.
fn settled_on(
    log: &[(Instant, Result<Reply, String>)],
    since: Instant,
    backend: usize,
) -> Option<Duration> {
    let after: Vec<_> = log.iter().filter(|(t, _)| *t >= since).collect();
    let last_other = after
        .iter()
        .rposition(|(_, r)| r.as_ref().ok().and_then(Reply::backend) != Some(backend));
    let first_settled = match last_other {
        Some(i) => after.get(i + 1)?,
        None => after.first()?,
    };
    // Require a real run of the new behaviour, not one lucky reply.
    let run = after.len() - last_other.map_or(0, |i| i + 1);
    (run >= 20).then(|| first_settled.0.duration_since(since))
}

/// Round robin over three demo backends, with the test strategy also in
/// the plugins directory.
async fn round_robin_with_test_strategy_installed() -> Served {
    let plugins = [
        ("round-robin", ROUND_ROBIN),
        ("test-strategy", TEST_STRATEGY),
    ];
    serve_three(&plugins, "round-robin", "").await
}

/// Starts round robin over three demo backends, makes `change` while a
/// client loops, and checks: round robin before, no failed request, and
/// every reply from `backend` after (within 10 s; typically 0.3-1 s).
async fn switch_under_load(
    change: impl FnOnce(&Fixture, &[switchyard::demo::DemoBackend]),
    backend: usize,
) {
    let (be, fx, proxy) = round_robin_with_test_strategy_installed().await;
    let client_loop = Loop::start(proxy.addr());
    // Two rounds of the round robin before the change.
    client_loop.wait_for_replies(6).await;

    let changed = Instant::now();
    change(&fx, &be);
    // Until the new behaviour has shown for a good run of requests (the
    // time it takes is printed, not asserted: speed is for benchmarks);
    // the assertions below say what went wrong if it never does.
    client_loop.wait_until_settled_on(changed, backend).await;
    let log = client_loop.finish().await;

    assert_no_failures(&log);
    let before: Vec<Reply> = log
        .iter()
        .filter(|(t, _)| *t < changed)
        .filter_map(|(_, r)| r.clone().ok())
        .collect();
    assert_eq!(tally(&before).len(), 3, "round robin before the change");
    let took = settled_on(&log, changed, backend).expect("the change never took effect");
    eprintln!(
        "switched in {took:?} after the change; {} requests, 0 failed",
        log.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_new_plugin_switches_strategy_without_failures() {
    // "My strategy": the test strategy picks backend index 0 by default.
    switch_under_load(|fx, _| fx.install("round-robin", TEST_STRATEGY), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_config_switches_strategy_and_params() {
    switch_under_load(
        |fx, be| fx.write_config(&upstream("test-strategy", be, "params = { index = 2 }")),
        3,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_edit_keeps_the_old_config() {
    let (be, fx, proxy) = round_robin_with_test_strategy_installed().await;
    let before = running_config(&status(&proxy).await);

    for broken in [
        upstream("round-robin", &be, "wieght = 3"), // unknown key
        upstream("no-such-plugin", &be, ""),        // missing plugin
        upstream("test-strategy", &be, "params = { mode = \"fail-init\" }"), // init refuses
        "[[upstream]\nname = ".to_string(),         // not TOML
    ] {
        let counts = reload_counts(&proxy).await;
        fx.write_config(&broken);
        wait_reload(&proxy, &counts, "config", "error", Duration::from_secs(5)).await;
        let now = status(&proxy).await;
        let last = now.reloads().last().expect("the rejected reload");
        assert_eq!(
            (&last["kind"], &last["result"]),
            (&Value::from("config"), &Value::from("error")),
            "{last}"
        );
        assert_eq!(
            running_config(&now),
            before,
            "config must not change for:\n{broken}"
        );
        let client = client();
        let replies = [
            get(&client, proxy.addr(), "/").await,
            get(&client, proxy.addr(), "/").await,
            get(&client, proxy.addr(), "/").await,
        ];
        assert_eq!(
            tally(&replies).len(),
            3,
            "still round robin after:\n{broken}"
        );
    }
}

/// Bytes that must never replace a working plugin.
fn bad_files() -> Vec<(&'static str, Vec<u8>)> {
    let good = std::fs::read(TEST_STRATEGY).expect("test strategy");
    vec![
        ("empty", Vec::new()),
        ("garbage", b"this is not webassembly at all".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        // The smallest valid core module: magic + version 1.
        ("core module", b"\0asm\x01\0\0\0".to_vec()),
        // A valid, empty component: exports nothing of our world.
        ("wrong world", b"\0asm\x0d\0\x01\0".to_vec()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugin_files_never_replace_the_working_one() {
    let (_be, fx, proxy) = serve_three(&[("round-robin", ROUND_ROBIN)], "round-robin", "").await;
    let original = status(&proxy).await.strategy_hash(0).to_owned();
    let client_loop = Loop::start(proxy.addr());

    for (what, bytes) in bad_files() {
        let counts = reload_counts(&proxy).await;
        fx.write_plugin("round-robin", &bytes);
        wait_reload(&proxy, &counts, "plugin", "error", Duration::from_secs(5)).await;
        assert_eq!(
            status(&proxy).await.strategy_hash(0),
            original,
            "{what} replaced the plugin"
        );
    }
    let log = client_loop.finish().await;
    assert_no_failures(&log);
    let replies: Vec<Reply> = log.into_iter().filter_map(|(_, r)| r.ok()).collect();
    let counts = tally(&replies);
    assert_eq!(counts.len(), 3, "still round robin: {counts:?}");
    let (min, max) = (
        counts.values().min().copied().unwrap_or(0),
        counts.values().max().copied().unwrap_or(0),
    );
    assert!(max - min <= 1, "round robin stayed exact: {counts:?}");

    // A good file after the bad ones is picked up.
    fx.install("round-robin", TEST_STRATEGY);
    let client = client();
    let switched = eventually(Duration::from_secs(2), || {
        let client = client.clone();
        let addr = proxy.addr();
        async move {
            get(&client, addr, "/").await.backend() == Some(1)
                && get(&client, addr, "/").await.backend() == Some(1)
        }
    })
    .await;
    assert!(switched.is_some(), "a good plugin after bad ones must load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_rejected_with_the_file_name_and_reason() {
    let fx = Fixture::new(&[]);
    let runtime = switchyard::plugin::Runtime::new().expect("runtime");
    for (what, bytes) in bad_files() {
        let path = fx.plugins().join("x.wasm");
        std::fs::write(&path, &bytes).expect("write");
        let err = runtime.compile(&path).expect_err(what).to_string();
        assert!(err.contains("x.wasm"), "{what}: {err}");
        let expected = match what {
            "empty" => "empty",
            "garbage" => "not a WebAssembly file",
            "truncated" => "invalid component",
            "core module" => "core WebAssembly module, not a component",
            "wrong world" => "does not match the switchyard:balancer WIT world",
            _ => unreachable!(),
        };
        assert!(err.contains(expected), "{what}: {err}");
    }
}

/// Backend `number`: answers every request with `Hello from backend N`,
/// `GET /held` only once `gate` is open.
async fn held_backend(number: usize, gate: watch::Receiver<bool>) -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let gate = gate.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<Incoming>| {
                    let mut gate = gate.clone();
                    async move {
                        if req.uri().path() == "/held" {
                            // A closed channel lets it go too.
                            let _ = gate.wait_for(|open| *open).await;
                        }
                        let body = format!("Hello from backend {number}\n");
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A request is routed once, by the build live when it arrives: a swap
/// while requests are in flight neither breaks nor moves them, and the
/// requests after it are routed by the new build. The old build is round
/// robin, the new one sends everything to backend 1, so each reply says
/// which routed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_the_old_plugin() {
    let (open, gate) = watch::channel(false);
    let mut servers = Vec::new();
    let mut tasks = Vec::new();
    for n in 1..=3 {
        let (addr, task) = held_backend(n, gate.clone()).await;
        servers.push(format!("\"{addr}\""));
        tasks.push(task);
    }
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nstrategy = \"round-robin\"\nservers = [{}]\n",
        servers.join(", ")
    ));
    let proxy = fx.start().await;
    let addr = proxy.addr();

    // Three requests held by the backends, each routed by round robin
    // before the next is sent: one on each backend.
    let mut held = Vec::new();
    for k in 1..=3 {
        held.push(tokio::spawn(async move {
            // Held until the gate opens, after the waits below.
            let uri = format!("http://{addr}/held").parse().expect("uri");
            let resp = tokio::time::timeout(Duration::from_secs(30), client().get(uri))
                .await
                .expect("answered within 30 s")
                .expect("response");
            Reply::read(resp).await.expect("body")
        }));
        wait_status(
            &proxy,
            Duration::from_secs(5),
            &format!("{k} held request(s) in flight"),
            |s| s.in_flight(0).iter().sum::<u64>() == k,
        )
        .await;
    }
    assert_eq!(status(&proxy).await.in_flight(0), [1, 1, 1]);

    // The swap, while they are held.
    let new_build = std::fs::read(TEST_STRATEGY).expect("test strategy");
    fx.install("round-robin", TEST_STRATEGY);
    let took = wait_for_build(&proxy, 0, &new_build, Duration::from_secs(10)).await;
    eprintln!("swapped in {took:?} with 3 requests in flight");
    let during = status(&proxy).await;
    assert_eq!(
        during.in_flight(0),
        [1, 1, 1],
        "still in flight after the swap"
    );

    // After it, the new build routes: round robin would spread these.
    let client = client();
    for i in 0..6 {
        let r = get(&client, addr, "/").await;
        assert_eq!(
            (r.status, r.backend()),
            (200, Some(1)),
            "request {i} after the swap: {r:?}"
        );
    }

    // The held requests finish where the old build sent them.
    open.send(true).expect("the backends wait on the gate");
    let mut served = Vec::new();
    for t in held {
        let r = t.await.expect("held request");
        assert_eq!(r.status, 200, "{r:?}");
        served.push(r.backend().expect("a greeting"));
    }
    served.sort_unstable();
    assert_eq!(served, [1, 2, 3], "routed by round robin, the old build");
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_strategies_serve_until_a_file_arrives_and_after_it_goes() {
    let (_be, fx, proxy) = serve_three(&[], "round-robin", "").await;
    let client = client();
    let mut replies = Vec::new();
    for _ in 0..30 {
        replies.push(get(&client, proxy.addr(), "/").await);
    }
    let counts = tally(&replies);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10]
    );

    // A file dropped in replaces the built-in copy like any changed plugin.
    fx.install("round-robin", TEST_STRATEGY);
    let addr = proxy.addr();
    let switched = eventually(Duration::from_secs(3), || {
        let client = client.clone();
        async move {
            let mut all_first = true;
            for _ in 0..6 {
                all_first &= get(&client, addr, "/").await.backend() == Some(1);
            }
            all_first
        }
    })
    .await;
    assert!(switched.is_some(), "the dropped plugin never took over");

    // And `rm` undoes it: a reference plugin's file removed is served from
    // the built-in copy again, exact round robin.
    std::fs::remove_file(fx.plugins().join("round-robin.wasm")).expect("remove the plugin");
    let back = eventually(Duration::from_secs(3), || {
        let client = client.clone();
        async move {
            let mut replies = Vec::new();
            for _ in 0..6 {
                replies.push(get(&client, addr, "/").await);
            }
            tally(&replies).values().copied().collect::<Vec<_>>() == [2, 2, 2]
        }
    })
    .await;
    assert!(
        back.is_some(),
        "removing round-robin.wasm did not bring back the built-in round robin"
    );
}

/// The soak (`examples/bench/soak.sh`, 100 changes at 2000 req/s) in small:
/// ten changes, plugin copies and config edits in turn, while a client
/// loops. Nothing fails, and the last change is the one serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_in_a_row_under_load_lose_nothing() {
    let (be, fx, proxy) = round_robin_with_test_strategy_installed().await;
    let client_loop = Loop::start(proxy.addr());
    for i in 0..10 {
        if i % 2 == 0 {
            let plugin = if i % 4 == 0 { LEAST_CONN } else { ROUND_ROBIN };
            fx.install("round-robin", plugin);
        } else {
            let weight = i % 3 + 1;
            fx.write_config(&format!(
                "[[upstream]]\nname = \"app\"\nstrategy = \"round-robin\"\nservers = [{{ address = \"{}\", weight = {weight} }}, \"{}\", \"{}\"]\n",
                be[0].addr, be[1].addr, be[2].addr
            ));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Finally the test strategy (everything to backend 1) must take over.
    fx.install("round-robin", TEST_STRATEGY);
    let changed = Instant::now();
    client_loop.wait_until_settled_on(changed, 1).await;
    let log = client_loop.finish().await;
    assert_no_failures(&log);
    assert!(
        settled_on(&log, changed, 1).is_some(),
        "the last change never took effect"
    );
    eprintln!("{} requests across 11 changes, 0 failed", log.len());
}

/// Reading a watched file (as the proxy itself does on every reload) is
/// not a change: one edit gives one reload, not a reload loop. A reload
/// that finds nothing changed records nothing (neither `/status` nor
/// `/metrics` would show a loop of them), so the proxy runs as a process
/// whose debug log names every reload it tries: `config unchanged`,
/// `plugin unchanged`. A new plugin file no upstream uses marks the point
/// by which the reloader has handled what came before (it takes events in
/// order, the config first and plugin files by name, `zz-` last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_watched_files_triggers_no_reload_and_one_edit_one_reload() {
    let be = backends(3).await;
    let fx = Fixture::new(&[
        ("round-robin", ROUND_ROBIN),
        ("test-strategy", TEST_STRATEGY),
    ]);
    fx.write_config(&upstream("round-robin", &be, ""));
    let proxy = Running::start_logging(&fx, &[], "info,switchyard=debug");
    let admin = proxy.admin.expect("the admin API is on");
    let marked = async |n: usize| {
        wait_for(
            Duration::from_secs(10),
            &format!("marker {n} handled"),
            || async {
                match proxy.lines_with("no upstream uses it") {
                    seen if seen >= n => Ok(()),
                    seen => Err(format!("{seen} markers handled")),
                }
            },
        )
        .await;
    };
    let tried = || proxy.lines_with("unchanged");
    let config_counts = async || {
        let r = admin_get_at(admin, "/metrics").await;
        samples(&r.body, "switchyard_reloads_total")
            .into_iter()
            .filter(|(labels, _)| labels["kind"] == "config")
            .map(|(labels, n)| (labels["result"].clone(), n as u64))
            .collect::<BTreeMap<String, u64>>()
    };

    for _ in 0..5 {
        let _ = std::fs::read(fx.config_path()).expect("read config");
        let _ = std::fs::read(fx.plugins().join("round-robin.wasm")).expect("read plugin");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    fx.install("zz-marker", ROUND_ROBIN);
    marked(1).await;
    assert_eq!(tried(), 0, "reads are not changes");
    assert_eq!(config_counts().await, BTreeMap::new());

    fx.write_config(&upstream("test-strategy", &be, ""));
    wait_for(Duration::from_secs(10), "the edit is applied", || async {
        match proxy.lines_with("config reloaded") {
            0 => Err("not yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    fx.install("zz-marker", LEAST_CONN);
    marked(2).await;
    assert_eq!(
        proxy.lines_with("config reloaded"),
        1,
        "one edit, one reload"
    );
    assert_eq!(tried(), 0, "no reload after it");
    assert_eq!(
        config_counts().await,
        BTreeMap::from([("ok".to_owned(), 1)]),
        "one edit, one reload"
    );
}

/// A plugin is shown as what it declares itself (its `switchyard:plugin`
/// section), whatever its file is called: the README's hot swap, least-conn
/// copied over `round-robin.wasm`, shows as least-conn in `/status`, the
/// reload log and the metrics; a plugin that declares nothing shows none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_is_shown_as_what_it_declares_whatever_its_file_is_called() {
    let version = env!("CARGO_PKG_VERSION");
    let (_be, fx, proxy) = serve_three(&[("round-robin", ROUND_ROBIN)], "round-robin", "").await;
    let algorithm = |s: &Status| s.upstream(0)["strategy"]["algorithm"].clone();
    assert_eq!(
        algorithm(&status(&proxy).await),
        json!(format!("round-robin@{version}"))
    );

    fx.install("round-robin", LEAST_CONN);
    let least_conn = json!(format!("least-conn@{version}"));
    let shown = eventually(Duration::from_secs(5), || {
        let (proxy, least_conn) = (&proxy, &least_conn);
        async move { algorithm(&status(proxy).await) == *least_conn }
    })
    .await;
    assert!(shown.is_some(), "least-conn never shown");
    let s = status(&proxy).await;
    assert_eq!(
        s.upstream(0)["strategy"]["name"],
        "round-robin",
        "the file's name stays"
    );
    let reloads = s.0["reloads"].as_array().expect("reloads").clone();
    assert!(
        reloads.iter().any(|r| r["detail"]
            .as_str()
            .is_some_and(|d| d.ends_with(&format!("(least-conn@{version})")))),
        "{reloads:#?}"
    );
    let admin = proxy.admin_addr().expect("admin");
    let metrics = admin_get_at(admin, "/metrics").await.body;
    let info = samples(&metrics, "switchyard_plugin_info");
    let strategy = info
        .iter()
        .find(|(l, _)| l["role"] == "strategy")
        .expect("info");
    assert_eq!(
        (
            strategy.0["plugin"].as_str(),
            strategy.0["algorithm"].as_str()
        ),
        ("round-robin", "least-conn"),
        "{metrics}"
    );
    assert_eq!(strategy.0["version"], version);

    // The test strategy declares nothing.
    fx.install("round-robin", TEST_STRATEGY);
    let cleared = eventually(Duration::from_secs(5), || {
        let proxy = &proxy;
        async move { algorithm(&status(proxy).await).is_null() }
    })
    .await;
    assert!(cleared.is_some(), "an undeclared plugin still shows a name");
}
