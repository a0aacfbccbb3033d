//! `{{name}}`: a Switchyard admission plugin. It decides, before a backend
//! is picked, whether a request may go on.
//!
//! As written it limits each client address to `rate` requests a second
//! with bursts of `burst`, using a rate limiter the proxy keeps (global
//! across its worker threads, kept across reloads of this plugin). A
//! request over the limit is answered 429 with `Retry-After`; one within
//! it goes on with an `x-admitted-by: {{name}}` header the strategy and
//! the backend see. Change `admit` (marked below) to decide as you like.
//!
//! Parameters (the upstream's `admission-params` in switchyard.toml):
//!
//! - `rate` (integer, default 10): requests per second per client;
//! - `burst` (integer, default 20): requests a client may send at once.
//!
//! The contract is wit/balancer.wit (world `admission`), documented item
//! by item: the proxy calls `init` once per instance (one per worker
//! thread; declare limiters there) and `admit` for every request.

wit_bindgen::generate!({ path: "wit", world: "admission" });

use std::cell::Cell;
use std::net::{Ipv4Addr, Ipv6Addr};

use exports::switchyard::balancer::gate::{AdmissionRequest, Guest, Refusal, Verdict};
use switchyard::balancer::limits;
use switchyard::balancer::types::{IpAddress, ParamValue};

thread_local! {
    /// The handle of the limiter declared in `init`.
    static LIMITER: Cell<limits::Limiter> = const { Cell::new(0) };
}

/// An integer parameter in `range`, or an error naming it.
fn integer(
    key: &str,
    value: &ParamValue,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, String> {
    match value {
        ParamValue::Integer(n)
            if (i64::from(*range.start())..=i64::from(*range.end())).contains(n) =>
        {
            Ok(*n as u32)
        }
        other => Err(format!(
            "{{name}}: `{key} = {}`: expected an integer in {}..={}",
            shown(other),
            range.start(),
            range.end()
        )),
    }
}

/// A parameter's value as written in the config, for error messages.
fn shown(value: &ParamValue) -> String {
    match value {
        ParamValue::Text(t) => format!("{t:?}"),
        ParamValue::Integer(n) => n.to_string(),
        ParamValue::Float(f) => f.to_string(),
        ParamValue::Boolean(b) => b.to_string(),
        ParamValue::Toml(t) => t.clone(),
    }
}

/// The client's address as text: the key its requests are counted by.
fn client_key(ip: &IpAddress) -> String {
    match *ip {
        IpAddress::Ipv4((a, b, c, d)) => Ipv4Addr::new(a, b, c, d).to_string(),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            Ipv6Addr::new(a, b, c, d, e, f, g, h).to_string()
        }
    }
}

struct Gate;

impl Guest for Gate {
    /// Reads the parameters and declares the limiter. An `Err` stops the
    /// proxy from using this plugin and shows the message to the operator.
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        let (mut rate, mut burst) = (10, 20);
        for (key, value) in &params {
            match key.as_str() {
                "rate" => rate = integer(key, value, 1..=1_000_000)?,
                "burst" => burst = integer(key, value, 1..=1_000_000)?,
                other => {
                    return Err(format!(
                        "{{name}}: unknown parameter `{other}` (expected `rate` or `burst`)"
                    ));
                }
            }
        }
        // `rate` requests per 1000 ms, `burst` at once. Every instance
        // declaring the same name and settings shares one limiter.
        let limiter = limits::declare_rate("per-client", rate, 1_000, burst)?;
        LIMITER.set(limiter);
        Ok(())
    }

    /// Decides one request. It runs on the request path under a deadline
    /// (10 ms by default): keep it short. A panic or a bad answer is a
    /// failure, and the upstream's `plugin-failure` decides what happens.
    fn admit(req: AdmissionRequest) -> Verdict {
        // ---- The policy: change from here. --------------------------------
        // Other inputs: `switchyard::balancer::request::{path, method,
        // header, host, query}` (e.g. `request::header("x-api-key")`).
        match limits::take(LIMITER.get(), &client_key(&req.client_ip), 1) {
            Ok(()) => Verdict::AllowWith(vec![("x-admitted-by".into(), "{{name}}".into())]),
            Err(wait_ms) => Verdict::Deny(Refusal {
                status: 429,
                reason: "too many requests from your address ({{name}})".into(),
                retry_after: Some(wait_ms.div_ceil(1000).clamp(1, u64::from(u32::MAX)) as u32),
            }),
        }
        // ---- to here. `Verdict::Allow` lets a request go on unchanged. ---
    }
}

// The exports exist only in the WebAssembly build, so that `cargo test`
// can also run unit tests of this crate natively.
#[cfg(target_arch = "wasm32")]
export!(Gate);

/// What the proxy shows this build as (in `/status`, the metrics, the
/// dashboard and the reload log), whatever its file is called:
/// `name@version` from Cargo.toml, in the `switchyard:plugin` custom
/// section.
#[unsafe(link_section = "switchyard:plugin")]
#[used]
static PLUGIN: [u8; DECLARED.len()] = declared();

const DECLARED: &str = concat!(env!("CARGO_PKG_NAME"), "@", env!("CARGO_PKG_VERSION"));

const fn declared() -> [u8; DECLARED.len()] {
    let mut out = [0; DECLARED.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = DECLARED.as_bytes()[i];
        i += 1;
    }
    out
}
