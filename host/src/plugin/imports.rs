//! What a plugin instance can call: the `request` and `backends` imports of
//! the `balancer` world, the `request` and `limits` imports of the
//! `admission` world, served from the per-store [`GuestState`]. (The WASI a
//! guest built with `std` needs is in [`super::sandbox`].)

use std::sync::Arc;

use http::request::Parts;
use wasmtime::{ResourceLimiter, StoreLimits};

use super::bindings::{HttpMethod, backends, limits, request, types};
use super::sandbox::{SandboxState, Sandboxed};
use crate::backend::BackendSet;
use crate::base::clock;
use crate::limit::registry::{Limiter, MAX_KEY, Registry, Spec};
use crate::limit::{Holds, Over};
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
    /// An admission plugin's: where its limiters are declared (the
    /// upstream's, kept across versions).
    pub(super) registry: Option<Arc<Registry>>,
    /// The limiters this instance declared, found by name without a lock.
    declared: Vec<(String, Limiter)>,
    /// Whether `gate.init` is running (the only time `declare-*` works).
    pub(super) declaring: bool,
    /// What `limits.acquire` took during the `admit` in progress: handed
    /// to the request afterwards.
    pub(super) holds: Holds,
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
            registry: None,
            declared: Vec::new(),
            declaring: false,
            holds: Holds::default(),
        }
    }

    pub(super) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }

    /// The request head of the pick or admission in progress; `None`
    /// outside them (in `init`, `set-backends` or `state`).
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

impl GuestState {
    /// Declares `name` (see the `limits` interface); its handle.
    fn declare(&mut self, name: String, spec: Spec) -> Result<u32, String> {
        if !self.declaring {
            return Err("limiters are declared during `gate.init` only".into());
        }
        let Some(registry) = &self.registry else {
            return Err("no limiter registry (not an admission plugin)".into());
        };
        let limiter = registry.declare(&name, spec)?;
        let handle = match self.declared.iter().position(|(n, _)| *n == name) {
            Some(handle) => handle,
            None => {
                self.declared.push((name, limiter));
                self.declared.len() - 1
            }
        };
        Ok(u32::try_from(handle).unwrap_or(u32::MAX))
    }

    /// The limiter behind `handle`, for a call with `key`; a trap when no
    /// declaration answered it, or the key is too long.
    fn declared(&self, handle: u32, key: &str) -> wasmtime::Result<&Limiter> {
        if key.len() > MAX_KEY {
            wasmtime::bail!(
                "limits: a key of {} bytes is over the {MAX_KEY} allowed (hash it first)",
                key.len()
            );
        }
        match self.declared.get(handle as usize) {
            Some((_, limiter)) => Ok(limiter),
            None => {
                wasmtime::bail!("limits: no limiter was declared with handle {handle} in `init`")
            }
        }
    }

    fn wrong_kind(&self, handle: u32, call: &str) -> wasmtime::Error {
        let name = self
            .declared
            .get(handle as usize)
            .map_or("?", |(n, _)| n.as_str());
        wasmtime::format_err!(
            "limits: `{name}` (handle {handle}) is not a limiter `{call}` works on"
        )
    }
}

impl limits::Host for GuestState {
    fn declare_rate(
        &mut self,
        name: String,
        requests: u32,
        per_ms: u32,
        burst: u32,
    ) -> wasmtime::Result<Result<u32, String>> {
        if requests == 0 || per_ms == 0 || burst == 0 {
            return Ok(Err(format!(
                "limiter `{name}`: requests, per-ms and burst must be at least 1"
            )));
        }
        let interval_ns = (u64::from(per_ms) * 1_000_000 / u64::from(requests)).max(1);
        Ok(self.declare(name, Spec::Rate { interval_ns, burst }))
    }

    fn take(&mut self, handle: u32, key: String, cost: u32) -> wasmtime::Result<Result<(), u64>> {
        let Limiter::Rate(limiter) = self.declared(handle, &key)? else {
            return Err(self.wrong_kind(handle, "take"));
        };
        Ok(limiter
            .take(limiter.key(key.as_bytes()), cost, clock::now_ns())
            .map_err(|wait_ns| wait_ns.div_ceil(1_000_000).max(1)))
    }

    fn declare_concurrency(&mut self, name: String) -> wasmtime::Result<Result<u32, String>> {
        Ok(self.declare(name, Spec::Concurrency))
    }

    fn acquire(&mut self, handle: u32, key: String, max: u32) -> wasmtime::Result<Result<(), u32>> {
        let Limiter::Concurrency(limiter) = self.declared(handle, &key)? else {
            return Err(self.wrong_kind(handle, "acquire"));
        };
        if !self.picking {
            // Outside `admit` there is no request to hold it.
            return Ok(Err(0));
        }
        let key = limiter.key(key.as_bytes());
        match limiter.acquire(key, max, false) {
            Ok((held, _)) => {
                self.holds.push(held);
                Ok(Ok(()))
            }
            Err(Over::Max) => Ok(Err(limiter.in_flight(key))),
            Err(Over::Full) => Ok(Err(0)),
        }
    }

    fn declare_counter(
        &mut self,
        name: String,
        window_ms: u32,
    ) -> wasmtime::Result<Result<u32, String>> {
        if window_ms == 0 {
            return Ok(Err(format!(
                "counter `{name}`: window-ms must be at least 1"
            )));
        }
        let window_ns = u64::from(window_ms) * 1_000_000;
        Ok(self.declare(name, Spec::Counter { window_ns }))
    }

    fn add(&mut self, handle: u32, key: String, n: u32) -> wasmtime::Result<u64> {
        let Limiter::Counter(counter) = self.declared(handle, &key)? else {
            return Err(self.wrong_kind(handle, "add"));
        };
        Ok(counter.add(counter.key(key.as_bytes()), n, clock::now_ns()))
    }
}
