//! The cost of one admission plugin call: `plugins/rate-limit` (one
//! `limits.take` per call, keyed by the client address) and the host's
//! side of it (lending the request head, the call, the check of the
//! verdict), against the built-in `limit-req` doing the same.
//!
//! One iteration is one `Admission::admit` on the calling thread's
//! long-lived instance (made during warm-up). The bucket is large enough
//! that every call is allowed, so the limiter's table and the answer stay
//! the same from one iteration to the next. Target: at most 300 ns.
//!
//! Run with `cargo bench -p switchyard --bench admit`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use criterion::Criterion;
use http::request::Parts;
use switchyard::base::clock;
use switchyard::base::config::{Admission as Rules, LimitKey, LimitReq, PluginLimits, Rate};
use switchyard::limit::{Gate, Holds};
use switchyard::plugin::{Admission, Gated, Runtime};

fn admits(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let compiled = runtime
        .compile(Path::new(env!("SWITCHYARD_WASM_RATE_LIMIT")))
        .expect("rate-limit compiles");
    let params: toml::Table =
        toml::from_str("rate = \"1000000/s\"\nburst = 100000").expect("params");
    let limits = PluginLimits::default();
    let admission = Admission::prepare(&runtime, compiled, "bench", &params, limits, 100_000, None)
        .expect("rate-limit prepares");
    let client = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    let mut parts: Parts = http::Request::new(()).into_parts().0;
    let mut group = c.benchmark_group("admit");
    group.bench_function("rate-limit plugin, one take", |b| {
        b.iter(|| {
            let mut holds = Holds::default();
            let gated = admission.admit(black_box(client), &mut parts, &mut holds);
            debug_assert_eq!(gated, Gated::Allow);
            black_box(gated)
        })
    });
    let rules = Rules {
        limit_req: vec![LimitReq {
            rate: Rate {
                requests: 1_000_000,
                per: Duration::from_secs(1),
            },
            burst: 100_000,
            key: LimitKey::ClientIp,
            status: http::StatusCode::TOO_MANY_REQUESTS,
            dry_run: false,
        }],
        ..Rules::default()
    };
    let gate = Gate::new(&rules, None, false);
    group.bench_function("built-in limit-req", |b| {
        b.iter(|| black_box(gate.check(&parts.headers, black_box(client), clock::now_ns())))
    });
    group.finish();
    let failures = admission.stats.failures();
    assert_eq!(failures, 0, "the plugin failed {failures} times");
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose
// generated `pub fn` has no doc comment (the workspace warns on missing docs).
fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    admits(&mut criterion);
    criterion.final_summary();
}
