//! Round robin, the default strategy: an exact global rotation over the
//! backends, weighted like nginx's smooth weighted round robin.
//!
//! The host hands every pick an upstream-wide sequence number, so the
//! rotation is global even though each worker thread runs its own instance:
//! 999 requests to three equal backends give exactly 333 each. The weighted
//! schedule is built once per backend set (`set-backends`), so a pick is
//! O(1) whatever the number of backends.
//!
//! Parameters: none.

wit_bindgen::generate!({ path: "../../wit", world: "balancer" });

use std::cell::RefCell;

use exports::switchyard::balancer::strategy::Guest;
use switchyard::balancer::backends;
use switchyard::balancer::types::{Backend, Decision, ParamValue, Request};

/// Largest smooth schedule we precompute (4 MiB of `u32`). Bigger weight sums
/// use a prefix-sum table and a binary search instead.
const MAX_TABLE: u64 = 1 << 20;

/// Maps a sequence number to a backend index.
enum Schedule {
    /// No backends.
    Empty,
    /// All weights equal: `sequence % n`.
    Uniform(u64),
    /// One period of nginx's smooth weighted round robin.
    Table(Vec<u32>),
    /// Cumulative weights; blocks of `weight` consecutive picks per backend.
    Prefix(Vec<u64>),
}

impl Schedule {
    fn build(weights: &[u32]) -> Self {
        if weights.is_empty() {
            return Schedule::Empty;
        }
        let g = weights.iter().copied().fold(0, gcd).max(1);
        let reduced: Vec<u64> = weights.iter().map(|w| u64::from(w / g)).collect();
        let total: u64 = reduced.iter().sum();
        if reduced.iter().all(|&w| w == 1) {
            Schedule::Uniform(reduced.len() as u64)
        } else if total <= MAX_TABLE {
            Schedule::Table(smooth_period(&reduced, total))
        } else {
            let mut acc = 0;
            Schedule::Prefix(
                reduced
                    .iter()
                    .map(|w| {
                        acc += w;
                        acc
                    })
                    .collect(),
            )
        }
    }

    /// Backend at position `k` of the endless schedule.
    fn at(&self, k: u64) -> Option<u32> {
        match self {
            Schedule::Empty => None,
            Schedule::Uniform(n) => Some((k % n) as u32),
            Schedule::Table(t) => t.get((k % t.len() as u64) as usize).copied(),
            Schedule::Prefix(p) => {
                let total = *p.last()?;
                let slot = k % total;
                Some(p.partition_point(|&c| c <= slot) as u32)
            }
        }
    }
}

/// One full period of smooth weighted round robin (nginx,
/// `ngx_http_upstream_get_peer`): each step every backend gains its weight,
/// the largest current weight wins and pays back the total.
fn smooth_period(weights: &[u64], total: u64) -> Vec<u32> {
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

struct State {
    schedule: Schedule,
    count: u32,
}

thread_local! {
    static STATE: RefCell<State> = const {
        RefCell::new(State { schedule: Schedule::Empty, count: 0 })
    };
}

struct RoundRobin;

impl Guest for RoundRobin {
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        match params.first() {
            Some((key, _)) => Err(format!("round-robin takes no parameters, got `{key}`")),
            None => Ok(()),
        }
    }

    fn set_backends(set: Vec<Backend>) {
        let weights: Vec<u32> = set.iter().map(|b| b.weight.max(1)).collect();
        STATE.with_borrow_mut(|s| {
            s.schedule = Schedule::build(&weights);
            s.count = set.len() as u32;
        });
    }

    fn pick(req: Request) -> Decision {
        STATE.with_borrow(|s| {
            let Some(first) = s.schedule.at(req.sequence) else {
                return Decision::Reject("no backends configured".into());
            };
            if req.avoid == 0 || backends::usable(first) {
                return Decision::Backend(first);
            }
            // Some backends are down or already tried: take the next usable
            // one after the scheduled one, each index at most once.
            (1..s.count)
                .map(|step| (first + step) % s.count)
                .find(|&i| backends::usable(i))
                .map_or_else(
                    || Decision::Reject("no usable backend".into()),
                    Decision::Backend,
                )
        })
    }
}

export!(RoundRobin);
