//! DNS discovery against a stub DNS server on loopback: a server given as
//! `name:port` becomes one backend per address, and follows the answers as
//! replicas come and go, with the strategy balancing over the new set.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::dns::StubDns;
use common::*;

/// Demo backends 1..=n on 127.0.0.1, 127.0.0.2, ... all on one port, like
/// replicas of one service.
async fn replicas(n: u8) -> (u16, Vec<switchyard::demo::DemoBackend>) {
    for _ in 0..20 {
        let first = switchyard::demo::spawn("127.0.0.1:0".parse().expect("addr"), 1)
            .await
            .expect("backend 1");
        let port = first.addr.port();
        let mut all = vec![first];
        for i in 2..=n {
            let addr = SocketAddr::from((Ipv4Addr::new(127, 0, 0, i), port));
            match switchyard::demo::spawn(addr, usize::from(i)).await {
                Ok(b) => all.push(b),
                Err(_) => break, // port taken on that address: try another
            }
        }
        if all.len() == usize::from(n) {
            return (port, all);
        }
    }
    panic!("no port free on 127.0.0.1-{n}");
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// The backend answering each of `n` sequential requests.
async fn answering(proxy: &switchyard::Proxy, n: usize) -> Vec<usize> {
    let client = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(&client, proxy.addr(), "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        out.push(r.backend().expect("a demo backend"));
    }
    out
}

/// The backends answering `n` sequential requests.
async fn served(proxy: &switchyard::Proxy, n: usize) -> Vec<usize> {
    let mut counts = answering(proxy, n).await;
    counts.sort();
    counts.dedup();
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_becomes_one_backend_per_address_and_follows_dns() {
    let (port, _replicas) = replicas(3).await;
    let dns = StubDns::start(&[ip(1)]).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "resolver = \"{}\"\n[[upstream]]\nname = \"app\"\nservers = [\"app.test:{port}\"]\nresolve-interval = \"200ms\"\n",
        dns.addr
    ));
    let proxy = fx.start().await;
    // Resolved before the first request.
    assert_eq!(served(&proxy, 6).await, vec![1]);

    // Scale up: two more replicas answer; round robin spreads over all.
    dns.set(&[ip(1), ip(2), ip(3)]);
    let scaled = eventually(Duration::from_secs(3), || async {
        served(&proxy, 9).await == vec![1, 2, 3]
    })
    .await;
    assert!(scaled.is_some(), "the new replicas never got traffic");
    assert_eq!(
        status(&proxy).await.ids(0),
        [ip(1), ip(2), ip(3)].map(|i| format!("{i}:{port}"))
    );

    // A DNS failure keeps the last known addresses. The proxy has dealt
    // with a failed lookup once the stub hears from it again a round later
    // (rounds are 200 ms apart; the queries of one lookup go together).
    dns.fail();
    wait_for(
        Duration::from_secs(5),
        "a failed lookup, then the next round",
        || async {
            let answered = dns.answered();
            let failed = answered.iter().find(|(_, servfail)| *servfail);
            match (failed, answered.last()) {
                (Some((first, _)), Some((last, _)))
                    if last.duration_since(*first) >= Duration::from_millis(150) =>
                {
                    Ok(())
                }
                _ => Err(format!("{} queries answered", answered.len())),
            }
        },
    )
    .await;
    assert_eq!(served(&proxy, 9).await, vec![1, 2, 3]);

    // Scale down to replica 2: the others leave, the kept one keeps its
    // counters (a new backend would count from 0).
    let before = status(&proxy).await.requests(0)[1];
    dns.set(&[ip(2)]);
    let on_2 = std::cell::Cell::new(0);
    let down = eventually(Duration::from_secs(3), || async {
        let round = answering(&proxy, 6).await;
        on_2.set(on_2.get() + round.iter().filter(|&&b| b == 2).count() as u64);
        round.iter().all(|&b| b == 2)
    })
    .await;
    assert!(down.is_some(), "removed replicas kept getting traffic");
    let now = status(&proxy).await;
    assert_eq!(now.ids(0), [format!("{}:{port}", ip(2))]);
    assert_eq!(
        now.requests(0),
        [before + on_2.get()],
        "the kept backend counts on from its {before} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_addresses_mix_and_check_rejects_ids_on_names() {
    let (port, _replicas) = replicas(2).await;
    let dns = StubDns::start(&[ip(2)]).await;
    let fx = Fixture::new(&[("round-robin", ROUND_ROBIN)]);
    fx.write_config(&format!(
        "resolver = \"{}\"\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:{port}\", \"app.test:{port}\"]\n",
        dns.addr
    ));
    let proxy = fx.start().await;
    assert_eq!(served(&proxy, 6).await, vec![1, 2]);

    let text = format!(
        "[[upstream]]\nname = \"app\"\nservers = [{{ address = \"app.test:{port}\", id = \"x\" }}]\n"
    );
    let err = switchyard::Config::parse(&text, std::path::Path::new("t.toml"))
        .expect_err("an id on a host name");
    assert!(err.to_string().contains("servers[0].id"), "{err}");
}
