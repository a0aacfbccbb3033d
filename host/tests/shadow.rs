//! Shadow strategies: a second plugin asked on every request, never
//! routing. The live traffic must be exactly what the live strategy alone
//! gives, and the admin API must count the shadow's agreement and would-be
//! split as the traffic implies.

mod common;

use common::*;
use serde_json::Value;

/// Round robin over three demo backends with `shadow` as its shadow.
async fn start(shadow: &str) -> Served {
    let plugins = [
        ("round-robin", ROUND_ROBIN),
        ("ip-hash", IP_HASH),
        ("test-strategy", TEST_STRATEGY),
    ];
    serve_three(&plugins, "round-robin", shadow).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_hash_shadow_leaves_round_robin_exact_and_is_counted() {
    let (_be, _fx, proxy) = start("shadow = \"ip-hash\"").await;
    let client = client();
    let mut seen = Vec::new();
    for _ in 0..30 {
        let r = get(&client, proxy.addr(), "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        seen.push(r.backend().expect("a demo greeting"));
    }
    // Exactly the round robin, in order.
    let expected: Vec<usize> = (0..30).map(|i| i % 3 + 1).collect();
    assert_eq!(seen, expected);

    // Every request comes from 127.0.0.1: ip-hash would have sent all of
    // them to one backend, which round robin also chose for a third.
    let s = status(&proxy).await;
    let shadow = &s["upstreams"][0]["shadow"];
    assert_eq!(shadow["name"], "ip-hash");
    assert_eq!(shadow["picks"], 30);
    assert_eq!(shadow["failures"], 0);
    assert_eq!(shadow["agreements"], 10);
    assert_eq!(shadow["disagreements"], 20);
    assert_eq!(shadow["agreement_ratio"].as_f64(), Some(10.0 / 30.0));
    let would: Vec<u64> = shadow["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["picks"].as_u64().expect("picks"))
        .collect();
    assert_eq!(would.iter().sum::<u64>(), 30);
    assert_eq!(would.iter().filter(|&&n| n == 30).count(), 1, "{would:?}");
    let chosen = would.iter().position(|&n| n == 30).expect("one backend");
    assert_eq!(shadow["backends"][chosen]["share"].as_f64(), Some(1.0));
    // The live split is untouched.
    for b in s["upstreams"][0]["backends"].as_array().expect("backends") {
        assert_eq!(b["requests"], 10);
    }
    eprintln!(
        "shadow pick: {:.1} µs on average",
        shadow["pick_us_mean"].as_f64().unwrap_or(f64::NAN)
    );

    let m = metrics(&proxy).await;
    for line in [
        "switchyard_shadow_picks_total{upstream=\"app\",plugin=\"ip-hash\",result=\"agree\"} 10",
        "switchyard_shadow_picks_total{upstream=\"app\",plugin=\"ip-hash\",result=\"disagree\"} 20",
        "switchyard_shadow_picks_total{upstream=\"app\",plugin=\"ip-hash\",result=\"failed\"} 0",
    ] {
        assert!(m.contains(line), "missing `{line}` in\n{m}");
    }
    let backend_lines: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("switchyard_shadow_backend_picks_total{"))
        .collect();
    assert_eq!(backend_lines.len(), 3, "{backend_lines:?}");
    assert_eq!(
        backend_lines.iter().filter(|l| l.ends_with(" 30")).count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agreement_is_counted_pick_by_pick() {
    // The shadow picks the backend the request names in `x-pick`.
    let (_be, _fx, proxy) =
        start("shadow = \"test-strategy\"\nshadow-params = { mode = \"echo-header\" }").await;
    let client = client();
    let asked = [0u32, 1, 1, 0, 2, 2, 2, 0, 1, 0, 0, 0];
    for k in asked {
        let r = get_with(&client, proxy.addr(), "/", &[("x-pick", &k.to_string())])
            .await
            .expect("request");
        assert_eq!(r.status, 200);
    }
    // Round robin picks index i % 3 for the i-th request.
    let agree = asked
        .iter()
        .enumerate()
        .filter(|(i, k)| *i as u32 % 3 == **k)
        .count() as u64;
    let s = status(&proxy).await;
    let shadow = &s["upstreams"][0]["shadow"];
    assert_eq!(shadow["picks"], 12);
    assert_eq!(shadow["agreements"], agree);
    assert_eq!(shadow["disagreements"], 12 - agree);
    for (index, b) in shadow["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .enumerate()
    {
        let n = asked.iter().filter(|&&k| k as usize == index).count();
        assert_eq!(b["picks"], n as u64, "backend {index}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_shadow_never_fails_a_request() {
    for mode in ["trap", "spin", "bad-index", "grow"] {
        let (_be, _fx, proxy) = start(&format!(
            "shadow = \"test-strategy\"\nshadow-params = {{ mode = \"{mode}\" }}"
        ))
        .await;
        let client = client();
        let mut seen = Vec::new();
        for _ in 0..12 {
            let r = get(&client, proxy.addr(), "/").await;
            assert_eq!(r.status, 200, "{mode}: {r:?}");
            seen.push(r.backend().expect("a demo greeting"));
        }
        let expected: Vec<usize> = (0..12).map(|i| i % 3 + 1).collect();
        assert_eq!(seen, expected, "{mode}: live traffic untouched");
        let s = status(&proxy).await;
        let shadow = &s["upstreams"][0]["shadow"];
        assert_eq!(shadow["picks"], 12, "{mode}");
        assert_eq!(shadow["failures"], 12, "{mode}");
        assert_eq!(shadow["agreements"], 0, "{mode}");
        assert_eq!(shadow["agreement_ratio"], Value::Null, "{mode}");
        // The live strategy never failed.
        let live = &s["upstreams"][0]["strategy"]["failures"];
        for kind in ["trap", "timeout", "bad_answer", "instantiate", "skipped"] {
            assert_eq!(live[kind], 0, "{mode}: live {kind}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_plugin_hot_reloads_and_can_be_configured_away() {
    let (be, fx, proxy) = start("shadow = \"test-strategy\"").await;
    let client = client();
    for _ in 0..3 {
        assert_eq!(get(&client, proxy.addr(), "/").await.status, 200);
    }
    let before = status(&proxy).await["upstreams"][0]["shadow"]["hash"].clone();
    // A new build of the shadow's file: swapped in like a live strategy.
    fx.install("test-strategy", IP_HASH);
    let swapped = eventually(std::time::Duration::from_secs(10), || {
        let proxy = &proxy;
        let before = before.clone();
        async move { status(proxy).await["upstreams"][0]["shadow"]["hash"] != before }
    })
    .await;
    assert!(swapped.is_some(), "the shadow's new build is loaded");
    // The reloader records a swap just after it (CI once read the history
    // in between and found it empty).
    wait_status(
        &proxy,
        std::time::Duration::from_secs(5),
        "the shadow's swap is in the reload history",
        |s| {
            s.reloads().iter().any(|r| {
                r["upstreams"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|u| u == "app (shadow)"))
            })
        },
    )
    .await;

    // Without `shadow` in the config, there is none.
    fx.write_config(&upstream("round-robin", &be, ""));
    let gone = eventually(std::time::Duration::from_secs(10), || {
        let proxy = &proxy;
        async move { status(proxy).await["upstreams"][0]["shadow"].is_null() }
    })
    .await;
    assert!(gone.is_some(), "the shadow is removed by a config reload");
    assert_eq!(get(&client, proxy.addr(), "/").await.status, 200);
}
