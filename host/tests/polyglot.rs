//! The WIT contract is language-neutral: `examples/js-strategy`, the client
//! IP hash written in JavaScript and built with jco's QuickJS backend, runs
//! in a real proxy, sends every client where the Rust `plugins/ip-hash`
//! sends it (equal and unequal weights, a prefix parameter, a dead backend
//! that forces the re-hash path), and hot-swaps with the Rust build both
//! ways without moving a client or failing a request.
//!
//! The component is built by `examples/js-strategy/build.sh` (Node.js >= 20
//! and npm needed: `.ci/setup node` installs them when it can; the test
//! fails, never skips, without them) unless `SWITCHYARD_WASM_JS` names a
//! prebuilt one.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use switchyard::Proxy;

/// Where a prebuilt JavaScript strategy may be given instead of building it.
const PREBUILT_ENV: &str = "SWITCHYARD_WASM_JS";

/// The JavaScript strategy component, built once per test process.
fn js_strategy() -> &'static str {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    match BUILT.get_or_init(build_js_strategy) {
        Ok(path) => path,
        Err(message) => panic!("{message}"),
    }
}

fn build_js_strategy() -> Result<String, String> {
    if let Some(path) = std::env::var_os(PREBUILT_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path.display().to_string())
        } else {
            Err(format!("{PREBUILT_ENV}={} is not a file", path.display()))
        };
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ lives in the workspace root");
    let script = root.join("examples/js-strategy/build.sh");
    let hint = format!(
        "The polyglot tests build the JavaScript strategy with {}.\n\
         Install Node.js 20 or newer with npm (Debian/Ubuntu: `apt-get install nodejs npm`; \
         or https://nodejs.org), and allow npm to reach its registry on the first build, \
         or set {PREBUILT_ENV} to a component built elsewhere.",
        script.display()
    );
    // Node.js and npm, installed if missing (as .ci/run does).
    setup("node");
    let started = Instant::now();
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run `bash`: {e}\n{hint}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the JavaScript strategy failed ({}).\n{hint}\n--- build.sh said ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout.lines().last().unwrap_or_default().trim().to_owned();
    if !Path::new(&path).is_file() {
        return Err(format!(
            "build.sh succeeded but printed no component path: {stdout:?}"
        ));
    }
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    eprintln!("built {path} ({size} bytes) in {:.1?}", started.elapsed());
    Ok(path)
}

/// Client addresses as the trusted proxy reports them: IPv4 spread over a
/// few /24 networks (several clients per network) and IPv6.
fn clients() -> Vec<String> {
    let mut out: Vec<String> = (0..64u32)
        .map(|i| format!("198.51.{}.{}", i % 16, 7 + i * 3))
        .collect();
    out.extend((0..16u32).map(|i| format!("2001:db8:{:x}::{:x}", i * 977, i + 1)));
    out
}

/// Paths routed to the two upstreams of [`config`].
const EVEN: &str = "/";
const WEIGHTED: &str = "/w/";

/// Two upstreams using the `ip-hash` plugin stem: `even` over the three
/// live backends and a dead one (passive health off, so it stays in the
/// hash and its clients take the re-hash path after a refused connect), and
/// `weighted` (3:2:1) hashing IPv4 clients by /24.
///
/// The pick deadline is raised from 10 ms: compiling the JavaScript engine
/// keeps both cores of a small CI machine busy for seconds, and a worker
/// descheduled past 10 ms would let the host's round robin answer (and move
/// the pinned client), which says nothing about either plugin.
fn config(live: &[switchyard::demo::DemoBackend], dead: SocketAddr) -> String {
    format!(
        "trusted-proxies = [\"127.0.0.1\"]\n\n\
         [plugin-limits]\npick-deadline = \"250ms\"\n\n\
         [[upstream]]\nname = \"even\"\nstrategy = \"ip-hash\"\nmax-fails = 0\n\
         servers = [\"{}\", \"{}\", \"{}\", \"{dead}\"]\n\n\
         [[upstream]]\nname = \"weighted\"\nstrategy = \"ip-hash\"\npath-prefix = \"{WEIGHTED}\"\n\
         params = {{ ipv4-prefix = 24 }}\n\
         servers = [{{ address = \"{}\", weight = 3 }}, {{ address = \"{}\", weight = 2 }}, \"{}\"]\n",
        live[0].addr, live[1].addr, live[2].addr, live[0].addr, live[1].addr, live[2].addr,
    )
}

/// Which backend answered each client on each upstream, in `clients()`
/// order: (even, weighted).
async fn decisions(client: &HttpClient, proxy: SocketAddr) -> (Vec<usize>, Vec<usize>) {
    let mut even = Vec::new();
    let mut weighted = Vec::new();
    for ip in clients() {
        for (path, out) in [(EVEN, &mut even), (WEIGHTED, &mut weighted)] {
            let reply = get_with(client, proxy, path, &[("x-forwarded-for", &ip)])
                .await
                .unwrap_or_else(|e| panic!("{ip} {path}: {e}"));
            assert_eq!(reply.status, 200, "{ip} {path}: {reply:?}");
            out.push(
                reply
                    .backend()
                    .unwrap_or_else(|| panic!("{ip} {path}: not a greeting: {reply:?}")),
            );
        }
    }
    (even, weighted)
}

/// Waits until every upstream runs the plugin whose bytes are at `path`;
/// returns how long that took.
async fn swapped_to(proxy: &Proxy, path: &str) -> Duration {
    let hash = build_hash(&std::fs::read(path).expect("read plugin"));
    let start = Instant::now();
    // Compiling the JavaScript engine takes seconds in a debug build on a
    // busy machine; the Rust plugin takes ~0.2 s.
    wait_status(
        proxy,
        Duration::from_secs(90),
        &format!("every upstream runs {path}"),
        |s| (0..s.upstream_count()).all(|u| s.strategy_hash(u) == hash),
    )
    .await;
    start.elapsed()
}

/// Plugin picks and failed picks over both upstreams.
async fn plugin_stats(proxy: &Proxy) -> (u64, u64) {
    let s = status(proxy).await;
    (0..s.upstream_count()).fold((0, 0), |(picks, failures), u| {
        (
            picks + s.strategy_count(u, "picks"),
            failures + s.strategy_failed_picks(u),
        )
    })
}

/// Retries made by the `even` upstream so far.
async fn even_retries(proxy: &Proxy) -> u64 {
    status(proxy).await.retries(0)
}

/// One client that keeps sending requests while plugins are swapped,
/// recording which backend answered each. Its address hashes straight to a
/// live backend, so it adds no retries to [`even_retries`].
fn pinned_client_loop(
    proxy: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Result<Reply, String>>> {
    tokio::spawn(async move {
        let client = client();
        let mut log = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            log.push(get_with(&client, proxy, EVEN, &[("x-forwarded-for", "192.0.2.77")]).await);
        }
        log
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_ip_hash_decides_like_rust_and_hot_swaps_with_it() {
    let js = js_strategy();
    let live = backends(3).await;
    let dead = closed_port();
    let fx = Fixture::new(&[("ip-hash", IP_HASH)]);
    fx.write_config(&config(&live, dead));
    let proxy = fx.start().await;
    let client = client();

    let (rust_even, rust_weighted) = decisions(&client, proxy.addr()).await;
    // Clients hashed to the dead backend were retried on the next backend
    // the strategy chose with that one excluded: the re-hash path ran.
    let retried = even_retries(&proxy).await;
    assert!(retried > 0, "no client hashed to the dead backend");
    // What a user checks first: every live backend gets clients, and
    // clients of one /24 share a backend where the prefix is 24.
    for (name, choice) in [("even", &rust_even), ("weighted", &rust_weighted)] {
        let mut seen = choice.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, vec![1, 2, 3], "{name}: {choice:?}");
    }
    let ipv4 = clients().iter().filter(|c| c.contains('.')).count();
    for (i, a) in clients().iter().take(ipv4).enumerate() {
        for (j, b) in clients().iter().take(ipv4).enumerate() {
            if a.rsplit_once('.').map(|p| p.0) == b.rsplit_once('.').map(|p| p.0) {
                assert_eq!(
                    rust_weighted[i], rust_weighted[j],
                    "{a} and {b} share a /24"
                );
            }
        }
    }

    // A client keeps sending while the plugin changes language under it.
    let stop = Arc::new(AtomicBool::new(false));
    let pinned = pinned_client_loop(proxy.addr(), Arc::clone(&stop));

    fx.install("ip-hash", js);
    let took = swapped_to(&proxy, js).await;
    eprintln!("Rust -> JavaScript swap landed in {took:.1?}");
    let (picks_before, _) = plugin_stats(&proxy).await;
    let (js_even, js_weighted) = decisions(&client, proxy.addr()).await;
    let (picks, failures) = plugin_stats(&proxy).await;
    assert_eq!(
        failures, 0,
        "the JavaScript plugin failed; its picks were served by the host"
    );
    assert!(
        picks - picks_before >= 2 * clients().len() as u64,
        "the JavaScript plugin answered only {} picks",
        picks - picks_before
    );
    assert_eq!(
        even_retries(&proxy).await - retried,
        retried,
        "JavaScript retried a different number of clients than Rust"
    );
    assert_eq!(
        js_even, rust_even,
        "even weights, dead backend: JavaScript differs from Rust"
    );
    assert_eq!(
        js_weighted, rust_weighted,
        "weights 3:2:1, /24: JavaScript differs from Rust"
    );

    fx.install("ip-hash", IP_HASH);
    let took = swapped_to(&proxy, IP_HASH).await;
    eprintln!("JavaScript -> Rust swap landed in {took:.1?}");
    assert_eq!(
        decisions(&client, proxy.addr()).await,
        (rust_even, rust_weighted)
    );

    stop.store(true, Ordering::Relaxed);
    let log = pinned.await.expect("client loop");
    let served: Vec<usize> = log
        .iter()
        .map(|r| match r {
            Ok(reply) if reply.status == 200 => reply.backend().unwrap_or(0),
            other => panic!("a request failed during the swaps: {other:?}"),
        })
        .collect();
    assert!(
        served.len() > 10,
        "the looping client sent {} requests",
        served.len()
    );
    assert!(
        served.windows(2).all(|w| w[0] == w[1]),
        "the pinned client moved during the swaps: {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_strategy_rejects_bad_params_with_its_own_message() {
    let js = js_strategy();
    let live = backends(1).await;
    let fx = Fixture::new(&[("ip-hash-js", js)]);
    fx.write_config(&upstream(
        "ip-hash-js",
        &live,
        "params = { ipv4-prefix = 40 }",
    ));
    let err = match Proxy::start(fx.config(), switchyard::Options::default()).await {
        Ok(_) => panic!("the proxy started with ipv4-prefix = 40"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("init failed") && err.contains("`ipv4-prefix` must be an integer in 0..=32"),
        "{err}"
    );
}
