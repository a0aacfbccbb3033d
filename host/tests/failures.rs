//! Everything that can go wrong on the request path still ends in an answer:
//! misbehaving plugins fall back to the host's round robin, dead or slow
//! backends give 502/504, nothing to route to gives 404/503.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The product's 10 ms pick deadline (not the fixture's generous one):
/// these tests are about what happens when a pick fails or runs too long.
async fn proxy_with_test_strategy(params: &str) -> Served {
    serve_with(3, &[("test-strategy", TEST_STRATEGY)], |be| {
        format!(
            "plugin-limits.pick-deadline = \"10ms\"\n{}",
            upstream("test-strategy", be, &format!("params = {params}"))
        )
    })
    .await
}

/// Sends `n` requests; all must be answered 200 by a demo backend within
/// 5 s each. Returns the replies.
async fn all_answered(proxy: &switchyard::Proxy, n: usize) -> Vec<Reply> {
    let client = client();
    let mut replies = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let r = get(&client, proxy.addr(), "/").await;
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.backend().is_some(), "{r:?}");
        replies.push(r);
    }
    replies
}

/// Picks, traps, time-outs, bad answers and instances of the strategy, as
/// `/status` shows them.
async fn stats(proxy: &switchyard::Proxy) -> (u64, u64, u64, u64, u64) {
    let s = status(proxy).await;
    (
        s.strategy_count(0, "picks"),
        s.strategy_failures(0, "trap"),
        s.strategy_failures(0, "timeout"),
        s.strategy_failures(0, "bad_answer"),
        s.strategy_count(0, "instances"),
    )
}

/// Picks served without calling the plugin while it was paused.
async fn skipped(proxy: &switchyard::Proxy) -> u64 {
    status(proxy).await.strategy_failures(0, "skipped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_plugin_is_replaced_and_requests_are_served_by_the_fallback() {
    let (_be, _fx, proxy) = proxy_with_test_strategy("{ mode = \"trap\" }").await;
    let replies = all_answered(&proxy, 30).await;
    // The host's round robin spreads the load.
    assert_eq!(tally(&replies).len(), 3, "{:?}", tally(&replies));
    let (picks, traps, timeouts, _, instances) = stats(&proxy).await;
    assert_eq!(picks, 0);
    // (A pick descheduled past its deadline counts as a timeout instead.)
    let failed = traps + timeouts;
    let paused = skipped(&proxy).await;
    assert_eq!(
        failed + paused,
        30,
        "every pick failed or was skipped, and was counted"
    );
    assert!(failed >= 5, "{failed} failures before the pause");
    assert!(
        paused > 0,
        "after 5 failures in a row the plugin is left alone"
    );
    assert!(
        instances >= failed,
        "each trapped instance was replaced ({instances} instances)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_keeps_failing_is_paused_then_tried_again() {
    let (_be, _fx, proxy) = proxy_with_test_strategy("{ mode = \"trap\" }").await;
    all_answered(&proxy, 20).await;
    // Failed picks (a pick descheduled past its deadline counts as a
    // timeout) and skipped ones, from one look at `/status`.
    let counts = async || {
        let s = status(&proxy).await;
        (
            s.strategy_failures(0, "trap") + s.strategy_failures(0, "timeout"),
            s.strategy_failures(0, "skipped"),
        )
    };
    let (before, paused) = counts().await;
    assert!(paused > 0);
    // The first pause is 100 ms; after it the plugin gets one more chance
    // (and fails, which doubles the pause).
    tokio::time::sleep(Duration::from_millis(250)).await;
    all_answered(&proxy, 1).await;
    let (failed, skipped_before) = counts().await;
    assert_eq!(failed, before + 1, "tried again after the pause");
    // Paused again (for 200 ms): the next request is served without it.
    // One request, not several, so that a slow machine does not outlast
    // the pause.
    all_answered(&proxy, 1).await;
    let (failed, skipped_now) = counts().await;
    assert_eq!(failed, before + 1, "paused again");
    assert_eq!(skipped_now, skipped_before + 1, "served without it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_starts_trapping_is_replaced_by_a_fresh_one() {
    // Traps once it has answered 5 picks; a fresh instance answers 5 more.
    let (_be, _fx, proxy) =
        proxy_with_test_strategy("{ mode = \"trap\", after = 5, index = 1 }").await;
    let replies = all_answered(&proxy, 12).await;
    let from_plugin = replies.iter().filter(|r| r.backend() == Some(2)).count();
    let (picks, traps, ..) = stats(&proxy).await;
    assert!(traps >= 1 && picks >= 10, "picks {picks}, traps {traps}");
    assert!(from_plugin >= 10, "{:?}", tally(&replies));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_loops_forever_is_interrupted_at_its_deadline() {
    let (_be, _fx, proxy) = proxy_with_test_strategy("{ mode = \"spin\" }").await;
    let start = Instant::now();
    let replies = all_answered(&proxy, 10).await;
    let took = start.elapsed();
    assert_eq!(replies.len(), 10);
    let (_, _, timeouts, ..) = stats(&proxy).await;
    // Five in a row, then the plugin is paused and picks skip it.
    assert!(timeouts >= 5, "{timeouts}");
    assert_eq!(timeouts + skipped(&proxy).await, 10);
    // Each pick is cut at the 10 ms default deadline (plus scheduling);
    // a generous bound, not a benchmark.
    assert!(
        took < Duration::from_secs(5),
        "10 interrupted picks took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_answers_and_memory_hogs_fall_back() {
    for (params, what) in [
        ("{ mode = \"bad-index\" }", "bad answer"),
        ("{ mode = \"grow\" }", "memory cap"),
    ] {
        let (_be, _fx, proxy) = proxy_with_test_strategy(params).await;
        let replies = all_answered(&proxy, 6).await;
        assert_eq!(tally(&replies).len(), 3, "{what}: {:?}", tally(&replies));
        let (picks, traps, timeouts, bad, _) = stats(&proxy).await;
        assert_eq!(picks, 0, "{what}");
        // A memory hog hits its cap (trap) or, on a busy machine, its
        // deadline first (timeout): either way the pick failed and counted.
        let paused = skipped(&proxy).await;
        assert_eq!(
            traps + timeouts + bad + paused,
            6,
            "{what}: traps {traps} timeouts {timeouts} bad {bad} skipped {paused}"
        );
        assert!(traps + timeouts + bad >= 5, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejecting_plugin_gives_503() {
    let (_be, _fx, proxy) = proxy_with_test_strategy("{ mode = \"reject\" }").await;
    let r = get(&client(), proxy.addr(), "/").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("no backend is available"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_refuses_its_params_stops_start_up_with_the_reason() {
    let be = backends(1).await;
    let fx = Fixture::new(&[
        ("test-strategy", TEST_STRATEGY),
        ("round-robin", ROUND_ROBIN),
    ]);
    for (params, needle) in [
        ("params = { mode = \"fail-init\" }", "refuses to start"),
        ("params = { nonsense = 1 }", "bad parameter `nonsense`"),
    ] {
        fx.write_config(&upstream("test-strategy", &be, params));
        let err = switchyard::Proxy::start(fx.config(), Default::default())
            .await
            .expect_err("must not start")
            .to_string();
        assert!(
            err.contains("upstream `app`")
                && err.contains("test-strategy.wasm")
                && err.contains(needle),
            "{err}"
        );
    }
    fx.write_config(&upstream("round-robin", &be, "params = { x = 1 }"));
    let err = switchyard::Proxy::start(fx.config(), Default::default())
        .await
        .expect_err("rejects params")
        .to_string();
    assert!(err.contains("round-robin takes no parameters"), "{err}");
    fx.write_config(&upstream("missing", &be, ""));
    let err = switchyard::Proxy::start(fx.config(), Default::default())
        .await
        .expect_err("missing plugin")
        .to_string();
    assert!(
        err.contains("missing.wasm") && err.contains("no plugin file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_gives_502() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{closed}\"]\n"
    ));
    let proxy = fx.start().await;
    let r = get(&client(), proxy.addr(), "/").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("cannot connect"), "{r:?}");
    assert_eq!(status(&proxy).await.failures(0), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_gives_504_after_the_response_timeout() {
    // Accepts connections and reads, but never writes.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{addr}\"]\nresponse-timeout = \"300ms\"\n"
    ));
    let proxy = fx.start().await;
    let start = Instant::now();
    let r = get(&client(), proxy.addr(), "/").await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(start.elapsed() < Duration::from_secs(5));
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_upstream_gives_404() {
    let be = backends(1).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&upstream("round-robin", &be, "hosts = [\"example.com\"]"));
    let proxy = fx.start().await;
    let client = client();
    let r = get_with(&client, proxy.addr(), "/", &[("host", "other.org")])
        .await
        .expect("request");
    assert_eq!(r.status, 404);
    let r = get_with(&client, proxy.addr(), "/", &[("host", "EXAMPLE.com:8080")])
        .await
        .expect("request");
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_fails_closed_answers_503_when_its_plugin_fails() {
    let (_be, _fx, proxy) =
        proxy_with_test_strategy("{ mode = \"trap\" }\nplugin-failure = \"fail-closed\"").await;
    let client = client();
    for _ in 0..3 {
        let r = get(&client, proxy.addr(), "/").await;
        assert_eq!(r.status, 503, "{r:?}");
        assert!(r.body.contains("balancing strategy failed"), "{r:?}");
    }
    let (_, traps, timeouts, ..) = stats(&proxy).await;
    assert_eq!(traps + timeouts, 3, "the failures are still counted");
}
