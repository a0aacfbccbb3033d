//! Client IP hash, like nginx's `ip_hash`: requests from one client address
//! always go to the same backend while the backend set and its health stay
//! the same.
//!
//! The address (masked to `ipv4-prefix` / `ipv6-prefix` bits) is hashed with
//! a 64-bit mixer and mapped onto the backends in proportion to their weight
//! (Lemire's multiply-shift range reduction, then a binary search over
//! cumulative weights, so a pick is O(log n) at worst and O(1) when weights
//! are equal). When the chosen backend is unusable the hash is re-mixed, up
//! to 20 times as nginx does, then the next usable backend is taken.
//!
//! Parameters: `ipv4-prefix` (0..=32, default 32; nginx hashes the first three
//! octets, i.e. 24), `ipv6-prefix` (0..=128, default 128).

wit_bindgen::generate!({ path: "../../wit", world: "balancer" });

use std::cell::RefCell;

use exports::switchyard::balancer::strategy::Guest;
use switchyard::balancer::backends;
use switchyard::balancer::types::{Backend, Decision, IpAddress, ParamValue, Request};

const REHASH_TRIES: u32 = 20;

struct State {
    /// Cumulative weights; empty when all weights are equal.
    prefix: Vec<u64>,
    count: u32,
    ipv4_prefix: u32,
    ipv6_prefix: u32,
}

thread_local! {
    static STATE: RefCell<State> = const {
        RefCell::new(State { prefix: Vec::new(), count: 0, ipv4_prefix: 32, ipv6_prefix: 128 })
    };
}

/// The address as a 128-bit number, masked to the configured prefix.
fn masked(ip: &IpAddress, s: &State) -> u128 {
    fn mask(bits: u32, width: u32) -> u128 {
        if bits == 0 {
            0
        } else {
            (u128::MAX << (128 - bits)) >> (128 - width)
        }
    }
    match *ip {
        IpAddress::Ipv4((a, b, c, d)) => {
            u128::from(u32::from_be_bytes([a, b, c, d])) & mask(s.ipv4_prefix, 32) | (1 << 64) // keep v4 and v6 apart
        }
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            let v = [a, b, c, d, e, f, g, h]
                .iter()
                .fold(0u128, |acc, part| (acc << 16) | u128::from(*part));
            v & mask(s.ipv6_prefix, 128)
        }
    }
}

/// Murmur3's 64-bit finalizer over both halves: every input bit affects every
/// output bit.
fn mix(v: u128) -> u64 {
    let fmix = |mut k: u64| {
        k ^= k >> 33;
        k = k.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        k ^= k >> 33;
        k = k.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        k ^ (k >> 33)
    };
    fmix((v as u64) ^ fmix((v >> 64) as u64).rotate_left(17))
}

impl State {
    /// Backend for hash `h`, in proportion to the weights.
    fn slot(&self, h: u64) -> u32 {
        if self.prefix.is_empty() {
            ((u128::from(h) * u128::from(self.count)) >> 64) as u32
        } else {
            let total = self.prefix.last().copied().unwrap_or(1);
            let point = ((u128::from(h) * u128::from(total)) >> 64) as u64;
            self.prefix.partition_point(|&c| c <= point) as u32
        }
    }
}

fn prefix_param(key: &str, value: &ParamValue, max: i64) -> Result<u32, String> {
    match value {
        ParamValue::Integer(v) if (0..=max).contains(v) => Ok(*v as u32),
        _ => Err(format!("`{key}` must be an integer in 0..={max}")),
    }
}

struct IpHash;

impl Guest for IpHash {
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        STATE.with_borrow_mut(|s| {
            for (key, value) in &params {
                match key.as_str() {
                    "ipv4-prefix" => s.ipv4_prefix = prefix_param(key, value, 32)?,
                    "ipv6-prefix" => s.ipv6_prefix = prefix_param(key, value, 128)?,
                    other => {
                        return Err(format!(
                            "unknown parameter `{other}` (expected `ipv4-prefix` or `ipv6-prefix`)"
                        ));
                    }
                }
            }
            Ok(())
        })
    }

    fn set_backends(set: Vec<Backend>) {
        STATE.with_borrow_mut(|s| {
            s.count = set.len() as u32;
            let first = set.first().map(|b| b.weight);
            s.prefix = if set.iter().all(|b| Some(b.weight) == first) {
                Vec::new()
            } else {
                let mut acc = 0u64;
                set.iter()
                    .map(|b| {
                        acc += u64::from(b.weight.max(1));
                        acc
                    })
                    .collect()
            };
        });
    }

    fn pick(req: Request) -> Decision {
        STATE.with_borrow(|s| {
            if s.count == 0 {
                return Decision::Reject("no backends configured".into());
            }
            let mut h = mix(masked(&req.client_ip, s));
            let first = s.slot(h);
            if req.avoid == 0 || backends::usable(first) {
                return Decision::Backend(first);
            }
            for round in 1..=REHASH_TRIES {
                h = mix(u128::from(h) | (u128::from(round) << 64));
                let i = s.slot(h);
                if backends::usable(i) {
                    return Decision::Backend(i);
                }
            }
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

// The component exports exist only in the wasm build (a native build of
// this crate runs its unit tests; the linker refuses their WIT names).
#[cfg(target_arch = "wasm32")]
export!(IpHash);

/// What the proxy shows this build as, whatever its file is called.
#[unsafe(link_section = "switchyard:plugin")]
#[used]
static PLUGIN: [u8; 13] = *b"ip-hash@0.1.0";
