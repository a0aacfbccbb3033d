//! Round robin, the default strategy: an exact global rotation over the
//! backends, weighted like nginx's smooth weighted round robin.
//!
//! The host hands every pick an upstream-wide sequence number, so the
//! rotation is global even though each worker thread runs its own instance:
//! 999 requests to three equal backends give exactly 333 each. The weighted
//! schedule is built once per backend set (`set-backends`), so a pick is
//! O(1) whatever the number of backends.
//!
//! While some backends are down, the rotation runs over a second schedule of
//! the healthy ones only, so their shares stay exact (a dead backend's share
//! is spread evenly, not handed to its neighbour). It is rebuilt when the
//! host's `health-version` changes: O(n) once per health change, O(1) per
//! pick.
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
    weights: Vec<u32>,
    schedule: Schedule,
    /// Schedule over the healthy backends, and their indices.
    healthy: Schedule,
    healthy_index: Vec<u32>,
    /// `health-version` the healthy schedule was built for.
    healthy_version: Option<u64>,
}

impl State {
    fn rebuild_healthy(&mut self, version: u64) {
        self.healthy_index = (0..self.weights.len() as u32)
            .filter(|&i| backends::healthy(i))
            .collect();
        let weights: Vec<u32> = self
            .healthy_index
            .iter()
            .map(|&i| self.weights[i as usize])
            .collect();
        self.healthy = Schedule::build(&weights);
        self.healthy_version = Some(version);
    }
}

thread_local! {
    static STATE: RefCell<State> = const {
        RefCell::new(State {
            weights: Vec::new(),
            schedule: Schedule::Empty,
            healthy: Schedule::Empty,
            healthy_index: Vec::new(),
            healthy_version: None,
        })
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
        STATE.with_borrow_mut(|s| {
            s.weights = set.iter().map(|b| b.weight.max(1)).collect();
            s.schedule = Schedule::build(&s.weights);
            s.healthy_version = None;
        });
    }

    fn pick(req: Request) -> Decision {
        STATE.with_borrow_mut(|s| {
            if s.weights.is_empty() {
                return Decision::Reject("no backends configured".into());
            }
            if req.avoid == 0 {
                // Everything usable: the full schedule.
                return s.schedule.at(req.sequence).map_or_else(
                    || Decision::Reject("no backends configured".into()),
                    Decision::Backend,
                );
            }
            if s.healthy_version != Some(req.health_version) {
                s.rebuild_healthy(req.health_version);
            }
            let Some(first) = s
                .healthy
                .at(req.sequence)
                .and_then(|k| s.healthy_index.get(k as usize).copied())
            else {
                return Decision::Reject("no healthy backend".into());
            };
            if backends::usable(first) {
                return Decision::Backend(first);
            }
            // Already tried by this request (a retry): the next usable one,
            // each index at most once.
            let n = s.weights.len() as u32;
            (1..n)
                .map(|step| (first + step) % n)
                .find(|&i| backends::usable(i))
                .map_or_else(
                    || Decision::Reject("no usable backend".into()),
                    Decision::Backend,
                )
        })
    }
}

// The component exports exist only in the wasm build (a native build of
// this crate runs its unit tests; the linker refuses their WIT names).
#[cfg(target_arch = "wasm32")]
export!(RoundRobin);

/// What the proxy shows this build as, whatever its file is called.
#[unsafe(link_section = "switchyard:plugin")]
#[used]
static PLUGIN: [u8; 17] = *b"round-robin@0.1.0";
