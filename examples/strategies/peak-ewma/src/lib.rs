//! Latency-aware balancing with peak EWMA, as in Finagle's
//! `Balancers.p2cPeakEwma` and linkerd2-proxy: each backend costs
//! `latency x (in-flight + 1) / weight`, and of two distinct backends drawn
//! at random the cheaper one wins (power of two choices over cost), so a
//! pick is O(1) at any number of backends.
//!
//! `latency` is the host's peak EWMA of time to response head
//! (`backends.latency`): it jumps up at once when a backend slows down and
//! comes back down over about 10 s, so a backend that turns slow loses its
//! traffic within a request or two, and one that was slow once is tried
//! again after a while (the host decays the estimate toward 0 while no
//! response arrives). Multiplying by `in-flight + 1` makes a fast backend
//! with a queue lose to a slightly slower idle one. Costs are compared
//! exactly, in integers, and equal costs go to the lighter backend by
//! in-flight / weight, then to the first drawn.
//!
//! A backend with no response yet (`latency` = 0) costs as if its latency
//! were `default-latency-ms`. With the default 0 it wins every comparison
//! until its first response comes back, so a new backend is measured at
//! once; being one of the two drawn, it receives at most about 2/n of the
//! picks meanwhile.
//!
//! When some backends are unusable (`avoid > 0`), draws that land on one are
//! drawn again, up to 16 draws, then a scan from a random start finds the
//! usable ones (O(n), only when nearly every backend is unusable).
//!
//! Parameters: `default-latency-ms` (number >= 0, default 0).

wit_bindgen::generate!({ path: "../../../wit", world: "balancer" });

use std::cell::RefCell;

use exports::switchyard::balancer::strategy::Guest;
use switchyard::balancer::backends;
use switchyard::balancer::types::{Backend, Decision, ParamValue, Request};

/// Draws before falling back to a scan when backends are unusable.
const MAX_DRAWS: u32 = 16;

/// SplitMix64 (Steele, Lea, Flood 2014), seeded from the pick's sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; `n > 0`).
    fn below(&mut self, n: u32) -> u32 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u32
    }

    /// Uniform in `0..n` but not `other` (`n > 1`, `other < n`).
    fn other_than(&mut self, other: u32, n: u32) -> u32 {
        let i = self.below(n - 1);
        if i >= other { i + 1 } else { i }
    }
}

struct State {
    weights: Vec<u32>,
    /// Latency assumed for a backend not measured yet, in ns.
    default_latency_ns: u64,
}

thread_local! {
    static STATE: RefCell<State> = const {
        RefCell::new(State { weights: Vec::new(), default_latency_ns: 0 })
    };
}

/// A candidate's figures, read once per pick.
#[derive(Clone, Copy)]
struct Load {
    latency_ns: u64,
    in_flight: u32,
    weight: u32,
}

impl Load {
    /// `a` is cheaper than `b`: latency x (in-flight + 1) / weight, then
    /// in-flight / weight; compared by cross-multiplying, without rounding.
    fn cheaper(a: Load, b: Load) -> bool {
        let cost = |x: Load, other: Load| {
            u128::from(x.latency_ns) * (u128::from(x.in_flight) + 1) * u128::from(other.weight)
        };
        let (ca, cb) = (cost(a, b), cost(b, a));
        if ca != cb {
            return ca < cb;
        }
        u64::from(a.in_flight) * u64::from(b.weight) < u64::from(b.in_flight) * u64::from(a.weight)
    }
}

impl State {
    fn count(&self) -> u32 {
        self.weights.len() as u32
    }

    fn load(&self, i: u32) -> Load {
        let latency_ns = match backends::latency(i) {
            0 => self.default_latency_ns,
            measured => measured,
        };
        Load {
            latency_ns,
            in_flight: backends::in_flight(i),
            weight: self.weights.get(i as usize).copied().unwrap_or(1),
        }
    }

    /// The cheaper of `a` (drawn first) and `b`; a tie keeps `a`.
    fn cheaper(&self, a: u32, b: u32) -> u32 {
        if Load::cheaper(self.load(b), self.load(a)) {
            b
        } else {
            a
        }
    }

    /// Up to two distinct usable backends when some are unusable.
    fn usable_pair(&self, rng: &mut Rng) -> (Option<u32>, Option<u32>) {
        let n = self.count();
        let mut first = None;
        for _ in 0..MAX_DRAWS {
            let i = match first {
                None => rng.below(n),
                Some(a) => rng.other_than(a, n),
            };
            if backends::usable(i) {
                match first {
                    None => first = Some(i),
                    Some(_) => return (first, Some(i)),
                }
            }
        }
        // Nearly everything is unusable: find them by scanning.
        let start = rng.below(n);
        for step in 0..n {
            let i = (start + step) % n;
            if first == Some(i) || !backends::usable(i) {
                continue;
            }
            match first {
                None => first = Some(i),
                Some(_) => return (first, Some(i)),
            }
        }
        (first, None)
    }
}

struct PeakEwma;

impl Guest for PeakEwma {
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        STATE.with_borrow_mut(|s| {
            for (key, value) in &params {
                match (key.as_str(), value) {
                    ("default-latency-ms", ParamValue::Integer(ms)) if *ms >= 0 => {
                        s.default_latency_ns = (*ms as u64).saturating_mul(1_000_000);
                    }
                    ("default-latency-ms", ParamValue::Float(ms)) if *ms >= 0.0 => {
                        s.default_latency_ns = (ms * 1e6) as u64;
                    }
                    ("default-latency-ms", _) => {
                        return Err("`default-latency-ms` must be a number >= 0".into());
                    }
                    (other, _) => {
                        return Err(format!(
                            "unknown parameter `{other}` (expected `default-latency-ms`)"
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
            let n = s.count();
            if n == 0 {
                return Decision::Reject("no backends configured".into());
            }
            if req.avoid >= n {
                return Decision::Reject("no usable backend".into());
            }
            if n == 1 {
                return Decision::Backend(0);
            }
            let mut rng = Rng(req.sequence ^ 0xEA5E_0F1A);
            let pair = if req.avoid == 0 {
                let a = rng.below(n);
                (Some(a), Some(rng.other_than(a, n)))
            } else {
                s.usable_pair(&mut rng)
            };
            match pair {
                (Some(a), Some(b)) => Decision::Backend(s.cheaper(a, b)),
                (Some(a), None) => Decision::Backend(a),
                _ => Decision::Reject("no usable backend".into()),
            }
        })
    }
}

// The component exports exist only in the wasm build (a native build of
// this crate runs its unit tests; the linker refuses their WIT names).
#[cfg(target_arch = "wasm32")]
export!(PeakEwma);

/// What the proxy shows this build as, whatever its file is called.
#[unsafe(link_section = "switchyard:plugin")]
#[used]
static PLUGIN: [u8; 15] = *b"peak-ewma@0.1.0";

#[cfg(test)]
mod tests {
    use super::Load;

    fn load(latency_ns: u64, in_flight: u32, weight: u32) -> Load {
        Load {
            latency_ns,
            in_flight,
            weight,
        }
    }

    #[test]
    fn cost_is_latency_times_load_per_weight() {
        // 1 ms with 10 in flight (cost 11) loses to 5 ms idle (cost 5).
        assert!(Load::cheaper(load(5_000_000, 0, 1), load(1_000_000, 10, 1)));
        // ... unless it has twice the weight (cost 5.5 vs 5: still loses),
        // or three times (3.7 < 5).
        assert!(Load::cheaper(load(5_000_000, 0, 1), load(1_000_000, 10, 2)));
        assert!(Load::cheaper(load(1_000_000, 10, 3), load(5_000_000, 0, 1)));
        // Unmeasured (0) wins; two unmeasured compare by in-flight.
        assert!(Load::cheaper(load(0, 5, 1), load(1, 0, 1)));
        assert!(Load::cheaper(load(0, 1, 1), load(0, 2, 1)));
        assert!(
            !Load::cheaper(load(0, 2, 1), load(0, 2, 1)),
            "a tie is not cheaper"
        );
    }
}
