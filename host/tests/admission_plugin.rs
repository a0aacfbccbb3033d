//! Admission plugins (world `admission`): the reference `rate-limit` and
//! `api-key` and a misbehaving test plugin, through real sockets, as a
//! client and an operator see them (statuses, `Retry-After`, which backend
//! served, `/status`, `/metrics`, hot reloads).

mod common;

use std::time::Duration;

use common::*;

/// 127.0.0.1 trusted, so tests speak for other clients with
/// `X-Forwarded-For`; two workers.
const TOP: &str = "workers = 2\ntrusted-proxies = [\"127.0.0.1\"]\n";

/// GET `path` on host `host` as client `ip`, with `extra` headers.
async fn get_as(
    client: &HttpClient,
    proxy: &switchyard::Proxy,
    host: &str,
    ip: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let mut headers = vec![("host", host), ("x-forwarded-for", ip)];
    headers.extend_from_slice(extra);
    get_with(client, proxy.addr(), path, &headers)
        .await
        .expect("a reply")
}

fn retry_after(r: &Reply) -> Option<u64> {
    r.headers
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").parse().expect("seconds"))
}

/// An upstream `name` for `hosts = [name]` over `backends`.
fn named(
    name: &str,
    strategy: &str,
    backends: &[switchyard::demo::DemoBackend],
    extra: &str,
) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nhosts = [\"{name}\"]\nstrategy = \"{strategy}\"\nservers = {}\n{extra}\n",
        servers_toml(backends)
    )
}

fn admission_of(s: &Status, u: usize) -> serde_json::Value {
    s.upstream(u)["admission"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_plugin_gives_the_verdicts_of_the_built_in_limit_req() {
    let plugins = [("round-robin", ROUND_ROBIN), ("rate-limit", RATE_LIMIT)];
    for (limit, params) in [
        (
            "limit-req = { rate = \"1/m\", burst = 3 }",
            "admission-params = { rate = \"1/m\", burst = 3 }",
        ),
        (
            "limit-req = { rate = \"1/m\", burst = 2, key = \"header:x-user\", status = 503 }",
            "admission-params = { rate = \"1/m\", burst = 2, key = \"header:x-user\", status = 503 }",
        ),
    ] {
        let (_be, _fx, proxy) = serve_with(2, &plugins, |be| {
            format!(
                "{TOP}{}{}",
                named("builtin", "round-robin", be, limit),
                named(
                    "plugin",
                    "round-robin",
                    be,
                    &format!("admission = \"rate-limit\"\n{params}")
                ),
            )
        })
        .await;
        let client = client();
        let sequence = [
            ("198.51.100.1", Some("ann")),
            ("198.51.100.1", Some("ann")),
            ("198.51.100.2", Some("bob")),
            ("198.51.100.1", Some("ann")),
            ("198.51.100.1", None),
            ("198.51.100.1", Some("ann")),
            ("198.51.100.2", Some("ann")),
            ("198.51.100.2", Some("bob")),
            ("198.51.100.2", None),
            ("198.51.100.2", Some("bob")),
            ("198.51.100.2", Some("bob")),
        ];
        let mut seen = Vec::new();
        for (ip, user) in sequence {
            let extra: Vec<(&str, &str)> = user.map(|u| ("x-user", u)).into_iter().collect();
            let builtin = get_as(&client, &proxy, "builtin", ip, "/", &extra).await;
            let plugin = get_as(&client, &proxy, "plugin", ip, "/", &extra).await;
            assert_eq!(
                (builtin.status, retry_after(&builtin)),
                (plugin.status, retry_after(&plugin)),
                "{limit}: {ip} {user:?}: built-in {builtin:?}, plugin {plugin:?}"
            );
            seen.push(plugin.status);
        }
        assert!(
            seen.contains(&200) && seen.iter().any(|&s| s != 200),
            "{limit}: {seen:?}"
        );
        let s = status(&proxy).await;
        let (b, p) = (admission_of(&s, 0), admission_of(&s, 1));
        assert_eq!(b["allowed"], p["allowed"], "{b} {p}");
        assert_eq!(b["limited"].as_u64(), p["denied"].as_u64(), "{b} {p}");
        assert_eq!(p["plugin"]["name"], "rate-limit", "{p}");
        assert_eq!(p["plugin"]["limiters"][0]["name"], "limit-req", "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_traps_spins_or_answers_garbage_gets_the_failure_policy() {
    let plugins = [
        ("round-robin", ROUND_ROBIN),
        ("test-admission", TEST_ADMISSION),
    ];
    let (_be, _fx, proxy) = serve_with(2, &plugins, |be| {
        format!(
            "{TOP}plugin-limits = {{ pick-deadline = \"50ms\" }}\n{}{}",
            named("open", "round-robin", be, "admission = \"test-admission\""),
            named(
                "closed",
                "round-robin",
                be,
                "admission = \"test-admission\"\nplugin-failure = \"fail-closed\""
            ),
        )
    })
    .await;
    let client = client();
    for path in [
        "/trap",
        "/spin",
        "/garbage",
        "/bad-header",
        "/undeclared",
        "/grow",
    ] {
        let open = get_as(&client, &proxy, "open", "198.51.100.1", path, &[]).await;
        assert_eq!(open.status, 200, "fail-open {path}: {open:?}");
        assert!(open.backend().is_some(), "fail-open {path}: {open:?}");
        let closed = get_as(&client, &proxy, "closed", "198.51.100.1", path, &[]).await;
        assert_eq!(closed.status, 503, "fail-closed {path}: {closed:?}");
        assert!(
            closed.body.contains("admission plugin failed"),
            "{closed:?}"
        );
        // A good call in between keeps the breaker closed.
        for host in ["open", "closed"] {
            let fine = get_as(&client, &proxy, host, "198.51.100.1", "/", &[]).await;
            assert_eq!(fine.status, 200, "{host} after {path}: {fine:?}");
        }
    }
    // A deny is a verdict, not a failure: its status, reason, Retry-After.
    let denied = get_as(&client, &proxy, "open", "198.51.100.1", "/deny", &[]).await;
    assert_eq!(
        (denied.status, retry_after(&denied)),
        (451, Some(7)),
        "{denied:?}"
    );
    assert!(denied.body.contains("test says no"), "{denied:?}");
    // Declaring outside init is refused (an error, not a trap).
    let late = get_as(
        &client,
        &proxy,
        "open",
        "198.51.100.1",
        "/late-declare",
        &[],
    )
    .await;
    assert_eq!(late.status, 418, "{late:?}");
    assert!(late.body.contains("during `gate.init` only"), "{late:?}");

    let s = status(&proxy).await;
    let plugin = &admission_of(&s, 1)["plugin"];
    let failures = |kind: &str| plugin["failures"][kind].as_u64().unwrap_or(0);
    assert_eq!(failures("trap"), 3, "trap, undeclared, grow: {plugin}");
    assert_eq!(failures("timeout"), 1, "{plugin}");
    assert_eq!(failures("bad_answer"), 2, "{plugin}");
    let a = admission_of(&s, 1);
    assert_eq!(a["denied"].as_u64(), Some(6), "{a}");
    let text = metrics(&proxy).await;
    assert_eq!(
        sample(
            &text,
            "switchyard_admission_total{upstream=\"closed\",verdict=\"denied\",reason=\"plugin-failure\"}"
        ),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_admission_total{upstream=\"open\",verdict=\"denied\",reason=\"plugin\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_admission_plugin_failures_total{upstream=\"closed\",plugin=\"test-admission\",kind=\"timeout\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_the_plugin_adds_reach_the_strategy() {
    let plugins = [
        ("test-strategy", TEST_STRATEGY),
        ("test-admission", TEST_ADMISSION),
    ];
    let (_be, _fx, proxy) = serve_with(3, &plugins, |be| {
        format!(
            "{TOP}{}",
            named(
                "app",
                "test-strategy",
                be,
                "params = { mode = \"echo-header\" }\nadmission = \"test-admission\"\nadmission-params = { mode = \"tag\" }"
            )
        )
    })
    .await;
    let client = client();
    for want in ["2", "1", "0"] {
        let r = get_as(
            &client,
            &proxy,
            "app",
            "198.51.100.1",
            "/",
            &[("x-want-pick", want)],
        )
        .await;
        let expected: usize = want.parse::<usize>().expect("digit") + 1;
        assert_eq!(r.backend(), Some(expected), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swapping_the_admission_plugin_keeps_its_limiters() {
    let plugins = [("round-robin", ROUND_ROBIN), ("gate", RATE_LIMIT)];
    let (_be, fx, proxy) = serve_with(2, &plugins, |be| {
        format!(
            "{TOP}{}",
            named(
                "app",
                "round-robin",
                be,
                "admission = \"gate\"\nadmission-params = { rate = \"1/m\", burst = 4 }"
            )
        )
    })
    .await;
    let client = client();
    for i in 0..3 {
        let r = get_as(&client, &proxy, "app", "198.51.100.9", "/", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    // Another build of the plugin (same WIT, other bytes): a hot reload.
    let mut bytes = std::fs::read(RATE_LIMIT).expect("plugin");
    // A custom section at the end: the same component, another hash.
    bytes.extend_from_slice(&[0, 7, 5, b'x', b'-', b'a', b'd', b'm', 1]);
    let before = reload_counts(&proxy).await;
    fx.write_plugin("gate", &bytes);
    wait_reload(&proxy, &before, "plugin", "ok", Duration::from_secs(10)).await;
    let hash = build_hash(&bytes);
    let s = status(&proxy).await;
    assert_eq!(admission_of(&s, 0)["plugin"]["hash"], hash.as_str());
    // One token left of the four, then 429: the bucket was kept.
    let r = get_as(&client, &proxy, "app", "198.51.100.9", "/", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get_as(&client, &proxy, "app", "198.51.100.9", "/", &[]).await;
    assert_eq!(r.status, 429, "{r:?}");

    // A broken file is refused and the loaded build keeps serving, its
    // limiter too.
    let before = reload_counts(&proxy).await;
    fx.write_plugin("gate", b"\0asm garbage");
    wait_reload(&proxy, &before, "plugin", "error", Duration::from_secs(10)).await;
    let r = get_as(&client, &proxy, "app", "198.51.100.9", "/", &[]).await;
    assert_eq!(r.status, 429, "{r:?}");
    let r = get_as(&client, &proxy, "app", "198.51.100.10", "/", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        status(&proxy).await.upstream(0)["admission"]["plugin"]["hash"],
        hash.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_named_as_admission_is_refused_naming_the_world() {
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    let be = backends(1).await;
    fx.write_config(&named(
        "app",
        "round-robin",
        &be,
        "admission = \"round-robin\"",
    ));
    let err = switchyard::Gateway::build(fx.config()).expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("switchyard:balancer/admission"), "{text}");
    // And the other way round.
    let fx = Fixture::new(&[("rate-limit", RATE_LIMIT)]);
    fx.write_config(&named("app", "rate-limit", &be, ""));
    let text = switchyard::Gateway::build(fx.config())
        .expect_err("refused")
        .to_string();
    assert!(text.contains("admission plugin"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_holds_until_the_response_is_sent_and_add_counts_a_window() {
    let plugins = [
        ("round-robin", ROUND_ROBIN),
        ("test-admission", TEST_ADMISSION),
    ];
    let (_be, _fx, proxy) = serve_with(2, &plugins, |be| {
        format!(
            "{TOP}{}{}",
            named(
                "inflight",
                "round-robin",
                be,
                "admission = \"test-admission\"\nadmission-params = { mode = \"inflight\", max = 1 }"
            ),
            named(
                "count",
                "round-robin",
                be,
                "admission = \"test-admission\"\nadmission-params = { mode = \"count\", max = 3 }"
            ),
        )
    })
    .await;
    let client = client();
    // One slow request holds the one place ...
    let slow = {
        let client = client.clone();
        let addr = proxy.addr();
        tokio::spawn(async move {
            get_with(&client, addr, "/delay/1500", &[("host", "inflight")])
                .await
                .expect("a reply")
        })
    };
    wait_for(
        Duration::from_secs(5),
        "the slow request in flight",
        || async {
            let s = status(&proxy).await;
            let n: u64 = s.in_flight(0).iter().sum();
            if n == 1 {
                Ok(())
            } else {
                Err(format!("in flight {n}"))
            }
        },
    )
    .await;
    let second = get_as(&client, &proxy, "inflight", "198.51.100.1", "/", &[]).await;
    assert_eq!(second.status, 429, "{second:?}");
    assert!(second.body.contains("in flight: 1"), "{second:?}");
    // ... until its response has been sent.
    assert_eq!(slow.await.expect("joined").status, 200);
    let third = get_as(&client, &proxy, "inflight", "198.51.100.1", "/", &[]).await;
    assert_eq!(third.status, 200, "released: {third:?}");
    // A denied request released what it acquired: still one place free.
    let fourth = get_as(&client, &proxy, "inflight", "198.51.100.1", "/", &[]).await;
    assert_eq!(fourth.status, 200, "{fourth:?}");

    // The counter counts across both workers' instances.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            get_as(&client, &proxy, "count", "198.51.100.1", "/", &[])
                .await
                .status,
        );
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let r = get_as(&client, &proxy, "count", "198.51.100.1", "/", &[]).await;
    assert!(r.body.contains("count: 6"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_let_their_clients_in_each_at_its_own_rate() {
    let plugins = [("test-strategy", TEST_STRATEGY), ("api-key", API_KEY)];
    let (_be, _fx, proxy) = serve_with(3, &plugins, |be| {
        format!(
            "{TOP}{}",
            named(
                "app",
                "test-strategy",
                be,
                // The client's name as `x-pick`: the strategy sends it to
                // that backend, so the added header is seen.
                "params = { mode = \"echo-header\" }\nadmission = \"api-key\"\nadmission-params = { identity-header = \"x-pick\", keys = { \"2\" = \"k-two:2/m\", \"1\" = \"k-one:4/m\" } }"
            )
        )
    })
    .await;
    let client = client();
    let ip = "198.51.100.1";
    let none = get_as(&client, &proxy, "app", ip, "/", &[]).await;
    assert_eq!(none.status, 401, "{none:?}");
    let wrong = get_as(&client, &proxy, "app", ip, "/", &[("x-api-key", "k-nope")]).await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    // A client cannot pick its identity: the plugin's header replaces it.
    let mut two = Vec::new();
    for _ in 0..3 {
        two.push(
            get_as(
                &client,
                &proxy,
                "app",
                ip,
                "/",
                &[("x-api-key", "k-two"), ("x-pick", "0")],
            )
            .await,
        );
    }
    assert_eq!(two[0].backend(), Some(3), "{:?}", two[0]);
    assert_eq!(two[1].backend(), Some(3), "{:?}", two[1]);
    assert_eq!(two[2].status, 429, "{:?}", two[2]);
    assert!(
        retry_after(&two[2]).is_some_and(|s| (1..=60).contains(&s)),
        "{:?}",
        two[2]
    );
    let mut one = Vec::new();
    for _ in 0..5 {
        one.push(get_as(&client, &proxy, "app", ip, "/", &[("x-api-key", "k-one")]).await);
    }
    let backends: Vec<Option<usize>> = one.iter().map(Reply::backend).collect();
    assert_eq!(
        backends,
        [Some(2), Some(2), Some(2), Some(2), None],
        "{one:?}"
    );
    assert_eq!(one[4].status, 429);
}
