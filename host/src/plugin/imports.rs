//! What a strategy instance can call: the `request` and `backends` imports of
//! the WIT world, served from the per-store [`GuestState`]. (The WASI a guest
//! built with `std` needs is in [`super::sandbox`].)

use std::sync::Arc;

use http::request::Parts;
use wasmtime::{ResourceLimiter, StoreLimits};

use super::bindings::{HttpMethod, backends, request, types};
use super::sandbox::{SandboxState, Sandboxed};
use crate::backend::BackendSet;
use crate::wire::head::host_of;

/// Data of one instance's `Store`.
pub struct GuestState {
    sandbox: SandboxState,
    limits: StoreLimits,
    /// The backend set the instance was last given.
    pub(super) set: Arc<BackendSet>,
    /// The head of the request being picked for, swapped in for the
    /// length of a pick (an empty head otherwise: see [`Self::request`]).
    pub(super) request: Parts,
    /// Whether a pick is running, i.e. whether `request` is the real one.
    pub(super) picking: bool,
    /// Backends this pick must avoid (already tried by this request).
    pub(super) exclude: Vec<u32>,
}

impl GuestState {
    pub(super) fn new(set: Arc<BackendSet>, memory: usize, label: String) -> Self {
        Self {
            sandbox: SandboxState::new(label),
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(memory)
                // Core instances are fixed by the component's structure (a
                // guest cannot create more at run time), so this limit only
                // turns components away, it bounds nothing at run time. A
                // Rust guest has 3, jco's QuickJS build 11 (runtime, bindings,
                // WASI stubs), componentize-py 38. Memories and tables, which
                // do cost, stay capped below.
                .instances(64)
                .tables(16)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            set,
            request: http::Request::new(()).into_parts().0,
            picking: false,
            exclude: Vec::new(),
        }
    }

    pub(super) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }

    /// The request head of the pick in progress; `None` outside a pick
    /// (in `init`, `set-backends` or `state`).
    fn request(&self) -> Option<&Parts> {
        self.picking.then_some(&self.request)
    }
}

impl Sandboxed for GuestState {
    fn sandbox(&mut self) -> &mut SandboxState {
        &mut self.sandbox
    }
}

impl types::Host for GuestState {}

impl request::Host for GuestState {
    fn method(&mut self) -> HttpMethod {
        let Some(parts) = self.request() else {
            return HttpMethod::Get;
        };
        match parts.method {
            http::Method::GET => HttpMethod::Get,
            http::Method::HEAD => HttpMethod::Head,
            http::Method::POST => HttpMethod::Post,
            http::Method::PUT => HttpMethod::Put,
            http::Method::DELETE => HttpMethod::Delete,
            http::Method::CONNECT => HttpMethod::Connect,
            http::Method::OPTIONS => HttpMethod::Options,
            http::Method::TRACE => HttpMethod::Trace,
            http::Method::PATCH => HttpMethod::Patch,
            ref other => HttpMethod::Other(other.as_str().to_owned()),
        }
    }

    fn host(&mut self) -> String {
        self.request()
            .map(|p| host_of(p).to_owned())
            .unwrap_or_default()
    }

    fn path(&mut self) -> String {
        self.request()
            .map(|p| p.uri.path().to_owned())
            .unwrap_or_default()
    }

    fn query(&mut self) -> Option<String> {
        self.request()?.uri.query().map(str::to_owned)
    }

    fn header(&mut self, name: String) -> Option<String> {
        let value = self.request()?.headers.get(name.as_str())?;
        Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
    }
}

impl backends::Host for GuestState {
    fn count(&mut self) -> u32 {
        self.set.len() as u32
    }

    fn in_flight(&mut self, backend: u32) -> u32 {
        self.set.get(backend).map_or(0, |b| b.in_flight())
    }

    fn in_flight_all(&mut self) -> Vec<u32> {
        self.set.backends.iter().map(|b| b.in_flight()).collect()
    }

    fn healthy(&mut self, backend: u32) -> bool {
        self.set.get(backend).is_some_and(|b| b.healthy())
    }

    fn usable(&mut self, backend: u32) -> bool {
        self.set.usable(backend, &self.exclude)
    }

    fn latency(&mut self, backend: u32) -> u64 {
        self.set
            .get(backend)
            .map_or(0, |b| b.latency.peak_ewma_ns())
    }
}
