//! Least connections, like nginx's `least_conn`: the backend with the fewest
//! requests in flight relative to its weight wins; ties rotate round robin.
//!
//! In-flight counts are the host's global counters, read on demand, so every
//! worker thread sees the same load. Up to `exact-limit` backends (default 32)
//! every backend is compared; above it the strategy samples `choices` random
//! backends (default 2, "the power of two choices", Mitzenmacher 2001), which
//! keeps a pick O(1) at 10 000 backends with nearly the same balance.
//!
//! Parameters: `exact-limit` (integer, default 32), `choices` (integer 2..=16,
//! default 2).

wit_bindgen::generate!({ path: "../../wit", world: "balancer" });

use std::cell::RefCell;

use exports::switchyard::balancer::strategy::Guest;
use switchyard::balancer::backends;
use switchyard::balancer::types::{Backend, Decision, ParamValue, Request};

struct State {
    weights: Vec<u32>,
    exact_limit: usize,
    choices: u32,
}

thread_local! {
    static STATE: RefCell<State> = const {
        RefCell::new(State { weights: Vec::new(), exact_limit: 32, choices: 2 })
    };
}

/// `a` carries less load than `b`: in-flight / weight, compared without
/// division.
fn lighter(a: (u32, u32), b: (u32, u32)) -> bool {
    let (load_a, w_a) = a;
    let (load_b, w_b) = b;
    u64::from(load_a) * u64::from(w_b) < u64::from(load_b) * u64::from(w_a)
}

/// SplitMix64 (Steele, Lea, Flood 2014): a fast, well-mixed sequence of
/// pseudo-random numbers from the pick's sequence number.
fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn int_param(
    key: &str,
    value: &ParamValue,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, String> {
    match value {
        ParamValue::Integer(v) if range.contains(v) => Ok(*v),
        _ => Err(format!(
            "`{key}` must be an integer in {}..={}",
            range.start(),
            range.end()
        )),
    }
}

impl State {
    /// Every backend compared; the scan starts at `sequence % n` so equal
    /// loads rotate.
    fn exact(&self, req: &Request) -> Option<u32> {
        let n = self.weights.len();
        let loads = backends::in_flight_all();
        let start = (req.sequence % n as u64) as usize;
        let mut best: Option<(usize, (u32, u32))> = None;
        for step in 0..n {
            let i = (start + step) % n;
            let cand = (loads.get(i).copied().unwrap_or(u32::MAX), self.weights[i]);
            let better = best.is_none_or(|(_, b)| lighter(cand, b));
            if better && (req.avoid == 0 || backends::usable(i as u32)) {
                best = Some((i, cand));
            }
        }
        best.map(|(i, _)| i as u32)
    }

    /// Power of `choices` random choices among usable backends.
    fn sampled(&self, req: &Request) -> Option<u32> {
        let n = self.weights.len() as u64;
        let mut rng = req.sequence ^ 0x5EED;
        let mut best: Option<(u32, (u32, u32))> = None;
        // A bounded number of draws: when most backends are unusable we may
        // find fewer than `choices`, and fall back to a scan below.
        for _ in 0..self.choices * 4 {
            let i = ((u128::from(splitmix(&mut rng)) * u128::from(n)) >> 64) as u32;
            if req.avoid != 0 && !backends::usable(i) {
                continue;
            }
            let cand = (backends::in_flight(i), self.weights[i as usize]);
            if best.is_none_or(|(_, b)| lighter(cand, b)) {
                best = Some((i, cand));
            }
            if best.is_some() && self.choices == 1 {
                break;
            }
        }
        best.map(|(i, _)| i)
            .or_else(|| (0..n as u32).find(|&i| backends::usable(i)))
    }
}

struct LeastConn;

impl Guest for LeastConn {
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        STATE.with_borrow_mut(|s| {
            for (key, value) in &params {
                match key.as_str() {
                    "exact-limit" => s.exact_limit = int_param(key, value, 0..=1_000_000)? as usize,
                    "choices" => s.choices = int_param(key, value, 2..=16)? as u32,
                    other => {
                        return Err(format!(
                            "unknown parameter `{other}` (expected `exact-limit` or `choices`)"
                        ));
                    }
                }
            }
            Ok(())
        })
    }

    fn set_backends(set: Vec<Backend>) {
        STATE.with_borrow_mut(|s| s.weights = set.iter().map(|b| b.weight.max(1)).collect());
    }

    fn pick(req: Request) -> Decision {
        STATE.with_borrow(|s| {
            if s.weights.is_empty() {
                return Decision::Reject("no backends configured".into());
            }
            let choice = if s.weights.len() <= s.exact_limit {
                s.exact(&req)
            } else {
                s.sampled(&req)
            };
            choice.map_or_else(
                || Decision::Reject("no usable backend".into()),
                Decision::Backend,
            )
        })
    }
}

// The component exports exist only in the wasm build (a native build of
// this crate runs its unit tests; the linker refuses their WIT names).
#[cfg(target_arch = "wasm32")]
export!(LeastConn);
