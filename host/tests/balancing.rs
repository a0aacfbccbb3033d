//! The reference strategies through a real proxy: real sockets, real
//! components built from `plugins/`, counting which demo backend answered.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_sequential_is_exactly_even() {
    let (_be, _fx, proxy) = serve_three(&[("round-robin", ROUND_ROBIN)], "round-robin", "").await;
    let client = client();
    let mut replies = Vec::new();
    for _ in 0..999 {
        replies.push(get(&client, proxy.addr(), "/").await);
    }
    assert!(replies.iter().all(|r| r.status == 200));
    let counts = tally(&replies);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![333, 333, 333],
        "{counts:?}"
    );
    // And in order: 1, 2, 3, 1, 2, 3, ...
    let order: Vec<usize> = replies.iter().take(6).filter_map(Reply::backend).collect();
    assert_eq!(order, vec![1, 2, 3, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_is_global_across_threads_and_connections() {
    let (_be, _fx, proxy) = serve_three(&[("round-robin", ROUND_ROBIN)], "round-robin", "").await;
    let addr = proxy.addr();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut replies = Vec::new();
            for _ in 0..10 {
                replies.push(get(&client, addr, "/").await);
            }
            replies
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.extend(t.await.expect("client task"));
    }
    assert_eq!(replies.len(), 1000);
    assert!(replies.iter().all(|r| r.status == 200));
    let counts = tally(&replies);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (&backend, &n) in &counts {
        assert!(
            (332..=335).contains(&n),
            "backend {backend} served {n}: {counts:?}"
        );
    }
    assert_eq!(counts.values().sum::<usize>(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_weights_smoothly() {
    let be = backends(3).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    let servers = format!(
        "[{{ address = \"{}\", weight = 5 }}, \"{}\", \"{}\"]",
        be[0].addr, be[1].addr, be[2].addr
    );
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nstrategy = \"round-robin\"\nservers = {servers}\n"
    ));
    let proxy = fx.start().await;
    let client = client();
    let mut replies = Vec::new();
    for _ in 0..70 {
        replies.push(get(&client, proxy.addr(), "/").await);
    }
    let counts = tally(&replies);
    assert_eq!(counts.get(&1), Some(&50), "{counts:?}");
    assert_eq!(counts.get(&2), Some(&10), "{counts:?}");
    assert_eq!(counts.get(&3), Some(&10), "{counts:?}");
    // Smooth: nginx's order for 5:1:1 is a a b a c a a, never b and c together.
    let first: Vec<usize> = replies.iter().take(7).filter_map(Reply::backend).collect();
    assert_eq!(first, vec![1, 1, 2, 1, 3, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_avoids_backends_with_requests_in_flight() {
    let (_be, _fx, proxy) = serve_three(&[("least-conn", LEAST_CONN)], "least-conn", "").await;
    let addr = proxy.addr();

    // Two slow requests; each goes to an idle backend.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                let client = client();
                get(&client, addr, "/delay/1500").await
            })
        })
        .collect();
    let loads = wait_status(
        &proxy,
        Duration::from_secs(5),
        "both slow requests reach the backends",
        |s| s.in_flight(0).iter().sum::<u64>() == 2,
    )
    .await
    .in_flight(0);
    assert_eq!(
        loads.iter().filter(|&&n| n == 1).count(),
        2,
        "two different backends hold one each: {loads:?}"
    );
    let idle = loads
        .iter()
        .position(|&n| n == 0)
        .expect("one idle backend")
        + 1;

    // The next 10 requests all go to the idle one.
    let client = client();
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(get(&client, addr, "/").await);
    }
    let counts = tally(&replies);
    assert_eq!(
        counts.get(&idle),
        Some(&10),
        "expected all on backend {idle}: {counts:?}"
    );

    let mut slow_backends = Vec::new();
    for t in slow {
        let r = t.await.expect("slow task");
        assert_eq!(r.status, 200);
        slow_backends.push(r.backend().expect("greeting"));
    }
    assert!(!slow_backends.contains(&idle));
    // Once they finish, the counts return to zero and load spreads again.
    wait_status(
        &proxy,
        Duration::from_secs(2),
        "nothing in flight once the slow requests finished",
        |s| s.in_flight(0).iter().all(|&c| c == 0),
    )
    .await;
    let mut replies = Vec::new();
    for _ in 0..9 {
        replies.push(get(&client, addr, "/").await);
    }
    assert_eq!(tally(&replies).len(), 3, "idle backends share again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_breaks_ties_by_weight_like_nginx() {
    let be = backends(2).await;
    let fx = Fixture::new(&[("least-conn", LEAST_CONN)]);
    let servers = format!(
        "[\"{}\", {{ address = \"{}\", weight = 2 }}]",
        be[0].addr, be[1].addr
    );
    // One worker: ties rotate per worker thread (each has its own
    // instance, as each nginx worker process has its own weights).
    fx.write_config(&format!(
        "workers = 1\n[[upstream]]\nname = \"app\"\nstrategy = \"least-conn\"\nservers = {servers}\n"
    ));
    let proxy = fx.start().await;
    let client = client();
    let mut replies = Vec::new();
    // One at a time: every pick finds both backends idle, a tie.
    for _ in 0..30 {
        replies.push(get(&client, proxy.addr(), "/").await);
    }
    assert!(replies.iter().all(|r| r.status == 200));
    let counts = tally(&replies);
    assert_eq!(counts.get(&1), Some(&10), "{counts:?}");
    assert_eq!(counts.get(&2), Some(&20), "{counts:?}");
    // Smooth, as nginx's order for 1:2 is b a b.
    let first: Vec<usize> = replies.iter().take(6).filter_map(Reply::backend).collect();
    assert_eq!(first, vec![2, 1, 2, 2, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_pins_a_client_and_spreads_many() {
    let be = backends(3).await;
    let fx = Fixture::new(&[("ip-hash", IP_HASH)]);
    fx.write_config(&format!(
        "trusted-proxies = [\"127.0.0.1\"]\n{}",
        upstream("ip-hash", &be, "")
    ));
    let proxy = fx.start().await;
    let client = client();

    // The peer itself (127.0.0.1, no X-Forwarded-For): always one backend.
    let mut own = Vec::new();
    for _ in 0..20 {
        own.push(get(&client, proxy.addr(), "/").await);
    }
    assert_eq!(tally(&own).len(), 1, "{:?}", tally(&own));

    // 100 clients behind the trusted proxy: each pinned, all spread.
    let mut first_choice = Vec::new();
    for i in 0..100u32 {
        let ip = format!("198.51.{}.{}", i / 200, i % 200 + 1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let r = get_with(&client, proxy.addr(), "/", &[("x-forwarded-for", &ip)])
                .await
                .expect("request");
            seen.insert(r.backend().expect("greeting"));
        }
        assert_eq!(
            seen.len(),
            1,
            "client {ip} moved between backends: {seen:?}"
        );
        first_choice.push(seen.into_iter().next().expect("one backend"));
    }
    let mut spread = std::collections::BTreeMap::new();
    for b in first_choice {
        *spread.entry(b).or_insert(0) += 1;
    }
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(
        spread.values().all(|&n| n >= 15),
        "uneven spread {spread:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_x_forwarded_for_does_not_move_ip_hash() {
    let (_be, _fx, proxy) = serve_three(&[("ip-hash", IP_HASH)], "ip-hash", "").await;
    let client = client();
    let mut replies = Vec::new();
    for i in 0..30 {
        let ip = format!("203.0.113.{}", i + 1);
        replies.push(
            get_with(&client, proxy.addr(), "/", &[("x-forwarded-for", &ip)])
                .await
                .expect("request"),
        );
    }
    assert_eq!(
        tally(&replies).len(),
        1,
        "spoofed X-Forwarded-For must be ignored: {:?}",
        tally(&replies)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_strategy_rotates_without_calling_a_plugin() {
    let (_be, _fx, proxy) = serve_three(&[], "host:round-robin", "").await;
    let client = client();
    let mut order = Vec::new();
    for _ in 0..9 {
        order.extend(get(&client, proxy.addr(), "/").await.backend());
    }
    assert_eq!(order, vec![1, 2, 3, 1, 2, 3, 1, 2, 3]);
    let picks = status(&proxy).await.strategy_count(0, "picks");
    assert_eq!(picks, 0, "no plugin call");
}
