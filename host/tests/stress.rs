//! The stress tool (`examples/stress`) against a real proxy with a known
//! strategy: its per-backend map is the split the strategy makes, over
//! HTTP/1.1 and HTTP/2 alike.

mod common;

use std::num::NonZeroUsize;

use common::*;
use switchyard_stress::{BackendKey, Options, run};

async fn split(
    proxy: &switchyard::Proxy,
    requests: u64,
    concurrency: usize,
    by: &str,
    http2: bool,
) -> Vec<(String, u64)> {
    let target = format!("http://{}/", proxy.addr()).parse().expect("url");
    let mut options = Options::new(target);
    options.requests = Some(requests);
    options.concurrency = NonZeroUsize::new(concurrency).expect("non-zero");
    options.by = by.parse::<BackendKey>().expect("--by");
    options.http2 = http2;
    let report = run(options).await.expect("run");
    assert_eq!(report.total, requests);
    assert_eq!(report.successes, requests, "{report:?}");
    report
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.count))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stress_map_is_the_round_robin_split() {
    let be = backends(3).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&upstream(
        "round-robin",
        &be,
        "backend-header = \"x-upstream\"",
    ));
    let proxy = fx.start().await;

    // One connection, then ten: round robin is exact and global.
    for concurrency in [1, 10] {
        let map = split(&proxy, 300, concurrency, "x-upstream", false).await;
        let expected: Vec<(String, u64)> = be.iter().map(|b| (b.addr.to_string(), 100)).collect();
        let mut sorted = map.clone();
        sorted.sort();
        let mut want = expected.clone();
        want.sort();
        assert_eq!(sorted, want, "-c {concurrency}: {map:?}");
    }
    // The demo backends' own header gives the same split, by number.
    let by_number = vec![
        ("1".to_string(), 10),
        ("2".to_string(), 10),
        ("3".to_string(), 10),
    ];
    let map = split(&proxy, 30, 3, "x-backend", false).await;
    assert_eq!(map, by_number);
    // The same over HTTP/2 with prior knowledge (`--h2`).
    let map = split(&proxy, 30, 3, "x-backend", true).await;
    assert_eq!(map, by_number, "--h2");
}
