//! One live instance of a strategy, owned by one thread: its `Store`, the
//! component instance and its typed exports; made from a [`Compiled`]
//! component, fed backend sets, and (with the optional `state` interface)
//! snapshotted and restored across versions.

use std::sync::Arc;

use wasmtime::{Engine, Store};

use super::bindings::{Balancer, ParamValue, WitBackend};
use super::imports::GuestState;
use super::runtime::{Compiled, InstanceError, StateExports};
use crate::backend::BackendSet;

/// Largest snapshot handed from one version of a strategy to the next; a
/// bigger one is counted as a failed hand-over.
pub const MAX_SNAPSHOT: usize = 1 << 20;

/// A live instance of one strategy, owned by one thread.
pub(super) struct Instance {
    pub(super) strategy_id: u64,
    pub(super) lineage: u64,
    pub(super) set_version: u64,
    pub(super) store: Store<GuestState>,
    pub(super) bindings: Balancer,
    pub(super) wasm: wasmtime::component::Instance,
    /// The component's `state` exports, if it has them.
    pub(super) state: Option<StateExports>,
}

type SnapshotFn = wasmtime::component::TypedFunc<(), (Vec<u8>,)>;
type RestoreFn = wasmtime::component::TypedFunc<(Vec<u8>,), (Result<(), String>,)>;

impl Instance {
    /// Hands the instance `set` if it has not seen it yet.
    pub(super) fn sync(
        &mut self,
        set: &Arc<BackendSet>,
        deadline_ticks: u64,
    ) -> wasmtime::Result<()> {
        if self.set_version == set.version {
            return Ok(());
        }
        self.store.set_epoch_deadline(deadline_ticks);
        self.bindings
            .switchyard_balancer_strategy()
            .call_set_backends(&mut self.store, &wit_backends(set))?;
        self.store.data_mut().set = Arc::clone(set);
        self.set_version = set.version;
        Ok(())
    }

    fn state_funcs(&mut self) -> wasmtime::Result<Option<(SnapshotFn, RestoreFn)>> {
        let Some(state) = self.state else {
            return Ok(None);
        };
        let snapshot = self.wasm.get_typed_func(&mut self.store, state.snapshot)?;
        let restore = self.wasm.get_typed_func(&mut self.store, state.restore)?;
        Ok(Some((snapshot, restore)))
    }

    /// The guest's state, within `deadline_ticks`; `Ok(None)` when it does
    /// not export `state`.
    pub(super) fn snapshot(
        &mut self,
        deadline_ticks: u64,
    ) -> Result<Option<Vec<u8>>, HandoverError> {
        let Some((snapshot, _)) = self.state_funcs().map_err(HandoverError::exports)? else {
            return Ok(None);
        };
        self.store.set_epoch_deadline(deadline_ticks);
        let (bytes,) = snapshot
            .call(&mut self.store, ())
            .map_err(|e| HandoverError::Snapshot(format!("{e:#}")))?;
        if bytes.len() > MAX_SNAPSHOT {
            return Err(HandoverError::TooBig(bytes.len()));
        }
        Ok(Some(bytes))
    }

    /// Hands `bytes` to the guest's `restore`, within `deadline_ticks`;
    /// `Ok(false)` when it does not export `state`.
    pub(super) fn restore(
        &mut self,
        bytes: Vec<u8>,
        deadline_ticks: u64,
    ) -> Result<bool, HandoverError> {
        let Some((_, restore)) = self.state_funcs().map_err(HandoverError::exports)? else {
            return Ok(false);
        };
        self.store.set_epoch_deadline(deadline_ticks);
        let (result,) = restore
            .call(&mut self.store, (bytes,))
            .map_err(|e| HandoverError::Restore(format!("{e:#}")))?;
        result.map_err(HandoverError::Refused)?;
        Ok(true)
    }
}

impl Instance {
    /// Creates an instance of `compiled` for the strategy numbered
    /// `strategy_id` (of `lineage`), runs `init(params)` and feeds it `set`,
    /// each step within `ticks` epoch ticks. With `check_state`, the `state`
    /// exports (if any) are typed at once, so a mistyped one is refused when
    /// the plugin is loaded rather than at its first hand-over.
    #[allow(
        clippy::too_many_arguments,
        reason = "every argument is one of the instance's inputs"
    )]
    pub(super) fn create(
        engine: &Engine,
        compiled: &Compiled,
        (strategy_id, lineage): (u64, u64),
        params: &[(String, ParamValue)],
        set: &Arc<BackendSet>,
        memory: usize,
        label: String,
        ticks: u64,
        check_state: bool,
    ) -> Result<Instance, InstanceError> {
        let mut store = Store::new(engine, GuestState::new(Arc::clone(set), memory, label));
        store.limiter(GuestState::limiter);
        store.set_epoch_deadline(ticks);
        let wasm = compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| InstanceError::Instantiate(format!("{e:#}")))?;
        let bindings = compiled
            .indices
            .as_ref()
            .ok_or_else(|| InstanceError::Instantiate("not a strategy".into()))?
            .load(&mut store, &wasm)
            .map_err(|e| InstanceError::Instantiate(format!("{e:#}")))?;
        store.set_epoch_deadline(ticks);
        bindings
            .switchyard_balancer_strategy()
            .call_init(&mut store, params)
            .map_err(|e| InstanceError::Init(format!("{e:#}")))?
            .map_err(InstanceError::Init)?;
        let mut instance = Instance {
            strategy_id,
            lineage,
            set_version: 0,
            store,
            bindings,
            wasm,
            state: compiled.state,
        };
        instance
            .sync(set, ticks)
            .map_err(|e| InstanceError::SetBackends(format!("{e:#}")))?;
        if check_state {
            instance
                .state_funcs()
                .map_err(|e| InstanceError::StateExports(format!("{e:#}")))?;
        }
        Ok(instance)
    }
}

/// Why a thread's instance of a new version could not continue from its
/// instance of the previous one (it starts fresh).
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandoverError {
    /// The `state` exports could not be typed.
    #[error("state exports: {0}")]
    Exports(String),
    /// `snapshot` trapped or ran out of time.
    #[error("snapshot failed: {0}")]
    Snapshot(String),
    /// The snapshot is over [`MAX_SNAPSHOT`].
    #[error("snapshot is {0} bytes, more than the {MAX_SNAPSHOT} allowed")]
    TooBig(usize),
    /// `restore` trapped or ran out of time.
    #[error("restore failed: {0}")]
    Restore(String),
    /// `restore` answered an error.
    #[error("restore refused the snapshot: {0}")]
    Refused(String),
}

impl HandoverError {
    fn exports(e: wasmtime::Error) -> Self {
        HandoverError::Exports(format!("{e:#}"))
    }
}

/// The backend set as the WIT `backend` records.
fn wit_backends(set: &BackendSet) -> Vec<WitBackend> {
    set.backends
        .iter()
        .map(|b| WitBackend {
            id: b.id.clone(),
            address: b.address.clone(),
            weight: b.weight,
        })
        .collect()
}
