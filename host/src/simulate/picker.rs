//! The strategy under simulation: compiled (from a file or the built-in
//! reference strategies) and asked for every request, with the wall-clock
//! cost of its picks kept.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::engine::Picked;
use super::trace::TraceRequest;
use crate::backend::BackendSet;
use crate::plugin::{Choice, Compiled, PickInput, Runtime, Strategy, builtin};

/// Compiles the plugin file, or a built-in reference strategy of that name.
pub(super) fn compile(
    runtime: &Arc<Runtime>,
    plugin: &Path,
) -> anyhow::Result<(String, Arc<Compiled>)> {
    let name = plugin.to_str().unwrap_or_default();
    match builtin::named(name) {
        Some(bytes) if !plugin.is_file() => {
            let label = format!("{name} (built in)");
            let compiled = runtime.compile_bytes(Path::new(&format!("{name}.wasm")), bytes)?;
            Ok((label, compiled))
        }
        _ => Ok((plugin.display().to_string(), runtime.compile(plugin)?)),
    }
}

/// Asks the strategy and keeps the wall-clock cost of its picks.
pub(super) struct Picker<'a> {
    strategy: &'a Arc<Strategy>,
    set: &'a Arc<BackendSet>,
    /// Picks and their total time, the first one (which instantiates the
    /// plugin on this thread) apart.
    pub(super) picks: u64,
    pub(super) pick_ns: u128,
    pub(super) max_pick_ns: u128,
    pub(super) first_pick_ns: Option<u128>,
    /// `reject` answers by reason (the first few reasons).
    pub(super) rejects: std::collections::BTreeMap<String, u64>,
}

/// Distinct reject reasons kept; later ones are counted as "other".
const REJECT_REASONS: usize = 10;

impl<'a> Picker<'a> {
    pub(super) fn new(strategy: &'a Arc<Strategy>, set: &'a Arc<BackendSet>) -> Self {
        Self {
            strategy,
            set,
            picks: 0,
            pick_ns: 0,
            max_pick_ns: 0,
            first_pick_ns: None,
            rejects: Default::default(),
        }
    }

    pub(super) fn pick(&mut self, request: &TraceRequest, sequence: u64) -> Picked {
        let mut parts = request.parts();
        let input = PickInput {
            set: self.set,
            sequence,
            client_ip: request.client,
            exclude: &[],
            attempt: 0,
        };
        let started = Instant::now();
        let choice = self.strategy.pick(input, &mut parts);
        let ns = started.elapsed().as_nanos();
        if self.first_pick_ns.is_none() {
            self.first_pick_ns = Some(ns);
        } else {
            self.picks += 1;
            self.pick_ns += ns;
            self.max_pick_ns = self.max_pick_ns.max(ns);
        }
        match choice {
            Choice::Backend(i) => Picked::Backend(i),
            Choice::Fallback(i) => Picked::Fallback(i),
            // Every simulated backend is healthy: the first one is used.
            Choice::Preference(list) => list
                .iter()
                .copied()
                .find(|&i| self.set.usable(i, &[]))
                .map_or(Picked::Reject, Picked::Backend),
            Choice::Reject(reason) => {
                let key =
                    if self.rejects.len() < REJECT_REASONS || self.rejects.contains_key(&reason) {
                        reason
                    } else {
                        "(other reasons)".to_owned()
                    };
                *self.rejects.entry(key).or_insert(0) += 1;
                Picked::Reject
            }
        }
    }
}
