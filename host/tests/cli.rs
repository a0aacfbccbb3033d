//! The `switchyard` binary as a user runs it: `check` accepts the shipped
//! example and rejects broken files with a message naming the key.

use std::path::Path;
use std::process::Command;

fn switchyard(args: &[&str]) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(root)
        .env("RUST_LOG", "error")
        .output()
        .expect("run switchyard");
    outcome(&out)
}

/// Whether a finished run succeeded, and all it printed.
fn outcome(out: &std::process::Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_accepts_the_example_config() {
    let (ok, out) = switchyard(&["check", "--config", "examples/switchyard.toml"]);
    assert!(ok, "{out}");
    assert!(out.contains("configuration OK"), "{out}");
}

#[test]
fn check_accepts_the_compose_config_whose_names_do_not_resolve_here() {
    // Its plugins directory exists only in the container (as `run` needs
    // it, so does `check`): the copy checked here names an empty one, where
    // the built-in reference strategies stand in. `backend` resolves only
    // in compose.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("examples/compose/switchyard.toml"))
        .expect("compose config");
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = format!("plugins = {:?}", dir.path().display().to_string());
    let text = text.replace("plugins = \"/etc/switchyard/plugins\"", &plugins);
    assert!(
        text.contains(&plugins),
        "the compose config names its plugins"
    );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).expect("write");
    let (ok, out) = switchyard(&["check", "--config", &path.display().to_string()]);
    assert!(ok, "{out}");
    assert!(out.contains("`backend:8000`"), "{out}");
    assert!(out.contains("configuration OK"), "{out}");
}

#[test]
fn check_says_what_each_upstream_admits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let path = dir.path().join("limits.toml");
    let text = format!(
        "plugins = {:?}\ndeny = [\"192.0.2.0/24\"]\n\
         [[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n\
         limit-req = {{ rate = \"600r/m\", burst = 5, key = \"header:X-Api-Key\", dry-run = true }}\n\
         limit-conn = {{ max = 10 }}\n",
        plugins.display().to_string()
    );
    std::fs::write(&path, text).expect("write");
    let (ok, out) = switchyard(&["check", "--config", &path.display().to_string()]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "deny 1, limit-req 600/m burst 5 by header:x-api-key (dry run), limit-conn 10 by client-ip"
        ),
        "{out}"
    );
}

#[test]
fn check_rejects_bad_files_naming_the_key_and_the_expected_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let cases = [
        ("plugin = \"x\"\n", "unknown key `plugin`"),
        (
            "listen = \"nowhere\"\n[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n",
            "`listen`",
        ),
        (
            "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\", { address = \"127.0.0.1:2\", weight = -1 }]\n",
            "weight",
        ),
        (
            "[[upstream]]\nname = \"a\"\nstrategy = \"nope\"\nservers = [\"127.0.0.1:1\"]\n",
            "nope.wasm",
        ),
        (
            "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\nhealth-check = { interval = \"100000000y\" }\n",
            "`upstream[0].health-check.interval`: must be at most a year",
        ),
        (
            "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\nhealth-check = { timeout = \"500000000000y\" }\n",
            "`upstream[0].health-check.timeout`: must be at most a year",
        ),
        (
            "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\nlimit-req = { rate = \"10/d\" }\n",
            "`upstream[0].limit-req.rate`: `10/d` is not a rate",
        ),
        (
            "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\nadmission = \"no-such-gate\"\n",
            "no-such-gate.wasm",
        ),
        (
            "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\nadmission = \"round-robin\"\n",
            "switchyard:balancer/admission",
        ),
    ];
    for (i, (body, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        let text = format!("plugins = {:?}\n{body}", plugins.display().to_string());
        std::fs::write(&path, text).expect("write");
        let (ok, out) = switchyard(&["check", "--config", &path.display().to_string()]);
        assert!(!ok, "must fail: {body}");
        assert!(out.contains(needle), "expected `{needle}` in: {out}");
        assert!(
            out.contains(&format!("bad{i}.toml")),
            "names the file: {out}"
        );
    }
}

mod common;

use std::time::Duration;

use common::process::Running;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_config_and_plugins_when_files_are_not_watched() {
    let be = backends(3).await;
    let fx = Fixture::new(&[
        ("round-robin", ROUND_ROBIN),
        ("test-strategy", TEST_STRATEGY),
    ]);
    fx.write_config(&upstream("round-robin", &be, ""));
    let proxy = Running::start(&fx, &["--no-watch"]);
    let client = client();
    let three = |client: HttpClient, addr| async move {
        let mut replies = Vec::new();
        for _ in 0..3 {
            replies.push(get(&client, addr, "/").await);
        }
        tally(&replies)
    };
    assert_eq!(three(client.clone(), proxy.addr).await.len(), 3);

    fx.write_config(&upstream("test-strategy", &be, "params = { index = 2 }"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        three(client.clone(), proxy.addr).await.len(),
        3,
        "not watched: nothing changes yet"
    );

    proxy.signal("HUP");
    let switched = eventually(Duration::from_secs(3), || {
        let (client, addr) = (client.clone(), proxy.addr);
        async move {
            three(client, addr)
                .await
                .keys()
                .copied()
                .collect::<Vec<_>>()
                == vec![3]
        }
    })
    .await;
    assert!(switched.is_some(), "SIGHUP must apply the edited config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_one_access_line_per_request() {
    let be = backends(2).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "access-log = true\n{}",
        upstream("round-robin", &be, "")
    ));
    let proxy = Running::start(&fx, &["--log-format", "json"]);
    let client = client();
    for path in ["/a", "/b?x=1", "/delay/10"] {
        assert_eq!(get(&client, proxy.addr, path).await.status, 200);
    }
    let access = || -> Vec<serde_json::Value> {
        proxy
            .lines
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .collect()
    };
    let logged = eventually(Duration::from_secs(3), || {
        let n = access().len();
        async move { n == 3 }
    })
    .await;
    assert!(logged.is_some(), "{:?}", access());
    let lines = access();
    let backends: Vec<String> = be.iter().map(|b| b.addr.to_string()).collect();
    for (line, path) in lines.iter().zip(["/a", "/b?x=1", "/delay/10"]) {
        let f = &line["fields"];
        assert_eq!(f["method"], "GET", "{line}");
        assert_eq!(f["path"], path, "{line}");
        assert_eq!(f["status"], 200, "{line}");
        assert_eq!(f["upstream"], "app", "{line}");
        assert_eq!(f["client"], "127.0.0.1", "{line}");
        assert_eq!(f["retries"], 0, "{line}");
        assert_eq!(f["complete"], true, "{line}");
        assert!(
            backends.iter().any(|b| f["backend"] == b.as_str()),
            "{line}"
        );
        assert!(
            f["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
            "{line}"
        );
    }
    let slow = lines[2]["fields"]["duration_ms"].as_f64().unwrap_or(0.0);
    assert!(slow >= 10.0, "the duration covers the response: {slow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_in_flight_requests() {
    let be = backends(1).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&upstream("round-robin", &be, ""));
    let mut proxy = Running::start(&fx, &[]);
    let addr = proxy.addr;
    let slow = tokio::spawn(async move { get(&client(), addr, "/delay/1000").await });
    let admin = proxy.admin.expect("the admin API is on");
    wait_status_at(
        admin,
        Duration::from_secs(5),
        "the slow request reaches the backend",
        |s| s.in_flight(0) == [1],
    )
    .await;

    proxy.signal("TERM");
    wait_for(
        Duration::from_secs(5),
        "the listener closes on SIGTERM",
        || async {
            match tokio::net::TcpStream::connect(addr).await {
                Err(_) => Ok(()),
                Ok(_) => Err("a new connection was accepted".to_owned()),
            }
        },
    )
    .await;
    assert!(
        !slow.is_finished(),
        "no new connections while draining: the listener closed only after the drain"
    );
    let r = slow.await.expect("slow request");
    assert_eq!(r.status, 200, "the in-flight request finished: {r:?}");
    assert!(r.body.contains("after 1000 ms"));
    assert_eq!(
        r.headers
            .get("connection")
            .map(|v| v.to_str().unwrap_or("")),
        Some("close"),
        "the keep-alive client is told to go: {:?}",
        r.headers
    );
    let status = proxy
        .wait(Duration::from_secs(5))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
}

/// The admin address `run` logged when it started serving.
async fn admin_of(proxy: &Running) -> std::net::SocketAddr {
    let find = || {
        proxy.lines.lock().expect("lock").iter().find_map(|l| {
            l.split("admin=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    };
    eventually(Duration::from_secs(5), || {
        let found = find().is_some();
        async move { found }
    })
    .await
    .expect("run logs its admin address");
    find().expect("admin address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_shadow_plugin_files_too() {
    let be = backends(2).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN), ("shadowed", IP_HASH)]);
    fx.write_config(&upstream("round-robin", &be, "shadow = \"shadowed\""));
    let proxy = Running::start(&fx, &["--no-watch"]);
    let admin = admin_of(&proxy).await;
    let client = client();
    let status = |client: HttpClient| async move {
        let r = get(&client, admin, "/status").await;
        assert_eq!(r.status, 200, "{r:?}");
        serde_json::from_str::<serde_json::Value>(&r.body).expect("status is JSON")
    };
    let shadow_hash = |s: &serde_json::Value| s["upstreams"][0]["shadow"]["hash"].clone();
    let before = shadow_hash(&status(client.clone()).await);
    assert!(before.is_string(), "the shadow is loaded: {before}");

    // A different build in place of the shadow's file; not watched.
    fx.install("shadowed", LEAST_CONN);
    proxy.signal("HUP");
    let shadow_reload = |s: &serde_json::Value| {
        s["reloads"].as_array().and_then(|reloads| {
            reloads
                .iter()
                .find(|r| {
                    r["kind"] == "plugin"
                        && r["target"]
                            .as_str()
                            .is_some_and(|t| t.ends_with("shadowed.wasm"))
                })
                .cloned()
        })
    };
    // The new build is swapped in, then its reload recorded: both are
    // waited for.
    let reloaded = eventually(Duration::from_secs(5), || {
        let (client, before) = (client.clone(), before.clone());
        async move {
            let s = status(client).await;
            shadow_hash(&s) != before && shadow_reload(&s).is_some()
        }
    })
    .await;
    let s = status(client.clone()).await;
    assert!(
        reloaded.is_some(),
        "SIGHUP must reload the shadow's plugin file and record it: {}",
        s["upstreams"][0]["shadow"]
    );
    let record = shadow_reload(&s).expect("the reload is in the history");
    assert_eq!(record["result"], "ok", "{record}");
    assert_eq!(
        record["upstreams"],
        serde_json::json!(["app (shadow)"]),
        "{record}"
    );
    // Requests are still served by the live strategy.
    assert_eq!(get(&client, proxy.addr, "/").await.status, 200);
}

/// `switchyard run --config <path>` when it refuses to start: its exit
/// status and what it printed. Fails the test if it is still running after
/// 20 s.
fn run_refused(path: &Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(path)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start switchyard");
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`run` started with {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    outcome(&child.wait_with_output().expect("output"))
}

/// `check` passes exactly what `run` accepts: a plugins directory that does
/// not exist (only reference strategies, which have built-in copies) makes
/// both fail, naming the directory.
#[test]
fn check_and_run_refuse_a_plugins_directory_that_does_not_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-plugins");
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"off\"\nplugins = {:?}\n\
             [[upstream]]\nname = \"a\"\nstrategy = \"round-robin\"\nservers = [\"127.0.0.1:1\"]\n",
            missing.display().to_string()
        ),
    )
    .expect("write");
    let shown = missing.display().to_string();
    let (ok, out) = switchyard(&["check", "--config", &path.display().to_string()]);
    assert!(!ok, "`check` must fail: {out}");
    assert!(
        out.contains(&shown) && out.contains("plugins directory"),
        "names the directory: {out}"
    );
    let (ok, out) = run_refused(&path);
    assert!(!ok, "`run` must refuse it too: {out}");
    assert!(out.contains(&shown), "names the directory: {out}");
}

/// What `switchyard check -c <dir>/switchyard.toml` prints on stderr for
/// `text`, whose `{plugins}` stands for a plugins directory in the same
/// temp dir holding (empty, never compiled) files `plugin_files`; the temp
/// dir is shown as `<dir>`. Fails the test if `check` accepts it.
fn check_refuses(text: &str, plugin_files: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).expect("plugins dir");
    for name in plugin_files {
        std::fs::write(plugins.join(name), b"").expect("plugin file");
    }
    let path = dir.path().join("switchyard.toml");
    let text = text.replace("{plugins}", &plugins.display().to_string());
    std::fs::write(&path, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .env("RUST_LOG", "error")
        .output()
        .expect("run switchyard");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "must fail: {stderr}");
    stderr.replace(&dir.path().display().to_string(), "<dir>")
}

/// A new user's broken files: each whole message, word for word. Every one
/// names the file, the line and column, the key, and what is accepted.
#[test]
fn check_explains_broken_files_in_words_at_their_line() {
    let top = "plugins = \"{plugins}\"\n\n[[upstream]]\nname = \"app\"\n";
    let servers = "servers = [\"127.0.0.1:5001\"]\n";
    let cases: Vec<(String, &[&str], &str)> = vec![
        (
            format!("{top}strategy = \"least-con\"\n{servers}"),
            &["least-conn.wasm", "my-strategy.wasm", "notes.txt"],
            "error: <dir>/switchyard.toml:5:12: upstream `app`: strategy `least-con`: no plugin file <dir>/plugins/least-con.wasm; did you mean `least-conn`?
  plugins in <dir>/plugins: `least-conn`, `my-strategy`
  built in (served when no file of that name exists): `round-robin`, `least-conn`, `ip-hash`
  |
5 | strategy = \"least-con\"
  |            ^^^^^^^^^^^
",
        ),
        (
            format!("{top}{servers}admission = \"rate-limt\"\n"),
            &["rate-limit.wasm"],
            "error: <dir>/switchyard.toml:6:13: upstream `app`: admission `rate-limt`: no plugin file <dir>/plugins/rate-limt.wasm; did you mean `rate-limit`?
  plugins in <dir>/plugins: `rate-limit`
  |
6 | admission = \"rate-limt\"
  |             ^^^^^^^^^^^
",
        ),
        (
            format!("{top}{servers}shadow = \"ip-hsh\"\n"),
            &[],
            "error: <dir>/switchyard.toml:6:10: upstream `app`: shadow `ip-hsh`: no plugin file <dir>/plugins/ip-hsh.wasm; did you mean `ip-hash`?
  <dir>/plugins has no .wasm plugins
  built in (served when no file of that name exists): `round-robin`, `least-conn`, `ip-hash`
  |
6 | shadow = \"ip-hsh\"
  |          ^^^^^^^^
",
        ),
        (
            format!("{top}{servers}connect-timeout = \"soon\"\n"),
            &[],
            "error: <dir>/switchyard.toml:6:19: `upstream[0].connect-timeout`: expected a duration in quotes, e.g. \"5s\", \"250ms\" or \"1m 30s\" (units: ms, s, m, h, d), found \"soon\"
  |
6 | connect-timeout = \"soon\"
  |                   ^^^^^^
",
        ),
        (
            format!("{top}servers = [{{ address = \"127.0.0.1:5001\", weight = \"3\" }}]\n"),
            &[],
            "error: <dir>/switchyard.toml:5:51: `upstream[0].servers[0].weight`: expected a whole number from 0 to 4294967295, found \"3\"
  |
5 | servers = [{ address = \"127.0.0.1:5001\", weight = \"3\" }]
  |                                                   ^^^
",
        ),
        (
            format!("access-log = \"yes\"\n{top}{servers}"),
            &[],
            "error: <dir>/switchyard.toml:1:14: `access-log`: expected true or false, found \"yes\"
  |
1 | access-log = \"yes\"
  |              ^^^^^
",
        ),
        (
            format!("{top}{servers}\n[client]\nmax-body-size = \"10mb\"\n"),
            &[],
            "error: <dir>/switchyard.toml:8:17: `client.max-body-size`: \"10mb\" is not a size (expected a whole number of bytes, or a number with k, m or g in quotes, e.g. \"512k\", \"10m\", \"1g\"; 0 for no limit)
  |
8 | max-body-size = \"10mb\"
  |                 ^^^^^^
",
        ),
        (
            format!("{top}{servers}limit-req = {{ rate = \"10/d\" }}\n"),
            &[],
            "error: <dir>/switchyard.toml:6:22: `upstream[0].limit-req.rate`: `10/d` is not a rate (expected requests per second, minute or hour, 1 to 1000000: e.g. \"10/s\", \"600r/m\")
  |
6 | limit-req = { rate = \"10/d\" }
  |                      ^^^^^^
",
        ),
        (
            format!("trusted-proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n{top}{servers}"),
            &[],
            "error: <dir>/switchyard.toml:1:34: `trusted-proxies[1]`: `10.0.0.0/33` is not an IP address or CIDR (expected e.g. \"10.0.0.0/8\" or \"127.0.0.1\")
  |
1 | trusted-proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]
  |                                  ^^^^^^^^^^^^^
",
        ),
        (
            format!("{top}{servers}retries = 11\n"),
            &[],
            "error: <dir>/switchyard.toml:6:11: `upstream[0].retries`: 11 is too many (expected 0 to 10: tries after the first)
  |
6 | retries = 11
  |           ^^
",
        ),
        (
            format!("{top}servers = [\"127.0.0.1:5001\", \"127.0.0.1\"]\n"),
            &[],
            "error: <dir>/switchyard.toml:5:30: `upstream[0].servers[1]`: `127.0.0.1` has no port (expected \"ip:port\" or \"hostname:port\", e.g. \"127.0.0.1:5001\")
  |
5 | servers = [\"127.0.0.1:5001\", \"127.0.0.1\"]
  |                              ^^^^^^^^^^^
",
        ),
        (
            format!("{top}{servers}helth-check = {{}}\n"),
            &[],
            "error: <dir>/switchyard.toml:6:1: `upstream[0].helth-check`: unknown key `helth-check`; did you mean `health-check`? (expected one of `name`, `strategy`, `shadow`, `shadow-params`, `admission`, `admission-params`, `params`, `servers`, `resolve-interval`, `hosts`, `path-prefix`, `connect-timeout`, `response-timeout`, `read-timeout`, `idle-timeout`, `tunnel-idle-timeout`, `keepalive`, `retries`, `retry-on-status`, `retry-budget-percent`, `retry-budget-min`, `max-fails`, `fail-timeout`, `health-check`, `plugin-failure`, `backend-header`, `allow`, `deny`, `limit-req`, `limit-conn`, `limit-keys`)
  |
6 | helth-check = {}
  | ^^^^^^^^^^^
",
        ),
        (
            "plugins = \"{plugins}\"\n\n[upstream]\nname = \"app\"\nservers = [\"127.0.0.1:5001\"]\n".to_owned(),
            &[],
            "error: <dir>/switchyard.toml:3:1: `upstream`: each upstream is written `[[upstream]]`, with two brackets (an entry of the list of upstreams)
  |
3 | [upstream]
  | ^^^^^^^^^^
",
        ),
        (
            format!("listen = \"127.0.0.1:9090\"\n{top}{servers}"),
            &[],
            "error: <dir>/switchyard.toml:1:10: `listen`: 127.0.0.1:9090 is where the admin API listens by default (`admin`); choose another address, or set `admin` to another one or to \"off\"
  |
1 | listen = \"127.0.0.1:9090\"
  |          ^^^^^^^^^^^^^^^^
",
        ),
        (
            format!("{top}{servers}plugin-failure = 5\n"),
            &[],
            "error: <dir>/switchyard.toml:6:18: `upstream[0].plugin-failure`: expected a name in quotes
  |
6 | plugin-failure = 5
  |                  ^
",
        ),
        (
            format!("{top}{servers}\n[[upstream]]\nname = \"api\"\n{servers}"),
            &[],
            "error: <dir>/switchyard.toml:7:1: `upstream[1]`: routes the same hosts and path-prefix `/` as upstream[0] (`app`); one of them would never be used
  |
7 | [[upstream]]
  | ^^^^^^^^^^^^
",
        ),
        (
            format!("{top}{servers}\n[tls]\ncert = \"missing.pem\"\nkey = \"missing-key.pem\"\n"),
            &[],
            "error: <dir>/switchyard.toml:8:8: `tls.cert`: cannot read missing.pem: No such file or directory (os error 2)
  |
8 | cert = \"missing.pem\"
  |        ^^^^^^^^^^^^^
",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, files, expected) in &cases {
        let got = check_refuses(text, files);
        if got != *expected {
            wrong.push(format!(
                "--- for:\n{text}--- expected:\n{expected}--- got:\n{got}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `switchyard <args>` run in `dir`: exit status, stdout and stderr. Fails
/// the test if it is still running after 20 s.
fn run_in(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start switchyard");
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`switchyard {}` did not exit", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Without `-c`, `run` and `check` read /etc/switchyard/switchyard.toml,
/// else ./switchyard.toml; with neither they say where they looked. (The
/// system file comes first: on a machine that has one, this test has
/// nothing to show.)
#[test]
fn run_and_check_without_c_read_switchyard_toml_in_the_working_directory() {
    if Path::new("/etc/switchyard/switchyard.toml").exists() {
        eprintln!("skipped: /etc/switchyard/switchyard.toml exists and would be read first");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for command in ["check", "run"] {
        let (ok, _, stderr) = run_in(dir.path(), &[command]);
        assert!(!ok, "{command} without a config must fail");
        assert_eq!(
            stderr,
            "error: no config file: neither /etc/switchyard/switchyard.toml nor ./switchyard.toml exists; name one with `-c <file>` (e.g. `switchyard check -c examples/switchyard.toml`)\n",
            "{command}"
        );
    }
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let config = |strategy: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"off\"\nplugins = {:?}\n\n[[upstream]]\nname = \"app\"\nstrategy = \"{strategy}\"\nservers = [\"127.0.0.1:5001\"]\n",
            plugins.display().to_string()
        )
    };
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config("round-robin")).expect("write");
    let (ok, stdout, stderr) = run_in(dir.path(), &["check"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        "switchyard.toml: configuration OK; upstreams: app (1 servers, strategy round-robin)\n"
    );
    // `run` reads it too: a strategy it cannot find stops it at once.
    std::fs::write(&path, config("no-such-strategy")).expect("write");
    let (ok, _, stderr) = run_in(dir.path(), &["run"]);
    assert!(!ok, "run must refuse it");
    assert!(
        stderr.starts_with("error: switchyard.toml:7:12: upstream `app`: strategy `no-such-strategy`: no plugin file "),
        "{stderr}"
    );
    // `-c` still wins.
    let (ok, _, stderr) = run_in(dir.path(), &["check", "-c", "elsewhere.toml"]);
    assert!(!ok);
    assert_eq!(
        stderr,
        "error: cannot read elsewhere.toml: No such file or directory (os error 2)\n"
    );
}

/// A missing certificate is said once, by `run` as by `check`.
#[test]
fn run_says_a_missing_certificate_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let path = dir.path().join("tls.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"off\"\nplugins = {:?}\n\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:5001\"]\n\n[tls]\nlisten = \"127.0.0.1:0\"\ncert = \"missing.pem\"\nkey = \"missing-key.pem\"\n",
            plugins.display().to_string()
        ),
    )
    .expect("write");
    let (ok, stdout, stderr) = run_in(dir.path(), &["run", "-c", "tls.toml"]);
    assert!(!ok, "run must refuse it");
    assert_eq!(
        format!("{stdout}{stderr}"),
        "error: tls.toml:11:8: `tls.cert`: cannot read missing.pem: No such file or directory (os error 2)
   |
11 | cert = \"missing.pem\"
   |        ^^^^^^^^^^^^^
"
    );
}

/// A host name that does not resolve is a warning in words: which name,
/// what went wrong, what `run` does about it.
#[test]
fn check_warns_in_words_about_a_name_that_does_not_resolve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let path = dir.path().join("dns.toml");
    std::fs::write(
        &path,
        format!(
            "plugins = {:?}\n\n[[upstream]]\nname = \"app\"\nservers = [\"no-such-host.invalid:80\"]\n",
            plugins.display().to_string()
        ),
    )
    .expect("write");
    let (ok, stdout, stderr) = run_in(dir.path(), &["check", "-c", "dns.toml"]);
    assert!(
        ok,
        "a name that does not resolve yet is not an error: {stderr}"
    );
    let mut lines = stdout.lines();
    let warning = lines.next().unwrap_or_default();
    // What DNS says here depends on the machine (no such name, no answer).
    let said = warning
        .strip_prefix("warning: upstream `app`: `no-such-host.invalid:80` does not resolve: ")
        .and_then(|w| {
            w.strip_suffix(
                "; `run` starts without it and looks it up again every 5s (resolve-interval)",
            )
        });
    assert!(
        said.is_some_and(|s| !s.contains(['{', '(']) || s.contains("os error")),
        "{stdout}"
    );
    assert_eq!(
        lines.next(),
        Some("dns.toml: configuration OK; upstreams: app (1 servers, strategy round-robin)")
    );
}
