//! Admission built in: `deny` / `allow` lists, `limit-req` and
//! `limit-conn`, through real sockets, as a client and an operator see
//! them (statuses, `Retry-After`, which backend saw what, `/status` and
//! `/metrics`).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

/// One upstream `app` over `backends` with `extra` settings, two workers,
/// and 127.0.0.1 trusted, so tests speak for other clients with
/// `X-Forwarded-For`.
fn config(backends: &[switchyard::demo::DemoBackend], top: &str, extra: &str) -> String {
    format!(
        "workers = 2\ntrusted-proxies = [\"127.0.0.1\"]\n{top}\n{}",
        upstream("round-robin", backends, extra)
    )
}

async fn start(top: &str, extra: &str) -> Served {
    serve_with(3, &[("round-robin", ROUND_ROBIN)], |be| {
        config(be, top, extra)
    })
    .await
}

/// GET `path` as client `ip` (through `X-Forwarded-For`).
async fn get_as(client: &HttpClient, proxy: &switchyard::Proxy, ip: &str, path: &str) -> Reply {
    get_with(client, proxy.addr(), path, &[("x-forwarded-for", ip)])
        .await
        .expect("a reply")
}

/// Requests the backends of upstream 0 have seen.
async fn served(proxy: &switchyard::Proxy) -> u64 {
    status(proxy).await.requests(0).iter().sum()
}

/// `/status`'s admission block of upstream 0.
async fn admission(proxy: &switchyard::Proxy) -> serde_json::Value {
    status(proxy).await.upstream(0)["admission"].clone()
}

/// HTTP/1.1 senders on `n` connections opened at once, spread over both
/// workers (the test waits until each worker holds at least one).
async fn senders(
    proxy: &switchyard::Proxy,
    n: usize,
) -> Vec<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let conns = connect_all(proxy.addr(), n).await;
    wait_connections(
        proxy,
        Duration::from_secs(5),
        "connections on both workers",
        |open| open.iter().sum::<usize>() == n && open.iter().all(|&c| c >= 1),
    )
    .await;
    let mut out = Vec::new();
    for tcp in conns {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        out.push(sender);
    }
    out
}

/// `per` requests as client `ip` on each of `senders`, all at once;
/// returns every reply.
async fn burst_on(
    senders: &mut [hyper::client::conn::http1::SendRequest<Empty<Bytes>>],
    ip: &str,
    per: usize,
) -> Vec<Reply> {
    let runs = senders.iter_mut().map(|sender| async move {
        let mut replies = Vec::new();
        for _ in 0..per {
            replies.push(send_on(sender, "x-forwarded-for", ip).await);
        }
        replies
    });
    futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// GET / on `sender` with one extra header; at most 10 s.
async fn send_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    name: &str,
    value: &str,
) -> Reply {
    let req = http::Request::builder()
        .uri("/")
        .header("host", "app")
        .header(name, value)
        .body(Empty::new())
        .expect("request");
    sender.ready().await.expect("connection ready");
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("an answer within 10 s")
        .expect("a response");
    Reply::read(resp).await.expect("body")
}

fn statuses(replies: &[Reply]) -> (usize, usize) {
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!(ok + limited, replies.len(), "only 200 and 429: {replies:?}");
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_and_unlisted_clients_get_403_and_reach_no_backend() {
    let (_be, _fx, proxy) = start(
        "deny = [\"203.0.113.66\"]",
        "allow = [\"203.0.113.0/24\", \"2001:db8::/32\"]",
    )
    .await;
    let client = client();
    // The upstream's `allow` and the top level's `deny` both apply.
    let denied = get_as(&client, &proxy, "203.0.113.66", "/").await;
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(denied.body.contains("access denied"), "{}", denied.body);
    for outsider in ["198.51.100.7", "2001:db9::1"] {
        assert_eq!(
            get_as(&client, &proxy, outsider, "/").await.status,
            403,
            "{outsider}"
        );
    }
    // No X-Forwarded-For: the peer (127.0.0.1) is not in `allow`.
    assert_eq!(get(&client, proxy.addr(), "/").await.status, 403);
    assert_eq!(served(&proxy).await, 0, "nothing reached a backend");

    for insider in ["203.0.113.7", "2001:db8::7"] {
        let reply = get_as(&client, &proxy, insider, "/").await;
        assert_eq!(reply.status, 200, "{insider}: {reply:?}");
        assert!(reply.backend().is_some());
    }
    assert_eq!(served(&proxy).await, 2);

    let a = admission(&proxy).await;
    assert_eq!(
        (a["denied"].as_u64(), a["allowed"].as_u64()),
        (Some(4), Some(2)),
        "{a}"
    );
    let text = metrics(&proxy).await;
    let denied_by = |reason: &str| {
        sample(
            &text,
            &format!(
                "switchyard_admission_total{{upstream=\"app\",verdict=\"denied\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(denied_by("deny"), Some(1.0), "{text}");
    assert_eq!(denied_by("allow"), Some(3.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_over_four_connections_and_both_workers_gets_exactly_the_burst() {
    // 1 request a minute: nothing refills while the test runs.
    let (_be, _fx, proxy) = start("", "limit-req = { rate = \"1/m\", burst = 10 }").await;
    let mut on = senders(&proxy, 4).await;
    let replies = burst_on(&mut on, "198.51.100.1", 10).await;
    assert_eq!(statuses(&replies), (10, 30), "the burst, then 429");
    for r in replies.iter().filter(|r| r.status == 429) {
        let after: u64 = r.headers["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("Retry-After in seconds");
        assert!((1..=60).contains(&after), "Retry-After {after}");
    }
    assert_eq!(served(&proxy).await, 10, "the backends saw only the burst");
    // Another client has its own bucket.
    let other = burst_on(&mut on, "198.51.100.2", 5).await;
    assert_eq!(statuses(&other), (10, 10));

    let a = admission(&proxy).await;
    assert_eq!(a["limited"].as_u64(), Some(40), "{a}");
    assert_eq!(a["limiters"][0]["name"], "limit-req");
    assert_eq!(a["limiters"][0]["keys"].as_u64(), Some(2), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_bucket_refills_at_the_rate() {
    // One request every 200 ms, 3 at once.
    let (_be, _fx, proxy) = start(
        "",
        "limit-req = { rate = \"5/s\", burst = 3, status = 503 }",
    )
    .await;
    let mut on = senders(&proxy, 4).await;
    let ip = "198.51.100.9";
    let started = Instant::now();
    let first = burst_on(&mut on, ip, 2).await;
    let took = started.elapsed();
    let ok = first.iter().filter(|r| r.status == 200).count();
    let refilled = (took.as_millis() / 200) as usize;
    assert!(
        (3..=3 + refilled).contains(&ok),
        "{ok} passed in {took:?}: {first:?}"
    );
    let limited: Vec<_> = first.iter().filter(|r| r.status != 200).collect();
    assert!(
        limited.iter().all(|r| r.status == 503),
        "the configured status"
    );
    assert!(
        limited
            .iter()
            .all(|r| r.headers.contains_key("retry-after"))
    );

    // After a second the bucket is full again: 3 at once, not more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let again = burst_on(&mut on, ip, 2).await;
    let took = started.elapsed();
    let ok = again.iter().filter(|r| r.status == 200).count();
    let refilled = (took.as_millis() / 200) as usize;
    assert!((3..=3 + refilled).contains(&ok), "{ok} passed in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_lets_everything_through_and_counts() {
    let (_be, _fx, proxy) = start(
        "limit-req = { rate = \"1/m\", burst = 2, dry-run = true }",
        "",
    )
    .await;
    let client = client();
    for _ in 0..6 {
        assert_eq!(get_as(&client, &proxy, "192.0.2.1", "/").await.status, 200);
    }
    assert_eq!(served(&proxy).await, 6);
    let a = admission(&proxy).await;
    assert_eq!(
        (a["dry_run"].as_u64(), a["limited"].as_u64()),
        (Some(4), Some(0)),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_caps_requests_in_flight_per_client() {
    let (_be, _fx, proxy) = start("", "limit-conn = { max = 2 }").await;
    let client = client();
    let slow = |ip: &'static str| {
        let (client, addr) = (client.clone(), proxy.addr());
        tokio::spawn(async move {
            get_with(&client, addr, "/delay/1500", &[("x-forwarded-for", ip)]).await
        })
    };
    let held = [slow("192.0.2.10"), slow("192.0.2.10")];
    wait_for(Duration::from_secs(5), "two requests in flight", || async {
        let n: u64 = status(&proxy).await.in_flight(0).iter().sum();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} in flight"))
        }
    })
    .await;
    let third = get_as(&client, &proxy, "192.0.2.10", "/").await;
    assert_eq!(third.status, 429, "{third:?}");
    assert!(third.body.contains("limit-conn"), "{}", third.body);
    assert_eq!(
        get_as(&client, &proxy, "192.0.2.11", "/").await.status,
        200,
        "another client"
    );
    for h in held {
        assert_eq!(h.await.expect("task").expect("reply").status, 200);
    }
    // Both slow responses have been sent: their places are free again.
    assert_eq!(get_as(&client, &proxy, "192.0.2.10", "/").await.status, 200);
    let a = admission(&proxy).await;
    assert_eq!(a["limited"].as_u64(), Some(1), "{a}");
    assert_eq!(
        a["limiters"][0]["keys"].as_u64(),
        Some(0),
        "no request in flight: {a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_spraying_client_stays_within_limit_keys() {
    let (_be, _fx, proxy) = start(
        "",
        "limit-req = { rate = \"1/m\", burst = 1, key = \"header:x-api-key\" }\nlimit-keys = 100",
    )
    .await;
    let mut on = senders(&proxy, 4).await;
    let runs = on.iter_mut().enumerate().map(|(c, sender)| async move {
        let mut ok = 0;
        for i in 0..300 {
            let reply = send_on(sender, "x-api-key", &format!("key-{c}-{i}")).await;
            ok += usize::from(reply.status == 200);
        }
        ok
    });
    let ok: usize = futures_util::future::join_all(runs).await.into_iter().sum();
    assert_eq!(ok, 1200, "every new key has its burst");
    let a = admission(&proxy).await;
    let keys = a["limiters"][0]["keys"].as_u64().expect("keys");
    assert!((1..=100).contains(&keys), "{a}");
    let text = metrics(&proxy).await;
    let gauge = sample(
        &text,
        "switchyard_limiter_keys{upstream=\"app\",limiter=\"limit-req\"}",
    );
    assert!(gauge.is_some_and(|k| k <= 100.0), "{text}");
    // A request without the header is not limited at all.
    let client = client();
    for _ in 0..3 {
        assert_eq!(get(&client, proxy.addr(), "/").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_keeps_the_limiters_state() {
    let limit = "limit-req = { rate = \"1/m\", burst = 2 }";
    let (be, fx, proxy) = start("", limit).await;
    let client = client();
    let ip = "192.0.2.77";
    for expect in [200, 200, 429] {
        assert_eq!(get_as(&client, &proxy, ip, "/").await.status, expect);
    }
    // Another setting of the upstream changes; the limit does not.
    fx.write_config(&config(
        &be,
        "",
        &format!("{limit}\nbackend-header = \"x-upstream\""),
    ));
    let mut n = 0;
    wait_for(Duration::from_secs(10), "the reload", || {
        // A new client each time: each has a bucket of 2.
        n += 1;
        let other = format!("192.0.2.{}", 100 + n % 100);
        let (client, proxy) = (&client, &proxy);
        async move {
            let r = get_as(client, proxy, &other, "/").await;
            if r.headers.contains_key("x-upstream") {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        }
    })
    .await;
    assert_eq!(
        get_as(&client, &proxy, ip, "/").await.status,
        429,
        "still empty"
    );
    let a = admission(&proxy).await;
    assert_eq!(a["limited"].as_u64(), Some(2), "totals carried over: {a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_quiet_clients_are_forgotten() {
    let (_be, _fx, proxy) = start("", "limit-req = { rate = \"20/s\", burst = 2 }").await;
    let client = client();
    for i in 0..5 {
        let ip = format!("192.0.2.{i}");
        assert_eq!(get_as(&client, &proxy, &ip, "/").await.status, 200);
    }
    assert!(admission(&proxy).await["limiters"][0]["keys"].as_u64() > Some(0));
    // 100 ms after its request a client's bucket is full again; the health
    // task's sweep (about once a second) forgets it.
    wait_for(Duration::from_secs(5), "the keys forgotten", || async {
        let a = admission(&proxy).await;
        match a["limiters"][0]["keys"].as_u64() {
            Some(0) => Ok(()),
            _ => Err(a.to_string()),
        }
    })
    .await;
}
