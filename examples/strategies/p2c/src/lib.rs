//! Power of two choices, least request (Mitzenmacher 2001; Envoy's
//! `LEAST_REQUEST`, linkerd's and Finagle's P2C balancers): two distinct
//! backends are drawn at random, in proportion to their weights, and the one
//! with fewer requests in flight per unit of weight wins; a tie goes to the
//! first one drawn, so idle backends share the traffic by weight.
//!
//! A pick is O(1) at any number of backends: two draws from a Vose alias
//! table built once per backend set, and two `in-flight` imports. Unlike
//! "least connections over every backend" it does not herd: picks made at
//! the same moment rarely all land on the one momentarily idlest backend.
//!
//! The randomness is SplitMix64 seeded from the pick's `sequence`: no state,
//! and every pick (every retry too) draws afresh.
//!
//! When some backends are unusable (`avoid > 0`), draws that land on one are
//! drawn again, up to 16 draws; if fewer than two usable backends turned up,
//! a scan from a random start finds them (O(n), only when nearly every
//! backend is unusable). A single usable backend is picked alone.
//!
//! Parameters: none.

wit_bindgen::generate!({ path: "../../../wit", world: "balancer" });

use std::cell::RefCell;

use exports::switchyard::balancer::strategy::Guest;
use switchyard::balancer::backends;
use switchyard::balancer::types::{Backend, Decision, ParamValue, Request};

/// Draws before falling back to a scan when backends are unusable.
const MAX_DRAWS: u32 = 16;

/// SplitMix64 (Steele, Lea, Flood 2014).
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
}

/// Vose's alias method: draws index `i` with probability `w[i] / sum(w)` in
/// O(1). Empty when all weights are equal (a plain uniform draw).
#[derive(Default)]
struct Alias {
    /// Chance (scaled to 2^32) of keeping the drawn column.
    keep: Vec<u64>,
    /// Where the column's remainder goes.
    alias: Vec<u32>,
}

impl Alias {
    fn build(weights: &[u32]) -> Self {
        let n = weights.len();
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return Self::default();
        }
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        // Column heights scaled so the average is exactly 2^32.
        let mut height: Vec<u128> = weights
            .iter()
            .map(|&w| (u128::from(w) * n as u128) << 32)
            .map(|h| h / u128::from(total))
            .collect();
        let full = 1u128 << 32;
        let mut keep = vec![1u64 << 32; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| height[i] < full);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = height[s] as u64;
            alias[s] = l as u32;
            height[l] -= full - height[s];
            if height[l] < full {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left (rounding) keeps its own column.
        Self { keep, alias }
    }

    fn draw(&self, n: u32, rng: &mut Rng) -> u32 {
        let i = rng.below(n);
        match (self.keep.get(i as usize), self.alias.get(i as usize)) {
            (Some(&keep), Some(&alias)) if rng.next() >> 32 >= keep => alias,
            _ => i,
        }
    }
}

struct State {
    weights: Vec<u32>,
    alias: Alias,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State {
        weights: Vec::new(),
        alias: Alias::default(),
    });
}

impl State {
    fn count(&self) -> u32 {
        self.weights.len() as u32
    }

    fn weight(&self, i: u32) -> u64 {
        u64::from(self.weights.get(i as usize).copied().unwrap_or(1))
    }

    /// A backend other than `first`: weighted, unless the weights make
    /// drawing `first` again too likely, then uniform among the others.
    fn draw_other(&self, first: u32, rng: &mut Rng) -> u32 {
        let n = self.count();
        if !self.alias.keep.is_empty() {
            for _ in 0..4 {
                let i = self.alias.draw(n, rng);
                if i != first {
                    return i;
                }
            }
        }
        let i = rng.below(n - 1);
        if i >= first { i + 1 } else { i }
    }

    /// The lighter of `a` (drawn first) and `b`: in-flight / weight,
    /// compared without division; a tie keeps `a`.
    fn lighter(&self, a: u32, b: u32) -> u32 {
        let load_a = u64::from(backends::in_flight(a)) * self.weight(b);
        let load_b = u64::from(backends::in_flight(b)) * self.weight(a);
        if load_b < load_a { b } else { a }
    }

    /// Up to two distinct usable backends when some are unusable.
    fn usable_pair(&self, rng: &mut Rng) -> (Option<u32>, Option<u32>) {
        let n = self.count();
        let mut found: (Option<u32>, Option<u32>) = (None, None);
        for _ in 0..MAX_DRAWS {
            let i = match found.0 {
                None => self.alias.draw(n, rng),
                Some(a) => self.draw_other(a, rng),
            };
            if backends::usable(i) {
                match found.0 {
                    None => found.0 = Some(i),
                    Some(_) => return (found.0, Some(i)),
                }
            }
        }
        // Nearly everything is unusable: find them by scanning.
        let start = rng.below(n);
        for step in 0..n {
            let i = (start + step) % n;
            if found.0 == Some(i) || !backends::usable(i) {
                continue;
            }
            match found.0 {
                None => found.0 = Some(i),
                Some(_) => return (found.0, Some(i)),
            }
        }
        found
    }
}

struct P2c;

impl Guest for P2c {
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        match params.first() {
            Some((key, _)) => Err(format!("p2c takes no parameters, got `{key}`")),
            None => Ok(()),
        }
    }

    fn set_backends(set: Vec<Backend>) {
        STATE.with_borrow_mut(|s| {
            s.weights = set.iter().map(|b| b.weight.max(1)).collect();
            s.alias = Alias::build(&s.weights);
        });
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
            let mut rng = Rng(req.sequence ^ 0x9C2C_5EED);
            if n == 1 {
                return Decision::Backend(0);
            }
            let pair = if req.avoid == 0 {
                let a = s.alias.draw(n, &mut rng);
                (Some(a), Some(s.draw_other(a, &mut rng)))
            } else {
                s.usable_pair(&mut rng)
            };
            match pair {
                (Some(a), Some(b)) => Decision::Backend(s.lighter(a, b)),
                (Some(a), None) => Decision::Backend(a),
                _ => Decision::Reject("no usable backend".into()),
            }
        })
    }
}

// The component exports exist only in the wasm build (a native build of
// this crate runs its unit tests; the linker refuses their WIT names).
#[cfg(target_arch = "wasm32")]
export!(P2c);

/// What the proxy shows this build as, whatever its file is called.
#[unsafe(link_section = "switchyard:plugin")]
#[used]
static PLUGIN: [u8; 9] = *b"p2c@0.1.0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_draws_follow_the_weights() {
        let weights = [5, 1, 1, 3];
        let alias = Alias::build(&weights);
        let mut rng = Rng(7);
        let mut counts = [0u32; 4];
        for _ in 0..100_000 {
            counts[alias.draw(4, &mut rng) as usize] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let expected = 100_000.0 * f64::from(w) / 10.0;
            let got = f64::from(counts[i]);
            assert!((got - expected).abs() < expected * 0.05, "{counts:?}");
        }
    }

    #[test]
    fn the_second_draw_is_always_another_backend() {
        let s = State {
            weights: vec![1000, 1, 1],
            alias: Alias::build(&[1000, 1, 1]),
        };
        let mut rng = Rng(1);
        for _ in 0..10_000 {
            let a = s.alias.draw(3, &mut rng);
            assert_ne!(s.draw_other(a, &mut rng), a);
        }
    }
}
