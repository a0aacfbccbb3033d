//! State across reload: a strategy that exports `state` (snapshot and
//! restore) continues where its previous version left off when the plugin
//! file is replaced. `smooth-wrr` keeps nginx's current weights in guest
//! memory; on one worker thread (a current-thread runtime serves the
//! proxy), swapping it mid-sequence must leave the sequence uninterrupted,
//! and swapping to a build without the `state` export must restart it.

mod common;

use std::time::Duration;

use common::*;
use switchyard::Proxy;

const SMOOTH_WRR: &str = env!("SWITCHYARD_WASM_SMOOTH_WRR");

/// nginx's smooth weighted round robin: the first `n` picks, as backend
/// numbers from 1.
fn smooth(weights: &[i64], n: usize) -> Vec<usize> {
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    (0..n)
        .map(|_| {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += w;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best + 1
        })
        .collect()
}

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The component with a custom section appended: the same code in new
/// bytes, which is what a rebuild with a new version string looks like to
/// the host (a new content hash, so a new version is loaded).
fn rebuilt(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"switchyard-test-version";
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// The component with its `state` interface export renamed (same length,
/// so every section stays valid): to the host, a build of the same strategy
/// without snapshot and restore.
fn without_state(bytes: &[u8]) -> Vec<u8> {
    let (from, to) = (
        b"switchyard:balancer/state@".as_slice(),
        b"switchyard:balancer/stale@".as_slice(),
    );
    let mut out = bytes.to_vec();
    let mut renamed = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            renamed += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(renamed > 0, "the component exports no `state` interface");
    out
}

/// smooth-wrr over three backends weighted 5/1/1.
async fn start() -> Served {
    serve_with(3, &[("smooth-wrr", SMOOTH_WRR)], |be| {
        format!(
            "[[upstream]]\nname = \"app\"\nstrategy = \"smooth-wrr\"\nservers = [{{ address = \"{}\", weight = 5 }}, \"{}\", \"{}\"]\n",
            be[0].addr, be[1].addr, be[2].addr
        )
    })
    .await
}

/// Backend numbers of `n` sequential requests.
async fn send(client: &HttpClient, proxy: &Proxy, n: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = get(client, proxy.addr(), "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        out.push(r.backend().expect("a demo greeting"));
    }
    out
}

/// Writes `bytes` as the plugin and waits until the upstream runs it.
async fn swap(fx: &Fixture, proxy: &Proxy, bytes: &[u8]) {
    fx.write_plugin("smooth-wrr", bytes);
    let took = wait_for_build(proxy, 0, bytes, Duration::from_secs(10)).await;
    eprintln!("reload took {took:?}");
}

/// Hand-overs, failed hand-overs and failed picks of the live strategy.
async fn handovers(proxy: &Proxy) -> (u64, u64, u64) {
    let s = status(proxy).await;
    (
        s.strategy_count(0, "handovers"),
        s.strategy_count(0, "handover_failures"),
        s.strategy_failed_picks(0),
    )
}

#[tokio::test(flavor = "current_thread")]
async fn a_reload_continues_the_smooth_sequence_exactly() {
    let (_be, fx, proxy) = start().await;
    let client = client();
    let original = std::fs::read(SMOOTH_WRR).expect("smooth-wrr build");
    let first = status(&proxy).await;
    assert_eq!(
        first.strategy(0)["stateful"],
        true,
        "smooth-wrr exports `state`"
    );

    // Mid-period (a period of 5/1/1 is 7 picks), then swapped twice, each
    // time mid-period again. One worker thread: one hand-over per version
    // (only from a version of the same plugin in the same place), none
    // failed.
    let mut seen = send(&client, &proxy, 10).await;
    swap(&fx, &proxy, &rebuilt(&original, "2")).await;
    assert_ne!(
        status(&proxy).await.strategy_hash(0),
        first.strategy_hash(0)
    );
    seen.extend(send(&client, &proxy, 9).await);
    assert_eq!(handovers(&proxy).await, (1, 0, 0), "the second version");
    swap(&fx, &proxy, &rebuilt(&original, "3")).await;
    seen.extend(send(&client, &proxy, 11).await);
    assert_eq!(handovers(&proxy).await, (1, 0, 0), "the third version");

    assert_eq!(
        seen,
        smooth(&[5, 1, 1], 30),
        "the sequence continues across both reloads"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn without_the_state_export_a_reload_restarts_the_sequence() {
    let (_be, fx, proxy) = start().await;
    let client = client();
    let original = std::fs::read(SMOOTH_WRR).expect("smooth-wrr build");

    let before = send(&client, &proxy, 10).await;
    assert_eq!(before, smooth(&[5, 1, 1], 10));
    swap(&fx, &proxy, &without_state(&original)).await;
    assert_eq!(status(&proxy).await.strategy(0)["stateful"], false);
    let after = send(&client, &proxy, 11).await;
    // What the first test asserts would fail here: the new instance starts
    // from zero current weights.
    assert_eq!(after, smooth(&[5, 1, 1], 11), "started over");
    assert_ne!(after, smooth(&[5, 1, 1], 21)[10..].to_vec());
    assert_eq!(handovers(&proxy).await.0, 0);

    // And back to a stateful build: nothing to hand over from a stateless
    // one, so it starts over again, without failing.
    swap(&fx, &proxy, &rebuilt(&original, "again")).await;
    let again = send(&client, &proxy, 4).await;
    assert_eq!(again, smooth(&[5, 1, 1], 4));
    assert_eq!(handovers(&proxy).await.1, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_config_reload_continues_the_sequence_too() {
    let (be, fx, proxy) = start().await;
    let client = client();
    let mut seen = send(&client, &proxy, 10).await;
    let counts = reload_counts(&proxy).await;

    // Another setting of the upstream: it is rebuilt, and its strategy
    // prepared again, continuing the same lineage.
    fx.write_config(&format!(
        "[[upstream]]\nname = \"app\"\nstrategy = \"smooth-wrr\"\nconnect-timeout = \"2s\"\nservers = [{{ address = \"{}\", weight = 5 }}, \"{}\", \"{}\"]\n",
        be[0].addr, be[1].addr, be[2].addr
    ));
    wait_reload(&proxy, &counts, "config", "ok", Duration::from_secs(10)).await;
    // A strategy prepared anew counts from 0; the same plugin in the same
    // place (the hand-over below says so).
    assert_eq!(
        status(&proxy).await.strategy_count(0, "picks"),
        0,
        "the upstream's strategy is prepared again"
    );

    // The first request after the swap makes the new instance and hands
    // the state over: its time is printed, not asserted.
    let started = std::time::Instant::now();
    seen.extend(send(&client, &proxy, 1).await);
    let with_handover = started.elapsed();
    let started = std::time::Instant::now();
    seen.extend(send(&client, &proxy, 10).await);
    eprintln!(
        "first request after the reload: {with_handover:?}; later ones: {:?} each",
        started.elapsed() / 10
    );
    assert_eq!(seen, smooth(&[5, 1, 1], 21));
    assert_eq!(handovers(&proxy).await.0, 1);
}
