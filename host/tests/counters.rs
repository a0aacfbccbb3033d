//! An upstream's totals survive a config change that rebuilds it: the
//! retries and the answers the proxy made itself go on from where they
//! were in `/status` and `/metrics` (Prometheus would read a counter that
//! goes back to 0 as a restart).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

async fn admin(proxy: &switchyard::Proxy, path: &str) -> String {
    let admin = proxy.admin_addr().expect("admin is on");
    let reply = get(&client(), admin, path).await;
    assert_eq!(reply.status, 200, "{path}");
    reply.body
}

async fn status(proxy: &switchyard::Proxy) -> Value {
    serde_json::from_str(&admin(proxy, "/status").await).expect("status is JSON")
}

/// The value of the `/metrics` sample whose line starts with `prefix`.
async fn sample(proxy: &switchyard::Proxy, prefix: &str) -> Option<u64> {
    admin(proxy, "/metrics")
        .await
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// An address nothing listens on.
async fn dead_address() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr")
}

fn config(dead: std::net::SocketAddr, live: std::net::SocketAddr, keepalive: u32) -> String {
    format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{dead}\", \"{live}\"]\nmax-fails = 0\nkeepalive = {keepalive}\n\
         [[upstream]]\nname = \"gone\"\npath-prefix = \"/gone\"\nservers = [\"{dead}\"]\nretries = 0\nkeepalive = {keepalive}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_upstream_keeps_its_retries_and_local_answers() {
    let live = backends(1).await;
    let dead = dead_address().await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&config(dead, live[0].addr, 4));
    let proxy = fx.start().await;
    let client = client();
    // Requests that go to the dead backend first are retried on the live
    // one (round robin's picks, retries included, alternate: every request
    // here is retried once).
    for _ in 0..10 {
        assert_eq!(get(&client, proxy.addr(), "/").await.status, 200);
    }
    // No backend of `gone` answers: the proxy answers 502 itself.
    for _ in 0..3 {
        assert_eq!(get(&client, proxy.addr(), "/gone").await.status, 502);
    }
    let local = "switchyard_responses_total{upstream=\"gone\",backend=\"\",class=\"5xx\"}";
    let retries = |s: &Value| s["upstreams"][0]["retries"].as_u64();
    let before = status(&proxy).await;
    assert_eq!(retries(&before), Some(10), "{before}");
    assert_eq!(sample(&proxy, local).await, Some(3));

    // A config change that rebuilds both upstreams.
    fx.write_config(&config(dead, live[0].addr, 8));
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = status(&proxy).await;
        let applied = s["reloads"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["kind"] == "config" && r["result"] == "ok")
        });
        if applied {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the config change was not applied: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(retries(&after), Some(10), "{after}");
    assert_eq!(sample(&proxy, local).await, Some(3));
    // And they go on counting.
    assert_eq!(get(&client, proxy.addr(), "/gone").await.status, 502);
    assert_eq!(sample(&proxy, local).await, Some(4));
}
