//! `{{name}}`: a Switchyard load-balancing strategy.
//!
//! As written it sends each request to the usable backend with the fewest
//! requests in flight (counted by the proxy, across all its threads);
//! among equally loaded backends it takes turns, so idle backends share
//! the traffic exactly evenly, as round robin would. Change `pick` (marked
//! below) to balance as you like.
//!
//! Parameters (the upstream's `params` in switchyard.toml, or
//! `--param key=value` for `switchyard simulate`):
//!
//! - `max-in-flight` (integer, optional): backends with this many requests
//!   in flight are skipped; when every backend is that busy the request is
//!   answered 503 with a reason.
//!
//! The contract is wit/balancer.wit (world `balancer`), documented item by
//! item. In short: the proxy calls `init` once per instance, `set_backends`
//! when the backend set changes, and `pick` for every request. There is one
//! instance per worker thread, so memory kept here (the `STATE` below) is
//! per thread; what must be global (the request `sequence`, in-flight
//! counts, health) the proxy keeps and you read through the imports.

wit_bindgen::generate!({ path: "wit", world: "balancer" });

use std::cell::RefCell;

use exports::switchyard::balancer::strategy::Guest;
use switchyard::balancer::backends;
use switchyard::balancer::types::{Backend, Decision, ParamValue, Request};

/// This instance's state: the parameters and what it needs of the set.
struct State {
    /// Backends in the set (their index is 0..count).
    count: u32,
    /// `max-in-flight`, if given.
    max_in_flight: Option<u32>,
}

thread_local! {
    static STATE: RefCell<State> = const {
        RefCell::new(State { count: 0, max_in_flight: None })
    };
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

struct Strategy;

impl Guest for Strategy {
    /// Reads the parameters. An `Err` stops the proxy from using this
    /// plugin (at start-up it does not start; on reload the old plugin
    /// keeps serving) and shows the message to the operator.
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        let mut max_in_flight = None;
        for (key, value) in params {
            match (key.as_str(), value) {
                ("max-in-flight", ParamValue::Integer(n))
                    if (1..=i64::from(u32::MAX)).contains(&n) =>
                {
                    max_in_flight = Some(n as u32);
                }
                (key, value) => {
                    return Err(format!(
                        "{{name}}: unknown or invalid parameter `{key} = {}` (expected: max-in-flight = 1 or more)",
                        shown(&value)
                    ));
                }
            }
        }
        STATE.with_borrow_mut(|s| s.max_in_flight = max_in_flight);
        Ok(())
    }

    /// The upstream's backends (id, address, weight), after `init` and
    /// whenever they change. Build whatever index `pick` needs here, once,
    /// rather than on every request.
    fn set_backends(set: Vec<Backend>) {
        STATE.with_borrow_mut(|s| s.count = set.len() as u32);
    }

    /// Chooses a backend for one request. It runs on the request path under
    /// a deadline (10 ms by default): keep it short. A panic or an index out
    /// of range makes the proxy serve the request with its own round robin.
    fn pick(req: Request) -> Decision {
        STATE.with_borrow(|s| {
            let n = s.count;
            if n == 0 {
                return Decision::Reject("no backends configured".into());
            }
            // ---- The policy: change from here. ----------------------------
            // Start the scan at a different backend for every request
            // (`sequence` is 0, 1, 2, ... across all threads), so ties go
            // round: idle backends share requests exactly evenly.
            let start = (req.sequence % u64::from(n)) as u32;
            let mut best: Option<(u32, u32)> = None; // (index, in flight)
            for step in 0..n {
                let i = (start + step) % n;
                // `avoid == 0` means every backend is usable: no need to ask.
                if req.avoid > 0 && !backends::usable(i) {
                    continue; // down, or already tried by this request
                }
                let load = backends::in_flight(i);
                if s.max_in_flight.is_some_and(|max| load >= max) {
                    continue;
                }
                if best.is_none_or(|(_, least)| load < least) {
                    best = Some((i, load));
                }
            }
            match best {
                Some((i, _)) => Decision::Backend(i),
                None => Decision::Reject("{{name}}: no usable backend below max-in-flight".into()),
            }
            // ---- to here. Other answers: `Decision::Preference(vec![..])`,
            // an ordered list the proxy also retries along. Other inputs:
            // `switchyard::balancer::request::{path, header, ...}` for the
            // request, `req.client_ip`, `backends::latency(i)`. ------------
        })
    }
}

// The exports exist only in the WebAssembly build, so that `cargo test`
// can also run unit tests of this crate natively.
#[cfg(target_arch = "wasm32")]
export!(Strategy);

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
