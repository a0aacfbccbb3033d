//! The cost of one strategy pick: the Wasm reference plugins (round robin,
//! least connections, IP hash) against the host's own round robin, each with
//! 3, 100 and 10 000 backends.
//!
//! One iteration is one `Strategy::pick` on the calling thread's long-lived
//! instance (created during warm-up), so it includes the host side of a pick:
//! building the WIT request, the call into the guest, the guest's import calls
//! and the host's check of the answer. The request head is lent to the pick
//! (`&mut Parts`) as on the request path, never rebuilt; only a plugin that
//! imports the `request` interface gets it swapped into its store.
//!
//! A strategy written in another language is measured next to them when its
//! component is given (see [`POLYGLOT`]): `SWITCHYARD_WASM_JS=$(bash
//! examples/js-strategy/build.sh) cargo bench -p switchyard --bench pick --
//! 'ip-hash'`.
//!
//! Run with `cargo bench -p switchyard --bench pick`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use http::request::Parts;
use switchyard::backend::BackendSet;
use switchyard::base::config::{PluginLimits, ServerConfig};
use switchyard::plugin::{Choice, Compiled, PickInput, Runtime, Strategy, fallback};

/// Backend counts every group is measured with.
const SIZES: [usize; 3] = [3, 100, 10_000];

/// The reference plugins: criterion group name and component file.
const PLUGINS: [(&str, &str); 3] = [
    ("round-robin", env!("SWITCHYARD_WASM_ROUND_ROBIN")),
    ("least-conn", env!("SWITCHYARD_WASM_LEAST_CONN")),
    ("ip-hash", env!("SWITCHYARD_WASM_IP_HASH")),
];

/// The example strategies of `examples/strategies/` and their `params`:
/// consistent hash hashes the client address, with 20 ring points per
/// backend so that a worker's ring of 10 000 backends builds within the
/// instance deadline; canary requests have no marker (the stable pool).
const EXAMPLE_STRATEGIES: [(&str, &str, &str); 4] = [
    ("p2c", env!("SWITCHYARD_WASM_P2C"), ""),
    ("peak-ewma", env!("SWITCHYARD_WASM_PEAK_EWMA"), ""),
    (
        "consistent-hash",
        env!("SWITCHYARD_WASM_CONSISTENT_HASH"),
        "vnodes = 20",
    ),
    (
        "canary",
        env!("SWITCHYARD_WASM_CANARY"),
        "canary = [\"127.0.0.1:10000\"]",
    ),
];

/// Strategies written in other languages, built outside cargo: criterion
/// group name and the environment variable naming the component
/// (`examples/js-strategy/build.sh` builds `ip-hash-js` and prints its path).
/// A group whose variable is unset is skipped with a note.
const POLYGLOT: [(&str, &str); 1] = [("ip-hash-js", "SWITCHYARD_WASM_JS")];

/// `n` backends at 127.0.0.1:10000, :10001, ..., weight 1, id = address.
fn backend_set(n: usize) -> Arc<BackendSet> {
    let servers: Vec<ServerConfig> = (0..n)
        .map(|i| {
            let port = u16::try_from(10_000 + i).expect("backend port fits in u16");
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            ServerConfig {
                id: addr.to_string(),
                address: addr.to_string(),
                addr,
                weight: 1,
            }
        })
        .collect();
    Arc::new(BackendSet::build(&servers, None))
}

/// A minimal request head, made once per benchmark and reused.
fn request_parts() -> Parts {
    http::Request::builder()
        .uri("/")
        .header("host", "example.com")
        .body(())
        .expect("a valid request head")
        .into_parts()
        .0
}

/// A client address that changes with every pick, so IP hash does not keep
/// hashing the same value.
fn client_ip(sequence: u64) -> IpAddr {
    // Truncation intended: any 32 bits of the mixed sequence will do.
    IpAddr::V4(Ipv4Addr::from(
        (sequence as u32).wrapping_mul(0x9E37_79B9) ^ 0x0A00_0000,
    ))
}

/// What answers a pick: a Wasm strategy or the host's round robin.
enum Picker {
    /// `switchyard::plugin::fallback`.
    Native,
    /// A prepared plugin.
    Wasm(Arc<Strategy>),
}

impl Picker {
    #[inline]
    fn pick(&self, input: PickInput<'_>, parts: &mut Parts) -> Choice {
        match self {
            Picker::Native => fallback(&input),
            Picker::Wasm(strategy) => strategy.pick(input, parts),
        }
    }
}

/// Measures `make(set)` picking from sets of every size in [`SIZES`].
fn bench_group(c: &mut Criterion, name: &str, make: impl Fn(&Arc<BackendSet>) -> Picker) {
    let mut group = c.benchmark_group(name);
    for n in SIZES {
        let set = backend_set(n);
        let picker = make(&set);
        let mut parts = request_parts();
        let mut sequence = 0u64;

        // One pick outside the measurement: creates this thread's instance
        // and checks that the plugin, not the fallback, answers.
        let input = PickInput {
            set: &set,
            sequence: u64::MAX,
            client_ip: client_ip(0),
            exclude: &[],
            attempt: 0,
        };
        let choice = picker.pick(input, &mut parts);
        assert!(
            matches!(choice, Choice::Backend(i) if (i as usize) < n),
            "{name}/{n}: unexpected first choice {choice:?}"
        );

        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let input = PickInput {
                    set: &set,
                    sequence,
                    client_ip: client_ip(sequence),
                    exclude: &[],
                    attempt: 0,
                };
                sequence = sequence.wrapping_add(1);
                black_box(picker.pick(input, &mut parts))
            });
        });

        if let Picker::Wasm(strategy) = &picker {
            check_stats(name, n, strategy);
        }
    }
    group.finish();
}

/// Fails the run if the plugin trapped, answered out of range or could not
/// be instantiated: those picks were served by the host's round robin, so the
/// numbers would not measure the plugin. Deadline overruns are only reported:
/// on a loaded machine the OS can deschedule the bench thread for longer than
/// the 10 ms pick deadline, which says nothing about the plugin.
fn check_stats(name: &str, n: usize, strategy: &Strategy) {
    let stats = &strategy.stats;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let (picks, traps, timeouts, bad, instantiate) = (
        load(&stats.picks),
        load(&stats.traps),
        load(&stats.timeouts),
        load(&stats.bad_answers),
        load(&stats.instantiate_failures),
    );
    assert_eq!(
        (traps, bad, instantiate),
        (0, 0, 0),
        "{name}/{n}: plugin failures (traps, bad answers, instantiate failures) \
         out of {picks} picks; the numbers above do not measure the plugin"
    );
    if timeouts > 0 {
        eprintln!(
            "note: {name}/{n}: {timeouts} of {picks} picks ran past the pick deadline \
             (thread descheduled?) and were answered by the host round robin"
        );
    }
}

/// Measures the compiled plugin `name`, prepared with `params`, like the
/// request path calls it.
fn bench_plugin(
    c: &mut Criterion,
    runtime: &Arc<Runtime>,
    name: &str,
    compiled: &Arc<Compiled>,
    params: &toml::Table,
) {
    bench_group(c, name, |set| {
        let strategy = Strategy::prepare(
            runtime,
            Arc::clone(compiled),
            "bench",
            params,
            set,
            limits(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        Picker::Wasm(strategy)
    });
}

/// The default limits. Unoptimised (`cargo test --benches` runs each
/// bench once to check it works), handing 10 000 backends to a new instance
/// takes longer than the 10 ms pick deadline, and the host's round robin
/// would answer instead: there the deadline is a second.
fn limits() -> PluginLimits {
    let mut limits = PluginLimits::default();
    if cfg!(debug_assertions) {
        limits.pick_deadline = Duration::from_secs(1);
    }
    limits
}

fn picks(c: &mut Criterion) {
    let runtime = Runtime::new().expect("wasmtime runtime");
    for (name, path) in PLUGINS {
        let compiled = runtime
            .compile(Path::new(path))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        bench_plugin(c, &runtime, name, &compiled, &toml::Table::new());
    }
    polyglot_picks(c, &runtime);
    for (name, path, params) in EXAMPLE_STRATEGIES {
        let compiled = runtime
            .compile(Path::new(path))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let params: toml::Table = params
            .parse()
            .unwrap_or_else(|e| panic!("{name} params: {e}"));
        bench_plugin(c, &runtime, name, &compiled, &params);
    }
    bench_group(c, "native-fallback", |_| Picker::Native);
}

/// The [`POLYGLOT`] strategies whose component is given, measured like the
/// reference plugins. Their compile time is printed too: a guest that
/// embeds a language runtime compiles for seconds, not milliseconds.
fn polyglot_picks(c: &mut Criterion, runtime: &Arc<Runtime>) {
    for (name, var) in POLYGLOT {
        let Some(path) = std::env::var_os(var) else {
            eprintln!("note: {name} skipped: set {var} to its component file");
            continue;
        };
        let started = std::time::Instant::now();
        let compiled = runtime
            .compile(Path::new(&path))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!(
            "{name}: {} bytes compiled in {:.2?}",
            compiled.size,
            started.elapsed()
        );
        bench_plugin(c, runtime, name, &compiled, &toml::Table::new());
    }
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose
// generated `pub fn` has no doc comment (the workspace warns on missing docs).
fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    picks(&mut criterion);
    criterion.final_summary();
}
