//! Backend health through a real proxy: passive (nginx `max_fails` /
//! `fail_timeout`) and active checks, seen by the round-robin strategy.

mod common;

use std::time::{Duration, Instant};

use common::scripted::{Act, Scripted};
use common::*;

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
async fn dead_then_live(settings: &str) -> Served {
    serve_with(1, &[("round-robin", ROUND_ROBIN)], |live| {
        format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{}\", \"{}\"]\n{settings}\n",
            closed_port(),
            live[0].addr
        )
    })
    .await
}

fn failed(replies: &[Reply]) -> usize {
    replies.iter().filter(|r| r.status != 200).count()
}

/// Failed requests counted against the dead backend (the first server).
async fn dead_failures(proxy: &switchyard::Proxy) -> u64 {
    status(proxy).await.failures(0)[0]
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
    assert_eq!(failed(&replies), 0, "the refused try was retried");
    assert!(replies.iter().all(|r| r.backend() == Some(1)));
    assert_eq!(dead_failures(&proxy).await, 1, "tried once, then taken out");

    // After fail-timeout the dead backend is let in again (and strategies
    // told so, within the health task's 100 ms tick)...
    wait_status(
        &proxy,
        Duration::from_secs(3),
        "the dead backend's fail-timeout runs out",
        |s| s.healthy(0)[0] && s.backends_down(0) == 0,
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "out for only {:?} of its 1 s fail-timeout",
        started.elapsed()
    );
    // ... tried (once) and taken out again.
    let replies = statuses(&proxy, 10).await;
    assert_eq!(failed(&replies), 0);
    assert_eq!(dead_failures(&proxy).await, 2);
}

/// As nginx with a single server: a lone backend is never taken out by
/// passive health (there is nowhere else to send), whatever `max-fails`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_backend_is_not_taken_out_by_one_failure() {
    // Drops the first request, answers the ones after.
    let lone = Scripted::start(
        1,
        true,
        |_| false,
        |k| {
            if k == 0 { Act::Close } else { Act::Answer }
        },
    )
    .await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    // The defaults: max-fails = 1, fail-timeout = 10s.
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n",
        lone.addr
    ));
    let proxy = fx.start().await;
    let client = client();
    let r = get(&client, proxy.addr(), "/").await;
    assert_eq!(r.status, 502, "the dropped request: {r:?}");
    assert_eq!(lone.seen().len(), 1);
    // Right after, well within fail-timeout, the backend is still used.
    let r = get(&client, proxy.addr(), "/").await;
    assert_eq!(r.status, 200, "the next request reaches the backend: {r:?}");
    assert_eq!(r.backend(), Some(1));
    assert_eq!(lone.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_fails_counts_failures_within_the_window() {
    let (_live, _fx, proxy) = dead_then_live("max-fails = 3\nfail-timeout = \"10s\"").await;
    let replies = statuses(&proxy, 30).await;
    assert_eq!(failed(&replies), 0);
    assert_eq!(dead_failures(&proxy).await, 3, "three strikes, then out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_fails_zero_disables_passive_health() {
    // Without retries the client sees every failure.
    let (_live, _fx, proxy) = dead_then_live("max-fails = 0\nretries = 0").await;
    let replies = statuses(&proxy, 10).await;
    assert_eq!(
        failed(&replies),
        5,
        "every other request keeps going to the dead backend"
    );
    assert!(
        replies
            .iter()
            .filter(|r| r.status != 200)
            .all(|r| r.status == 502 && r.body.contains("cannot connect to backend")),
        "{replies:?}"
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
    // The first request tries both and reports the last failure.
    let r = get(&client(), proxy.addr(), "/").await;
    assert_eq!(r.status, 502, "{r:?}");
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

    // Kill backend 2.
    let addr = be[1].addr;
    let killed = Instant::now();
    be.remove(1);
    let out = eventually(Duration::from_secs(3), || async {
        !status(&proxy).await.healthy(0)[1]
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
    let back = eventually(Duration::from_secs(3), || async {
        status(&proxy).await.healthy(0)[1]
    })
    .await
    .expect("the revived backend must rejoin");
    eprintln!("revived backend back after {back:?}");
    let replies = statuses(&proxy, 30).await;
    assert_eq!(failed(&replies), 0);
    assert_eq!(tally(&replies).len(), 3);
    drop(revived);
}

/// The health task keeps running whatever an upstream's check interval:
/// the longest `health-check.interval` the config accepts, and one longer
/// than any (set past validation). It serves every upstream, so another
/// upstream's active checks still take a dead backend out, and a passive
/// time-out still runs out without a request to notice it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_task_copes_with_the_longest_check_interval() {
    for beyond_validation in [false, true] {
        let live = backends(1).await;
        let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
        fx.write_config(&format!(
            "[[upstream]]\nname = \"idle\"\npath-prefix = \"/idle\"\nservers = [\"{live}\"]\n\
             health-check = {{ interval = \"365d\" }}\n\
             [[upstream]]\nname = \"checked\"\npath-prefix = \"/checked\"\n\
             servers = [\"{dead}\", \"{live}\"]\nmax-fails = 0\n\
             health-check = {{ interval = \"100ms\", timeout = \"200ms\", fall = 1 }}\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{dead}\", \"{live}\"]\n\
             max-fails = 1\nfail-timeout = \"300ms\"\n",
            live = live[0].addr,
            dead = closed_port(),
        ));
        let mut config = fx.config();
        if beyond_validation && let Some(check) = config.upstreams[0].health_check.as_mut() {
            check.interval = Duration::MAX;
        }
        let proxy = switchyard::Proxy::start(config, Default::default())
            .await
            .expect("proxy starts");

        // Passive: the dead backend of `app` fails once and is taken out...
        let r = get(&client(), proxy.addr(), "/").await;
        assert_eq!(r.status, 200, "retried on the live backend: {r:?}");
        assert_eq!(status(&proxy).await.backends_down(2), 1, "taken out");
        // ... and its time-out runs out by itself (the task's sweep: looking
        // at `/status` settles nothing).
        wait_status(
            &proxy,
            Duration::from_secs(3),
            &format!(
                "beyond validation: {beyond_validation}: the passive time-out runs out \
                 without a request"
            ),
            |s| s.backends_down(2) == 0,
        )
        .await;
        // Active: `checked` probes its dead backend and takes it out.
        wait_status(
            &proxy,
            Duration::from_secs(3),
            &format!("beyond validation: {beyond_validation}: active checks take it out"),
            |s| !s.healthy(1)[0],
        )
        .await;
    }
}
