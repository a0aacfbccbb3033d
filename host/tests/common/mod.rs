//! Shared test fixtures: demo backends on 127.0.0.1:0, a proxy started from
//! a config written into a temporary directory whose `plugins/` holds real
//! components built from this repository, and a small HTTP client.

#![allow(dead_code)]

pub mod admin;
pub mod dns;
pub mod process;
pub mod raw;
pub mod scripted;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use switchyard::demo::DemoBackend;
use switchyard::{Config, Options, Proxy};
use tempfile::TempDir;

// Not every test binary reads the admin API.
#[allow(unused_imports)]
pub use admin::*;

/// Components built by `host/build.rs`.
pub const ROUND_ROBIN: &str = env!("SWITCHYARD_WASM_ROUND_ROBIN");
pub const LEAST_CONN: &str = env!("SWITCHYARD_WASM_LEAST_CONN");
pub const IP_HASH: &str = env!("SWITCHYARD_WASM_IP_HASH");
pub const TEST_STRATEGY: &str = env!("SWITCHYARD_WASM_TEST_STRATEGY");
pub const RATE_LIMIT: &str = env!("SWITCHYARD_WASM_RATE_LIMIT");
pub const API_KEY: &str = env!("SWITCHYARD_WASM_API_KEY");
pub const TEST_ADMISSION: &str = env!("SWITCHYARD_WASM_TEST_ADMISSION");

/// Starts `n` demo backends ("Hello from backend N", N from 1).
pub async fn backends(n: usize) -> Vec<DemoBackend> {
    let mut out = Vec::new();
    for i in 1..=n {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        out.push(
            switchyard::demo::spawn(addr, i)
                .await
                .expect("demo backend"),
        );
    }
    out
}

/// `["127.0.0.1:a", "127.0.0.1:b"]` as TOML.
pub fn servers_toml(backends: &[DemoBackend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!("[{}]", list.join(", "))
}

/// A temporary directory with `plugins/` (holding copies of the given
/// components under the given stems) and `switchyard.toml`.
pub struct Fixture {
    pub dir: TempDir,
}

impl Fixture {
    pub fn new(plugins: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("plugins")).expect("plugins dir");
        let fixture = Self { dir };
        for (stem, source) in plugins {
            fixture.install(stem, source);
        }
        fixture
    }

    pub fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("switchyard.toml")
    }

    /// Copies a component into `plugins/<stem>.wasm` the way `cp` does
    /// (in place, not atomically).
    pub fn install(&self, stem: &str, source: &str) {
        std::fs::copy(source, self.plugins().join(format!("{stem}.wasm"))).expect("copy plugin");
    }

    /// Writes raw bytes as `plugins/<stem>.wasm`.
    pub fn write_plugin(&self, stem: &str, bytes: &[u8]) {
        std::fs::write(self.plugins().join(format!("{stem}.wasm")), bytes).expect("write plugin");
    }

    /// Writes the config file; `body` is everything after `listen`,
    /// `admin` (both on free ports), `plugins` and, unless `body` sets
    /// `plugin-limits` itself, [`TEST_PICK_DEADLINE`].
    pub fn write_config(&self, body: &str) {
        let deadline = if body.contains("plugin-limits") {
            ""
        } else {
            TEST_PICK_DEADLINE
        };
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nplugins = {:?}\n{deadline}{body}",
            self.plugins().display().to_string()
        );
        std::fs::write(self.config_path(), text).expect("write config");
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path()).expect("valid config")
    }

    /// Starts a proxy from the config file, watching for changes.
    pub async fn start(&self) -> Proxy {
        Proxy::start(
            self.config(),
            Options {
                config_path: Some(self.config_path()),
                watch: true,
            },
        )
        .await
        .expect("proxy starts")
    }
}

/// The pick deadline of the proxies tests start from a [`Fixture`], unless
/// the config sets its own. With the 10 ms default, a worker descheduled
/// mid-pick on a busy 2-core CI machine (tens of test threads, plugin
/// compiles) misses the deadline and the host's round robin answers: that
/// moves a hashed client or breaks an exact order, and says nothing about
/// the plugin under test. Tests of the deadline set theirs (`failures.rs`).
pub const TEST_PICK_DEADLINE: &str = "plugin-limits.pick-deadline = \"1s\"\n";

/// Opens `n` connections to `addr` at once, as a load generator does.
pub async fn connect_all(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    futures_util::future::join_all((0..n).map(|_| tokio::net::TcpStream::connect(addr)))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("connect")
}

/// The config of one upstream `app` with the given strategy and servers.
pub fn upstream(strategy: &str, backends: &[DemoBackend], extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"app\"\nstrategy = \"{strategy}\"\nservers = {}\n{extra}\n",
        servers_toml(backends)
    )
}

/// Demo backends, the fixture holding the config and plugins, and the
/// proxy over them (the backends stop when dropped).
pub type Served = (Vec<DemoBackend>, Fixture, Proxy);

/// `n` demo backends and a proxy over them, its config made by `config`
/// from the backends, the watched `plugins` installed.
pub async fn serve_with(
    n: usize,
    plugins: &[(&str, &str)],
    config: impl FnOnce(&[DemoBackend]) -> String,
) -> Served {
    let be = backends(n).await;
    let fx = Fixture::new(plugins);
    fx.write_config(&config(&be));
    let proxy = fx.start().await;
    (be, fx, proxy)
}

/// Three demo backends behind upstream `app` with `strategy` (and `extra`
/// settings), the watched `plugins` installed.
pub async fn serve_three(plugins: &[(&str, &str)], strategy: &str, extra: &str) -> Served {
    serve_with(3, plugins, |be| upstream(strategy, be, extra)).await
}

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

/// A response as the tests look at it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: http::HeaderMap,
}

impl Reply {
    /// Reads `resp` to its end.
    pub async fn read(resp: http::Response<hyper::body::Incoming>) -> Result<Reply, String> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body failed: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            headers,
        })
    }

    /// N from "Hello from backend N", if the body is a demo greeting.
    pub fn backend(&self) -> Option<usize> {
        self.body
            .strip_prefix("Hello from backend ")?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

/// GET `path` through the proxy with extra headers; fails the test after
/// 10 s.
pub async fn get_with(
    client: &HttpClient,
    proxy: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut req = http::Request::builder().uri(format!("http://{proxy}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    reply_within(client, req).await
}

/// The reply to `req` from `client`, or why there is none; at most 10 s.
pub async fn reply_within<B>(
    client: &Client<HttpConnector, B>,
    req: http::Request<B>,
) -> Result<Reply, String>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        Reply::read(resp).await
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

/// Sends `method path` with `body` on a new connection; fails the test
/// after 10 s.
pub async fn send(proxy: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let fut = async {
        let resp = client.request(req).await.expect("request failed");
        Reply::read(resp).await.expect("body")
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("no answer within 10 s")
}

pub async fn get(client: &HttpClient, proxy: SocketAddr, path: &str) -> Reply {
    get_with(client, proxy, path, &[]).await.expect("request")
}

/// An address nothing listens on.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// How many responses each backend served.
pub fn tally(replies: &[Reply]) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for r in replies {
        if let Some(b) = r.backend() {
            *counts.entry(b).or_insert(0) += 1;
        }
    }
    counts
}

/// Polls `check` every 20 ms until it returns true or `limit` passes;
/// returns how long it took.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Installs what a test needs beyond rustup when it is missing, with the
/// script CI runs too (`.ci/setup compose|browser|node`); the test fails
/// with the script's message when it cannot.
pub fn setup(what: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/setup");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg(what)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "`.ci/setup {what}` could not provide what this test needs ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
