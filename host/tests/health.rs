//! Backend health through a real proxy: passive (nginx `max_fails` /
//! `fail_timeout`) and active checks, seen by the round-robin strategy.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

/// An address nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

async fn statuses(proxy: &switchyard::Proxy, n: usize) -> Vec<Reply> {
    let client = client();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(&client, proxy.addr(), "/").await);
    }
    out
}

/// A proxy over [a closed port, demo backend 1] with the given upstream
/// settings.
async fn dead_then_live(
    settings: &str,
) -> (
    Vec<switchyard::demo::DemoBackend>,
    Fixture,
    switchyard::Proxy,
) {
    let live = backends(1).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{}\", \"{}\"]\n{settings}\n",
        closed_port(),
        live[0].addr
    ));
    let proxy = fx.start().await;
    (live, fx, proxy)
}

fn failed(replies: &[Reply]) -> usize {
    replies.iter().filter(|r| r.status != 200).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_taken_out_for_fail_timeout_then_retried() {
    let (_live, _fx, proxy) = dead_then_live("max-fails = 1\nfail-timeout = \"1s\"").await;

    let started = Instant::now();
    let replies = statuses(&proxy, 20).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the window must still be open"
    );
    assert_eq!(
        failed(&replies),
        1,
        "only the first request saw the dead backend"
    );
    assert_eq!(replies[0].status, 502);
    assert!(replies[1..].iter().all(|r| r.backend() == Some(1)));

    // After fail-timeout the dead backend is tried again (once) and taken
    // out again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let replies = statuses(&proxy, 10).await;
    assert_eq!(
        failed(&replies),
        1,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_fails_counts_failures_within_the_window() {
    let (_live, _fx, proxy) = dead_then_live("max-fails = 3\nfail-timeout = \"10s\"").await;
    let replies = statuses(&proxy, 30).await;
    assert_eq!(failed(&replies), 3, "three strikes, then out");
    assert!(replies[6..].iter().all(|r| r.status == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_fails_zero_disables_passive_health() {
    let (_live, _fx, proxy) = dead_then_live("max-fails = 0").await;
    let replies = statuses(&proxy, 10).await;
    assert_eq!(
        failed(&replies),
        5,
        "every other request keeps going to the dead backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_backend_is_down_the_answer_is_503_at_once() {
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{}\", \"{}\"]\n",
        closed_port(),
        closed_port()
    ));
    let proxy = fx.start().await;
    let replies = statuses(&proxy, 2).await;
    assert!(replies.iter().all(|r| r.status == 502));
    let start = Instant::now();
    let r = get(&client(), proxy.addr(), "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("no backend is available"), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_killed_backend_out_and_bring_it_back() {
    let mut be = backends(3).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&upstream(
        "round-robin",
        &be,
        "max-fails = 0\n[upstream.health-check]\ninterval = \"100ms\"\ntimeout = \"200ms\"\nfall = 2\nrise = 2\n",
    ));
    let proxy = fx.start().await;
    let gateway = std::sync::Arc::clone(proxy.gateway());
    let healthy =
        move |i: usize| gateway.routes().upstreams[0].backends.load().backends[i].healthy();

    // Kill backend 2.
    let addr = be[1].addr;
    let killed = Instant::now();
    be.remove(1);
    let out = eventually(Duration::from_secs(3), || {
        let h = healthy.clone();
        async move { !h(1) }
    })
    .await
    .expect("the killed backend must be detected");
    // interval x fall = 200 ms, plus a probe timeout and scheduling.
    assert!(out < Duration::from_millis(1000), "detected after {out:?}");
    eprintln!("killed backend out after {:?}", killed.elapsed());

    let replies = statuses(&proxy, 30).await;
    assert_eq!(failed(&replies), 0);
    let counts = tally(&replies);
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        vec![1, 3],
        "{counts:?}"
    );
    assert_eq!(
        (counts[&1], counts[&3]),
        (15, 15),
        "round robin over the two left: {counts:?}"
    );

    // It comes back on the same address.
    let revived = switchyard::demo::spawn(addr, 2)
        .await
        .expect("restart backend 2");
    let back = eventually(Duration::from_secs(3), || {
        let h = healthy.clone();
        async move { h(1) }
    })
    .await
    .expect("the revived backend must rejoin");
    eprintln!("revived backend back after {back:?}");
    let replies = statuses(&proxy, 30).await;
    assert_eq!(failed(&replies), 0);
    assert_eq!(tally(&replies).len(), 3);
    drop(revived);
}
