//! Admission: who may send requests through an upstream, how many at once
//! and how fast, decided before a backend is picked.
//!
//! - [`Gate`]: one upstream's `deny` / `allow` lists and its `limit-req`
//!   and `limit-conn` limiters, asked once per request ([`Gate::check`]);
//! - [`RateLimiter`]: a token bucket per key (GCRA: one timestamp a key);
//! - [`ConnLimiter`]: requests in flight per key, each held by a [`Held`]
//!   that the response keeps until it has been sent;
//! - [`WindowCounter`]: sliding-window counts per key;
//! - [`Registry`]: the limiters an admission plugin declares, kept by the
//!   host per upstream and carried across reloads of the plugin.
//!
//! Limiters are global: every worker thread takes from the same table, so a
//! client spread over connections and threads gets exactly its limit. They
//! are bounded: a table remembers at most `limit-keys` keys (split over
//! shards, each with its own lock), forgetting the least recently seen key
//! first; a rate key whose bucket is full again holds nothing a fresh key
//! would not, so such keys are dropped first. Keys are kept as 64-bit
//! SipHash values under a random per-limiter secret, so a key's size does
//! not matter and a client cannot aim for collisions.
//!
//! A limiter outlives the upstream that made it: a reload whose limit is
//! the same (same settings, same `limit-keys`) hands it on, state and all,
//! as nginx keeps a `limit_req_zone` across reloads.

mod conn;
mod gate;
mod key;
mod rate;
pub mod registry;
mod table;
mod window;

pub use conn::{ConnLimiter, Held, Holds, Over};
pub use gate::{Gate, Reason, Refusal, Tally, Verdict};
pub use key::key_material;
pub use rate::RateLimiter;
pub use registry::{Limiter, Registry, Spec};
pub use window::WindowCounter;

use std::sync::{Mutex, MutexGuard};

/// A shard's lock; a panic elsewhere while it was held leaves counts that
/// are still counts, so a poisoned lock is taken as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
