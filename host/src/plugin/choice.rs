//! What a pick is asked with ([`PickInput`]) and what it answers
//! ([`Choice`]), and the host's own strategy, round robin over usable
//! backends ([`fallback`]): the baseline the Wasm overhead is measured
//! against, and what serves when a plugin fails.

use std::net::IpAddr;
use std::sync::Arc;

use crate::backend::BackendSet;

/// What a pick needs besides the request head.
#[derive(Debug, Clone, Copy)]
pub struct PickInput<'a> {
    /// The upstream's current backend set.
    pub set: &'a Arc<BackendSet>,
    /// Upstream-wide pick number.
    pub sequence: u64,
    /// The client's address (after trusted `X-Forwarded-For`).
    pub client_ip: IpAddr,
    /// Backends this request already tried.
    pub exclude: &'a [u32],
    /// 0 for the first try.
    pub attempt: u32,
}

/// The outcome of a pick, already checked against the backend set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Use this backend.
    Backend(u32),
    /// The plugin failed (counted and logged); the host's round robin chose
    /// this backend. Upstreams that fail closed answer 503 instead.
    Fallback(u32),
    /// Use these, in order (all in range; may include unusable ones).
    Preference(Vec<u32>),
    /// Answer 503 with this reason.
    Reject(String),
}

/// The host's own strategy: round robin over usable backends. Serves picks
/// when a plugin fails, and is the baseline the Wasm overhead is measured
/// against.
pub fn fallback(input: &PickInput<'_>) -> Choice {
    next_usable(input, input.sequence)
}

/// [`fallback`], marked as standing in for a failed plugin.
pub(super) fn failed_over(input: &PickInput<'_>) -> Choice {
    match fallback(input) {
        Choice::Backend(i) => Choice::Fallback(i),
        other => other,
    }
}

/// The first usable backend at or after position `from` (mod n).
pub(super) fn next_usable(input: &PickInput<'_>, from: u64) -> Choice {
    let n = input.set.len() as u64;
    if n == 0 {
        return Choice::Reject("the upstream has no backends".into());
    }
    (0..n)
        .map(|k| ((from % n + k) % n) as u32)
        .find(|&i| input.set.usable(i, input.exclude))
        .map_or_else(
            || Choice::Reject("no backend is available".into()),
            Choice::Backend,
        )
}
