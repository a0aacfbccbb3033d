//! Retries through a real proxy, against backends that refuse, reset,
//! stall or answer 5xx: what the client got and what each backend saw.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::scripted::{Act, Scripted};
use common::*;

/// A proxy with round robin over `servers` and `settings` for the upstream.
async fn proxy_over(servers: &[String], settings: &str) -> (Fixture, switchyard::Proxy) {
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [{}]\n{settings}\n",
        list.join(", ")
    ));
    let proxy = fx.start().await;
    (fx, proxy)
}

fn answers() -> impl Fn(usize) -> Act + Send + Sync + 'static {
    |_| Act::Answer
}

fn never(_: usize) -> bool {
    false
}

/// Backend 1 doing `first` to every request, backend 2 answering, and a
/// round-robin proxy over the two with `settings`.
async fn misbehaving_and_live(
    first: Act,
    settings: &str,
) -> (Scripted, Scripted, Fixture, switchyard::Proxy) {
    let bad = Scripted::start(1, true, never, move |_| first).await;
    let live = Scripted::start(2, true, never, answers()).await;
    let (fx, proxy) = proxy_over(&[bad.addr.to_string(), live.addr.to_string()], settings).await;
    (bad, live, fx, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_for_any_method_with_its_body() {
    let live = Scripted::start(2, true, never, answers()).await;
    let (_fx, proxy) = proxy_over(
        &[closed_port().to_string(), live.addr.to_string()],
        "max-fails = 0",
    )
    .await;
    for i in 0..4 {
        let r = send(proxy.addr(), "POST", "/orders", &format!("order {i}")).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "Hello from backend 2\n");
    }
    let seen = live.seen();
    assert_eq!(seen.len(), 4, "each POST reached the live backend once");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            (s.method.as_str(), s.body.clone()),
            ("POST", format!("order {i}"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_connection_breaks_after_sending_is_retried_once_elsewhere() {
    let (broken, live, _fx, proxy) = misbehaving_and_live(Act::Close, "max-fails = 0").await;
    let client = client();
    for _ in 0..6 {
        let r = get(&client, proxy.addr(), "/items").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.backend(), Some(2));
    }
    assert!(!broken.seen().is_empty(), "the broken backend was tried");
    assert_eq!(live.seen().len(), 6, "each request served exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_connection_breaks_after_sending_is_not_retried() {
    let (broken, live, _fx, proxy) = misbehaving_and_live(Act::Close, "max-fails = 0").await;
    // Round robin: the first request goes to the broken backend.
    let r = send(proxy.addr(), "POST", "/pay", "once").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("backend connection failed"), "{r:?}");
    assert_eq!(broken.seen().len(), 1);
    assert_eq!(broken.seen()[0].body, "once");
    assert!(
        live.seen().is_empty(),
        "a POST that was sent is never sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_passed_on_unless_retry_on_status_lists_it() {
    let failing = Scripted::start(1, true, never, |_| Act::Status(503)).await;
    let live = Scripted::start(2, true, never, answers()).await;
    let servers = [failing.addr.to_string(), live.addr.to_string()];

    let (_fx, proxy) = proxy_over(&servers, "").await;
    let r = get(&client(), proxy.addr(), "/").await;
    assert_eq!(r.status, 503, "passed on as the backend sent it: {r:?}");
    assert_eq!(r.body, "error\n");
    drop(proxy);

    let (_fx2, proxy) = proxy_over(&servers, "retry-on-status = [502, 503]\nmax-fails = 0").await;
    let client = client();
    for _ in 0..4 {
        let r = get(&client, proxy.addr(), "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.backend(), Some(2));
    }
    // A POST is not retried on a status either.
    let r = send(proxy.addr(), "POST", "/", "x").await;
    let posts = |b: &Scripted| b.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(posts(&failing) + posts(&live), 1, "sent once");
    let expected = if posts(&failing) == 1 { 503 } else { 200 };
    assert_eq!(r.status, expected, "{r:?}");
}

/// `healthy` of each backend of the first upstream, as `/status` shows it.
async fn healthy(proxy: &switchyard::Proxy) -> Vec<bool> {
    status(proxy).await.healthy(0)
}

/// As nginx (`proxy_next_upstream http_403 | http_404 | http_429`): a 403,
/// 404 or 429 listed in `retry-on-status` is retried but is not a failed
/// try, so it never takes the backend out; a listed 5xx is, and does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_404_is_retried_without_taking_the_backend_out_a_503_does() {
    for (status, taken_out) in [(404, false), (403, false), (429, false), (503, true)] {
        let (bad, live, _fx, proxy) = misbehaving_and_live(
            Act::Status(status),
            &format!("retry-on-status = [{status}]\nmax-fails = 1"),
        )
        .await;
        let client = client();
        for _ in 0..6 {
            let r = get(&client, proxy.addr(), "/").await;
            assert_eq!(r.status, 200, "{status}: {r:?}");
            assert_eq!(r.backend(), Some(2), "{status}");
        }
        assert_eq!(live.seen().len(), 6, "{status}: each request served once");
        if taken_out {
            assert_eq!(bad.seen().len(), 1, "{status}: tried once, then taken out");
            assert_eq!(healthy(&proxy).await, [false, true], "{status}");
        } else {
            // Round robin keeps sending it its share: it was never taken out.
            assert!(
                bad.seen().len() >= 3,
                "{status}: backend 1 saw {} of 6 requests",
                bad.seen().len()
            );
            assert_eq!(healthy(&proxy).await, [true, true], "{status}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_that_times_out_is_retried_a_post_gets_504() {
    let (stalled, live, _fx, proxy) =
        misbehaving_and_live(Act::Stall, "response-timeout = \"300ms\"\nmax-fails = 0").await;
    let start = Instant::now();
    let r = get(&client(), proxy.addr(), "/slow").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), Some(2));
    assert!(start.elapsed() >= Duration::from_millis(300));

    // The next pick lands on the stalled backend again (round robin moved
    // on by two); a POST waits out the timeout and is not sent twice.
    let r = send(proxy.addr(), "POST", "/slow", "x").await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(stalled.seen().len(), 2);
    assert_eq!(live.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tries_are_capped_by_retries() {
    let mut broken = Vec::new();
    for n in 1..=4 {
        broken.push(Scripted::start(n, true, never, |_| Act::Close).await);
    }
    let servers: Vec<String> = broken.iter().map(|b| b.addr.to_string()).collect();
    for (retries, tries) in [(0, 1), (1, 2), (2, 3)] {
        let before: usize = broken.iter().map(|b| b.seen().len()).sum();
        let (_fx, proxy) = proxy_over(&servers, &format!("retries = {retries}")).await;
        let r = get(&client(), proxy.addr(), "/").await;
        assert_eq!(r.status, 502, "{r:?}");
        let after: usize = broken.iter().map(|b| b.seen().len()).sum();
        assert_eq!(after - before, tries, "retries = {retries}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_retry_budget_stops_retries() {
    let (broken, live, _fx, proxy) = misbehaving_and_live(
        Act::Close,
        "retry-budget-percent = 0\nretry-budget-min = 0\nmax-fails = 0",
    )
    .await;
    let r = get(&client(), proxy.addr(), "/").await;
    assert_eq!(r.status, 502, "no budget, no retry: {r:?}");
    assert_eq!(broken.seen().len(), 1);
    assert!(live.seen().is_empty());
}

/// nginx's own black-box case for `max_fails`: round robin over two
/// backends, backend 1 drops every third connection, `max_fails=3
/// fail_timeout=10s`, 30 requests: no client error, backend 2 serves the
/// large majority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_max_fails_case_no_client_error_and_backend_2_serves_most() {
    let flaky = Scripted::start(1, false, |c| c % 3 == 0, answers()).await;
    let good = Scripted::start(2, false, never, answers()).await;
    let (_fx, proxy) = proxy_over(
        &[flaky.addr.to_string(), good.addr.to_string()],
        "max-fails = 3\nfail-timeout = \"10s\"",
    )
    .await;
    let client = client();
    let mut replies = Vec::new();
    for _ in 0..30 {
        replies.push(get(&client, proxy.addr(), "/").await);
    }
    assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
    let counts = tally(&replies);
    assert!(
        counts[&2] >= 24,
        "backend 2 serves the large majority: {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), 30);
}

/// One of three backends is killed while a GET-only client (six
/// connections) keeps requests in flight on it: nothing fails. The requests
/// cut on the killed backend are retried within the default budget (3 at
/// once); the ones refused afterwards reached nothing and need no budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_killed_mid_load_a_get_client_sees_no_error() {
    let mut be = backends(3).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&upstream("round-robin", &be, ""));
    let proxy = Arc::new(fx.start().await);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (proxy, stop, answered) =
            (Arc::clone(&proxy), Arc::clone(&stop), Arc::clone(&answered));
        clients.push(tokio::spawn(async move {
            let client = client();
            let mut replies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match get_with(&client, proxy.addr(), "/delay/20", &[]).await {
                    Ok(r) => replies.push(r),
                    Err(e) => panic!("client error: {e}"),
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
            replies
        }));
    }
    let in_flight_on_2 = wait_status(
        &proxy,
        Duration::from_secs(5),
        "requests in flight on backend 2",
        |s| s.in_flight(0)[1] > 0,
    )
    .await
    .in_flight(0)[1];
    be.remove(1); // killed: listener gone, open connections cut
    // The load flows on for 100 more answers.
    let at_kill = answered.load(Ordering::Relaxed);
    wait_for(
        Duration::from_secs(10),
        "100 answers after the kill",
        || async {
            let since = answered.load(Ordering::Relaxed) - at_kill;
            if since >= 100 {
                Ok(())
            } else {
                Err(format!("{since} answers"))
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut replies = Vec::new();
    for c in clients {
        replies.extend(c.await.expect("client task"));
    }
    let errors: Vec<_> = replies.iter().filter(|r| r.status != 200).collect();
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        errors.first()
    );
    let counts = tally(&replies);
    assert_eq!(counts.values().sum::<usize>(), replies.len());
    eprintln!(
        "{} requests, {counts:?}; {in_flight_on_2} were in flight on backend 2 when it was killed",
        replies.len()
    );
    assert!(replies.len() > 100, "load kept flowing: {}", replies.len());
}

/// The pool: sequential requests share one kept-alive backend connection;
/// `keepalive = 0` opens one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_kept_alive_and_reused() {
    for (settings, expected) in [("", 1), ("keepalive = 0", 20)] {
        let backend = Scripted::start(1, true, never, answers()).await;
        let (_fx, proxy) = proxy_over(&[backend.addr.to_string()], settings).await;
        let client = client();
        for _ in 0..20 {
            assert_eq!(get(&client, proxy.addr(), "/").await.status, 200);
            // Let the connection go back to the pool before the next one.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let conns = backend.connections.load(Ordering::SeqCst);
        assert_eq!(
            conns, expected,
            "{settings:?}: {conns} connections for 20 requests"
        );
    }
}
