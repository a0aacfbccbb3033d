//! The admin listener against a known request mix: `/status` and
//! `/metrics` give the numbers the traffic implies, `/events` streams
//! status, per-second stats and reloads.

mod common;

use std::time::{Duration, Instant};

use common::scripted::{Act, Scripted};
use common::*;
use http_body_util::BodyExt;
use serde_json::Value;

/// Two demo backends and one that answers 500, round robin.
async fn mixed() -> (
    Vec<switchyard::demo::DemoBackend>,
    Scripted,
    Fixture,
    switchyard::Proxy,
) {
    let be = backends(2).await;
    let failing = Scripted::start(3, true, |_| false, |_| Act::Status(500)).await;
    let fx = Fixture::new(&[
        ("round-robin", ROUND_ROBIN),
        ("test-strategy", TEST_STRATEGY),
    ]);
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{}\", \"{}\", \"{}\"]\nmax-fails = 0\n",
        be[0].addr, be[1].addr, failing.addr
    ));
    let proxy = fx.start().await;
    (be, failing, fx, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_a_known_request_mix() {
    let (be, failing, _fx, proxy) = mixed().await;
    let client = client();
    let mut codes = Vec::new();
    for _ in 0..30 {
        codes.push(get(&client, proxy.addr(), "/").await.status);
    }
    assert_eq!(codes.iter().filter(|c| **c == 500).count(), 10);

    let s = status(&proxy).await;
    let app = &s["upstreams"][0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["strategy"]["name"], "round-robin");
    assert_eq!(app["strategy"]["builtin"], true, "the reference build");
    assert_eq!(app["strategy"]["picks"], 30);
    assert_eq!(app["requests"], 30);
    assert_eq!(app["retries"], 0);
    let backends = app["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 3);
    for (i, addr) in [be[0].addr, be[1].addr, failing.addr].iter().enumerate() {
        let b = &backends[i];
        assert_eq!(b["address"], addr.to_string());
        assert_eq!(b["requests"], 10);
        assert_eq!(b["in_flight"], 0);
        assert_eq!(b["healthy"], true);
        assert_eq!(b["health"]["active"], "off");
        let share = b["share"].as_f64().expect("share");
        assert!((share - 1.0 / 3.0).abs() < 1e-9, "{share}");
        let (ok, errors) = if i < 2 { (10, 0) } else { (0, 10) };
        assert_eq!(b["responses"]["2xx"], ok, "{b}");
        assert_eq!(b["responses"]["5xx"], errors, "{b}");
    }

    // Latency quantiles appear once the sampler has seen the traffic.
    let sampled = eventually(Duration::from_secs(4), || async {
        status(&proxy).await["upstreams"][0]["backends"][0]["latency_ms"]["p99"].is_number()
    })
    .await;
    assert!(sampled.is_some(), "p50/p99 over the recent window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_the_same_numbers() {
    let (be, failing, _fx, proxy) = mixed().await;
    let client = client();
    for _ in 0..30 {
        get(&client, proxy.addr(), "/").await;
    }
    let r = admin_get(&proxy, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        r.headers
    );
    let m = &r.body;
    assert!(m.trim_end().ends_with("# EOF"), "a complete exposition");
    let b1 = format!("upstream=\"app\",backend=\"{}\"", be[0].addr);
    let b3 = format!("upstream=\"app\",backend=\"{}\"", failing.addr);
    assert_eq!(
        sample(m, &format!("switchyard_requests_total{{{b1}}}")),
        Some(10.0),
        "{m}"
    );
    assert_eq!(
        sample(
            m,
            &format!("switchyard_responses_total{{{b1},class=\"2xx\"}}")
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(
            m,
            &format!("switchyard_responses_total{{{b3},class=\"5xx\"}}")
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(
            m,
            &format!("switchyard_upstream_response_seconds_count{{{b1}}}")
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(
            m,
            &format!("switchyard_upstream_response_seconds_bucket{{le=\"+Inf\",{b1}}}")
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(m, &format!("switchyard_backend_up{{{b1}}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(m, &format!("switchyard_backend_in_flight{{{b1}}}")),
        Some(0.0)
    );
    assert_eq!(
        sample(
            m,
            "switchyard_plugin_picks_total{upstream=\"app\",plugin=\"round-robin\"}"
        ),
        Some(30.0)
    );
    assert_eq!(
        sample(
            m,
            "switchyard_plugin_pick_seconds_count{upstream=\"app\",plugin=\"round-robin\"}"
        ),
        Some(30.0)
    );
    assert_eq!(
        sample(
            m,
            "switchyard_plugin_failures_total{upstream=\"app\",plugin=\"round-robin\",kind=\"trap\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(m, "switchyard_retries_total{upstream=\"app\"}"),
        Some(0.0)
    );
}

/// Reads Server-Sent Events from `/events`.
struct Events {
    body: hyper::body::Incoming,
    buffer: String,
}

impl Events {
    async fn connect(proxy: &switchyard::Proxy) -> Events {
        let admin = proxy.admin_addr().expect("admin is on");
        let req = http::Request::get(format!("http://{admin}/events"))
            .body(http_body_util::Empty::new())
            .expect("request");
        let resp = client().request(req).await.expect("events");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Events {
            body: resp.into_body(),
            buffer: String::new(),
        }
    }

    /// The next event (name, data), within `limit`.
    async fn next(&mut self, limit: Duration) -> Option<(String, Value)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                let name = raw
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))?
                    .to_owned();
                let data = raw.lines().find_map(|l| l.strip_prefix("data: "))?;
                return Some((name, serde_json::from_str(data).ok()?));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let frame = tokio::time::timeout(left, self.body.frame())
                .await
                .ok()??
                .ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    /// Skips events until one named `name` arrives.
    async fn until(&mut self, name: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_default();
            match self.next(left).await {
                Some((n, data)) if n == name => return data,
                Some(_) => continue,
                None => panic!("no `{name}` event within {limit:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_status_stats_and_reloads() {
    let (_be, _failing, fx, proxy) = mixed().await;
    let mut events = Events::connect(&proxy).await;
    let (name, first) = events
        .next(Duration::from_secs(2))
        .await
        .expect("first event");
    assert_eq!(name, "status");
    assert_eq!(first["upstreams"][0]["strategy"]["name"], "round-robin");

    // Traffic shows up in the per-second stats.
    let client = client();
    for _ in 0..30 {
        get(&client, proxy.addr(), "/").await;
    }
    let mut seen = false;
    for _ in 0..4 {
        let s = events.until("stats", Duration::from_secs(3)).await;
        let b = &s["upstreams"][0]["backends"][0];
        if b["requests"] == 10 && s["upstreams"][0]["rps"].as_f64().is_some() {
            seen = true;
            break;
        }
    }
    assert!(seen, "stats events carry the live counters");

    // A plugin swap is announced, then a fresh status follows.
    fx.install("round-robin", TEST_STRATEGY);
    let reload = events.until("reload", Duration::from_secs(5)).await;
    assert_eq!(reload["kind"], "plugin");
    assert_eq!(reload["result"], "ok");
    assert!(
        reload["target"]
            .as_str()
            .is_some_and(|t| t.ends_with("round-robin.wasm"))
    );
    assert_eq!(reload["upstreams"][0], "app");
    let after = events.until("status", Duration::from_secs(2)).await;
    let hash = after["upstreams"][0]["strategy"]["hash"]
        .as_str()
        .map(str::to_owned);
    assert_ne!(
        hash,
        first["upstreams"][0]["strategy"]["hash"]
            .as_str()
            .map(str::to_owned)
    );
    assert_eq!(after["upstreams"][0]["strategy"]["builtin"], false);

    // A broken file is announced as an error; the reload appears in /status.
    fx.write_plugin("round-robin", b"not wasm at all");
    let bad = events.until("reload", Duration::from_secs(5)).await;
    assert_eq!(bad["result"], "error");
    assert!(bad["detail"].as_str().is_some_and(|d| !d.is_empty()));
    let s = status(&proxy).await;
    let results: Vec<&str> = s["reloads"]
        .as_array()
        .expect("reloads")
        .iter()
        .filter_map(|r| r["result"].as_str())
        .collect();
    assert!(
        results.len() >= 2 && results[0] == "ok" && results[1..].iter().all(|r| *r == "error"),
        "{results:?}"
    );
    let m = admin_get(&proxy, "/metrics").await.body;
    assert_eq!(
        sample(
            &m,
            "switchyard_reloads_total{kind=\"plugin\",result=\"ok\"}"
        ),
        Some(1.0)
    );
    // (A write that is not atomic may be seen twice: empty, then garbage.)
    let errors = sample(
        &m,
        "switchyard_reloads_total{kind=\"plugin\",result=\"error\"}",
    );
    assert!(errors.is_some_and(|n| n >= 1.0), "{errors:?}");
}

/// What a new user asks of the dashboard, over plain HTTP: the routes and
/// listeners in `/status`; why a backend is down and since when (a dead one,
/// taken out passively; one whose health check answers 503, actively); per
/// backend bytes, retries and connections in `/status` and `/metrics`; and
/// `/history`, the last seconds of every upstream and backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_history_say_what_a_new_user_asks() {
    let be = backends(2).await;
    let sick = Scripted::start(3, true, |_| false, |_| Act::Status(503)).await;
    let dead = closed_port();
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "[[upstream]]\nname = \"site\"\nhosts = [\"app.example\", \"*.app.example\"]\nservers = [\"{}\"]\n\
         [[upstream]]\nname = \"app\"\npath-prefix = \"/\"\n\
         servers = [\"{}\", \"{}\", \"{dead}\"]\nmax-fails = 1\nfail-timeout = \"60s\"\nretries = 2\n\
         [[upstream]]\nname = \"checked\"\npath-prefix = \"/checked\"\nservers = [\"{}\", \"{}\"]\nmax-fails = 0\n\
         [upstream.health-check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nfall = 1\nrise = 1\n",
        be[0].addr, be[0].addr, be[1].addr, be[0].addr, sick.addr
    ));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let proxy = fx.start().await;
    // Bodies both ways; the dead backend's refused connects are retried.
    for i in 0..12 {
        let r = send(proxy.addr(), "POST", "/", &format!("body number {i}")).await;
        assert_eq!(r.status, 200, "{r:?}");
    }

    let s = status(&proxy).await;
    assert_eq!(
        s["listeners"][0]["address"],
        proxy.addr().to_string(),
        "{s:?}"
    );
    assert_eq!(s["listeners"][0]["tls"], false, "{s:?}");
    assert_eq!(s["routes"][0]["upstream"], "site");
    assert_eq!(
        s["routes"][0]["hosts"],
        serde_json::json!(["app.example", "*.app.example"])
    );
    assert_eq!(s["routes"][1]["hosts"], serde_json::json!([]));
    assert_eq!(s["routes"][2]["path_prefix"], "/checked");
    let app = &s["upstreams"][1]["backends"];
    let down = &app[2];
    assert_eq!(down["healthy"], false, "{down}");
    assert_eq!(down["down"][0]["check"], "passive", "{down}");
    let reason = down["down"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("connect failed") && reason.contains("max-fails 1"),
        "{reason}"
    );
    let since = down["since_ms"].as_u64().unwrap_or_default();
    assert!(since >= before, "down since {since}, test began {before}");
    assert!(down["retried"].as_u64() >= Some(1), "{down}");
    for b in [&app[0], &app[1]] {
        assert_eq!(b["down"], serde_json::json!([]), "{b}");
        assert!(b["since_ms"].as_u64() >= Some(before), "up since: {b}");
        assert!(b["bytes_sent"].as_u64() >= Some(6 * 13), "{b}");
        assert!(b["bytes_received"].as_u64() > Some(0), "{b}");
        assert!(b["connections"]["opened"].as_u64() >= Some(1), "{b}");
        assert!(b["connections"]["idle"].is_u64(), "{b}");
    }

    // The health check of /checked finds the sick backend answering 503.
    let why = wait_for(Duration::from_secs(5), "the sick backend down", || async {
        let s = status(&proxy).await;
        let b = s["upstreams"][2]["backends"][1].clone();
        if b["healthy"] == false {
            Ok(b)
        } else {
            Err(b.to_string())
        }
    })
    .await;
    assert_eq!(why["down"][0]["check"], "active", "{why}");
    assert_eq!(
        why["down"][0]["reason"], "GET /healthz answered 503 Service Unavailable",
        "{why}"
    );

    let metrics = admin_get(&proxy, "/metrics").await.body;
    for name in [
        "switchyard_backend_sent_bytes_total",
        "switchyard_backend_received_bytes_total",
        "switchyard_backend_retries_total",
        "switchyard_backend_connections_opened_total",
        "switchyard_backend_connections_idle",
    ] {
        let nonzero = metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .any(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"));
        assert!(
            nonzero || name.ends_with("idle"),
            "{name} never above 0:\n{metrics}"
        );
        assert!(metrics.contains(name), "{name} missing");
    }

    // The history holds the seconds of the traffic above, per upstream and
    // per backend, and the dead backend as down.
    let h = wait_for(Duration::from_secs(5), "history with traffic", || async {
        let r = admin_get(&proxy, "/history").await;
        assert_eq!(r.status, 200, "{r:?}");
        let h: Value = serde_json::from_str(&r.body).expect("/history is JSON");
        let rps = h["upstreams"][1]["series"]["rps"].as_array().cloned();
        if rps.is_some_and(|r| r.iter().any(|v| v.as_f64() > Some(0.0))) {
            Ok(h)
        } else {
            Err(h.to_string())
        }
    })
    .await;
    assert_eq!(h["span_secs"], 900);
    let app = &h["upstreams"][1];
    assert_eq!(app["name"], "app");
    let t = app["series"]["t_ms"].as_array().expect("t_ms");
    assert_eq!(
        app["series"]["p99_ms"].as_array().map(Vec::len),
        Some(t.len())
    );
    assert!(app["series"]["responses"]["2xx"].is_array(), "{app}");
    let dead_hist = &app["backends"][2];
    assert_eq!(dead_hist["id"], dead.to_string());
    assert!(
        dead_hist["series"]["healthy"]
            .as_array()
            .is_some_and(|h| h.iter().any(|v| v == false)),
        "{dead_hist}"
    );

    // A config reload that keeps `app` and one of its backends (and drops
    // the rest) keeps their history; what was dropped is gone.
    let first = t.first().cloned();
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\npath-prefix = \"/\"\nservers = [\"{}\"]\nmax-fails = 0\n",
        be[0].addr
    ));
    wait_status(&proxy, Duration::from_secs(10), "the reload", |s| {
        s["upstreams"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    let r = admin_get(&proxy, "/history").await;
    let h: Value = serde_json::from_str(&r.body).expect("/history is JSON");
    assert_eq!(h["upstreams"].as_array().map(Vec::len), Some(1), "{h}");
    let app = &h["upstreams"][0];
    assert_eq!(app["series"]["t_ms"][0], first.unwrap_or_default(), "{app}");
    assert_eq!(app["backends"][0]["id"], be[0].addr.to_string());
    assert!(
        app["backends"][0]["series"]["rps"]
            .as_array()
            .is_some_and(|r| r.iter().any(|v| v.as_f64() > Some(0.0))),
        "the kept backend's history: {app}"
    );
}
