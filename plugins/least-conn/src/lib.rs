//! Least connections, like nginx's `least_conn`: the backend with the fewest
//! requests in flight relative to its weight wins; among backends tied at the
//! least load, nginx's smooth weighted round robin chooses, so ties follow the
//! weights (1:2, always idle, gives `b a b b a b ...`, 10/20 of 30).
//!
//! In-flight counts are the host's global counters, read on demand, so every
//! worker thread sees the same load, and which backends tie is decided on
//! that global load at the moment of the pick. The rotation among them (each
//! backend's current weight) is the instance's own, and instances are per
//! worker thread, as each nginx worker process keeps its own weights: the
//! picks of one worker follow the weights exactly over each cycle, so the
//! picks of all workers together are within about a cycle per worker of
//! exact. Among equal current weights (an instance's first picks) the scan
//! starts at the upstream-wide `sequence % n`, so workers starting together
//! do not all take the same backend.
//!
//! Up to `exact-limit` backends (default 32) every backend is compared; above
//! it the strategy samples `choices` random backends (default 2, "the power
//! of two choices", Mitzenmacher 2001), which keeps a pick O(1) at 10 000
//! backends with nearly the same balance. Ties among the sampled backends
//! are broken at random in proportion to weight (no state: the sample is
//! random already), as far as the draws allow: a backend never drawn cannot
//! win, so one much heavier than the rest gets less than its share of ties.
//!
//! Parameters: `exact-limit` (integer, default 32), `choices` (integer 2..=16,
//! default 2).

wit_bindgen::generate!({ path: "../../wit", world: "balancer" });

use std::cell::RefCell;
use std::cmp::Ordering;

use exports::switchyard::balancer::strategy::Guest;
use switchyard::balancer::backends;
use switchyard::balancer::types::{Backend, Decision, ParamValue, Request};

struct State {
    weights: Vec<u32>,
    /// Each backend's current weight in the smooth weighted round robin
    /// that breaks ties (nginx's `current_weight`): this instance's.
    current: Vec<i64>,
    /// The largest weight.
    heaviest: u32,
    exact_limit: usize,
    choices: u32,
}

thread_local! {
    static STATE: RefCell<State> = const {
        RefCell::new(State {
            weights: Vec::new(),
            current: Vec::new(),
            heaviest: 1,
            exact_limit: 32,
            choices: 2,
        })
    };
}

/// How the load of `a` compares with that of `b`: in-flight / weight,
/// compared without division (u32 x u32 cannot overflow a u64).
fn compare(a: (u32, u32), b: (u32, u32)) -> Ordering {
    let (load_a, w_a) = a;
    let (load_b, w_b) = b;
    (u64::from(load_a) * u64::from(w_b)).cmp(&(u64::from(load_b) * u64::from(w_a)))
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
    /// Every backend compared: the least loaded, or among the backends tied
    /// at the least load, the choice of nginx's smooth weighted round robin:
    /// each gains its weight, the first with the most current weight wins
    /// (the scan starts at `sequence % n`) and gives back the weights of
    /// all of them.
    fn exact(&mut self, sequence: u64, loads: &[u32], usable: impl Fn(u32) -> bool) -> Option<u32> {
        let State {
            weights, current, ..
        } = self;
        let n = weights.len();
        let load = |i: usize| (loads.get(i).copied().unwrap_or(u32::MAX), weights[i]);
        // The first usable backend with the least load, and how many
        // backends (usable or not) carry as much.
        let mut best: Option<(usize, (u32, u32))> = None;
        let mut ties = 0u32;
        for i in 0..n {
            let cand = load(i);
            match best.map(|(_, least)| compare(cand, least)) {
                Some(Ordering::Greater) => {}
                Some(Ordering::Equal) => ties += 1,
                _ if usable(i as u32) => {
                    best = Some((i, cand));
                    ties = 1;
                }
                _ => {}
            }
        }
        let (first, least) = best?;
        if ties == 1 {
            return Some(first as u32);
        }
        let Some(current) = current.get_mut(..n) else {
            return Some(first as u32);
        };
        let (mut total, mut chosen, mut most) = (0i64, first, i64::MIN);
        let mut offer = |i: usize| {
            let cand = load(i);
            if compare(cand, least).is_eq() && usable(i as u32) {
                let now = current[i].saturating_add(i64::from(cand.1));
                current[i] = now;
                total += i64::from(cand.1);
                if now > most {
                    (chosen, most) = (i, now);
                }
            }
        };
        let start = (sequence % n as u64) as usize;
        for i in start..n {
            offer(i);
        }
        for i in 0..start {
            offer(i);
        }
        current[chosen] = current[chosen].saturating_sub(total);
        Some(chosen as u32)
    }

    /// Power of `choices` random choices among usable backends: the least
    /// loaded of them. Ties are broken in proportion to weight, as far as
    /// the draws allow: each tied draw is taken with probability weight /
    /// heaviest weight (its coin: the fraction its index was drawn with),
    /// and the first taken wins; none taken, the first tied draw.
    fn sampled(
        &self,
        sequence: u64,
        in_flight: impl Fn(u32) -> u32,
        usable: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        let n = self.weights.len() as u64;
        let mut rng = sequence ^ 0x5EED;
        // The least loaded draw, and the first tied draw whose coin took it.
        let mut best: Option<(u32, (u32, u32))> = None;
        let mut taken: Option<u32> = None;
        // A bounded number of draws: when most backends are unusable we may
        // find fewer than `choices`, and fall back to a scan below.
        for _ in 0..self.choices * 4 {
            let draw = u128::from(splitmix(&mut rng)) * u128::from(n);
            let i = (draw >> 64) as u32;
            if !usable(i) {
                continue;
            }
            let cand = (in_flight(i), self.weights[i as usize]);
            let order = best.map_or(Ordering::Less, |(_, least)| compare(cand, least));
            if order.is_gt() || (order.is_eq() && taken.is_some()) {
                continue;
            }
            let coin = (u128::from(draw as u64) * u128::from(self.heaviest)) >> 64;
            let took = coin < u128::from(cand.1);
            if order.is_lt() {
                best = Some((i, cand));
                taken = took.then_some(i);
            } else if took {
                taken = Some(i);
            }
            if self.choices == 1 {
                break;
            }
        }
        taken
            .or(best.map(|(i, _)| i))
            .or_else(|| (0..n as u32).find(|&i| usable(i)))
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
        STATE.with_borrow_mut(|s| {
            s.weights = set.iter().map(|b| b.weight.max(1)).collect();
            s.current = vec![0; set.len()];
            s.heaviest = s.weights.iter().copied().max().unwrap_or(1);
        });
    }

    fn pick(req: Request) -> Decision {
        STATE.with_borrow_mut(|s| {
            if s.weights.is_empty() {
                return Decision::Reject("no backends configured".into());
            }
            let usable = |i| req.avoid == 0 || backends::usable(i);
            let choice = if s.weights.len() <= s.exact_limit {
                s.exact(req.sequence, &backends::in_flight_all(), usable)
            } else {
                s.sampled(req.sequence, backends::in_flight, usable)
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

/// What the proxy shows this build as, whatever its file is called.
#[unsafe(link_section = "switchyard:plugin")]
#[used]
static PLUGIN: [u8; 16] = *b"least-conn@0.1.0";

#[cfg(test)]
mod tests {
    use super::*;

    fn state(weights: &[u32]) -> State {
        State {
            weights: weights.to_vec(),
            current: vec![0; weights.len()],
            heaviest: weights.iter().copied().max().unwrap_or(1),
            exact_limit: 32,
            choices: 2,
        }
    }

    /// Exact picks with sequence numbers `sequences` at fixed `loads`, all
    /// usable but `unusable`: how many each backend got, and the order.
    fn exact_picks(
        s: &mut State,
        loads: &[u32],
        sequences: std::ops::Range<u64>,
        unusable: &[u32],
    ) -> (Vec<u32>, Vec<u32>) {
        let mut counts = vec![0; s.weights.len()];
        let mut order = Vec::new();
        for sequence in sequences {
            let i = s
                .exact(sequence, loads, |i| !unusable.contains(&i))
                .expect("a backend");
            counts[i as usize] += 1;
            order.push(i);
        }
        (counts, order)
    }

    #[test]
    fn tied_backends_share_by_weight_in_smooth_order() {
        let mut s = state(&[1, 2]);
        let (counts, order) = exact_picks(&mut s, &[0, 0], 0..30, &[]);
        assert_eq!(counts, [10, 20]);
        assert_eq!(order[..9], [1, 0, 1, 1, 0, 1, 1, 0, 1], "nginx's b a b");
        // 5:1:1, all idle: smooth, the light ones never one after the other.
        let mut s = state(&[5, 1, 1]);
        let (counts, order) = exact_picks(&mut s, &[0, 0, 0], 0..70, &[]);
        assert_eq!(counts, [50, 10, 10]);
        assert_eq!(order[..7], [0, 0, 2, 0, 1, 0, 0]);
        assert!(order.windows(2).all(|w| w.contains(&0)), "{order:?}");
        // Equal weights, equal loads: a rotation.
        let mut s = state(&[3, 3, 3]);
        let (_, order) = exact_picks(&mut s, &[4, 4, 4], 0..9, &[]);
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn the_least_load_per_weight_wins_and_only_the_tied_rotate() {
        let one = |weights: &[u32], loads: &[u32]| {
            exact_picks(&mut state(weights), loads, 0..1, &[]).1[0]
        };
        // 1/2 < 1/1; 1/1 < 3/2.
        assert_eq!(one(&[1, 2], &[1, 1]), 1);
        assert_eq!(one(&[1, 2], &[1, 3]), 0);
        assert_eq!(one(&[2, 1, 2], &[2, 0, 1]), 1);
        // 2/1 = 4/2: a tie, which follows the weights.
        let mut s = state(&[1, 2]);
        assert_eq!(exact_picks(&mut s, &[2, 4], 0..30, &[]).0, [10, 20]);
        // Only the two idle backends tie; the busy one is never taken and
        // its current weight does not move.
        let mut s = state(&[1, 2, 3]);
        let (counts, _) = exact_picks(&mut s, &[5, 0, 0], 0..50, &[]);
        assert_eq!(counts, [0, 20, 30]);
        assert_eq!(s.current, [0, 0, 0], "a whole number of cycles");
        // No overflow at the largest loads and weights.
        assert_eq!(one(&[1000, 999], &[u32::MAX, u32::MAX]), 0);
        assert_eq!(compare((u32::MAX, 1000), (u32::MAX, 1000)), Ordering::Equal);
    }

    #[test]
    fn unusable_backends_are_never_chosen_nor_rotated() {
        let mut s = state(&[1, 5, 1]);
        let (counts, _) = exact_picks(&mut s, &[0, 0, 0], 0..20, &[1]);
        assert_eq!(counts, [10, 0, 10]);
        assert_eq!(s.current[1], 0);
        // The least loaded is unusable: the next least.
        let (counts, _) = exact_picks(&mut state(&[1, 1, 1]), &[0, 3, 1], 0..4, &[0]);
        assert_eq!(counts, [0, 0, 4]);
        let mut s = state(&[1, 1]);
        assert_eq!(s.exact(0, &[0, 0], |_| false), None);
        // A load list shorter than the set (never sent): those count as full.
        assert_eq!(exact_picks(&mut state(&[1, 1]), &[7], 0..3, &[]).0, [3, 0]);
    }

    #[test]
    fn fresh_instances_picking_together_take_different_backends() {
        let firsts: Vec<u32> = (0..3)
            .map(|sequence| {
                exact_picks(
                    &mut state(&[1, 1, 1]),
                    &[0, 0, 0],
                    sequence..sequence + 1,
                    &[],
                )
                .1[0]
            })
            .collect();
        assert_eq!(firsts, [0, 1, 2]);
    }

    #[test]
    fn sampled_ties_follow_the_weights_too() {
        // 64 backends, weights 1 and 2 in turn, always idle: sampled.
        let weights: Vec<u32> = (0..64).map(|i| 1 + i % 2).collect();
        let s = state(&weights);
        let mut by_weight = [0u32; 3];
        let mut by_backend = [0u32; 64];
        for sequence in 0..60_000 {
            let i = s.sampled(sequence, |_| 0, |_| true).expect("a backend");
            by_weight[weights[i as usize] as usize] += 1;
            by_backend[i as usize] += 1;
        }
        // It was 1:1 before ties looked at weights.
        let ratio = f64::from(by_weight[2]) / f64::from(by_weight[1]);
        assert!((1.9..2.1).contains(&ratio), "{by_weight:?}");
        // 625 or 1250 each on average.
        for (i, &n) in by_backend.iter().enumerate() {
            let expected = 625.0 * f64::from(weights[i]);
            assert!((f64::from(n) / expected - 1.0).abs() < 0.2, "{i}: {n}");
        }
        // Equal weights: every tied draw is taken, the first wins.
        let even = state(&[3; 64]);
        let counts = (0..64_000).fold([0u32; 64], |mut counts, sequence| {
            counts[even.sampled(sequence, |_| 0, |_| true).expect("a backend") as usize] += 1;
            counts
        });
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
        // Loaded backends lose to idle ones whenever one is drawn.
        let loaded = (0..10_000)
            .filter(|&sequence| {
                s.sampled(sequence, |i| i % 2, |_| true).expect("a backend") % 2 == 1
            })
            .count();
        assert!(loaded < 100, "{loaded} picks of a loaded backend");
        // Nothing usable drawn: the first usable one, found by a scan.
        assert_eq!(s.sampled(7, |_| 0, |i| i == 63), Some(63));
        assert_eq!(s.sampled(7, |_| 0, |_| false), None);
    }
}
