//! The admin dashboard in a real browser: three demo backends behind the
//! proxy, a client sending requests, and `host/tests/browser/dashboard.mjs`
//! (headless Chromium through playwright-core) watching `GET /` on the admin
//! listener. Traffic runs a few seconds before the page is opened: the page
//! must start with that history (`GET /history`), go live, show traffic
//! flowing, show the reload when a plugin is hot-swapped and the strategy
//! `/status` reports, show a backend killed meanwhile as down with a reason
//! and a since-time, show the routes and listeners, bytes and retries, and
//! not scroll sideways at 1280 px.
//! With `SWITCHYARD_UPDATE_SCREENSHOT=1` its screenshot replaces
//! `docs/dashboard.png`, shown in the README.
//!
//! Needs Chromium at /usr/bin/chromium, Node.js >= 20 and
//! `npm ci --prefix host/tests/browser`: `.ci/setup browser` installs what
//! is missing; when it cannot, the test fails and says what to install.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";
/// What `.ci/setup browser` provides for this test.
const INSTALL: &str = "apt-get install -y --no-install-recommends chromium (Debian's Chromium \
     at /usr/bin/chromium), Node.js >= 20 with npm on PATH, then `npm ci --prefix host/tests/browser` \
     (playwright-core, pinned in host/tests/browser/package-lock.json)";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate lives in the workspace")
        .to_path_buf()
}

/// Installs Chromium, Node.js and playwright-core when missing
/// (`.ci/setup browser`, as `.ci/run` does), then fails the test, naming
/// everything that is still missing, unless all are there.
fn require_browser_tools(browser_dir: &Path) {
    setup("browser");
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).is_file() {
        missing.push(format!("{CHROMIUM} (Debian package `chromium`)"));
    }
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let major: u32 = version
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            if major < 20 {
                missing.push(format!("Node.js >= 20 (`node --version` says {version})"));
            }
        }
        _ => missing.push("`node` on PATH (Node.js >= 20)".to_owned()),
    }
    let module = browser_dir.join("node_modules/playwright-core/package.json");
    if !module.is_file() {
        missing.push(format!(
            "{} (run `npm ci --prefix host/tests/browser`)",
            module.display()
        ));
    }
    assert!(
        missing.is_empty(),
        "the dashboard browser test cannot run; missing: {}.\nIt needs: {INSTALL}",
        missing.join("; ")
    );
}

/// Clients looping through the proxy until stopped, at a few hundred
/// requests per second that rise and fall (so the chart has a shape), never
/// flat out: Chromium needs the CPU too.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(proxy: std::net::SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
                tokio::spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) {
                        match get_with(&client, proxy, "/", &[]).await {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        let phase = start.elapsed().as_secs_f64() / 6.0;
                        let pause = 4.0 + 3.0 * phase.sin();
                        tokio::time::sleep(Duration::from_secs_f64(pause / 1000.0)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops the clients; returns (succeeded, failed).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("client task");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// A client posting a small body every 100 ms (bytes to the backends);
/// counts the answers that were 200.
struct Posts {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Posts {
    fn start(proxy: std::net::SocketAddr) -> Self {
        use http_body_util::Full;
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let client: Client<_, Full<bytes::Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let mut ok = 0;
            while !done.load(Ordering::Relaxed) {
                let req = http::Request::post(format!("http://{proxy}/"))
                    .body(Full::new(bytes::Bytes::from_static(
                        b"a small request body",
                    )))
                    .expect("request");
                let sent = tokio::time::timeout(Duration::from_secs(5), client.request(req)).await;
                ok += u64::from(matches!(sent, Ok(Ok(r)) if r.status() == 200));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ok
        });
        Self { stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("posts task")
    }
}

/// A client sending `x-flood` every 50 ms: all but one a minute limited.
struct Flood {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Flood {
    fn start(proxy: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let (client, mut limited) = (client(), 0);
            while !done.load(Ordering::Relaxed) {
                let reply = get_with(&client, proxy, "/", &[("x-flood", "1")]).await;
                limited += u64::from(reply.is_ok_and(|r| r.status == 429));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            limited
        });
        Self { stop, task }
    }

    /// Stops it; returns how many of its requests were limited.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("flood task")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_traffic_and_a_hot_swap() {
    let root = repo_root();
    let browser_dir = root.join("host/tests/browser");
    require_browser_tools(&browser_dir);

    // A shadow, so that its split bar is drawn too; a rate limit on a
    // header the clients below do not send, and a flood that sends it.
    let (mut be, fx, proxy) = serve_three(
        &[
            ("round-robin", ROUND_ROBIN),
            ("ip-hash", IP_HASH),
            ("rate-limit", RATE_LIMIT),
        ],
        "round-robin",
        "shadow = \"ip-hash\"\nlimit-req = { rate = \"1/m\", key = \"header:x-flood\" }\n\
         admission = \"rate-limit\"\nadmission-params = { rate = \"1/m\", key = \"header:x-never-sent\" }",
    )
    .await;
    let admin = proxy.admin_addr().expect("the admin listener is on");
    let traffic = Traffic::start(proxy.addr(), 2);
    let flood = Flood::start(proxy.addr());
    let posts = Posts::start(proxy.addr());

    // Some seconds of history before the page is opened.
    let history = eventually(Duration::from_secs(15), || async {
        let h = get(&client(), admin, "/history").await;
        let h: serde_json::Value = serde_json::from_str(&h.body).unwrap_or_default();
        h["upstreams"][0]["series"]["t_ms"]
            .as_array()
            .is_some_and(|t| t.len() >= 4)
    })
    .await;
    assert!(history.is_some(), "/history never held 4 seconds");

    // The README's screenshot is rewritten only when asked for
    // (SWITCHYARD_UPDATE_SCREENSHOT=1), with a longer history in the chart.
    let update = std::env::var_os("SWITCHYARD_UPDATE_SCREENSHOT").is_some_and(|v| v == "1");
    let screenshot = if update {
        root.join("docs/dashboard.png")
    } else {
        fx.dir.path().join("dashboard.png")
    };
    let history_ms = if update { "8000" } else { "2500" };
    let mut child = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(format!("http://{admin}/"))
        .arg(&screenshot)
        .current_dir(&browser_dir)
        // Some history in the chart before and after the swap.
        .env("SWITCHYARD_MIN_LIVE_MS", history_ms)
        .env("SWITCHYARD_SHOT_DELAY_MS", history_ms)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut output = Vec::new();

    // The script prints READY once the page is live and traffic shows.
    let ready = tokio::time::timeout(Duration::from_secs(40), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.trim() == "READY";
            output.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let last = be.pop();
    let killed = last.as_ref().map(|b| b.addr);
    if ready {
        // Hot swap: the test strategy over round-robin.wasm; and a backend
        // stops (dropped), which the page must show down.
        fx.install("round-robin", TEST_STRATEGY);
    }
    drop(last);
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            output.push(line);
        }
        child.wait().await
    })
    .await;
    let status = match rest {
        Ok(status) => status.expect("wait for node"),
        Err(_) => {
            let _ = child.kill().await;
            panic!("dashboard.mjs did not finish within 60 s; stdout: {output:?}");
        }
    };
    let stderr = stderr_task.await.unwrap_or_default();
    let (ok, failed) = traffic.finish().await;
    let limited = flood.finish().await;
    let posted = posts.finish().await;

    let report: serde_json::Value = output
        .iter()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    assert!(
        ready && status.success() && report["ok"] == true,
        "dashboard.mjs failed (exit {status}, READY {ready}): {}\nstdout: {output:?}\nstderr: {stderr}",
        report["reason"]
    );
    eprintln!("dashboard: {report}");

    assert!(limited > 0, "the flood was never limited");
    assert!(posted > 0, "no POST was answered 200");

    // The history was there from the first moment.
    let points = report["historyPoints"].as_u64().unwrap_or(0);
    assert!(
        points >= 4,
        "the page started with {points} points of history: {report}"
    );
    // The killed backend: down, with the failed check and since when.
    let down = &report["down"];
    let killed = killed.map(|a| a.to_string()).unwrap_or_default();
    assert_eq!(down["id"], killed.as_str(), "{report}");
    let reason = down["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("passive") && reason.contains("connect"),
        "down reason shown: {reason:?}"
    );
    assert!(
        down["since"]
            .as_str()
            .is_some_and(|s| s.starts_with("down since ")),
        "{down}"
    );
    let shown = |key: &str| -> Vec<String> {
        report[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        shown("upSince").iter().all(|s| s.starts_with("up since ")),
        "{report}"
    );
    // Bytes both ways and the retries the killed backend caused.
    assert!(
        shown("retried").iter().any(|r| !r.starts_with("0 ")),
        "retries: {:?}",
        shown("retried")
    );
    assert!(
        shown("bytesIn").iter().any(|b| b != "↓ 0 B"),
        "{:?}",
        shown("bytesIn")
    );
    assert!(
        shown("bytesOut").iter().any(|b| b != "↑ 0 B"),
        "{:?}",
        shown("bytesOut")
    );
    // Routes and listeners.
    assert!(
        shown("routes").iter().any(|r| r.contains("app")),
        "routes: {:?}",
        shown("routes")
    );
    assert!(
        shown("listeners")
            .iter()
            .any(|l| l.contains(&proxy.addr().to_string()) && l.contains("HTTP")),
        "listeners: {:?}",
        shown("listeners")
    );
    assert!(
        shown("latencyLegend").iter().any(|l| l.starts_with("p99")),
        "{report}"
    );
    // The total line: off at first, on when asked for.
    assert!(
        !shown("legendBefore").iter().any(|l| l == "Total")
            && shown("legendWithTotal").iter().any(|l| l == "Total"),
        "legend before {:?}, with the total {:?}",
        shown("legendBefore"),
        shown("legendWithTotal")
    );
    // No sideways scroll at 1280 px, the last column inside the table.
    let wide = &report["layout1280"];
    assert!(
        wide["scrollWidth"].as_u64() <= wide["clientWidth"].as_u64() && wide["tableFits"] == true,
        "at 1280 px: {wide}"
    );
    assert_eq!(report["admissionShown"], true, "{report}");
    assert_eq!(report["admissionPlugin"], "rate-limit", "{report}");
    let samples = report["limitedSamples"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        samples.iter().any(|v| v != "0" && v != "—"),
        "limited requests per second never shown above 0: {samples:?}"
    );
    assert!(ok > 0, "the client loop got no answer");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    let new_reloads = report["newReloads"].as_array().cloned().unwrap_or_default();
    assert!(
        new_reloads
            .iter()
            .any(|r| r["kind"] == "plugin" && r["result"] == "ok"),
        "the log shows no successful plugin reload: {new_reloads:?}"
    );
    assert_eq!(report["strategy"], "round-robin", "strategy shown");
    // The reference round robin names itself; the test strategy swapped in
    // over its file declares nothing.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        report["algorithmBefore"],
        format!("round-robin@{version}"),
        "algorithm shown before the swap"
    );
    assert_eq!(report["algorithm"], "not declared", "algorithm shown after");
    // Both split bars: one segment and one legend line per backend that
    // took picks, named as the backend rows are.
    let backends = report["backends"].as_array().cloned().unwrap_or_default();
    for (bar, least) in [("traffic-split", 3), ("shadow-split", 1)] {
        let split = &report["splits"][bar];
        let names = split["names"].as_array().cloned().unwrap_or_default();
        assert!(
            names.len() >= least && split["segments"].as_u64() == Some(names.len() as u64),
            "{bar}: {split}"
        );
        assert!(
            names.iter().all(|n| backends.contains(n)),
            "{bar} names {names:?}, backends {backends:?}"
        );
        assert!(
            split["shares"].as_array().is_some_and(|s| s
                .iter()
                .all(|p| p.as_str().is_some_and(|p| p.ends_with('%')))),
            "{bar}: {split}"
        );
    }
    // All the traffic comes from one address: the IP-hash shadow would have
    // sent all of it to one backend.
    assert!(
        report["splits"]["shadow-split"]["shares"]
            .as_array()
            .is_some_and(|s| s.iter().any(|p| p == "100%")),
        "shadow split: {}",
        report["splits"]["shadow-split"]
    );
    assert_eq!(
        report["hashChanged"], true,
        "the strategy hash shown did not change with the new plugin"
    );
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
}
